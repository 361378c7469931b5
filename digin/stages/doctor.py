"""`digin doctor`'s checks (the task's docstring lists them): one Check per line of the screen, and the screen."""
from __future__ import annotations

import os
import platform
import socket
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

from digin.engine.classifiers import load_classifier
from digin.engine.classifiers.registry import weights_source
from digin.engine.model_files import check_model, weights_file_problem
from digin.engine.perceptual import lpips_trunk_file
from digin.engine.presets import compute_of, describe, xformers_problem
from digin.extras import STACKS, require
from digin.kernels.cfg_ddim import cfg_ddim_reference
from digin.shards.dist import device_for_local_rank, rank_world
from digin.shards.environment import package_version, version_line

# What a stage cannot start without (beyond its input shards): doctor fails when `stage=` names it and it is absent.
STAGE_INPUTS = {"invert": ("model_path",), "segment": ("model_path",), "uvce": ("model_path", "classifier"),
                "diff": ("model_path", "classifier"), "neurons": ("classifier",), "eval": ("classifier",)}
VERSIONS = ("torch", "torchvision", "diffusers", "transformers", "timm", "triton", "xformers", "safetensors", "numpy")
NEEDS = ("gpu",) + tuple(STACKS)


@dataclass
class Check:
    name: str
    status: str  # ok | info | warn | FAIL (only FAIL changes the exit code)
    detail: str
    fix: str = ""


# ------------------------------------------------------------------------------------------- machine
def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def check_device(dev, need_gpu: bool) -> Check:
    import torch

    if dev.type == "cuda" and torch.cuda.is_available():
        try:
            p = torch.cuda.get_device_properties(dev)
            x = torch.randn(64, 64, device=dev)
            float((x @ x).sum())  # the GPU really runs work, not only enumerates
        except Exception as e:  # noqa: BLE001 — any CUDA failure is the finding
            return Check("device", "FAIL", f"{dev}: {type(e).__name__}: {str(e).splitlines()[0][:300]}",
                         "check nvidia-smi on this node; another process may hold the GPU, or the driver is broken")
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        return Check("device", "ok", f"{dev} {p.name}, {p.total_memory / 2**30:.1f} GiB, compute {p.major}.{p.minor}, "
                     f"driver {_nvidia_driver() or '?'}; {torch.cuda.device_count()} GPU(s) visible"
                     + (f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""))
    why = ("torch is a CPU-only build" if torch.version.cuda is None
           else f"torch (CUDA {torch.version.cuda}) sees no CUDA device")
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        why += f", CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r}"
    detail = f"no GPU: {why}; stages run on the CPU (torch threads: {torch.get_num_threads()})"
    if need_gpu:
        return Check("device", "FAIL", detail, "run on a GPU node (Slurm: --gpus-per-node / --gres=gpu), check "
                     "nvidia-smi and CUDA_VISIBLE_DEVICES, or install a CUDA build of torch")
    return Check("device", "info", detail)


def check_versions() -> Check:
    import torch

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return Check("versions", "info", ", ".join(f"{p} {package_version(p) or '-'}" for p in VERSIONS)
                 + f"; CUDA {torch.version.cuda or '-'}, cuDNN {cudnn or '-'}")


def check_ranks(dev) -> Check:
    import torch

    try:
        rank, world, local = rank_world()
    except ValueError as e:
        return Check("ranks", "FAIL", str(e), "torchrun / srun set RANK, WORLD_SIZE (or SLURM_PROCID, SLURM_NTASKS)")
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        source = "from torchrun (RANK, WORLD_SIZE, LOCAL_RANK)"
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        source = f"from Slurm (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID), job {env.get('SLURM_JOB_ID', '?')}"
    else:
        source = "no torchrun or Slurm variables: one rank"
    detail = f"rank {rank} of {world}, local rank {local} → {dev}; {source}"
    n = torch.cuda.device_count() if dev.type == "cuda" else 0
    if n and local >= n:
        return Check("ranks", "warn", detail + f"; local rank {local} but {n} GPU(s) visible: ranks share GPUs",
                     "start one task per GPU (--ntasks-per-node = GPUs per node, or torchrun --nproc-per-node)")
    return Check("ranks", "ok", detail)


