"""digin neurons mode=spurious / similar / spurious_check (the reference's imagenet_neuron_activation.py,
imagenet_cog_compare_similar_neurons.py, cog_spurious_imagenet.py) and their gallery pages, on tiny models."""
import json
import math

import numpy as np
import pytest
import torch

from digin.cli import build_config
from digin.errors import ConfigError
from digin.stages.gallery.records import records_from_shards
from digin.shards.reader import iter_samples
from digin.stages.outputs import check_sample
from digin.tasks import neurons


def _cfg(*args):
    return build_config(neurons.Config, ["device=cpu", "progress=false", *args])


def _sd(p):
    return [f"model_path={p['sd']}", f"classifier=tiny:{p['clf']}", "resolution=32", "num_ddim_steps=4",
            "optim_params.sgd_steps=2", "optim_params.sgd_stepsize=0.05", "augmentation_num_cutouts=2",
            "class_names=[cat,dog,fox]"]


@pytest.fixture(scope="module")
def spurious_run(small_pipeline, tmp_path_factory):
    """Pairs from a JSON file: two neurons of class 0 and one of class 2, one image each."""
    p = small_pipeline
    out = tmp_path_factory.mktemp("spurious")
    (out / "pairs.json").write_text("[[0, 3], [0, 5], [2, 3]]")
    args = [f"out={out}", *_sd(p), f"pairs_file={out / 'pairs.json'}", "num_images=1", "batch_size=3"]
    assert neurons.run(_cfg("mode=spurious", *args)) == 0
    return out, args


def test_spurious_pairs_keep_the_object_and_raise_the_neuron(spurious_run):
    out, args = spurious_run
    recs = {r.key: r for r in records_from_shards(out / "spurious")}
    assert sorted(recs) == ["spurious/c0_n3/i0", "spurious/c0_n5/i0", "spurious/c2_n3/i0"]
    for s in iter_samples(out / "spurious"):
        assert check_sample("neuron_spurious", s) == [], check_sample("neuron_spurious", s)
    for key, r in recs.items():
        m = r.metrics
        assert key == f"spurious/c{m['class']}_n{m['neuron']}/i0"
        assert m["prompt"] == f"a photograph of a {['cat', 'dog', 'fox'][m['class']]}"
        assert m["foreground_words"] == [m["label"]] and m["schedule"][2] == "threshold_0.3"
        assert m["group"] == f"{m['class']}_neuron_{m['neuron']}" and "mask" in r.aux_images
        a = m["confidences"]["activation"]
        assert all(v is not None and math.isfinite(v) for v in a) and a[m["best_iter"]] >= a[0] - 1e-6
    # start noise keyed by (class, i) as the reference's latents[class, i]: both neurons of class 0 start alike
    sd = {k: r.image_array("sd") for k, r in recs.items()}
    assert np.array_equal(sd["spurious/c0_n3/i0"], sd["spurious/c0_n5/i0"])
    assert not np.array_equal(sd["spurious/c0_n3/i0"], sd["spurious/c2_n3/i0"])
    # resume: nothing redone
    from digin.shards.manifest import ShardSet

    before = {i: rec["sha256"] for i, rec in ShardSet.load(out / "spurious").records.items()}
    assert neurons.run(_cfg("mode=spurious", *args)) == 0
    assert {i: rec["sha256"] for i, rec in ShardSet.load(out / "spurious").records.items()} == before


def test_spurious_bad_input_is_one_line_before_writing(small_pipeline, tmp_path):
    p = small_pipeline
    base = [f"out={tmp_path / 'x'}", *_sd(p), "num_images=1"]
    with pytest.raises(SystemExit, match="class 7 of pair \\[7, 1\\] is outside the 3 class names"):
        neurons.run(_cfg("mode=spurious", *base, "pairs=[[7,1]]"))
    with pytest.raises(ConfigError, match="neuron 99 of pair \\[0, 99\\] is outside the classifier's 16 features"):
        neurons.run(_cfg("mode=spurious", *base, "pairs=[[0,99]]"))
    with pytest.raises(ConfigError, match="^p2p.optimize_xa_interpolation_schedule=true but there is no schedule"):
        neurons.run(_cfg("mode=spurious", *base, "pairs=[[0,1]]", "p2p.optimize_xa_interpolation_schedule=true"))
    with pytest.raises(ConfigError, match="^mask_blend.optimize_mask_blend=true but there is no schedule"):
        neurons.run(_cfg("mode=spurious", *base, "pairs=[[0,1]]", "mask_blend.do_mask_blend=false",
                         "mask_blend.optimize_mask_blend=true"))
    assert not (tmp_path / "x").exists()


