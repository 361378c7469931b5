"""digin neurons: streaming top-k vs brute force, rank merge, naming, word search + visualisation, counterfactuals."""
import json
import math
from collections import Counter

import pytest
import torch

from digin.cli import build_config
from digin.stages.gallery.records import records_from_shards
from digin.stages.neurons.activations import load_topk, sample_id
from digin.stages.neurons.words import count_words, parse_object_list
from digin.shards.manifest import ShardSet
from digin.shards.reader import iter_samples
from digin.tasks import neurons

K = 4


@pytest.fixture(scope="module")
def act_data(tmp_path_factory):
    """12 images of 3 classes in 4 shards, and a tiny 3-class classifier (16 penultimate features)."""
    from digin.engine.classifiers import save_tiny_classifier
    from digin.shards.convert import convert
    from digin.shards.synthetic import make_image_folder

    root = tmp_path_factory.mktemp("neurons")
    make_image_folder(root / "raw", classes=["cat", "dog", "fox"], n_per_class=4, size=40, seed=3)
    convert("imagefolder", root / "raw", "val", root / "images", name="toyset", samples_per_shard=3, progress=False)
    clf = save_tiny_classifier(root / "clf", num_classes=3, size=32, seed=1)
    return {"images": root / "images", "clf": clf}


def _cfg(*args):
    return build_config(neurons.Config, ["device=cpu", "progress=false", *args])


def _act_args(d, out, *extra):
    """The activations' keys; k only where the mode takes it (each mode refuses another mode's keys)."""
    k = [] if any(e in ("mode=merge", "mode=name") for e in extra) else [f"k={K}"]
    return [f"images={d['images']}", f"classifier=tiny:{d['clf']}", f"out={out}", *k, *extra]


def _brute_force(d):
    """All features at once → per neuron [(id, value)] sorted by (value desc, id asc)."""
    from digin.engine.classifiers import load_classifier

    clf = load_classifier(f"tiny:{d['clf']}")
    samples = list(iter_samples(d["images"], resolution=32))
    x = torch.stack([torch.from_numpy(s["image"].copy()).permute(2, 0, 1) for s in samples]).float() / 255
    with torch.no_grad():
        feats = clf.features(x)[1][:, 0]
    ids = [sample_id(s["__shard__"], s["__pos__"]) for s in samples]
    keys = dict(zip(ids, [s["__key__"] for s in samples]))
    labels = dict(zip(ids, [s["meta"]["label_name"] for s in samples]))
    best = {n: sorted(zip(ids, feats[:, n].tolist()), key=lambda iv: (-iv[1], iv[0]))[:K]
            for n in range(feats.shape[1])}
    return best, keys, labels


def test_activations_streaming_topk_equals_brute_force_and_rank_merge(act_data, tmp_path):
    d = act_data
    assert len(ShardSet.load(d["images"]).records) == 4
    best, keys, _ = _brute_force(d)
    one = tmp_path / "one"
    assert neurons.run(_cfg(*_act_args(d, one, "activation_batch_size=5", "neurons=[0,3,15]"))) == 0  # 12 = 5+5+2
    topk, meta = load_topk(one / "topk.safetensors")
    assert meta["count"] == 12 and topk.values_FK.shape == (16, K)
    for n in range(16):
        got = topk.result(n)
        assert [i for i, _ in got] == [i for i, _ in best[n]]
        assert torch.allclose(torch.tensor([v for _, v in got]), torch.tensor([v for _, v in best[n]]), atol=1e-5)
    top3 = json.loads((one / "neuron_3_top_images.json").read_text())
    assert [im["key"] for im in top3["images"]] == [keys[i] for i, _ in best[3]]
    assert not (one / "neuron_4_top_images.json").exists()

    # two ranks, then merge: the same table as one pass
    two = tmp_path / "two"
    assert neurons.run(_cfg(*_act_args(d, two, "activation_batch_size=2", "rank=0", "world=2"))) == 0
    assert not (two / "topk.safetensors").exists()
    with pytest.raises(RuntimeError, match="rank files"):
        neurons.run(_cfg(*_act_args(d, two, "mode=merge")))
    assert neurons.run(_cfg(*_act_args(d, two, "activation_batch_size=2", "rank=1", "world=2"))) == 0
    r0, m0 = load_topk(two / "topk-rank0.safetensors")
    assert m0["count"] == 6 and not torch.equal(r0.ids_FK, topk.ids_FK)  # each rank saw only its half
    assert neurons.run(_cfg(*_act_args(d, two, "mode=merge"))) == 0
    merged, mmeta = load_topk(two / "topk.safetensors")
    assert mmeta["count"] == 12
    assert torch.equal(merged.ids_FK, topk.ids_FK)
    assert torch.allclose(merged.values_FK, topk.values_FK, atol=1e-5)
    # no neurons given and not the reference classifier: every feature gets its file
    assert json.loads((two / "selected_neurons.json").read_text())["neurons"] == list(range(16))


