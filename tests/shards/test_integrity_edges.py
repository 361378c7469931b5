"""Issue 32: a cut tar is never 'complete', a damaged record never blocks a resume, joined inputs prove where they
came from, and a live lock holder on this host is never taken over."""
import errno
import io
import json
import shutil
import tarfile

import pytest

from digin.cli import main
from digin.errors import is_expected, one_line
from digin.shards.keyed import read_keys
from digin.shards.manifest import MANIFEST, ShardError, ShardSet, sha256_bytes
from digin.shards.reader import iter_samples, iter_shard
from digin.shards.tario import TarFormatError, group_members
from digin.stages.verify import verify_shard_set
from digin.shards.wdsindex import FieldMap, index_webdataset, scan_tar
from digin.toy.world import SHAPES
from tests.shards.foreign import write_foreign_set

from .stage_script import run_keys
from .test_lock_budget import clean_env, live_pid  # noqa: F401 (fixtures: environment cleared, a live pid)
from .test_lock_budget import lock_path, make_input, plant_lock, trivial


# ---------------------------------------------------------------------------------------------- 1. cut tars
@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    """One webdataset tar of 4 samples (12 members with pax headers), as webdataset.ShardWriter writes it."""
    fs = write_foreign_set(tmp_path_factory.mktemp("wds") / "in", "imagenet", n=4, per_tar=4)
    return fs["tars"][0]


def _layout(data: bytes):
    """(member header offsets, data offsets and sizes, where the last member's padded data ends)."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        ms = tf.getmembers()
    return ms, ms[-1].offset_data + -(-ms[-1].size // 512) * 512


def _cuts(data: bytes) -> list[int]:
    """Every 512-byte boundary, and a byte inside every header, data and padding block; inside the marker and the
    record padding."""
    ms, end = _layout(data)
    inside = [c for m in ms for c in (m.offset + 100, m.offset_data - 1, m.offset_data + m.size // 2,
                                      m.offset_data + m.size + 1)]
    return sorted(set(range(0, len(data), 512)) | set(inside) | {end + 100, end + 700, len(data) - 1})


def test_cut_foreign_tar_sweep_refused_or_exact(foreign, tmp_path):
    """Any cut: refused naming the byte, or (only once a whole end-of-archive block is there) all 4 samples."""
    data = foreign.read_bytes()
    _, end = _layout(data)
    fm = FieldMap(label="cls", caption="none")
    for cut in _cuts(data):
        cut_tar = tmp_path / f"cut-{cut}.tar"
        cut_tar.write_bytes(data[:cut])
        try:
            groups = group_members(data[:cut], "webdataset")
        except TarFormatError as e:
            assert "byte" in str(e) and cut < end + 512, (cut, str(e))
            scan = scan_tar((str(cut_tar), fm))
            assert str(cut_tar) in scan["problem"] and "byte" in scan["problem"], scan
            continue
        assert cut >= end + 512 and len(groups) == 4, cut  # whatever survives a cut in the padding is complete
        assert len(scan_tar((str(cut_tar), fm))["samples"]) == 4
        cut_tar.unlink()


def test_a_corrupt_header_and_a_concatenated_tar_are_refused(foreign):
    data = bytearray(foreign.read_bytes())
    ms, _ = _layout(bytes(data))
    bad = bytearray(data)
    bad[ms[6].offset + 20] ^= 0x55  # a header in the middle: Python's tar reader would stop there silently
    with pytest.raises(TarFormatError, match=f"header at byte {ms[6].offset}"):
        group_members(bytes(bad), "webdataset")
    with pytest.raises(TarFormatError, match="after the end-of-archive marker"):
        group_members(bytes(data) + bytes(data), "webdataset")
    assert len(group_members(bytes(data), "webdataset")) == 4


@pytest.mark.parametrize("where", ["boundary", "header"])
def test_digin_shard_refuses_a_cut_foreign_tar(foreign, tmp_path, capsys, where):
    """The issue's case: rc 0 and '2 samples (0 refused)' for a tar that held 4. Now: one line naming the tar and
    the byte, rc 1, nothing written."""
    data = foreign.read_bytes()
    ms, _ = _layout(data)
    cut = ms[6].offset + (100 if where == "header" else 0)  # before sample 2's first member header
    tar = tmp_path / "imagenet-0000.tar"
    tar.write_bytes(data[:cut])
    out = tmp_path / "idx"
    with pytest.raises(SystemExit) as e:
        main(["shard", "source=webdataset", f"urls={tar}", f"out={out}", "classes=[" + ",".join(SHAPES) + "]"])
    msg = str(e.value.code)
    assert msg.startswith(f"digin shard: tar {tar}: cut short") and f"byte {cut}" in msg and "\n" not in msg
    assert not out.exists()


def test_a_record_of_a_cut_tar_is_refused_by_every_whole_tar_reader(foreign, tmp_path):
    """A set indexed before cut tars were refused: its record matches the cut file (size, sha256), so only the tar
    itself tells. The stages' whole-shard reads, legacy span indexing and verify deep=true refuse it."""
    tar = tmp_path / "imagenet-0000.tar"
    shutil.copy(foreign, tar)
    out = tmp_path / "idx"
    index_webdataset(str(tar), out, fields=FieldMap(label="cls"), classes=list(SHAPES), progress=False)
    data = tar.read_bytes()
    cut = _layout(data)[0][6].offset
    tar.write_bytes(data[:cut])
    rec_path = out / "commits" / "000000.json"
    rec = json.loads(rec_path.read_text())
    rec.update(bytes=cut, sha256=sha256_bytes(data[:cut]))
    for k in ("spans", "sample_sha256"):  # a record made before records had spans: indexed on first use
        rec.pop(k)
    rec_path.write_text(json.dumps(rec))
    meta = json.loads((out / MANIFEST).read_text())
    meta["shards"] = [rec]  # (an indexed set lists its records in the manifest too)
    (out / MANIFEST).write_text(json.dumps(meta))
    ss = ShardSet.load(out)
    with pytest.raises(ShardError, match=f"{tar}: cut short.*byte {cut}"):
        list(iter_samples(ss))
    with pytest.raises(ShardError, match=f"{tar}: cut short"):
        read_keys(ss, [(0, 0)])
    report = verify_shard_set(out, deep=True)
    assert report.kinds() == {"tar": 1} and f"byte {cut}" in report.problems[0]["detail"]


