"""Sample keys and tar member names.

A key is `<dataset>/<split>/<index>` (slash-separated parts, each `[A-Za-z0-9_-]+`, no dots, at most 8 parts and
200 characters). A tar member is `<encoded key>.<field>.<ext>` where the encoded key replaces every '/' by '~'
(a character no key part may contain, so the encoding is reversible and the member name has no directory part),
`field` is `[A-Za-z0-9_]+` and `ext` one of the allowed extensions. Example:
`imagenet/val/00042` + field `image` + `jpg` -> `imagenet~val~00042.image.jpg`.
This also reads as a webdataset sample: key = text before the first '.', suffix `image.jpg`.
"""
from __future__ import annotations

import re

KEY_PART = r"[A-Za-z0-9_-]{1,64}"
KEY_RE = re.compile(rf"^{KEY_PART}(/{KEY_PART}){{0,7}}$")
FIELD_RE = re.compile(r"^[A-Za-z0-9_]{1,64}$")
EXT_RE = re.compile(r"^[a-z0-9]{1,16}$")
SEP = "~"


class BadName(ValueError):
    """A key, field or member name outside the allowed alphabet (traversal, absolute path, odd characters)."""


def check_key(key: str) -> str:
    if not isinstance(key, str) or len(key) > 200 or not KEY_RE.match(key):
        raise BadName(f"bad sample key {key!r}")
    return key


def encode_key(key: str) -> str:
    return check_key(key).replace("/", SEP)


def decode_key(encoded: str) -> str:
    return check_key(encoded.replace(SEP, "/"))


def member_name(key: str, field: str, ext: str) -> str:
    if not FIELD_RE.match(field or ""):
        raise BadName(f"bad field name {field!r}")
    if not EXT_RE.match(ext or ""):
        raise BadName(f"bad extension {ext!r}")
    return f"{encode_key(key)}.{field}.{ext}"


def parse_member_name(name: str) -> tuple[str, str, str]:
    """`imagenet~val~00042.image.jpg` -> ("imagenet/val/00042", "image", "jpg"); BadName for anything else."""
    if not isinstance(name, str) or len(name) > 300 or "/" in name or "\\" in name or "\x00" in name:
        raise BadName(f"bad member name {name!r}")
    parts = name.split(".")
    if len(parts) != 3:
        raise BadName(f"bad member name {name!r} (want <key>.<field>.<ext>)")
    enc, field, ext = parts
    if not FIELD_RE.match(field) or not EXT_RE.match(ext):
        raise BadName(f"bad member name {name!r}")
    return decode_key(enc), field, ext
