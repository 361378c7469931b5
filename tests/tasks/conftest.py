"""Small end-to-end fixtures: a generated ImageFolder → shards → (negative-prompt) inversions, tiny models."""
import pytest


@pytest.fixture(scope="session")
def small_pipeline(tmp_path_factory, tiny_sd_dir):
    from digin.cli import build_config
    from digin.engine.classifiers import save_tiny_classifier
    from digin.shards.convert import convert
    from digin.shards.synthetic import make_image_folder
    from digin.tasks import invert

    root = tmp_path_factory.mktemp("e2e")
    make_image_folder(root / "raw", classes=["cat", "dog", "fox"], n_per_class=2, size=40, seed=0)
    convert("imagefolder", root / "raw", "val", root / "images", name="toyset", samples_per_shard=3,
            progress=False)
    cfg = build_config(invert.Config, [f"inputs={root / 'images'}", f"out={root / 'inv'}", f"model_path={tiny_sd_dir}",
                                       "resolution=32", "num_ddim_steps=4", "method=negative_prompt", "batch_size=2",
                                       "device=cpu"])
    assert invert.run(cfg) == 0
    clf = save_tiny_classifier(root / "clf", num_classes=3, size=32, seed=1)
    return {"root": root, "images": root / "images", "inv": root / "inv", "clf": clf, "sd": tiny_sd_dir}
