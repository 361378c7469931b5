"""The detail pages, the top page, the neuron pages and comparisons, seen in headless Chromium: every image loads,
labels and numbers equal the shards', flat series draw flat, the lightbox zooms and steps; thumbnails come from
the results (no full image decoded)."""
import json
import re
import time

import numpy as np
import pytest

from digin.shards.reader import iter_samples
from tests.gallery.conftest import INJECTED
from tests.gallery.test_gallery import open_page


def shard_metrics(folder) -> dict:
    return {s["__key__"]: s["metrics"] for s in iter_samples(folder)}


def page_of_key(built, key: str):
    """The detail page holding a result (from the grid's data)."""
    for task in ("uvce", "diff", "neurons"):
        rows = json.loads((built / task / "rows.js").read_text().split("= ", 1)[1].rstrip().rstrip(";"))["rows"]
        for r in rows:
            if r["k"] == key:
                return built / task / r["p"].split("#")[0]
    raise KeyError(key)


def block(browser, key: str) -> dict:
    """What a result block shows: figure names in order, the numbers under each image, the metric table."""
    return browser.execute_script("""
        const b = Array.from(document.querySelectorAll('.result')).find(x => x.dataset.key === arguments[0]);
        const figs = Array.from(b.querySelector('.cells').children);
        const out = {names: figs.map(f => f.dataset.name), scores: {}, labels: [], cells: {}, units: []};
        figs.forEach(f => f.querySelectorAll('.sc').forEach(s => {
            out.scores[f.dataset.name + '|' + s.dataset.k] = s.dataset.v === '' ? null : Number(s.dataset.v); }));
        b.querySelectorAll('table.mt tbody tr').forEach(tr => {
            const th = tr.querySelector('th');
            out.labels.push(th.firstChild.textContent);
            out.units.push(tr.querySelector('td.u').textContent);
            out.cells[th.firstChild.textContent] = Array.from(tr.querySelectorAll('td:not(.u)')).map(
                td => td.dataset.v === '' ? td.textContent : Number(td.dataset.v)); });
        out.heat = !!b.querySelector('a.pic.heat'); out.overlay = !!b.querySelector('a.pic.overlay');
        return out;""", key)


def test_pair_page_is_laid_out_like_the_paper(browser, built, result_world):
    metrics = shard_metrics(result_world["uvce"])
    ev = {r["key"]: r for r in map(json.loads, (result_world["eval"] / "per_sample.jsonl").read_text().splitlines())}
    key = next(k for k, m in metrics.items() if m["status"] == "ok")
    m = metrics[key]
    page = page_of_key(built, key)
    assert page.name == f"{m['start']}-{re.sub('[^A-Za-z0-9_-]+', '_', m['start_label']).strip('_')}.html"
    open_page(browser, page)
    b = block(browser, key)
    assert b["names"][:4] == ["original", "reconstruction", "sd", "ours"] and b["heat"] and b["overlay"]
    # the start and target confidences under each image equal the shards' (and the eval row's for the original)
    assert b["scores"]["sd|conf_0_sd"] == pytest.approx(m["conf_0_sd"], abs=1e-12)
    assert b["scores"]["ours|conf_0_ours"] == pytest.approx(m["conf_0_ours"], abs=1e-12)
    assert b["scores"]["sd|start_conf_sd"] == pytest.approx(m["start_conf_sd"], abs=1e-12)
    assert b["scores"]["ours|start_conf_ours"] == pytest.approx(m["start_conf_ours"], abs=1e-12)
    assert b["scores"]["original|guided/conf_start_orig"] == pytest.approx(ev[key]["guided/conf_start_orig"])
    # a labelled table with units, no raw keys
    target = f"{m['target_label']} ({m['target']})"
    assert b["cells"][f"p(target = {target})"] == pytest.approx([m["conf_0_sd"], m["conf_0_ours"]])
    assert "probability 0..1" in b["units"]
    raw = {"conf_0_sd", "aug_loss", "start_conf_ours", "schedule", "best_iter", "num_logged"}
    assert not raw & set(b["labels"]), b["labels"]
    assert "schedule: cross-attention interpolation" in b["labels"] and "eval/" not in " ".join(b["labels"])
    assert b["cells"]["schedule: self-attention interpolation"] == ["none configured"]
    # every target of the image in one row, each with its label and confidences
    image = key.rsplit("/", 1)[0]
    row = browser.execute_script(
        "const s = Array.from(document.querySelectorAll('section.image')).find(x => x.querySelector('h2')"
        ".textContent.startsWith(arguments[0]));"
        "return Array.from(s.querySelectorAll('.row-all figure')).map(f => f.dataset.name)", image)
    targets = sorted((int(k.rsplit("/t", 1)[1]), v) for k, v in metrics.items() if k.startswith(image + "/"))
    assert row == ["original", "reconstruction"] + [f"→ {v['target_label']} ({t})" for t, v in targets]


