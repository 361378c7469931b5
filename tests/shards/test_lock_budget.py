"""run_stage's run lock (one live run per output folder and rank) and error budget (too many rejects abort)."""
import io
import json
import os
import socket
import subprocess

import numpy as np
import pytest

from digin.shards.manifest import FORMAT, MANIFEST, ShardSet, config_hash, write_json
from digin.shards.runner import EXIT_FAILED, EXIT_OK, RunLocked, StageFailed
from digin.shards.writer import ShardWriter
from .stage_script import run_keys


def _png_4x4() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3)).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png_4x4()
CORRUPT = b"this is not a png"


def make_input(folder, n_shards: int, per_shard: int, corrupt=()):
    """A committed dataset shard set of tiny PNGs; global sample indices in `corrupt` hold undecodable bytes."""
    folder.mkdir(parents=True)
    cfg = {"n_shards": n_shards, "per_shard": per_shard, "corrupt": sorted(corrupt)}
    chash = config_hash(cfg)
    for i in range(n_shards):
        w = ShardWriter(folder, i, f"in-{i:06d}.tar", {"config_hash": chash})
        for j in range(i * per_shard, (i + 1) * per_shard):
            w.add(key(j), {"image": ("png", CORRUPT if j in corrupt else PNG),
                           "meta": ("json", json.dumps({"label": 0}).encode())})
        w.commit()
    write_json(folder / MANIFEST, {"format": FORMAT, "kind": "dataset", "name": "in", "config": cfg,
                                   "config_hash": chash, "num_shards": n_shards, "classes": ["c"]})
    return folder


def key(j: int) -> str:
    return f"in/all/{j:05d}"


def trivial(reject_keys=(), calls=None):
    def process(b):
        if calls is not None:
            calls.append(b.keys[:b.n_real])
        return [{"__reject__": "bad_output"} if k in reject_keys else {"t": k} for k in b.keys[:b.n_real]]
    return process


def events(output, kind):
    return [e for p in sorted((output / "logs").glob("*.jsonl")) for e in map(json.loads, p.open())
            if e["event"] == kind]


def snapshot(folder):
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def lock_path(output, rank=0):
    return output / "locks" / f"rank-{rank:06d}.lock"


