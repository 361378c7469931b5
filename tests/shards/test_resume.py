"""kill -9 at random points of a multi-shard stage, then resume: outputs byte-identical to an uninterrupted run."""
import os
import random
import signal
import subprocess
import time
from collections import Counter

import pytest

from digin.shards.manifest import ShardSet
from digin.shards.reader import iter_samples

from .conftest import stage_cmd
from .stage_script import main as stage_main


def _outputs(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tar"))}


@pytest.fixture(scope="module")
def reference(toy_shards, tmp_path_factory):
    ref = tmp_path_factory.mktemp("ref") / "stage"
    assert stage_main([toy_shards, ref, 2, 0]) == 0
    assert len(_outputs(ref)) == 6
    return ref


@pytest.mark.parametrize("trial", range(5))
def test_kill9_then_resume_is_byte_identical(toy_shards, reference, tmp_path, trial):
    ref, reference = reference, _outputs(reference)
    calls = tmp_path / "calls"
    calls.mkdir()

    out = tmp_path / "run" / "stage"
    started = tmp_path / "run" / "stage.started"
    rng = random.Random(1000 + trial)
    # 12 batches × 40 ms ≈ 0.5 s of work; kill uniformly inside it (after the first process() call)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(stage_cmd(toy_shards, out, 2, trial % 2, 0.04, calls), env=env)
    t_end = time.monotonic() + 60
    while not started.exists() and proc.poll() is None and time.monotonic() < t_end:
        time.sleep(0.005)
    assert started.exists(), "stage never started"
    time.sleep(rng.uniform(0.0, 0.45))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    committed_before = sorted(ShardSet.load(out).records)
    assert len(committed_before) < 6, "killed too late to test anything"

    assert stage_main([toy_shards, out, 2, 0, 0, calls]) == 0  # resume
    assert _outputs(out) == reference
    assert not list(out.glob("*.partial"))
    keys = [s["__key__"] for s in iter_samples(out)]
    assert len(keys) == 21 and Counter(keys).most_common(1)[0][1] == 1
    assert sorted(keys) == sorted(s["__key__"] for s in iter_samples(toy_shards))
    rec_ref, rec_out = ShardSet.load(ref).records, ShardSet.load(out).records
    assert all(rec_out[i]["sha256"] == rec_ref[i]["sha256"] for i in range(6))
    # shards committed before the kill were not processed again by the resume
    executed = Counter(k for p in calls.iterdir() for k in p.read_text().split())
    kept = [k for i in committed_before for k in rec_ref[i]["keys"]]
    assert all(executed[k] == 1 for k in kept)
