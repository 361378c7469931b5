"""The fast path at the stage level: compute presets and overrides (resolved, recorded, refused when bad), compiled
stage runs equal eager ones with no recompile (padded tail batches, P2P controllers attached per edit chunk), and a
CUDA out-of-memory error halves the engine batch of the edit stages."""
import dataclasses

import pytest
import torch
import torch._dynamo

from digin.cli import TASKS, build_config
from digin.engine.presets import COMPUTE_KEYS, resolve_compute
from digin.stages.gallery.records import records_from_shards
from digin.shards.manifest import ShardSet
from digin.stages import models
from digin.tasks import invert, neurons, uvce
from tests.engine.test_compile import no_recompiles

MODEL_TASKS = ("invert", "segment", "uvce", "diff", "neurons", "eval")


@pytest.fixture(autouse=True)
def fresh_models():
    models._SD_CACHE.clear()  # every test loads (and prepares) its own model
    yield
    models._SD_CACHE.clear()


# ------------------------------------------------------------------------------------------ presets

def test_presets_and_single_key_overrides():
    fast, ref = resolve_compute("fast", "cuda"), resolve_compute("reference", "cuda")
    assert (fast.dtype, fast.compile, fast.batch_size, fast.checkpoint, fast.cudagraphs, fast.kernels) == \
        ("bf16", True, 8, "step", True, True)
    assert (ref.dtype, ref.compile, ref.batch_size, ref.checkpoint, ref.kernels) == ("fp32", False, 1, "block", False)
    assert resolve_compute("auto", "cuda").preset == "fast"
    cpu = resolve_compute("auto", "cpu")  # on a CPU the default stays eager fp32
    assert (cpu.preset, cpu.dtype, cpu.compile) == ("eager", "fp32", False)
    over = resolve_compute("fast", "cuda", batch_size=16, dtype="fp16", cudagraphs=False, checkpoint=None)
    assert (over.batch_size, over.dtype, over.cudagraphs, over.checkpoint) == (16, "fp16", False, "step")


@pytest.mark.parametrize("key,value,allowed", [("preset", "turbo", "fast, reference, eager"),
                                               ("attention", "flash", "sdpa, xformers"),
                                               ("dtype", "fp8", "fp32, bf16, fp16"),
                                               ("checkpoint", "layer", "step, none, block")])
def test_bad_compute_names_are_refused_before_anything_is_written(small_pipeline, tmp_path, key, value, allowed):
    p = small_pipeline
    args = [f"inputs={p['images']}", f"out={tmp_path / 'inv'}", f"model_path={p['sd']}", f"{key}={value}",
            "device=cpu"]
    with pytest.raises(SystemExit) as e:  # the CLI refuses while building the config; run() would refuse as well
        build_config(invert.Config, args)
    msg = str(e.value)
    assert f"{key}={value!r}" in msg and allowed in msg and "\n" not in msg
    cfg = build_config(invert.Config, args[:3] + ["device=cpu"])
    setattr(cfg, key, value)  # the Python API: run() resolves the preset before it writes anything
    with pytest.raises(SystemExit, match=f"{key}={value!r}"):
        invert.run(cfg)
    assert not (tmp_path / "inv").exists()
    with pytest.raises(SystemExit, match="attention=xformers: xformers needs a CUDA device"):
        build_config(invert.Config, [f"inputs={p['images']}", f"out={tmp_path / 'x'}", f"model_path={p['sd']}",
                                     "attention=xformers", "device=cpu"])
    assert not (tmp_path / "x").exists()


def test_every_model_stage_accepts_the_preset_and_override_keys():
    import importlib

    from digin.tasks.neurons import MODE_CONFIGS

    classes = {task: importlib.import_module(TASKS[task]).Config for task in MODEL_TASKS if task != "neurons"}
    classes.update({f"neurons mode={m}": MODE_CONFIGS[m]  # the neuron modes that run models
                    for m in ("activations", "search", "visualise", "counterfactuals", "spurious", "similar")})
    for task, cfg_cls in classes.items():
        names = {f.name for f in dataclasses.fields(cfg_cls)}
        assert {"preset", *COMPUTE_KEYS} <= names, (task, {"preset", *COMPUTE_KEYS} - names)


