"""Issue 16: world sizes and exclusive partial files (#3), output inside an input (#6), incomplete inputs (#7),
temporary manifests left by a kill (#8), one decompression-bomb limit (#9)."""
import json
import os
import socket
import struct
import subprocess
import sys
import time
import zlib

import pytest

from digin.errors import ConfigError
from digin.shards.decode import MAX_IMAGE_PIXELS, DecodeError, decode_image, image_size
from digin.shards.manifest import MANIFEST, ShardSet, write_json
from digin.shards.runner import IncompleteInput, RunLocked
from digin.stages.verify import verify_tree
from digin.shards.writer import PartialExists, ShardWriter

from .stage_script import run_keys
from .test_lock_budget import clean_env, live_pid  # noqa: F401 (fixtures: environment cleared, a live pid)
from .test_lock_budget import events, key, lock_path, make_input, plant_lock, snapshot, trivial


def run(inp, out, process=None, **kw):
    return run_keys(inp, out, process or trivial(), 4, kw.pop("config", {}), rank=kw.pop("rank", 0),
                     world=kw.pop("world", 1), progress=False, **kw)


# ---------------------------------------------------------------------------------------------- #3 world sizes
def test_a_run_with_another_world_size_is_refused_while_a_rank_lock_is_live(tmp_path):
    """The issue's case: world 1 (rank 0 owns every shard) is running; a world-2 rank 1 starting on the same
    output would write shard 1 too. It is refused before writing anything; after the first run ends it may resume
    the output with its own world size."""
    inp = make_input(tmp_path / "in", 3, 2)
    out = tmp_path / "out"
    refused = []

    def process(batch):
        if not refused:  # while rank 0 of world 1 runs, a world-2 rank 1 tries to start
            before = snapshot(out)
            with pytest.raises(RunLocked) as e:
                run(inp, out, rank=1, world=2)
            refused.append(str(e.value))
            assert snapshot(out) == before and not lock_path(out, 1).exists()
        return trivial()(batch)

    assert run(inp, out, process).committed_shards == 3
    assert "world size 1" in refused[0] and "world size 2" in refused[0] and str(lock_path(out, 0)) in refused[0]
    assert json.loads((out / MANIFEST).read_text())["world_size"] == 1
    s = run(inp, out, rank=1, world=2)  # nothing live any more: allowed (shard 1 is already committed)
    assert s.skipped_shards == 1 and s.committed_shards == 0
    assert json.loads((out / MANIFEST).read_text())["world_size"] == 2


def test_world_size_check_ignores_dead_holders_and_same_world_ranks(tmp_path, live_pid):
    inp = make_input(tmp_path / "in", 2, 2)
    out = tmp_path / "out"
    gone = subprocess.Popen(["true"])
    gone.wait()
    plant_lock(out, gone.pid, rank=3, world=4)  # a killed run with world 4: provably gone
    plant_lock(out, live_pid, rank=0, world=2)  # a live rank 0 of world 2: same world as us
    assert run(inp, out, rank=1, world=2).committed_shards == 1
    plant_lock(out, live_pid, rank=2, world=4)  # a live rank of world 4
    with pytest.raises(RunLocked, match="world size 4"):
        run(inp, out, rank=1, world=2)


def test_a_shard_partial_file_is_created_exclusively(tmp_path):
    first = ShardWriter(tmp_path, 0, "s-000000.tar")
    first.add("a/b/0", {"t": "x"})
    with pytest.raises(PartialExists, match="another process is writing"):
        ShardWriter(tmp_path, 0, "s-000000.tar")
    rec = first.commit()  # the first writer's file was never shared or truncated
    assert rec["count"] == 1
    assert (tmp_path / "s-000000.tar").stat().st_size == rec["bytes"]


# ---------------------------------------------------------------------------------------------- #6 out vs inputs
@pytest.mark.parametrize("where", ["same", "inside", "contains"])
def test_an_output_that_is_in_or_around_an_input_is_refused_even_with_force(tmp_path, where):
    inp = make_input(tmp_path / "data" / "in", 1, 2)
    out = {"same": inp, "inside": inp / "results", "contains": tmp_path / "data"}[where]
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError, match="force=true does not change this"):
        run(inp, out, force=True, config={"other": 1})
    assert snapshot(tmp_path) == before  # the input's manifest, config and shard list are intact


# ---------------------------------------------------------------------------------------------- #7 incomplete
def _drop_shards(folder, *indices):
    for i in indices:
        rec = json.loads((folder / "commits" / f"{i:06d}.json").read_text())
        (folder / "commits" / f"{i:06d}.json").unlink()
        (folder / rec["file"]).unlink()


