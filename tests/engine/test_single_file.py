"""Original LDM/CompVis single-file checkpoints (the `v1-5-pruned-emaonly.safetensors` layout) load offline through
`load_sd(file, model_config=<local diffusers folder>)` into the same model as the diffusers folder: same weights,
same UNet/VAE/text-encoder outputs, same DDIM chain. The file is written from a tiny random model by
tests/engine/ldm_layout.py (the inverse of diffusers' single-file conversion); SD-2 files carry OpenCLIP names."""
import pytest
import torch

from digin.engine.models import load_sd
from digin.engine.sampling import denoise
from digin.engine.schedule import make_ddim_schedule
from tests.engine.ldm_layout import (CLIP_PREFIX, OPEN_CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX, save_ldm_checkpoint,
                                     write_config_folder)

PROMPTS = ["a red star on a green background", "a blue ring"]
T = 4


def _build(tmp_path_factory, name: str, prediction_type: str, open_clip: bool) -> dict:
    """Tiny model saved as a diffusers folder, loaded back; the same weights as one LDM file + a config folder."""
    from digin.engine.models import build_tiny_sd

    root = tmp_path_factory.mktemp(name)
    build_tiny_sd(seed=0, folder=root / "folder", prediction_type=prediction_type)
    from_folder = load_sd(root / "folder", dtype="fp32")
    state = save_ldm_checkpoint(from_folder, root / "model.safetensors", open_clip=open_clip)
    config = write_config_folder(from_folder, root / "config")
    return dict(root=root, folder=root / "folder", file=root / "model.safetensors", config=config, state=state,
                from_folder=from_folder)


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    made = _build(tmp_path_factory, "sd1_single_file", "epsilon", open_clip=False)
    made["from_file"] = load_sd(made["file"], dtype="fp32", model_config=made["config"])
    return made


@pytest.fixture(scope="module")
def sd2(tmp_path_factory):
    made = _build(tmp_path_factory, "sd2_single_file", "v_prediction", open_clip=True)
    from digin.engine.families import load_model

    made["from_file"] = load_model(made["file"], dtype="fp32", model_config=str(made["config"]))
    return made


@pytest.fixture
def hub_calls(monkeypatch):
    """Every hub snapshot look-up diffusers' single-file loader makes (refused: tests are offline)."""
    import diffusers.loaders.single_file as single_file

    calls = []

    def refuse(repo_id, *args, **kwargs):
        calls.append(repo_id)
        raise RuntimeError(f"hub look-up of {repo_id!r} attempted")

    monkeypatch.setattr(single_file, "snapshot_download", refuse)
    return calls


# ------------------------------------------------------------------------------------------ the file itself

def test_written_file_has_the_original_ldm_layout(sd1):
    state = sd1["state"]
    groups = {p: [k for k in state if k.startswith(p)] for p in (UNET_PREFIX, VAE_PREFIX, CLIP_PREFIX)}
    model = sd1["from_folder"]
    assert len(groups[UNET_PREFIX]) == len(model.unet.state_dict())
    assert len(groups[VAE_PREFIX]) == len(model.vae.state_dict())
    assert len(groups[CLIP_PREFIX]) == len(model.text_encoder.state_dict()) + 1  # + position_ids
    for key in ("model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.input_blocks.2.0.op.weight",
                "model.diffusion_model.middle_block.1.proj_in.weight", "model.diffusion_model.out.2.weight",
                "model.diffusion_model.output_blocks.1.1.conv.weight", "model.diffusion_model.time_embed.0.weight",
                "model.diffusion_model.input_blocks.1.0.in_layers.2.weight",
                "first_stage_model.decoder.up.1.upsample.conv.weight", "first_stage_model.encoder.mid.attn_1.q.weight",
                "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight",
                "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"):
        assert key in state, key
    assert state["first_stage_model.decoder.mid.attn_1.proj_out.weight"].shape == (64, 64, 1, 1)  # 1×1 conv
    assert not [k for k in state if "down_blocks" in k or "resnets" in k or (k.startswith(VAE_PREFIX) and "to_" in k)]
    assert state["betas"].shape == (1000,)  # schedule buffers ride along, as in released files


# ------------------------------------------------------------------------------------------------- SD-1

