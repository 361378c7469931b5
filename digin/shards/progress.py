"""Progress on rank 0: tqdm on a TTY, one plain line every `every_s` seconds otherwise (log files, Slurm)."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, desc: str, enabled: bool = True, every_s: float = 30.0, file=None,
                 unit: str = "img"):
        self.total, self.desc, self.enabled, self.every_s = total, desc, enabled, every_s
        self.file = file or sys.stderr
        self.n, self.t0, self.t_last = 0, time.monotonic(), 0.0
        self._bar = None
        self._done = False
        if enabled and hasattr(self.file, "isatty") and self.file.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, file=self.file, unit=unit, dynamic_ncols=True)

    def update(self, n: int):
        self.n += n
        if not self.enabled or n == 0:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self.t_last >= self.every_s or (self.n >= self.total and not self._done):
            self._done = self.n >= self.total
            self.t_last = now
            rate = self.n / max(now - self.t0, 1e-9)
            pct = 100.0 * self.n / max(self.total, 1)
            print(f"[{self.desc}] {self.n}/{self.total} ({pct:.1f}%) {rate:.1f}/s", file=self.file, flush=True)

    def close(self):
        if self._bar is not None:
            self._bar.close()
