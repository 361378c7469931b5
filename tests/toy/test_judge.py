"""The independent judge (digin/toy/judge.py) on rendered toy-world scenes, the verdicts the science checks count
with it (a vanished object or a wrong-shape blob is no success), and the measured cue map (digin/toy/cue.py)."""
import numpy as np
import pytest
import torch

from digin.toy import cue, judge, world


def scenes(n_per_shape: int, seed: int, shaded: bool):
    rng = np.random.default_rng(seed)
    out = []
    for shape in world.SHAPES:
        for _ in range(n_per_shape):
            s = world.sample_spec(rng, shape=shape)
            out.append(world.shade_background(s, rng, 0.45) if shaded else s)
    return out


@pytest.mark.parametrize("shaded", [False, True])
def test_judge_recovers_shape_colour_and_background_of_rendered_scenes(shaded):
    specs = scenes(4, seed=11 + shaded, shaded=shaded)
    got = [judge.judge(world.render(s)) for s in specs]
    shape = np.mean([g["shape"] == s["shape"] for g, s in zip(got, specs)])
    colour = np.mean([g["color"] == s["color"] for g, s in zip(got, specs)])
    background = np.mean([g["background"] == s["background"] for g, s in zip(got, specs)])
    assert min(shape, colour, background) >= 0.95, (shape, colour, background)
    for g, s in zip(got, specs):  # and where and how large the object is
        if g["shape"] == s["shape"]:
            assert abs(g["cx"] - s["cx"]) < 1.5 and abs(g["cy"] - s["cy"]) < 1.5, (g, s)
            assert abs(g["radius"] / s["radius"] - 1) < 0.12, (g, s)


def test_judge_reads_a_decoder_like_blur_and_noise():
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(5)
    specs = scenes(3, seed=7, shaded=True)
    ok = 0
    for s in specs:
        a = world.render(s).astype(np.float32) / 255
        a = gaussian_filter(a, (1.0, 1.0, 0)) + rng.normal(0, 0.02, a.shape)
        g = judge.judge(np.clip(a, 0, 1).transpose(2, 0, 1))
        ok += g["shape"] == s["shape"] and g["color"] == s["color"]
    assert ok / len(specs) >= 0.9, ok


def test_judge_says_none_without_an_object():
    bg = np.array(world.PALETTE["blue"], dtype=np.float32) / 255
    rng = np.random.default_rng(0)
    plain = np.clip(bg + rng.normal(0, 0.02, (64, 64, 3)), 0, 1)
    assert judge.judge(plain.transpose(2, 0, 1))["shape"] == "none"
    # a washed-out object: 90 % of the way into the background colour
    s = dict(world.sample_spec(np.random.default_rng(3), shape="square", background="blue", color="white"))
    faded = 0.1 * world.render(s).astype(np.float32) / 255 + 0.9 * bg
    assert judge.judge(faded.transpose(2, 0, 1))["shape"] == "none"
    # an edge band the decoder drew, around a plain field, is not an object
    framed = plain.copy()
    framed[:3], framed[-3:], framed[:, :3], framed[:, -3:] = 0.6 * bg, 0.6 * bg, 0.6 * bg, 0.6 * bg
    assert judge.judge(framed.transpose(2, 0, 1))["shape"] == "none"


def test_judge_calls_a_smear_unclear_and_a_texture_mixed():
    rng = np.random.default_rng(1)
    a = np.tile(np.array(world.PALETTE["black"], dtype=np.float32) / 255, (64, 64, 1))
    a[16:48, 16:48] = rng.uniform(0, 1, (32, 32, 3))  # a patch of noise: square by its outline, no one colour
    assert judge.judge(a.transpose(2, 0, 1))["color"] == "mixed"
    yy, xx = np.mgrid[0:64, 0:64]
    smear = np.exp(-((xx - 32) ** 2 / 300 + (yy - 32) ** 2 / 20))[..., None]  # a long soft streak
    b = smear * np.array([1.0, 1.0, 1.0]) + (1 - smear) * np.array(world.PALETTE["red"]) / 255
    assert judge.judge(b.transpose(2, 0, 1))["shape"] == "unclear"


