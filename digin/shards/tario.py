"""webdataset's tar primitives under digin's rules: its `TarWriter` for writing, its tar-member iteration and key
grouping for reading, `gopen` for URLs (local paths, `pipe:` commands for object stores).

What digin adds on top: fixed member metadata (reruns are byte-identical), member names checked before anything is
interpreted (traversal, odd characters, over-long names become rejects, never paths), a per-member size cap,
duplicate fields and keys as rejects, and no compressed tars (a few bytes of gzip can inflate to gigabytes in memory).
Members are read from bytes already in memory; nothing is ever extracted to disk.

A tar is complete or refused: Python's tar reader takes a short or unreadable header block (a cut at a 512-byte
boundary, inside a member header, or a corrupt header) for the end of the archive, so every whole-tar read first
walks the member headers itself (`tar_extent`) and requires the end-of-archive marker (at least one zero block, as
GNU tar accepts, and nothing but zeros after it), and the members read must be the member headers counted.
"""
from __future__ import annotations

import io
import re
import tarfile

from digin.shards.naming import BadName, parse_member_name

MTIME = 0  # fixed member mtime: reruns produce byte-identical tars
MAX_MEMBER_BYTES = 256 << 20
COMPRESSED_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}
# A foreign (webdataset) member name: `<key>.<suffix>`, the key may hold folders (`train/0001.jpg`). Anything else
# (spaces, control characters, '..', absolute paths, backslashes) is refused.
FOREIGN_KEY_RE = re.compile(r"^[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)*$")
FOREIGN_SUFFIX_RE = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")
BAD_PREFIX = "!bad:"  # group key of a refused member: "!bad:<repr of its name>"
TAR_BLOCK = 512


class TarFormatError(ValueError):
    """Bytes that are not a readable, uncompressed, complete tar archive."""


def tar_extent(data: bytes) -> tuple[int, int]:
    """(regular members, byte where the end-of-archive marker starts) of a complete tar; TarFormatError naming the
    byte where a cut or corrupt tar stops being readable. Headers are parsed by Python's tarfile (pax and GNU
    extensions, base-256 sizes), nothing is extracted."""
    if not data:
        raise TarFormatError("empty file (0 bytes): not a tar")
    tf = None
    regular, err = 0, None
    try:
        tf = tarfile.open(fileobj=io.BytesIO(data), mode="r:")
        for m in tf:
            regular += m.isreg()
    except (tarfile.TarError, EOFError, OSError) as e:
        err = e
    end = tf.offset if tf is not None else 0
    if err is not None:
        if end > len(data):
            raise TarFormatError(f"cut short: its last member needs bytes up to {end}, the file ends at byte "
                                 f"{len(data)}") from None
        raise TarFormatError(f"cut short or corrupt: the member header at byte {end} is unreadable ({err}); the file "
                             f"ends at byte {len(data)}") from None
    return regular, _check_end(data, end)


def _check_end(data: bytes, end: int) -> int:
    """`end` (where the member headers stop) must start the end-of-archive marker: a whole zero block, then only
    zeros (record padding) to the end of the file."""
    tail = memoryview(data)[end:]
    if not len(tail):
        raise TarFormatError(f"cut short: the file ends at byte {end}, right after a member, without the "
                             "end-of-archive marker (a killed writer or an interrupted copy)")
    block = bytes(tail[:TAR_BLOCK])
    if len(block) < TAR_BLOCK:
        what = "inside the end-of-archive marker" if not block.strip(b"\0") else "inside a member header"
        raise TarFormatError(f"cut short {what} at byte {end}; the file ends at byte {len(data)}")
    if block.strip(b"\0"):
        raise TarFormatError(f"unreadable member header at byte {end} (bad checksum or a cut and spliced file): "
                             "corrupt")
    rest = bytes(tail[TAR_BLOCK:]).lstrip(b"\0")
    if rest:
        raise TarFormatError(f"{len(rest)} bytes of data after the end-of-archive marker at byte {end} (from byte "
                             f"{len(data) - len(rest)}): concatenated tars or a corrupt file; rewrite it as one tar")
    return end


def open_tar_writer(fileobj):
    """webdataset's TarWriter on an open binary file, raw bytes in, deterministic member metadata."""
    from webdataset import TarWriter

    # keep_meta: a digin field may start with '_' (TarWriter would otherwise drop such members silently)
    return TarWriter(fileobj, encoder=False, keep_meta=True, compress=False, mtime=MTIME, user="", group="",
                     mode=0o644)


def write_sample(tar_writer, member_prefix: str, members: dict[str, bytes]):
    """Members `<member_prefix>.<suffix>` for each suffix (TarWriter writes them in sorted suffix order)."""
    tar_writer.write({"__key__": member_prefix, **members})


def read_url(url: str) -> bytes:
    """All bytes behind a URL or local path, through webdataset's gopen (`pipe:cmd` runs cmd and reads its stdout;
    a failing command raises OSError)."""
    from webdataset.gopen import gopen

    try:
        with gopen(url, "rb") as f:
            return f.read()
    except OSError as e:
        raise OSError(read_error(e)) from None


