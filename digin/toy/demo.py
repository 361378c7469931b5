"""Inputs for `digin demo` on the toy world: an image shard set + a caption shard set with the same keys and
shard layout (what `digin invert captions=...` joins by key), from held-out toy scenes.

  from digin.toy.demo import make_demo_inputs
  sets = make_demo_inputs("/tmp/toy_demo", n_per_class=1)   # {"images": dir, "captions": dir, "root": dir}
  # then: digin invert inputs=sets["images"] captions=sets["captions"] model_path=toy.paths()["sd"] resolution=64 ...
"""
from __future__ import annotations

from pathlib import Path

from digin.shards.convert import convert
from digin.shards.lineage import image_set_of
from digin.shards.manifest import FORMAT, MANIFEST, ShardSet, config_hash, write_json
from digin.shards.reader import iter_shard
from digin.shards.writer import ShardWriter, remove_orphan_partial
from digin.toy import world


def write_caption_shards(images_dir, out_dir, captions_by_index: list[str], name: str = "toy-captions"):
    """A committed shard set whose shard i holds, for every key of image shard i, the field `caption`."""
    images = ShardSet.load(Path(images_dir))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keys_per_shard = {i: [s["__key__"] for s in iter_shard(images, i, None, (), True)] for i in images.indices()}
    all_keys = [k for i in sorted(keys_per_shard) for k in keys_per_shard[i]]
    if len(all_keys) != len(captions_by_index):
        raise ValueError(f"{len(all_keys)} images but {len(captions_by_index)} captions")
    by_key = dict(zip(all_keys, captions_by_index))
    chash = config_hash({"name": name, "captions": [[k, by_key[k]] for k in all_keys]})

    write_json(out / MANIFEST, {"format": FORMAT, "kind": "captions", "name": name, "config": {"name": name},
                                "config_hash": chash, "num_shards": images.meta.get("num_shards"),
                                "num_samples": len(all_keys), "classes": images.classes,
                                "image_set": image_set_of(images.meta)})  # its lineage: joins check it
    done = ShardSet.load(out)
    for i, keys in sorted(keys_per_shard.items()):
        if i in done.records:
            continue
        remove_orphan_partial(out, f"{name}-{i:06d}.tar")  # a killed earlier write's; this is the only writer
        w = ShardWriter(out, i, f"{name}-{i:06d}.tar", {"config_hash": chash})
        try:
            for k in keys:
                w.add(k, {"caption": by_key[k]})
            w.commit()
        except BaseException:
            w.discard()
            raise
    return ShardSet.load(out)


def make_demo_inputs(out_dir, n_per_class: int = 1, seed: int = 0, split: str = "heldout",
                     samples_per_shard: int = 1000) -> dict:
    """ImageFolder of toy scenes → image shard set (`digin shard` converter) + caption shard set. Deterministic;
    re-running into the same folder is a no-op. Class index = shape index of the toy classifiers."""
    import json

    out = Path(out_dir)
    root = world.make_dataset_folder(out / "imagefolder", n_per_class=n_per_class, seed=seed, split=split)
    images = convert("imagefolder", out / "imagefolder", split, out / "images", name="toy",
                     samples_per_shard=samples_per_shard, progress=False)
    if images.classes != list(world.SHAPES):
        raise RuntimeError(f"ImageFolder classes {images.classes} do not match the toy shapes {world.SHAPES}")
    captions = json.loads((root / "captions.json").read_text())
    ordered = [captions[k] for k in sorted(captions)]  # ImageFolder order: class folders, then file names, sorted
    write_caption_shards(out / "images", out / "captions", ordered)
    return {"root": root, "images": out / "images", "captions": out / "captions"}
