"""Per-sample byte spans of a tar shard: what a commit record lists so a sample is read by key with one seek
(digin.shards.keyed). The writer hashes each sample's span as its bytes go by; a tar made elsewhere (a foreign
webdataset tar, a shard written before records had spans) is scanned for them."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile

from digin.shards.manifest import ShardError
from digin.shards.naming import BadName
from digin.shards.tario import split_digin_name, split_foreign_name

SAMPLE_HASH_HEX = 32  # 128 bits of sha256 per sample: detection, not security (the shard's full sha256 is kept)
TAR_BLOCK = 512
END_OF_ARCHIVE = b"\0" * (2 * TAR_BLOCK)

# ---------------------------------------------------------------------------------------------- writing
class SpanHashes:
    """Per-sample sha256 over byte ranges of a stream, fed as the bytes go by (no second read of the shard).
    `begin(start)` before a sample is written and `end(stop)` after it (logical offsets; tarfile's stream mode
    buffers, so the bytes may reach `feed(pos, data)` before or after the span is closed)."""

    def __init__(self):
        self.pending: list[list] = []  # [start, end or None while the sample is being written, hasher]
        self.done: list[str] = []

    def begin(self, start: int) -> None:
        self.pending.append([start, None, hashlib.sha256()])

    def end(self, stop: int) -> None:
        self.pending[-1][1] = stop

    def feed(self, pos: int, data: bytes) -> None:
        stop = pos + len(data)
        while self.pending:
            s, e, h = self.pending[0]
            lo, hi = max(s, pos), stop if e is None else min(e, stop)
            if hi > lo:
                h.update(memoryview(data)[lo - pos:hi - pos])
            if e is not None and e <= stop:  # this sample's bytes are complete
                self.done.append(h.hexdigest()[:SAMPLE_HASH_HEX])
                self.pending.pop(0)
            else:
                break

    def finish(self) -> list[str]:
        if self.pending:  # a span past the end of the stream: the writer's bookkeeping is wrong
            raise RuntimeError(f"{len(self.pending)} sample span(s) not fully written")
        return list(self.done)


def label_of_fields(fields: dict):
    """The class of a sample about to be written: its `meta` field's `label` (dict, or pre-encoded JSON bytes)."""
    meta = fields.get("meta")
    if isinstance(meta, tuple) and len(meta) == 2 and meta[0] == "json":
        try:
            meta = json.loads(meta[1])
        except ValueError:
            return None
    if isinstance(meta, dict):
        y = meta.get("label")
        return y if isinstance(y, int) and not isinstance(y, bool) else None
    return None


# ---------------------------------------------------------------------------------------------- spans of a tar
def tar_spans(data: bytes, naming: str) -> list[tuple[int, int]]:
    """[(offset, size)] of each sample group of a tar, in the order `tario.group_members` returns the groups (a
    group = consecutive members of one key; a refused member name is a group of its own). Extended headers (pax,
    GNU long names) belong to their member: the span starts at the first header of its first member."""
    split = split_digin_name if naming == "digin" else split_foreign_name
    spans: list[list[int]] = []
    current = None
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
            for m in tf:
                if not m.isreg():
                    continue  # links, folders: skipped by the reader too (never part of a sample)
                end = m.offset_data + -(-m.size // TAR_BLOCK) * TAR_BLOCK
                try:
                    key = split(m.name)[0]
                except BadName:
                    key = None  # its own group
                if key is not None and key == current and spans:
                    spans[-1][1] = end
                else:
                    spans.append([m.offset, end])
                current = key
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ShardError(f"unreadable tar ({e})") from None
    return [(s, e - s) for s, e in spans]
