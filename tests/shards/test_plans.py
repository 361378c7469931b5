"""Work plans: keyed reads, unit cuts, static / dynamic schedules, byte-identical results whatever runs them,
kill + resume, a dead rank's unit retaken, legacy sets, and the bad-input refusals."""
import json
import os
import random
import signal
import subprocess
import time
from collections import Counter

import pytest

from digin.errors import ConfigError
from digin.shards.claims import ClaimBoard, claim_path
from digin.shards.manifest import COMMITS, CommitExists, ConfigMismatch, ShardSet, commit_path
from digin.shards.plan import Item, Plan, balance, cut_units
from digin.shards.runner import RunOptions, StageSpec, run_stage
from digin.stages.verify import verify_tree
from digin.shards.writer import ShardWriter

from .conftest import stage_cmd
from .stage_script import process_fn, run_keys


def members(folder) -> dict:
    """key → {field: member bytes} of every committed sample of a shard set (layout-free comparison)."""
    from digin.shards.reader import iter_shard

    ss = ShardSet.load(folder)
    return {s["__key__"]: {k: v for k, v in s.items() if not k.startswith("__")}
            for i in ss.indices() for s in iter_shard(ss, i, decode=lambda e, b, r=None, c=True: bytes(b))}


@pytest.fixture(scope="module")
def keyed_set(tmp_path_factory):
    """30 images of 3 classes, 7 per input shard."""
    from digin.shards.convert import convert
    from digin.shards.synthetic import make_image_folder

    root = tmp_path_factory.mktemp("keyed")
    make_image_folder(root / "src", classes=3, n_per_class=10, size=24, seed=4)
    return convert("imagefolder", root / "src", "all", root / "in", name="kset", samples_per_shard=7,
                   progress=False).dir


# ---------------------------------------------------------------------------------------------- plans
def test_units_are_contiguous_cost_balanced_and_world_independent():
    assert cut_units([1.0] * 7, 3) == [(0, 3), (3, 6), (6, 7)]
    assert cut_units([2, 2, 5, 1, 1, 1], 4) == [(0, 2), (2, 3), (3, 6)]  # an item above capacity is its own unit
    items = [Item(f"k/{i:04d}") for i in range(2860)]
    plan = Plan("t", items)  # auto: about 1,000 units
    assert plan.resolved_items_per_shard == 3 and plan.num_units == 954
    for world, limit in ((8, 1.05), (32, 1.05), (64, 1.05), (256, 1.15)):
        b = balance(plan.unit_costs(), [1.0] * len(items), world)
        assert b["busiest_over_mean"] <= limit, (world, b)
    assert balance([1.0] * 14, [1.0] * 14, 64)["best_possible"] == pytest.approx(64 / 14)  # 14 items, 64 ranks
    assert balance([1.0] * 52, [1.0] * 52, 8)["best_possible"] == pytest.approx(7 / 6.5)  # 52 on 8: 7 on one
    with pytest.raises(ConfigError, match="items_per_shard=0 is out of range"):
        Plan("t", items, items_per_shard=0)
    with pytest.raises(ConfigError, match="twice"):
        Plan("t", [Item("a"), Item("a")])
    assert Plan("t", items, 5).hash() != plan.hash() and Plan("t", items).hash() == plan.hash()


