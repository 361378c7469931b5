"""Shards are data: pickle-like members are refused unread, hostile member names never touch the filesystem."""
import io
import os
import pickle
import tarfile

from digin.shards.manifest import FORMAT, sha256_bytes, write_commit, write_json
from digin.shards.reader import iter_samples
from .stage_script import run_keys



class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))  # unpickling creates the sentinel file


def _make_shard_set(folder, members, keys):
    """A committed shard set with one hand-made tar (members: list of (name, bytes))."""
    folder.mkdir(parents=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    raw = buf.getvalue()
    (folder / "evil-000000.tar").write_bytes(raw)
    write_json(folder / "manifest.json", {"format": FORMAT, "kind": "dataset", "name": "evil", "num_shards": 1})
    write_commit(folder, {"index": 0, "file": "evil-000000.tar", "count": len(keys), "bytes": len(raw),
                          "sha256": sha256_bytes(raw), "keys": keys})


def _png():
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_pickle_members_refused_sentinel_absent(tmp_path):
    sentinel = tmp_path / "PWNED"
    payload = pickle.dumps(_Evil(str(sentinel)))
    assert not sentinel.exists()
    members = [("ok~0.image.png", _png()),
               ("bad~1.obj.pyd", payload), ("bad~2.obj.pickle", payload), ("bad~3.obj.pth", payload),
               ("bad~4.obj.pkl", payload)]
    _make_shard_set(tmp_path / "in", members, ["ok/0", "bad/1", "bad/2", "bad/3", "bad/4"])
    got = list(iter_samples(tmp_path / "in", include_rejects=True))
    assert [s["__key__"] for s in got] == ["ok/0", "bad/1", "bad/2", "bad/3", "bad/4"]
    assert got[0]["image"].shape == (4, 4, 3)
    assert all(s["__reject__"] == "obj:forbidden_member" for s in got[1:])
    assert not sentinel.exists()
    # the same through a stage: rejected, recorded, never unpickled
    summary = run_keys(tmp_path / "in", tmp_path / "out", lambda b: [{"n": "x"}] * b.n_real, 2, {},
                        progress=False)
    assert (summary.processed, summary.rejected) == (1, 4)
    assert not sentinel.exists()


def test_traversal_and_odd_member_names_refused(tmp_path):
    before = set(os.listdir(tmp_path))
    bad_names = ["../../x.image.png", "/abs/x.image.png", "a/../../b.image.png", "nl\nx.image.png",
                 "x" * 300 + ".image.png", "sp ace.image.png"]
    members = [("ok~0.image.png", _png())] + [(n, _png()) for n in bad_names]
    n_bad = len(bad_names)
    _make_shard_set(tmp_path / "in", members, ["ok/0"] + [f"!bad:{n!r}" for n in bad_names])
    got = list(iter_samples(tmp_path / "in", include_rejects=True))
    assert [s.get("__reject__") for s in got] == [None] + ["bad_member_name"] * n_bad
    summary = run_keys(tmp_path / "in", tmp_path / "out" / "stage",
                        lambda b: [{"inv": 255 - s["image"]} for s in b.samples[:b.n_real]], 2, {}, progress=False)
    assert (summary.processed, summary.rejected) == (1, n_bad)
    assert set(os.listdir(tmp_path)) == before | {"in", "out"}
    assert sorted(os.listdir(tmp_path / "out")) == ["stage"]
    assert not (tmp_path.parent / "x.image.png").exists() and not os.path.exists("/abs")


def test_symlink_member_refused(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        ti = tarfile.TarInfo("link~0.image.png")
        ti.type, ti.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(ti)
    raw = buf.getvalue()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "s-000000.tar").write_bytes(raw)
    write_json(tmp_path / "in" / "manifest.json", {"format": FORMAT, "name": "s"})
    write_commit(tmp_path / "in", {"index": 0, "file": "s-000000.tar", "count": 1, "bytes": len(raw),
                                   "sha256": sha256_bytes(raw), "keys": ["link/0"]})
    # webdataset's tar iteration skips non-regular members unread, so the record's count no longer holds: the
    # shard is refused as a whole, naming the tar
    import pytest
    from digin.shards.manifest import ShardError

    with pytest.raises(ShardError, match=r"s-000000\.tar: 0 samples, manifest says 1"):
        list(iter_samples(tmp_path / "in", include_rejects=True))


def test_key_encoding_is_reversible_and_strict():
    import pytest
    from digin.shards.naming import BadName, member_name, parse_member_name

    assert member_name("imagenet/val/00042", "image", "jpg") == "imagenet~val~00042.image.jpg"
    assert parse_member_name("imagenet~val~00042.image.jpg") == ("imagenet/val/00042", "image", "jpg")
    for bad in ["../x", "/abs", "a/../b", "a b", "a.b", "a~b", "", "a//b"]:
        with pytest.raises(BadName):
            member_name(bad, "image", "png")
