"""Progress people and machines can watch: timestamped lines with the whole set's progress, rate and ETA on every
rank, progress / heartbeat events in every rank's log, and `digin status` over a running, dead or finished stage."""
import json
import signal
import subprocess
import time

from digin.shards.progress import report_activity

from .conftest import stage_cmd
from .stage_script import process_fn, run_keys
from .test_plans import keyed_set  # noqa: F401  (fixture)


def _events(out, kind):
    return [e for p in sorted((out / "logs").glob("*.jsonl")) for e in map(json.loads, p.open()) if e["event"] == kind]


def test_every_rank_logs_progress_lines_and_events_with_the_whole_set(keyed_set, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "o"
    for rank in (0, 1):
        run_keys(keyed_set, out, process_fn(), 4, {}, resolution=16, items_per_shard=3, rank=rank, world=2,
                 progress_s=0.0)
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if "Z [o r" in x]
    assert any("[o r0] set" in x for x in lines) and any("[o r1] set" in x for x in lines)
    last = [x for x in lines if "[o r1]" in x][-1]
    assert last[:4].isdigit() and "set 30/30 items (100.0%, 10/10 units, ok 30)" in last and "ETA" in last
    prog = _events(out, "progress")
    assert {e["rank"] for e in prog} == {0, 1} and prog[-1]["set_items_done"] == 30
    assert all(e["set_items"] == 30 and e["set_units"] == 10 for e in prog)


def test_a_long_batch_sends_heartbeats_that_say_where_it_is(keyed_set, tmp_path, capsys):  # noqa: F811
    inner = process_fn()

    def slow(b):
        for k in range(4):
            report_activity("sgd", k + 1, 4)
            time.sleep(0.3)
        return inner(b)

    out = tmp_path / "o"
    run_keys(keyed_set, out, slow, 30, {}, resolution=16, items_per_shard=30, progress_s=0.25)
    beats = _events(out, "heartbeat")
    assert beats and beats[-1]["what"] == "sgd" and 1 <= beats[-1]["k"] <= 4 and beats[-1]["of"] == 4
    assert "working on a batch for" in capsys.readouterr().err


def test_status_reports_finished_dead_and_remaining_work(keyed_set, tmp_path, capsys):  # noqa: F811
    from digin.cli import main

    out = tmp_path / "o"
    p = subprocess.Popen(stage_cmd(keyed_set, out, 2, 0, 0.3, "", "static", 3), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    t0 = time.time()
    while not (tmp_path / "o.started").exists():
        assert p.poll() is None and time.time() - t0 < 120
        time.sleep(0.05)
    time.sleep(1.0)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert main(["status", f"out={out}", "json=true"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["items"] == 30 and s["units"] == 10 and not s["complete"] and s["units_done"] < 10
    assert s["ranks"]["0"]["state"] == "dead"  # its lock names a pid that is gone on this host
    r = subprocess.run(stage_cmd(keyed_set, out, 2, 0, 0, "", "static", 3), capture_output=True, timeout=240)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert main(["status", f"out={out}"]) == 0
    text = capsys.readouterr().out
    assert "complete" in text.splitlines()[0] and "not complete" not in text
    assert "units 10/10, items 30/30 (100.0%)" in text and "rank 0: finished" in text
    assert main(["status", f"out={tmp_path}"]) == 0  # a task folder holding one stage finds it
    assert main(["status", f"out={tmp_path / 'nowhere'}"]) == 1