def plant_lock(output, pid, host=None, job=None, rank=0, **extra):
    p = lock_path(output, rank)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({"host": host or socket.gethostname(), "pid": pid, "slurm_job_id": job,
                             "torchelastic_restart_count": None, "started": "2024-01-01T00:00:00+00:00", **extra}))
    return p


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for k in ("SLURM_JOB_ID", "DIGIN_BREAK_LOCK", "RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID",
              "SLURM_NTASKS", "SLURM_LOCALID", "TORCHELASTIC_RESTART_COUNT", "SLURM_RESTART_COUNT",
              "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(k, raising=False)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """3 shards × 4 good samples."""
    return make_input(tmp_path_factory.mktemp("small") / "in", 3, 4)


@pytest.fixture
def live_pid():
    proc = subprocess.Popen(["sleep", "30"])
    yield proc.pid
    proc.kill()
    proc.wait()


def run(inp, out, process, config=None, **kw):
    return run_keys(inp, out, process, 4, config or {}, rank=kw.pop("rank", 0), world=kw.pop("world", 1),
                     progress=False, **kw)


# ---------------------------------------------------------------------------------------------- run lock
def test_lock_is_held_during_the_run_and_removed_after(small, tmp_path):
    out = tmp_path / "o"
    held = []

    def process(b):
        held.append(json.loads(lock_path(out).read_text()))
        return trivial()(b)

    s = run(small, out, process)
    assert s.committed_shards == 3 and len(held) == 3
    assert held[0]["pid"] == os.getpid() and held[0]["host"] == socket.gethostname()
    assert held[0]["slurm_job_id"] is None and held[0]["started"].startswith("20")
    assert not lock_path(out).exists()


def test_live_lock_refuses_and_changes_nothing(small, tmp_path, live_pid):
    out = tmp_path / "o"
    calls = []

    def dies_on_second_call(b):
        if calls:
            raise RuntimeError("boom in process")
        calls.append(1)
        return trivial()(b)

    with pytest.raises(RuntimeError, match="boom"):
        run(small, out, dies_on_second_call)
    assert not lock_path(out).exists()  # released after an exception inside process
    assert sorted(ShardSet.load(out).records) == [0]
    (out / "o-000001.tar.partial").write_bytes(b"orphan a new run would delete")
    lock = plant_lock(out, live_pid)
    before = snapshot(out)

    seen = []
    with pytest.raises(RunLocked) as e:
        run(small, out, trivial(calls=seen), force=True, config={"changed": 1})
    msg = str(e.value)
    assert str(lock) in msg and f"pid {live_pid}" in msg and socket.gethostname() in msg
    assert "DIGIN_BREAK_LOCK=1" in msg
    assert isinstance(e.value, RuntimeError) and not seen
    assert snapshot(out) == before  # manifest, commits, orphan partial, logs and the lock itself untouched


def test_dead_pid_on_this_host_is_taken_over(small, tmp_path, capsys):
    out = tmp_path / "o"
    gone = subprocess.Popen(["true"])
    gone.wait()
    plant_lock(out, gone.pid)
    s = run(small, out, trivial())
    assert s.committed_shards == 3 and s.exit_code == EXIT_OK
    assert not lock_path(out).exists()
    (ev,) = events(out, "lock_takeover")
    assert ev["previous_holder"]["pid"] == gone.pid and f"pid {gone.pid}" in ev["reason"]
    assert "taking over" in capsys.readouterr().err


def test_same_slurm_job_takes_over_only_an_earlier_requeued_run(small, tmp_path, live_pid, monkeypatch):
    """Issue 16 #2: a live lock of this same Slurm job is no proof that its holder is gone (a second copy of the
    rank inside one job); only a lock of an earlier run of the job (lower SLURM_RESTART_COUNT: the requeue ended
    it) or a dead pid on this host is taken over."""
    out = tmp_path / "o"
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    plant_lock(out, live_pid, host="node-that-died", job="999")
    with pytest.raises(RunLocked, match="Slurm job 999"):
        run(small, out, trivial())
    plant_lock(out, live_pid, job="4242", slurm_restart_count=0)  # same job, this host, pid alive: a live twin
    with pytest.raises(RunLocked, match=f"pid {live_pid}"):
        run(small, out, trivial())
    plant_lock(out, live_pid, host="other-node", job="4242", slurm_restart_count=0)  # same run of the job
    with pytest.raises(RunLocked):
        run(small, out, trivial())
    assert not (out / "manifest.json").exists()
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # requeued once: the holder is from run 0
    s = run(small, out, trivial())
    assert s.committed_shards == 3
    reason = events(out, "lock_takeover")[0]["reason"]
    assert "Slurm job 4242" in reason and "requeued" in reason
    assert not lock_path(out).exists()


def test_break_lock_env_overrides_a_live_lock(small, tmp_path, live_pid, monkeypatch):
    out = tmp_path / "o"
    plant_lock(out, live_pid)
    monkeypatch.setenv("DIGIN_BREAK_LOCK", "1")
    s = run(small, out, trivial())
    assert s.committed_shards == 3 and "DIGIN_BREAK_LOCK" in events(out, "lock_takeover")[0]["reason"]
    assert not lock_path(out).exists()


def test_corrupt_lock_is_taken_over(small, tmp_path):
    out = tmp_path / "o"
    lock_path(out).parent.mkdir(parents=True)
    lock_path(out).write_bytes(b'{"host": "x", "pi')  # crash mid-write
    assert run(small, out, trivial()).committed_shards == 3
    assert events(out, "lock_takeover")[0]["previous_holder"] is None


def test_other_ranks_are_not_blocked(small, tmp_path, live_pid):
    out = tmp_path / "o"
    plant_lock(out, live_pid, rank=0)
    s = run(small, out, trivial(), rank=1, world=2)
    assert s.committed_shards == 1 and sorted(ShardSet.load(out).records) == [1]
    assert lock_path(out, 0).exists() and not lock_path(out, 1).exists()


# ---------------------------------------------------------------------------------------------- error budget
def test_a_few_rejects_in_a_small_corpus_still_complete(tmp_path):
    inp = make_input(tmp_path / "in", 2, 5, corrupt={1, 2, 7})
    s = run(inp, tmp_path / "o", trivial(reject_keys={key(4)}))
    assert s.exit_code == EXIT_OK and s.rejected == 4 and s.processed == 6 and s.committed_shards == 2


def test_150_consecutive_corrupt_abort_at_the_101st_and_resume_completes(tmp_path):
    # 4 shards × 100; samples 150..299 corrupt: the 101st consecutive is sample 250 (shard 2, position 50)
    inp = make_input(tmp_path / "in", 4, 100, corrupt=set(range(150, 300)))
    out = tmp_path / "o"
    with pytest.raises(StageFailed) as e:
        run_keys(inp, out, trivial(), 16, {}, rank=0, world=1, progress=False)
    msg = str(e.value)
    assert "101 consecutive" in msg and "max_consecutive_rejects=100" in msg and key(250) in msg
    assert "unidentified_image" in msg
    (ev,) = events(out, "error_budget_exceeded")
    # unit 3 was open too: batches fill across units, so the next unit is read while unit 2 runs
    assert (ev["consecutive"], ev["rejected"], ev["seen"], ev["discarded"]) == (101, 101, 251, [2, 3])
    recs = ShardSet.load(out).records
    assert sorted(recs) == [0, 1] and recs[0]["count"] == 100 and len(recs[1]["rejects"]) == 50
    assert not list(out.glob("*.partial")) and not lock_path(out).exists()

    s = run_keys(inp, out, trivial(), 16, {}, rank=0, world=1, progress=False, max_consecutive_rejects=None,
                  max_reject_share=None)
    assert (s.skipped_shards, s.committed_shards, s.rejected, s.processed) == (2, 2, 100, 100)
    recs = ShardSet.load(out).records
    assert sum(len(r["rejects"]) for r in recs.values()) == 150 and sum(r["count"] for r in recs.values()) == 250


def test_consecutive_count_follows_input_order_across_decode_and_process_rejects(tmp_path):
    # one chunk of 16: process reject at 5, decode reject at 6, process reject at 7 -> 3 in a row at position 7
    inp = make_input(tmp_path / "in", 1, 16, corrupt={6})
    out = tmp_path / "o"
    s = run_keys(inp, out, trivial(reject_keys={key(5), key(7)}), 16, {}, rank=0, world=1, progress=False,
                  max_consecutive_rejects=2, raise_on_failure=False)
    assert s.exit_code == EXIT_FAILED and "3 consecutive" in s.error_budget_exceeded
    (ev,) = events(out, "error_budget_exceeded")
    assert (ev["consecutive"], ev["seen"]) == (3, 8)
    assert [r["key"] for r in ev["last_rejects"]] == [key(5), key(6), key(7)]
    assert not ShardSet.load(out).records
    # a processed sample between them resets the count
    s = run_keys(inp, tmp_path / "o2", trivial(reject_keys={key(5), key(8)}), 16, {}, rank=0, world=1,
                  progress=False, max_consecutive_rejects=2)
    assert s.exit_code == EXIT_OK and s.rejected == 3


def test_scattered_reject_share_above_limit_aborts(tmp_path):
    # 2000 samples, 4 rejects (0.2 %): 2 undecodable, 2 rejected by process; 2 of the first 1000 -> abort at 1000
    inp = make_input(tmp_path / "in", 4, 500, corrupt={300, 1300})
    out = tmp_path / "o"
    with pytest.raises(StageFailed, match=r"max_reject_share=0\.100%.*2 rejected of 1000"):
        run_keys(inp, out, trivial(reject_keys={key(800), key(1800)}), 50, {}, rank=0, world=1, progress=False)
    (ev,) = events(out, "error_budget_exceeded")
    assert (ev["limit"], ev["rejected"], ev["seen"]) == ("max_reject_share", 2, 1000)
    assert sorted(ShardSet.load(out).records) == [0]


def test_scattered_reject_share_below_limit_completes(tmp_path):
    # 4000 samples, 2 rejects (0.05 %)
    inp = make_input(tmp_path / "in", 4, 1000, corrupt={1500})
    s = run_keys(inp, tmp_path / "o", trivial(reject_keys={key(3500)}), 50, {}, rank=0, world=1, progress=False)
    assert s.exit_code == EXIT_OK and s.rejected == 2 and s.processed == 3998 and s.committed_shards == 4
    assert "rejected 2" in s.line(0) and not s.error_budget_exceeded


def test_budget_parameters_are_checked(small, tmp_path):
    with pytest.raises(ValueError, match="max_reject_share"):
        run(small, tmp_path / "o", trivial(), max_reject_share=1.5)
    assert not (tmp_path / "o").exists()


def test_samples_the_process_does_not_select_are_no_failures(tmp_path):
    """{"__skip__": reason} (a task's selection, e.g. images without a UVCE pair) is recorded with every key
    accounted for, but 150 of them in a row do not exceed the error budget."""
    folder = tmp_path / "in"
    folder.mkdir()
    write_json(folder / "manifest.json", {"format": FORMAT, "kind": "dataset", "name": "sel", "num_shards": 1})
    w = ShardWriter(folder, 0, "sel-000000.tar")
    for i in range(160):
        w.add(f"sel/{i:04d}", {"txt": ("txt", b"x")})
    w.commit()
    summary = run_keys(folder, tmp_path / "out", lambda b: [{"__skip__": "no_pairs"} if int(k[-4:]) < 150
                                                            else {"t": "ok"} for k in b.keys[:b.n_real]],
                        16, {}, progress=False, max_consecutive_rejects=100)
    assert summary.exit_code == 0 and summary.processed == 10 and summary.not_selected == 150
    assert summary.rejected == 0 and "not selected 150" in summary.line(0)
    rec = ShardSet.load(tmp_path / "out").records[0]
    assert rec["count"] == 10 and len(rec["rejects"]) == 150
    assert {r["reason"] for r in rec["rejects"]} == {"skip:no_pairs"}
