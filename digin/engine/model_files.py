"""Is a Stable Diffusion model on disk complete? Configs parse, weight files are there, readable and whole —
checked from file headers, without loading a weight.

`check_model` answers for a diffusers folder (SD-1.x / SD-2.x / SDXL) or a single-file checkpoint (+ its
`model_config` folder) with every problem, each naming the file and where it was looked for; `require_complete`
raises with them before a loader meets a half-copied folder (a truncated safetensors file otherwise fails with
a message that names no file): ModelFileError, an expected error (digin.errors), so every rank prints one line
and no traceback. `digin doctor model_path=...` prints the same report. `detect_family` reads a
folder's family from its configs (engine/families.py builds on it).
"""
from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from digin.engine.models import LDM_PREFIXES
from digin.errors import UserError
from digin.shards.members import safetensors_header_problem

# What the loaders read from a diffusers folder: component → weight file stem (safetensors only).
WEIGHTS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}
SDXL_WEIGHTS = {**WEIGHTS, "text_encoder_2": "model"}
TOKENIZER_FILES = ("vocab.json", "merges.txt")
FAST_TOKENIZER = "tokenizer.json"
MAX_HEADER = 100 * 2**20  # a safetensors header is JSON; anything this large is garbage


class ModelFileError(UserError, ValueError):
    """A model on disk that is incomplete or corrupt (cut-short weights, a garbage header, a config that does not
    parse, a model_path that is no model): the message names each file and what is wrong."""


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def detect_family(folder: str | os.PathLike) -> str:
    """sdxl when there is a second text encoder (or the pipeline class says XL); sd2 for v-prediction or an
    OpenCLIP-H (hidden 1024) text encoder; otherwise sd1."""
    f = Path(folder)
    if (f / "text_encoder_2").is_dir() or "XL" in _json(f / "model_index.json").get("_class_name", ""):
        return "sdxl"
    if _json(f / "scheduler" / "scheduler_config.json").get("prediction_type") == "v_prediction":
        return "sd2"
    if _json(f / "text_encoder" / "config.json").get("hidden_size") == 1024:
        return "sd2"
    return "sd1"


@dataclass
class ModelReport:
    path: Path
    kind: str = ""  # "sd1 folder", "sdxl folder", "single file", ...
    weight_files: list[Path] = field(default_factory=list)
    weight_bytes: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        return (f"{self.kind}, {len(self.weight_files)} weight file(s), {self.weight_bytes / 2**20:.1f} MiB"
                + "".join(f"; {n}" for n in self.notes))


def read_safetensors_header(path: Path) -> dict:
    """The tensor entries (name → dtype/shape/offsets) of a safetensors file, from its header alone; ValueError
    naming the file when it is not one, or does not hold the bytes its header describes (an interrupted copy)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else 0
        data = head + f.read(min(n, MAX_HEADER))
    problem = safetensors_header_problem(data, size)
    if problem:
        raise ValueError(f"{path} ({size} bytes): {problem} — not a safetensors file, or cut short (copy it again)")
    return {k: v for k, v in json.loads(data[8:]).items() if k != "__metadata__"}


def _add_weights(path: Path, report: ModelReport) -> bool:
    problem = weights_file_problem(path)
    if problem:
        report.problems.append(problem)
        return False
    report.weight_files.append(path)
    report.weight_bytes += path.stat().st_size
    return True


def _check_json(path: Path, report: ModelReport, required: bool = True) -> dict | None:
    if not path.is_file():
        if required:
            report.problems.append(f"{path.name} missing: looked for {path}")
        return None
    try:
        data = json.loads(path.read_text())
    except PermissionError:
        report.problems.append(f"{path}: not readable (permission denied)")
        return None
    except (OSError, ValueError) as e:
        report.problems.append(f"{path}: not valid JSON ({e})")
        return None
    if isinstance(data, dict) and "auto_map" in data:
        report.problems.append(f"{path} asks for remote code (auto_map); digin never runs model-supplied code")
    return data if isinstance(data, dict) else None


def _component_weights(folder: Path, stem: str, report: ModelReport):
    """One `<stem>.safetensors`, or the shards a `<stem>.safetensors.index.json` lists."""
    single, index = folder / f"{stem}.safetensors", folder / f"{stem}.safetensors.index.json"
    if single.is_file():
        _add_weights(single, report)
        return
    if index.is_file():
        data = _check_json(index, report)
        shards = sorted(set((data or {}).get("weight_map", {}).values()))
        if data is not None and not shards:
            report.problems.append(f"{index}: lists no weight files")
        for name in shards:
            if (folder / name).is_file():
                _add_weights(folder / name, report)
            else:
                report.problems.append(f"weight shard {name} missing: {index.name} lists it, "
                                       f"looked for {folder / name}")
        return
    others = sorted(p.name for p in folder.glob(f"{stem}*") if p.suffix in (".bin", ".ckpt", ".pt", ".safetensors"))
    hint = (f"; found {', '.join(others)}: digin loads .safetensors only (convert with "
            "save_pretrained(..., safe_serialization=True))" if others else "")
    report.problems.append(f"{folder.name} weights missing: looked for {single} (or a sharded {index.name}){hint}")


def _check_tokenizer(folder: Path, report: ModelReport):
    """A fast tokenizer (tokenizer.json) or the CLIP BPE files (vocab.json + merges.txt)."""
    if (folder / FAST_TOKENIZER).is_file():
        return
    missing = [name for name in TOKENIZER_FILES if not (folder / name).is_file()]
    if missing:
        report.problems.append(f"{folder.name} files missing: looked for {folder / FAST_TOKENIZER} or "
                               f"{' + '.join(TOKENIZER_FILES)} there ({', '.join(missing)} absent)")


def _check_configs(folder: Path, components, report: ModelReport, weights: bool):
    """weights=False: a single file's `model_config` folder (architecture only; the scheduler config is needed)."""
    for comp, stem in components.items():
        if not (folder / comp).is_dir():
            report.problems.append(f"{comp}/ missing: looked for {folder / comp}")
            continue
        _check_json(folder / comp / "config.json", report)
        if weights:
            _component_weights(folder / comp, stem, report)
    for tok in ["tokenizer"] + (["tokenizer_2"] if "text_encoder_2" in components else []):
        _check_tokenizer(folder / tok, report)
    sched = folder / "scheduler" / "scheduler_config.json"
    if _check_json(sched, report, required=not weights) is None and not sched.exists() and weights:
        report.notes.append(f"no {sched.relative_to(folder)}: the loader's DDIM defaults apply")
    if not weights and "text_encoder_2" in components:
        _check_json(folder / "model_index.json", report)