def test_digin_shard_cut_at_every_block_is_refused(toy_shards, tmp_path):
    """digin's own shards: a cut whose record was rewritten to match it (size, sha256) is still refused by
    iter_shard, naming the tar and the byte; only a cut in the record padding keeps every sample."""
    shutil.copytree(toy_shards, tmp_path / "in")
    folder = tmp_path / "in"
    ss = ShardSet.load(folder)
    path, rec = ss.path(1), dict(ss.records[1])
    data = path.read_bytes()
    _, end = _layout(data)
    for cut in _cuts(data):
        ss.records[1] = {**rec, "bytes": cut, "sha256": sha256_bytes(data[:cut])}
        path.write_bytes(data[:cut])
        try:
            got = list(iter_shard(ss, 1))
        except ShardError as e:
            assert str(path) in str(e) and "byte" in str(e) and cut < end + 512, (cut, str(e))
            continue
        assert cut >= end + 512 and [s["__key__"] for s in got] == rec["keys"]


# ---------------------------------------------------------------------------------------------- 2. damaged records
def _out_run(inp, out, **kw):
    return run_keys(inp, out, trivial(), 2, {"stage": "t"}, progress=False, raise_on_failure=False, name="t", **kw)


def _tree(folder):
    """Every committed unit's keys, rejects and tar hash (the tar's name differs per attempt under dynamic)."""
    ss = ShardSet.load(folder)
    assert all(sha256_bytes(ss.path(i).read_bytes()) == r["sha256"] for i, r in ss.records.items())
    return {i: (r["keys"], r["rejects"], r["sha256"]) for i, r in ss.records.items()}


def test_a_damaged_input_record_is_one_line_naming_the_file_and_the_fix(tmp_path):
    inp = make_input(tmp_path / "in", 3, 2)
    (inp / "commits" / "000001.json").write_text("{")
    with pytest.raises(ShardError) as e:  # (DamagedRecord)
        _out_run(inp, tmp_path / "out")
    line = one_line("invert", e.value)
    assert is_expected(e.value) and "\n" not in line
    assert f"{inp / 'commits' / '000001.json'}: damaged commit record (JSONDecodeError" in line
    assert "delete this file and run the command that writes" in line
    assert sorted(ShardSet.load(inp, damaged="skip").damaged) == [1]
    assert verify_shard_set(inp).kinds() == {"bad_record": 1, "incomplete": 1, "stray": 1}  # (its tar)


