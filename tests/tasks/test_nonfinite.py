"""Issue 16 #1: a sample whose loss or a metric turns non-finite is written with status `nonfinite` (metrics null,
no images when no iterate was finite) and the other samples of its batch are committed; `no_improvement` flags a
sample whose loss only rose. The stage summary counts them and the gallery shows such results without crashing."""
import json

import pytest
import torch

from digin.cli import build_config
from digin.engine.guidance import GuidanceConfig, GuidanceResult, OptimParams, optimise
from digin.stages.gallery.records import records_from_shards
from digin.shards.encode import encode_value
from digin.shards.manifest import ShardSet
from digin.stages import diff as diff_stage
from digin.stages import results as R
from digin.tasks import diff, gallery, uvce

NAN = float("nan")


def _result(losses_KB, num_logged, best_iter, nonfinite, conf_KB=None):
    K1, B = losses_KB.shape
    conf = losses_KB.neg() if conf_KB is None else conf_KB
    img = torch.full((B, 3, 4, 4), 0.5)
    return GuidanceResult(
        sd_images=img, ours_images=img, best_iter=torch.tensor(best_iter), losses=losses_KB, parts={},
        confidences={"conf_0": conf}, aug_losses=losses_KB[:-1], num_logged=torch.tensor(num_logged),
        stopped_early=torch.zeros(B, dtype=torch.bool), nonfinite=torch.tensor(nonfinite),
        z_T=torch.zeros(B, 4, 2, 2), cond_delta=None, uncond_delta=None)


def test_result_fields_status_null_metrics_and_no_images_without_a_finite_iterate():
    # columns: non-finite from iterate 0 | non-finite at iterate 2 | improving | only rising
    losses = torch.tensor([[NAN, 3.0, 3.0, 1.0],
                           [NAN, 2.0, 2.0, 2.0],
                           [NAN, NAN, 1.0, 4.0]])
    res = _result(losses, num_logged=[0, 2, 3, 3], best_iter=[0, 1, 2, 0], nonfinite=[True, True, False, False])
    fields = [R.result_fields(res, b, prefix="t3_", extra_metrics={"eval": NAN if b == 2 else 0.5})
              for b in range(4)]
    for f in fields:
        encode_value(f["t3_metrics"])  # JSON with allow_nan=False: must not raise
    m = [f["t3_metrics"] for f in fields]
    assert [x["status"] for x in m] == ["nonfinite", "nonfinite", "nonfinite", "no_improvement"]
    assert m[0]["loss"] == [] and m[0]["conf_0_sd"] is None and m[0]["conf_0_ours"] is None
    assert set(fields[0]) == {"t3_metrics"}  # no finite iterate: no images, no latents
    assert {"t3_sd", "t3_ours", "t3_latents"} <= set(fields[1])  # iterate 0 and the best finite iterate
    assert m[1]["loss"] == [3.0, 2.0] and m[1]["conf_0_ours"] == -2.0
    assert m[2]["eval"] is None and m[2]["nonfinite"] is True  # a NaN evaluation metric is null, and flagged
    assert m[3]["eval"] == 0.5 and m[3]["best_iter"] == 0
    ok = _result(torch.tensor([[3.0], [2.0]]), num_logged=[2], best_iter=[1], nonfinite=[False])
    assert R.result_fields(ok, 0)["metrics"]["status"] == "ok"


class _DriftAway:
    """Logs the distance of the image from iterate 0 (0 first, > 0 after any update) while the gradient pushes the
    image brighter: the logged loss only rises, as with a far too large step size."""

    needs_reference = True

    def with_reference(self, img0, z0):
        self.img0 = img0.clone()
        return self

    def __call__(self, img, x0, salt):
        if salt is None:
            return (img - self.img0).pow(2).flatten(1).mean(1), {}
        return -img.flatten(1).mean(1), {}