def read_error(e: BaseException) -> str:
    """A short reason for a failed read (webdataset's pipe errors carry the whole Popen call)."""
    text = str(e).split(" @ ")[0]
    status = re.search(r": exit (-?\d+) \(read\)", text)
    return f"the command exited with status {status.group(1)}" if status else text[:200]


def expand_urls(urls) -> list[str]:
    """A brace pattern (`/data/x-{0000..0063}.tar`, `a.tar::b.tar`) or a list of them -> the URLs, in order, as
    webdataset.WebDataset expands them."""
    from webdataset.shardlists import expand_urls as wds_expand

    out = []
    for u in [urls] if isinstance(urls, str) else list(urls):
        out += wds_expand(str(u))
    return out


def _members(data: bytes):
    """(name, bytes) of the tar's regular members, in order, via webdataset's tar iterator (non-regular members
    such as links and devices are skipped by it, never extracted)."""
    from webdataset.tariterators import tar_file_iterator

    _refuse_compressed(data)
    for m in tar_file_iterator(io.BytesIO(data), skip_meta=None):
        yield m["fname"], m["data"]


def _refuse_compressed(data: bytes):
    kind = next((k for magic, k in COMPRESSED_MAGIC.items() if data.startswith(magic)), None)
    if kind:
        raise TarFormatError(f"{kind}-compressed tar; only plain tars are read (decompress it first, e.g. "
                             f"'pipe:{'gzip -dc' if kind == 'gzip' else kind + ' -dc'} <file>')")


def split_digin_name(name: str):
    key, field, ext = parse_member_name(name)
    return key, f"{field}.{ext}"


def split_foreign_name(name: str):
    """webdataset's rule (key = everything before the first '.' of the base name), plus digin's name checks."""
    from webdataset.tariterators import base_plus_ext

    if not isinstance(name, str) or len(name) > 300:
        raise BadName(f"bad member name {name!r}")
    key, suffix = base_plus_ext(name)
    if (key is None or not FOREIGN_KEY_RE.match(key) or not FOREIGN_SUFFIX_RE.match(suffix or "")
            or suffix.startswith("__")):  # `__key__`, `__url__` are webdataset's own sample fields
        raise BadName(f"bad member name {name!r}")
    return key, suffix


def _named(data: bytes, split, counted: list):
    """webdataset file samples with digin's refusals folded in. `fname` is the already split (key, suffix) pair
    (group_by_keys takes the splitting function from us): a refused name becomes its own group `!bad:<name>`; a
    duplicate or over-large member keeps its key under a marker suffix `!<reason>#<n>` (unique, so the grouping
    never raises), which makes the whole sample a reject. `counted[0]` is the number of members read."""
    current, seen, n = None, set(), 0
    for name, payload in _members(data):
        n += 1
        counted[0] = n
        try:
            key, suffix = split(name)
        except BadName:
            current = None
            yield {"fname": (f"{BAD_PREFIX}{name!r}", f"!bad_member_name#{n}"), "data": b"", "__url__": ""}
            continue
        if key != current:
            current, seen = key, set()
        if suffix in seen:
            suffix = f"!duplicate_field#{n}"
        elif len(payload) > MAX_MEMBER_BYTES:
            suffix, payload = f"!member_too_large#{n}", b""
        seen.add(suffix)
        yield {"fname": (key, suffix), "data": payload, "__url__": ""}


def _presplit(fname):
    return fname


def group_members(data: bytes, naming: str = "digin") -> list[list]:
    """Tar bytes -> [[key, {suffix: bytes} | reject reason], ...] in tar order, grouped by webdataset's
    `group_by_keys`. naming="digin": members must be `<encoded key>.<field>.<ext>` and keys are decoded
    (`imagenet~val~00042` -> `imagenet/val/00042`); naming="webdataset": any safe `<key>.<suffix>`.
    Reject reasons: bad_member_name, duplicate_field, member_too_large, duplicate_key.
    Raises TarFormatError for bytes that are not a readable, complete plain tar (tar_extent)."""
    from webdataset.tariterators import group_by_keys

    split = split_digin_name if naming == "digin" else split_foreign_name
    groups, seen, counted = [], set(), [0]
    _refuse_compressed(data)
    headers, _ = tar_extent(data)
    try:
        for s in group_by_keys(_named(data, split, counted), keys=_presplit, lcase=False):
            key = s["__key__"]
            members = {k: v for k, v in s.items() if not k.startswith("__")}
            markers = [k[1:].split("#")[0] for k in members if k.startswith("!")]
            if key.startswith(BAD_PREFIX):
                groups.append([key, markers[0]])
            elif key in seen:
                groups.append([key, "duplicate_key"])
            else:
                seen.add(key)
                groups.append([key, markers[0] if markers else members])
    except (tarfile.TarError, EOFError, OSError) as e:  # webdataset re-raises the tarfile error
        raise TarFormatError(f"unreadable tar ({str(e).split(' @ ')[0]})") from None
    if counted[0] != headers:  # webdataset skips `__name__` members; nothing may be passed over unseen
        raise TarFormatError(f"{headers} regular member headers but {counted[0]} members read (a member the tar "
                             "iteration skips, such as a `__name__` file)")
    return groups