def _fake_visualisations(folder, clf_path, neurons_imgs):
    """A visualise-style result shard set: keys neurons/n<n>/i<i> with random `ours` images."""
    from digin.shards.plan import Item, Plan
    from digin.shards.runner import RunOptions, StageSpec, run_stage

    rng = np.random.default_rng(0)
    items = [Item(f"neurons/n{n}/i{i}", (), {"neuron": n, "i": i}) for n, k in neurons_imgs for i in range(k)]
    imgs = {it.key: rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for it in items}

    def process(batch):
        return [{"ours": imgs[k], "metrics": {"neuron": s["item"]["neuron"], "i": s["item"]["i"], "word": "w"}}
                for k, s in zip(batch.keys[:batch.n_real], batch.samples)]

    spec = StageSpec("neurons", Plan("neurons", items, None), {"stage": "fake"}, process=process, required=("item",))
    run_stage(spec, RunOptions(out=folder, batch_size=4, progress=False))
    return imgs


def test_similar_groups_activation_matrix_and_grid(small_pipeline, tmp_path):
    from digin.engine.classifiers import load_classifier

    p = small_pipeline
    imgs = _fake_visualisations(tmp_path / "visualise", p["clf"], [(0, 2), (5, 3), (7, 1), (20, 1)])
    args = [f"out={tmp_path}", f"classifier=tiny:{p['clf']}"]
    with pytest.raises(SystemExit, match="neuron 9 of group \\[0, 9\\] has no visualisation"):
        neurons.run(_cfg("mode=similar", *args, "target_neurons=[[0,9]]"))
    with pytest.raises(SystemExit, match="group 4 is unknown"):
        neurons.run(_cfg("mode=similar", *args, "target_neurons=[4]"))
    with pytest.raises(SystemExit, match="neuron 20 of group \\[0, 20\\] is outside the classifier's 16 features"):
        neurons.run(_cfg("mode=similar", *args, "target_neurons=[[0,20]]"))
    assert not (tmp_path / "similar_neurons").exists()
    assert neurons.run(_cfg("mode=similar", *args, "target_neurons=[[0,5],[5,7,0]]")) == 0
    clf = load_classifier(f"tiny:{p['clf']}")
    for group in ([0, 5], [5, 7, 0]):
        name = "_".join(map(str, group))
        table = json.loads((tmp_path / "similar_neurons" / f"{name}.json").read_text())
        assert [r["neuron"] for r in table["images"]] == [n for n in group for _ in range({0: 2, 5: 3, 7: 1}[n])]
        x = torch.from_numpy(np.stack([imgs[r["key"]] for r in table["images"]])).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            want = clf.features(x)[1][:, 0][:, group]
        assert torch.allclose(torch.tensor(table["activations"]), want, atol=1e-5)
        from PIL import Image

        assert Image.open(tmp_path / "similar_neurons" / f"{name}.png").size[1] > 32 * len(group)
    stamp = (tmp_path / "similar_neurons" / "0_5.json").stat().st_mtime_ns
    assert neurons.run(_cfg("mode=similar", *args, "target_neurons=[[0,5],[5,7,0]]")) == 0  # done: not redone
    assert (tmp_path / "similar_neurons" / "0_5.json").stat().st_mtime_ns == stamp


class _FakeVLM:
    name = "fake"

    def __init__(self):
        self.questions = []

    def ask(self, images, question):
        self.questions.append((question, tuple(images.shape)))
        return ["Yes." if "a cat?" in question else "No, it does not." for _ in range(len(images))]