def test_sd1_single_file_weights_equal_the_folder(sd1):
    folder, file = sd1["from_folder"], sd1["from_file"]
    for a, b in ((folder.unet, file.unet), (folder.vae, file.vae), (folder.text_encoder, file.text_encoder)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert [k for k in sa if not torch.equal(sa[k], sb[k])] == []
    assert file.source == str(sd1["file"]) and file.prediction_type == "epsilon"
    assert file.scheduler_config["steps_offset"] == 1 and file.vae_scale == folder.vae_scale
    assert not any(p.requires_grad for p in file.unet.parameters())


def check_outputs_match(folder, file):
    """UNet (with CFG), VAE encode/decode and text encoder give the same numbers for both loads."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 16, 16, generator=g)
    img = torch.rand(2, 3, 32, 32, generator=g)
    t = torch.tensor(500)
    close = dict(rtol=0, atol=1e-5)
    cond, uncond = folder.encode_text(PROMPTS), folder.encode_text(["", ""])
    torch.testing.assert_close(file.encode_text(PROMPTS), cond, **close)
    from digin.engine.sampling import call_unet

    both = torch.cat([x, x]), t, torch.cat([uncond, cond])  # the CFG batch
    torch.testing.assert_close(call_unet(file, *both), call_unet(folder, *both), **close)
    torch.testing.assert_close(file.decode(x), folder.decode(x), **close)
    torch.testing.assert_close(file.encode_image(img), folder.encode_image(img), **close)
    assert file.encode_text(PROMPTS).abs().max() > 0.1  # the outputs compared are not trivially zero


def check_chain_matches(folder, file):
    n = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    latents = []
    for sd in (folder, file):
        sched = make_ddim_schedule(sd.scheduler_config, T)
        z, _ = denoise(sd, sched, n.clone(), sd.encode_text(PROMPTS), sd.encode_text(["", ""]), 3.0)
        latents.append(z)
    torch.testing.assert_close(latents[1], latents[0], rtol=0, atol=1e-5)
    assert (latents[0] - n).abs().max() > 1e-2  # the chain moved


def test_sd1_single_file_outputs_match_the_folder(sd1):
    check_outputs_match(sd1["from_folder"], sd1["from_file"])


def test_sd1_single_file_denoise_chain_matches_the_folder(sd1):
    check_chain_matches(sd1["from_folder"], sd1["from_file"])


def test_sd1_single_file_through_load_model(sd1):
    from digin.engine.families import family_of, load_model, model_family
    from digin.engine.models import SDModel

    sd = load_model(sd1["file"], dtype="fp32", model_config=str(sd1["config"]))
    assert type(sd) is SDModel and model_family(sd) == "sd1"
    assert family_of(sd1["file"], model_config=str(sd1["config"])) == "sd1"
    torch.testing.assert_close(sd.encode_text(PROMPTS), sd1["from_folder"].encode_text(PROMPTS), rtol=0, atol=1e-5)


def test_digin_saved_folder_works_as_model_config(sd1):
    sd = load_sd(sd1["file"], dtype="fp32", model_config=sd1["folder"])
    torch.testing.assert_close(sd.encode_text(PROMPTS), sd1["from_folder"].encode_text(PROMPTS), rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------- error paths



@pytest.mark.parametrize("make_config, missing", [
    pytest.param(lambda made: None, "model_config", id="no-model_config"),
    pytest.param(lambda made: "stable-diffusion-v1-5/stable-diffusion-v1-5", "model_config", id="hub-repo-id"),
    pytest.param(lambda made: "sd15-config", "model_config", id="relative-missing-folder"),
    pytest.param(lambda made: str(made["root"] / "nowhere" / "sd15"), "model_config", id="absent-folder"),
    pytest.param(lambda made: made["root"] / "empty", "unet/config.json", id="empty-folder"),
    pytest.param(lambda made: made["root"] / "no_unet", "unet", id="folder-without-unet-config"),
])
def test_single_file_without_usable_model_config_fails_clearly(sd1, hub_calls, make_config, missing):
    import shutil

    (sd1["root"] / "empty").mkdir(exist_ok=True)
    if not (sd1["root"] / "no_unet").exists():
        shutil.copytree(sd1["config"], sd1["root"] / "no_unet")
        shutil.rmtree(sd1["root"] / "no_unet" / "unet")
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        load_sd(sd1["file"], model_config=make_config(sd1))
    assert hub_calls == []
    assert str(sd1["file"]) in str(err.value) and missing in str(err.value)


def test_file_in_another_layout_fails_clearly(sd1, hub_calls):
    """A diffusers component file (a common mix-up) is not an LDM checkpoint: say so, naming the missing keys."""
    wrong = sd1["folder"] / "unet" / "diffusion_pytorch_model.safetensors"
    with pytest.raises(ValueError) as err:
        load_sd(wrong, model_config=sd1["config"])
    assert hub_calls == []
    assert str(wrong) in str(err.value) and UNET_PREFIX in str(err.value)


# ------------------------------------------------------------------------------------------------- SD-2

def test_sd2_file_carries_open_clip_names(sd2):
    state = sd2["state"]
    assert not [k for k in state if k.startswith(CLIP_PREFIX)]
    fused = state[OPEN_CLIP_PREFIX + "transformer.resblocks.0.attn.in_proj_weight"]
    assert fused.shape == (3 * 32, 32)  # q, k, v stacked, as nn.MultiheadAttention stores them
    assert OPEN_CLIP_PREFIX + "positional_embedding" in state and OPEN_CLIP_PREFIX + "ln_final.weight" in state


def test_sd2_single_file_matches_the_folder(sd2):
    folder, file = sd2["from_folder"], sd2["from_file"]
    assert file.prediction_type == "v_prediction"
    for a, b in ((folder.unet, file.unet), (folder.vae, file.vae), (folder.text_encoder, file.text_encoder)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and [k for k in sa if not torch.equal(sa[k], sb[k])] == []
    check_outputs_match(folder, file)
    check_chain_matches(folder, file)


def test_sdxl_single_file_needs_a_local_config_folder(tmp_path, hub_calls):
    from digin.engine.sdxl import load_sdxl

    f = tmp_path / "sdxl.safetensors"
    f.write_bytes(b"")
    for cfg, missing in ((None, "model_config"), ("stabilityai/stable-diffusion-xl-base-1.0", "not a local folder")):
        with pytest.raises((ValueError, FileNotFoundError)) as err:
            load_sdxl(f, model_config=cfg)
        assert str(f) in str(err.value) and missing in str(err.value)
    assert hub_calls == []
