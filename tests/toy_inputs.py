"""Toy-world scenes as a digin image shard set plus the caption set `digin invert captions=` joins by key."""
import json


def toy_scene_inputs(tmp_path, n_per_class: int = 1, seed: int = 7, split: str = "dev"):
    """(images folder, captions folder) of one scene per class (toy.world) under tmp_path."""
    from digin import toy
    from digin.shards.convert import convert
    from digin.toy.demo import write_caption_shards

    raw = toy.world.make_dataset_folder(tmp_path / "raw", n_per_class=n_per_class, seed=seed, split=split)
    convert("imagefolder", tmp_path / "raw", split, tmp_path / "images", name="toy", samples_per_shard=3,
            progress=False)
    caps = json.loads((raw / "captions.json").read_text())
    write_caption_shards(tmp_path / "images", tmp_path / "captions", [caps[k] for k in sorted(caps)])
    return tmp_path / "images", tmp_path / "captions"
