"""`digin invert` and `digin uvce` on indexed webdataset sets written by `webdataset.ShardWriter` (ImageNet-1k
and img2dataset layouts), with the toy world's models, then `digin verify`."""
import json

import pytest

from digin import toy
from digin.cli import main
from digin.shards.manifest import ShardSet
from digin.shards.reader import iter_samples
from digin.stages.pairs import key_index
from digin.toy.world import SHAPES
from tests.shards.foreign import LAYOUTS, write_foreign_set

pytestmark = pytest.mark.skipif(not toy.available(), reason="toy-world models not built (digin toy-train)")

CLASSES = "[" + ",".join(SHAPES) + "]"
INDEX_ARGS = {"imagenet": ["key_scheme=imagenet_val", f"classes={CLASSES}"],
              "img2dataset": ["label_member=json:label", f"classes={CLASSES}", "name=web"]}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_invert_and_uvce_read_an_indexed_webdataset_set(layout, tmp_path):
    fs = write_foreign_set(tmp_path / "tars", layout, n=3, per_tar=2, seed=5)
    images, inv, out = tmp_path / "images", tmp_path / "inv", tmp_path / "uvce"
    assert main(["shard", "source=webdataset", f"urls={fs['pattern']}", f"out={images}", "workers=1",
                 *INDEX_ARGS[layout]]) == 0
    ss = ShardSet.load(images)
    assert "webdataset" in ss.meta and ss.num_samples() == 3 and len(ss.records) == 2
    preset = toy.PRESET
    common = [f"model_path={toy.paths()['sd']}", f"resolution={preset['resolution']}", "center_crop=false",
              "num_ddim_steps=3", "device=cpu"]
    assert main(["invert", f"inputs={images}", f"out={inv}", *common, "method=negative_prompt",
                 "batch_size=2"]) == 0

    labels = {s["__key__"]: s["meta"]["label"] for s in iter_samples(ss)}
    prompts = {s["__key__"]: s["prompt"] for s in iter_samples(inv)}
    by_source = {s["key"]: s for s in fs["samples"]}
    for s in iter_samples(ss):
        want = by_source[s["meta"]["source"]]
        # img2dataset: the txt member is the caption the inversion uses; ImageNet layout: the dataset's template
        expect = want["caption"] if layout == "img2dataset" else \
            f"an image of a {SHAPES[want['label']]} on background"
        assert prompts[s["__key__"]] == expect and labels[s["__key__"]] == want["label"]

    # one target per image, given by the reference's image index (ImageNet val: class·50 + k)
    pairs = [[key_index(k), (lbl + 1) % len(SHAPES)] for k, lbl in labels.items()]
    seg = [f"{k}={v}" if not isinstance(v, list) else f"{k}=[{','.join(v)}]" for k, v in preset.items()
           if k.startswith("segmentation.")]
    assert main(["uvce", f"images={images}", f"inversions={inv}", f"out={out}", *common, *seg,
                 f"classifier={toy.classifier_spec('clean')}", "optim_params.sgd_steps=1", "batch_size=3",
                 "augmentation_num_cutouts=2", "pairs=explicit", f"explicit_pairs={json.dumps(pairs)}",
                 "progress=false", "regularizers=[latent_background_l2]", "regularizers_ws=[1.0]"]) == 0
    res = ShardSet.load(out)  # one result per (image, target) pair, keyed <image key>/t<target>, in key order
    want = sorted(f"{k}/t{(lbl + 1) % len(SHAPES)}" for k, lbl in labels.items())
    assert [k for r in res.records.values() for k in r["keys"]] == want
    results = {s["__key__"]: s for s in iter_samples(res)}
    for key, target in ((k, (lbl + 1) % len(SHAPES)) for k, lbl in labels.items()):
        m = results[f"{key}/t{target}"]["metrics"]
        assert m["start"] == labels[key] and m["target_label"] == SHAPES[target]
    assert main(["verify", f"path={tmp_path}", "deep=true"]) == 0
