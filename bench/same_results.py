"""Same-results check: prove that a refactor changed no result.

Builds a tiny, fixed-seed world (random tiny SD model, two tiny classifiers, a small image folder), then runs a
chain of tasks ONLY through the CLI (`python -m digin <task> key=value ...`, so the same script runs against any
tree put first on PYTHONPATH) with several non-default keys, so that a key the refactor drops or renames shows up
as a changed result: shard, caption, invert (null_text and negative_prompt), segment, uvce, diff,
neurons visualise (with its word search) and neurons counterfactuals. For every stage it prints

    stage  sha256  n_members

where sha256 runs over the member names and bytes of every shard tar of the stage's output folder (sorted; the
manifests / run records outside the tars carry timestamps and are ignored). CPU only, a few minutes.

  OMP_NUM_THREADS=1 PYTHONPATH=/tmp/base python bench/same_results.py --work /tmp/same_base --json base.json
  OMP_NUM_THREADS=1 python bench/same_results.py --work /tmp/same_new --json new.json
  python bench/same_results.py --compare base.json new.json     # exit 1 if any stage differs
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

SEED = 0
CLASSES = ["cat", "dog", "fox"]


def _find(name: str, modules: list[str]):
    """`name` from the first of `modules` that has it (a refactor may be moving the builders, also into tests/)."""
    import digin

    root = str(Path(digin.__file__).resolve().parents[1])  # the tree under test: its tests/ package, if needed
    if root not in sys.path:
        sys.path.append(root)
    for mod in modules:
        try:
            obj = getattr(importlib.import_module(mod), name, None)
        except ImportError:
            continue
        if obj is not None:
            return obj
    raise SystemExit(f"same_results: cannot find {name} in any of {modules}")


def build_world(root: Path) -> dict:
    build_tiny_sd = _find("build_tiny_sd", ["digin.engine.models", "digin.models", "digin.engine.sd", "digin.sd",
                                           "tests.engine.builders", "tests.builders"])
    save_tiny_classifier = _find("save_tiny_classifier", [
        "digin.engine.classifiers", "digin.engine.classifiers.tiny", "digin.classifiers", "digin.classifiers.tiny",
        "tests.engine.builders", "tests.builders"])
    make_image_folder = _find("make_image_folder", ["digin.shards.synthetic", "digin.synthetic",
                                                    "digin.data.synthetic", "digin.testing.synthetic",
                                                    "tests.shards.builders", "tests.builders"])
    build_tiny_sd(seed=SEED, folder=root / "models" / "sd")
    a = save_tiny_classifier(root / "models" / "clf_a", num_classes=3, size=32, seed=1)
    b = save_tiny_classifier(root / "models" / "clf_b", num_classes=3, size=32, seed=2)
    make_image_folder(root / "raw", classes=CLASSES, n_per_class=1, size=48, seed=SEED)
    return {"sd": root / "models" / "sd", "clf": f"tiny:{a}", "clf2": f"tiny:{b}", "raw": root / "raw"}


def stages(r: Path, w: dict) -> list[tuple[str, str, list[str], Path]]:
    """(stage, task, keys, output folder whose tars are hashed)."""
    img, cap, inv = r / "images", r / "captions", r / "inv_null"
    sd = [f"model_path={w['sd']}", "resolution=32", "device=cpu", "progress=false", "batch_size=2"]
    guided = sd + ["num_ddim_steps=4", "optim_params.sgd_steps=2", "optim_params.sgd_stepsize=0.05",
                   "augmentation_num_cutouts=2", "augmentation_noise_sd=0.01", "seed=3"]
    neur = guided + [f"classifier={w['clf']}", f"images={img}", f"out={r / 'neurons'}"]
    return [
        ("shard", "shard", ["source=imagefolder", f"root={w['raw']}", "split=val", f"out={img}", "name=same",
                            "samples_per_shard=2", "workers=1"], img),
        ("caption", "caption", [f"inputs={img}", f"out={cap}", "backend=template", "template=a picture of a {label}",
                                "progress=false"], cap),
        ("invert_null_text", "invert", sd + [f"inputs={img}", f"captions={cap}", f"out={inv}", "num_ddim_steps=5",
                                             "method=null_text", "num_inner_steps=2", "guidance_scale=2.5",
                                             "epsilon=1e-6", "seed=5"], inv),
        ("invert_negative_prompt", "invert", sd + [f"inputs={img}", f"out={r / 'inv_neg'}", "num_ddim_steps=4",
                                                   "method=negative_prompt", "prompt_template=a snapshot of a {label}",
                                                   "save_reconstruction=false"], r / "inv_neg"),
        ("segment", "segment", sd + [f"images={img}", f"inversions={inv}", f"out={r / 'segment'}",
                                     "num_ddim_steps=5", "guidance_scale=2.5", "segmentation.xa_map_resolution=8",
                                     "segmentation.postprocessing=[erosion_3,dilation_5]"], r / "segment"),
        ("uvce", "uvce", guided[:-1] + [f"images={img}", f"inversions={inv}", f"out={r / 'uvce'}",
                                        "num_ddim_steps=5", f"classifier={w['clf']}", "pairs=all_classes",
                                        "guidance_scale=2.5", "seed=4",
                                        "regularizers=[latent_background_l2,px_background_l2]",
                                        "regularizers_ws=[10.0,100.0]", "loss=log_conf",
                                        "mask_blend.initial_mask_blend_schedule=[threshold_0.3]"], r / "uvce"),
        ("diff", "diff", guided + [f"out={r / 'diff'}", f"classifier1={w['clf']}", f"classifier2={w['clf2']}",
                                   "class_names=[cat,dog,fox]", "target_classes=[0,2]", "num_images=1",
                                   "guidance_scale=4.0", "early_stopping_confidence=0.99",
                                   "prompt_template=a drawing of a", "regularizers=[latent_l2]",
                                   "regularizers_ws=[0.5]"], r / "diff" / "results"),
        ("neurons_visualise", "neurons", neur + ["mode=visualise", "neurons=[0,1]", "num_images=1",
                                                 "name_backend=given", "words={0: [cat, dog], 1: [fox]}",
                                                 "images_per_word=2", "sd_batch_size=2", "search_guidance_scale=5.0",
                                                 "prompt_template=a sketch of a"], r / "neurons" / "visualise"),
        ("neurons_counterfactuals", "neurons", neur + ["mode=counterfactuals", f"inversions={inv}", "num_ddim_steps=5",
                                                       "guidance_scale=2.5", "pairs=[[0,1],[2,0]]",
                                                       "num_images_per_pair=1"],
         r / "neurons" / "counterfactuals"),
    ]


def file_digest(root: Path, folders: list[str]) -> tuple[str, int]:
    """sha256 over (relative path, bytes) of every file under `folders`: the world the stages start from."""
    h, n = hashlib.sha256(), 0
    for f in sorted(p for d in folders for p in (root / d).rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(root)}\0{hashlib.sha256(f.read_bytes()).hexdigest()}\n".encode())
        n += 1
    return h.hexdigest(), n


def tar_digest(folder: Path, work: Path) -> tuple[str, int]:
    """sha256 over (member name, member bytes) of every tar member, sorted; the work folder's path (diff records
    the classifier specs) reads as <WORK>, so runs in different folders compare."""
    entries = []
    for t in sorted(folder.rglob("*.tar")):
        with tarfile.open(t) as tf:
            for m in tf.getmembers():
                if m.isfile():
                    entries.append((m.name, hashlib.sha256(
                        tf.extractfile(m).read().replace(str(work).encode(), b"<WORK>")).hexdigest()))
    h = hashlib.sha256()
    for name, digest in sorted(entries):
        h.update(f"{name}\0{digest}\n".encode())
    return h.hexdigest(), len(entries)


def run_all(work: Path) -> dict:
    work = work.resolve()
    if work.exists() and any(work.iterdir()):
        raise SystemExit(f"same_results: {work} is not empty (outputs must be fresh)")
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    # cwd=work: `python -m digin` must import the digin on PYTHONPATH, not one in the caller's folder
    who = subprocess.run([sys.executable, "-c", "import digin; print(digin.__file__)"], cwd=work, env=env,
                         capture_output=True, text=True, check=True).stdout.strip()
    print(f"[same] digin = {who}", flush=True)
    t_all = time.monotonic()
    world = build_world(work)
    digest, n = file_digest(work, ["models", "raw"])
    results = {"world": {"sha256": digest, "n_members": n}}
    print(f"{'world':<26} {digest}  {n:>4}", flush=True)
    for stage, task, keys, folder in stages(work, world):
        t0 = time.monotonic()
        p = subprocess.run([sys.executable, "-m", "digin", task, *keys], check=False, cwd=work,
                           env=env, capture_output=True, text=True)
        if p.returncode != 0:
            print(p.stdout[-4000:], p.stderr[-4000:], sep="\n", file=sys.stderr)
            raise SystemExit(f"same_results: stage {stage} failed (exit {p.returncode})")
        digest, n = tar_digest(folder, work)
        if n == 0:
            raise SystemExit(f"same_results: stage {stage} wrote no tar members under {folder}")
        results[stage] = {"sha256": digest, "n_members": n}
        print(f"{stage:<26} {digest}  {n:>4}   ({time.monotonic() - t0:.1f}s)", flush=True)
    print(f"[same] all stages in {time.monotonic() - t_all:.1f}s", flush=True)
    return results


def _fmt(v) -> str:
    return "missing" if v is None else f"{v['sha256'][:16]} n={v['n_members']}"


def compare(a: Path, b: Path) -> int:
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    bad = 0
    for stage in list(ra) + [s for s in rb if s not in ra]:
        x, y = ra.get(stage), rb.get(stage)
        same = x == y
        bad += not same
        print(f"{'same' if same else 'DIFF':<5} {stage:<26} {_fmt(x)}" + ("" if same else f"  vs  {_fmt(y)}"))
    print(f"{bad} stage(s) differ" if bad else "all stages identical")
    return 1 if bad else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, help="empty folder for the world and the outputs")
    ap.add_argument("--json", type=Path, help="write {stage: {sha256, n_members}} here")
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"), help="compare two --json files")
    args = ap.parse_args(argv)
    if args.compare:
        return compare(*args.compare)
    if not args.work:
        ap.error("--work (or --compare) is required")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    results = run_all(args.work)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
