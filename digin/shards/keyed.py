"""Keyed shard sets: every commit record lists its samples' byte spans, so a stage reads a sample by key with one
seek instead of reading the whole shard.

A commit record (and an indexed foreign tar's record) carries, parallel to `keys`:
  spans          [[offset, size], ...]  the sample's tar members (headers + padded data) in the shard file
  sample_sha256  [hex, ...]             sha256 of those bytes (first 32 hex digits): a by-key read is checked
  labels         [int | null, ...]      the sample's class (`meta.label`), when the samples carry one
so a stage plans its work from the records alone (keys and labels, no sample read) and joins its inputs by key.
Sets written before records had spans stay readable: their shards are indexed on first use (each process reads a
needed shard whole once, checked against its sha256, and keeps the spans in memory), or once for all with
`digin index inputs=<folder>` (rewrites the commit records with spans and labels).

Local files are read with a seek per sample; other URLs (`pipe:` commands, object stores) cannot seek, so a
needed foreign tar is streamed whole once per work unit and checked against its record's sha256.
"""
from __future__ import annotations

import errno
import hashlib
import mmap
import os
import re
from urllib.parse import urlparse

from digin.shards.decode import decode_json, decode_member
from digin.shards.iocount import count_read
from digin.shards.manifest import ShardError, ShardSet, sha256_bytes
from digin.shards.naming import BadName, parse_member_name
from digin.shards.reader import group_shard_members, iter_shard, sample_from_group
from digin.shards.spans import END_OF_ARCHIVE, SAMPLE_HASH_HEX, TAR_BLOCK, tar_spans
from digin.shards.tario import COMPRESSED_MAGIC, MAX_MEMBER_BYTES


def _legacy_spans(ss: ShardSet, index: int, check_hash: bool) -> tuple[list, list]:
    """(spans, sample hashes) of a record written before records had them: the shard is read whole (checked
    against its record), once per process."""
    cache = ss.__dict__.setdefault("_legacy_spans", {})
    if index not in cache:
        data = ss.read_verified(index, check_hash)
        count_read("shards", len(data))
        naming = "webdataset" if "webdataset" in ss.meta else "digin"
        spans = tar_spans(data, naming)
        hashes = [sha256_bytes(data[o:o + n])[:SAMPLE_HASH_HEX] for o, n in spans]
        cache[index] = (spans, hashes)
    return cache[index]


def record_spans(ss: ShardSet, index: int, check_hash: bool = True) -> tuple[list, list]:
    """(spans, sample hashes) of a committed shard: from its record, else indexed on first use."""
    rec = ss.records[index]
    if isinstance(rec.get("spans"), list) and isinstance(rec.get("sample_sha256"), list):
        return rec["spans"], rec["sample_sha256"]
    return _legacy_spans(ss, index, check_hash)


def index_record(ss: ShardSet, index: int) -> dict:
    """The record of a committed shard with `spans`, `sample_sha256` and (when its samples carry one) `labels`
    added: what `digin index` writes for a set made before records had them. Reads the shard whole."""
    rec = dict(ss.records[index])
    spans, hashes = _legacy_spans(ss, index, True)
    if len(spans) != rec["count"]:
        raise ShardError(f"shard {ss.where(index)}: {len(spans)} samples, record says {rec['count']}")
    rec["spans"], rec["sample_sha256"] = [list(s) for s in spans], hashes
    if not isinstance(rec.get("labels"), list):
        labels = [None] * rec["count"]
        for s in iter_shard(ss, index, decode=_meta_only):
            m = s.get("meta")
            if isinstance(m, dict) and isinstance(m.get("label"), int) and not isinstance(m.get("label"), bool):
                labels[s["__pos__"]] = m["label"]
        if any(y is not None for y in labels):
            rec["labels"] = labels
    return rec


def _meta_only(ext, data, resolution=None, center_crop=True):
    return decode_json(data) if ext == "json" else None


