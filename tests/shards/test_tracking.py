"""Optional wandb tracking of shard stages: rows per committed sample/target, per-rank runs in one group, nothing
logged for uncommitted shards, a clear error when wandb is missing. wandb itself is replaced by a recorder (no
network here); what is checked is what digin hands to it."""
import sys

import pytest


from digin.shards.tracking import scalar_rows
from .stage_script import run_keys


def test_scalar_rows_split_targets_and_skip_non_numbers():
    out = {"image": object(), "prompt": "x", "metrics": {"psnr": 30.5, "ok": True, "loss": [1.0, 2.0],
                                                         "nested": {"l2": 0.1}, "bad": float("nan")},
           "t3_metrics": {"conf": 0.9}, "t12_metrics": {"conf": 0.2, "best_iter": 4}, "t12_extra": {"n": 1}}
    rows = scalar_rows(out)
    assert {"metrics.psnr": 30.5, "metrics.nested.l2": 0.1} in rows
    assert {"target": 3, "metrics.conf": 0.9} in rows
    assert {"target": 12, "metrics.conf": 0.2, "metrics.best_iter": 4, "extra.n": 1} in rows
    assert len(rows) == 3 and scalar_rows({"a": {"s": "text"}}) == []


def test_stage_logs_each_committed_sample_once(toy_shards, tmp_path, fake_wandb):
    def process(b):
        return [{"metrics": {"value": float(len(k))}, "t1_metrics": {"conf": 0.5}} for k in b.keys[:b.n_real]]

    out = tmp_path / "tracked"
    tracking = {"project": "digin-test", "mode": "offline"}
    run_keys(toy_shards, out, process, 4, {"lr": 0.1}, name="uvce", rank=0, world=2, progress=False,
              tracking=tracking)
    run = fake_wandb[0]
    assert run.init["project"] == "digin-test" and run.init["mode"] == "offline" and run.finished
    assert run.init["group"] == "tracked:uvce" and run.init["name"] == "tracked:uvce:r0"
    assert run.init["config"]["lr"] == 0.1 and run.init["config"]["world"] == 2
    sample_rows = [r for _, r in run.logged if "metrics.value" in r]
    target_rows = [r for _, r in run.logged if r.get("target") == 1]
    shard_rows = [r for _, r in run.logged if "shard_samples" in r]
    assert len(shard_rows) == 3  # rank 0 of 2 owns 3 of the 6 shards
    assert len(sample_rows) == len(target_rows) == sum(r["shard_samples"] for r in shard_rows)
    steps = [s for s, _ in run.logged]
    assert steps == list(range(len(steps)))
    assert run.summary["processed"] == len(sample_rows)
    # resume: nothing left to do → nothing logged again
    run_keys(toy_shards, out, process, 4, {"lr": 0.1}, name="uvce", rank=0, world=2, progress=False,
              tracking=tracking)
    assert fake_wandb[1].logged == [] and fake_wandb[1].finished


def test_missing_wandb_fails_before_anything_is_written(toy_shards, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb → ImportError
    with pytest.raises(RuntimeError, match="wandb is not installed"):
        run_keys(toy_shards, tmp_path / "out", lambda b: [], 4, {}, progress=False,
                  tracking={"project": "p"})
    assert not (tmp_path / "out").exists()
    run_keys(toy_shards, tmp_path / "plain", lambda b: [{"m": {"v": 1}}] * b.n_real, 4, {}, progress=False,
              rank=0, world=6, tracking={"project": None})  # no project: tracking off, wandb never imported
