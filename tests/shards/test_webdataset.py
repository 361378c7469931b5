"""Existing webdataset shard sets as inputs (`digin shard source=webdataset`), and digin's own shards read back by
`webdataset.WebDataset`."""
import io
import pickle
import shutil
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from digin.cli import main
from digin.shards.manifest import ShardError, ShardSet, sha256_file
from digin.shards.reader import iter_samples, iter_shard

from digin.stages.verify import verify_shard_set
from digin.shards.wdsindex import FieldMap, index_webdataset
from digin.toy.world import SHAPES
from tests.shards.foreign import LAYOUTS, scene_jpeg, write_foreign_set
from .stage_script import run_keys

CLASSES = "[" + ",".join(SHAPES) + "]"


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("foreign")
    return {layout: write_foreign_set(root / layout, layout) for layout in LAYOUTS}


def _pixels(jpg: bytes):
    return np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB"))


def test_imagenet_layout_indexed_in_place_from_a_brace_pattern(sets, tmp_path):
    fs, out = sets["imagenet"], tmp_path / "idx"
    assert main(["shard", "source=webdataset", f"urls={fs['pattern']}", f"out={out}", f"classes={CLASSES}",
                 "workers=2", "verify=true"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["commits", "manifest.json"]  # no image rewritten
    ss = ShardSet.load(out)
    assert [r["url"] for r in ss.records.values()] == [str(t) for t in fs["tars"]]
    assert [r["sha256"] for r in ss.records.values()] == [sha256_file(t) for t in fs["tars"]]
    assert [r["count"] for r in ss.records.values()] == [3, 3, 1]
    assert ss.classes == list(SHAPES) and ss.meta["webdataset"]["fields"]["label"] == "cls"  # auto: cls present
    got = list(iter_samples(ss))
    assert [s["__key__"] for s in got] == [f"webdataset/val/{i:05d}" for i in range(7)]
    for s, want in zip(got, fs["samples"]):
        assert s["meta"] == {"label": want["label"], "label_name": SHAPES[want["label"]], "source": want["key"]}
        np.testing.assert_array_equal(s["image"], _pixels(want["jpg"]))
        assert "caption" not in s  # auto: no txt member in this layout
    assert verify_shard_set(out, deep=True).ok


def test_img2dataset_layout_from_a_list_with_a_pipe_url(sets, tmp_path):
    fs = sets["img2dataset"]
    urls = [f"pipe:cat {fs['tars'][0]}"] + [str(t) for t in fs["tars"][1:]]
    ss = index_webdataset(urls, tmp_path / "idx", name="web", split="train", fields=FieldMap(label="json:label"),
                          key_scheme="source", classes=list(SHAPES), workers=2, progress=False)
    assert ss.records[0]["url"] == urls[0] and ss.records[0]["file"] == "img2dataset-0000.tar"
    got = list(iter_samples(ss))
    assert [s["__key__"] for s in got] == [f"web/train/{s['key']}" for s in fs["samples"]]
    for s, want in zip(got, fs["samples"]):
        assert s["caption"] == want["caption"] and s["meta"]["label"] == want["label"]  # caption: auto -> txt
        np.testing.assert_array_equal(s["image"], _pixels(want["jpg"]))
    assert verify_shard_set(tmp_path / "idx", deep=True).ok


def test_imagenet_val_keys_and_a_copy_read_like_the_index(sets, tmp_path):
    from digin.stages.pairs import key_index

    fs = sets["imagenet"]
    kw = dict(key_scheme="imagenet_val", classes=list(SHAPES), progress=False)
    idx = index_webdataset(fs["pattern"], tmp_path / "idx", **kw)
    cp = index_webdataset(fs["pattern"], tmp_path / "copy", copy=True, workers=2, **kw)
    by_class = {}
    for s in fs["samples"]:
        by_class.setdefault(s["label"], []).append(s["filename"])
    # the reference's index: class·50 + rank of the original file name within its class
    want = {s["label"] * 50 + sorted(by_class[s["label"]]).index(s["filename"]): s for s in fs["samples"]}
    a = {s["__key__"]: s for s in iter_samples(idx)}
    b = {s["__key__"]: s for s in iter_samples(cp)}
    assert set(a) == set(b) and sorted(key_index(k) for k in a) == sorted(want)
    for k, s in a.items():
        w = want[key_index(k)]
        assert s["meta"] == {"label": w["label"], "label_name": SHAPES[w["label"]], "source": w["key"],
                             "file": w["filename"]}
        assert b[k]["meta"] == s["meta"]
        np.testing.assert_array_equal(b[k]["image"], s["image"])
    assert idx.meta["source"] == "imagenet" and idx.name == "imagenet"  # stages apply ImageNet's defaults
    assert sorted(p.name for p in cp.dir.glob("*.tar")) == [f"imagenet-val-{i:06d}.tar" for i in range(3)]
    assert "webdataset" not in cp.meta and verify_shard_set(cp.dir, deep=True).ok
    assert [r["keys"] for r in cp.records.values()] == [r["keys"] for r in idx.records.values()]
    # copy resumes: a second run finds every shard committed and writes nothing
    before = {p.name: p.stat().st_mtime_ns for p in cp.dir.glob("*.tar")}
    index_webdataset(fs["pattern"], tmp_path / "copy", copy=True, **kw)
    assert {p.name: p.stat().st_mtime_ns for p in cp.dir.glob("*.tar")} == before


def test_changed_truncated_or_missing_tar_stops_that_shard(sets, tmp_path):
    src = shutil.copytree(sets["imagenet"]["tars"][0].parent, tmp_path / "tars")
    tars = [src / f"imagenet-{i:04d}.tar" for i in range(3)]
    ss = index_webdataset(str(src / "imagenet-{0000..0002}.tar"), tmp_path / "idx", classes=list(SHAPES),
                          progress=False)
    data = bytearray(tars[0].read_bytes())
    data[1500] ^= 0xFF  # inside the first image: same size, other bytes
    tars[0].write_bytes(bytes(data))
    tars[1].write_bytes(tars[1].read_bytes()[:-1024])
    tars[2].unlink()
    for i, why in enumerate(["sha256 differs", "bytes, manifest says", "cannot read"]):
        with pytest.raises(ShardError, match=why) as e:
            list(iter_shard(ss, i))
        assert str(tars[i]) in str(e.value)
    summary = run_keys(tmp_path / "idx", tmp_path / "out", lambda b: [{"n": {"i": 1}}] * b.n_real, 2, {},
                        progress=False, raise_on_failure=False)
    assert summary.processed == 0 and sorted(f["shard"] for f in summary.failed_shards) == [0, 1, 2]
    assert all(str(tars[f["shard"]]) in f["error"] for f in summary.failed_shards)
    report = verify_shard_set(tmp_path / "idx")
    assert report.kinds() == {"sha256": 1, "size": 1, "missing": 1}
    assert {p["path"] for p in report.problems} == {str(t) for t in tars}


def _tar(path, members):
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return path


@pytest.mark.parametrize("case", ["no_match", "pipe_fails", "no_image", "label_range", "json_field",
                                  "filename_field", "urls_elsewhere"])
def test_bad_input_one_line_before_anything_is_written(sets, tmp_path, case):
    net, web = sets["imagenet"], sets["img2dataset"]
    no_image = [("a.jpg", net["samples"][0]["jpg"]), ("a.cls", b"1"), ("b.cls", b"2")]  # b has no image
    args = {
        "no_match": [f"urls={tmp_path / 'nothing-{0000..0003}.tar'}"],
        "pipe_fails": [f"urls=[{net['tars'][0]},pipe:cat {tmp_path / 'gone.tar'}]", f"classes={CLASSES}"],
        "no_image": [f"urls=[{net['tars'][0]},{_tar(tmp_path / 'x.tar', no_image)}]",
                     f"classes={CLASSES}"],
        "label_range": [f"urls={net['pattern']}", "classes=[circle,cross]"],
        "json_field": [f"urls={net['pattern']}", "label_member=json:label"],
        "filename_field": [f"urls={web['pattern']}", "key_scheme=imagenet_val", "label_member=json:label",
                           f"classes={CLASSES}"],
        "urls_elsewhere": [f"urls={net['pattern']}"],
    }[case]
    wrong = next(s for s in net["samples"] if s["label"] >= 2)
    want = {
        "no_match": "matches no file",
        "pipe_fails": f"tar pipe:cat {tmp_path / 'gone.tar'}: cannot read it (the command exited with status 1)",
        "no_image": f"tar {tmp_path / 'x.tar'}: sample 'b': no image member (looked for jpg, jpeg, png, webp)",
        "label_range": f"sample {wrong['key']!r}: label {wrong['label']} is outside the 2 class names",
        "json_field": f"tar {net['tars'][0]}: sample 'ima000000': json field 'label' (the label) is missing",
        "filename_field": f"tar {web['tars'][0]}: sample 'img000000': json field 'filename' (the file name) is "
                          "missing",
        "urls_elsewhere": "urls= is for source=webdataset",
    }[case]
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main(["shard", f"source={'imagefolder' if case == 'urls_elsewhere' else 'webdataset'}", f"out={out}", *args])
    msg = str(e.value)
    assert msg.startswith("digin shard: ") and want in msg and "\n" not in msg, msg
    assert not out.exists()


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))  # unpickling creates the sentinel file