# ---------------------------------------------------------------------------------------------- key index
class KeyIndex:
    """Where each committed key of a shard set lies (shard index, position), and its label, from the records
    alone (an indexed foreign tar's refused samples are keys too: a stage reading them rejects them with their
    reason, so every input key stays accounted for). A key in two shards is refused (it would be processed
    twice)."""

    def __init__(self, ss: ShardSet, shards=None):
        self.ss = ss
        self.where: dict[str, tuple[int, int]] = {}
        self.label: dict[str, int | None] = {}
        for i in (ss.indices() if shards is None else shards):
            rec = ss.records[i]
            keys = rec.get("keys") or []
            labels = rec.get("labels") if isinstance(rec.get("labels"), list) else None
            for pos, k in enumerate(keys):
                if k in self.where:
                    raise ShardError(f"{ss.dir}: key {k!r} is in shard {self.where[k][0]} and in shard {i}, so it "
                                     "would be processed twice; convert the input again (digin shard) or remove "
                                     "one of them")
                self.where[k] = (i, pos)
                self.label[k] = labels[pos] if labels is not None and pos < len(labels) else None

    def __contains__(self, key) -> bool:
        return key in self.where

    def __len__(self) -> int:
        return len(self.where)

    def keys(self) -> list[str]:
        return list(self.where)

    def labels(self) -> dict[str, int]:
        """key → label; keys whose records carry no label are read for it (sets made before records had labels;
        `digin index` avoids this)."""
        missing = [k for k, y in self.label.items() if y is None and not _labelled(self.ss, self.where[k][0])]
        if missing and not getattr(self, "_read_labels", False):
            self._read_labels = True
            shards = sorted({self.where[k][0] for k in missing})
            for i in shards:
                for s in iter_shard(self.ss, i, decode=_meta_only):
                    m = s.get("meta")
                    if s["__key__"] in self.label and isinstance(m, dict) and isinstance(m.get("label"), int):
                        self.label[s["__key__"]] = int(m["label"])
        return {k: y for k, y in self.label.items() if y is not None}


def _labelled(ss: ShardSet, index: int) -> bool:
    """Whether the record carries labels (then a None is a sample without one, e.g. a refused foreign sample)."""
    return isinstance(ss.records[index].get("labels"), list)


# ---------------------------------------------------------------------------------------------- reading
def is_local(url_or_path: str) -> bool:
    return urlparse(url_or_path).scheme in ("", "file")


def _local_path(where: str) -> str:
    return where[len("file://"):] if where.startswith("file://") else where[5:] if where.startswith("file:") else where


def read_groups(ss: ShardSet, index: int, positions, check_hash: bool = True) -> dict[int, list]:
    """{position: [group key, fields | reject reason]} for the given sample positions of committed shard `index`
    (the groups `reader.group_shard_members` makes). A local shard is opened once and each sample read with one seek,
    checked against its size and hash; a non-local URL is read whole once and checked against its sha256.
    ShardError names the shard and sample when bytes do not match their record."""
    rec = ss.records[index]
    where = ss.where(index)
    naming = "webdataset" if "webdataset" in ss.meta else "digin"
    positions = sorted(set(positions))
    spans, hashes = record_spans(ss, index, check_hash)
    if len(spans) != rec["count"] or len(hashes) != rec["count"]:
        raise ShardError(f"shard {where}: the record lists {len(spans)} spans for {rec['count']} samples")
    out: dict[int, list] = {}
    local = is_local(where)
    whole = None
    if not local:
        whole = ss.read_verified(index, check_hash)
        count_read("shards", len(whole))
    f = None
    try:
        if local:
            path = _local_path(where)
            try:
                f = open(path, "rb")
                size = os.fstat(f.fileno()).st_size
            except OSError as e:
                raise ShardError(f"shard {where}: cannot read ({e})") from None
            if size != rec["bytes"]:
                raise ShardError(f"shard {where}: {size} bytes, manifest says {rec['bytes']} (truncated or altered)")
        for pos in positions:
            off, n = spans[pos]
            if whole is not None:
                data = whole[off:off + n]
            else:
                f.seek(off)
                data = f.read(n)
                count_read("samples", len(data))
            if len(data) != n or (check_hash and sha256_bytes(data)[:SAMPLE_HASH_HEX] != hashes[pos]):
                raise ShardError(f"shard {where}: sample {pos} ({rec['keys'][pos]}) differs from its record "
                                 "(altered after commit)")
            groups = group_shard_members(data + END_OF_ARCHIVE, f"{where} (sample {pos})", naming)
            if len(groups) != 1:
                raise ShardError(f"shard {where}: sample {pos} spans {len(groups)} member groups (bad index)")
            out[pos] = groups[0]
    finally:
        if f is not None:
            f.close()
    return out


