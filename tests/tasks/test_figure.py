"""`digin figure`: paper-ready grids of chosen results as PNG, SVG and PDF, with the requested rows, labels and
confidences; unknown keys are one line."""
import re
import xml.etree.ElementTree as ET
import zlib

import pytest

from digin.cli import main
from digin.shards.reader import iter_samples

CLASSES = ["tench", "goldfish", "<b>hen</b>", "ostrich"]


@pytest.fixture(scope="module")
def uvce(tmp_path_factory):
    from digin.stages.gallery.synthetic import write_uvce_results

    root = tmp_path_factory.mktemp("fig")
    return write_uvce_results(root / "uvce", n_images=4, targets_per_image=2, classes=CLASSES, size=48, per_shard=2,
                              layout="pair", no_improvement_every=3)


def pdf_objects(data: bytes) -> dict:
    """Object number → body, checked against the xref table (every offset starts its object)."""
    assert data.startswith(b"%PDF-1.") and data.rstrip().endswith(b"%%EOF")
    start = int(data[data.rindex(b"startxref") + 9:].split()[0])
    assert data[start:start + 4] == b"xref"
    lines = data[start:].split(b"\n")
    n = int(lines[1].split()[1])
    objs = {}
    for i in range(1, n):
        off = int(lines[2 + i].split()[0])
        assert data[off:].startswith(f"{i} 0 obj".encode()), i
        objs[i] = data[off:data.index(b"endobj", off)]
    return objs


def pdf_texts(objs: dict) -> list[str]:
    out = []
    for body in objs.values():
        if b"/FlateDecode" in body and b"/Subtype /Image" not in body:
            stream = body[body.index(b"stream\n") + 7:body.rindex(b"\nendstream")]
            out += [t.decode("latin-1") for t in re.findall(rb"\(((?:[^()\\]|\\.)*)\) Tj", zlib.decompress(stream))]
    return out


def test_uvce_rows_in_three_formats(uvce, tmp_path):
    from PIL import Image

    metrics = {s["__key__"]: s["metrics"] for s in iter_samples(uvce)}
    keys = ["synthetic/val/00002", "synthetic/val/00000/t1"]  # an image (all its targets), one pair
    assert main(["figure", f"results=[{uvce}]", f"keys=[{','.join(keys)}]", f"out={tmp_path}", "resolution=200"]) == 0
    want = [("synthetic/val/00002", [k for k in sorted(metrics) if k.startswith("synthetic/val/00002/")]),
            ("synthetic/val/00000", ["synthetic/val/00000/t1"])]
    from digin.stages.gallery.svg import fmt_value

    png = Image.open(tmp_path / "figure.png")
    png.load()
    svg = ET.parse(tmp_path / "figure.svg").getroot()
    ns = "{http://www.w3.org/2000/svg}"
    rows = svg.findall(f"{ns}g")
    assert len(rows) == len(want)
    for row, (image, targets) in zip(rows, want):
        texts = [t.text for t in row.iter(f"{ns}text")]
        assert texts[0].startswith(image) and len(row.findall(f"{ns}image")) == 1 + len(targets)
        for k in targets:
            m = metrics[k]
            assert f"→ {m['target_label']} ({m['target']})" in texts  # the label stays text (escaped in the file)
            assert f"p(target) {fmt_value(m['conf_0_ours'])}" in texts
    assert "<b>hen</b>" not in (tmp_path / "figure.svg").read_text()  # escaped
    assert (png.width, png.height) == (int(svg.get("width")), int(svg.get("height")))
    objs = pdf_objects((tmp_path / "figure.pdf").read_bytes())
    assert sum(b"/Subtype /Image" in b for b in objs.values()) == sum(1 + len(t) for _, t in want)
    texts = pdf_texts(objs)
    assert texts[0].startswith("synthetic/val/00002") and "original" in texts
    assert any(t.startswith("-> ") for t in texts)  # → as ->, Helvetica has no arrow


