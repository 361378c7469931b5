import json

import numpy as np
import pytest

from digin.stages.gallery.records import ShardFields, default_group, records_from_shards
from tests.gallery.conftest import png


def write_result_shards(folder, name="uvce", image_fields=("orig", "sd", "ours"), metrics_field="metrics"):
    """A committed result shard set like the uvce task writes (2 samples, one with a mask)."""
    from digin.shards.manifest import FORMAT, MANIFEST, write_json
    from digin.shards.writer import ShardWriter

    folder.mkdir(parents=True)
    write_json(folder / MANIFEST, {"format": FORMAT, "kind": "results", "name": name})
    w = ShardWriter(folder, 0, f"{name}-000000.tar")
    for i, target in enumerate([8, 9]):
        fields = {f: ("png", png((40 * i, 20, 200))) for f in image_fields}
        fields[metrics_field] = {"start": 7, "target": target, "start_label": "cock", "index": 350 + i,
                                 "target_label": "hen" if target == 8 else "ostrich", "conf_target_ours": 0.5,
                                 "loss_curve": [2.0, 1.5, 1.0]}
        if i == 0:
            fields["mask"] = np.full((32, 24), 255, np.uint8)
        w.add(f"imagenet/val/{350 + i:05d}/t{target}", fields)
    w.commit()
    return folder


def test_records_from_result_shards(tmp_path):
    folder = write_result_shards(tmp_path / "res")
    recs = records_from_shards(folder)
    assert [r.key for r in recs] == ["imagenet/val/00350/t8", "imagenet/val/00351/t9"]
    r0 = recs[0]
    assert r0.task == "uvce" and r0.group == "7_to_8" and r0.source == str(folder)
    assert set(r0.images) == {"orig", "sd", "ours"} and set(r0.aux_images) == {"mask"}
    assert r0.loss_curve == [2.0, 1.5, 1.0] and "loss_curve" not in r0.metrics
    assert r0.images["ours"][:8] == b"\x89PNG\r\n\x1a\n"  # kept as written: the gallery copies the bytes
    assert r0.image_array("ours").shape == (32, 24, 3) and r0.image_array("mask").shape == (32, 24, 3)
    assert recs[1].aux_images == {}


def test_multi_target_samples_and_input_counts(tmp_path):
    from digin.stages.gallery.records import input_counts, iter_records
    from digin.stages.gallery.synthetic import write_uvce_results
    from digin.shards.manifest import ShardSet

    folder = write_uvce_results(tmp_path / "uvce", n_images=5, targets_per_image=3, per_shard=2,
                                rejects_per_shard=["image:bad_png", "skip:no_pairs"])
    recs = list(iter_records(folder))
    assert len(recs) == 15 and recs[0].key == "synthetic/val/00000/t1" and recs[0].group == "0_to_1"
    assert set(recs[0].images) == {"orig", "recon", "sd", "ours"} and set(recs[0].aux_images) == {"mask", "attention"}
    assert recs[0].images["orig"] is recs[1].images["orig"]  # one original per image, shared by its targets
    counts = input_counts(ShardSet.load(folder))
    assert counts == {"written": 5, "rejected": 3, "skipped": 3, "reasons": {"image:bad_png": 3, "skip:no_pairs": 3}}


def test_configurable_field_names(tmp_path):
    folder = write_result_shards(tmp_path / "res", image_fields=("original", "edit"), metrics_field="info")
    fields = ShardFields(images=["original", "edit"], metrics="info")
    recs = records_from_shards(folder, fields, task="mytask")
    assert set(recs[0].images) == {"original", "edit"} and recs[0].metrics["target"] == 8
    assert recs[0].task == "mytask"
    assert records_from_shards(folder)[0].images == {}  # default names do not match these shards


def test_default_group():
    assert default_group({"group": "g"}) == "g"
    assert default_group({"start": 3, "neuron": 12}) == "3_neuron_12"
    assert default_group({"neuron": 12}) == "neuron_12"
    assert default_group({"start": 3, "target": 4}) == "3_to_4"
    assert default_group({}) == "all"


def test_gallery_task_run(tmp_path):
    from digin.tasks.gallery import Config, run

    folder = write_result_shards(tmp_path / "res")
    index = run(Config(results=[str(folder)], out=str(tmp_path / "g")))
    assert index.is_file()
    page = (tmp_path / "g" / "uvce" / "7-cock.html").read_text()
    assert "cock (7) → hen (8)" in page and "<svg" in page


def test_gallery_task_refuses_bad_input_before_writing(tmp_path):
    from digin.tasks.gallery import Config, run

    folder = write_result_shards(tmp_path / "res")
    out = tmp_path / "g"
    with pytest.raises(SystemExit, match="results="):
        run(Config(out=str(out)))
    with pytest.raises(SystemExit, match=f"results: {tmp_path / 'nope'} is not a result shard set"):
        run(Config(results=[str(folder), str(tmp_path / "nope")], out=str(out)))
    with pytest.raises(SystemExit, match="evals: .*per_sample.jsonl not found"):
        run(Config(results=[str(folder)], evals=[str(tmp_path)], out=str(out)))
    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "per_sample.jsonl").write_text('{"key": "a"}\n{broken\n')
    with pytest.raises(SystemExit, match="per_sample.jsonl line 2 is not JSON"):
        run(Config(results=[str(folder)], evals=[str(tmp_path / "ev")], out=str(out)))
    with pytest.raises(SystemExit, match="thumb_size"):
        run(Config(results=[str(folder)], thumb_size=4, out=str(out)))
    assert not out.exists()  # nothing written


def test_gallery_config_through_cli_overrides():
    from digin.cli import build_config
    from digin.tasks.gallery import Config

    cfg = build_config(Config, ["results=[a,b]", "fields.metrics=info", "columns=[orig,ours]"])
    assert cfg.results == ["a", "b"] and cfg.fields.metrics == "info" and cfg.columns == ["orig", "ours"]
    assert json.dumps(cfg.fields.images) == '["orig", "recon", "sd", "ours"]'
    cfg = build_config(Config, ["evals=[/e]", "thumb_size=96", "max_top_images=3"])
    assert cfg.evals == ["/e"] and cfg.thumb_size == 96 and cfg.max_top_images == 3


def test_a_run_without_results_still_gets_its_summary(tmp_path):
    from digin.shards.manifest import FORMAT, MANIFEST, write_json
    from digin.shards.writer import ShardWriter
    from digin.tasks.gallery import Config, run

    folder = tmp_path / "res"
    folder.mkdir()
    write_json(folder / MANIFEST, {"format": FORMAT, "kind": "results", "name": "uvce"})
    ShardWriter(folder, 0, "uvce-000000.tar").commit(rejects=[{"key": "a/b/1", "reason": "image:bad_png", "pos": 0}])
    run(Config(results=[str(folder)], out=str(tmp_path / "g")))
    page = (tmp_path / "g" / "uvce" / "index.html").read_text()
    assert 'id="sum-rejected" data-v="1.0"' in page and 'id="sum-results" data-v="0.0"' in page
    assert "image:bad_png" in page and 'href="uvce/index.html"' in (tmp_path / "g" / "index.html").read_text()
