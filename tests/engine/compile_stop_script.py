"""A stage whose second batch meets a cold compile that takes two minutes (a backend that sleeps), run as a subprocess
by test_compile_stop.py. usage: compile_stop_script.py <inputs> <output> <started flag> [fast]"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from digin.engine.compile import CompileConfig, Compiled  # noqa: E402
from tests.shards.stage_script import run_keys  # noqa: E402


def main(inputs, output, started, fast=False):
    compiles = []

    def slow_backend(gm, example_inputs):
        compiles.append(1)
        if len(compiles) > 1 and not fast:  # the second graph: a cold compile
            Path(started).touch()
            time.sleep(120)
        return gm.forward

    def f(x):
        return (x * 2).sin()

    fn = Compiled(f, CompileConfig(backend=slow_backend), "f")

    def process(batch):
        fn(torch.zeros(batch.n_real + 2 * len(compiles)))  # a new shape per batch: a new graph to compile
        return [{"t": k} for k in batch.keys[:batch.n_real]]

    return run_keys(inputs, output, process, 2, {"stage": "t"}, name="t", progress=False).exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3], len(sys.argv) > 4))