def test_the_manifest_records_the_resolved_compute_values(small_pipeline, tmp_path):
    p = small_pipeline
    cfg = build_config(invert.Config, [f"inputs={p['images']}", f"out={tmp_path / 'inv'}", f"model_path={p['sd']}",
                                       "resolution=32", "num_ddim_steps=3", "method=negative_prompt",
                                       "preset=reference", "batch_size=2", "device=cpu"])
    assert invert.run(cfg) == 0
    rec = ShardSet.load(tmp_path / "inv").meta["config"]
    assert {k: rec[k] for k in ("preset", "dtype", "compile", "batch_size", "checkpoint", "attention", "kernels")} == \
        dict(preset="reference", dtype="fp32", compile=False, batch_size=2, checkpoint="block", attention="sdpa",
             kernels=False)


def test_help_shows_the_compute_values_a_run_resolves_here(capsys):
    from digin.cli import main

    assert main(["uvce", "--help"]) == 0
    out = capsys.readouterr().out
    here = resolve_compute("auto")
    assert "preset='auto'" in out and f"auto → {here.preset} here" in out
    assert f"batch_size={here.batch_size!r}" in out and f"dtype={here.dtype!r}" in out


# ------------------------------------------------------------------------------------------ compiled stages

def _uvce_args(p, out, *extra):
    return [f"images={p['images']}", f"inversions={p['inv']}", f"out={out}", f"model_path={p['sd']}",
            f"classifier=tiny:{p['clf']}", "resolution=32", "num_ddim_steps=4", "optim_params.sgd_steps=2",
            "optim_params.sgd_stepsize=0.05", "augmentation_num_cutouts=2", "device=cpu", "pairs=all_classes",
            "progress=false", "p2p.xa_interpolation_schedule=[threshold_0.0_0.3]",
            "mask_blend.initial_mask_blend_schedule=[threshold_0.3]", *extra]


def _metrics(folder):
    return {r.key: r.metrics for r in records_from_shards(folder)}


def test_compiled_uvce_equals_eager_with_no_recompile(small_pipeline, tmp_path):
    """batch 4 over shards of 3 images × 2 targets: edit chunks of 4 + a padded tail of 2, a P2P controller attached
    and detached per chunk; every UNet/decoder/classifier call site compiles once per (grad mode, shape)."""
    base = [a for a in _uvce_args(small_pipeline, tmp_path, "batch_size=4") if not a.startswith("out=")]
    sd = _eager_then_compiled(uvce, base, tmp_path / "eager", tmp_path / "comp")
    graphs = sd.runtime.compiled()
    assert not sd.runtime.fell_back(), (sd.runtime.unet.error, sd.runtime.decode.error)
    # UNet: the no-grad chain (initial pass + forward + last iterate) and the per-step recompute with grad, on the
    # 2·4-row CFG batch; the decoder: no-grad and with grad on 4 rows
    assert sorted((grad, sig[0][0][0]) for grad, sig in graphs["unet"]) == [(False, 8), (True, 8)], graphs
    assert len(graphs["vae_decode"]) == 2 and not sd.runtime.fell_back()
    eager, comp = _metrics(tmp_path / "eager"), _metrics(tmp_path / "comp")
    assert eager.keys() == comp.keys() and len(eager) == 12
    for k in eager:
        assert comp[k]["loss"] == pytest.approx(eager[k]["loss"], rel=1e-4, abs=1e-6)
        assert comp[k]["best_iter"] == eager[k]["best_iter"]


def _eager_then_compiled(task, base: list, eager_out, compiled_out):
    """Run a task eagerly, then compiled (aot_eager) on a freshly loaded model with recompiles turned into errors."""
    assert task.run(build_config(task.Config, base + [f"out={eager_out}"])) == 0
    models._SD_CACHE.clear()
    torch._dynamo.reset()
    with no_recompiles():
        assert task.run(build_config(task.Config, base + [f"out={compiled_out}", "compile=true",
                                                          "compile_backend=aot_eager"])) == 0
    return next(iter(models._SD_CACHE.values()))