def check_compute(cfg, dev) -> Check:
    try:
        settings = compute_of(cfg, dev)
    except ValueError as e:
        return Check("compute", "FAIL", str(e), "change that key (digin <task> --help lists the values)")
    return Check("compute", "ok", f"a stage here runs {describe(settings)} (preset={cfg.preset} on {dev.type}; "
                 "preset= and single keys such as dtype= or batch_size= override)")


def _folder_problem(path: Path) -> str | None:
    """Why compiled code cannot be kept under `path`, checked without writing anything, or None: the nearest
    existing folder on the way must be a writable folder (a file there, a read-only or unreadable path fail)."""
    try:
        p = Path(path).expanduser()
        while not p.exists() and p != p.parent:
            p = p.parent
        if not p.is_dir():
            return f"{p} is a file, not a folder"
        if not os.access(p, os.W_OK | os.X_OK):
            return f"{p} is not writable"
    except (OSError, ValueError, RuntimeError) as e:  # an unreadable parent, an odd path: the finding
        return f"cannot be used ({type(e).__name__}: {e})"
    return None


def _default_inductor_cache() -> Path:
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
        return Path(default_cache_dir())
    except Exception:  # noqa: BLE001 — an older torch, or its default failing on this machine: the documented one
        return Path("/tmp") / f"torchinductor_{os.environ.get('USER', '')}"


def check_compile_cache() -> Check:
    """Where torch.compile (inductor) and digin's Triton kernels keep compiled code, and whether it is usable. A
    cache folder named by TORCHINDUCTOR_CACHE_DIR / TRITON_CACHE_DIR that cannot be used is a FAIL naming the
    variable (compiling would fail on every rank); an unusable default is a warning."""
    default = _default_inductor_cache()
    try:
        home_triton = Path.home() / ".triton" / "cache"
    except (RuntimeError, KeyError):  # no home folder for this user
        home_triton = Path("/tmp") / ".triton" / "cache"
    places = [("torch.compile", "TORCHINDUCTOR_CACHE_DIR", os.environ.get("TORCHINDUCTOR_CACHE_DIR"), default),
              ("Triton kernels", "TRITON_CACHE_DIR", os.environ.get("TRITON_CACHE_DIR"), home_triton)]
    parts, failed, warned = [], [], []
    for what, var, value, fallback in places:
        path = Path(value) if value else fallback
        problem = _folder_problem(path)
        parts.append(f"{what} {path} ({problem or 'writable'})")
        if problem:
            (failed if value else warned).append(f"{var}={value}: {problem}" if value else f"{what}: {problem}")
    detail = ", ".join(parts)
    if failed:
        return Check("cache", "FAIL", "; ".join(failed), "point " + " / ".join(f.split("=")[0] for f in failed)
                     + " at a writable folder (shared by the job's ranks), or unset it")
    if warned:
        return Check("cache", "warn", detail, "set TORCHINDUCTOR_CACHE_DIR / TRITON_CACHE_DIR to writable folders")
    inductor = Path(places[0][2] or default)
    try:
        same = inductor.resolve() == default.resolve()
    except (OSError, RuntimeError):
        same = False
    if same:
        return Check("cache", "info", detail + "; per node and user — TORCHINDUCTOR_CACHE_DIR=<shared folder> "
                     "lets every rank and rerun reuse compiled graphs")
    return Check("cache", "ok", detail)