def test_a_loss_that_only_rises_is_flagged_no_improvement_and_counted(tiny_sd, tmp_path):
    from tests.shards.stage_script import run_keys
    from tests.shards.test_lock_budget import make_input

    cfg = GuidanceConfig(guidance_scale=3.0, num_ddim_steps=3, optim_params=OptimParams(sgd_steps=2, loss_steps=1))

    def process(batch):
        n = len(batch)
        z = torch.randn(n, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        cond = tiny_sd.encode_text(["a photo"] * n)
        res = optimise(tiny_sd, _DriftAway(), z_T=z, cond=cond, uncond=tiny_sd.encode_text([""] * n), cfg=cfg)
        return [R.result_fields(res, b, save_latents=False) for b in range(batch.n_real)]

    s = run_keys(make_input(tmp_path / "in", 1, 2), tmp_path / "out", process, 2, {}, progress=False)
    assert s.processed == 2 and s.no_improvement == 2 and "no improvement 2" in s.line(0)
    recs = records_from_shards(tmp_path / "out")
    assert [r.metrics["status"] for r in recs] == ["no_improvement"] * 2
    assert recs[0].metrics["loss"][0] == 0.0 and min(recs[0].metrics["loss"][1:]) > 0


def _summary(folder):
    return [json.loads(x) for p in sorted((folder / "logs").glob("*.jsonl")) for x in p.open()
            if json.loads(x)["event"] == "summary"][-1]


def test_one_nan_sample_in_diff_is_written_as_nonfinite_and_the_batch_commits(tiny_sd_dir, tmp_path, monkeypatch):
    from digin.engine.classifiers import save_tiny_classifier

    clf = save_tiny_classifier(tmp_path / "c", num_classes=3, size=32, seed=1)
    real = diff_stage.start_noise

    def one_nan(keys, seed, shape, device):  # the middle sample goes NaN from its first iterate on
        z = real(keys, seed, shape, device)
        z[[k.endswith("i0001") for k in keys]] = NAN
        return z

    monkeypatch.setattr(diff_stage, "start_noise", one_nan)
    args = [f"out={tmp_path / 'diff'}", f"model_path={tiny_sd_dir}", f"classifier1=tiny:{clf}",
            f"eval_classifier=tiny:{clf}", "class_names=[cat,dog,fox]", "target_classes=[1]", "num_images=3",
            "resolution=32", "num_ddim_steps=3", "optim_params.sgd_steps=2", "augmentation_num_cutouts=2",
            "batch_size=3", "device=cpu", "progress=false"]
    assert diff.run(build_config(diff.Config, args)) == 0
    recs = {r.key: r for r in records_from_shards(tmp_path / "diff" / "results")}
    assert len(recs) == 3
    bad = recs.pop("diff/c00001/i0001")
    assert bad.metrics["status"] == "nonfinite" and bad.metrics["loss"] == [] and bad.images == {}
    assert bad.metrics["eval_conf_sd"] is None  # the evaluation of a NaN image is null, not a crash
    assert all(r.metrics["status"] in ("ok", "no_improvement") and {"sd", "ours"} <= set(r.images)
               for r in recs.values())
    assert _summary(tmp_path / "diff" / "results")["nonfinite"] == 1
    # a rerun has nothing left to do: the sample was committed, it is not retried forever
    assert diff.run(build_config(diff.Config, args)) == 0
    assert _summary(tmp_path / "diff" / "results")["skipped_samples"] == 3
    assert gallery.run(build_config(gallery.Config, [f"results=[{tmp_path / 'diff' / 'results'}]",
                                                     f"out={tmp_path / 'g'}"]))


def test_uvce_with_a_nan_inversion_row_commits_every_image(small_pipeline, tmp_path, monkeypatch):
    """The issue's crash: uvce died on the first non-finite sample and every rerun died the same way."""
    import digin.stages.edits as E  # the UVCE edit process's optimise

    real, calls = E.optimise, []

    def first_row_nan(sd, objective, *, z_T, **kw):  # row 0 of the first chunk only
        z = z_T.clone()
        if not calls:
            z[0] = NAN
        calls.append(1)
        return real(sd, objective, z_T=z, **kw)

    monkeypatch.setattr(E, "optimise", first_row_nan)
    p = small_pipeline
    args = [f"images={p['images']}", f"inversions={p['inv']}", f"out={tmp_path / 'uvce'}", f"model_path={p['sd']}",
            f"classifier=tiny:{p['clf']}", "resolution=32", "num_ddim_steps=4", "optim_params.sgd_steps=1",
            "augmentation_num_cutouts=2", "batch_size=4", "device=cpu", "pairs=explicit",
            "explicit_pairs=[[0,1],[1,2],[3,0]]", "progress=false"]
    assert uvce.run(build_config(uvce.Config, args)) == 0
    assert ShardSet.load(tmp_path / "uvce").num_samples() == 3
    statuses = sorted(r.metrics["status"] for r in records_from_shards(tmp_path / "uvce"))
    # the three pairs run as one chunk (batch 4): one row of it went NaN, the other two are fine
    assert statuses.count("nonfinite") == 1 and len(statuses) == 3 and len(calls) == 1
    assert _summary(tmp_path / "uvce")["nonfinite"] == 1
    assert gallery.run(build_config(gallery.Config, [f"results=[{tmp_path / 'uvce'}]", f"out={tmp_path / 'g'}"]))


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_json_safe_replaces_every_non_finite_number(bad):
    value, replaced = R.json_safe({"a": [1.0, float(bad)], "b": {"c": float(bad)}, "d": "x", "e": 2})
    assert replaced and value == {"a": [1.0, None], "b": {"c": None}, "d": "x", "e": 2}
    assert R.json_safe({"a": [1.0]}) == ({"a": [1.0]}, False)
