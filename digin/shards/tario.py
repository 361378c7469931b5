"""Deterministic tar writing and safe in-memory tar reading (input tars are never extracted to disk)."""
from __future__ import annotations

import io
import tarfile

from digin.shards.naming import BadName, parse_member_name

MTIME = 0  # fixed member mtime: reruns produce byte-identical tars
MAX_MEMBER_BYTES = 256 << 20


class TarStreamWriter:
    """Appends members to an open binary file with fixed metadata (mtime, owner, mode)."""

    def __init__(self, fileobj):
        self._tar = tarfile.open(fileobj=fileobj, mode="w", format=tarfile.PAX_FORMAT)

    def add(self, name: str, data: bytes):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = MTIME
        info.mode = 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self._tar.addfile(info, io.BytesIO(data))

    def close(self):
        self._tar.close()


def iter_members(data: bytes):
    """Yield (key, field, ext, bytes) or ("!bad", raw_name, reason, None) for members we refuse to interpret.

    Raises tarfile.TarError for a structurally broken archive (the caller turns that into a shard error).
    """
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for info in tar:
            if not info.isreg():
                yield "!bad", info.name, "not_a_regular_file", None
                continue
            try:
                key, field, ext = parse_member_name(info.name)
            except BadName:
                yield "!bad", info.name, "bad_member_name", None
                continue
            if info.size > MAX_MEMBER_BYTES:
                yield "!bad", info.name, "member_too_large", None
                continue
            f = tar.extractfile(info)  # in-memory read of this member only
            yield key, field, ext, f.read()
