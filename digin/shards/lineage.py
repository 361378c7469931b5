"""Which image set a shard set derives from, so that a stage joining inputs by key joins samples of one image set.

A dataset (`digin shard`: converted, indexed or copied) is a root image set. Its identity comes from its manifest:
name, split and the listing it was made from (source files or foreign tars and their hashes), so the same images
converted with another shard size are the same image set, and another folder whose keys merely look alike is not.
A stage output records in its manifest (runner._prepare_output) `image_set`, the identity its inputs share, inherited
from the root through every derived set, and per input its dir, name, role, config hash, plan hash and image set.

A stage whose inputs derive from different image sets (captions of set A joined with the images of set B) is refused
before anything is written (ForeignJoin, one line naming both). A deliberate join: DIGIN_ALLOW_FOREIGN_JOIN=1 (or a
spec's `allow_foreign_join`); the output then records `foreign_join`. An input whose lineage cannot be told (a set
written before lineage was recorded whose inputs moved, or a hand-made set) is not refused: there is nothing to
compare, and its `image_set` is recorded as null.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from digin.errors import UserError

ALLOW_ENV = "DIGIN_ALLOW_FOREIGN_JOIN"
MAX_DEPTH = 8  # derived sets followed back to their root (older manifests only; newer ones carry image_set)


class ForeignJoin(UserError, ValueError):
    """A stage's inputs derive from different image sets: joining them by key would pair unrelated samples."""


def root_identity(meta: dict) -> dict:
    """A dataset's identity: {id, name, config_hash}. `id` hashes name, split and the listing the set was made
    from (its config hash when the config has no listing)."""
    cfg = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    basis = {"name": meta.get("name"), "split": meta.get("split"),
             "listing": cfg.get("listing_sha256") or meta.get("config_hash")}
    digest = hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:16]
    return {"id": digest, "name": f"{meta.get('name')}-{meta.get('split')}", "config_hash": meta.get("config_hash")}


def _read_meta(folder) -> dict | None:
    try:
        meta = json.loads((Path(folder) / "manifest.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def image_set_of(meta: dict, depth: int = 0) -> dict | None:
    """The root image set a shard set derives from (see the module docstring), or None when it cannot be told (a
    set made without inputs, or an older derived set whose first input is no longer where it was recorded)."""
    if meta.get("kind") == "dataset":
        return root_identity(meta)
    if "image_set" in meta:
        return meta["image_set"] if isinstance(meta["image_set"], dict) else None
    inputs = meta.get("inputs") if isinstance(meta.get("inputs"), list) else []
    if not inputs or depth >= MAX_DEPTH or not isinstance(inputs[0], dict):
        return None
    first = inputs[0]  # an older stage manifest: follow its primary input back, if it is still the same set
    parent = _read_meta(first.get("dir", ""))
    if parent is None or parent.get("config_hash") != first.get("config_hash"):
        return None
    return image_set_of(parent, depth + 1)


def _describe(role: str, ss, ident: dict | None) -> str:
    return (f"{role}={ss.dir} (image set {ident['name']} {ident['id']})" if ident
            else f"{role}={ss.dir} (image set unknown)")


def allowed_by_env() -> bool:
    return os.environ.get(ALLOW_ENV) == "1"


def join_lineage(inputs: list, allow: bool = False) -> tuple[dict | None, list[str]]:
    """(the image set the inputs [(role, ShardSet)] share, notes on a forced foreign join). ForeignJoin when two
    inputs derive from different image sets, unless `allow` (or DIGIN_ALLOW_FOREIGN_JOIN=1)."""
    known = [(role, ss, ident) for role, ss in inputs if (ident := image_set_of(ss.meta)) is not None]
    if not known:
        return None, []
    role0, ss0, first = known[0]
    others = [(role, ss, ident) for role, ss, ident in known[1:] if ident.get("id") != first.get("id")]
    if not others:
        return first, []
    role, ss, ident = others[0]
    if not (allow or allowed_by_env()):
        raise ForeignJoin(f"the inputs derive from different image sets: {_describe(role0, ss0, first)} and "
                          f"{_describe(role, ss, ident)}; joining them by key would pair samples of one set with "
                          f"another's. Use inputs made from the same image set, or set {ALLOW_ENV}=1 for a "
                          "deliberate join")
    return first, [f"{_describe(role0, ss0, first)} joined with {_describe(r, s, i)}" for r, s, i in others]