def test_flat_series_draw_flat_and_the_best_iterate_is_marked(browser, built, result_world):
    metrics = shard_metrics(result_world["uvce"])
    key = next(k for k, m in metrics.items() if m["status"] == "no_improvement")  # p(target) is constant
    assert len(set(metrics[key]["confidences"]["conf_0"])) == 1
    open_page(browser, page_of_key(built, key))
    got = browser.execute_script("""
        const b = Array.from(document.querySelectorAll('.result')).find(x => x.dataset.key === arguments[0]);
        return Array.from(b.querySelectorAll('svg.curve')).map(s => ({
            y: [Number(s.dataset.y0), Number(s.dataset.y1)], best: !!s.querySelector('line.best'),
            ticks: Array.from(s.querySelectorAll('text.yt, text.xt')).map(t => t.textContent),
            lines: Array.from(s.querySelectorAll('polyline')).map(p => [p.dataset.name,
                   p.getAttribute('points').trim().split(' ').map(xy => Number(xy.split(',')[1]))])}))""", key)
    conf = next(g for g in got if g["lines"][0][0] == "p(target)")
    assert conf["y"] == [0.0, 1.0] and len(set(conf["lines"][0][1])) == 1  # shared 0..1 axis, drawn flat
    assert all(g["best"] for g in got)
    assert not any(re.search(r"\de[-+]", t) for g in got for t in g["ticks"])


def test_lightbox_zooms_and_steps_through_a_row(browser, built, result_world):
    key = next(iter(shard_metrics(result_world["uvce"])))
    open_page(browser, page_of_key(built, key))
    browser.execute_script(
        "const b = Array.from(document.querySelectorAll('.result')).find(x => x.dataset.key === arguments[0]);"
        "b.querySelector('a.pic').click();", key)
    st = browser.execute_script("return window.diginLightbox.state()")
    assert st["at"] == 0 and st["n"] >= 6 and not browser.execute_script(
        "return document.getElementById('lightbox').hidden")
    src = browser.execute_script("return document.querySelector('#lightbox .view').getAttribute('src')")
    assert src and src.startswith("../img/")
    browser.execute_script("window.diginLightbox.act('in'); window.diginLightbox.act('next')")
    st2 = browser.execute_script("return window.diginLightbox.state()")
    assert st2["at"] == 1 and st2["zoom"] == pytest.approx(st["zoom"] * 1.5)
    for _ in range(3):  # on to the heat map (orig, recon, sd, ours, heat): a composite of two loaded images
        browser.execute_script("window.diginLightbox.act('next')")
    assert browser.execute_async_script(
        "const done = arguments[arguments.length - 1], v = document.querySelector('#lightbox .view');"
        "Promise.all(Array.from(v.querySelectorAll('img')).map(i => i.decode())).then(() => done("
        "v.classList.contains('heat') && v.querySelectorAll('img').length === 2 && "
        "Array.from(v.querySelectorAll('img')).every(i => i.naturalWidth > 0)), () => done(false))")
    browser.execute_script("document.dispatchEvent(new KeyboardEvent('keydown', {key: 'Escape'}))")
    assert browser.execute_script("return document.getElementById('lightbox').hidden")


