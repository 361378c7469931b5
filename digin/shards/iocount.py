"""Bytes this process read from shard sets, by kind: "manifest" (manifests and commit records), "samples" (spans
read by key), "shards" (whole shards: sets indexed on first use, `pipe:` URLs). Lets the runner's log, and a test,
show that planning reads manifests only."""
from __future__ import annotations

import threading

_IO = {"manifest": 0, "samples": 0, "shards": 0}
_LOCK = threading.Lock()


def count_read(kind: str, n: int) -> None:
    with _LOCK:
        _IO[kind] = _IO.get(kind, 0) + int(n)


def io_counters() -> dict:
    with _LOCK:
        return dict(_IO)