def test_name_template_counts_labels_of_top_images(act_data, tmp_path):
    d = act_data
    best, _, labels = _brute_force(d)
    out = tmp_path / "act"
    assert neurons.run(_cfg(*_act_args(d, out, "neurons=[2,7]"))) == 0
    assert neurons.run(_cfg(*_act_args(d, out, "mode=name", "name_backend=template", "num_images_to_label=3"))) == 0
    table = json.loads((out / "neuron_words.json").read_text())
    assert set(table["neurons"]) == {"2", "7"}
    for n in (2, 7):
        want = Counter(labels[i] for i, _ in best[n][:3])
        assert table["neurons"][str(n)]["words"] == dict(want)
        assert len(table["neurons"][str(n)]["images"]) == 3


def test_word_parsing_and_given_backend(tmp_path):
    assert parse_object_list("Objects: [Dog, leash ,  'grass' , ]") == ["dog", "leash", "grass"]
    assert parse_object_list("tree, Sky") == ["tree", "sky"]
    assert count_words([["dog", "cat", "dog"], ["dog"]]) == {"dog": 2, "cat": 1}
    cfg = _cfg(f"out={tmp_path}", "mode=name", "name_backend=given", "words={4: [Fox, dog], 9: {cat: 3}}")
    assert neurons.run(cfg) == 0
    table = json.loads((tmp_path / "neuron_words.json").read_text())["neurons"]
    assert table == {"4": {"words": {"dog": 1, "fox": 1}, "images": [], "answers": []},
                     "9": {"words": {"cat": 3}, "images": [], "answers": []}}


def _sd_args(p):
    return [f"model_path={p['sd']}", f"classifier=tiny:{p['clf']}", "resolution=32", "num_ddim_steps=4",
            "optim_params.sgd_steps=2", "optim_params.sgd_stepsize=0.05", "augmentation_num_cutouts=2"]


def test_search_and_visualise_end_to_end(small_pipeline, tmp_path, monkeypatch):
    from digin.engine.classifiers import load_classifier
    from digin.engine.models import load_sd
    from digin.stages.neurons.search import word_features

    p = small_pipeline
    args = [f"out={tmp_path}", *_sd_args(p), "name_backend=given", "words={0: [cat, dog], 5: [fox, dog]}",
            "images_per_word=2", "sd_batch_size=4", "num_images=2", "batch_size=4"]
    assert neurons.run(_cfg("mode=visualise", *args)) == 0
    search = json.loads((tmp_path / "word_search.json").read_text())["neurons"]
    assert {w for w, _ in search["0"]} == {"cat", "dog"} and {w for w, _ in search["5"]} == {"fox", "dog"}
    for ranked in search.values():
        acts = [a for _, a in ranked]
        assert acts == sorted(acts, reverse=True) and all(math.isfinite(a) for a in acts)
    # the search's means do not depend on the batching: one image at a time gives the same numbers
    feats = word_features(load_sd(p["sd"]), load_classifier(f"tiny:{p['clf']}"), ["dog"], template="a photograph of a",
                          images_per_word=2, seed=42, resolution=32, num_ddim_steps=4, guidance_scale=7.5,
                          batch_size=1, device="cpu")
    assert feats["dog"][5].item() == pytest.approx(dict(search["5"])["dog"], abs=1e-4)

    recs = records_from_shards(tmp_path / "visualise")
    assert sorted((r.metrics["neuron"], r.metrics["i"]) for r in recs) == [(0, 0), (0, 1), (5, 0), (5, 1)]
    for r in recs:
        n = r.metrics["neuron"]
        assert r.metrics["word"] == search[str(n)][0][0]
        assert r.metrics["prompt"] == f"a photograph of a {r.metrics['word']}"
        assert r.group == f"neuron_{n}" and set(r.images) == {"sd", "ours"}
        assert all(v is not None and math.isfinite(v) for v in r.metrics["loss"])
        a = r.metrics["confidences"]["activation"]
        assert a[r.metrics["best_iter"]] >= a[0] - 1e-6  # ours activates the neuron at least as much as sd
    # resume: nothing to redo; a rank > 0 plans from rank 0's word search instead of running it
    before = {i: rec["sha256"] for i, rec in ShardSet.load(tmp_path / "visualise").records.items()}
    assert neurons.run(_cfg("mode=visualise", *args)) == 0
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    search_file = tmp_path / "word_search.json"
    stamp = (search_file.read_bytes(), search_file.stat().st_mtime_ns)
    import digin.stages.neurons.modes as M

    monkeypatch.setattr(M, "word_features", lambda *a, **k: (_ for _ in ()).throw(AssertionError("searched")))
    assert neurons.run(_cfg("mode=visualise", *args, "wait_s=0")) == 0
    assert (search_file.read_bytes(), search_file.stat().st_mtime_ns) == stamp
    assert {i: rec["sha256"] for i, rec in ShardSet.load(tmp_path / "visualise").records.items()} == before
    # a rank > 0 whose rank 0 has not searched yet waits for it, and says so when wait_s runs out
    search_file.unlink()
    with pytest.raises(SystemExit, match="did not write .*word_search.json"):
        neurons.run(_cfg("mode=visualise", *args, "wait_s=0"))


