"""Errors a user can act on: bad input, configuration or environment, a refused run, a full disk.

The CLI prints such an error as one line on stderr (what is wrong and what to do) and exits non-zero; the
traceback goes to the rank's log file when the run had one. Any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import errno


class UserError(Exception):
    """An expected stop caused by the input, the configuration or the environment, not by a bug."""


class ConfigError(UserError, ValueError):
    """A config value, or an environment variable the run depends on, outside what the task accepts."""


# OSErrors that say something about the machine or the paths given, never about the code. Every disk limit is
# one: a full disk (ENOSPC), a quota (EDQUOT), a file-size limit (EFBIG: ulimit -f, or the file system's maximum).
_ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS,
                                 errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.EIO, errno.EMFILE,
                                 errno.ENFILE, errno.ENAMETOOLONG, errno.ESTALE})

_HINTS = {
    errno.ENOSPC: "free disk space (or point out= elsewhere), then run the same command again: committed shards "
                  "are kept",
    errno.EDQUOT: "raise the quota or free space, then run the same command again: committed shards are kept",
    errno.EFBIG: "a file-size limit was hit (ulimit -f, or the file system's largest file): raise it or use a "
                 "smaller items_per_shard, then run the same command again: committed shards are kept",
    errno.EACCES: "check the permissions of that path",
    errno.EPERM: "check the permissions of that path",
    errno.EROFS: "that file system is read-only; choose another folder",
    errno.ENOENT: "check the path",
}


def is_expected(e: BaseException) -> bool:
    """Whether `e` is an expected stop (one line, no traceback) rather than a bug."""
    if isinstance(e, (UserError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return True  # (these are often raised with a message only, without an errno)
    return isinstance(e, OSError) and e.errno in _ENVIRONMENT_ERRNOS


def one_line(task: str, e: BaseException) -> str:
    """`digin <task>: <Type>: <message>[; hint][ (traceback: <log>)]` on a single line."""
    msg = " ".join(str(e).split()) or repr(e)
    hint = _HINTS.get(getattr(e, "errno", None)) if isinstance(e, OSError) else None
    where = getattr(e, "digin_log", None)
    return (f"digin {task}: {type(e).__name__}: {msg}" + (f"; {hint}" if hint else "")
            + (f" (traceback in {where})" if where else ""))
