// digin gallery: a lightbox for every image in a ".lb" row (zoom, arrows step through the row at the same zoom and
// scroll, so two images can be flicked at one spot), and the result grid of window.DIGIN_ROWS (rows.js): sortable,
// filterable. Plain DOM, no server, no innerHTML: every label is a text node, so markup in results stays text.
(function () {
  "use strict";
  var box = null, stage, cap, count, links = [], at = 0, zoom = 1;

  function build() {
    box = document.createElement("div");
    box.id = "lightbox";
    box.hidden = true;
    var bar = document.createElement("div");
    bar.className = "bar";
    [["prev", "←"], ["next", "→"], ["out", "−"], ["in", "+"], ["one", "1:1"], ["fit", "fit"], ["close", "×"]]
      .forEach(function (b) {
        var btn = document.createElement("button");
        btn.type = "button";
        btn.textContent = b[1];
        btn.setAttribute("data-act", b[0]);
        btn.addEventListener("click", function () { act(b[0]); });
        bar.appendChild(btn);
      });
    count = document.createElement("span");
    bar.appendChild(count);
    cap = document.createElement("div");
    cap.className = "cap";
    stage = document.createElement("div");
    stage.className = "stage";
    stage.addEventListener("wheel", function (e) {
      e.preventDefault();
      setZoom(zoom * (e.deltaY < 0 ? 1.25 : 0.8));
    }, {passive: false});
    box.appendChild(bar);
    box.appendChild(cap);
    box.appendChild(stage);
    document.body.appendChild(box);
  }

  function natural(a) {
    var img = a.querySelector("img");
    return [Number(img.getAttribute("width")) || img.naturalWidth, Number(img.getAttribute("height")) || img.naturalHeight];
  }

  function fitZoom(a) {
    var wh = natural(a);
    return Math.min((window.innerWidth - 40) / wh[0], (window.innerHeight - 110) / wh[1]);
  }

  function show() {
    var a = links[at], wh = natural(a), view;
    while (stage.firstChild) stage.removeChild(stage.firstChild);
    if (a.classList.contains("heat") || a.classList.contains("overlay")) {  // composites: both layers, full size
      view = a.cloneNode(true);
      view.removeAttribute("href");
    } else {
      view = document.createElement("img");
      view.setAttribute("src", a.getAttribute("data-full") || a.getAttribute("href"));
    }
    view.classList.add("view");
    view.style.width = Math.round(wh[0] * zoom) + "px";
    view.style.height = Math.round(wh[1] * zoom) + "px";
    stage.appendChild(view);
    var fig = a.closest("figure");
    cap.textContent = fig && fig.querySelector("figcaption") ? fig.querySelector("figcaption").textContent : "";
    count.textContent = (at + 1) + " / " + links.length + " · " + Math.round(zoom * 100) + " %";
  }

  function setZoom(z) {
    var cx = (stage.scrollLeft + stage.clientWidth / 2) / zoom, cy = (stage.scrollTop + stage.clientHeight / 2) / zoom;
    zoom = Math.max(0.1, Math.min(z, 32));
    show();
    stage.scrollLeft = cx * zoom - stage.clientWidth / 2;  // keep the spot under the centre
    stage.scrollTop = cy * zoom - stage.clientHeight / 2;
  }

  function act(what) {
    if (what === "close") { box.hidden = true; return; }
    if (what === "prev" || what === "next") {
      var x = stage.scrollLeft, y = stage.scrollTop;
      at = (at + (what === "next" ? 1 : links.length - 1)) % links.length;
      show();
      stage.scrollLeft = x;  // same zoom and spot: flick between images
      stage.scrollTop = y;
      return;
    }
    if (what === "fit") return setZoom(fitZoom(links[at]));
    setZoom(what === "one" ? 1 : zoom * (what === "in" ? 1.5 : 1 / 1.5));
  }

  function open(a) {
    if (!box) build();
    var row = a.closest(".lb");
    links = Array.prototype.filter.call(row.querySelectorAll("a.pic"), function (x) {
      return (x.getAttribute("href") || "").charAt(0) !== "#" || x.hasAttribute("data-full");
    });
    at = Math.max(0, links.indexOf(a));
    box.hidden = false;
    zoom = Math.max(1, Math.floor(fitZoom(a)));  // small images at a whole multiple: pixels stay square
    if (zoom * natural(a)[0] > window.innerWidth) zoom = fitZoom(a);
    show();
  }

  document.addEventListener("click", function (e) {
    var a = e.target.closest ? e.target.closest(".lb a.pic") : null;
    if (!a || e.ctrlKey || e.metaKey || e.shiftKey || e.button !== 0) return;
    if ((a.getAttribute("href") || "").charAt(0) === "#") return;  // the image row jumps to its pair
    e.preventDefault();
    open(a);
  });
  document.addEventListener("keydown", function (e) {
    if (!box || box.hidden) return;
    var keys = {Escape: "close", ArrowLeft: "prev", ArrowRight: "next", "+": "in", "=": "in", "-": "out", "0": "one",
                f: "fit"};
    if (keys[e.key]) { e.preventDefault(); act(keys[e.key]); }
  });
  window.diginLightbox = {open: open, act: act, state: function () { return {at: at, zoom: zoom, n: links.length}; }};
})();

