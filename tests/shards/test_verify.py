"""`digin verify` (R10): damaged, missing, stray and leftover files in committed shard sets are all reported."""
import io
import json
import random
import shutil

import pytest

from digin.cli import main
from digin.shards.manifest import FORMAT, MANIFEST, ShardSet, sha256_bytes, write_json
from digin.shards.members import safetensors_header_problem
from digin.stages.verify import verify_shard_set, verify_tree
from digin.shards.writer import ShardWriter
from .stage_script import run_keys


@pytest.fixture(scope="module")
def fourteen_shards(tmp_path_factory):
    """28 tiny JPEGs, 2 per shard -> 14 committed shards (enough for 10 flips + 3 deletions)."""
    from digin.shards.convert import convert
    from digin.shards.synthetic import make_image_folder

    root = tmp_path_factory.mktemp("v14")
    make_image_folder(root / "src", classes=2, n_per_class=14, size=8, seed=3)
    return convert("imagefolder", root / "src", "all", root / "shards", name="v", samples_per_shard=2,
                   progress=False).dir


@pytest.fixture
def copy_of(tmp_path):
    def _copy(src, name="set"):
        return shutil.copytree(src, tmp_path / name)

    return _copy


def _flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _damage_r10(folder):
    """Flip 1 byte in 10 committed tars, delete 3 others, add 1 stray file; returns (flipped, deleted, stray)."""
    tars = [folder / rec["file"] for rec in ShardSet.load(folder).records.values()]
    assert len(tars) == 14
    chosen = random.Random(10).sample(tars, 13)
    flipped, deleted = chosen[:10], chosen[10:]
    for p in flipped:
        _flip_byte(p)
    for p in deleted:
        p.unlink()
    stray = folder / "notes.txt"
    stray.write_text("not part of the shard set\n")
    return flipped, deleted, stray


