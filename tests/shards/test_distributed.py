"""torchrun --nproc-per-node 2 over 5 shards with 2 dataloader workers each: every key processed exactly once."""
import os
import subprocess
import sys
from collections import Counter

from digin.shards.convert import convert
from digin.shards.manifest import ShardSet
from digin.shards.reader import iter_samples
from digin.shards.synthetic import make_image_folder

from .conftest import HERE


def test_torchrun_two_ranks_two_workers_exactly_once(tmp_path):
    make_image_folder(tmp_path / "src", classes=3, n_per_class=5, size=20, seed=2)
    ss = convert("imagefolder", tmp_path / "src", "all", tmp_path / "in", samples_per_shard=3, progress=False)
    assert len(ss.records) == 5
    calls = tmp_path / "calls"
    calls.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM"))}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "0",
           str(HERE / "stage_script.py"), str(ss.dir), str(tmp_path / "out"), "2", "2", "0", str(calls)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    executed = Counter()
    per_rank = Counter()
    for p in calls.iterdir():
        keys = p.read_text().split()
        executed.update(keys)
        per_rank[p.name.split("-")[0]] += len(keys)
    expected = [s["__key__"] for s in iter_samples(ss.dir)]
    assert sorted(executed) == sorted(expected) and set(executed.values()) == {1}
    assert set(per_rank) == {"rank0", "rank1"}  # both ranks worked: units (= input shards) 0,2,4 vs 1,3
    assert per_rank["rank0"] == 9 and per_rank["rank1"] == 6
    out = ShardSet.load(tmp_path / "out")
    assert sorted(out.records) == [0, 1, 2, 3, 4]
    got = [s["__key__"] for s in iter_samples(out.dir)]
    assert got == expected  # same keys, same order, shard i -> shard i
    assert "rank 1: processed 6" in r.stderr and "rank 0: processed 9" in r.stderr
