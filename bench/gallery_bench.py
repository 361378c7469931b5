"""Gallery build time for many synthetic UVCE results, on one CPU core. Prints one JSON row per build.

  python bench/gallery_bench.py                       # 10,000 results (2,000 images × 5 targets), 128 px
  python bench/gallery_bench.py results=1000 size=512 work=/tmp/gallery-bench
  python bench/gallery_bench.py size=512 layout=image  # the older per-image sets (no thumbnails: decodes)

Writes the result shards once (`work/uvce`, reused when present with the same settings): layout=pair (default) is
what `digin uvce` writes now, one sample per (image, target) with the stage's thumbnails; layout=image the older
per-image sets. Then times reading the shards alone (what any reader pays: sha256 check + tar parsing), and runs
`digin gallery` twice into `work/gallery`: a first build (every image copied, every thumbnail taken or made) and a
rebuild (everything found). Reports wall and CPU time (on a shared machine the wall time also holds the waits for
the disk and for other processes), full decodes, the sizes of the pages that open first (the top index, the task
page and its rows.js) and what was written.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _args(argv) -> dict:
    opts = {"results": 10000, "targets": 5, "size": 128, "thumb": 128, "per_shard": 64,
            "work": "/tmp/digin-gallery-bench", "keep": 0, "layout": "pair"}
    for a in argv:
        k, _, v = a.partition("=")
        if k not in opts:
            raise SystemExit(f"gallery_bench: unknown key {k!r} (keys: {', '.join(opts)})")
        opts[k] = v if k in ("work", "layout") else int(v)
    return opts


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def main(argv=None) -> int:
    import digin.stages.gallery.build as build_mod
    import digin.stages.gallery.store as store_mod
    from digin.stages.gallery.records import iter_records
    from digin.stages.gallery.synthetic import write_uvce_results
    from digin.tasks.gallery import Config, run

    o = _args(sys.argv[1:] if argv is None else argv)
    if hasattr(os, "sched_setaffinity"):  # one core, as the target says
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    work = Path(o["work"])
    images = -(-o["results"] // o["targets"])
    shards = work / "uvce"
    stamp = work / "uvce.json"
    settings = {k: o[k] for k in ("results", "targets", "size", "per_shard", "layout")}
    if not (stamp.exists() and json.loads(stamp.read_text()) == settings):
        shutil.rmtree(work, ignore_errors=True)
        t0 = time.perf_counter()
        write_uvce_results(shards, n_images=images, targets_per_image=o["targets"], size=o["size"],
                           per_shard=o["per_shard"], classes=[f"class {c}" for c in range(100)],
                           nonfinite_every=97, no_improvement_every=13, latent_bytes=4 * (o["size"] // 8) ** 2 * 4,
                           layout=o["layout"])
        stamp.write_text(json.dumps(settings))
        print(f"# wrote {images} images × {o['targets']} targets in {time.perf_counter() - t0:.1f}s", flush=True)
    shard_bytes = sum(p.stat().st_size for p in shards.glob("*.tar"))
    out = work / "gallery"
    shutil.rmtree(out, ignore_errors=True)
    t0, c0 = time.perf_counter(), time.process_time()
    n_read = sum(1 for _ in iter_records(shards))
    read_wall, read_cpu = time.perf_counter() - t0, time.process_time() - c0
    decoded = []
    real_store = store_mod.ImageStore

    class CountingStore(real_store):  # the build's own store, counted
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            decoded.append(self)

    for build in ("first", "rebuild"):
        decoded.clear()
        t0, c0 = time.perf_counter(), time.process_time()
        build_mod.ImageStore = CountingStore
        try:
            run(Config(results=[str(shards)], out=str(out), thumb_size=o["thumb"]))
        finally:
            build_mod.ImageStore = real_store
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        task = out / "uvce"
        print(json.dumps({
            "bench": "gallery", "build": build, "results": images * o["targets"], "images": images,
            "image_px": o["size"], "thumb_px": o["thumb"], "shard_mb": round(shard_bytes / 2**20, 1),
            "layout": o["layout"], "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "results_per_s": round(images * o["targets"] / wall, 1),
            "read_only_wall_s": round(read_wall, 2), "read_only_cpu_s": round(read_cpu, 2), "records_read": n_read,
            "full_decodes": sum(st.decoded for st in decoded), "thumbs_from_results": sum(st.given for st in decoded),
            "index_kb": round(_size(out / "index.html") / 1024, 1),
            "task_page_kb": round(_size(task / "index.html") / 1024, 1),
            "rows_js_kb": round(_size(task / "rows.js") / 1024, 1),
            "detail_pages": len(list(task.glob("*.html"))) - 2,  # less index.html and pages.html
            "img_files": len(list((out / "img").iterdir())), "thumb_files": len(list((out / "thumb").iterdir())),
            "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
            "cores_used": 1}), flush=True)
    if not o["keep"]:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