def read_keys(ss: ShardSet, wanted: list[tuple[int, int]], resolution=None, required=(), check_hash: bool = True,
              center_crop: bool = True, decode=decode_member, keep=None) -> dict[tuple[int, int], dict]:
    """{(shard, position): sample} for the given committed samples, each read by its span (one seek; see
    digin.shards.keyed), decoded like iter_shard's. `keep`: the only fields decoded (a digin set's other members,
    e.g. the image when a stage needs its label only, are not decoded at all). ShardError when a shard or sample
    differs from its record."""
    by_shard: dict[int, list[int]] = {}
    for i, pos in wanted:
        by_shard.setdefault(i, []).append(pos)
    out = {}
    for i, positions in by_shard.items():
        groups = read_groups(ss, i, positions, check_hash)
        foreign = "webdataset" in ss.meta
        keys = ss.records[i].get("source_keys" if foreign else "keys")
        for pos, (key, fields) in groups.items():
            if keys is not None and key != keys[pos]:
                raise ShardError(f"shard {ss.where(i)}: sample {pos} is {key!r}, the record says {keys[pos]!r}")
            if keep is not None and not foreign and isinstance(fields, dict):
                fields = {f: v for f, v in fields.items() if f in keep}
            out[(i, pos)] = sample_from_group(ss, i, pos, key, fields, resolution, required, center_crop, decode)
    return out


# ---------------------------------------------------------------------------------------------- one read per shard
DIRECT_ALIGN = 4096  # direct I/O: buffer address, file offsets and read sizes in multiples of this
READ_CHUNK = 64 << 20


