import json
from collections import Counter
from pathlib import Path

import pytest

from digin.stages import pairs as P

DATA = Path(P.__file__).resolve().parents[1] / "data"


def independent_imagenet_count(unique: bool) -> int:
    """Count written differently: class -> set of cluster-mates via set algebra over raw JSON files."""
    hierarchy = json.loads((DATA / "imagenet_hierarchy.json").read_text())
    rows = json.loads((DATA / "imagenet_uvce_images.json").read_text())
    mates: dict[int, set] = {}
    for members in hierarchy.values():
        for c in members:
            mates.setdefault(c, set()).update(set(members) - {c})
    rows = set(map(tuple, rows)) if unique else rows
    return sum(len(mates.get(start, ())) if tgt is None else 1 for _, start, tgt in rows)


def test_imagenet_pair_count_matches_reference_and_independent_count():
    raw = P.imagenet_uvce_pairs(dedupe=False)
    assert len(raw) == independent_imagenet_count(unique=False) == 2863  # the reference's ≈2,863
    uniq = P.imagenet_uvce_pairs()
    assert len(uniq) == independent_imagenet_count(unique=True) == 2860  # one row is listed twice
    assert len(set(uniq)) == len(uniq)
    assert all(p.start != p.target and p.index // 50 == p.start for p in uniq)


def test_imagenet_pairs_cluster_semantics():
    # 166 is in two identical clusters (dogs2, dogs3): union, each target once
    assert sorted(P.cluster_targets(166)) == [167, 168, 169, 170, 171, 172, 173, 174, 175]
    assert P.cluster_targets(7) == []  # 'cock' is in no cluster -> no pairs
    pairs = P.imagenet_uvce_pairs()
    assert not any(p.start == 7 for p in pairs)
    starts = Counter(p.start for p in pairs)
    assert starts[166] % 9 == 0 and starts[166] > 0


def test_available_keys_filter_accepts_padded_keys_and_ints():
    all_pairs = P.imagenet_uvce_pairs()
    idx = all_pairs[0].index
    keys = [P.sample_key("imagenet", "val", idx)]
    assert keys[0] == f"imagenet/val/{idx:05d}"
    by_key = P.imagenet_uvce_pairs(available_keys=keys)
    assert by_key == P.imagenet_uvce_pairs(available_keys=[idx])
    assert by_key and all(p.index == idx for p in by_key)
    assert by_key == [p for p in all_pairs if p.index == idx]
    assert P.imagenet_uvce_pairs(available_keys=[]) == []


def test_fine_grained_tables():
    cub = P.fine_grained_pairs("cub")
    assert {p.target for p in cub if p.start == 46} == {66, 67, 72, 117}
    assert {p.target for p in cub if p.start == 15} == {150, 151, 152, 153, 158, 160, 163, 169}
    assert len(P.fine_grained_pairs("cub", dedupe=False)) == 60 and len(cub) == 5 * 4 + 4 * 8
    cars = P.fine_grained_pairs("cars")
    assert {p.index for p in cars} == {929, 1741} and len(cars) == 14
    assert {p.target for p in cars} == {143, 172, 111, 33, 34, 44, 14}
    assert P.fine_grained_pairs("food101") == []
    assert P.class_names("cub")[46].startswith("American Goldfinch")
    assert P.class_names("imagenet")[0] == "tench"


def test_random_pairs_seeded_and_target_differs():
    data = [(f"food101/test/{i:05d}", i % 5) for i in range(40)]
    a = P.random_pairs(data, num_classes=5, n=25, seed=1)
    assert a == P.random_pairs(list(reversed(data)), num_classes=5, n=25, seed=1)
    assert a != P.random_pairs(data, num_classes=5, n=25, seed=2)
    assert len({p.index for p in a}) == 25
    assert all(p.target != p.start and 0 <= p.target < 5 and p.start == p.index % 5 for p in a)
    assert len(P.random_pairs(data, num_classes=5, n=100)) == 40
    # every other class is reachable (not a constant offset)
    many = P.random_pairs([(i, 0) for i in range(300)], num_classes=4, n=300, seed=0)
    assert {p.target for p in many} == {1, 2, 3}
    with pytest.raises(ValueError):
        P.random_pairs(data, num_classes=1, n=1)


def test_failure_mode_and_explicit_pairs():
    preds, labels = [1, 2, 3, 0], [1, 0, 3, 2]
    assert P.failure_mode_pairs(preds, labels) == [(1, 0, 0), (3, 2, 2)]
    assert P.failure_mode_pairs(preds, labels, indices=[10, 11, 12, 13]) == [(11, 0, 0), (13, 2, 2)]
    assert P.explicit_pairs([("cub/test/00007", 3, 4), (9, 1, 2)]) == [(7, 3, 4), (9, 1, 2)]
    assert P.result_key("imagenet/val/00042", 7) == "imagenet/val/00042/t7"


def test_subsample_seeded_keeps_order():
    pairs = P.imagenet_uvce_pairs()
    s = P.subsample(pairs, 50, seed=42)
    assert s == P.subsample(pairs, 50, seed=42) and len(s) == 50
    assert s == sorted(s, key=pairs.index)
    assert P.subsample(pairs, None) == pairs
