"""torch.compile for the hot callables (UNet call, VAE decode, classifier on its views), one graph per call site.

`Compiled(fn)` compiles `fn` once per *key* = (grad mode, shapes/dtypes of its tensor arguments). Each key gets
its own copy of `fn`'s code object, so dynamo never has to *re*compile a graph: the sampling chain's 20 timesteps,
all SGD iterations and every padded batch of a run hit the same graph (timesteps and coefficients go in as tensors;
the runner pads tail batches), while the no-grad forward chain, the per-step recompute with grad and the 2B-row CFG
call vs the B-row inversion call are separate graphs by construction. `graphs` lists the keys compiled so far — a
test can assert that a run compiled exactly the graphs it should. More than `max_graphs` keys (shapes that keep
changing) → eager from then on, with one warning.

CUDA graphs: with `cudagraphs=True`, inductor on CUDA, the no-grad keys compile with mode "reduce-overhead" (CUDA
graph trees): the sampling chain, inversion's forward calls, the evaluation pass. Their outputs are copied out of
the graph pool (a replay overwrites them) and each call starts a new graph-tree step. Keys with grad compile
without CUDA graphs (their forward is followed by an immediate autograd.grad; not measured on a GPU yet).

A compile error → one warning, eager from then on, results unchanged. Set `TORCHINDUCTOR_CACHE_DIR` (or
`cache_dir`) to share compiled kernels between runs and ranks.
"""
from __future__ import annotations

import os
import time
import types
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class CompileConfig:
    enabled: bool = True
    backend: str = "inductor"  # inductor | aot_eager (CPU tests) | eager
    cudagraphs: bool = False  # CUDA graph trees for no-grad keys (inductor on CUDA only)
    fullgraph: bool = False
    cache_dir: str | None = None  # inductor FX-graph / AOT-autograd cache; None: torch's default (or the env var)
    max_graphs: int = 16  # distinct keys per callable before giving up compiling it


def enable_compile_caches(cache_dir: str | os.PathLike | None = None):
    """Persistent FX-graph and AOT-autograd caches, so a second run (or rank) skips most compile time."""
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir)
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    if hasattr(functorch_config, "enable_autograd_cache"):
        functorch_config.enable_autograd_cache = True


def _must_propagate() -> tuple:
    """Errors that are not compile failures: OOM (the runner halves the batch) and a recompile under
    error_on_recompile (a test asking for none)."""
    from torch._dynamo import exc

    extra = tuple(getattr(exc, n) for n in ("RecompileError", "FailOnRecompileLimitHit") if hasattr(exc, n))
    return (torch.OutOfMemoryError, *extra)


def _signature(args) -> tuple:
    sig = []
    for a in args:
        if isinstance(a, torch.Tensor):
            sig.append((tuple(a.shape), a.dtype, a.device.type))
        elif isinstance(a, (list, tuple)):
            sig.append(_signature(a))
        else:
            sig.append(type(a).__name__)
    return tuple(sig)


def _fresh_copy(fn, tag: int):
    """`fn` with its own code object (dynamo caches compiled frames per code object)."""
    code = fn.__code__.replace(co_name=f"{fn.__code__.co_name}__digin{tag}")
    new = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)
    new.__kwdefaults__ = fn.__kwdefaults__
    return new


class Compiled:
    """`fn(*tensors)` compiled per (grad mode, argument signature); eager when disabled or after a failure.

    Attributes: `name`, `graphs` (keys compiled), `fell_back`, `error`, `compile_s` (wall time of each key's
    first call: tracing + compilation + one run).
    """

    def __init__(self, fn, cfg: CompileConfig | None = None, name: str | None = None, device=None):
        self.cfg = cfg or CompileConfig()
        self.eager = fn
        self.name = name or getattr(fn, "__name__", "fn")
        self.on_cuda = device is not None and torch.device(device).type == "cuda"
        self._compiled: dict = {}
        self.compile_s: dict = {}
        self.fell_back, self.error = False, None
        if self.cfg.enabled:  # persistent FX-graph / AOT-autograd caches: reruns and other ranks skip most compiling
            enable_compile_caches(self.cfg.cache_dir)

    @property
    def graphs(self) -> list:
        return list(self._compiled)

    def uses_cudagraphs(self, grad: bool) -> bool:
        return self.cfg.cudagraphs and self.cfg.backend == "inductor" and self.on_cuda and not grad

    def _compile(self, key):
        grad = key[0]
        kw = dict(backend=self.cfg.backend, fullgraph=self.cfg.fullgraph, dynamic=False)
        if self.cfg.backend == "inductor" and self.uses_cudagraphs(grad):
            kw["mode"] = "reduce-overhead"
        return torch.compile(_fresh_copy(self.eager, len(self._compiled)), **kw)

    def __call__(self, *args):
        if not self.cfg.enabled or self.fell_back:
            return self.eager(*args)
        # One memory layout per graph: dynamo guards on strides, and the same tensor can arrive contiguous or not
        # (a CPU convolution may hand back channels-last latents, an expand gives stride 0).
        args = tuple(a.contiguous() if isinstance(a, torch.Tensor) else a for a in args)
        grad = torch.is_grad_enabled()
        key = (grad, _signature(args))
        fn = self._compiled.get(key)
        first = fn is None
        if first:
            if len(self._compiled) >= self.cfg.max_graphs:
                return self._give_up(f"more than {self.cfg.max_graphs} distinct shapes", args)
            fn = self._compiled[key] = self._compile(key)
        graphs = self.uses_cudagraphs(grad)
        t0 = time.perf_counter() if first else None
        try:
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
            out = fn(*args)
        except _must_propagate():
            raise
        except Exception as e:  # compiler/tracing failure: stay correct, say so once
            return self._give_up(f"{type(e).__name__}: {e}", args)
        if first:
            self.compile_s[key] = time.perf_counter() - t0
        if graphs:  # the next replay overwrites graph outputs in place
            out = torch.utils._pytree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, out)
        return out

    def _give_up(self, why: str, args):
        self.fell_back, self.error = True, why
        warnings.warn(f"digin.compile: compiling {self.name!r} failed, running it eagerly ({why[:500]})",
                      RuntimeWarning, stacklevel=3)
        return self.eager(*args)


def compiled_or_eager(fn, cfg: CompileConfig | None, name: str, device=None):
    """`Compiled(fn)` when compiling is on, else `fn` itself."""
    return Compiled(fn, cfg, name, device) if (cfg is not None and cfg.enabled) else fn