def test_compiled_invert_equals_eager(small_pipeline, tmp_path):
    p = small_pipeline
    base = [f"inputs={p['images']}", f"model_path={p['sd']}", "resolution=32", "num_ddim_steps=3",
            "num_inner_steps=2", "batch_size=4", "device=cpu"]
    sd = _eager_then_compiled(invert, base, tmp_path / "eager", tmp_path / "comp")
    # B-row calls without grad (DDIM inversion, ε_c, the advance) and with grad (inner steps); the 2B-row CFG chain of
    # the plain-DDIM reconstruction metric
    assert sorted((k[0], k[1][0][0][0]) for k in sd.runtime.compiled()["unet"]) == [(False, 4), (False, 8), (True, 4)]
    from digin.shards.reader import iter_samples

    want = {s["__key__"]: s for s in iter_samples(ShardSet.load(tmp_path / "eager"))}
    got = {s["__key__"]: s for s in iter_samples(ShardSet.load(tmp_path / "comp"))}
    assert want.keys() == got.keys() and len(want) == 6
    for k in want:
        torch.testing.assert_close(got[k]["inversion"]["null_texts"], want[k]["inversion"]["null_texts"],
                                   rtol=1e-4, atol=1e-5)
        assert got[k]["metrics"]["psnr_inv_vs_vae"] == pytest.approx(want[k]["metrics"]["psnr_inv_vs_vae"], abs=1e-3)


# ------------------------------------------------------------------------------------------ OOM

def _oom_above(monkeypatch, module, limit: int, seen: list):
    """The engine's optimise raises a CUDA OOM for engine batches above `limit` (once per call site)."""
    real = module.optimise

    def optimise(sd, objective, *, z_T, **kw):
        seen.append(z_T.shape[0])
        if z_T.shape[0] > limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(sd, objective, z_T=z_T, **kw)

    monkeypatch.setattr(module, "optimise", optimise)


def test_oom_halves_the_uvce_engine_batch_and_results_equal_an_unhalved_run(small_pipeline, tmp_path, monkeypatch):
    import digin.stages.edits as edits  # the edit process's optimise (uvce and neuron counterfactuals)

    p = small_pipeline
    assert uvce.run(build_config(uvce.Config, _uvce_args(p, tmp_path / "small", "batch_size=2"))) == 0
    seen = []
    _oom_above(monkeypatch, edits, 2, seen)
    assert uvce.run(build_config(uvce.Config, _uvce_args(p, tmp_path / "big", "batch_size=4"))) == 0
    assert seen[0] == 4 and set(seen[1:]) == {2}  # one OOM at 4 rows, then every edit chunk at 2
    a, b = _metrics(tmp_path / "small"), _metrics(tmp_path / "big")
    assert a.keys() == b.keys() and len(a) == 12
    for k in a:
        assert b[k]["loss"] == pytest.approx(a[k]["loss"], rel=1e-5, abs=1e-6)
    log = (tmp_path / "big" / "logs").glob("*.jsonl")
    assert any('"oom_retry"' in f.read_text() for f in log)


def test_oom_halves_the_neuron_counterfactual_engine_batch(small_pipeline, tmp_path, monkeypatch):
    import digin.stages.edits as edits  # the edit process's optimise (uvce and neuron counterfactuals)

    p = small_pipeline
    args = ["mode=counterfactuals", "device=cpu", "progress=false", f"images={p['images']}",
            f"inversions={p['inv']}", f"model_path={p['sd']}", f"classifier=tiny:{p['clf']}", "resolution=32",
            "num_ddim_steps=4", "optim_params.sgd_steps=1", "augmentation_num_cutouts=0",
            "pairs=[[0,3],[0,7],[2,1]]"]
    assert neurons.run(build_config(neurons.Config, args + [f"out={tmp_path / 'small'}", "batch_size=1"])) == 0
    seen = []
    _oom_above(monkeypatch, edits, 1, seen)
    assert neurons.run(build_config(neurons.Config, args + [f"out={tmp_path / 'big'}", "batch_size=2"])) == 0
    assert seen[0] == 2 and set(seen[1:]) == {1}
    a = _metrics(tmp_path / "small" / "counterfactuals")
    b = _metrics(tmp_path / "big" / "counterfactuals")
    assert a.keys() == b.keys() and len(a) == 6
    for k in a:
        assert b[k]["loss"] == pytest.approx(a[k]["loss"], rel=1e-5, abs=1e-6)


