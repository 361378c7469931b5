"""Work plans at the task level: `select=` inverts only the images asked for and the UVCE stage joins them by key;
`plan=true` prints the plan without loading a model or writing; bad selections are refused before anything is
written."""
import json

import pytest

from digin.cli import main
from digin.shards.manifest import ShardSet


@pytest.fixture(scope="module")
def thirty(tmp_path_factory):
    from digin.shards.convert import convert
    from digin.shards.synthetic import make_image_folder

    root = tmp_path_factory.mktemp("sel")
    make_image_folder(root / "raw", classes=["cat", "dog", "fox"], n_per_class=10, size=40, seed=2)
    return convert("imagefolder", root / "raw", "val", root / "images", name="toyset", samples_per_shard=8,
                   progress=False).dir


def _invert(images, out, sd, *extra):
    return main(["invert", f"inputs={images}", f"out={out}", f"model_path={sd}", "resolution=32", "num_ddim_steps=3",
                 "method=negative_prompt", "batch_size=2", "device=cpu", "progress=false", *extra])


def test_select_inverts_exactly_the_keys_asked_for_and_uvce_joins_them(thirty, tiny_sd_dir, tmp_path):
    from digin.engine.classifiers import save_tiny_classifier

    keys = ["toyset/val/00003", "toyset/val/00011", "toyset/val/00012", "toyset/val/00020", "toyset/val/00029"]
    (tmp_path / "keys.txt").write_text("\n".join(keys) + "\n")
    assert _invert(thirty, tmp_path / "inv", tiny_sd_dir, f"select={tmp_path / 'keys.txt'}") == 0
    inv = ShardSet.load(tmp_path / "inv")
    assert sorted(k for r in inv.records.values() for k in r["keys"]) == keys
    assert inv.meta["plan"]["counts"] == {"input_keys": 30, "selected": 5}
    log = [json.loads(x) for p in (tmp_path / "inv" / "logs").glob("*.jsonl") for x in p.open()]
    summary = next(e for e in log if e["event"] == "summary")
    start = next(e for e in log if e["event"] == "start")
    images = ShardSet.load(thirty)
    spans = {k: sp for r in images.records.values() for k, sp in zip(r["keys"], r["spans"])}
    read = summary["io"]["samples"] - start["io_before_first_batch"]["samples"]  # this process's counter: a delta
    assert read == sum(spans[k][1] for k in keys)  # read only those five images

    clf = save_tiny_classifier(tmp_path / "clf", num_classes=3, size=32, seed=1)
    pairs = [[int(k[-5:]), (int(k[-5:]) // 10 + 1) % 3] for k in keys]
    assert main(["uvce", f"images={thirty}", f"inversions={tmp_path / 'inv'}", f"out={tmp_path / 'uvce'}",
                 f"model_path={tiny_sd_dir}", f"classifier=tiny:{clf}", "resolution=32", "num_ddim_steps=3",
                 "optim_params.sgd_steps=1", "augmentation_num_cutouts=2", "batch_size=4", "device=cpu",
                 "pairs=explicit", f"explicit_pairs={json.dumps(pairs)}", "progress=false"]) == 0
    out = ShardSet.load(tmp_path / "uvce")
    got = sorted(k for r in out.records.values() for k in r["keys"])
    assert got == sorted(f"{k}/t{t}" for k, (_, t) in zip(keys, pairs))
    assert not [x for r in out.records.values() for x in r["rejects"]]


def test_selections_by_class_and_per_class_count(thirty, tmp_path, capsys):
    assert _invert(thirty, tmp_path / "inv", "tiny", "class_idcs=[0,2]", "images_per_class=2", "plan=true",
                   "json=true") == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["items"] == 4 and report["counts"]["selected"] == 4
    assert not (tmp_path / "inv").exists()


def test_bad_selections_are_one_line_before_anything_is_written(thirty, tmp_path, capsys):
    (tmp_path / "keys.txt").write_text("toyset/val/00003\ntoyset/val/99999\nnot/a/key\n")
    assert _invert(thirty, tmp_path / "inv", "tiny", f"select={tmp_path / 'keys.txt'}") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2 of 3 selected keys are not in the input (toyset/val/99999, not/a/key)" in err[0]
    assert not (tmp_path / "inv").exists()
    with pytest.raises(SystemExit, match="items_per_shard=0 is not allowed"):  # the config check
        _invert(thirty, tmp_path / "inv", "tiny", "items_per_shard=0")
    with pytest.raises(SystemExit, match="schedule='fastest' is not allowed"):
        _invert(thirty, tmp_path / "inv", "tiny", "schedule=fastest")
    assert _invert(thirty, tmp_path / "inv", "tiny", "select=random") == 1
    assert "select=random needs num_images" in capsys.readouterr().err
    assert not (tmp_path / "inv").exists()


def test_plan_true_loads_nothing_and_writes_nothing(thirty, tmp_path, capsys):
    inv = tmp_path / "inv"
    assert _invert(thirty, inv, "tiny", "select=random", "num_images=7", "items_per_shard=2") == 0
    capsys.readouterr()
    args = ["uvce", f"images={thirty}", f"inversions={inv}", f"out={tmp_path / 'uvce'}",
            "model_path=/nonexistent/model", "classifier=tiny:/nonexistent/clf", "pairs=all_classes", "plan=true"]
    assert main(args + ["world=4"]) == 0
    text = capsys.readouterr().out
    assert "60 items (images 30, pairs 60, input_images 30)" in text and "on 4 rank(s)" in text
    assert "inversions 46" in text  # 23 of the 30 images have no inversion: their 46 pairs would be rejected
    assert main(args + ["json=true", "world=64", "items_per_shard=1"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert (r["items"], r["units"], r["world"], r["idle_ranks"]) == (60, 60, 64, 4)
    assert r["pflop"] > 0 and r["cost_rows"].startswith("sd15 guidance")
    assert not (tmp_path / "uvce").exists()


def test_template_captions_decode_no_image(thirty, tmp_path, monkeypatch):
    import digin.shards.decode as D

    def no(*a, **k):
        raise AssertionError("an image was decoded")

    monkeypatch.setattr(D, "decode_image", no)
    assert main(["caption", f"inputs={thirty}", f"out={tmp_path / 'cap'}", "backend=template", "progress=false"]) == 0
    assert sum(r["count"] for r in ShardSet.load(tmp_path / "cap").records.values()) == 30