def test_r10_exactly_the_14_problems(fourteen_shards, copy_of, capsys):
    intact, damaged = copy_of(fourteen_shards, "intact"), copy_of(fourteen_shards, "damaged")
    flipped, deleted, stray = _damage_r10(damaged)

    report = verify_shard_set(damaged)
    assert len(report.problems) == 14
    assert report.kinds() == {"sha256": 10, "missing": 3, "stray": 1}
    by_kind = {k: sorted(p["path"] for p in report.problems if p["kind"] == k) for k in report.kinds()}
    assert by_kind == {"sha256": sorted(map(str, flipped)), "missing": sorted(map(str, deleted)),
                       "stray": [str(stray)]}
    assert report.shards == 14 and report.samples == 28

    clean = verify_shard_set(intact)
    assert clean.ok and clean.problems == [] and clean.shards == 14 and clean.samples == 28
    assert clean.bytes == sum(p.stat().st_size for p in intact.glob("*.tar"))

    capsys.readouterr()
    assert main(["verify", f"path={damaged}"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len([ln for ln in lines if ln.count("\t") == 2]) == 14
    assert "14 problem(s)" in lines[-1] and "missing 3, sha256 10, stray 1" in lines[-1] and "MB/s" in lines[-1]
    assert main(["verify", f"path={intact}"]) == 0
    assert "no problems" in capsys.readouterr().out


def test_without_hash_only_missing_and_stray(fourteen_shards, copy_of):
    damaged = copy_of(fourteen_shards)
    _damage_r10(damaged)
    report = verify_shard_set(damaged, check_hash=False)
    assert report.kinds() == {"missing": 3, "stray": 1} and report.bytes == 0


def test_json_report(fourteen_shards, copy_of, capsys):
    damaged = copy_of(fourteen_shards)
    _damage_r10(damaged)
    capsys.readouterr()
    assert main(["verify", f"path={damaged}", "json=true"]) == 1
    rep = json.loads(capsys.readouterr().out)
    assert rep["ok"] is False and len(rep["problems"]) == 14 and rep["kinds"]["sha256"] == 10
    assert rep["sets"] == [str(damaged)] and rep["shards"] == 14
    assert set(rep["problems"][0]) == {"kind", "path", "detail"}


def test_size_mismatch(toy_shards, copy_of):
    d = copy_of(toy_shards)
    p = d / "toy-all-000002.tar"
    p.write_bytes(p.read_bytes()[:-512])
    report = verify_shard_set(d)
    assert [(x["kind"], x["path"]) for x in report.problems] == [("size", str(p))]


def test_leftovers_reported(toy_shards, copy_of):
    d = copy_of(toy_shards)
    (d / "toy-all-000001.tar.partial").write_bytes(b"half a shard")
    (d / "commits" / "000002.json.tmp.4242").write_text("{")
    (d / "manifest.json.tmp.4242").write_text("{")
    report = verify_shard_set(d)
    assert report.kinds() == {"leftover": 3}
    assert str(d / "toy-all-000001.tar.partial") in {x["path"] for x in report.problems}


def test_bad_and_incomplete_commit_records(toy_shards, copy_of):
    d = copy_of(toy_shards)
    (d / "commits" / "000003.json").write_text("{not json")
    rec = json.loads((d / "commits" / "000004.json").read_text())
    del rec["sha256"]
    (d / "commits" / "000004.json").write_text(json.dumps(rec))
    report = verify_shard_set(d)
    # the converted set's manifest still lists both shards, so their tars stay accounted for
    assert report.kinds() == {"bad_record": 2}
    assert {x["path"] for x in report.problems} == {str(d / "commits" / "000003.json"),
                                                    str(d / "commits" / "000004.json")}
    assert any("lacks field(s) sha256" in x["detail"] for x in report.problems)

    meta = json.loads((d / MANIFEST).read_text())
    del meta["shards"]  # now a commit record is the only proof a shard exists
    (d / MANIFEST).write_text(json.dumps(meta))
    report = verify_shard_set(d)
    assert report.kinds() == {"bad_record": 2, "stray": 2, "incomplete": 1}


def _rewrite_members(path, edit):
    """Rewrite a tar from `edit(members)` (deterministic writer: untouched members stay byte-identical)."""
    from digin.shards.naming import encode_key
    from digin.shards.tario import group_members, open_tar_writer, write_sample

    members = [(key, *suffix.split(".", 1), payload)
               for key, fields in group_members(path.read_bytes()) for suffix, payload in fields.items()]
    buf = io.BytesIO()
    w = open_tar_writer(buf)
    for key, fld, ext, payload in edit(members):
        write_sample(w, encode_key(key), {f"{fld}.{ext}": payload})
    w.close()
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def _rehash_record(folder, index, data):
    """Make shard `index`'s records (commit file and manifest list) match `data`: only deep can tell now."""
    rec = json.loads((folder / "commits" / f"{index:06d}.json").read_text())
    rec.update(sha256=sha256_bytes(data), bytes=len(data))
    write_json(folder / "commits" / f"{index:06d}.json", rec)
    meta = json.loads((folder / MANIFEST).read_text())
    meta["shards"] = [rec if r["index"] == index else r for r in meta["shards"]]
    write_json(folder / MANIFEST, meta)


def test_deep_catches_member_removed_with_record_rehashed(toy_shards, copy_of):
    d = copy_of(toy_shards)
    assert verify_shard_set(d, deep=True).ok  # untouched: JPEG + JSON members all check out
    drop_last = lambda ms: [m for m in ms if m[0] != ms[-1][0]]  # noqa: E731
    _rehash_record(d, 2, _rewrite_members(d / "toy-all-000002.tar", drop_last))
    rename_first = lambda ms: [(m[0].replace("00004", "00099"), *m[1:]) for m in ms]  # noqa: E731
    _rehash_record(d, 1, _rewrite_members(d / "toy-all-000001.tar", rename_first))

    assert verify_shard_set(d).ok
    report = verify_shard_set(d, deep=True)
    assert [(x["kind"], x["path"]) for x in report.problems] == [("keys", str(d / "toy-all-000001.tar")),
                                                                 ("count", str(d / "toy-all-000002.tar"))]
    assert "sample 0 is 'toy/all/00099' in the tar, 'toy/all/00004' in the record" in report.problems[0]["detail"]
    assert "3 samples in the tar, record says 4" in report.problems[1]["detail"]


def _new_set(folder, num_shards):
    folder.mkdir(parents=True)
    write_json(folder / MANIFEST, {"format": FORMAT, "kind": "test", "name": "t", "num_shards": num_shards})
    return folder


def test_deep_member_checks(tmp_path):
    from digin.shards.encode import encode_tensors
    import torch

    d = _new_set(tmp_path / "s", 1)
    good = encode_tensors({"z": torch.ones(2, 3)})
    w = ShardWriter(d, 0, "t-000000.tar")
    w.add("t/a/0", {"lat": ("safetensors", good[:-4]), "meta": ("json", b"{bad")})
    w.add("t/a/1", {"img": ("png", b"not a png"), "lat": ("safetensors", good), "meta": ("json", b"{}")})
    w.commit()
    assert verify_shard_set(d).ok  # bytes match the record: only the deep pass looks inside
    report = verify_shard_set(d, deep=True)
    got = sorted(x["detail"].split(": ")[0] for x in report.problems)
    assert report.kinds() == {"member": 3}
    assert got == ["shard 0 sample t/a/0 member lat.safetensors", "shard 0 sample t/a/0 member meta.json",
                   "shard 0 sample t/a/1 member img.png"]


def test_duplicate_keys_across_shards(tmp_path):
    d = _new_set(tmp_path / "s", 2)
    for i, keys in enumerate([["t/a/0", "t/a/1"], ["t/a/1", "t/a/2"]]):
        w = ShardWriter(d, i, f"t-{i:06d}.tar")
        for k in keys:
            w.add(k, {"note": k})
        w.commit()
    report = verify_shard_set(d)
    assert report.kinds() == {"duplicate_key": 1}
    assert report.problems[0]["path"] == str(d / "commits" / "000001.json")
    assert "'t/a/1'" in report.problems[0]["detail"] and "shard 0" in report.problems[0]["detail"]


def test_safetensors_header_check():
    import torch

    from digin.shards.encode import encode_tensors

    good = encode_tensors({"a": torch.zeros(3, 2), "b": torch.arange(5)})
    assert safetensors_header_problem(good) is None
    assert "exceeds" in safetensors_header_problem(b"\xff" * 8 + good[8:])
    assert "cover" in safetensors_header_problem(good + b"\0\0\0\0")
    assert safetensors_header_problem(good[:-1]) is not None
    assert "bytes for F32" in safetensors_header_problem(good.replace(b"[3,2]", b"[3,3]"))
    assert safetensors_header_problem(good[:8] + b"[" + good[9:]) is not None  # header no longer JSON


def _two_stage_output(src, task):
    """A task output with two stage sets (a stage over another stage's output): a -> b."""
    import torch

    def stage_a(b):
        return [{"lat": {"z": torch.full((2,), float(i))}, "info": {"key": k}, "note": k}
                for i, k in enumerate(b.keys[:b.n_real])]

    def stage_b(b):
        return [{"img": torch.zeros(4, 4, 3, dtype=torch.uint8).numpy(), "info": {"from": k}}
                for k in b.keys[:b.n_real]]

    run_keys(src, task / "a", stage_a, 4, {"s": "a"}, progress=False)
    run_keys(task / "a", task / "b", stage_b, 4, {"s": "b"}, progress=False)


def test_tree_checks_every_stage_set(toy_shards, tmp_path, capsys):
    task = tmp_path / "task"
    _two_stage_output(toy_shards, task)
    assert (task / "a" / "logs").is_dir()  # the runner's logs are allowed, not stray
    clean = verify_tree(task, deep=True)
    assert clean.problems == [] and clean.sets == [str(task / "a"), str(task / "b")]
    assert clean.shards == 12 and clean.samples == 42

    _flip_byte(task / "b" / "b-000001.tar")
    (task / "a" / "a-000003.tar.partial").write_bytes(b"")
    report = verify_tree(task)
    assert sorted((x["kind"], x["path"]) for x in report.problems) == [
        ("leftover", str(task / "a" / "a-000003.tar.partial")), ("sha256", str(task / "b" / "b-000001.tar"))]
    capsys.readouterr()
    assert main(["verify", f"path={task}", "json=true"]) == 1
    assert len(json.loads(capsys.readouterr().out)["sets"]) == 2


def test_nothing_to_verify_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert verify_tree(tmp_path / "empty").kinds() == {"not_found": 1}
    assert verify_shard_set(tmp_path / "empty").kinds() == {"manifest": 1}
    assert main(["verify", f"path={tmp_path / 'nowhere'}"]) == 1


def test_progress_shown_for_many_shards(fourteen_shards, monkeypatch, capsys):
    import digin.stages.verify as V

    monkeypatch.setattr(V, "MANY_SHARDS", 10)
    verify_tree(fourteen_shards, progress=True)
    assert "[verify] 28/28" in capsys.readouterr().err


def test_record_from_another_config(toy_shards, copy_of):
    d = copy_of(toy_shards)
    rec = json.loads((d / "commits" / "000001.json").read_text())
    rec["config_hash"] = "0123456789abcdef"
    write_json(d / "commits" / "000001.json", rec)
    meta = json.loads((d / MANIFEST).read_text())
    meta["shards"] = [rec if r["index"] == 1 else r for r in meta["shards"]]
    write_json(d / MANIFEST, meta)
    report = verify_shard_set(d)
    assert [(x["kind"], x["path"]) for x in report.problems] == [("config_hash", str(d / "commits" / "000001.json"))]
    meta["forced_over"] = ["0123456789abcdef"]  # what a forced resume records: knowingly kept
    write_json(d / MANIFEST, meta)
    assert verify_shard_set(d).ok