def test_a_record_without_keys_is_damaged_for_verify_and_the_readers_alike(tmp_path):
    inp = make_input(tmp_path / "in", 2, 2)
    rec = json.loads((inp / "commits" / "000000.json").read_text())
    del rec["keys"]
    (inp / "commits" / "000000.json").write_text(json.dumps(rec))
    assert verify_shard_set(inp).kinds() == {"bad_record": 1, "incomplete": 1, "stray": 1}  # (its tar)
    with pytest.raises(ShardError, match="lacks field"):  # (DamagedRecord)
        ShardSet.load(inp)


def test_a_damaged_output_record_without_its_tar_is_redone_automatically(tmp_path, capsys):
    inp = make_input(tmp_path / "in", 4, 2)
    _out_run(inp, tmp_path / "ref")
    out = tmp_path / "out"
    shutil.copytree(tmp_path / "ref", out)
    (out / "commits" / "000002.json").write_text("{")  # a torn copy, and its tar never arrived
    (out / "t-000002.tar").unlink()
    s = _out_run(inp, out)
    assert s.exit_code == 0 and s.committed_shards == 1 and s.skipped_shards == 3
    assert "removed a damaged commit record whose unit has no tar file" in capsys.readouterr().err
    assert _tree(out) == _tree(tmp_path / "ref")


@pytest.mark.parametrize("schedule", ["static", "dynamic"])
def test_a_damaged_record_among_missing_units_blocks_only_its_own_unit(tmp_path, schedule):
    """The issue's case: commits/000002.json = '{' (its tar still there) among two units that were never
    committed. The resume commits units 1 and 3 and fails unit 2 in one line naming the record and the fix; after
    the record is deleted, the next resume redoes unit 2 and the set equals an uninterrupted run."""
    inp = make_input(tmp_path / "in", 4, 2)
    _out_run(inp, tmp_path / "ref", schedule=schedule)
    out = tmp_path / "out"
    shutil.copytree(tmp_path / "ref", out)
    for j in (1, 3):
        rec = json.loads((out / "commits" / f"{j:06d}.json").read_text())
        (out / "commits" / f"{j:06d}.json").unlink()
        (out / rec["file"]).unlink()
    damaged = out / "commits" / "000002.json"
    damaged.write_text("{")
    s = _out_run(inp, out, schedule=schedule)
    assert s.committed_shards == 2 and s.exit_code == 1
    (failed,) = s.failed_shards
    assert failed["shard"] == 2 and str(damaged) in failed["error"] and "delete this file" in failed["error"]
    assert damaged.read_text() == "{"  # left alone: it may have committed its tar
    damaged.unlink()
    s = _out_run(inp, out, schedule=schedule)
    assert s.exit_code == 0 and s.committed_shards == 1
    assert _tree(out) == _tree(tmp_path / "ref")


def test_a_damaged_output_manifest_is_rewritten_only_when_the_records_prove_it(tmp_path, capsys):
    from digin.shards.manifest import ConfigMismatch

    inp = make_input(tmp_path / "in", 3, 2)
    out = tmp_path / "out"
    _out_run(inp, out)
    (out / "commits" / "000001.json").unlink()
    (out / MANIFEST).write_text('{"format": "digin-sh')
    with pytest.raises(ConfigMismatch, match="damaged manifest.*another config"):
        run_keys(inp, out, trivial(), 2, {"stage": "other"}, progress=False, name="t")
    s = _out_run(inp, out)
    assert s.committed_shards == 1 and s.exit_code == 0
    assert "rewritten" in capsys.readouterr().err
    assert ShardSet.load(out).meta["config"] == {"stage": "t"}


