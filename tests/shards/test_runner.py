"""run_stage: padding + mask, OOM backoff, config hash, input joins, graceful stop, skip on rerun (units of 4 items
over the 4-sample input shards where a test counts units)."""
import os
import signal

import numpy as np
import pytest
import torch

from digin.shards.manifest import ConfigMismatch, ShardSet
from digin.shards.reader import iter_samples
from digin.shards.runner import EXIT_REQUEUE

from .stage_script import process_fn, run_keys


def _tars(folder):
    """shard index -> tar bytes (file names carry the stage name, so key by the index part)."""
    return {p.name.rsplit("-", 1)[1]: p.read_bytes() for p in sorted(folder.glob("*.tar"))}


def test_batches_are_padded_and_masked(toy_shards, tmp_path):
    seen = []

    def process(b):
        seen.append((len(b), b.n_real, b.mask.tolist(), tuple(b.images.shape)))
        assert b.keys[b.n_real:] == [b.keys[b.n_real - 1]] * (len(b) - b.n_real)
        return [{"k": {"key": k}} for k in b.keys[:b.n_real]]

    s = run_keys(toy_shards, tmp_path / "o", process, 4, {}, resolution=8, progress=False, items_per_shard=3)
    assert s.processed == 21 and s.committed_shards == 7
    assert all(bs == 4 and shape == (4, 3, 8, 8) for bs, _, _, shape in seen)
    # batches fill across unit boundaries: only the run's last batch is padded
    assert [x[1] for x in seen] == [4, 4, 4, 4, 4, 1] and seen[-1] == (4, 1, [True, False, False, False], (4, 3, 8, 8))
    got = [x["k"]["key"] for x in iter_samples(tmp_path / "o")]
    assert got == [x["__key__"] for x in iter_samples(toy_shards)]


@pytest.fixture(scope="module")
def shards_2x40(tmp_path_factory):
    from digin.shards.convert import convert
    from digin.shards.synthetic import make_image_folder
    root = tmp_path_factory.mktemp("s80")
    make_image_folder(root / "src", classes=5, n_per_class=16, size=20, seed=5)
    return convert("imagefolder", root / "src", "all", root / "in", samples_per_shard=40, progress=False).dir


def test_oom_at_batch_8_redone_at_half_size(shards_2x40, tmp_path):
    """2 shards × 40 samples, batch 8 -> 10 calls; call 8 (shard 1, 3rd batch) OOMs once: the same 8 samples
    are redone as 2 × 4 and the rest of the run stays at 4; outputs byte-identical to an uninjected run."""
    ref = tmp_path / "ref"
    run_keys(shards_2x40, ref, process_fn(), 8, {"s": 1}, resolution=16, progress=False, items_per_shard=40)
    calls, inner = [], process_fn()

    def flaky(b):
        calls.append((len(b), b.n_real, b.keys[0]))
        if len(calls) == 8:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return inner(b)

    out = tmp_path / "oom"
    s = run_keys(shards_2x40, out, flaky, 8, {"s": 1}, resolution=16, progress=False, items_per_shard=40)
    assert s.oom_retries == 1 and s.final_batch_size == 4 and s.processed == 80
    assert [c[:2] for c in calls] == [(8, 8)] * 8 + [(4, 4)] * 6
    assert calls[7][2] == calls[8][2] == "src/all/00056"  # the failed batch's samples are redone first
    assert _tars(out) == _tars(ref)
    log = open(s.log_path).read()
    assert '"event": "oom_retry"' in log and '"to_batch_size": 4' in log


def test_non_oom_errors_propagate_and_leave_no_partial(toy_shards, tmp_path):
    def bad(b):
        raise RuntimeError("CUDA error: an illegal memory access was encountered (out of memory?)")

    with pytest.raises(RuntimeError, match="illegal"):
        run_keys(toy_shards, tmp_path / "o", bad, 4, {}, progress=False)
    assert not list((tmp_path / "o").glob("*.partial")) and not ShardSet.load(tmp_path / "o").records


def test_rerun_skips_and_config_change_is_refused(toy_shards, tmp_path):
    out = tmp_path / "o"
    calls = []

    def process(b):
        calls.append(b.n_real)
        return [{"t": "x"}] * b.n_real

    run_keys(toy_shards, out, process, 4, {"lr": 0.1}, progress=False, items_per_shard=4)
    n = len(calls)
    s = run_keys(toy_shards, out, process, 4, {"lr": 0.1}, progress=False, items_per_shard=4)
    assert len(calls) == n and s.skipped_shards == 6 and s.skipped_samples == 21 and s.processed == 0
    before = _tars(out)
    with pytest.raises(ConfigMismatch, match=r"lr: 0\.1 → 0\.2"):  # the refusal names what changed
        run_keys(toy_shards, out, process, 4, {"lr": 0.2}, progress=False, items_per_shard=4)
    with pytest.raises(ConfigMismatch, match=r"new_key: \(absent\) → 'x'"):
        run_keys(toy_shards, out, process, 4, {"lr": 0.1, "new_key": "x"}, progress=False, items_per_shard=4)
    assert _tars(out) == before and len(calls) == n
    (out / "o-000002.tar").unlink()  # a committed shard whose file vanished is redone
    s = run_keys(toy_shards, out, process, 4, {"lr": 0.2}, force=True, progress=False, items_per_shard=4)
    assert s.committed_shards == 1 and s.skipped_shards == 5