class ReadBuffer:
    """A page-aligned buffer reused from shard to shard: a shard is read into memory whole, once, without allocating
    (and faulting in) hundreds of megabytes per shard. `read` uses direct I/O where the file system allows it (the
    disk writes into the buffer, no copy through the page cache: the CPU stays free to hash the shard before),
    plain reads elsewhere."""

    def __init__(self, size: int = 0):
        self.data = mmap.mmap(-1, self._rounded(size))

    @staticmethod
    def _rounded(n: int) -> int:
        return max(DIRECT_ALIGN, -(-n // DIRECT_ALIGN) * DIRECT_ALIGN)

    def view(self, n: int) -> memoryview:
        """The buffer's first n bytes (reallocated when it is smaller; views of the old one stay valid)."""
        if len(self.data) < self._rounded(n):
            self.data = mmap.mmap(-1, self._rounded(max(n, len(self.data) + len(self.data) // 4)))
        return memoryview(self.data)[:n]

    def read(self, path: str, expected: int) -> tuple[int, memoryview]:
        """(size of the file, the bytes read): the file whole, or nothing when its size is not `expected`. OSError as
        the file system raises it."""
        self.view(expected)
        whole = memoryview(self.data)
        for direct in ((True, False) if hasattr(os, "O_DIRECT") else (False,)):
            try:
                fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
            except OSError as e:
                if direct and e.errno == errno.EINVAL:
                    continue  # a file system without direct I/O
                raise
            try:
                size = os.fstat(fd).st_size
                if size != expected:
                    return size, whole[:0]
                got = 0
                while got < size:
                    k = os.readv(fd, [whole[got:got + min(READ_CHUNK, self._rounded(size - got))]])
                    if not k:
                        break
                    got += k
                    if direct and got < size and got % DIRECT_ALIGN:
                        raise OSError(errno.EINVAL, "short direct read")
                return size, whole[:got]
            except OSError as e:
                if direct and e.errno == errno.EINVAL:
                    continue  # direct I/O refused for this file: read it the plain way
                raise
            finally:
                os.close(fd)
        raise OSError(errno.EINVAL, "cannot read")  # pragma: no cover (the plain read raises first)


def _quick(ss: ShardSet, index: int) -> bool:
    """Whether a committed shard is a local digin tar (read whole by ReadBuffer), not a URL or a foreign tar."""
    rec = ss.records[index]
    return "webdataset" not in ss.meta and not rec.get("url") and is_local(ss.where(index))


def _checked(ss: ShardSet, index: int, result, check_hash: bool) -> memoryview:
    """ReadBuffer.read's result for a committed shard, checked against its record's size and sha256 (the checks and
    messages of ShardSet.read_verified)."""
    rec, where = ss.records[index], ss.where(index)
    size, view = result
    for n in (size, len(view)):
        if n != rec["bytes"]:
            raise ShardError(f"shard {where}: {n} bytes, manifest says {rec['bytes']} (truncated or altered)")
    if check_hash and hashlib.sha256(view).hexdigest() != rec["sha256"]:
        raise ShardError(f"shard {where}: sha256 differs from the manifest (altered after commit)")
    return view


def _read_local(ss: ShardSet, index: int, buffer: ReadBuffer, check_hash: bool) -> memoryview:
    where = ss.where(index)
    try:
        result = buffer.read(_local_path(where), ss.records[index]["bytes"])
    except OSError as e:
        raise ShardError(f"shard {where}: cannot read ({e})") from None
    return _checked(ss, index, result, check_hash)


_OCTAL_FIELD = re.compile(rb"([0-7]+)[ \0]*")
_ZERO_BLOCK = bytes(TAR_BLOCK)


def _octal(field: bytes) -> int | None:
    m = _OCTAL_FIELD.fullmatch(field)
    return int(m.group(1), 8) if m else None


def plain_members(view: memoryview) -> list[tuple[str, int, int]] | None:
    """(name, data offset, size) of each member of a tar made only of plain ustar regular-file headers, read as
    tario.tar_extent reads them (header checksums, members inside the file, end-of-archive marker then only zeros);
    None when the tar holds anything else (pax or GNU headers, links, a prefix field, non-ASCII names, an unusual
    number field, a bad checksum, a cut): the caller reads such a tar the general way, which refuses or reads it.
    The fields that digin's writer fills alike in every header are checked by tarfile once per distinct value."""
    import tarfile

    n, pos, out, fixed_ok = len(view), 0, [], set()
    while True:
        if pos + TAR_BLOCK > n:
            return None
        block = bytes(view[pos:pos + TAR_BLOCK])
        if block[156] != 0x30:  # not REGTYPE ('0'): the end-of-archive marker, or for the general reader
            if block != _ZERO_BLOCK or bytes(view[pos:]).strip(b"\0"):
                return None
            return out
        size, chksum = _octal(block[124:136]), _octal(block[148:156])
        raw = block[:100].split(b"\0", 1)[0]
        if size is None or chksum is None or not raw.isascii():
            return None
        if chksum != 256 + sum(block) - sum(block[148:156]):  # tarfile's unsigned sum (a signed one: general path)
            return None
        name = raw.decode("ascii")
        fixed = block[100:124] + block[136:148] + block[156:]
        if fixed not in fixed_ok:
            try:
                info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            except tarfile.HeaderError:
                return None
            if info.type != tarfile.REGTYPE or info.name != name or info.size != size:
                return None  # e.g. a ustar prefix: the name is longer than the name field
            fixed_ok.add(fixed)
        data = pos + TAR_BLOCK
        pos = data + -(-size // TAR_BLOCK) * TAR_BLOCK
        if pos > n:
            return None
        out.append((name, data, size))


def plain_groups(view: memoryview) -> list | None:
    """group_shard_members' groups of a digin shard ([key, {field: (ext, payload)}], payloads as memoryviews of
    `view`) when every member is plain and well named and no sample is refused (no bad name, duplicate field or key,
    over-large member); None otherwise (the general reader then makes the same groups, rejects included)."""
    if any(bytes(view[:len(m)]) == m for m in COMPRESSED_MAGIC):
        return None
    members = plain_members(view)
    if members is None:
        return None
    groups, seen, key, fields, suffixes = [], set(), None, None, set()
    for name, off, size in members:
        try:
            k, field, ext = parse_member_name(name)
        except BadName:
            return None
        if size > MAX_MEMBER_BYTES:
            return None
        if k != key:
            if k in seen:
                return None
            seen.add(k)
            key, fields, suffixes = k, {}, set()
            groups.append([key, fields])
        suffix = f"{field}.{ext}"
        if suffix in suffixes:
            return None
        suffixes.add(suffix)
        fields[field] = (ext, view[off:off + size])
    return groups


def _decode_copy(ext, data, resolution=None, center_crop=True):
    return decode_member(ext, bytes(data), resolution, center_crop)


def iter_shard_once(ss: ShardSet, index: int, resolution: int | None = None, required=(), check_hash: bool = True,
                    center_crop: bool = True, decode=None, buffer: ReadBuffer | None = None):
    """reader.iter_shard's samples, checks and errors, the shard read once: a local digin shard is read whole into
    `buffer` (reused from shard to shard), its sha256 checked, and its member headers walked once (plain_groups);
    `decode` gets each payload as a memoryview of that buffer and must copy what it keeps (the buffer holds the next
    shard once this generator is done). Any other shard (a URL, an indexed foreign tar) is read by reader.iter_shard,
    `decode` then getting bytes."""
    decode = decode or _decode_copy
    if not _quick(ss, index):
        yield from iter_shard(ss, index, resolution, required, check_hash, center_crop, decode)
        return
    view = _read_local(ss, index, buffer or ReadBuffer(), check_hash)
    yield from _samples(ss, index, view, resolution, required, center_crop, decode)


def iter_shards_once(ss: ShardSet, indices=None, resolution: int | None = None, required=(), check_hash: bool = True,
                     center_crop: bool = True, decode=None):
    """iter_shard_once over several shards (all committed ones by default), in order: while one shard is checked and
    decoded, a thread reads the next local one into a second buffer."""
    from concurrent.futures import ThreadPoolExecutor

    decode = decode or _decode_copy
    indices = ss.indices() if indices is None else list(indices)
    quick = [i for i in indices if _quick(ss, i)]
    size = max((ss.records[i]["bytes"] for i in quick), default=0)
    buffers = [ReadBuffer(size) for _ in range(min(2, len(quick)))]
    pool = ThreadPoolExecutor(1, thread_name_prefix="digin-shard-read") if len(quick) > 1 else None

    def read(k):
        i = quick[k]
        return buffers[k % 2].read(_local_path(ss.where(i)), ss.records[i]["bytes"])

    try:
        ahead, k = (pool.submit(read, 0) if pool else None), 0
        for index in indices:
            if k >= len(quick) or index != quick[k]:  # a URL or a foreign tar: the general reader
                yield from iter_shard(ss, index, resolution, required, check_hash, center_crop, decode)
                continue
            try:
                result = ahead.result() if pool else read(k)
            except OSError as e:
                raise ShardError(f"shard {ss.where(index)}: cannot read ({e})") from None
            k += 1
            if pool and k < len(quick):
                ahead = pool.submit(read, k)  # into the other buffer: this one's views are in use until the next shard
            view = _checked(ss, index, result, check_hash)
            yield from _samples(ss, index, view, resolution, required, center_crop, decode)
    finally:
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)


def _samples(ss: ShardSet, index: int, view: memoryview, resolution, required, center_crop, decode):
    rec, where = ss.records[index], ss.where(index)
    groups = plain_groups(view)
    if groups is None:  # the general reader on the bytes already checked (it refuses a cut or corrupt tar)
        groups = group_shard_members(bytes(view), where, "digin")
    if len(groups) != rec["count"]:
        raise ShardError(f"shard {where}: {len(groups)} samples, manifest says {rec['count']}")
    keys = rec.get("keys")
    if keys is not None and [g[0] for g in groups] != keys:
        raise ShardError(f"shard {where}: keys differ from the manifest")
    for pos, (key, fields) in enumerate(groups):
        yield sample_from_group(ss, index, pos, key, fields, resolution, required, center_crop, decode)
