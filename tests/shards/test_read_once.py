"""keyed.iter_shard_once: a shard read whole once, its headers walked once, with reader.iter_shard's checks and
samples; anything the quick header walk does not take goes to the general reader."""
import io
import tarfile

import numpy as np
import pytest


def _shard_set(folder, n=5):
    from digin.shards.manifest import FORMAT, MANIFEST, ShardSet, write_json
    from digin.shards.writer import ShardWriter

    folder.mkdir(parents=True)
    write_json(folder / MANIFEST, {"format": FORMAT, "kind": "results", "name": "r"})
    w = ShardWriter(folder, 0, "r-000000.tar")
    for i in range(n):
        bad = {"blob": ("png", b"not a png")} if i == n - 1 else {}
        w.add(f"ds/val/{i:05d}", {"image": np.full((6 + i, 5, 3), 10 * i, np.uint8), "meta": {"i": i},
                                   "note": f"sample {i}", **bad})
    w.commit()
    return ShardSet.load(folder)


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if k == "__detail__":  # names the decoder's file object
            continue
        assert np.array_equal(a[k], b[k]) if isinstance(a[k], np.ndarray) else a[k] == b[k], k


def test_samples_equal_the_general_readers(tmp_path):
    from digin.shards.keyed import ReadBuffer, iter_shard_once, plain_groups
    from digin.shards.reader import group_shard_members, iter_shard

    ss = _shard_set(tmp_path / "s")
    data = ss.path(0).read_bytes()
    quick = plain_groups(memoryview(data))
    assert quick is not None  # taken by the quick walk
    general = group_shard_members(data, "x")
    assert [[k, {f: (e, bytes(p)) for f, (e, p) in fs.items()}] for k, fs in quick] == general
    buf = ReadBuffer()
    once, plain = list(iter_shard_once(ss, 0, buffer=buf)), list(iter_shard(ss, 0))
    # the bad PNG: a reject, as with the plain reader
    assert len(once) == 5 and "image" in once[0] and once[-1]["__reject__"].startswith("blob:")
    for a, b in zip(once, plain):
        _same(a, b)


def _tar(members, fmt=tarfile.USTAR_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


@pytest.mark.parametrize("case", ["duplicate_field", "bad_name", "duplicate_key", "long_name", "bad_checksum",
                                  "cut", "trailing_data", "link"])
def test_quick_walk_leaves_anything_unusual_to_the_general_reader(case):
    from digin.shards.keyed import plain_groups
    from digin.shards.reader import group_shard_members
    from digin.shards.manifest import ShardError

    good = [("a~b~1.x.txt", b"1"), ("a~b~1.y.json", b"{}"), ("a~b~2.x.txt", b"2")]
    assert plain_groups(memoryview(_tar(good))) is not None
    members = {"duplicate_field": good + [("a~b~2.x.txt", b"3")], "bad_name": good + [("../evil.x.txt", b"")],
               "duplicate_key": good + [("a~b~1.z.txt", b"")],
               "long_name": good + [("a~" + "b" * 60 + "~" + "c" * 60 + ".x.txt", b"")]}.get(case, good)
    data = _tar(members, tarfile.PAX_FORMAT if case == "long_name" else tarfile.USTAR_FORMAT)
    if case == "bad_checksum":  # a header byte changed (the name), checksum left as it was
        data = data[:512 * 2] + b"q" + data[512 * 2 + 1:]
    elif case == "cut":
        data = data[:512 * 3]  # inside the archive: no end-of-archive marker
    elif case == "trailing_data":
        data = data + b"\1" * 512
    elif case == "link":
        buf = io.BytesIO(data)
        with tarfile.open(fileobj=buf, mode="a") as tf:
            link = tarfile.TarInfo("a~b~3.x.txt")
            link.type, link.linkname = tarfile.SYMTYPE, "a~b~1.x.txt"
            tf.addfile(link)
        data = buf.getvalue()
    assert plain_groups(memoryview(data)) is None
    if case in ("bad_checksum", "cut", "trailing_data"):
        with pytest.raises(ShardError):
            group_shard_members(data, "x")


def test_altered_or_cut_shard_is_refused(tmp_path):
    from digin.shards.keyed import iter_shard_once
    from digin.shards.manifest import ShardError

    ss = _shard_set(tmp_path / "s")
    p = ss.path(0)
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 1
    p.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="sha256 differs"):
        list(iter_shard_once(ss, 0))
    data[len(data) // 2] ^= 1
    data[512 + 3] ^= 1  # a byte of the first member's data: no structural check notices without the hash
    p.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="sha256 differs"):
        next(iter_shard_once(ss, 0))
    data[512 + 3] ^= 1
    data[5] ^= 1  # the first member's name: with the hash check off, its header checksum still refuses it
    p.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="unreadable|corrupt|cut short"):
        list(iter_shard_once(ss, 0, check_hash=False))
    p.write_bytes(bytes(data[:-2048]))
    with pytest.raises(ShardError, match="truncated"):
        list(iter_shard_once(ss, 0, check_hash=False))