def test_counterfactuals_end_to_end(small_pipeline, tmp_path):
    p = small_pipeline
    cfg = _cfg("mode=counterfactuals", f"images={p['images']}", f"inversions={p['inv']}", f"out={tmp_path}",
               *_sd_args(p), "pairs=[[0,3],[0,7],[2,1]]", "batch_size=3")
    assert cfg.p2p.xa_interpolation_schedule == ["threshold_0.0_0.3"]
    assert neurons.run(cfg) == 0
    labels = {s["__key__"]: s["meta"]["label"] for s in iter_samples(p["images"])}
    want = sorted((k, n) for k, y in labels.items() for c, n in ((0, 3), (0, 7), (2, 1)) if y == c)
    recs = records_from_shards(tmp_path / "counterfactuals")
    assert sorted((r.key.rsplit("/n", 1)[0], r.metrics["neuron"]) for r in recs) == want
    for r in recs:  # one item per (image, neuron): key <image key>/n<neuron>
        assert r.key.endswith(f"/n{r.metrics['neuron']}")
        assert r.metrics["start"] == labels[r.key.rsplit("/n", 1)[0]]
        assert r.group == f"{r.metrics['start']}_neuron_{r.metrics['neuron']}"
        assert set(r.images) >= {"orig", "sd", "ours"} and "mask" in r.aux_images
        assert all(v is not None and math.isfinite(v) for v in r.metrics["loss"])
        a = r.metrics["confidences"]["activation"]
        assert a[r.metrics["best_iter"]] >= a[0] - 1e-6
    out = ShardSet.load(tmp_path / "counterfactuals")
    # the plan holds only the images a pair asks for (the two dog images, class 1, are not read at all)
    assert out.meta["plan"]["counts"] == {"pairs": 3, "images": 4, "items": 6}
    assert not [x for rec in out.records.values() for x in rec.get("rejects", [])]


def test_name_vlm_backend_calls_caption_hook(act_data, tmp_path, monkeypatch):
    """The vlm backend hands the top images to digin.caption.ask_objects and parses its '[...]' answers."""
    import sys
    import types

    d = act_data
    out = tmp_path / "act"
    assert neurons.run(_cfg(*_act_args(d, out, "neurons=[1]"))) == 0
    calls = []

    def ask_objects(images, backend, **options):
        calls.append((len(images), backend, images[0].shape, options))
        return [f"[Tree, sky{i % 2}]" for i in range(len(images))]

    monkeypatch.setitem(sys.modules, "digin.caption", types.SimpleNamespace(ask_objects=ask_objects))
    assert neurons.run(_cfg(*_act_args(d, out, "mode=name", "name_backend=vlm", "vlm_backend=fake",
                                       "vlm_options.model_path=/m", "num_images_to_label=3"))) == 0
    assert calls == [(3, "fake", (40, 40, 3), {"model_path": "/m"})]
    words = json.loads((out / "neuron_words.json").read_text())["neurons"]["1"]["words"]
    assert words == {"tree": 3, "sky0": 2, "sky1": 1}


def test_activations_refuse_an_incomplete_image_set_unless_allowed(act_data, tmp_path):
    """Issue 16 #7 for the one reader outside run_stage."""
    import shutil

    from digin.shards.runner import IncompleteInput

    images = tmp_path / "images"
    shutil.copytree(act_data["images"], images)
    rec = json.loads((images / "commits" / "000002.json").read_text())
    (images / "commits" / "000002.json").unlink()
    (images / rec["file"]).unlink()
    manifest = json.loads((images / "manifest.json").read_text())  # as if the conversion was killed
    manifest["shards"] = [r for r in manifest.get("shards", []) if r["index"] != 2]
    (images / "manifest.json").write_text(json.dumps(manifest))
    d = {**act_data, "images": images}
    with pytest.raises(IncompleteInput, match=r"shard\(s\) 2 are not committed"):
        neurons.run(_cfg(*_act_args(d, tmp_path / "a")))
    assert not (tmp_path / "a").exists()
    assert neurons.run(_cfg(*_act_args(d, tmp_path / "a", "allow_incomplete=true"))) == 0
    assert load_topk(tmp_path / "a" / "topk.safetensors")[1]["count"] == 9