# ---------------------------------------------------------------------------------------------- 4. provenance
def test_inputs_from_another_image_set_are_refused_and_lineage_is_recorded(tmp_path, monkeypatch):
    """Captions made from image set A joined with image set B (same key scheme): refused in one line naming both;
    DIGIN_ALLOW_FOREIGN_JOIN=1 runs it and records the join. A join of A's own images and captions records A."""
    from digin.shards.lineage import ForeignJoin, root_identity

    a = make_input(tmp_path / "a", 2, 2)
    b = make_input(tmp_path / "b", 2, 2, corrupt=(3,))  # the same keys, other images
    caps = tmp_path / "caps_a"
    run_keys(a, caps, lambda batch: [{"caption": f"c {k}"} for k in batch.keys[:batch.n_real]], 2, {"c": 1},
             progress=False)
    ident_a = root_identity(json.loads((a / MANIFEST).read_text()))
    cap_meta = json.loads((caps / MANIFEST).read_text())
    assert cap_meta["image_set"] == ident_a and cap_meta["inputs"][0]["image_set"] == ident_a
    assert cap_meta["inputs"][0]["config_hash"] and "plan_hash" in cap_meta["inputs"][0]

    out = tmp_path / "inv"
    monkeypatch.delenv("DIGIN_ALLOW_FOREIGN_JOIN", raising=False)
    with pytest.raises(ForeignJoin) as e:
        run_keys([("images", b), ("captions", caps)], out, trivial(), 2, {"i": 1}, progress=False, items_per_shard=2)
    line = one_line("invert", e.value)
    assert is_expected(e.value) and "\n" not in line
    assert f"images={b}" in line and f"captions={caps}" in line and "DIGIN_ALLOW_FOREIGN_JOIN=1" in line
    assert not (out / MANIFEST).exists() and not list(out.glob("*.tar"))

    s = run_keys([("images", a), ("captions", caps)], tmp_path / "inv_a", trivial(), 2, {"i": 1}, progress=False,
                 items_per_shard=2)
    assert s.exit_code == 0
    inv = json.loads((tmp_path / "inv_a" / MANIFEST).read_text())
    assert inv["image_set"] == ident_a and [i["role"] for i in inv["inputs"]] == ["images", "captions"]
    assert inv["inputs"][1]["plan_hash"] == cap_meta["plan"]["hash"]

    monkeypatch.setenv("DIGIN_ALLOW_FOREIGN_JOIN", "1")
    assert run_keys([("images", b), ("captions", caps)], out, trivial(), 2, {"i": 1}, progress=False,
                    items_per_shard=2).exit_code == 0
    assert "joined with" in json.loads((out / MANIFEST).read_text())["foreign_join"][0]


def test_a_derived_set_inherits_the_root_image_set(tmp_path):
    """uvce-like: images + inversions (made from the images) + a set made from the inversions: one image set."""
    a = make_input(tmp_path / "a", 2, 2)
    inv = tmp_path / "inv"
    run_keys(a, inv, lambda batch: [{"z": "x"}] * batch.n_real, 2, {"s": 1}, progress=False)
    seg = tmp_path / "seg"
    run_keys([("inversions", inv)], seg, trivial(), 2, {"s": 2}, progress=False, items_per_shard=2)
    assert run_keys([("images", a), ("masks", seg)], tmp_path / "res", trivial(), 2, {"s": 3}, progress=False,
                    items_per_shard=2).exit_code == 0
    ident = json.loads((tmp_path / "res" / MANIFEST).read_text())["image_set"]
    assert ident == json.loads((seg / MANIFEST).read_text())["image_set"] and ident["name"] == "in-None"


# ---------------------------------------------------------------------------------------------- 5. smaller items
def test_a_live_holder_on_this_host_is_never_taken_over_whatever_its_restart_count(tmp_path, live_pid,
                                                                                 monkeypatch):
    from digin.shards.runner import RunLocked

    inp = make_input(tmp_path / "in", 2, 2)
    out = tmp_path / "out"
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "3")
    plant_lock(out, live_pid, job="77", slurm_restart_count=1)  # an earlier run of the job, still alive here
    (out / "t-000000.tar.partial").write_bytes(b"its open partial")
    with pytest.raises(RunLocked, match=f"pid {live_pid}"):
        _out_run(inp, out)
    assert (out / "t-000000.tar.partial").exists() and lock_path(out).exists()


def test_a_file_size_limit_is_an_expected_error_with_its_fix():
    e = OSError(errno.EFBIG, "File too large")
    assert is_expected(e)
    line = one_line("invert", e)
    assert "File too large" in line and "file-size limit" in line and "run the same command again" in line
    for n in (errno.ENOSPC, errno.EDQUOT):
        assert is_expected(OSError(n, "x"))