def test_heat_map_shows_the_difference(browser, tmp_path):
    """|ours − orig| drawn by the browser: identical images give black, a change shows where it is."""
    from PIL import Image

    from digin.stages.gallery import write_gallery
    from digin.stages.gallery.records import ResultRecord

    orig = np.full((64, 64, 3), 120, np.uint8)
    ours = orig.copy()
    ours[:, 32:] = 250  # right half changed by 130 / 255 > 1 / HEAT_GAIN: white
    recs = [ResultRecord(key=f"ds/val/0000{i}/t1", task="uvce", group="g", images={"orig": orig, "ours": o},
                         metrics={"start": 0, "target": 1, "start_label": "a", "target_label": "b"})
            for i, o in enumerate((orig, ours))]
    write_gallery(recs, tmp_path / "g")
    open_page(browser, tmp_path / "g" / "uvce" / "0-a.html")
    shots = []
    for k in ("ds/val/00000/t1", "ds/val/00001/t1"):
        el = browser.execute_script(
            "const b = Array.from(document.querySelectorAll('.result')).find(x => x.dataset.key === arguments[0]);"
            "const h = b.querySelector('a.pic.heat'); h.scrollIntoView();"
            "return Promise.all(Array.from(h.querySelectorAll('img')).map(i => i.decode())).then(() => h);", k)
        shots.append(np.asarray(Image.open(__import__("io").BytesIO(el.screenshot_as_png)).convert("RGB"), np.int32))
    same, diff = shots
    assert same.max() < 20  # black
    w = diff.shape[1]
    assert diff[:, : w // 2 - 4].max() < 20 and diff[:, w // 2 + 4:].min() > 230  # white where it changed


def test_neuron_page_has_top_images_words_and_consistent_tags(browser, built, result_world):
    folder = result_world["neurons"].parent
    open_page(browser, built / "neurons" / "neuron-3.html")
    got = browser.execute_script(
        "return {top: Array.from(document.querySelectorAll('.top figure')).map(f => [f.dataset.key, "
        "Number(f.querySelector('.sc').dataset.v)]), words: Array.from(document.querySelectorAll('.words .w'))"
        ".map(w => w.textContent), dead: !!document.getElementById('dead'), "
        "status: document.querySelector('.nsum').dataset.status, title: document.querySelector('h1').textContent,"
        "loaded: Array.from(document.images).every(i => i.loading !== 'lazy' || true)}")
    top = json.loads((folder / "neuron_3_top_images.json").read_text())["images"]
    assert got["top"] == [[t["key"], t["activation"]] for t in top]
    assert got["words"][0] == "stripes (2)" and INJECTED + " (1)" in got["words"] and not got["dead"]
    assert "neuron 3: stripes" in got["title"]
    open_page(browser, built / "neurons" / "neuron-11.html")
    assert browser.execute_script("return !!document.getElementById('dead') && "
                                  "document.querySelector('.nsum').dataset.status === 'dead_unit'")
    # grid rows: a status tag and a success flag that never contradict each other
    open_page(browser, built / "neurons" / "index.html")
    for st, ok, text in browser.execute_script(
            "return Array.from(document.querySelectorAll('#grid .row')).map(r => [r.dataset.status, "
            "r.dataset.success, r.querySelector('.info').textContent])"):
        assert not (ok == "1" and st in ("no_improvement", "nonfinite", "dead_unit", "mixed")), (st, ok, text)


def test_top_page_strip_shows_original_ours_label_and_score(browser, built, result_world):
    metrics = shard_metrics(result_world["uvce"])
    open_page(browser, built / "index.html")
    loaded = ("return Array.from(document.querySelectorAll('figure.best img')).every(i => { i.scrollIntoView(); "
              "return i.complete && i.naturalWidth > 0; })")
    deadline = time.monotonic() + 20  # images decode asynchronously: on a loaded machine they may lag the DOM
    while not browser.execute_script(loaded) and time.monotonic() < deadline:
        time.sleep(0.2)
    strip = browser.execute_script(
        "return Array.from(document.querySelectorAll('figure.best')).map(f => [f.dataset.key, "
        "Array.from(f.querySelectorAll('img')).map(i => [i.alt, i.complete && i.naturalWidth > 0]), "
        "f.querySelector('figcaption').textContent, Array.from(f.querySelectorAll('span[data-v]'))"
        ".map(s => Number(s.dataset.v))])")
    uvce = [s for s in strip if s[0] in metrics]
    assert len(uvce) == 4
    gains = [metrics[k]["conf_0_ours"] - metrics[k]["conf_0_sd"] for k, *_ in uvce]
    assert gains == sorted(gains, reverse=True)
    for key, imgs, caption, (before, after) in uvce:
        m = metrics[key]
        assert imgs == [["orig", True], ["ours", True]]
        assert f"{m['start_label']} ({m['start']}) → " in caption and "p(target)" in caption
        assert (before, after) == pytest.approx((m["conf_0_sd"], m["conf_0_ours"]))


def test_comparison_joins_by_key_and_highlights_differences(browser, tmp_path, result_world):
    from digin.stages.gallery.summary import mean
    from digin.stages.gallery.synthetic import write_uvce_results
    from digin.tasks.gallery import Config, run

    b = write_uvce_results(tmp_path / "fast", n_images=8, targets_per_image=2, classes=result_world["classes"],
                           size=96, per_shard=4, seed=3, layout="pair")
    run(Config(results=[str(result_world["uvce"])], compare=[str(b)], labels=["reference", "fast"],
               out=str(tmp_path / "g"), thumb_size=32))
    ma, mb = shard_metrics(result_world["uvce"]), shard_metrics(b)
    open_page(browser, tmp_path / "g" / "compare-uvce" / "index.html")
    got = browser.execute_script(
        "const o = {}; document.querySelectorAll('#cmp-summary tr[data-label]').forEach(tr => o[tr.dataset.label] "
        "= Array.from(tr.querySelectorAll('td')).map(td => td.dataset.v === '' ? null : Number(td.dataset.v)));"
        "return o")
    after = [[m["conf_0_ours"] for m in ms.values()] for ms in (ma, mb)]
    assert got["results joined by key"][:2] == [16, 16]
    assert got["mean p(target) of ours"] == pytest.approx([mean(after[0]), mean(after[1]),
                                                           mean(after[1]) - mean(after[0])])
    rows = browser.execute_script(
        "while (!document.getElementById('more').hidden) window.diginGallery.showMore();"
        "return Array.from(document.querySelectorAll('#grid .row')).map(r => [r.dataset.key, "
        "r.classList.contains('hl'), Array.from(r.querySelectorAll('img')).every(i => i.complete)])")
    assert len(rows) == 16
    for key, hl, _ in rows:
        a, bb = ma[key]["conf_0_ours"], mb[key]["conf_0_ours"]
        changed = (a is not None and a > 0.5) != (bb is not None and bb > 0.5) or (
            a is not None and bb is not None and abs(bb - a) >= 0.1)
        assert hl == changed, key
    assert "compare-uvce/index.html" in (tmp_path / "g" / "index.html").read_text()
    assert browser.execute_script("return window.__pwned === undefined") and INJECTED in browser.execute_script(
        "return document.body.textContent")


def test_comparison_without_common_keys_is_one_line(tmp_path, result_world):
    from digin.stages.gallery.synthetic import write_uvce_results
    from digin.tasks.gallery import Config, run

    other = write_uvce_results(tmp_path / "other", n_images=2, targets_per_image=1, size=16, dataset="elsewhere",
                               layout="pair")
    with pytest.raises(SystemExit) as e:
        run(Config(results=[str(result_world["uvce"])], compare=[str(other)], out=str(tmp_path / "g")))
    assert "no result keys in common" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "g").exists()