def test_two_inputs_joined_by_key(toy_shards, tmp_path):
    cap = tmp_path / "captions"
    run_keys(toy_shards, cap, lambda b: [{"caption": f"a photo of {s['meta']['label_name']}"}
                                          for s in b.samples[:b.n_real]], 4, {}, progress=False)
    seen = {}

    def process(b):
        for s in b.samples[:b.n_real]:
            seen[s["__key__"]] = (s["caption"], s["meta"]["label_name"], s["image"].shape)
        return [{"ok": "1"}] * b.n_real

    s = run_keys([toy_shards, cap], tmp_path / "joined", process, 4, {}, resolution=8, progress=False)
    assert s.processed == 21 and len(seen) == 21
    assert all(c == f"a photo of {n}" and shape == (8, 8, 3) for c, n, shape in seen.values())


def test_sigterm_discards_open_shard_and_keeps_committed(toy_shards, tmp_path):
    out = tmp_path / "o"
    calls = []

    def process(b):
        calls.append(b.shard)
        if len(calls) == 5:  # mid unit 2 (batch 2: units of 4 take 2 calls each)
            os.kill(os.getpid(), signal.SIGTERM)
        return [{"t": "x"}] * b.n_real

    s = run_keys(toy_shards, out, process, 2, {}, progress=False, items_per_shard=4)
    assert s.interrupted and s.exit_code == EXIT_REQUEUE
    assert sorted(ShardSet.load(out).records) == [0, 1]
    assert not list(out.glob("*.partial")) and not (out / "o-000002.tar").exists()
    s = run_keys(toy_shards, out, process, 2, {}, progress=False, items_per_shard=4)
    assert s.skipped_shards == 2 and s.committed_shards == 4 and not s.interrupted


def test_rank_world_from_env(monkeypatch):
    from digin.shards.dist import rank_world
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"):
        monkeypatch.delenv(k, raising=False)
    assert rank_world() == (0, 1, 0)
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    assert rank_world() == (5, 8, 1)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert rank_world() == (3, 4, 3)


def test_shard_assignment_is_a_partition():
    from digin.shards.reader import assign_shards
    rng = np.random.default_rng(0)
    for _ in range(200):
        n, world, nw = int(rng.integers(0, 50)), int(rng.integers(1, 9)), int(rng.integers(1, 5))
        pool = sorted(rng.choice(100, size=n, replace=False).tolist())
        owned = [i for r in range(world) for w in range(nw) for i in assign_shards(pool, r, world, w, nw)]
        assert sorted(owned) == pool


def test_repeated_oom_shrinks_again_without_losing_samples(shards_2x40, tmp_path):
    ref = tmp_path / "ref"
    run_keys(shards_2x40, ref, process_fn(), 8, {}, resolution=16, progress=False)
    calls, inner = [], process_fn()

    def flaky(b):
        calls.append(len(b))
        if len(calls) in (3, 4):  # 8 fails, then its first half at 4 fails too -> 2
            raise torch.cuda.OutOfMemoryError("injected")
        return inner(b)

    s = run_keys(shards_2x40, tmp_path / "oom", flaky, 8, {}, resolution=16, progress=False)
    assert s.oom_retries == 2 and s.final_batch_size == 2 and s.processed == 80
    assert calls[:4] == [8, 8, 8, 4] and set(calls[4:]) == {2} and len(calls) == 4 + 64 // 2
    assert _tars(tmp_path / "oom") == _tars(ref)


def test_progress_is_plain_lines_when_not_a_tty():
    import io
    from digin.shards.progress import Progress
    buf = io.StringIO()
    p = Progress(10, "stage r0", every_s=0.0, file=buf)
    for _ in range(5):
        p.update(2)
    p.close()
    lines = buf.getvalue().splitlines()
    assert "Z [stage r0] 2/10 (20.0%)" in lines[0] and "Z [stage r0] 10/10 (100.0%)" in lines[-1]
    assert lines[0][:4].isdigit() and "ETA" in lines[0]  # UTC timestamp first, ETA last
    assert "\r" not in buf.getvalue() and len(lines) == 5


def test_config_differences_name_nested_added_and_removed_keys():
    from digin.shards.manifest import config_differences

    old = {"a": 1, "opt": {"lr": 0.1, "steps": 3}, "gone": True}
    new = {"a": 1, "opt": {"lr": 0.2, "steps": 3}, "added": [1]}
    assert config_differences(old, new) == ["added: (absent) → [1]", "gone: True → (absent)", "opt.lr: 0.1 → 0.2"]
    assert config_differences(old, old) == []
    assert len(config_differences({f"k{i}": i for i in range(20)}, {}, limit=5)) == 5


def test_start_event_records_the_environment(toy_shards, tmp_path):
    import json

    import torch

    s = run_keys(toy_shards, tmp_path / "env", lambda b: [{"t": "x"}] * b.n_real, 4, {}, progress=False,
                  rank=0, world=6, device="cpu")
    start = next(e for e in map(json.loads, open(s.log_path)) if e["event"] == "start")
    env = start["env"]
    assert env["packages"]["torch"] == torch.__version__.split("+")[0] or env["packages"]["torch"] == torch.__version__
    assert env["packages"]["digin"] and env["torch_threads"] == torch.get_num_threads() and env["host"]
    assert env["digin_git"] is None or len(env["digin_git"].split("+")[0]) == 40  # a commit sha when run from git
