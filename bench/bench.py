#!/usr/bin/env python
"""`python bench/bench.py key=value ...` — the same as `digin bench key=value ...` (see digin/tasks/bench.py),
plus SDXL-shaped model sets:

  models=sdxl512    SDXL-base architecture at 512 px (the reference's SDXL-512 / Turbo / Playground-512 shape:
                    64×64 latents, 2×77-token text encoders, pooled embedding + time ids), random weights,
                    ViT-B/16-384 classifier; UVCE settings (20 steps × 20 SGD steps, 16 cutouts)
  models=tiny-sdxl  the tiny SDXL (CPU smoke run)

GPU:  python bench/bench.py out=bench/results/rows.jsonl
      python bench/bench.py models=sdxl512 batch=2 out=bench/results/rows.jsonl
CPU:  python bench/bench.py models=tiny compile_backend=aot_eager iters=1
      python bench/bench.py models=tiny-sdxl compile=false iters=1
"""
import sys

from digin.tasks import bench as _bench

SDXL_PRESETS = {
    "sdxl512": dict(_bench.PRESETS["sd15"]),
    "tiny-sdxl": dict(_bench.PRESETS["tiny"]),
}


def _build(preset, dev, dtype, _base=_bench._build):
    """The SDXL model sets; everything else goes to the task's own builder."""
    if preset == "sdxl512":
        from digin.engine.sdxl import build_sdxl_shaped

        return build_sdxl_shaped(dev, dtype, resolution=512), _bench.build_classifier("sd15", dev, dtype)
    if preset == "tiny-sdxl":
        from digin.engine.sdxl import build_tiny_sdxl

        sd = build_tiny_sdxl(seed=0).to(device=dev, dtype=dtype).freeze()
        return sd, _bench.build_classifier("tiny", dev, dtype)
    return _base(preset, dev, dtype)


def register_sdxl():
    """Add the SDXL model sets to digin.tasks.bench (idempotent)."""
    for name, settings in SDXL_PRESETS.items():
        _bench.PRESETS.setdefault(name, settings)
    if getattr(_bench._build, "__name__", "") != "_build" or _bench._build.__module__ != __name__:
        _bench._build = _build


def main(argv=None):
    register_sdxl()
    return _bench.main(argv)


if __name__ == "__main__":
    sys.exit(main())
