import json

import pytest
import torch

from digin.engine.models import build_tiny_sd, load_sd, write_tiny_tokenizer


def test_tiny_sd_round_trip(tiny_sd_dir):
    """save_pretrained → load_sd gives the same weights and the same outputs (fp32), offline."""
    built = build_tiny_sd(seed=0)
    loaded = load_sd(tiny_sd_dir, dtype="fp32")
    for a, b in ((built.unet, loaded.unet), (built.vae, loaded.vae), (built.text_encoder, loaded.text_encoder)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k
    prompts = ["a red star on a green background", ""]
    torch.testing.assert_close(built.encode_text(prompts), loaded.encode_text(prompts))
    assert loaded.scheduler_config["steps_offset"] == 1
    assert loaded.latent_factor == 2 and loaded.max_tokens == 77


def test_load_sd_dtype_and_frozen(tiny_sd_dir):
    sd = load_sd(tiny_sd_dir, dtype="bf16")
    assert sd.dtype == torch.bfloat16
    assert not any(p.requires_grad for p in sd.unet.parameters())
    z = torch.randn(1, 4, 16, 16)
    e = sd.encode_text(["a cat"])
    assert e.dtype == torch.float32
    from digin.engine.sampling import call_unet

    assert call_unet(sd, z, torch.tensor(1), e).dtype == torch.bfloat16  # inputs cast to the weight dtype


def test_tiny_seed_changes_weights():
    a, b = build_tiny_sd(seed=0), build_tiny_sd(seed=1)
    pa, pb = next(a.unet.parameters()), next(b.unet.parameters())
    assert not torch.equal(pa, pb)


def test_tokenizer_words_merge(tmp_path):
    tok = write_tiny_tokenizer(tmp_path, words=["star", "circle"])
    ids = tok("a star circle").input_ids
    assert len(ids) == 2 + 3  # BOS, a, star, circle, EOS
    assert len(tok("a stxr").input_ids) == 2 + 1 + 3  # "st" merges, then x, r


def test_load_sd_errors(tmp_path, tiny_sd_dir):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_sd(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="not a diffusers"):
        load_sd(tmp_path)
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"")
    with pytest.raises(ValueError, match="model_config"):
        load_sd(ckpt)


def test_remote_code_refused(tmp_path, tiny_sd_dir):
    import shutil

    dst = tmp_path / "sd"
    shutil.copytree(tiny_sd_dir, dst)
    cfg = dst / "unet" / "config.json"
    data = json.loads(cfg.read_text())
    data["auto_map"] = {"AutoModel": "evil.Model"}
    cfg.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="remote code"):
        load_sd(dst)
