import os

# Must precede any torch / @triton.jit import: 1 thread (shared 2-core box), Triton in interpreter mode.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


# The longest modules first (measured: toy science ~8 min, the demos ~5 min, the compiled fast paths ~4 min on one
# core): with `-n 2 --dist loadfile` each starts on its own worker at once instead of lengthening the tail.
LONG_MODULES = ("tests/toy/test_science.py", "tests/tasks/test_demo.py", "tests/tasks/test_fast_path.py",
                "tests/test_bench.py", "tests/engine/test_uvce_compiled.py")


def _long_first(item) -> int:
    path = item.nodeid.split("::")[0]
    return LONG_MODULES.index(path) if path in LONG_MODULES else len(LONG_MODULES)


def pytest_collection_modifyitems(config, items):
    items.sort(key=_long_first)  # stable: the order inside a module is kept
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on a GPU machine: pytest -m gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _restore_kernel_switch():
    """Preparing a model for a preset flips the process-wide fused-kernel switch (the reference preset turns it off);
    every test starts from the switch as the environment sets it."""
    from digin.kernels import switch

    before = dict(switch._ENABLED)
    yield
    switch._ENABLED.update(before)


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory):
    """A tiny SD-1.x model with random weights, saved with save_pretrained (loaded back via load_sd)."""
    from digin.engine.models import build_tiny_sd

    folder = tmp_path_factory.mktemp("tiny_sd")
    build_tiny_sd(seed=0, folder=folder)
    return folder


@pytest.fixture(scope="session")
def tiny_sd(tiny_sd_dir):
    from digin.engine.models import load_sd

    return load_sd(tiny_sd_dir, dtype="fp32")


class _FakeWandbRun:
    def __init__(self, **kw):
        self.init, self.logged, self.summary, self.finished = kw, [], {}, False

    def log(self, row, step=None):
        self.logged.append((step, dict(row)))

    def finish(self):
        self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch):
    """A recorder in place of the wandb module (no network in tests): returns the list of runs it made."""
    import sys
    import types

    runs = []
    mod = types.ModuleType("wandb")

    def init(**kw):
        runs.append(_FakeWandbRun(**kw))
        return runs[-1]

    mod.init = init
    monkeypatch.setitem(sys.modules, "wandb", mod)
    return runs