# ---------------------------------------------------------------------------------------------- decode memory
def _reference_rgb(im):
    """The decode path before issue 32 (whole-image float64 and RGBA copies): the pixels must not change."""
    import numpy as np
    from PIL import Image

    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(im, dtype=np.int64 if mode == "I" else np.uint16).astype(np.float64)
        peak = 65535.0 if mode != "I" or a.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.clip(np.round(a * (255.0 / peak)), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a8 = np.clip(np.round(a * (255.0 if a.max(initial=0) <= 1.0 else 1.0)), 0, 255).astype(np.uint8)
        return Image.fromarray(a8, "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return im if mode == "RGB" else im.convert("RGB")


def _images(w=37, h=23):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    u16 = rng.integers(0, 65536, (h, w), dtype=np.uint16)
    yield Image.frombytes("I;16", (w, h), u16.astype("<u2").tobytes())
    yield Image.frombytes("I", (w, h), rng.integers(-5, 300, (h, w)).astype("<i4").tobytes())  # fits 8 bits: ×1
    yield Image.frombytes("I", (w, h), rng.integers(-5, 70000, (h, w)).astype("<i4").tobytes())
    yield Image.frombytes("F", (w, h), rng.random((h, w)).astype("<f4").tobytes())  # ≤ 1: ×255
    yield Image.frombytes("F", (w, h), (rng.random((h, w)) * 400 - 50).astype("<f4").tobytes())
    yield Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
    yield Image.fromarray(rng.integers(0, 256, (h, w, 2), dtype=np.uint8), "LA")
    p = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L").convert("P")
    p.info["transparency"] = 7
    yield p
    yield Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "CMYK")


@pytest.mark.parametrize("strip_bytes", [1, 16 << 20])
def test_strip_wise_decoding_gives_the_same_pixels(monkeypatch, strip_bytes):
    import numpy as np

    from digin.shards import decode

    monkeypatch.setattr(decode, "STRIP_BYTES", strip_bytes)  # 1: one row per strip
    for im in _images():
        want = np.asarray(_reference_rgb(im.copy()))
        got = decode._to_rgb(decode._eight_bit(im) if im.mode in decode.WIDE_MODES else im)
        np.testing.assert_array_equal(np.asarray(got), want, err_msg=im.mode)
        np.testing.assert_array_equal(decode._as_array(got), want, err_msg=im.mode)


PEAK_SCRIPT = """
import resource, sys
from digin.shards.decode import decode_image
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
decode_image(data, int(sys.argv[2]) or None)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


@pytest.mark.parametrize("kind", ["i16.png", "f.tif", "rgba.png", "rgb.jpg"])
def test_decode_peak_memory_is_bounded_per_pixel(tmp_path, kind):
    """The stated bound (decode.PEAK_BYTES_PER_PIXEL per pixel + the encoded bytes + a fixed slack) on a 9 MP image
    of the widest modes; at MAX_IMAGE_PIXELS that is about 1.1 GB per decode worker (before: up to 28 B/px)."""
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    from digin.shards.decode import PEAK_BYTES_PER_PIXEL

    w = h = 3000
    ramp = (np.add.outer(np.arange(h), np.arange(w)) % 256).astype(np.uint8)
    path = tmp_path / kind
    if kind == "i16.png":
        Image.frombytes("I;16", (w, h), (ramp.astype("<u2") * 257).tobytes()).save(path, compress_level=1)
    elif kind == "f.tif":
        Image.frombytes("F", (w, h), (ramp.astype("<f4") / 255).tobytes()).save(path)
    elif kind == "rgba.png":
        Image.fromarray(np.stack([ramp, ramp.T, ramp[::-1], ramp], -1), "RGBA").save(path, compress_level=1)
    else:
        Image.fromarray(np.stack([ramp, ramp.T, ramp[::-1]], -1)).save(path, quality=80)
    for resolution in ([0, 64] if kind == "rgb.jpg" else [64]):
        run = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(path), str(resolution)], capture_output=True,
                             text=True, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"}, check=True)
        peak = int(run.stdout.split()[-1])
        assert peak <= PEAK_BYTES_PER_PIXEL * w * h + path.stat().st_size + (48 << 20), (kind, resolution, peak)


def test_invert_refuses_captions_of_another_image_set_in_one_line(tmp_path, capsys, monkeypatch):
    """The issue's case through the CLI: `invert inputs=<set B> captions=<captions of set A>`, same key scheme."""
    monkeypatch.delenv("DIGIN_ALLOW_FOREIGN_JOIN", raising=False)
    a = make_input(tmp_path / "a", 1, 2)
    b = make_input(tmp_path / "b", 1, 2, corrupt=(1,))
    caps = tmp_path / "caps_a"
    run_keys(a, caps, lambda batch: [{"caption": "a photo"}] * batch.n_real, 2, {"c": 1}, progress=False)
    out = tmp_path / "inv"
    code = main(["invert", f"inputs={b}", f"captions={caps}", f"out={out}", "model_path=tiny", "device=cpu",
                 "resolution=64", "progress=false"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("digin invert")]
    assert code == 1 and len(err) == 1 and err[0].startswith("digin invert: ForeignJoin: the inputs derive from")
    assert f"images={b}" in err[0] and f"captions={caps}" in err[0]
    assert not (out / MANIFEST).exists() and not list(out.glob("*.tar"))
