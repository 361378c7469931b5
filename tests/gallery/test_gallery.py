import statistics
from pathlib import Path
from urllib.parse import unquote

import pytest

from digin.stages.gallery import check_gallery, write_gallery
from digin.stages.gallery.svg import curves_svg, histogram_svg, loss_curve_svg
from tests.gallery.conftest import INJECTED, THUMB


def test_gallery_pages_links_and_images(tmp_path, synthetic_records):
    write_gallery(synthetic_records, tmp_path / "g")
    problems, pages, images = check_gallery(tmp_path / "g")
    assert problems == []
    assert pages == 1 + 2 * 2 + 3  # top index, 2 tasks × (overview, list of pages), 3 pages (2 start classes, 1 class)
    # distinct images: uvce orig (shared by 3 results) + 3 sd + 3 ours + mask; diff sd + ours
    assert images == 1 + 3 + 3 + 1 + 2
    text = (tmp_path / "g" / "uvce" / "15-Painted_Bunting.html").read_text()
    assert "Black/white &lt;Vireo&gt; (150)" in text and "<Vireo>" not in text  # labels are escaped
    assert "<svg" in text and "polyline" in text
    assert (tmp_path / "g" / "uvce" / "7-cock.html").is_file()
    assert (tmp_path / "g" / "diff" / "3-tiger_shark.html").is_file()
    assert "http" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    overview = (tmp_path / "g" / "uvce" / "index.html").read_text()
    assert 'id="summary"' in overview and "histogram" in overview and 'id="categories"' in overview


def test_check_finds_broken_links_and_images(tmp_path, synthetic_records):
    write_gallery(synthetic_records, tmp_path / "g")
    page = tmp_path / "g" / "uvce" / "pages.html"
    page.write_text(page.read_text().replace("</ul>", '<li><a href="nope.html">x</a></li>'
                                             '<li><a href="https://example.com/">y</a></li></ul>'))
    img = next((tmp_path / "g" / "img").glob("*.png"))
    img.write_bytes(b"not a png")
    thumb_ref = (tmp_path / "g" / "diff" / "rows.js")
    thumb_ref.write_text(thumb_ref.read_text().replace('"../img/', '"../img/gone-', 1))
    problems, _, _ = check_gallery(tmp_path / "g")
    assert any("broken link 'nope.html'" in p for p in problems)
    assert any("not a relative file link" in p for p in problems)
    assert any("does not decode" in p for p in problems)
    assert any("gone-" in p for p in problems)  # the grid's data is checked too
    assert not any("does not decode" in p for p in check_gallery(tmp_path / "g", decode=False)[0])


def _points(svg: str, name: str) -> list[tuple[float, float]]:
    import re

    m = re.search(r'points="([^"]*)" data-name="' + re.escape(name) + '"', svg)
    return [tuple(map(float, p.split(","))) for p in m.group(1).split()]


def test_svg_plots():
    import re

    svg = loss_curve_svg([4.0, 2.0, 1.0])
    assert svg.count("<polyline") == 1 and "loss: 4 → 1" in svg
    assert "no loss curve" in loss_curve_svg(None) and "no loss curve" in loss_curve_svg([float("inf")])
    two = curves_svg({"conf_0": [0.1, 0.5, 0.9], "<b>": [1, None, 2]}, mark=2)
    assert two.count("<polyline") == 2 and "best iterate 2" in two and "&lt;b&gt;" in two
    # a flat series draws flat, on a probability axis shared by the compared series
    flat = curves_svg({"p": [0.107] * 6, "q": [0.1, 0.9, 0.5, 0.5, 0.5, 0.5]}, mark=1, fixed=(0.0, 1.0))
    ys = {y for _, y in _points(flat, "p")}
    assert len(ys) == 1 and 'data-y0="0.0" data-y1="1.0"' in flat
    # a near-constant series on its own axis stays flat too (the axis spans ≥ 2 % of the values)
    tiny = curves_svg({"loss": [2.2360, 2.2361, 2.2360]})
    ys = [y for _, y in _points(tiny, "loss")]
    assert max(ys) - min(ys) < 5
    ticks = re.findall(r'class="[xy]t">([^<]*)<', flat + tiny)
    assert ticks and not any("e-" in t or "e+" in t for t in ticks), ticks
    assert '<circle' in flat and 'class="best"' in flat  # the best iterate: a line and a dot per series
    hist = histogram_svg([0.0, 0.1, 0.1, 0.9, None, float("nan")], "gain <x>", "probability 0..1", bins=3)
    assert hist.count('data-count="') == 2 and "n = 4" in hist and "gain &lt;x&gt;" in hist and "[probability" in hist
    assert "no values" in histogram_svg([None], "empty")
    near_zero = histogram_svg([1.47e-09, 0.0, 0.0], "gain", min_span=0.02)
    assert "e-09" not in "".join(re.findall(r'class="xt">([^<]*)<', near_zero))


