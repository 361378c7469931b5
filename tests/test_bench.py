"""The benchmark program on tiny shapes (CPU): rows parse as JSON and carry the documented fields, the modes are
the compute presets the stages use, and the device-independent cost rows come out. No timing assertions."""
import json

import pytest

from digin.stages.bench import make_workload, workload_flops
from digin.tasks.bench import Config, run

FIELDS = {"device", "torch", "diffusers", "triton", "models", "settings", "workload", "mode", "batch", "attention",
          "dtype", "checkpoint", "kernels", "compiled", "status", "s_per_image", "images_per_hour", "peak_gib",
          "compile_s", "flop_per_image", "tflops", "recompiles", "graphs", "tf32", "matmul_tf32", "cudnn_tf32",
          "sites", "eager_unet_calls", "unet_calls", "fell_back", "predicted_peak_gib"}


def _rows(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_bench_guidance_and_inversion_reference_vs_fast(capsys, tmp_path):
    out_file = tmp_path / "rows.jsonl"
    cfg = Config(models="tiny", workloads=["guidance", "inversion"], batch=2, compile=False, warmup=1, iters=1,
                 attention=["sdpa", "xformers"], out=str(out_file))
    assert run(cfg) == 0
    rows = _rows(capsys.readouterr().out)
    assert [json.loads(line) for line in out_file.read_text().splitlines()] == rows
    measured = [r for r in rows if r["mode"] in ("reference", "fast") and r["status"] == "ok"]
    assert {(r["workload"], r["mode"]) for r in measured} == {(w, m) for w in ("guidance", "inversion")
                                                               for m in ("reference", "fast")}
    for r in measured:
        assert FIELDS <= r.keys(), FIELDS - r.keys()
        assert r["s_per_image"] > 0 and r["images_per_hour"] > 0 and r["flop_per_image"] > 0
        # the modes are the stage presets: reference = fp32, batch 1, block checkpointing; fast = bf16, step
        want = (1, "float32", "block", "conv") if r["mode"] == "reference" else (2, "bfloat16", "step", "on")
        assert (r["batch"], r["dtype"], r["checkpoint"], r["tf32"]) == want
        assert r["eager_unet_calls"] == r["unet_calls"] > 0 and r["fell_back"] == []  # compile=false: all eager
    skipped = [r for r in rows if r["attention"] == "xformers"]
    assert skipped and all(r["status"].startswith("skipped") for r in skipped)  # CPU: no xformers
    speedups = {r["workload"]: r for r in rows if r["mode"] == "speedup"}
    assert set(speedups) == {"guidance", "inversion"} and all(r["speedup"] > 0 for r in speedups.values())


def test_bench_uvce_workload_runs_every_unet_call_compiled(capsys):
    """`workloads=[uvce]`: the stage's edit (capture, masks, P2P, the 3 × 2 schedule search, blending) and guidance
    with the controller injecting, fast mode compiled (dynamo): no UNet call eager, no fallback, no recompile;
    the reference runs eager (all its calls counted) and the speedup row is written."""
    assert run(Config(models="tiny", workloads=["uvce"], batch=2, compile_backend="eager", warmup=1, iters=1,
                      attention=["sdpa"], count_flops=False)) == 0
    rows = {r["mode"]: r for r in _rows(capsys.readouterr().out)}
    fast, ref = rows["fast"], rows["reference"]
    assert fast["status"] == "ok" and fast["compiled"], fast["status"]
    assert fast["eager_unet_calls"] == 0 and fast["unet_calls"] > 0 and fast["fell_back"] == []
    assert fast["recompiles"] == 0 and fast["sites"]["unet"]["how"] == "compiled"
    assert fast["graphs"]["unet"] == 2  # one no-grad graph (capture, search, chain) and one with grad
    assert ref["eager_unet_calls"] == ref["unet_calls"] > 0
    assert rows["speedup"]["status"] == "ok" and rows["speedup"]["speedup"] > 0


def test_a_speedup_row_needs_both_sides_compiled_as_claimed():
    from digin.stages.bench import speedup_row

    ref = dict(images_per_hour=10.0, fell_back=[], tf32="conv")
    fast = dict(images_per_hour=100.0, fell_back=[], compiled=True, eager_unet_calls=0, batch=8, mode="fast")
    assert speedup_row("uvce", ref, [fast])["speedup"] == 10.0
    fell = dict(fast, fell_back=["unet: BackendCompilerFailed: ..."])
    row = speedup_row("uvce", ref, [fell])
    assert "speedup" not in row and row["status"].startswith("no speedup: fast fell back (unet: BackendCompilerFailed")
    row = speedup_row("uvce", ref, [dict(fast, eager_unet_calls=190)])
    assert row["status"] == "no speedup: fast ran 190 UNet calls eagerly"
    assert speedup_row("uvce", None, [fast])["status"] == "no speedup: no reference row"


def test_bad_tf32_value_is_one_line_with_the_allowed_values():
    with pytest.raises(SystemExit) as err:
        run(Config(models="tiny", workloads=["guidance"], tf32="fast"))
    assert "tf32='fast'" in str(err.value) and "off, conv, on" in str(err.value) and "\n" not in str(err.value)


def test_bench_compiled_generation_through_the_cli(capsys):
    from digin.cli import main

    rc = main(["bench", "models=tiny", "workloads=[generation]", "modes=[fast]", "attention=[sdpa]", "batch=2",
               "compile_backend=aot_eager", "iters=1"])
    assert rc == 0
    (row,) = _rows(capsys.readouterr().out)
    assert row["compiled"] and row["compile_backend"] == "aot_eager" and row["status"] == "ok"
    assert row["compile_s"] >= 0 and row["tflops"] > 0
    assert row["recompiles"] == 0 and row["graphs"] == {"unet": 1, "vae_decode": 1, "classifier": 0}


def test_guidance_flops_extrapolate_linearly_in_sgd_steps():
    """The K = 1, 2 extrapolation equals a direct count at K = 3 (flops are deterministic)."""
    import torch

    from digin.engine.models import build_tiny_sd
    from digin.stages.bench import PRESETS, build_classifier, count_flops

    sd = build_tiny_sd(seed=0)
    clf = build_classifier("tiny", "cpu", torch.float32, 2)
    settings = {**PRESETS["tiny"], "ddim_steps": 2, "loss_steps": 1, "sgd_steps": 3}
    direct = count_flops(make_workload("guidance", sd, clf, settings, 1, "none", 0))
    assert workload_flops("guidance", sd, clf, settings, "none", 0) == direct


def test_cost_rows_tiny_fast_within_target_of_the_floor(capsys):
    """Device-independent cost rows (meta tensors) on the tiny models, counted as for SD-1.5: the fast path's
    per-step recompute costs at most 1.4× the no-recompute floor; it saves far less per sample than one graph
    over the chain, so its largest batch is larger; the reference preset runs fp32 weights."""
    assert run(Config(models="tiny", workloads=["cost"])) == 0
    rows = {(r["workload"], r["mode"]): r for r in _rows(capsys.readouterr().out)}
    assert set(rows) == {(w, m) for w in ("guidance", "inversion", "uvce") for m in ("reference", "fast", "floor")}
    u, gf = rows[("uvce", "fast")], rows[("guidance", "fast")]
    # the stage does the guidance work plus the initial pass and the search's 6 no-grad chains, and keeps maps
    assert u["flop_per_image"] > gf["flop_per_image"] and u["search_tflop_per_image"] > 0
    assert u["stored_maps_gib_per_sample"] > 0 and u["saved_gib_per_sample"] > gf["saved_gib_per_sample"]
    g = {m: rows[("guidance", m)] for m in ("reference", "fast", "floor")}
    assert g["floor"]["ratio_to_floor"] == 1.0 and 1.0 < g["fast"]["ratio_to_floor"] <= 1.4
    assert g["reference"]["ratio_to_floor"] > 1.0
    assert g["fast"]["saved_gib_per_sample"] < g["floor"]["saved_gib_per_sample"] / 2
    assert g["fast"]["max_batch"] > g["floor"]["max_batch"]
    assert g["reference"]["weights_gib"] == pytest.approx(2 * g["fast"]["weights_gib"])
    assert rows[("inversion", "fast")]["ratio_to_floor"] == 1.0


def test_bad_models_name():
    with pytest.raises(SystemExit, match="models"):
        run(Config(models="sdxl-huge"))


def test_plan_rows_balance_the_reference_tables_and_the_dynamic_schedule_absorbs_slow_and_dead_ranks(capsys):
    """`digin bench workloads=[plan]`: counted from the shipped tables and the cost rows (no timing)."""
    assert run(Config(workloads=["plan"])) == 0
    rows = _rows(capsys.readouterr().out)
    plans = [r for r in rows if r["kind"] == "plan"]
    assert {r["table"] for r in plans} == {"imagenet_uvce", "madry_counterfactuals", "cub_uvce", "cars_uvce",
                                           "food101_random_1000"}
    assert all(r["meets_target"] for r in plans), [r for r in plans if not r["meets_target"]]
    inet = {r["world"]: r for r in plans if r["table"] == "imagenet_uvce"}
    assert inet[64]["items"] == 2860 and inet[64]["busiest_over_mean"] <= 1.05 and inet[256]["busiest_over_mean"] <= 1.15
    sched = [r for r in rows if r["kind"] == "schedule" and r["lease_s"] == 300.0]  # the default lease
    assert len(sched) == 3 and all(r["dynamic_over_ideal"] <= 1.1 and r["static_over_ideal"] > 1.4 for r in sched)
    (pipe,) = [r for r in rows if r["kind"] == "pipeline"]
    assert (pipe["inversions"], pipe["uvce_pairs"]) == (567, 2860) and 7.5 < pipe["eflop"] < 8.1
    assert pipe["eflop_inverting_all_val"] > 3 * pipe["eflop"]


def test_gpu_check_script_fits_its_budget_and_its_cpu_dry_run_decides(tmp_path):
    """bench/gpu_check.sh: its inner timeouts sum to ≤ 480 s (one short GPU run, cold caches), and the same script
    on the CPU (DIGIN_GPU_CHECK_DRY=1: tiny models, eager) writes every kind of row and the decision table, so it
    cannot rot between GPU sessions."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.sh"
    text = script.read_text()
    budget = sum(int(n) for line in text.splitlines() if not line.lstrip().startswith("#") and "&" not in line
                 for n in re.findall(r"\btimeout (\d+)", line))
    assert 0 < budget <= 480, budget
    env = dict(os.environ, OUT=str(tmp_path), DIGIN_GPU_CHECK_DRY="1", PYTHON=sys.executable)
    p = subprocess.run(["bash", str(script)], cwd=script.parents[1], env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    kinds = {(r.get("kind"), r.get("mode")) for r in rows}
    for mode in ("reference", "fast-eager", "fast"):
        assert {("call", mode), ("composed", mode), ("e2e", mode)} <= kinds, (mode, kinds)
    calls = [r for r in rows if r.get("kind") == "call"]
    assert all(r["status"] == "ok" and r["ms_per_call"] > 0 for r in calls) and len(calls) == 27
    (decision,) = [r for r in rows if r.get("kind") == "decision"]
    assert isinstance(decision["speedups"]["fast-eager/uvce"], float)
    assert decision["speedups"]["fast/uvce"].startswith("no speedup")  # the dry run's "fast" does not compile
    summary = (tmp_path / "summary.md").read_text()
    assert "| reference | 1 | float32 | conv |" in summary and "uvce_speedup_ge_10x" in summary
    assert any(r.get("workload") == "uvce" for r in (json.loads(x) for x in
                                                     (tmp_path / "costs.jsonl").read_text().splitlines()))
