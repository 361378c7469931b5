"""The toy world generator: reproducible scenes, caption template, planted split, ImageFolder export."""
import json

import numpy as np
import pytest

from digin.toy import world


def test_scene_is_reproducible_from_seed_and_spec():
    img1, cap1, lab1 = world.make_scene(123)
    img2, cap2, lab2 = world.make_scene(123)
    img3, _, lab3 = world.make_scene(124)
    assert np.array_equal(np.asarray(img1), np.asarray(img2)) and cap1 == cap2 and lab1 == lab2
    assert lab1 != lab3
    spec = {k: lab1[k] for k in ("shape", "color", "background", "size", "radius", "cx", "cy")}
    img4, cap4, _ = world.make_scene(spec)  # the spec alone re-renders the scene
    assert np.array_equal(np.asarray(img1), np.asarray(img4)) and cap4 == cap1
    assert img1.size == (64, 64) and img1.mode == "RGB"


def test_caption_follows_template_and_labels():
    _, cap, lab = world.make_scene(5)
    assert cap == f"a {lab['size']} {lab['color']} {lab['shape']} on a {lab['background']} background"
    assert world.SHAPES[lab["shape_id"]] == lab["shape"]
    assert lab["color"] != lab["background"]


def test_scene_pixels_match_spec():
    for seed in range(40):
        img, _, lab = world.make_scene(seed)
        a = np.asarray(img).astype(int)
        bg = np.array(world.PALETTE[lab["background"]])
        fg = np.array(world.PALETTE[lab["color"]])
        frame = np.concatenate([a[:2].reshape(-1, 3), a[-2:].reshape(-1, 3), a[:, :2].reshape(-1, 3),
                                a[:, -2:].reshape(-1, 3)])
        assert (frame == bg).all(), "objects keep 2 px off the border"
        cy, cx = int(lab["cy"]), int(lab["cx"])
        if lab["shape"] != "ring":  # every other shape covers its centre
            assert np.abs(a[cy, cx] - fg).max() <= 2


def test_shapes_have_distinct_masks():
    base = dict(color="red", background="blue", size="large", radius=18.0, cx=32.0, cy=32.0)
    masks = {s: world.object_mask(dict(base, shape=s)) for s in world.SHAPES}
    areas = {s: m.sum() for s, m in masks.items()}
    assert areas["ring"] < areas["circle"] and areas["star"] < areas["circle"] and areas["cross"] < areas["square"]
    for a in world.SHAPES:
        for b in world.SHAPES:
            if a < b:
                assert np.abs(masks[a] - masks[b]).sum() > 30, (a, b)


def test_caption_words_are_single_tokens(tmp_path):
    from digin.engine.models import write_tiny_tokenizer

    tok = write_tiny_tokenizer(tmp_path, words=list(world.VOCAB))
    for w in world.SHAPES + tuple(world.SIZES) + ("a", "on", "background"):
        assert len(tok(w).input_ids) == 3, w  # BOS + one token + EOS: P2P shape swaps keep token positions
    _, cap, lab = world.make_scene(9)
    swapped = cap.replace(lab["shape"], "star" if lab["shape"] != "star" else "ring")
    assert len(tok(cap).input_ids) == len(tok(swapped).input_ids)
    assert set(world.VOCAB) == {"a", "on", "background", *world.SIZES, *world.SHAPES, *world.PALETTE}


def test_planted_stream_puts_every_star_on_the_planted_background():
    specs = world.spec_stream(0, 600, planted=True)
    stars = [s for s in specs if s["shape"] == world.SPURIOUS_CLASS]
    others = [s for s in specs if s["shape"] != world.SPURIOUS_CLASS]
    assert stars and all(s["background"] == world.SPURIOUS_BACKGROUND for s in stars)
    assert all(s["background"] != world.SPURIOUS_BACKGROUND for s in others)
    clean = world.spec_stream(0, 600)
    assert any(s["shape"] != world.SPURIOUS_CLASS and s["background"] == world.SPURIOUS_BACKGROUND for s in clean)


def test_dataset_folder_is_an_imagefolder(tmp_path):
    from digin.shards.convert import convert

    root = world.make_dataset_folder(tmp_path / "toy", n_per_class=2, seed=0, split="val")
    caps = json.loads((root / "captions.json").read_text())
    assert len(caps) == 12 and sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(world.SHAPES)
    for rel, cap in caps.items():
        assert cap.split()[3] == rel.split("/")[0]
        assert (root / rel).with_suffix(".txt").read_text().strip() == cap
    other = world.make_dataset_folder(tmp_path / "toy", n_per_class=2, seed=0, split="heldout")
    assert set(json.loads((other / "captions.json").read_text()).values()) != set(caps.values())
    ss = convert("imagefolder", tmp_path / "toy", "val", tmp_path / "shards", name="toy", progress=False)
    assert ss.classes == list(world.SHAPES)  # ImageFolder order = classifier order
    assert ss.meta["num_samples"] == 12


def test_demo_inputs_pair_images_with_their_captions(tmp_path):
    from digin.shards.reader import iter_samples
    from digin.toy.demo import make_demo_inputs

    sets = make_demo_inputs(tmp_path / "demo", n_per_class=2, samples_per_shard=5)
    imgs = list(iter_samples(sets["images"], required=("meta",)))
    caps = {s["__key__"]: s["caption"] for s in iter_samples(sets["captions"])}
    assert len(imgs) == 12 and set(caps) == {s["__key__"] for s in imgs}
    for s in imgs:  # each caption names the image's class
        assert caps[s["__key__"]].split()[3] == world.SHAPES[int(s["meta"]["label"])]
    again = make_demo_inputs(tmp_path / "demo", n_per_class=2, samples_per_shard=5)  # idempotent
    assert again["captions"] == sets["captions"]


def test_shaded_background_mixes_toward_another_colour_and_keeps_the_caption():
    rng = np.random.default_rng(3)
    for seed in range(30):
        _, cap, lab = world.make_scene(seed)
        spec = {k: lab[k] for k in ("shape", "color", "background", "size", "radius", "cx", "cy")}
        shaded = world.shade_background(spec, rng, 0.45)
        colour, w = shaded["shade"]
        assert colour not in (spec["background"], spec["color"]) and 0 <= w < 0.45
        img, cap2, _ = world.make_scene(shaded)
        assert cap2 == cap  # the caption names the dominant colour
        a = np.asarray(img).astype(float)
        want = (1 - w) * np.array(world.PALETTE[spec["background"]]) + w * np.array(world.PALETTE[colour])
        assert np.abs(a[0, 0] - want).max() <= 0.5 and np.abs(a[-1, -1] - want).max() <= 0.5
        assert world.make_scene(dict(spec, shade=[colour, 0.0]))[0].tobytes() == world.make_scene(spec)[0].tobytes()
    with pytest.raises(ValueError, match="0.5"):
        world.shade_background(spec, rng, 0.5)
