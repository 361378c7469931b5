"""Is the process that left a file (a lock, a temporary manifest) still running? Only provable answers count."""
from __future__ import annotations

import os
import socket
from pathlib import Path


def this_host() -> str:
    return socket.gethostname()


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host; a zombie (dead, not yet reaped) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by another user
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[:1] != ["Z"]  # comm (in parentheses) may itself hold ")"


def gone_on_this_host(host: str | None, pid) -> bool:
    """True only when `host` is this machine and `pid` is not running here (a pid on another host proves nothing)."""
    return host == this_host() and isinstance(pid, int) and pid > 0 and not pid_alive(pid)
