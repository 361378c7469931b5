"""torch.compile for the hot callables (UNet call, VAE decode, classifier on its views), one graph per call site.

`Compiled(fn)` compiles `fn` once per *key* = (grad mode, shapes/dtypes/requires-grad of its tensor arguments, and the
values of its static keyword arguments). Each key gets its own copy of `fn`'s code object, so dynamo never has to
*re*compile a graph: the sampling chain's 20 timesteps, all SGD iterations and every padded batch of a run hit the
same graph (timesteps, coefficients, attention-control factors and maps go in as tensors; the runner pads tail
batches), while the no-grad forward chain, the per-step recompute with grad and the 2B-row CFG call vs the B-row
inversion call are separate graphs by construction. Arguments may be tensors, lists/tuples/dicts of tensors (the
attention control of engine/attention.py) or constants. `graphs` lists the keys compiled so far — a test can assert
that a run compiled exactly the graphs it should. More than `max_graphs` keys (shapes that keep changing) → eager
from then on, with one warning.

CUDA graphs: with `cudagraphs=True`, inductor on CUDA, the no-grad keys compile with mode "reduce-overhead" (CUDA
graph trees): the sampling chain, inversion's forward calls, the evaluation pass. Their outputs are copied out of
the graph pool (a replay overwrites them) and each call starts a new graph-tree step. Keys with grad compile
without CUDA graphs (their forward is followed by an immediate autograd.grad; not measured on a GPU yet).

Outcomes are never silent. Every call site keeps its record (`outcome()`: graphs, compile seconds per key, CUDA
graphs used / skipped, calls run compiled / eagerly, fell back + why); `outcomes()` lists every live call site of the
process for logs, manifests and bench rows. A compile error → one warning and eager from then on (results unchanged),
or, with `strict=True` (the `strict_compile` key), a one-line `CompileFellBack` error naming the call site and the
reason. An out-of-memory error while compiling (inductor wraps it in BackendCompilerFailed) is raised as
`torch.OutOfMemoryError`, so the runner halves the batch instead of running the rest of the job eagerly. Set
`TORCHINDUCTOR_CACHE_DIR` (or `cache_dir`) to share compiled kernels between runs and ranks.

A key's first call (tracing + compiling, a minute or more for a cold UNet) runs inside `digin.shards.interrupt.urgent`:
SIGTERM/SIGUSR1 then stop the rank within moments (Interrupted, exit code 75) instead of after the compile.
"""
from __future__ import annotations

import contextlib
import os
import time
import types
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch

from digin.errors import UserError
from digin.shards.interrupt import urgent


@dataclass
class CompileConfig:
    enabled: bool = True
    backend: str = "inductor"  # inductor | aot_eager (CPU tests) | eager
    cudagraphs: bool = False  # CUDA graph trees for no-grad keys (inductor on CUDA only)
    fullgraph: bool = False
    cache_dir: str | None = None  # inductor FX-graph / AOT-autograd cache; None: torch's default (or the env var)
    max_graphs: int = 16  # distinct keys per callable before giving up compiling it
    strict: bool = False  # a fallback to eager (or a CUDA-graph skip) is an error, not a warning


class CompileFellBack(UserError):
    """strict_compile=true and a call site could not run compiled: one line, the call site and why."""


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


