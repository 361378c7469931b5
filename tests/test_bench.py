"""The benchmark program on tiny shapes (CPU): rows parse as JSON and carry the documented fields.
No timing assertions."""
import json

import pytest

from digin.tasks.bench import Config, make_workload, run, workload_flops

FIELDS = {"device", "torch", "diffusers", "triton", "models", "settings", "workload", "mode", "batch", "attention",
          "dtype", "checkpoint", "kernels", "compiled", "status", "s_per_image", "images_per_hour", "peak_gib",
          "compile_s", "flop_per_image", "tflops"}


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
        assert r["batch"] == (1 if r["mode"] == "reference" else 2)
        assert r["dtype"] == ("float32" if r["mode"] == "reference" else "bfloat16")
    skipped = [r for r in rows if r["attention"] == "xformers"]
    assert skipped and all(r["status"].startswith("skipped") for r in skipped)  # CPU: no xformers
    speedups = {r["workload"]: r for r in rows if r["mode"] == "speedup"}
    assert set(speedups) == {"guidance", "inversion"} and all(r["speedup"] > 0 for r in speedups.values())


def test_bench_compiled_generation_through_the_cli(capsys):
    from digin.cli import main

    rc = main(["bench", "models=tiny", "workloads=[generation]", "modes=[fast]", "attention=[sdpa]", "batch=2",
               "compile_backend=aot_eager", "iters=1"])
    assert rc == 0
    (row,) = _rows(capsys.readouterr().out)
    assert row["compiled"] and row["compile_backend"] == "aot_eager" and row["status"] == "ok"
    assert row["compile_s"] >= 0 and row["tflops"] > 0


def test_guidance_flops_extrapolate_linearly_in_sgd_steps():
    """The K = 1, 2 extrapolation equals a direct count at K = 3 (flops are deterministic)."""
    from digin.engine.models import build_tiny_sd
    from digin.tasks.bench import PRESETS, build_classifier, count_flops

    sd = build_tiny_sd(seed=0)
    clf = build_classifier("tiny", "cpu", sd.dtype)
    settings = {**PRESETS["tiny"], "ddim_steps": 2, "loss_steps": 1, "sgd_steps": 3}
    direct = count_flops(make_workload("guidance", sd, clf, settings, 1, "none", 0))
    assert workload_flops("guidance", sd, clf, settings, "none", 0) == direct


def test_bad_models_name():
    with pytest.raises(SystemExit, match="models"):
        run(Config(models="sdxl-huge"))
