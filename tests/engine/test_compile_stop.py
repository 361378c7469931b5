"""SIGTERM during a slow (cold) compile stops the rank within seconds with exit code 75, keeping what was committed
(issue 32): the compile runs inside digin.shards.interrupt.urgent."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from digin.shards.manifest import ShardSet
from tests.shards.test_lock_budget import make_input

SCRIPT = Path(__file__).with_name("compile_stop_script.py")


def test_sigterm_during_a_slow_compile_exits_75_within_seconds(tmp_path):
    inp = make_input(tmp_path / "in", 2, 2)
    out, started = tmp_path / "out", tmp_path / "compiling"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(inp), str(out), str(started)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not started.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0].decode()[-2000:]
            time.sleep(0.05)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        log = proc.communicate(timeout=30)[0].decode()
        waited = time.monotonic() - t0
    finally:
        if proc.poll() is None:  # still compiling: the signal was not acted on
            proc.kill()
            proc.wait()
    assert proc.returncode == 75, log[-2000:]
    assert waited < 15, waited  # the compile alone would take 120 s
    assert "Traceback" not in log
    ss = ShardSet.load(out)  # unit 0 committed before the signal: kept; unit 1 (its batch was compiling): not
    assert sorted(ss.records) == [0] and not list(out.glob("*.partial")) and not list((out / "locks").glob("*"))
    done = subprocess.run([sys.executable, str(SCRIPT), str(inp), str(out), str(started), "fast"], env=env,
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stdout.decode()[-2000:] + done.stderr.decode()[-2000:]
    assert sorted(ShardSet.load(out).records) == [0, 1]


def test_urgent_runs_the_previous_handler_then_raises_once_and_restores_it():
    import pytest

    from digin.shards.interrupt import Interrupted, urgent

    seen = []
    old = signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append(signum))
    try:
        with pytest.raises(Interrupted) as e:
            with urgent("a test"):
                os.kill(os.getpid(), signal.SIGUSR1)
                time.sleep(5)  # interrupted at once
        assert e.value.code == 75 and "SIGUSR1 during a test" in str(e.value) and seen == [signal.SIGUSR1]
        os.kill(os.getpid(), signal.SIGUSR1)  # outside: only the previous handler again
        time.sleep(0.01)
        assert seen == [signal.SIGUSR1] * 2
    finally:
        signal.signal(signal.SIGUSR1, old)