(function () {
  "use strict";
  var data = window.DIGIN_ROWS;
  var grid = document.getElementById("grid");
  if (!data || !grid) return;
  var PAGE = 100;
  var rows = data.rows, list = [], shown = 0;
  var el = function (id) { return document.getElementById(id); };
  var more = el("more");

  function value(r, key) {
    if (key.indexOf("d:") === 0) return r.d[key.slice(2)];
    return r[key];
  }

  function compare(key, desc) {
    return function (x, y) {
      var a = value(x, key), b = value(y, key);
      var na = a === null || a === undefined, nb = b === null || b === undefined;
      if (na || nb) return na === nb ? (x.k < y.k ? -1 : x.k > y.k ? 1 : 0) : (na ? 1 : -1);  // missing last
      var c = typeof a === "string" ? a.localeCompare(b) : a - b;
      if (c === 0) return x.k < y.k ? -1 : x.k > y.k ? 1 : 0;
      return desc ? -c : c;
    };
  }

  function matches(r, cat, success, status, text) {
    if (cat && r.c !== cat) return false;
    if (success !== "" && String(r.s) !== success) return false;
    if (status && r.st !== status) return false;
    if (text) {
      var hay = (r.k + " " + r.t + " " + r.c + " " + r.x.join(" ")).toLowerCase();
      if (hay.indexOf(text) < 0) return false;
    }
    return true;
  }

  function node(tag, cls, text) {
    var n = document.createElement(tag);
    if (cls) n.className = cls;
    if (text !== undefined) n.textContent = text;
    return n;
  }

  function card(r) {
    var row = node("div", "row");
    row.setAttribute("data-key", r.k);
    row.setAttribute("data-gain", r.g === null ? "" : String(r.g));
    row.setAttribute("data-category", r.c);
    row.setAttribute("data-status", r.st);
    row.setAttribute("data-success", String(r.s));
    var cells = node("div", "cells");
    r.im.forEach(function (im) {
      var fig = node("figure"), a = node("a"), img = node("img");
      a.setAttribute("href", r.p);
      img.setAttribute("src", im[1]);
      img.setAttribute("width", im[2]);
      img.setAttribute("height", im[3]);
      img.setAttribute("loading", "lazy");
      img.setAttribute("alt", im[0]);
      a.appendChild(img);
      fig.appendChild(a);
      fig.appendChild(node("figcaption", "", im[0]));
      cells.appendChild(fig);
    });
    var info = node("div", "info");
    info.appendChild(node("div", "t", r.t));
    var head = node("div");
    head.appendChild(node("span", "st st-" + r.st.replace(/[^A-Za-z0-9_-]/g, "_"), r.st));
    head.appendChild(document.createTextNode(" "));
    head.appendChild(node("span", "ok" + r.s, r.s ? "success" : "no success"));
    head.appendChild(document.createTextNode(" · " + r.c));
    info.appendChild(head);
    r.x.forEach(function (line) { info.appendChild(node("div", "", line)); });
    var link = node("a", "", r.k);
    link.setAttribute("href", r.p);
    info.appendChild(link);
    if (r.p2) {  // a comparison row: the other run's page too
      info.appendChild(document.createTextNode(" · "));
      var other = node("a", "", r.l2 || "other");
      other.setAttribute("href", r.p2);
      info.appendChild(other);
    }
    if (r.hl) row.className += " hl";
    row.appendChild(cells);
    row.appendChild(info);
    return row;
  }

  function showMore() {
    var end = Math.min(shown + PAGE, list.length), frag = document.createDocumentFragment();
    for (; shown < end; shown++) frag.appendChild(card(list[shown]));
    grid.appendChild(frag);
    more.hidden = shown >= list.length;
    el("shown").textContent = "showing " + shown + " of " + list.length + " (" + rows.length + " in all)";
  }

  function apply() {
    var cat = el("f-cat").value, success = el("f-success").value, status = el("f-status").value;
    var text = el("f-text").value.trim().toLowerCase();
    list = rows.filter(function (r) { return matches(r, cat, success, status, text); });
    list.sort(compare(el("sort").value, el("order").value === "desc"));
    while (grid.firstChild) grid.removeChild(grid.firstChild);
    shown = 0;
    showMore();
  }

  ["sort", "order", "f-cat", "f-success", "f-status"].forEach(function (id) {
    el(id).addEventListener("change", apply);
  });
  el("f-text").addEventListener("input", apply);
  more.addEventListener("click", showMore);
  Array.prototype.forEach.call(document.querySelectorAll("button.cat"), function (b) {
    b.addEventListener("click", function () {
      el("f-cat").value = b.getAttribute("data-cat");
      apply();
      el("controls").scrollIntoView();
    });
  });
  // tables with class "sortable": a click on a column header sorts the rows by that column (again: reversed)
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    var body = table.tBodies[0];
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.style.cursor = "pointer";
      th.addEventListener("click", function () {
        var desc = th.getAttribute("data-order") !== "desc";
        th.setAttribute("data-order", desc ? "desc" : "asc");
        var rs = Array.prototype.slice.call(body.rows);
        var cell = function (r) {
          var td = r.cells[col], v = td.getAttribute("data-v");
          return v === null ? td.textContent : (v === "" ? null : Number(v));
        };
        rs.sort(function (x, y) {
          var a = cell(x), b = cell(y);
          if (a === null || b === null) return a === b ? 0 : (a === null ? 1 : -1);
          var c = typeof a === "string" ? a.localeCompare(b, undefined, {numeric: true}) : a - b;
          return desc ? -c : c;
        });
        rs.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
  if ("IntersectionObserver" in window) {  // load the next page of rows as the reader reaches the end
    new IntersectionObserver(function (seen) {
      if (seen[0].isIntersecting && !more.hidden) showMore();
    }, {rootMargin: "600px"}).observe(more);
  }
  window.diginGallery = {apply: apply, showMore: showMore};
  apply();
})();
