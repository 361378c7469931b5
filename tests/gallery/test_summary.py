import math

import pytest

from digin.stages.gallery.summary import (category_of, load_eval_rows, mean, median, result_row, score_of, status_of,
                                   summarise)


def test_status_of_with_and_without_the_field():
    assert status_of({"status": "no_improvement"}) == "no_improvement"
    assert status_of({"nonfinite": True}) == "nonfinite"  # results written before `status` existed
    assert status_of({"nonfinite": False}) == "ok" and status_of({}) == "ok"


def test_score_kinds():
    t = score_of({"conf_0_sd": 0.2, "conf_0_ours": 0.7})
    assert t["kind"] == "target" and t["gain"] == pytest.approx(0.5) and t["success"]
    assert not score_of({"conf_0_sd": 0.2, "conf_0_ours": 0.5})["success"]  # needs p(target) > 0.5
    nf = score_of({"conf_0_sd": 0.2, "conf_0_ours": None})
    assert nf["gain"] is None and not nf["success"]
    d = score_of({"conf_0_sd": 0.3, "conf_0_ours": 0.9, "conf_1_sd": 0.5, "conf_1_ours": 0.2})
    assert d["kind"] == "difference" and d["before"] == pytest.approx(-0.2) and d["after"] == pytest.approx(0.7)
    assert d["success"] and not score_of({"conf_0_ours": 0.9, "conf_1_ours": 0.6, "conf_0_sd": 0,
                                          "conf_1_sd": 0})["success"]
    a = score_of({"activation_sd": 2.0, "activation_ours": 3.5, "conf_0_ours": 0.1})  # activation wins
    assert a["kind"] == "activation" and a["gain"] == 1.5 and a["success"]
    neg = score_of({"activation_sd": 2.0, "activation_ours": 1.0, "loss_name": "neg_neuron_activation"})
    assert neg["gain"] == 1.0 and neg["success"]
    assert score_of({})["kind"] == "none"


def test_categories():
    assert category_of("imagenet/val/00350/t8", {"start": 7, "start_label": "cock"}, "7_to_8") == "cock"  # no cluster
    car = category_of("imagenet/val/00001/t2", {"start": 817, "start_label": "sports car"}, "g")
    assert car == "car"  # ImageNet: the hierarchy cluster of the start class
    assert category_of("demo/val/1/t2", {"start": 817, "start_label": "sports car"}, "g") == "sports car"
    assert category_of("diff/c3/i0", {"class": 3, "label": "shark"}, "3_shark") == "shark"
    assert category_of("neurons/n4/i0", {"neuron": 4, "class": 0}, "neuron_4") == "neuron 4"
    assert category_of("x/t1", {"start": 2, "neuron": 4, "start_label": "bee"}, "2_neuron_4") == "bee"
    assert category_of("k", {}, "grp") == "grp"


def test_summarise_counts_rates_and_categories():
    metrics = [{"conf_0_sd": 0.1, "conf_0_ours": 0.9, "start": 0, "start_label": "a"},
               {"conf_0_sd": 0.2, "conf_0_ours": 0.4, "start": 0, "start_label": "a", "status": "no_improvement"},
               {"conf_0_sd": 0.3, "conf_0_ours": None, "start": 1, "start_label": "b", "nonfinite": True},
               {"conf_0_sd": 0.0, "conf_0_ours": 0.6, "start": 1, "start_label": "b"}]
    evals = [{"l2_ours": 0.1, "guided/flip": 1.0, "masked": "background"}, {"l2_ours": 0.3, "guided/flip": 0.0},
             {"l2_ours": float("nan")}, None]
    rows = [result_row(f"k{i}", "uvce", "g", m, e) for i, (m, e) in enumerate(zip(metrics, evals))]
    s = summarise(rows, {"written": 3, "rejected": 1, "skipped": 0, "reasons": {}})
    assert s["results"] == 4 and s["status"] == {"ok": 2, "nonfinite": 1, "no_improvement": 1}
    assert s["success"] == 2 and s["success_rate"] == 0.5 and s["kind"] == "target"
    assert s["gain_mean"] == pytest.approx((0.8 + 0.2 + 0.6) / 3) and s["gain_median"] == pytest.approx(0.6)
    assert s["l2_ours"] == {"n": 2, "mean": pytest.approx(0.2), "median": pytest.approx(0.2)}  # NaN dropped
    assert s["guided/flip"] == {"n": 2, "rate": 0.5} and s["masked"] == ["background"]
    assert list(s["categories"]) == ["a", "b"] and s["categories"]["b"]["success"] == 1
    assert s["categories"]["a"]["gain_mean"] == pytest.approx(0.5)
    assert summarise([])["success_rate"] is None


def test_mean_median_skip_non_finite():
    assert mean([1, None, float("inf"), 3]) == 2 and median([5, None, 1, 3, float("nan")]) == 3
    assert median([1, 2, 3, 4]) == 2.5 and mean([]) is None and median([True]) is None
    assert not math.isnan(mean([float("nan"), 1.0]))


def test_load_eval_rows(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "per_sample.jsonl").write_text('{"key": "k1", "l1_ours": 0.5}\n\n{"key": "k2"}\n')
    (tmp_path / "b" / "per_sample.jsonl").write_text('{"key": "k1", "l1_ours": 0.25}\n')
    rows = load_eval_rows([tmp_path / "a", tmp_path / "b"])
    assert rows["k1"]["l1_ours"] == 0.25 and set(rows) == {"k1", "k2"}
    with pytest.raises(SystemExit, match="not found"):
        load_eval_rows([tmp_path])


def test_categories_in_natural_order():
    from digin.stages.gallery.summary import natural_key

    rows = [result_row(f"k{c}", "t", "g", {"start": c, "start_label": f"class {c}", "conf_0_ours": 0.9,
                                           "conf_0_sd": 0.1}) for c in (10, 2, 1)]
    assert list(summarise(rows)["categories"]) == ["class 1", "class 2", "class 10"]
    assert sorted(["b2", "B10", "a"], key=natural_key) == ["a", "b2", "B10"]