def test_thumbnails_come_from_the_results(tmp_path):
    """The stage's thumbnails are used as they are (or scaled): the build decodes no full image."""
    import digin.stages.gallery.build as build_mod
    from digin.stages.gallery.store import ImageStore
    from digin.stages.gallery.synthetic import write_uvce_results
    from digin.tasks.gallery import Config, run

    res = write_uvce_results(tmp_path / "uvce", n_images=3, targets_per_image=2, size=160, layout="pair")

    stores = []

    class Counting(ImageStore):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            stores.append(self)

    orig = build_mod.ImageStore
    build_mod.ImageStore = Counting
    try:
        for px in (128, 48):  # the stage's size, and smaller (scaled from the thumbnail)
            stores.clear()
            run(Config(results=[str(res)], out=str(tmp_path / f"g{px}"), thumb_size=px))
            assert stores[0].decoded == 0 and stores[0].given > 0
            from PIL import Image

            thumbs = list((tmp_path / f"g{px}" / "thumb").iterdir())
            assert thumbs and all(max(Image.open(t).size) == px for t in thumbs)
    finally:
        build_mod.ImageStore = orig


def test_exported_figures_open_in_the_browser(browser, tmp_path, result_world):
    """The SVG and PNG a `digin figure` writes open in Chromium with every image decoded and the rows asked for."""
    from digin.cli import main

    keys = sorted(shard_metrics(result_world["uvce"]))[:3]
    assert main(["figure", f"results=[{result_world['uvce']}]", f"keys=[{','.join(keys)}]", f"out={tmp_path}",
                 "layout=pairs", "formats=[png,svg]", "resolution=96"]) == 0
    browser.get((tmp_path / "figure.svg").as_uri())
    got = browser.execute_script(
        "return Array.from(document.querySelectorAll('g.row')).map(g => [g.querySelector('text').textContent, "
        "g.querySelectorAll('image').length])")
    assert [t.split(" · ")[0] for t, _ in got] == keys and all(n >= 4 for _, n in got)
    decoded = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "Promise.all(Array.from(document.querySelectorAll('image')).map(i => new Promise(ok => {"
        "const im = new Image(); im.onload = () => ok(im.naturalWidth > 0); im.onerror = () => ok(false);"
        "im.src = i.getAttribute('href'); }))).then(done)")
    assert decoded and all(decoded)
    browser.get((tmp_path / "figure.png").as_uri())
    assert browser.execute_script("return document.images[0].naturalWidth > 0")
