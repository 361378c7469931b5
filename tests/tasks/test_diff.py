import math

import pytest

from digin.cli import build_config
from digin.engine.classifiers import save_tiny_classifier
from digin.stages.gallery.records import records_from_shards
from digin.shards.manifest import ShardSet
from digin.tasks import diff


def test_diff_end_to_end_two_classifiers(tiny_sd_dir, tmp_path):
    c1 = save_tiny_classifier(tmp_path / "c1", num_classes=3, size=32, seed=1)
    c2 = save_tiny_classifier(tmp_path / "c2", num_classes=3, size=32, seed=2)
    args = [f"out={tmp_path / 'diff'}", f"model_path={tiny_sd_dir}", f"classifier1=tiny:{c1}",
            f"classifier2=tiny:{c2}", f"eval_classifier=tiny:{c1}", "class_names=[cat,dog,fox]",
            "target_classes=[0,2]", "num_images=3", "resolution=32", "num_ddim_steps=4", "optim_params.sgd_steps=4",
            "optim_params.sgd_stepsize=0.05", "augmentation_num_cutouts=2", "batch_size=4", "device=cpu",
            "progress=false"]
    cfg = build_config(diff.Config, args)
    assert diff.run(cfg) == 0
    recs = records_from_shards(tmp_path / "diff" / "results")
    assert sorted((r.metrics["class"], r.metrics["i"]) for r in recs) == [(c, i) for c in (0, 2) for i in range(3)]
    for r in recs:
        assert r.metrics["loss_name"] == "conf"
        assert all(v is not None and math.isfinite(v) for v in r.metrics["loss"])
        c = r.metrics["confidences"]
        k = r.metrics["best_iter"]
        # the disagreement p1 - p2 of `ours` is at least that of `sd`
        assert c["conf_0"][k] - c["conf_1"][k] >= c["conf_0"][0] - c["conf_1"][0] - 1e-6
        assert math.isfinite(r.metrics["eval_conf_ours"])
    # start noise is per (class, i): rerunning into a new folder with a different batch size gives equal images
    cfg2 = build_config(diff.Config, [a for a in args if not a.startswith(("out=", "batch_size="))] +
                        [f"out={tmp_path / 'diff2'}", "batch_size=2", "target_classes=[2]", "num_images=2"])
    assert diff.run(cfg2) == 0
    a = {r.key: r.image_array("sd") for r in recs}
    for r in records_from_shards(tmp_path / "diff2" / "results"):
        assert (abs(a[r.key].astype(int) - r.image_array("sd").astype(int)).max()) <= 1


def test_diff_rejects_bad_class(tiny_sd_dir, tmp_path):
    cfg = build_config(diff.Config, [f"out={tmp_path / 'x'}", "model_path=tiny", "class_names=[a,b]",
                                     "target_classes=[5]"])
    with pytest.raises(SystemExit, match="outside"):
        diff.run(cfg)


def test_typo_key_is_named():
    with pytest.raises(SystemExit, match="optim_params.sgd_stpes"):
        build_config(diff.Config, ["optim_params.sgd_stpes=3"])


def test_diff_compiled_matches_eager(tiny_sd_dir, tmp_path):
    """compile=true (aot_eager on CPU) runs the same computation as eager."""
    from digin.stages import models

    c1 = save_tiny_classifier(tmp_path / "c1", num_classes=3, size=32, seed=1)
    base = [f"model_path={tiny_sd_dir}", f"classifier1=tiny:{c1}", "class_names=[cat,dog,fox]", "target_classes=[1]",
            "num_images=2", "resolution=32", "num_ddim_steps=3", "optim_params.sgd_steps=2",
            "augmentation_num_cutouts=2", "batch_size=2", "device=cpu", "progress=false"]
    models._SD_CACHE.clear()
    assert diff.run(build_config(diff.Config, base + [f"out={tmp_path / 'eager'}"])) == 0
    models._SD_CACHE.clear()
    try:
        assert diff.run(build_config(diff.Config, base + [f"out={tmp_path / 'comp'}", "compile=true",
                                                          "compile_backend=aot_eager"])) == 0
    finally:
        models._SD_CACHE.clear()  # do not leave a compiled model for other tests
    a = {r.key: r.metrics["loss"] for r in records_from_shards(tmp_path / "eager" / "results")}
    b = {r.key: r.metrics["loss"] for r in records_from_shards(tmp_path / "comp" / "results")}
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6)