def test_unsafe_names_and_pickle_members_are_refused(tmp_path):
    sentinel = tmp_path / "PWNED"
    evil = pickle.dumps(_Evil(str(sentinel)))
    jpg = scene_jpeg(3)[0]
    tar = _tar(tmp_path / "mixed-0000.tar", [
        ("ok0.jpg", jpg), ("ok0.cls", b"1"),
        ("evil1.cls", b"1"), ("evil1.jpg", jpg), ("evil1.meta.pyd", evil),
        ("../../trav2.jpg", jpg), ("/abs3.jpg", jpg), ("sp ace4.jpg", jpg),
        ("evil5.cls", b"2"), ("evil5.jpg", jpg), ("evil5.pth", evil),
        ("dup6.cls", b"0"), ("dup6.jpg", jpg), ("dup6.jpg", jpg),
        ("ok7.cls", b"2"), ("ok7.jpg", jpg)])
    ss = index_webdataset(str(tar), tmp_path / "idx", classes=["a", "b", "c"], progress=False)
    reasons = [r["reason"] for r in ss.records[0]["rejects"]]
    assert reasons == ["meta.pyd:forbidden_member"] + ["bad_member_name"] * 3 + ["pth:forbidden_member",
                                                                                  "duplicate_field"]
    got = list(iter_samples(ss, include_rejects=True))
    assert [s.get("__reject__") for s in got] == [None] + reasons + [None]
    assert [s["__key__"] for s in got if "__reject__" not in s] == ["webdataset/val/00000", "webdataset/val/00001"]
    assert [s["meta"]["label"] for s in got if "__reject__" not in s] == [1, 2]
    summary = run_keys(tmp_path / "idx", tmp_path / "out", lambda b: [{"n": {"i": 1}}] * b.n_real, 2, {},
                        progress=False)
    assert (summary.processed, summary.rejected) == (2, 6)
    assert not sentinel.exists() and not (tmp_path.parent / "trav2.jpg").exists()