def test_keyed_reads_match_whole_shard_reads_and_planning_reads_only_manifests(keyed_set, tmp_path):
    from digin.shards.iocount import io_counters
    from digin.shards.keyed import KeyIndex, read_keys
    from digin.shards.reader import iter_shard

    ss = ShardSet.load(keyed_set)
    rec = ss.records[1]
    assert len(rec["spans"]) == len(rec["sample_sha256"]) == len(rec["labels"]) == rec["count"] == 7
    ki = KeyIndex(ss)
    want = [ki.where[k] for k in ki.keys()[9:12]]
    before = io_counters()
    got = read_keys(ss, want, 16)
    spent = io_counters()["samples"] - before["samples"]
    assert spent == sum(ss.records[i]["spans"][p][1] for i, p in want)  # exactly the three samples' spans
    whole = {s["__key__"]: s for s in iter_shard(ss, 1, 16)}
    for s in got.values():
        assert (s["image"] == whole[s["__key__"]]["image"]).all() and s["meta"] == whole[s["__key__"]]["meta"]

    # a stage's planning reads manifests only; then exactly the spans of its items' input samples
    out = tmp_path / "o"
    s = run_keys(keyed_set, out, process_fn(), 4, {}, resolution=16, progress=False, items_per_shard=5)
    start = next(e for e in map(json.loads, open(s.log_path)) if e["event"] == "start")
    assert start["io_before_first_batch"]["manifest"] > 0
    all_spans = sum(n for r in ss.records.values() for _, n in r["spans"])
    assert s.io["samples"] - start["io_before_first_batch"]["samples"] == all_spans
    assert s.io["shards"] == start["io_before_first_batch"]["shards"]  # no whole-shard read


