import pytest

from digin.shards.manifest import ConfigMismatch

from .helpers import read_set, run_caption


def test_template_backend_over_shards_and_resume(image_shards, tmp_path):
    out = tmp_path / "cap"
    assert run_caption([f"inputs={image_shards}", f"out={out}", "backend=template", "batch_size=2"]) == 0
    caps = read_set(out)
    images = read_set(image_shards)
    assert sorted(caps) == sorted(images) and len(caps) == 6
    for key, s in caps.items():
        label = images[key]["meta"]["label_name"]
        assert s["caption"] == f"an image of a {label} on background"
        assert s["caption_info"]["backend"] == "template" and s["caption_info"]["fallback"] is None
    # resume: committed shards are skipped, a different config is refused
    assert run_caption([f"inputs={image_shards}", f"out={out}", "backend=template", "batch_size=2"]) == 0
    with pytest.raises(ConfigMismatch):
        run_caption([f"inputs={image_shards}", f"out={out}", "backend=template", "template=a photo of a {label}"])


def test_caption_set_feeds_invert_prompt(image_shards, tmp_path):
    from digin.stages.invert import sample_prompt

    out = tmp_path / "cap"
    run_caption([f"inputs={image_shards}", f"out={out}", "backend=template", "dataset=cub"])
    s = next(iter(read_set(out).values()))
    assert sample_prompt(s, "unused {label}").endswith("macro shot close-up")


def test_import_prompt_txt_with_missing_and_labelless(image_shards, tmp_path):
    images = read_set(image_shards)
    by_index = {int(k.rsplit("/", 1)[1]): s["meta"]["label_name"] for k, s in images.items()}
    root = tmp_path / "imagenet_captions"
    for idx, label in by_index.items():
        if idx == 5:
            continue  # no file: import_missing
        d = root / f"{idx // 2}_{label}"
        d.mkdir(parents=True, exist_ok=True)
        text = "a blurry photo of something" if idx == 4 else f"an image of a {label} in the park\n"
        (d / f"{idx}_prompt.txt").write_text(text)
        (d / f"{idx}_original.png").write_bytes(b"not read")
    out = tmp_path / "cap"
    assert run_caption([f"inputs={image_shards}", f"out={out}", "backend=import", f"import_dir={root}"]) == 0
    caps = {int(k.rsplit("/", 1)[1]): s for k, s in read_set(out).items()}
    for idx in (0, 1, 2, 3):
        assert caps[idx]["caption"] == f"an image of a {by_index[idx]} in the park"
        assert caps[idx]["caption_info"]["fallback"] is None
    assert caps[4]["caption"] == f"an image of a {by_index[4]} on background"
    assert caps[4]["caption_info"]["fallback"] == "label_missing"
    assert caps[4]["caption_info"]["raw"] == "a blurry photo of something"
    assert caps[5]["caption_info"]["fallback"] == "import_missing"


def test_import_refuses_conflicting_duplicates(tmp_path):
    from digin.caption.importer import read_prompt_files

    for sub, text in (("0_cat", "an image of a cat"), ("1_cat", "another cat")):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "3_prompt.txt").write_text(text)
    with pytest.raises(ValueError, match="two different captions"):
        read_prompt_files(tmp_path)


def test_demo_images_from_a_shard_set_and_missing_ones(image_shards):
    from digin.caption.demos import load_demo_images, load_demo_list

    images = read_set(image_shards)
    ims = load_demo_images(image_shards, [1, 4], 24)
    assert sorted(ims) == [1, 4] and ims[4].shape == (24, 24, 3)
    assert not (ims[1] == ims[4]).all()
    with pytest.raises(FileNotFoundError, match=r"\[99\]"):
        load_demo_images(image_shards, [1, 99], 24)
    assert len(load_demo_list("imagenet_train")) == 24 and len(images) == 6