def oom_inside(e: BaseException) -> bool:
    """An out-of-memory error, raised directly or wrapped by the compiler (BackendCompilerFailed → inner_exception,
    or chained), e.g. inductor's autotuning or a CUDA-graph capture running out of device memory."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, torch.OutOfMemoryError):
            return True
        if isinstance(e, RuntimeError) and "out of memory" in str(e) and "illegal" not in str(e):
            return True
        e = getattr(e, "inner_exception", None) or e.__cause__ or e.__context__
    return False


def _sig(a):
    if isinstance(a, torch.Tensor):
        return (tuple(a.shape), a.dtype, a.device.type, a.requires_grad)
    if isinstance(a, (list, tuple)):
        return tuple(_sig(x) for x in a)
    if isinstance(a, dict):
        return ("dict", tuple((k, _sig(a[k])) for k in sorted(a)))
    return type(a).__name__


def _signature(args, static: dict | None = None) -> tuple:
    """Per argument: (shape, dtype, device, requires_grad) of a tensor, the structure of a container, the type of a
    constant; then the static keyword arguments by value (each value compiles its own graph)."""
    sig = tuple(_sig(a) for a in args)
    return sig + ((("static", tuple(sorted(static.items()))),) if static else ())


def _contiguous(a):
    """One memory layout per graph: dynamo guards on strides, and the same tensor can arrive contiguous or not
    (a CPU convolution may hand back channels-last latents, an expand gives stride 0, a factor column is strided)."""
    return torch.utils._pytree.tree_map(lambda t: t.contiguous() if isinstance(t, torch.Tensor) else t, a)


def _fresh_copy(fn, tag: int):
    """`fn` with its own code object (dynamo caches compiled frames per code object)."""
    code = fn.__code__.replace(co_name=f"{fn.__code__.co_name}__digin{tag}")
    new = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)
    new.__kwdefaults__ = fn.__kwdefaults__
    return new


def _cudagraph_skips() -> int:
    try:
        from torch._dynamo.utils import counters

        return int(counters["inductor"]["cudagraph_skips"])
    except Exception:
        return 0


_SITES: "weakref.WeakSet[Compiled]" = weakref.WeakSet()


class Compiled:
    """`fn(*args, **static)` compiled per key; eager when disabled or after a fallback.

    Attributes: `name`, `graphs` (keys compiled), `fell_back`, `error`, `compile_s` (key → wall time of its first
    call: tracing + compilation + one run), `calls` ({"compiled": n, "eager": n}: calls run each way),
    `cudagraph_skips` (keys inductor compiled without the CUDA graphs asked for).
    """

    def __init__(self, fn, cfg: CompileConfig | None = None, name: str | None = None, device=None):
        self.cfg = cfg or CompileConfig()
        self.eager = fn
        self.name = name or getattr(fn, "__name__", "fn")
        self.on_cuda = device is not None and torch.device(device).type == "cuda"
        self._compiled: dict = {}
        self.compile_s: dict = {}
        self.calls = {"compiled": 0, "eager": 0}
        self.cudagraph_skips = 0
        self.fell_back, self.error = False, None
        if self.cfg.enabled:  # persistent FX-graph / AOT-autograd caches: reruns and other ranks skip most compiling
            enable_compile_caches(self.cfg.cache_dir)
        _SITES.add(self)

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

    def __call__(self, *args, **static):
        if not self.cfg.enabled or self.fell_back:
            self.calls["eager"] += 1
            return self.eager(*args, **static)
        args = _contiguous(args)
        grad = torch.is_grad_enabled()
        key = (grad, _signature(args, static))
        fn = self._compiled.get(key)
        first = fn is None
        if first:
            if len(self._compiled) >= self.cfg.max_graphs:
                return self._give_up(f"more than {self.cfg.max_graphs} distinct shapes", args, static)
            fn = self._compiled[key] = self._compile(key)
        graphs = self.uses_cudagraphs(grad)
        t0 = time.perf_counter() if first else None
        skips0 = _cudagraph_skips() if first and graphs else 0
        try:
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
            with urgent(f"compiling {self.name!r}") if first else contextlib.nullcontext():
                out = fn(*args, **static)
        except _must_propagate():
            raise
        except Exception as e:  # compiler/tracing failure: stay correct, say so (or stop, when strict)
            if oom_inside(e):  # the runner's is_oom: halve the batch, do not run the job eagerly
                self._compiled.pop(key, None)
                raise torch.OutOfMemoryError(f"out of memory while compiling {self.name!r}: "
                                             f"{' '.join(str(e).split())[:300]}") from e
            return self._give_up(f"{type(e).__name__}: {e}", args, static)
        if first:
            self.compile_s[key] = time.perf_counter() - t0
            if graphs and _cudagraph_skips() > skips0:
                self.cudagraph_skips += 1
                if self.cfg.strict:
                    raise CompileFellBack(f"strict_compile=true: call site {self.name!r} compiled without the CUDA "
                                          "graphs it asked for (inductor skipped them; TORCH_LOGS=cudagraphs says why)")
        self.calls["compiled"] += 1
        if graphs:  # the next replay overwrites graph outputs in place
            out = torch.utils._pytree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, out)
        return out

    def _give_up(self, why: str, args, static):
        self.fell_back, self.error = True, " ".join(why.split())
        if self.cfg.strict:
            raise CompileFellBack(f"strict_compile=true: call site {self.name!r} fell back to eager "
                                  f"({self.error[:300]})")
        warnings.warn(f"digin.compile: compiling {self.name!r} failed, running it eagerly ({self.error[:500]})",
                      RuntimeWarning, stacklevel=3)
        self.calls["eager"] += 1
        return self.eager(*args, **static)

    def outcome(self) -> dict:
        """What this call site did, JSON-able: how it ran, its graphs and their compile seconds, calls each way."""
        if not self.cfg.enabled:
            how = "eager"
        elif self.fell_back:
            how = "fell_back"
        else:
            how = "compiled" if self._compiled else "not_called"
        cudagraphs = any(self.uses_cudagraphs(k[0]) for k in self._compiled)
        return dict(site=self.name, how=how, backend=self.cfg.backend if self.cfg.enabled else None,
                    graphs=len(self._compiled), cudagraphs=cudagraphs and not self.fell_back,
                    cudagraph_skips=self.cudagraph_skips, fell_back=self.fell_back, reason=self.error,
                    compile_s=round(sum(self.compile_s.values()), 3),
                    compile_s_per_graph=[round(s, 3) for s in self.compile_s.values()],
                    calls_compiled=self.calls["compiled"], calls_eager=self.calls["eager"])


def compiled_or_eager(fn, cfg: CompileConfig | None, name: str, device=None) -> Compiled:
    """A `Compiled` call site: compiled when compiling is on, else eager — counted either way, so every run can say
    how many of its calls ran eagerly."""
    return Compiled(fn, cfg if cfg is not None else CompileConfig(enabled=False), name, device)


def outcomes(sites=None) -> list[dict]:
    """The outcome of every live call site (or of `sites`), one dict each, in creation order of their names."""
    return [s.outcome() for s in (list(_SITES) if sites is None else sites)]


def summarise(rows: list[dict]) -> dict:
    """Per call-site name: calls each way, graphs, compile seconds, fallbacks and their reasons (several models of a
    process, e.g. the demo's stages, add up)."""
    out: dict = {}
    for r in rows:
        s = out.setdefault(r["site"], dict(calls_compiled=0, calls_eager=0, graphs=0, compile_s=0.0, fell_back=False,
                                           reasons=[], cudagraphs=False, cudagraph_skips=0))
        for k in ("calls_compiled", "calls_eager", "graphs", "cudagraph_skips"):
            s[k] += r[k]
        s["compile_s"] = round(s["compile_s"] + r["compile_s"], 3)
        s["fell_back"] |= r["fell_back"]
        s["cudagraphs"] |= r["cudagraphs"]
        if r["reason"] and r["reason"] not in s["reasons"]:
            s["reasons"].append(r["reason"][:300])
    return out


def snapshot() -> dict:
    """Cumulative calls per call-site object, to take a run's share later (`since`)."""
    return {id(s): dict(s.calls) for s in list(_SITES)}


def since(before: dict, sites=None) -> list[dict]:
    """Outcomes with each site's calls counted from `before` (a `snapshot()`) on."""
    rows = []
    for s in (list(_SITES) if sites is None else sites):
        r = s.outcome()
        b = before.get(id(s), {"compiled": 0, "eager": 0})
        r["calls_compiled"] -= b["compiled"]
        r["calls_eager"] -= b["eager"]
        rows.append(r)
    return rows