# ------------------------------------------------------------------ built from result shards, seen in Chromium

def expected_uvce_summary(result_world) -> dict:
    """The run summary recomputed from the result shards (decoded by the ordinary reader) and the eval rows."""
    import json

    from digin.shards.manifest import ShardSet
    from digin.shards.reader import iter_samples

    ss = ShardSet.load(result_world["uvce"])
    metrics = {s["__key__"]: s["metrics"] for s in iter_samples(ss)}
    ev = {r["key"]: r for r in map(json.loads, (result_world["eval"] / "per_sample.jsonl").read_text().splitlines())}
    gains = [m["conf_0_ours"] - m["conf_0_sd"] for m in metrics.values() if m["conf_0_ours"] is not None]
    rejects = [r["reason"] for rec in ss.records.values() for r in rec["rejects"]]
    return {
        "results": len(metrics), "written": ss.num_samples(),
        "rejected": sum(not r.startswith("skip:") for r in rejects),
        "skipped": sum(r.startswith("skip:") for r in rejects),
        "ok": sum(m["status"] == "ok" for m in metrics.values()),
        "nonfinite": sum(m["status"] == "nonfinite" for m in metrics.values()),
        "no_improvement": sum(m["status"] == "no_improvement" for m in metrics.values()),
        "success": sum((m["conf_0_ours"] or 0) > 0.5 for m in metrics.values()),
        "success_rate": sum((m["conf_0_ours"] or 0) > 0.5 for m in metrics.values()) / len(metrics),
        "gain_mean": statistics.mean(gains), "gain_median": statistics.median(gains),
        "guided_flip": statistics.mean(ev[k]["guided/flip"] for k in metrics),
        "l2_ours_mean": statistics.mean(ev[k]["l2_ours"] for k in metrics),
        "lpips_ours_median": statistics.median(ev[k]["lpips_ours"] for k in metrics),
    }


def open_page(browser, path: Path):
    browser.get(path.resolve().as_uri())
    assert browser.title


def show_all_rows(browser):
    browser.execute_script("while (!document.getElementById('more').hidden) window.diginGallery.showMore();")


def grid_rows(browser) -> list[dict]:
    return browser.execute_script(
        "return Array.from(document.querySelectorAll('#grid .row')).map(r => ({key: r.dataset.key, "
        "gain: r.dataset.gain, status: r.dataset.status, success: r.dataset.success, category: r.dataset.category}))")


def select(browser, element_id: str, value: str):
    browser.execute_script("const e = document.getElementById(arguments[0]); e.value = arguments[1]; "
                           "e.dispatchEvent(new Event('change'));", element_id, value)


def test_summary_numbers_equal_those_from_the_shards(browser, built, result_world):
    want = expected_uvce_summary(result_world)
    assert 0 < want["nonfinite"] and 0 < want["no_improvement"] and 0 < want["rejected"] and 0 < want["skipped"]
    open_page(browser, built / "uvce" / "index.html")
    got = browser.execute_script(
        "const o = {}; document.querySelectorAll('#summary td[id]').forEach(td => o[td.id.slice(4)] = "
        "td.dataset.v === '' ? null : Number(td.dataset.v)); return o;")
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name
    text = browser.find_element("id", "summary").text
    assert f"{100 * want['success_rate']:.1f} %" in text
    # the per-category table adds up to the whole
    n = browser.execute_script("return Array.from(document.querySelectorAll('#categories td[id$=\"-n\"]'))"
                               ".map(td => Number(td.dataset.v))")
    assert sum(n) == want["results"] and len(n) == len(result_world["classes"])


def test_every_thumbnail_and_image_loads(browser, built):
    todo, seen, thumbs = [(built / "index.html").resolve()], set(), 0
    while todo:
        page = todo.pop()
        if page in seen:
            continue
        seen.add(page)
        open_page(browser, page)
        if page.name == "index.html" and page.parent != built.resolve():
            show_all_rows(browser)
        images = browser.execute_async_script(
            "const done = arguments[arguments.length - 1]; const imgs = Array.from(document.images);"
            "imgs.forEach(i => i.loading = 'eager');"
            "Promise.all(imgs.map(i => i.decode().catch(() => null))).then(() => "
            "done(imgs.map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])));")
        for src, complete, width in images:
            assert complete and width > 0, f"{page.name}: image {src} did not load"
            if src.startswith("../thumb/"):
                thumbs += 1
                assert width <= THUMB
        for href in browser.execute_script("return Array.from(document.links).map(a => a.href)"):
            assert href.startswith("file://"), href
            target = Path(unquote(href[len("file://"):].split("#")[0]))
            assert target.is_file(), f"{page.name}: broken link {href}"
            if target.suffix == ".html":
                todo.append(target.resolve())
    assert thumbs > 0 and len(seen) > 10


