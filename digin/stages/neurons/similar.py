"""Groups of similar neurons side by side (the reference's imagenet_cog_compare_similar_neurons.py).

For each group (default: the reference's four, digin/data/neurons.json), every `ours` image the visualise mode made
for a neuron of the group is run through the classifier once (no augmentation) and every group neuron's activation
is read: a neuron that fires on its neighbours' visualisations as much as on its own is redundant with them.
Output per group in out/similar_neurons/: `<n1>_<n2>_....json` (the activation matrix) and `.png` (the grid: a row
per neuron of the group, its visualisations, under each image every group neuron's activation).

Nothing is generated here, so the mode is cheap; a group whose json holds this config's hash is not redone.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from digin.shards.keyed import KeyIndex, read_keys
from digin.shards.manifest import ShardSet, atomic_write_bytes, write_json
from digin.stages.args import record
from digin.stages.models import pick_device
from digin.stages.neurons.counterfactuals import neurons_table
from digin.stages.neurons.modes import _classifier, _hash, feature_count

FOLDER = "similar_neurons"
KEY_NEURON = "neurons/n"  # visualise item keys: neurons/n<neuron>/i<i>


def default_groups() -> list[list[int]]:
    return [[int(n) for n in g] for g in neurons_table()["similar_neuron_groups"]]


def resolve_groups(spec) -> list[list[int]]:
    """`target_neurons=[[n, ...], ...]`: lists of neurons, or the index of a default group; [] → all defaults."""
    defaults = default_groups()
    if not spec:
        return defaults
    groups = []
    for g in spec:
        if isinstance(g, int):
            if not 0 <= g < len(defaults):
                raise SystemExit(f"digin neurons mode=similar: target_neurons: group {g} is unknown (the default "
                                 f"groups are 0..{len(defaults) - 1})")
            groups.append(defaults[g])
        else:
            ns = [int(n) for n in g]
            if len(ns) < 2 or len(set(ns)) != len(ns):
                raise SystemExit(f"digin neurons mode=similar: target_neurons: group {list(g)} needs two or more "
                                 "different neurons")
            groups.append(ns)
    return groups


def visualised_neurons(ss) -> dict[int, list[str]]:
    """neuron → its visualise result keys, from the commit records (nothing read)."""
    out: dict[int, list[str]] = {}
    for k in KeyIndex(ss).keys():
        if k.startswith(KEY_NEURON):
            out.setdefault(int(k[len(KEY_NEURON):].split("/", 1)[0]), []).append(k)
    return out


def check_groups(groups, have: dict, folder, num_features: int | None = None) -> None:
    """Every group neuron must be a feature of the classifier and have visualisations: one line otherwise."""
    for g in groups:
        for n in g:
            if num_features is not None and not 0 <= n < num_features:
                raise SystemExit(f"digin neurons mode=similar: target_neurons: neuron {n} of group {g} is outside the "
                                 f"classifier's {num_features} features (0..{num_features - 1})")
            if n not in have:
                raise SystemExit(f"digin neurons mode=similar: target_neurons: neuron {n} of group {g} has no "
                                 f"visualisation in {folder} (it has neurons {sorted(have)[:20]}); run mode=visualise "
                                 "with these neurons first")


def group_name(group) -> str:
    return "_".join(map(str, group))


def read_images(ss, keys: set[str], member: str) -> dict[str, tuple[np.ndarray, dict]]:
    """key → (the `member` image, metrics) of the wanted visualisations, each read by its span (nothing else)."""
    index = KeyIndex(ss)
    got = read_keys(ss, [index.where[k] for k in sorted(keys) if k in index], keep=(member, "metrics"))
    return {s["__key__"]: (s[member], s.get("metrics") or {}) for s in got.values()
            if isinstance(s.get(member), np.ndarray)}


@torch.no_grad()
def activations(clf, images: list[np.ndarray], batch_size: int, device) -> torch.Tensor:
    """(N, F) features of uint8 HWC images of one size, no augmentation."""
    feats = []
    for s in range(0, len(images), batch_size):
        x = torch.from_numpy(np.stack(images[s:s + batch_size])).permute(0, 3, 1, 2).to(device).float() / 255.0
        feats.append(clf.features(x)[1][:, 0].float().cpu())
    return torch.cat(feats) if feats else torch.zeros(0, 0)


def compare_group(group, by_neuron: dict, found: dict, clf, batch_size: int, device) -> dict:
    """The activation matrix of one group: a row per visualisation (of the group's neurons, in order)."""
    rows, images = [], []
    for n in group:
        for k in sorted(by_neuron[n], key=_key_order):
            if k in found:
                img, m = found[k]
                rows.append({"key": k, "neuron": n, "i": m.get("i"), "word": m.get("word")})
                images.append(img)
    feats = activations(clf, images, batch_size, device)
    acts = feats[:, group].tolist() if len(images) else []
    for r, a in zip(rows, acts):
        r["activations"] = [float(v) for v in a]
    return {"group": list(group), "images": rows, "activations": acts}


def _key_order(k: str):
    tail = k.rsplit("/i", 1)[-1]
    return (int(tail) if tail.isdigit() else 1 << 30, k)


def grid_png(table: dict, found: dict, tile: int = 160) -> bytes:
    """A row per group neuron, its visualisations; under each image every group neuron's activation (the reference's
    titles), the image's own neuron marked with '*'."""
    import io

    from PIL import Image, ImageDraw

    group, rows = table["group"], table["images"]
    per = {n: [r for r in rows if r["neuron"] == n] for n in group}
    cols = max([len(v) for v in per.values()] + [1])
    text_h = 14 + 12 * len(group) + 6  # the row's title above, the activations below
    canvas = Image.new("RGB", (cols * tile, len(group) * (tile + text_h)), "white")
    draw = ImageDraw.Draw(canvas)
    for r_i, n in enumerate(group):
        y0 = r_i * (tile + text_h)
        draw.text((4, y0 + 2), f"neuron {n}", fill="black")
        for c_i, r in enumerate(per[n]):
            x0 = c_i * tile
            im = Image.fromarray(found[r["key"]][0]).convert("RGB").resize((tile, tile), Image.BICUBIC)
            canvas.paste(im, (x0, y0 + 14))
            for j, (m, a) in enumerate(zip(group, r["activations"])):
                draw.text((x0 + 4, y0 + 16 + tile + 12 * j), f"{'*' if m == n else ' '}n{m}: {a:.4f}", fill="black")
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def run_similar(cfg, settings) -> int:
    folder = Path(cfg.results or Path(cfg.out) / "visualise")
    try:
        ss = ShardSet.load(folder)
    except FileNotFoundError:
        raise SystemExit(f"digin neurons mode=similar: {folder} is not a result shard set; run mode=visualise first "
                         "(or give results=<its folder>)") from None
    groups = resolve_groups(list(cfg.target_neurons))
    have = visualised_neurons(ss)
    check_groups(groups, have, folder)
    chash = _hash({"stage": "neurons_similar", "results": ss.meta.get("config_hash") or str(ss.dir),
                   "committed": sorted(r.get("sha256", "") for r in ss.records.values()),
                   **record(cfg, "neurons_similar", settings)})
    out = Path(cfg.out) / FOLDER
    todo = [g for g in groups if cfg.force or not _done(out, g, chash)]
    if not todo:
        print(f"[neurons] similar: {len(groups)} group(s) already done in {out}", flush=True)
        return 0
    dev = pick_device(cfg.device)
    clf = _classifier(cfg, dev, settings, cutouts=False)
    check_groups(todo, have, folder, feature_count(clf, dev))  # outside the layer: refused before any write
    found = read_images(ss, {k for g in todo for n in g for k in have[n]}, "ours")
    out.mkdir(parents=True, exist_ok=True)
    for g in todo:
        table = {**compare_group(g, have, found, clf, cfg.activation_batch_size, dev), "config_hash": chash,
                 "results": str(folder), "classifier": cfg.classifier, "layer": cfg.layer, "image": "ours"}
        atomic_write_bytes(out / f"{group_name(g)}.png", grid_png(table, found))
        write_json(out / f"{group_name(g)}.json", table)  # last: its hash marks the group done
        print(f"[neurons] similar: group {g}: {len(table['images'])} visualisations → {out / group_name(g)}.png",
              flush=True)
    return 0


def _done(out: Path, group, chash: str) -> bool:
    import json

    js, png = out / f"{group_name(group)}.json", out / f"{group_name(group)}.png"
    try:
        return png.is_file() and json.loads(js.read_text()).get("config_hash") == chash
    except (OSError, ValueError):
        return False