def test_pairs_layout_columns_and_sort(uvce, tmp_path):
    from digin.stages.gallery.figure import build_rows, select, sort_records
    from digin.shards.manifest import ShardSet

    ss = ShardSet.load(uvce)
    keys = sorted({s["__key__"] for s in iter_samples(uvce)})
    recs = select([ss], keys)
    by_gain = sort_records(recs, "gain")
    gains = [r.metrics["conf_0_ours"] - r.metrics["conf_0_sd"] for r in by_gain]
    assert gains == sorted(gains, reverse=True)
    layout, rows = build_rows(by_gain[:3], "pairs", ("orig", "sd", "ours", "diff", "overlay"))
    assert layout == "pairs" and [r.keys for r in rows] == [[r.key] for r in by_gain[:3]]
    assert [p.lines[0] for p in rows[0].panels] == ["original", "sd (iterate 0)",
                                                   f"ours (iterate {by_gain[0].metrics['best_iter']})",
                                                   "|ours − orig|", "mask over original"]
    assert main(["figure", f"results=[{uvce}]", f"keys=[{keys[0]},{keys[1]}]", f"out={tmp_path}", "layout=pairs",
                 "formats=[png]", "columns=[orig,ours,diff]", "name=p"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]


def test_heat_map_and_overlay_match_the_pages():
    import numpy as np

    from digin.stages.gallery.figure import heat_map, overlay

    a = np.full((4, 4, 3), 100, np.uint8)
    b = a.copy()
    b[0, 0] = 100 + 64  # mean |Δ| = 64 / 255 ≈ 0.25: the top of the scale
    h = heat_map(b, a)
    assert h[1, 1].tolist() == [0, 0, 0] and h[0, 0].tolist() == [255, 255, 255]
    mask = np.zeros((4, 4), np.uint8)
    mask[:2] = 255
    o = overlay(a, mask)
    assert o[0, 0].tolist() == [100] * 3 and o[3, 3].tolist() == [40] * 3


def test_diff_and_neuron_layouts(tmp_path):
    from digin.stages.gallery.figure import build_rows, select
    from digin.shards.manifest import ShardSet
    from tests.gallery.conftest import write_diff_results, write_neuron_folder

    diff = ShardSet.load(write_diff_results(tmp_path / "diff", classes=("cat", "dog")))
    layout, rows = build_rows(select([diff], ["diff/c00001"]))
    assert layout == "diff" and len(rows) == 1 and rows[0].title.startswith("dog (1)")
    assert [p.lines[0] for p in rows[0].panels] == ["sd · image 0", "ours · image 0", "sd · image 1", "ours · image 1"]
    assert any(line.startswith("C1 p(y)") for line in rows[0].panels[1].lines)
    assert any(line.startswith("C2 p(y)") for line in rows[0].panels[1].lines)
    vis = ShardSet.load(write_neuron_folder(tmp_path / "n"))
    layout, rows = build_rows(select([vis], ["neurons/n9", "neurons/n3"]))
    assert layout == "neurons" and [r.title for r in rows] == ["neuron 9: stripes", "neuron 3: stripes"]
    assert rows[0].panels[0].lines == ["image 0", "activation 1 → 2.4"]


def test_bad_selection_is_one_line(uvce, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["figure", f"results=[{uvce}]", "keys=[nope/1,synthetic/val/00001/t99,synthetic/val/00001]",
              f"out={tmp_path / 'f'}"])
    msg = str(e.value)
    assert msg.startswith("digin figure: unknown keys") and "nope/1" in msg and "synthetic/val/00001/t99" in msg
    assert "\n" not in msg and "synthetic/val/00001," not in msg and not (tmp_path / "f").exists()
    for bad, named in ((["layout=grid"], "digin: layout='grid' is not allowed"), (["formats=[gif]"], "digin figure: "),
                       (["columns=[orig,nope]"], "digin figure: "), (["sort=size"], "digin: sort='size' is not allowed")):
        with pytest.raises(SystemExit, match=named):  # layout / sort: the config's choices refuse them by name
            main(["figure", f"results=[{uvce}]", "keys=[synthetic/val/00001]", f"out={tmp_path / 'f'}", *bad])
        assert not (tmp_path / "f").exists()
