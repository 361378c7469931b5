"""The body of `digin shard` (digin/tasks/shard.py): convert a dataset on disk into webdataset shards + manifest
(digin.shards.convert), or index an existing webdataset shard set (digin.shards.wdsindex)."""
from __future__ import annotations

from digin.shards.convert import convert
from digin.shards.wdsindex import FieldMap, WebdatasetError, index_webdataset


def _webdataset(cfg):
    if cfg.limit is not None:
        raise SystemExit("digin shard: limit= does not apply to source=webdataset (pass fewer urls)")
    fields = FieldMap(image=cfg.image_member, label=cfg.label_member, caption=cfg.caption_member,
                      filename=cfg.filename_member)
    try:
        return index_webdataset(cfg.urls, cfg.out, name=cfg.name, split=cfg.split, fields=fields,
                                key_scheme=cfg.key_scheme, classes=cfg.classes, dataset=cfg.dataset, copy=cfg.copy,
                                workers=cfg.workers, force=cfg.force)
    except WebdatasetError as e:
        raise SystemExit(f"digin shard: {e}") from None


def make_shards(cfg) -> int:
    """Convert `cfg.source` under `cfg.root` (or index the webdataset tars `cfg.urls`) into the shard set `cfg.out`;
    with `cfg.verify`, re-hash it after: 1 when a shard has a problem. `cfg`: digin.tasks.shard.Config."""
    if cfg.source == "webdataset":
        ss = _webdataset(cfg)
    elif cfg.urls is not None:
        raise SystemExit(f"digin shard: urls= is for source=webdataset (source={cfg.source} reads root=)")
    elif cfg.root is None:
        raise SystemExit(f"digin shard: source={cfg.source} needs root=<dataset folder>")
    else:
        ss = convert(cfg.source, cfg.root, cfg.split, cfg.out, name=cfg.name,
                     samples_per_shard=cfg.samples_per_shard, workers=cfg.workers, force=cfg.force, limit=cfg.limit)
    if cfg.verify:
        problems = ss.verify()
        for p in problems:
            print("[shard] problem:", p)
        return 1 if problems else 0
    return 0
