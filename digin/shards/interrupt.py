"""SIGTERM / SIGUSR1 during a long call (a cold torch.compile, a long optimisation batch): stop within moments.

The runner's handler only sets a flag that its loop checks between batches, so a signal that arrives during a cold
inductor compile (a minute or more) or a long batch waits for it, and can outlive a Slurm `--signal=USR1@180` requeue
window. Inside `urgent()` the same signals first run the handler that was installed before (the runner's flag),
then raise `Interrupted`: a SystemExit with code 75 (EX_TEMPFAIL, the runner's requeue code). Being a SystemExit it
passes every `except Exception` on its way (the compile fallback, the OOM retry); the runner's `finally` blocks
discard the open units and release the run lock, so nothing committed is lost, and an uncaught Interrupted ends the
process with exit code 75 and no traceback. A runner that catches it reports an interrupted run (summary line,
`interrupted` log event) like a signal between batches. Only one Interrupted is raised per block; later signals
only run the earlier handler. Outside the main thread `urgent()` does nothing (signals are delivered there).
"""
from __future__ import annotations

import contextlib
import signal
import threading

EXIT_REQUEUE = 75
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Interrupted(SystemExit):
    """A stop signal arrived during an urgent() block; exits the process with 75 unless a runner catches it."""

    def __init__(self, signum: int, what: str = ""):
        super().__init__(EXIT_REQUEUE)
        self.signum, self.what = signum, what

    def __str__(self) -> str:
        return f"{signal.Signals(self.signum).name} during {self.what or 'a long call'}: stopping (exit code 75)"


@contextlib.contextmanager
def urgent(what: str = ""):
    """SIGTERM/SIGUSR1 inside this block raise Interrupted (after running the handler installed before)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = []

    def handle(signum, frame):
        before = previous.get(signum)
        if callable(before):
            before(signum, frame)
        elif before == signal.SIG_IGN:
            return  # the process chose to ignore it
        if not fired:
            fired.append(signum)
            raise Interrupted(signum, what)

    previous = {sig: signal.signal(sig, handle) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h if h is not None else signal.SIG_DFL)