def check_folder(folder: Path, weights: bool = True) -> ModelReport:
    family = detect_family(folder)
    kind = f"{family} diffusers folder" if (folder / "unet").is_dir() else "folder without unet/ (not diffusers SD?)"
    report = ModelReport(folder, kind=kind + ("" if weights else " (configs)"))
    _check_configs(folder, SDXL_WEIGHTS if family == "sdxl" else WEIGHTS, report, weights)
    return report


def torch_archive_problem(path: Path) -> str | None:
    """A torch.save zip archive (.pth / .ckpt / .pt) must open as a zip with a data.pkl; its directory sits at the
    end of the file, so a cut-short copy fails here. Nothing is unpickled. Files of torch's legacy (pre-1.6,
    plain pickle) format pass when they start like a pickle."""
    try:
        with open(path, "rb") as f:
            if f.read(1) == b"\x80" and not zipfile.is_zipfile(path):
                return None
        with zipfile.ZipFile(path) as z:
            if not any(n.endswith("data.pkl") for n in z.namelist()):
                return f"{path}: not a torch checkpoint archive (no data.pkl)"
    except PermissionError:
        return f"{path}: not readable (permission denied)"
    except (OSError, zipfile.BadZipFile) as e:
        return f"{path}: not readable as a torch checkpoint ({e}); cut short or corrupt?"
    return None


def weights_file_problem(path: str | Path) -> str | None:
    """None when a weights file (.safetensors, or a torch archive) is there, readable and whole by its header."""
    path = Path(path).expanduser()
    if not path.is_file():
        return f"{path} not found"
    if path.suffix == ".safetensors":
        try:
            read_safetensors_header(path)
        except PermissionError:
            return f"{path}: not readable (permission denied)"
        except (OSError, ValueError) as e:
            return str(e)
        return None
    return torch_archive_problem(path)


def _single_file_keys(path: Path, report: ModelReport) -> list[str] | None:
    """The tensor names of a single-file checkpoint (None when unknown before loading, or broken)."""
    if path.suffix not in (".safetensors", ".ckpt"):
        report.problems.append(f"{path}: single-file checkpoints must be .safetensors (or .ckpt)")
        return None
    if not _add_weights(path, report):
        return None
    if path.suffix == ".ckpt":
        report.notes.append("the keys of a .ckpt are only seen when it loads")
        return None
    return list(read_safetensors_header(path))


def check_single_file(path: Path, model_config: str | None) -> ModelReport:
    report = ModelReport(path, kind="single-file checkpoint")
    if path.suffix == ".json":
        report.problems.append(f"{path} is a JSON file, not a model: model_path= takes the diffusers folder "
                               f"(the one holding model_index.json, e.g. {path.parent}) or a single .safetensors "
                               "checkpoint + model_config")
        return report
    keys = _single_file_keys(path, report)
    if keys is not None:
        for part, prefixes in LDM_PREFIXES.items():
            if not any(k.startswith(prefixes) for k in keys):
                report.problems.append(f"{path}: no {part} weights (no key starts with {' or '.join(prefixes)}); "
                                       "not an original LDM/CompVis Stable Diffusion checkpoint")
    if model_config is None:
        report.problems.append(f"{path}: a single-file checkpoint needs model_config=<local diffusers folder> "
                               "(its architecture; weights not needed there)")
    elif not Path(model_config).is_dir():
        report.problems.append(f"model_config {model_config} is not a local folder")
    else:
        cfg = check_folder(Path(model_config), weights=False)
        report.kind += f" + {cfg.kind} {model_config}"
        report.problems += cfg.problems
        report.notes += cfg.notes
    return report


def check_model(model_path: str, model_config: str | None = None) -> ModelReport:
    path = Path(model_path).expanduser()
    if path.is_dir():
        return check_folder(path)
    if path.is_file():
        return check_single_file(path, model_config)
    return ModelReport(path, kind="missing", problems=[f"model_path {path} does not exist (a local diffusers "
                                                       "folder, or a single .safetensors file + model_config)"])


def require_complete(model_path: str, model_config: str | None = None):
    """Raise (FileNotFoundError when files are missing, else ModelFileError; every problem named) unless the model
    on disk is complete."""
    report = check_model(model_path, model_config)
    if report.ok:
        return
    missing = any("missing" in p or "does not exist" in p for p in report.problems)
    raise (FileNotFoundError if missing else ModelFileError)(
        f"model_path {report.path} is not a complete model: " + "; ".join(report.problems))