def test_diff_logs_to_wandb_when_asked_and_tracking_keys_are_not_hashed(tiny_sd_dir, tmp_path, fake_wandb):
    c1 = save_tiny_classifier(tmp_path / "c1", num_classes=2, size=32, seed=1)
    args = [f"out={tmp_path / 'diff'}", f"model_path={tiny_sd_dir}", f"classifier1=tiny:{c1}", "class_names=[a,b]",
            "target_classes=[1]", "num_images=2", "resolution=32", "num_ddim_steps=3", "optim_params.sgd_steps=1",
            "augmentation_num_cutouts=2", "batch_size=2", "device=cpu", "progress=false",
            "wandb_project=digin-test", "wandb_mode=offline"]
    assert diff.run(build_config(diff.Config, args)) == 0
    run = fake_wandb[0]
    assert run.init["project"] == "digin-test" and run.init["mode"] == "offline" and run.finished
    rows = [r for _, r in run.logged if "metrics.best_iter" in r]
    assert len(rows) == 2 and all(r["metrics.class"] == 1 and math.isfinite(r["metrics.conf_0_ours"]) for r in rows)
    saved = ShardSet.load(tmp_path / "diff" / "results").meta["config"]
    assert not any(k.startswith("wandb") for k in saved)
    # another project (or none) resumes the same output: tracking does not change results
    assert diff.run(build_config(diff.Config, args[:-2] + ["wandb_project=other"])) == 0
    assert diff.run(build_config(diff.Config, args[:-2])) == 0 and len(fake_wandb) == 2


def test_diff_prompts_give_each_target_class_one_item_per_prompt_and_image():
    cfg = build_config(diff.Config, ["out=x", "model_path=tiny", "class_names=[circle,star,ring]", "target_classes=[1]", "num_images=2",
                                     "prompts=['a red circle on a blue background','a white ring on a red background']"])
    items = diff.work_items(cfg, diff.class_names_for(cfg))
    assert [k for k, _ in items] == ["diff/c00001/p0000/i0000", "diff/c00001/p0000/i0001",
                                     "diff/c00001/p0001/i0000", "diff/c00001/p0001/i0001"]
    assert [it["prompt"] for _, it in items][1:3] == ["a red circle on a blue background",
                                                      "a white ring on a red background"]
    assert all(it["class"] == 1 and it["label"] == "star" for _, it in items)
    # without prompts: the template and the old keys
    cfg = build_config(diff.Config, ["out=x", "model_path=tiny", "class_names=[circle,star]", "target_classes=[0]", "num_images=1"])
    assert diff.work_items(cfg, ["circle", "star"]) == [
        ("diff/c00000/i0000", {"class": 0, "i": 0, "label": "circle", "prompt": "a photograph of a circle"})]


def test_diff_rejects_an_empty_prompt():
    cfg = build_config(diff.Config, ["out=x", "model_path=tiny", "class_names=[a,b]", "prompts=['a b',' ']"])
    with pytest.raises(SystemExit, match=r"prompts\[1\]"):
        diff.work_items(cfg, ["a", "b"])


def test_early_stopping_confidence_is_read_on_the_loss_being_optimised():
    from digin.errors import ConfigError
    from digin.stages.diff import early_stopping_loss

    base = ["out=x", "model_path=tiny", "class_names=[a,b]", "early_stopping_confidence=0.8"]
    # one classifier, CE: p(y) > 0.8 ⇔ −log p(y) < −log 0.8
    assert early_stopping_loss(build_config(diff.Config, base)) == pytest.approx(-math.log(0.8))
    assert early_stopping_loss(build_config(diff.Config, base + ["loss=conf"])) == pytest.approx(-0.8)
    # two classifiers, conf (also the default): −p1 + p2 < −0.8, not the CE threshold 0.22 (which every start meets)
    two = base + ["classifier2=resnet18"]
    assert early_stopping_loss(build_config(diff.Config, two)) == pytest.approx(-0.8)
    with pytest.raises((ConfigError, SystemExit), match="early_stopping_confidence"):
        build_config(diff.Config, two + ["loss=logits"])