def test_spurious_check_images_fractions(small_pipeline, tmp_path, monkeypatch, capsys):
    import digin.stages.neurons.vlm_check as V

    fake = _FakeVLM()
    monkeypatch.setattr(V, "get_captioner", lambda backend, **kw: fake)
    p = small_pipeline
    with pytest.raises(SystemExit, match="one of them"):
        neurons.run(_cfg("mode=spurious_check", f"out={tmp_path}"))
    assert neurons.run(_cfg("mode=spurious_check", f"images={p['images']}", f"out={tmp_path}", "batch_size=4",
                            "vlm_backend=fake")) == 0
    rows = [s["answer"] for s in iter_samples(tmp_path / "spurious_check")]
    assert len(rows) == 6 and {r["yes"] for r in rows if r["label"] == "cat"} == {True}
    assert all(r["question"] == f"Does this image contain a {r['label']}? Please only answer with yes or no."
               for r in rows)
    summary = json.loads((tmp_path / "spurious_check.json").read_text())
    assert {c: (r["yes"], r["images"]) for c, r in summary["classes"].items()} == {"0": (2, 2), "1": (0, 2),
                                                                                  "2": (0, 2)}
    assert summary["total"] == {"yes": 2, "images": 6, "fraction": pytest.approx(1 / 3)}
    assert "Total: 2 out of 6 (0.333)" in capsys.readouterr().out


def test_spurious_check_of_results_with_tiny_blip_and_gallery(spurious_run, tmp_path):
    """The real hf backend (a tiny random BLIP) over the spurious results' sd and ours; the answers are the model's
    own on those images, and the gallery shows them beside the images and on the check page."""
    from digin.caption.backends import get_captioner, to_images_BCHW
    from tests.caption.builders import save_tiny_blip
    from digin.cli import main

    out, _ = spurious_run
    blip = save_tiny_blip(tmp_path / "blip", seed=0, image_size=32)
    opts = [f"vlm_options.model_path={blip}", "vlm_options.max_new_tokens=4", "vlm_options.num_beams=1"]
    assert neurons.run(_cfg("mode=spurious_check", f"results={out / 'spurious'}", f"out={tmp_path / 'chk'}",
                            "check_members=[sd,ours]", "batch_size=6", *opts)) == 0
    answers = {s["__key__"]: s["answer"] for s in iter_samples(tmp_path / "chk" / "spurious_check")}
    for s in iter_samples(tmp_path / "chk" / "spurious_check"):
        assert check_sample("spurious_check", s) == []
    assert len(answers) == 6
    recs = {r.key: r for r in records_from_shards(out / "spurious")}
    cap = get_captioner("hf", device="cpu", model_path=str(blip), max_new_tokens=4, num_beams=1)
    for key, a in answers.items():
        rkey, member = key.rsplit("/", 1)
        assert a["source_key"] == rkey and a["member"] == member and a["class"] == recs[rkey].metrics["class"]
        q = f"Does this image contain a {recs[rkey].metrics['label']}? Please only answer with yes or no."
        assert a["answer"] == cap.ask(to_images_BCHW([recs[rkey].image_array(member)]), q)[0]
        assert a["yes"] == ("yes" in a["answer"].lower())
    # a similar group beside the results (the gallery finds it in the neuron folder) and the check page
    g = out / "similar_neurons"
    g.mkdir(exist_ok=True)
    (g / "3_5.json").write_text(json.dumps({"group": [3, 5], "images": [
        {"key": "spurious/c0_n3/i0", "neuron": 3, "i": 0, "activations": [1.5, 0.25]}], "activations": [[1.5, 0.25]]}))
    from PIL import Image

    Image.new("RGB", (8, 8)).save(g / "3_5.png")
    assert main(["gallery", f"results=[{out / 'spurious'}]", f"out={tmp_path / 'gal'}",
                 f"checks=[{tmp_path / 'chk'}]"]) == 0
    page = (tmp_path / "gal" / "spurious-check" / "index.html").read_text()
    assert page.count('<figure class="vlm"') == 6 and "Question: “Does this image contain a" in page
    details = "".join(f.read_text() for f in (tmp_path / "gal").glob("*/neuron-*.html"))
    assert details.count(" · VLM: ") == 6
    grid = (tmp_path / "gal" / "similar-neurons" / "index.html").read_text()
    assert 'data-group="3_5"' in grid and "<b>1.5000</b>" in grid and (tmp_path / "gal" / "similar-neurons" /
                                                                        "3_5.png").is_file()
    assert "spurious-check/index.html" in (tmp_path / "gal" / "index.html").read_text()
