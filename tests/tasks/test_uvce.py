import math

from digin.cli import build_config
from digin.stages.gallery.records import records_from_shards
from digin.shards.manifest import ShardSet
from digin.tasks import uvce


def _args(p, out, *extra):
    return [f"images={p['images']}", f"inversions={p['inv']}", f"out={out}", f"model_path={p['sd']}",
            f"classifier=tiny:{p['clf']}", "resolution=32", "num_ddim_steps=4", "optim_params.sgd_steps=3",
            "optim_params.sgd_stepsize=0.05", "augmentation_num_cutouts=2", "batch_size=4", "device=cpu",
            "pairs=all_classes", "progress=false", *extra]


def test_uvce_end_to_end(small_pipeline, tmp_path):
    p = small_pipeline
    cfg = build_config(uvce.Config, _args(p, tmp_path / "uvce", "regularizers=[latent_background_l2]",
                                          "regularizers_ws=[1.0]", "items_per_shard=5"))
    assert cfg.p2p.xa_interpolation_schedule == ["threshold_0.0_0.3", "threshold_0.0_0.4", "threshold_0.0_0.5"]
    assert uvce.run(cfg) == 0
    out = ShardSet.load(tmp_path / "uvce")
    # one item per (image, target) pair, 5 per unit: 12 pairs in units of 5, 5 and 2
    assert out.num_samples() == 12 and [r["count"] for r in out.records.values()] == [5, 5, 2]
    assert out.meta["plan"]["counts"] == {"images": 6, "pairs": 12, "input_images": 6}
    saved = out.meta["config"]  # the resolved config is stored with the results
    assert saved["optim_params"]["sgd_steps"] == 3 and saved["regularizers"] == ["latent_background_l2"]
    assert saved["p2p"]["xa_interpolation_schedule"][0] == "threshold_0.0_0.3"
    recs = records_from_shards(tmp_path / "uvce")
    assert len(recs) == 6 * 2  # every image × the two other classes
    pairs = {(r.metrics["start"], r.metrics["target"]) for r in recs}
    assert pairs == {(s, t) for s in range(3) for t in range(3) if s != t}
    for r in recs:
        assert set(r.images) >= {"orig", "sd", "ours"} and {"mask", "attention"} <= set(r.aux_images)
        assert all(v is not None and math.isfinite(v) for v in r.metrics["loss"])
        c = r.metrics["confidences"]["conf_0"]
        assert c[r.metrics["best_iter"]] >= c[0] - 1e-6  # ours is never worse than sd for the target
        assert r.metrics["edited_prompt"].endswith(r.metrics["target_label"] + " on background")
    # resume: nothing left to do, same outputs
    before = {i: rec["sha256"] for i, rec in out.records.items()}
    assert uvce.run(cfg) == 0
    assert {i: rec["sha256"] for i, rec in ShardSet.load(tmp_path / "uvce").records.items()} == before


def test_uvce_failure_mode_pushes_misclassified_images_to_their_class(small_pipeline, tmp_path):
    p = small_pipeline
    cfg = build_config(uvce.Config, _args(p, tmp_path / "fail", "error_visualisation=true", "optim_params.sgd_steps=1",
                                          "regularizers=[]", "regularizers_ws=[]"))
    import numpy as np
    import torch

    from digin.engine.classifiers import load_classifier
    from digin.shards.reader import iter_samples

    clf = load_classifier(f"tiny:{p['clf']}")
    samples = list(iter_samples(p["images"], resolution=32))
    x = torch.from_numpy(np.stack([s["image"] for s in samples])).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        preds = dict(zip([s["__key__"] for s in samples], clf(x)[:, 0].argmax(-1).tolist()))
    labels = {s["__key__"]: int(s["meta"]["label"]) for s in samples}
    wrong = {k for k in labels if preds[k] != labels[k]}
    assert wrong and len(wrong) < len(labels)  # the random tiny classifier gets some right, some wrong
    assert uvce.run(cfg) == 0
    recs = records_from_shards(tmp_path / "fail")
    assert {r.key.rsplit("/", 1)[0] for r in recs} == wrong  # predicted by the stage, on its own items
    assert all(r.metrics["start"] == r.metrics["target"] == labels[r.key.rsplit("/", 1)[0]] for r in recs)
    assert all(r.metrics["edited_prompt"] == r.metrics["prompt"] for r in recs)  # identity P2P
    skipped = [r for rec in ShardSet.load(tmp_path / "fail").records.values() for r in rec["rejects"]]
    assert sorted(r["key"].rsplit("/", 1)[0] for r in skipped) == sorted(set(labels) - wrong)
    assert {r["reason"] for r in skipped} == {"skip:correctly_classified"}


def test_uvce_with_the_masked_clip_regulariser(small_pipeline, tmp_path):
    from tests.engine.test_masked_clip import _tower

    p = small_pipeline
    tower, _ = _tower(tmp_path, "clipa")
    reg = ["regularizers=[px_background_clip,latent_background_l2]", "regularizers_ws=[5.0,1.0]",
           "optim_params.sgd_steps=2"]
    missing = build_config(uvce.Config, _args(p, tmp_path / "nowts", *reg))
    try:  # no weights for the named CLIPA tower: refused before the stage writes anything
        uvce.run(missing)
        raise AssertionError("expected a ValueError")
    except ValueError as e:
        assert "clip_regularizer_weights" in str(e)
    assert not (tmp_path / "nowts" / "commits").exists()
    cfg = build_config(uvce.Config, _args(p, tmp_path / "uvce", *reg, f"clip_regularizer_model={tower}"))
    assert uvce.run(cfg) == 0
    recs = records_from_shards(tmp_path / "uvce")
    assert len(recs) == 12
    for r in recs:  # the regulariser is logged per iterate (sgd_steps + 1 values)
        clip_reg = r.metrics["parts"]["px_background_clip"]
        assert len(clip_reg) == 3 and all(math.isfinite(v) and v >= -1e-6 for v in clip_reg), clip_reg
