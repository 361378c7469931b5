"""`digin uvce` on the toy world with Prompt-to-Prompt, the default schedule search, masks and blending, compiled:
every UNet call runs the compiled graph (none eager, none fell back, no recompile), and the run says so in its log."""
import json

import pytest
import torch
import torch._dynamo

from tests.engine.test_compile import no_recompiles


def test_toy_uvce_runs_no_unet_call_eagerly(tmp_path):
    from digin import toy
    from digin.cli import build_config
    from digin.stages import models
    from digin.tasks import invert, uvce
    from tests.toy_inputs import toy_scene_inputs

    if not toy.available():
        pytest.skip("toy model weights are not in digin/toy/models")
    toy_scene_inputs(tmp_path)  # images/ and captions/ under tmp_path
    common = [f"model_path={toy.paths()['sd']}", "resolution=64", "center_crop=false", "num_ddim_steps=4",
              "device=cpu", "batch_size=3", "progress=false"]
    models._SD_CACHE.clear()
    assert invert.run(build_config(invert.Config, common + [
        f"inputs={tmp_path / 'images'}", f"captions={tmp_path / 'captions'}", f"out={tmp_path / 'inv'}",
        "num_inner_steps=1"])) == 0
    models._SD_CACHE.clear()
    torch._dynamo.reset()
    with no_recompiles():  # default p2p (3 xa schedules) × the UVCE blend pair: a 6-candidate search
        assert uvce.run(build_config(uvce.Config, common + [
            f"images={tmp_path / 'images'}", f"inversions={tmp_path / 'inv'}", f"out={tmp_path / 'u'}",
            f"classifier={toy.classifier_spec('clean')}", "optim_params.sgd_steps=1", "checkpoint=step",
            "augmentation_num_cutouts=2", "pairs=explicit", "explicit_pairs=[[0,1],[1,2],[2,3]]",
            "segmentation.xa_map_resolution=16", "compile=true", "compile_backend=eager"])) == 0
    logs = (tmp_path / "u" / "logs").glob("*.jsonl")
    events = [json.loads(line) for f in logs for line in f.read_text().splitlines()]
    (compiled,) = [e for e in events if e["event"] == "compile"]
    unet = compiled["sites"]["unet"]
    # 3 pairs in one batch of 3: initial pass 4 + search 6 × 4 + one iteration (chain 4 + recompute 4) + evaluation 4
    assert compiled["eager_unet_calls"] == 0 and unet["calls_compiled"] == 40 and not unet["fell_back"]
    assert unet["graphs"] == 2  # capture, search, chain and evaluation: one no-grad graph; the recompute: one
    assert not any(v["fell_back"] for v in compiled["sites"].values())