def test_an_incomplete_input_is_refused_unless_allowed(tmp_path):
    inp = make_input(tmp_path / "in", 3, 2)
    _drop_shards(inp, 1, 2)
    with pytest.raises(IncompleteInput, match=r"lists 3 shards but shard\(s\) 1, 2 are not committed"):
        run(inp, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    s = run(inp, tmp_path / "out", allow_incomplete=True)
    assert s.committed_shards == 1 and s.exit_code == 0
    (ev,) = events(tmp_path / "out", "incomplete_inputs")
    assert ev["missing"] == {str(inp): [1, 2]}
    assert json.loads((tmp_path / "out" / MANIFEST).read_text())["incomplete_inputs"] == {str(inp): [1, 2]}


def test_allow_incomplete_joins_only_shards_every_input_has(tmp_path):
    a = make_input(tmp_path / "a", 3, 2)
    b = tmp_path / "b"
    run(a, b, lambda batch: [{"extra": "y"} for _ in range(batch.n_real)])
    _drop_shards(b, 0)
    with pytest.raises(IncompleteInput, match=f"input {b} lists 3 shards but shard\\(s\\) 0 are"):
        run([a, b], tmp_path / "out")
    s = run([a, b], tmp_path / "out", allow_incomplete=True)
    assert s.committed_shards == 2 and not s.failed_shards
    out = ShardSet.load(tmp_path / "out")  # the plan holds the keys both inputs have: those of shards 1 and 2
    assert [k for r in out.records.values() for k in r["keys"]] == [key(j) for j in range(2, 6)]
    assert json.loads((tmp_path / "out" / MANIFEST).read_text())["plan"]["counts"]["waiting_for_inputs"] == 2


# ---------------------------------------------------------------------------------------------- #8 tmp manifest
_KILLED_WRITER = """
import os, sys
from digin.shards import manifest
os.replace = lambda *a: os._exit(9)  # killed between writing the temporary copy and renaming it
manifest.write_json(sys.argv[1], {"half": "written"})
"""


def test_a_manifest_copy_left_by_a_kill_is_removed_on_resume(tmp_path):
    inp = make_input(tmp_path / "in", 2, 2)
    out = tmp_path / "out"
    run(inp, out)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(out / MANIFEST)], env=env)
    assert r.returncode == 9
    (left,) = out.glob("manifest.json.tmp.*")
    assert [p["kind"] for p in verify_tree(out).problems] == ["leftover"]
    old = out / "manifest.json.tmp.4242"  # an older digin's name (no host): removed once it is an hour old
    old.write_text("{")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    s = run(inp, out)  # the resume: nothing to redo, leftovers gone
    assert s.skipped_shards == 2 and not left.exists() and not old.exists()
    assert verify_tree(out).ok


def test_a_manifest_copy_of_a_live_writer_is_kept(tmp_path, live_pid):
    inp = make_input(tmp_path / "in", 1, 2)
    out = tmp_path / "out"
    run(inp, out)
    live = out / f"manifest.json.tmp.{socket.gethostname()}.{live_pid}"  # another rank writing it right now
    live.write_text("{")
    run(inp, out)
    assert live.exists()


# ---------------------------------------------------------------------------------------------- #9 one image limit
def _png_header(width: int, height: int) -> bytes:
    """A PNG with a valid header of the given size and a tiny (not matching) image body: enough to identify it."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def test_verify_deep_and_the_reader_apply_the_same_pixel_limit(tmp_path):
    side = int(MAX_IMAGE_PIXELS ** 0.5)
    below, above = _png_header(side, side), _png_header(side + 1, side + 1)  # 134.2 Mpx | just over
    assert side * side <= MAX_IMAGE_PIXELS < (side + 1) ** 2 < 2 * 89_478_485  # under Pillow's own error size
    assert image_size(below) == (side, side)
    for check in (image_size, decode_image):
        with pytest.raises(DecodeError) as e:
            check(above)
        assert e.value.reason == "too_large"
    folder = tmp_path / "set"
    folder.mkdir()
    w = ShardWriter(folder, 0, "s-000000.tar")
    w.add("s/a/0", {"image": ("png", below)})
    w.add("s/a/1", {"image": ("png", above)})
    w.commit()
    write_json(folder / MANIFEST, {"format": "digin-shards/1", "kind": "dataset", "name": "s", "num_shards": 1})
    problems = verify_tree(folder, deep=True).problems
    assert len(problems) == 1 and problems[0]["kind"] == "member"
    assert "sample s/a/1" in problems[0]["detail"] and "too_large" in problems[0]["detail"]


# ---------------------------------------------------------------------------------------------- #1 at the writer
def test_an_output_the_writer_cannot_encode_rejects_that_sample_only(tmp_path):
    """A NaN in a JSON field (JSON refuses NaN) used to crash the shard writer and lose the batch."""
    inp = make_input(tmp_path / "in", 1, 4)
    nan_key = "in/all/00001"
    s = run(inp, tmp_path / "out", lambda b: [{"stats": {"conf": float("nan") if k == nan_key else 0.5}}
                                              for k in b.keys[:b.n_real]])
    assert (s.processed, s.rejected, s.committed_shards) == (3, 1, 1)
    rec = ShardSet.load(tmp_path / "out").records[0]
    assert nan_key not in rec["keys"] and rec["rejects"][0]["key"] == nan_key
    assert rec["rejects"][0]["reason"].startswith("unwritable:field 'stats' of in/all/00001: Out of range float")