def test_sorting_by_gain_orders_the_rows(browser, built):
    open_page(browser, built / "uvce" / "index.html")
    show_all_rows(browser)
    for order in ("desc", "asc"):
        select(browser, "order", order)
        select(browser, "sort", "g")
        show_all_rows(browser)
        rows = grid_rows(browser)
        gains = [float(r["gain"]) for r in rows if r["gain"]]
        assert len(gains) >= 10 and gains == sorted(gains, reverse=order == "desc")
        assert all(not r["gain"] for r in rows[len(gains):])  # results without a gain (non-finite) come last
    select(browser, "sort", "c")  # ascending (the order of the last loop)
    assert browser.execute_script(
        "const c = Array.from(document.querySelectorAll('#grid .row')).map(r => r.dataset.category);"
        "return c.length > 1 && c.every((x, i) => i === 0 || c[i - 1].localeCompare(x) <= 0)")


def test_filters_hide_what_they_should(browser, built, result_world):
    want = expected_uvce_summary(result_world)
    open_page(browser, built / "uvce" / "index.html")
    show_all_rows(browser)
    assert len(grid_rows(browser)) == want["results"]
    select(browser, "f-status", "nonfinite")
    rows = grid_rows(browser)
    assert len(rows) == want["nonfinite"] and {r["status"] for r in rows} == {"nonfinite"}
    select(browser, "f-status", "")
    select(browser, "f-success", "1")
    show_all_rows(browser)
    rows = grid_rows(browser)
    assert len(rows) == want["success"] and {r["success"] for r in rows} == {"1"}
    select(browser, "f-success", "")
    select(browser, "f-cat", "goldfish")
    rows = grid_rows(browser)
    assert rows and {r["category"] for r in rows} == {"goldfish"}
    assert browser.find_element("id", "shown").text == f"showing {len(rows)} of {len(rows)} ({want['results']} in all)"
    select(browser, "f-cat", "")
    browser.execute_script("const e = document.getElementById('f-text'); e.value = '00003/'; "
                           "e.dispatchEvent(new Event('input'));")
    assert {r["key"].rsplit("/", 1)[0] for r in grid_rows(browser)} == {"synthetic/val/00003"}
    # a category name in the table filters the grid
    browser.execute_script("document.getElementById('f-text').value = '';"
                           "document.querySelector('button.cat[data-cat=\"hen\"]').click();")
    assert {r["category"] for r in grid_rows(browser)} == {"hen"}


def test_injected_markup_stays_text(browser, built):
    for page in ("uvce/index.html", "diff/index.html", "neurons/index.html", "index.html", "neurons/neuron-3.html"):
        open_page(browser, built / page)
        if page.endswith("/index.html"):
            show_all_rows(browser)
        assert browser.execute_script("return window.__pwned === undefined && "
                                      "document.querySelectorAll('img[src=\"x\"], #grid script').length === 0")
        if page != "index.html":
            assert INJECTED in browser.execute_script("return document.body.textContent"), page
    group = next(p for p in (built / "uvce").glob("*.html") if p.name != "index.html" and "&lt;img" in p.read_text())
    open_page(browser, group)
    assert browser.execute_script("return window.__pwned === undefined")


def test_neuron_rows_show_top_images_words_and_visualisations(browser, built):
    open_page(browser, built / "neurons" / "index.html")
    rows = browser.execute_script(
        "return Array.from(document.querySelectorAll('#grid .row')).map(r => [r.dataset.key, "
        "Array.from(r.querySelectorAll('figcaption')).map(f => f.textContent), r.querySelector('.info').textContent])")
    assert [r[0] for r in rows] == ["neuron 9", "neuron 11", "neuron 3"]  # larger mean gain in activation first
    for key, captions, info in rows:
        assert [c.split(" ·")[0] for c in captions] == ["top 1", "top 2", "top 3", "i0", "i1"]
        assert "stripes (2)" in info and "word search: stripes 1.5" in info
        assert ("dead unit?" in info) == (key == "neuron 11")


def test_category_table_sorts_by_a_clicked_column(browser, built):
    open_page(browser, built / "uvce" / "index.html")
    read = ("return Array.from(document.querySelectorAll('#categories tbody tr'))"
            ".map(r => r.cells[3].dataset.v === '' ? null : Number(r.cells[3].dataset.v))")
    header = "document.querySelectorAll('#categories thead th')[3].click()"  # gain mean
    browser.execute_script(header)
    first = [v for v in browser.execute_script(read) if v is not None]
    assert len(first) > 1 and first == sorted(first, reverse=True)
    browser.execute_script(header)
    again = [v for v in browser.execute_script(read) if v is not None]
    assert again == sorted(first)