def test_compiled_diff_on_the_toy_world_equals_eager(tmp_path):
    """The toy world's diffusion model and its clean / spurious classifiers: a compiled classifier-difference run
    (aot_eager) gives the losses and confidences of the eager one, with no recompile across SGD iterations."""
    from digin import toy
    from digin.tasks import diff

    if not toy.available():
        pytest.skip("toy model weights are not in digin/toy/models")
    base = [f"model_path={toy.paths()['sd']}", f"classifier1={toy.classifier_spec('spurious')}",
            f"classifier2={toy.classifier_spec('clean')}", f"class_names=[{','.join(toy.world.SHAPES)}]",
            "target_classes=[4]", "num_images=2", f"resolution={toy.PRESET['resolution']}", "num_ddim_steps=4",
            "optim_params.sgd_steps=2", "optim_params.sgd_stepsize=0.05", "augmentation_num_cutouts=2",
            "batch_size=2", "device=cpu", "progress=false", "center_crop=false"]
    _eager_then_compiled(diff, base, tmp_path / "eager", tmp_path / "comp")
    a, b = _metrics(tmp_path / "eager" / "results"), _metrics(tmp_path / "comp" / "results")
    assert a.keys() == b.keys() and len(a) == 2
    for k in a:
        assert b[k]["loss"] == pytest.approx(a[k]["loss"], rel=1e-4, abs=1e-5)
        for name, conf in a[k]["confidences"].items():
            assert b[k]["confidences"][name] == pytest.approx(conf, rel=1e-4, abs=1e-5)


def test_compiled_invert_and_uvce_on_the_toy_world_equal_eager(tmp_path):
    """Toy scenes → shards + captions → null-text inversion → UVCEs (P2P, masks, blending), eager and compiled."""
    from digin import toy
    from tests.toy_inputs import toy_scene_inputs

    if not toy.available():
        pytest.skip("toy model weights are not in digin/toy/models")
    toy_scene_inputs(tmp_path)  # images/ and captions/ under tmp_path
    common_args = [f"model_path={toy.paths()['sd']}", "resolution=64", "center_crop=false", "num_ddim_steps=4",
                   "device=cpu", "batch_size=3"]
    outs = {}
    for mode, extra in (("eager", []), ("comp", ["compile=true", "compile_backend=aot_eager"])):
        models._SD_CACHE.clear()
        torch._dynamo.reset()
        with no_recompiles():
            assert invert.run(build_config(invert.Config, common_args + extra + [
                f"inputs={tmp_path / 'images'}", f"captions={tmp_path / 'captions'}", f"out={tmp_path / mode / 'inv'}",
                "num_inner_steps=2"])) == 0
            assert uvce.run(build_config(uvce.Config, common_args + extra + [
                f"images={tmp_path / 'images'}", f"inversions={tmp_path / mode / 'inv'}", f"out={tmp_path / mode / 'u'}",
                f"classifier={toy.classifier_spec('clean')}", "optim_params.sgd_steps=2",
                "optim_params.sgd_stepsize=0.05", "augmentation_num_cutouts=2", "pairs=explicit",
                "explicit_pairs=[[0,1],[1,2],[2,3]]", "segmentation.xa_map_resolution=16", "progress=false"])) == 0
        outs[mode] = _metrics(tmp_path / mode / "u")
    assert outs["eager"].keys() == outs["comp"].keys() and len(outs["eager"]) == 3
    for k, m in outs["eager"].items():
        assert outs["comp"][k]["loss"] == pytest.approx(m["loss"], rel=1e-3, abs=1e-5)
        assert outs["comp"][k]["conf_0_ours"] == pytest.approx(m["conf_0_ours"], rel=1e-3, abs=1e-5)