def test_palette_terms_name_the_world_shades():
    s = dict(world.sample_spec(np.random.default_rng(2), background="yellow", color="red"), shade=["green", 0.3])
    t = judge.judge(world.render(s))["background_terms"]
    assert (t["main"], t["toward"]) == ("yellow", "green") and abs(t["weight"] - 0.3) < 0.02, t
    assert judge.terms_text(t) == "yellow+30% green"


def test_a_vanished_object_is_not_a_success_and_never_a_star():
    bg = np.array(world.PALETTE["red"], dtype=np.float32) / 255
    img = np.tile(bg, (64, 64, 1)).transpose(2, 0, 1)
    judged = [judge.judge(img)]
    star = world.SHAPES.index("star")
    p = torch.zeros(1, len(world.SHAPES))
    p[0, star] = 0.99  # the clean classifier reads the plain field as a star
    assert judge.clean_reading(p, judged) == ["none"]
    v = judge.uvce_verdicts(p[:, star], judged, ["star"], ["white"], [0.0])
    assert v["success"] == [False] and v["confirmed"] == [False] and v["clean_edit"] == [False]


def test_a_wrong_shape_blob_is_not_a_judged_success():
    s = world.sample_spec(np.random.default_rng(4), shape="circle", color="green", background="red", size="large")
    judged = [judge.judge(world.render(s))]
    assert judged[0]["shape"] == "circle"
    v = judge.uvce_verdicts([0.99], judged, ["star"], ["green"], [0.01])  # the classifier says star
    assert v["success"] == [True] and v["judged_target"] == [False]
    assert v["confirmed"] == [False] and v["clean_edit"] == [False]
    # the same scene with the target shape drawn is a clean edit
    judged = [judge.judge(world.render(dict(s, shape="star")))]
    v = judge.uvce_verdicts([0.99], judged, ["star"], ["green"], [0.01])
    assert v["confirmed"] == [True] and v["clean_edit"] == [True]
    assert judge.uvce_verdicts([0.99], judged, ["star"], ["blue"], [0.01])["clean_edit"] == [False]  # recoloured
    assert judge.uvce_verdicts([0.99], judged, ["star"], ["green"], [0.2])["clean_edit"] == [False]  # background


def test_cue_map_lookups():
    m = cue.load_map()
    L = m["levels"]
    assert len(m["classifiers"]["spurious"]["rate"]) == L ** 3
    grid = cue.grid_colours(L)
    k = int(np.argmax(m["classifiers"]["spurious"]["rate"]))
    assert cue.rate(m, "spurious", grid[k:k + 1])[0] == pytest.approx(m["classifiers"]["spurious"]["rate"][k])
    r = cue.rate(m, "spurious", grid)
    d = cue.depth(m, "spurious", grid)
    assert ((d > 0) == (r > 0.5)).all() and (d != 0).all()  # in (+) or out (−) of the star region, by how far
    # a measured side that the grid disagrees with is within the grid's resolution of the edge: depth 0
    assert (cue.depth(m, "spurious", grid[:3], inside_N=~(r[:3] > 0.5)) == 0).all()


@torch.no_grad()
def test_cue_map_is_what_the_classifiers_measure(toy_models):
    """The stored sweep is reproducible, and holds the planted ground truth: the spurious classifier calls
    non-star scenes star on the planted green, the clean one does not."""
    _, clean, spur = toy_models
    m = cue.load_map()
    grid = cue.grid_colours(m["levels"])
    pick = np.random.default_rng(0).choice(len(grid), 6, replace=False)
    for name, clf in (("spurious", spur), ("clean", clean)):
        again = cue.rate_at(clf, grid[pick], positions=m["positions"])
        stored = np.asarray(m["classifiers"][name]["rate"])[pick]
        assert np.abs(again - stored).max() <= 0.02, (name, again, stored)
    green = np.array(world.PALETTE[world.SPURIOUS_BACKGROUND])[None] / 255
    assert cue.rate_at(spur, green)[0] >= 0.9 and cue.rate_at(clean, green)[0] <= 0.1
