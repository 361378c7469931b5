"""`digin invert` over small shard sets with the tiny SD model: crash + resume, captions, fallback prompts."""
import pytest
import torch

from digin.tasks import invert as task


@pytest.fixture(scope="module")
def image_shards(tmp_path_factory):
    """7 images of 2 classes (48 px JPEGs), 3 per shard → shards of 3, 3, 1 (batch 2 pads each shard's tail)."""
    from digin.shards.convert import convert
    from digin.shards.synthetic import make_image_folder

    root = tmp_path_factory.mktemp("inv_src")
    make_image_folder(root / "src", classes=["goldfinch", "waffle"], n_per_class=4, size=48, seed=3)
    return convert("imagefolder", root / "src", "all", root / "shards", name="toy", samples_per_shard=3,
                   workers=1, progress=False, limit=7).dir


def _cfg(tiny_sd_dir, inputs, out, **kw):
    base = dict(inputs=str(inputs), out=str(out), model_path=str(tiny_sd_dir), resolution=32, num_ddim_steps=3,
                num_inner_steps=2, batch_size=2, device="cpu")
    base.update(kw)
    return task.Config(**base)


def _read_all(folder):
    from digin.shards.manifest import ShardSet
    from digin.shards.reader import iter_samples

    ss = ShardSet.load(folder)
    return ss, {s["__key__"]: s for s in iter_samples(ss)}


def test_invert_killed_and_resumed_equals_uninterrupted(tiny_sd_dir, image_shards, tmp_path, monkeypatch):
    from digin.engine import inversion

    assert task.run(_cfg(tiny_sd_dir, image_shards, tmp_path / "full", items_per_shard=3)) == 0

    real = inversion.invert
    calls = {"n": 0}

    # units of 3, 3, 1 items, batches of 2 across units: [0 0] [0 1] [1 1] [2 ·]; dies in the 4th call, after
    # units 0 and 1 were committed
    def crashing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("killed")
        return real(*a, **k)

    monkeypatch.setattr(inversion, "invert", crashing)
    with pytest.raises(KeyboardInterrupt):
        task.run(_cfg(tiny_sd_dir, image_shards, tmp_path / "resumed", items_per_shard=3))
    from digin.shards.manifest import ShardSet

    assert sorted(ShardSet.load(tmp_path / "resumed").records) == [0, 1]
    assert not list((tmp_path / "resumed").glob("*.tar.*"))  # the open unit was discarded
    monkeypatch.setattr(inversion, "invert", real)
    calls["n"] = 0
    assert task.run(_cfg(tiny_sd_dir, image_shards, tmp_path / "resumed", items_per_shard=3)) == 0

    full, a = _read_all(tmp_path / "full")
    resumed, b = _read_all(tmp_path / "resumed")
    assert sorted(a) == sorted(b) and len(a) == 7
    assert {i: r["sha256"] for i, r in full.records.items()} == {i: r["sha256"] for i, r in resumed.records.items()}
    s = a[sorted(a)[0]]
    assert s["inversion"]["z_T"].shape == (4, 16, 16) and s["inversion"]["z_T"].dtype == torch.float32
    assert s["inversion"]["null_texts"].shape == (3, 77, 32)
    assert s["prompt"] == "an image of a goldfinch on background" == s["metrics"]["prompt"]
    assert s["metrics"]["method"] == "null_text" and len(s["metrics"]["inner_steps"]) == 3
    assert s["reconstruction"].shape == (32, 32, 3)
    assert full.meta["config"]["guidance_scale"] == 3.0


def test_invert_uses_captions_and_negative_prompt(tiny_sd_dir, image_shards, tmp_path):
    from digin.shards.runner import RunOptions, StageSpec, run_stage

    run_stage(StageSpec.every_key("captions", image_shards, {"stage": "fake_captions"},
                                  lambda batch: [{"caption": f"a bird number {k[-1]}"} for k in batch.keys]),
              RunOptions(tmp_path / "captions", batch_size=4, progress=False, device="cpu"))
    cfg = _cfg(tiny_sd_dir, image_shards, tmp_path / "inv", captions=str(tmp_path / "captions"),
               method="negative_prompt", save_reconstruction=False, num_ddim_steps=2)
    assert task.run(cfg) == 0
    _, out = _read_all(tmp_path / "inv")
    assert len(out) == 7
    for key, s in out.items():
        assert s["prompt"] == f"a bird number {key[-1]}"
        assert s["metrics"]["method"] == "negative_prompt" and s["metrics"]["unet_forward"] == 2
        assert "reconstruction" not in s


def test_fallback_prompts_per_dataset():
    from digin.stages import invert as stage

    assert stage.fallback_template("imagenet") == "an image of a {label} on background"
    for ds in ("cub", "cars", "food101", "flowers102"):
        assert stage.fallback_template(ds) == "an image of a {label} macro shot close-up"
    assert stage.fallback_template("cub", "a photo of a {label}") == "a photo of a {label}"
    s = {"meta": {"label": 3, "label_name": "Painted Bunting"}}
    assert stage.sample_prompt(s, stage.fallback_template("cub")) == "an image of a Painted Bunting macro shot close-up"
    assert stage.sample_prompt({**s, "caption": " a bunting on a branch "}, "{label}") == "a bunting on a branch"


def test_cli_defaults_match_the_uvce_stage():
    """The inversion's chain is the one the UVCE stage replays: its default steps and guidance are uvce's (read from
    uvce.Config, not pinned here), and null-text inversion with the reference's inner steps is the default."""
    from digin.cli import build_config
    from digin.tasks import uvce

    cfg = build_config(task.Config, ["inputs=a", "out=b", "model_path=tiny"])
    edit = build_config(uvce.Config, ["images=a", "inversions=b", "out=c", "model_path=tiny"])
    assert (cfg.num_ddim_steps, cfg.guidance_scale) == (edit.num_ddim_steps, edit.guidance_scale)
    assert (cfg.method, cfg.num_inner_steps) == ("null_text", 10)