# ------------------------------------------------------------------------------------------- optional stacks
def _probe_triton(dev) -> tuple[str, str]:
    """The fused CFG+DDIM kernel on a tiny latent, against its eager reference."""
    import torch

    if dev.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return "info", "digin's kernels run on CUDA; not launched here"
    from digin.kernels.cfg_ddim_triton import cfg_ddim_forward  # optional stack: triton

    g = torch.Generator().manual_seed(0)
    eu, ec, x = (torch.randn(2, 4, 8, 8, generator=g).to(dev) for _ in range(3))
    coef = torch.tensor([[3.0, 0.5, 0.7]] * 2, device=dev)
    got, _ = cfg_ddim_forward(eu, ec, x, coef, False)
    want, _ = cfg_ddim_reference(eu, ec, x, 3.0, 0.5, 0.7)
    err = float((got - want).abs().max())
    where = "in the Triton interpreter (TRITON_INTERPRET=1)" if dev.type != "cuda" else f"on {dev}"
    if err > 1e-4:
        return "FAIL", f"the fused CFG+DDIM kernel ran {where} but differs from its reference by {err:.2e}"
    return "ok", f"the fused CFG+DDIM kernel ran {where} and matches its reference"


def _probe_xformers(dev) -> tuple[str, str]:
    if dev.type != "cuda":
        return "info", "memory-efficient attention runs on CUDA; not tried here"
    problem = xformers_problem(dev)  # the same tiny attention attention=xformers is checked with
    return ("FAIL", problem) if problem else ("ok", f"memory_efficient_attention ran on {dev}")


def _weights_probe(path: str | None, key: str) -> tuple[str, str]:
    if not path:
        return "ok", f"weights not checked ({key}=<file> checks them)"
    problem = weights_file_problem(path)
    return ("FAIL", problem) if problem else ("ok", f"weights {path} found and whole")


def _probe_lpips() -> tuple[str, str]:
    import lpips

    heads = Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth"
    if not heads.is_file():
        return "FAIL", f"LPIPS linear heads missing: looked for {heads} (reinstall lpips)"
    trunk = lpips_trunk_file()
    if trunk.is_file():
        return "ok", f"linear heads and AlexNet trunk weights found ({trunk})"
    return "warn", (f"AlexNet trunk weights not found: looked for {trunk}; px_lpips then stops with an error and "
                    "eval skips LPIPS (lpips=true: error) — copy torchvision's alexnet-owt-7be5be79.pth there")


def check_stack(key: str, dev, needed: bool, cfg) -> Check:
    s = STACKS[key]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # import-time chatter; the result below is what counts
            require(key, s.used_for)
    except ImportError as e:
        missing = "No module named" in str(e) or "halted" in str(e)
        detail = f"{'not installed' if missing else 'installed, but its import fails: ' + str(e)[:200]}"
        status = "FAIL" if needed else ("info" if missing else "warn")
        return Check(key, status, f"{detail} — needed for {s.used_for}", s.install)
    except Exception as e:  # noqa: BLE001 — a broken install raises anything at import
        return Check(key, "FAIL" if needed else "warn", f"import fails: {type(e).__name__}: {e}"[:300], s.install)
    probe = {"triton": lambda: _probe_triton(dev), "xformers": lambda: _probe_xformers(dev),
             "sam": lambda: _weights_probe(cfg.sam_checkpoint, "sam_checkpoint"),
             "flamingo": lambda: _weights_probe(cfg.flamingo_checkpoint, "flamingo_checkpoint"),
             "lpips": _probe_lpips}.get(key, lambda: ("ok", "imports"))
    try:
        status, detail = probe()
    except Exception as e:  # noqa: BLE001 — the probe failing is the finding
        status, detail = "FAIL", f"imports, but a tiny run failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    if status == "FAIL" and not needed and key in ("triton", "xformers"):
        status = "warn"  # the eager / SDPA path still runs
    version = package_version(s.dist)
    return Check(key, status, f"{version}: {detail}" if version else detail, s.install if status == "FAIL" else "")


