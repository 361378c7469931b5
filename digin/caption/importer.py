"""Import captions someone already has, in the reference's layout: `<root>/<class>_<label>/<idx>_prompt.txt`
(any depth), idx = the dataset index, which is the last part of our sample keys (<name>/<split>/<index>)."""
from __future__ import annotations

import os
import re
from pathlib import Path

PROMPT_FILE = re.compile(r"^(\d+)_prompt\.txt$")


def read_prompt_files(root) -> dict[int, str]:
    """index -> caption for every `<idx>_prompt.txt` under root. The same index twice with different text is an
    error (two datasets mixed in one folder)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"caption folder {root} does not exist")
    out: dict[int, str] = {}
    where: dict[int, Path] = {}
    for dirpath, _, files in sorted(os.walk(root, followlinks=True)):
        for f in sorted(files):
            m = PROMPT_FILE.match(f)
            if not m:
                continue
            p = Path(dirpath) / f
            idx, text = int(m.group(1)), p.read_text(encoding="utf-8").strip()
            if idx in out and out[idx] != text:
                raise ValueError(f"index {idx} has two different captions: {where[idx]} and {p}")
            out[idx], where[idx] = text, p
    if not out:
        raise FileNotFoundError(f"no <idx>_prompt.txt files under {root}")
    return out


def key_index(key: str) -> int | None:
    tail = key.rsplit("/", 1)[-1]
    return int(tail) if tail.isdigit() else None