@pytest.mark.parametrize("schedule", ["static", "dynamic"])
def test_results_are_byte_identical_whatever_world_size_and_unit_size(keyed_set, tmp_path, schedule):
    ref = None
    for world in (1, 2, 3):
        for ips in (1, 3, 8):
            out = tmp_path / f"w{world}-u{ips}"
            for rank in range(world):
                run_keys(keyed_set, out, process_fn(), 4, {"s": 1}, resolution=16, progress=False,
                         items_per_shard=ips, rank=rank, world=world, schedule=schedule, lease_s=4, heartbeat_s=1)
            m = members(out)
            assert len(m) == 30
            ref = ref or m
            assert m == ref, (world, ips)
            ss = ShardSet.load(out)
            assert len(ss.records) == ss.meta["num_shards"] == -(-30 // ips)
            plan = json.loads((out / "plan.json").read_text())
            assert [r["keys"] for _, r in sorted(ss.records.items())] == [u["keys"] for u in plan["units"]]
            assert verify_tree(out).ok


def test_static_units_go_round_robin_and_a_rerun_with_another_world_size_resumes(keyed_set, tmp_path):
    out = tmp_path / "o"
    s0 = run_keys(keyed_set, out, process_fn(), 4, {}, resolution=16, progress=False, items_per_shard=4,
                  rank=0, world=3)
    assert s0.committed_shards == 3 and sorted(ShardSet.load(out).records) == [0, 3, 6]
    s = run_keys(keyed_set, out, process_fn(), 4, {}, resolution=16, progress=False, items_per_shard=4)
    assert (s.skipped_shards, s.committed_shards) == (3, 5)  # the same units, whatever the world size
    with pytest.raises(ConfigMismatch, match="another work plan.*items_per_shard 4 → 5"):
        run_keys(keyed_set, out, process_fn(), 4, {}, resolution=16, progress=False, items_per_shard=5)


def test_verify_checks_units_against_the_plan(keyed_set, tmp_path):
    out = tmp_path / "o"
    run_keys(keyed_set, out, process_fn(), 4, {}, resolution=16, progress=False, items_per_shard=10)
    plan = json.loads((out / "plan.json").read_text())
    plan["units"][1]["keys"][0] = "kset/all/99999"
    (out / "plan.json").write_text(json.dumps(plan))
    problems = verify_tree(out).problems
    assert [(p["kind"], "unit 1 " in p["detail"]) for p in problems] == [("plan", True)]


# ---------------------------------------------------------------------------------------------- joins
def test_a_join_whose_input_lacks_the_key_rejects_that_item_only(keyed_set, tmp_path):
    side = tmp_path / "side"  # another stage's output over a subset of the keys
    keys = ShardSet.load(keyed_set).records[0]["keys"][:5]
    run_keys(keyed_set, side, lambda b: [{"caption": f"cap {k}"} for k in b.keys[:b.n_real]], 4, {},
             keys=keys, progress=False)
    seen = []

    def process(b):
        seen.extend((s["__key__"], s["caption"]) for s in b.samples[:b.n_real])
        return [{"ok": "1"}] * b.n_real

    spec = StageSpec.every_key("j", [("images", keyed_set), ("captions", side)], {}, process, items_per_shard=10,
                               resolution=16)
    assert spec.plan.missing == {"captions": 25}
    s = run_stage(spec, RunOptions(tmp_path / "joined", batch_size=4, progress=False))
    assert s.processed == 5 and s.rejected == 25 and s.missing_joins == 25 and s.exit_code == 0
    assert sorted(seen) == sorted((k, f"cap {k}") for k in keys)
    rejects = [r for rec in ShardSet.load(tmp_path / "joined").records.values() for r in rec["rejects"]]
    assert rejects[0]["reason"] == f"missing_in_input:captions:{ShardSet.load(keyed_set).records[0]['keys'][5]}"


def test_a_set_made_before_records_had_spans_still_works_and_digin_index_adds_them(keyed_set, tmp_path):
    import shutil

    from digin.cli import main

    old = tmp_path / "old"
    shutil.copytree(keyed_set, old)
    for p in (old / COMMITS).glob("*.json"):  # strip what records have carried since the work-plans redesign
        r = json.loads(p.read_text())
        for k in ("spans", "sample_sha256", "labels"):
            r.pop(k)
        p.write_text(json.dumps(r))
    m = json.loads((old / "manifest.json").read_text())
    for r in m.get("shards", []):
        for k in ("spans", "sample_sha256", "labels"):
            r.pop(k, None)
    (old / "manifest.json").write_text(json.dumps(m))
    run_keys(keyed_set, tmp_path / "new_out", process_fn(), 4, {}, resolution=16, progress=False)
    s = run_keys(old, tmp_path / "old_out", process_fn(), 4, {}, resolution=16, progress=False)
    assert s.io["shards"] > 0  # indexed on first use: each needed shard read whole once
    assert members(tmp_path / "old_out") == members(tmp_path / "new_out")
    assert main(["index", f"path={old}", "progress=false"]) == 0
    fresh, indexed = ShardSet.load(keyed_set), ShardSet.load(old)
    for i, r in fresh.records.items():
        assert {k: indexed.records[i][k] for k in ("spans", "sample_sha256", "labels")} == \
            {k: r[k] for k in ("spans", "sample_sha256", "labels")}


# ---------------------------------------------------------------------------------------------- dynamic schedule
def test_a_unit_is_committed_once_when_two_attempts_race(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    a = ShardWriter(out, 0, "t-000000.e0-a.tar", once=True)
    b = ShardWriter(out, 0, "t-000000.e1-b.tar", once=True)
    for w in (a, b):
        w.add("x/0", {"n": {"v": 1}})
    a.commit()
    with pytest.raises(CommitExists):
        b.commit()
    assert json.loads(commit_path(out, 0).read_text())["file"] == "t-000000.e0-a.tar"
    assert sorted(p.name for p in out.glob("*.tar")) == ["t-000000.e0-a.tar"]  # the loser removed its own file


def test_claims_expire_by_the_observer_clock_and_a_foreign_plan_is_refused(tmp_path):
    now = [0.0]
    holder = {"host": "elsewhere", "pid": 123, "rank": 0}
    a = ClaimBoard(tmp_path, "P", 2, holder, lease_s=10, heartbeat_s=1, poll_s=0, clock=lambda: now[0])
    b = ClaimBoard(tmp_path, "P", 2, {**holder, "rank": 1}, lease_s=10, heartbeat_s=1, poll_s=0,
                   clock=lambda: now[0])
    assert a.claim_next() == (0, 0) and b.claim_next() == (1, 0)
    assert b._expired(0, 0, claim_path(tmp_path, 0, 0)) is False  # first sight starts its clock
    now[0] = 9.0
    a.beat()  # a beat resets the observer's clock
    assert b._expired(0, 0, claim_path(tmp_path, 0, 0)) is False
    now[0] = 19.5
    assert b._expired(0, 0, claim_path(tmp_path, 0, 0)) is True
    assert b._try(0, 1) and a.lost(0) and not b.lost(0)
    (tmp_path / "claims" / "000001.e7.json").write_text(json.dumps({"unit": 1, "plan": "Q", "beat": 0}))
    with pytest.raises(ConfigMismatch, match="another work plan"):
        ClaimBoard(tmp_path, "P", 2, holder, lease_s=10, heartbeat_s=1, poll_s=0).claim_next()


def _wait_started(out, proc, timeout=120):
    t0 = time.time()
    while not (out.parent / (out.name + ".started")).exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout
        time.sleep(0.05)


def _committed_once(out, n_units):
    ss = ShardSet.load(out)
    assert sorted(ss.records) == list(range(n_units))
    tars = sorted(p.name for p in out.glob("*.tar"))
    assert tars == sorted(r["file"] for r in ss.records.values())  # no loser's or dead attempt's file is left
    assert not list(out.glob("*.partial"))
    return ss


def test_dynamic_run_with_a_rank_killed_finishes_every_unit_once(keyed_set, tmp_path):
    ref = tmp_path / "ref"
    run_keys(keyed_set, ref, process_fn(), 2, {"stage": "test", "resolution": 16}, resolution=16, progress=False,
             items_per_shard=3)
    out, calls = tmp_path / "o", tmp_path / "calls"
    calls.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "SLURM"))}
    procs = []
    for rank in (0, 1):
        e = {**env, "RANK": str(rank), "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen(stage_cmd(keyed_set, out, 2, 0, 0.3, calls, "dynamic", 3, 3), env=e,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    _wait_started(out, procs[0])
    time.sleep(1.0)
    procs[1].send_signal(signal.SIGKILL)  # rank 1 dies holding a claim (and its open unit)
    procs[1].wait()
    _, err = procs[0].communicate(timeout=240)
    assert procs[0].returncode == 0, err.decode()[-2000:]
    _committed_once(out, 10)
    assert members(out) == members(ref)
    executed = Counter(k for p in calls.iterdir() for k in p.read_text().split())
    assert set(executed) == set(members(ref))
    retaken = [json.loads(x) for p in (out / "logs").glob("rank0000-*.jsonl") for x in p.open()]
    assert any(e["event"] == "claim_retaken" for e in retaken)  # rank 0 took the dead rank's unit over


@pytest.mark.parametrize("schedule", ["static", "dynamic"])
def test_kill9_at_random_points_then_resume_is_byte_identical(keyed_set, tmp_path, schedule):
    ref = tmp_path / "ref"
    run_keys(keyed_set, ref, process_fn(), 2, {"stage": "test", "resolution": 16}, resolution=16, progress=False,
             items_per_shard=3)
    rng = random.Random(7 if schedule == "static" else 8)
    out = tmp_path / "o"
    for attempt in range(3):
        started = out.parent / (out.name + ".started")
        started.unlink(missing_ok=True)
        p = subprocess.Popen(stage_cmd(keyed_set, out, 2, 0, 0.1, "", schedule, 3, 3), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        try:
            _wait_started(out, p)
        except AssertionError:
            break  # nothing left to do: it finished before its first batch
        time.sleep(rng.uniform(0.0, 0.8))
        p.send_signal(signal.SIGKILL)
        p.wait()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(stage_cmd(keyed_set, out, 2, 0, 0, "", schedule, 3, 3), env=env, capture_output=True,
                       timeout=240)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    _committed_once(out, 10)
    assert members(out) == members(ref)


def test_an_output_folder_of_the_shard_aligned_format_is_not_resumed(keyed_set, tmp_path):
    out = tmp_path / "o"
    run_keys(keyed_set, out, process_fn(), 4, {}, resolution=16, progress=False)
    m = json.loads((out / "manifest.json").read_text())
    del m["plan"]  # what digin wrote before work plans
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ConfigMismatch, match="earlier digin, cut by input shard"):
        run_keys(keyed_set, out, process_fn(), 4, {}, resolution=16, progress=False)