# ------------------------------------------------------------------------------------------- models
def check_model_path(cfg) -> Check:
    report = check_model(cfg.model_path, cfg.model_config)
    if report.ok:
        return Check("model", "ok", f"{report.path}: complete — {report.summary()}")
    return Check("model", "FAIL", f"{report.path}: " + "; ".join(report.problems),
                 "copy the named files again (the folder as save_pretrained wrote it; safetensors weights)")


def check_classifier(cfg) -> Check:
    if cfg.classifier_checkpoint:
        problem = weights_file_problem(cfg.classifier_checkpoint)
        if problem:
            return Check("classifier", "FAIL", f"classifier_checkpoint: {problem}",
                         "give the local weights file the stage will use")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf = load_classifier(cfg.classifier, checkpoint=cfg.classifier_checkpoint, device="cpu")
    except Exception as e:  # noqa: BLE001 — whatever stops the stage from building it is the finding
        return Check("classifier", "FAIL", f"{cfg.classifier}: {type(e).__name__}: {str(e).splitlines()[0][:300]}",
                     "fix the spec or its checkpoint (see README, Tasks: classifiers)")

    n = sum(p.numel() for p in clf.model.parameters())
    weights = weights_source(cfg.classifier, cfg.classifier_checkpoint)  # what the stages will load
    return Check("classifier", "ok", f"{cfg.classifier}: {type(clf.model).__name__}, {n / 1e6:.1f} M parameters, "
                 f"input {clf.size} px, {weights} (built on the CPU)")


def check_stage(cfg) -> list[Check]:
    out = []
    for key in STAGE_INPUTS.get(cfg.stage, ()):
        if getattr(cfg, key) is None:
            out.append(Check("stage", "FAIL", f"{cfg.stage} needs {key}, which was not given here",
                             f"add {key}=<the value your job uses> to check it"))
    return out or [Check("stage", "ok", f"{cfg.stage}: the inputs it needs were given" if cfg.stage in STAGE_INPUTS
                         else f"{cfg.stage}: needs no model or classifier")]


# ------------------------------------------------------------------------------------------- the screen
def _guarded(name: str, check, *args) -> Check:
    """A check that raises becomes its FAIL line: one broken probe never stops the rest of the screen."""
    try:
        return check(*args)
    except Exception as e:  # noqa: BLE001 — the failure is the finding
        first = str(e).splitlines()[0][:300] if str(e) else ""
        return Check(name, "FAIL", f"the check itself failed: {type(e).__name__}" + (f": {first}" if first else ""))


def collect(cfg) -> list[Check]:
    import torch

    dev = torch.device(cfg.device) if cfg.device else device_for_local_rank()
    need_gpu = "gpu" in cfg.needs or dev.type == "cuda"  # device=cuda asks for one too
    checks = [check_device(dev, need_gpu), check_versions()]
    stack_dev = torch.device("cpu") if checks[0].status == "FAIL" else dev
    checks += [check_stack(k, stack_dev, k in cfg.needs, cfg) for k in STACKS]
    checks += [_guarded("compute", check_compute, cfg, stack_dev), _guarded("cache", check_compile_cache),
               _guarded("ranks", check_ranks, dev)]
    if cfg.model_path is not None:
        checks.append(_guarded("model", check_model_path, cfg))
    if cfg.classifier is not None:
        checks.append(check_classifier(cfg))
    if cfg.stage is not None:
        checks += check_stage(cfg)
    return checks


def render(checks: list[Check]) -> str:
    lines = [f"digin doctor — {version_line()}, Python {platform.python_version()}, host {socket.gethostname()}"]
    for c in checks:
        lines.append(f"  {c.status:<5} {c.name:<12}{c.detail}")
        if c.fix:
            lines.append(f"  {'':<5} {'':<12}→ {c.fix}")
    failed = [c.name for c in checks if c.status == "FAIL"]
    lines.append(f"result: {len(failed)} problem(s) ({', '.join(failed)}): see the FAIL lines" if failed
                 else "result: ready — nothing that was asked for is missing")
    return "\n".join(lines)