def test_digin_shards_read_back_with_webdataset(toy_shards, tmp_path):
    import webdataset as wds
    from safetensors.torch import load

    from digin.shards.naming import decode_key

    def process(b):
        return [{"recon": s["image"], "stats": {"pos": s["__pos__"]}, "prompt": f"image {s['__key__']}",
                 "latents": {"z": torch.full((2,), float(s["__pos__"]))}} for s in b.samples[:b.n_real]]

    run_keys(toy_shards, tmp_path / "out", process, 2, {}, progress=False)
    for folder in (toy_shards, tmp_path / "out"):
        ss = ShardSet.load(folder)
        ours = {s["__key__"]: s for s in iter_samples(ss)}
        ds = wds.WebDataset([str(ss.path(i)) for i in ss.indices()], shardshuffle=False).decode("rgb8")
        got = list(ds)
        assert [decode_key(s["__key__"]) for s in got] == list(ours)  # '~' stands for '/' in member names
        for s in got:
            o = ours[decode_key(s["__key__"])]
            if "image.jpg" in s:  # converted input: original JPEG + meta.json
                np.testing.assert_array_equal(s["image.jpg"], o["image"])
                assert s["meta.json"] == o["meta"]
            else:
                np.testing.assert_array_equal(s["recon.png"], o["recon"])
                assert s["stats.json"] == o["stats"] and s["prompt.txt"] == o["prompt"]
                assert torch.equal(load(s["latents.safetensors"])["z"], o["latents"]["z"])
