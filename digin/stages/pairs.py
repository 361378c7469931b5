"""Which (image, start class, target class) triples a UVCE / counterfactual run visits, as the reference's
uvces_imagenet.py and uvces_cub_cars_food.py select them.

A pair is `Pair(index, start, target)`: `index` is the dataset index of the image (ImageNet val index =
class·50 + k in torchvision order; CUB/Cars/Food/Flowers test index), which is the last part of the sample key
`<dataset>/<split>/<index>` (see `digin/shards/naming.py`). Keys are matched on the integer value of that last
part, so zero padding in keys does not matter.

ImageNet rule (reference `VCE_start_class_target` + `in_hierarchy`): a row with target null expands to every
other class of the start class's cluster. Decisions, checked against the shipped tables:
- a class in several clusters (166-175 are in both `dogs2` and `dogs3`, which hold the same classes) gets the
  union of those clusters, each target once — this reproduces the reference's 2,863 pairs;
- a start class in no cluster (23 classes, 56 rows, e.g. 7 'cock') yields no pairs, as in the reference;
- the tables list one row twice (val 13556, class 271); with `dedupe=True` (default) each (image, target)
  pair is returned once, so result keys stay unique. `dedupe=False` reproduces the reference's 2,863 exactly.
"""
from __future__ import annotations

import json
import random
from functools import lru_cache
from importlib import resources
from typing import Iterable, NamedTuple


class Pair(NamedTuple):
    index: int  # dataset index of the image
    start: int  # class of the image (what the original shows)
    target: int  # class to move towards (== start in failure mode: optimise toward the true class)


@lru_cache(maxsize=None)
def load_table(name: str):
    """A JSON table shipped in `digin/data/` (e.g. 'imagenet_hierarchy')."""
    return json.loads(resources.files("digin.data").joinpath(f"{name}.json").read_text())


def class_names(dataset: str) -> list[str]:
    """Index -> label used in prompts and folder names (ImageNet: first WordNet synonym)."""
    table = load_table(f"{dataset}_classes")
    names = [table[str(i)] for i in range(len(table))]
    return [n.split(",")[0].strip() for n in names] if dataset == "imagenet" else names


def sample_key(dataset: str, split: str, index: int, width: int = 5) -> str:
    """`imagenet/val/00042`: the shard key of a dataset image (zero-padded like the converters' example)."""
    return f"{dataset}/{split}/{index:0{width}d}"


def result_key(image_key: str, target: int) -> str:
    """Key of one (image, target) result: the image key plus a `t<target>` part (unique per pair)."""
    return f"{image_key}/t{target}"


def key_index(key) -> int:
    """`imagenet/val/00042` -> 42; ints pass through."""
    return key if isinstance(key, int) else int(str(key).rsplit("/", 1)[-1])


def _available_filter(available_keys):
    if available_keys is None:
        return lambda index: True
    wanted = {key_index(k) for k in available_keys}
    return lambda index: index in wanted


def _dedupe(pairs: Iterable[Pair]) -> list[Pair]:
    return list(dict.fromkeys(pairs))


def cluster_targets(start: int, hierarchy: dict | None = None) -> list[int]:
    """Every other class of every cluster holding `start`, first-seen order, each once; [] when in none."""
    hierarchy = load_table("imagenet_hierarchy") if hierarchy is None else hierarchy
    seen: dict[int, None] = {}
    for members in hierarchy.values():
        if start in members:
            seen.update((c, None) for c in members if c != start)
    return list(seen)


def imagenet_uvce_pairs(available_keys=None, dedupe: bool = True) -> list[Pair]:
    """The reference's ImageNet UVCE pairs; `available_keys` (keys or indices with an inversion) filters images."""
    keep = _available_filter(available_keys)
    hierarchy = load_table("imagenet_hierarchy")
    pairs = []
    for index, start, target in load_table("imagenet_uvce_images"):
        if not keep(index):
            continue
        targets = cluster_targets(start, hierarchy) if target is None else [target]
        pairs.extend(Pair(index, start, t) for t in targets)
    return _dedupe(pairs) if dedupe else pairs


def fine_grained_pairs(dataset: str, available_keys=None, dedupe: bool = True) -> list[Pair]:
    """The hard-coded CUB / Cars pairs; Food-101 and Flowers have none (use `random_pairs`)."""
    table = load_table("fine_grained_uvce_pairs")
    keep = _available_filter(available_keys)
    pairs = [Pair(*row) for row in table.get(dataset, []) if keep(row[0])]
    return _dedupe(pairs) if dedupe else pairs


def random_pairs(image_indices_with_labels, num_classes: int, n: int, seed: int = 42) -> list[Pair]:
    """`n` distinct images drawn without replacement (seeded), each with a random target ≠ its label.

    image_indices_with_labels: iterable of (index or key, label). Same inputs and seed -> same pairs,
    whatever the input order (candidates are sorted first).
    """
    if num_classes < 2:
        raise ValueError("random targets need at least 2 classes")
    candidates = sorted({(key_index(i), int(y)) for i, y in image_indices_with_labels})
    rng = random.Random(seed)
    chosen = rng.sample(candidates, min(n, len(candidates)))
    pairs = []
    for index, label in chosen:
        t = rng.randrange(num_classes - 1)
        pairs.append(Pair(index, label, t + (t >= label)))  # uniform over the other classes
    return pairs


def failure_mode_pairs(predictions, labels, indices=None) -> list[Pair]:
    """Misclassified images -> Pair(index, true, true): optimise toward the correct class (P2P identity)."""
    indices = range(len(labels)) if indices is None else [key_index(i) for i in indices]
    return [Pair(int(i), int(y), int(y)) for i, p, y in zip(indices, predictions, labels) if int(p) != int(y)]


def explicit_pairs(rows) -> list[Pair]:
    """[(index or key, start, target), ...] -> pairs (validated ints)."""
    return [Pair(key_index(i), int(s), int(t)) for i, s, t in rows]


def subsample(pairs: list[Pair], n: int | None, seed: int = 42) -> list[Pair]:
    """`num_images` in the reference: a seeded random subset (order kept), or everything when n is None."""
    if n is None or n >= len(pairs):
        return list(pairs)
    picked = sorted(random.Random(seed).sample(range(len(pairs)), n))
    return [pairs[i] for i in picked]


# ---------------------------------------------------------------------------------------------- neuron counterfactuals
def default_pairs() -> list[tuple[int, int]]:
    """The reference's 14 Madry-L2 (class, neuron) pairs of imagenet_neuron_counterfactuals.py."""
    return [(int(c), int(n)) for c, n in load_table("neurons")["madry_l2_class_neuron_pairs"]]


def neurons_per_key(pairs, keys_labels: dict, num_images: int | None, seed: int) -> dict[str, list[int]]:
    """key → neurons to edit it for: all images of the pair's class, or `num_images` of them (seeded, per pair)."""
    by_class: dict[int, list[str]] = {}
    for k, y in sorted(keys_labels.items()):
        by_class.setdefault(int(y), []).append(k)
    out: dict[str, list[int]] = {}
    for c, n in pairs:
        keys = by_class.get(int(c), [])
        if num_images is not None and len(keys) > num_images:
            keys = sorted(random.Random(f"{seed}|{c}|{n}").sample(keys, num_images))
        for k in keys:
            if int(n) not in out.setdefault(k, []):
                out[k].append(int(n))
    return out
