"""`digin gallery results=[<result shard dir>,...] out=<folder>`: static HTML pages over result shards.

Open `<out>/index.html` in any browser (no server, no JavaScript). Member names of the result shards are set by
`fields.*` (defaults: orig/sd/ours images, mask/attention extras, metrics.json with a `loss_curve` list).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from digin.gallery.records import ShardFields


@dataclass
class Config:
    results: list[str] = field(default_factory=list)  # result shard set folders (one per task run)
    out: str = "gallery"
    task: str | None = None  # task name for records without one (default: the shard set's name)
    columns: list[str] = field(default_factory=lambda: ["orig", "sd", "ours"])
    title: str = "digin results"
    fields: ShardFields = field(default_factory=ShardFields)
    check: bool = True  # crawl the written pages and fail on broken links/images


def run(cfg: Config):
    from digin.gallery import check_gallery, records_from_shards, write_gallery

    if not cfg.results:
        raise SystemExit("digin gallery: give results=[<result shard folder>, ...]")
    records = []
    for folder in cfg.results:
        records += records_from_shards(folder, cfg.fields, cfg.task)
    index = write_gallery(records, cfg.out, columns=list(cfg.columns), title=cfg.title)
    if cfg.check:
        problems, pages, images = check_gallery(cfg.out)
        if problems:
            raise RuntimeError("gallery check failed:\n" + "\n".join(problems[:20]))
        print(f"gallery: {len(records)} samples, {pages} pages, {images} images -> {index}")
    return index
