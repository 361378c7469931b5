#!/usr/bin/env python
"""Cold compile time of the UNet call site, one fresh process and an empty inductor cache per variant → JSON rows.

  python bench/compile_cold.py                              # CPU: the tiny UNet, inductor, every variant
  python bench/compile_cold.py models=sd15 variants=[full]  # GPU: SD-1.5 shapes, batch 8 (CFG: 16 rows)

Variants:
  full      the engine's call site: the whole UNet call compiled, one graph per grad mode (engine/compile.py)
  nested    the same, with each BasicTransformerBlock a torch.compiler.nested_compile_region (traced once, reused)
  regional  compile_scope=regional: only the BasicTransformerBlocks compiled, once per shape (engine/prepare.py)
Each row: the first no-grad call (trace + compile + run), the first call with grad + its backward, and the median
of a few steady calls of each, so a faster compile that runs slower shows. Caches are off (TORCHINDUCTOR_FORCE_
DISABLE_CACHES=1, a fresh TORCHINDUCTOR_CACHE_DIR): what a new machine pays once per shape.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Optional

VARIANTS = ("full", "nested", "regional")


@dataclass
class Config:
    models: str = "auto"  # auto (sd15 on CUDA, tiny on CPU) | tiny | sd15
    variants: list = field(default_factory=lambda: list(VARIANTS))
    batch: Optional[int] = None  # samples (CFG rows = 2×); default 8 on CUDA, 2 on a CPU
    steady: int = 3
    out: Optional[str] = None  # append the rows here too
    timeout_s: int = 900  # per variant


def _one(variant: str, models: str, batch: int, steady: int) -> dict:
    """Runs inside the child process."""
    import torch

    from digin.engine.models import resolve_dtype
    from digin.engine.prepare import prepare_sd
    from digin.engine.presets import resolve_compute
    from digin.stages.bench import build_sd

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    s = resolve_compute("fast", dev, cudagraphs=False, batch_size=batch, dtype="bf16" if dev.type == "cuda" else "fp32",
                        compile_scope="regional" if variant == "regional" else "full")
    sd = build_sd(models, dev, resolve_dtype(s.dtype))
    if variant == "nested":
        from diffusers.models.attention import BasicTransformerBlock

        BasicTransformerBlock.forward = torch.compiler.nested_compile_region(BasicTransformerBlock.forward)
    prepare_sd(sd, s)
    from digin.engine.sampling import call_unet

    lat = sd.unet.config.sample_size
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2 * batch, sd.latent_channels, lat, lat, generator=g).to(dev)
    emb = sd.encode_text(["a photograph of a bench"] * (2 * batch))
    t = torch.tensor(500, device=dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def nograd():
        with torch.no_grad():
            call_unet(sd, x, t, emb)
        sync()

    def grad():
        xx = x.detach().requires_grad_(True)
        out = call_unet(sd, xx, t, emb)
        torch.autograd.grad(out.float().square().mean(), xx)
        sync()

    row = dict(kind="compile_cold", variant=variant, models=models, device=str(dev), batch=batch,
               torch=torch.__version__)
    for name, fn in (("nograd", nograd), ("grad", grad)):
        t0 = time.perf_counter()
        fn()
        row[f"{name}_first_s"] = round(time.perf_counter() - t0, 2)
        times = []
        for _ in range(max(steady, 1)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        row[f"{name}_steady_s"] = round(sorted(times)[len(times) // 2], 4)
        row[f"{name}_compile_s"] = round(row[f"{name}_first_s"] - row[f"{name}_steady_s"], 2)
    rt = sd.runtime
    row["graphs"] = len(rt.unet.graphs)
    row["fell_back"] = rt.unet.fell_back
    return row


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        variant, models, batch, steady = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
        print("ROW " + json.dumps(_one(variant, models, batch, steady)), flush=True)
        return 0
    from digin.cli import build_config

    cfg = build_config(Config, list(sys.argv[1:] if argv is None else argv))
    import torch

    cuda = torch.cuda.is_available()
    models = cfg.models if cfg.models != "auto" else ("sd15" if cuda else "tiny")
    batch = cfg.batch or (8 if cuda else 2)
    bad = set(cfg.variants) - set(VARIANTS)
    if bad:
        raise SystemExit(f"compile_cold: unknown variants {sorted(bad)}; choose from {', '.join(VARIANTS)}")
    rc = 0
    for v in cfg.variants:
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, TORCHINDUCTOR_FORCE_DISABLE_CACHES="1",
                       TRITON_CACHE_DIR=os.path.join(cache, "triton"))
            try:
                p = subprocess.run([sys.executable, __file__, "--child", v, models, str(batch), str(cfg.steady)],
                                   env=env, capture_output=True, text=True, timeout=cfg.timeout_s)
                rows = [json.loads(l[4:]) for l in p.stdout.splitlines() if l.startswith("ROW ")]
                row = rows[0] if rows else dict(kind="compile_cold", variant=v, models=models,
                                                status=f"error: {(p.stderr or '').strip()[-300:]}")
            except subprocess.TimeoutExpired:
                row = dict(kind="compile_cold", variant=v, models=models, status=f"timeout after {cfg.timeout_s} s")
        row.setdefault("status", "ok")
        rc |= row["status"] != "ok"
        line = json.dumps(row)
        print(line, flush=True)
        if cfg.out:
            with open(cfg.out, "a") as f:
                f.write(line + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
