"""What the neuron pipeline wrote beside its visualisations, for the gallery's neuron rows: the names / words of
each neuron (`neuron_words.json`), the ranked words of the search (`word_search.json`) and the top-activating
dataset images (`neuron_<n>_top_images.json` + the image shard set recorded in `selected_neurons.json`).

Read from the parent of a `visualise` result folder (`digin neurons ... out=<folder>` writes both). Anything
missing is a note on the page, not an error: the visualisations are shown either way.
"""
from __future__ import annotations

import json
from pathlib import Path


def neuron_folder(results_dir) -> Path | None:
    """The neuron pipeline's folder around a result shard set, when there is one."""
    parent = Path(results_dir).resolve().parent
    markers = ("selected_neurons.json", "neuron_words.json", "word_search.json")
    return parent if any((parent / m).is_file() for m in markers) else None


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _image_bytes(images_dir, keys: set[str]) -> dict[str, bytes]:
    """key → encoded image bytes from an image shard set, reading only the shards that hold the keys."""
    from digin.gallery.records import keep_encoded
    from digin.shards.manifest import ShardSet
    from digin.shards.reader import iter_shard

    ss = ShardSet.load(images_dir)
    found: dict[str, bytes] = {}
    for index, rec in ss.records.items():
        listed = rec.get("keys")
        if listed is not None and not keys.intersection(listed):
            continue
        for s in iter_shard(ss, index, decode=keep_encoded):
            if s["__key__"] in keys and isinstance(s.get("image"), bytes):
                found[s["__key__"]] = s["image"]
    return found


def load_neuron_info(folder: Path, neurons, store, max_top: int = 10) -> tuple[dict, list[str]]:
    """neuron → {words: [(word, count)], ranked: [(word, score)], top: [(key, activation, StoredImage)]} and notes
    about what could not be found."""
    words = _read(folder / "neuron_words.json").get("neurons", {})
    ranked = _read(folder / "word_search.json").get("neurons", {})
    images_dir = _read(folder / "selected_neurons.json").get("images")
    info, notes, wanted = {}, [], {}
    for n in sorted({int(x) for x in neurons}):
        top = _read(folder / f"neuron_{n}_top_images.json").get("images", [])[:max_top]
        counts = (words.get(str(n)) or {}).get("words") or {}
        info[n] = {"words": sorted(((str(w), c) for w, c in counts.items()), key=lambda x: (-x[1], x[0])),
                   "ranked": [(str(w), float(s)) for w, s in ranked.get(str(n), [])], "top": []}
        wanted[n] = [(str(t["key"]), float(t.get("activation", float("nan")))) for t in top if "key" in t]
    keys = {k for tops in wanted.values() for k, _ in tops}
    found: dict[str, bytes] = {}
    if keys:
        try:
            found = _image_bytes(images_dir, keys) if images_dir else {}
        except (FileNotFoundError, ValueError, OSError) as e:  # moved or deleted image shards: say so
            notes.append(f"top-activating images: cannot read the image shards {images_dir} ({e})")
        if not images_dir:
            notes.append(f"top-activating images: {folder / 'selected_neurons.json'} names no image shard set")
    for n, tops in wanted.items():
        for key, act in tops:
            if key in found:
                info[n]["top"].append((key, act, store.put(found[key], key)))
    missing = len(keys - set(found))
    if found and missing:
        notes.append(f"top-activating images: {missing} of {len(keys)} not found in {images_dir}")
    return info, notes


DEAD_EPS = 1e-6  # |activation| below this counts as zero


def is_dead(rows: list[dict], top: list) -> bool:
    """A dead unit: every visualisation's activation is 0 before and after, or every top dataset image's is 0."""
    acts = [v for r in rows for v in (r["before"], r["after"]) if v is not None]
    if acts and all(abs(v) < DEAD_EPS for v in acts):
        return True
    tops = [a for _, a, _ in top if a == a]
    return bool(tops) and all(abs(a) < DEAD_EPS for a in tops)


def neuron_status(rows: list[dict], dead: bool) -> tuple[str, bool, str]:
    """(one status tag, success, a line with the counts) for a neuron's visualisations; the tag and the success
    flag cannot contradict each other: success means every visualisation raised the activation, the tag is the
    status they share ('mixed' when they differ, 'dead_unit' for a dead unit)."""
    n = len(rows)
    ok = sum(1 for r in rows if r["success"])
    statuses = sorted({r["status"] for r in rows})
    tag = "dead_unit" if dead else statuses[0] if len(statuses) == 1 else "mixed"
    counts = ", ".join(f"{sum(1 for r in rows if r['status'] == s)} {s.replace('_', ' ')}" for s in statuses)
    return tag, n > 0 and ok == n and not dead, f"{ok} of {n} visualisations raised the activation ({counts})"


def neuron_header(n: int, nfo: dict, rows: list[dict], prefix: str = "../") -> str:
    """The top of a neuron's page: its top-activating dataset images with their activations, its names (words
    counted over those images), the word search ranking, and a dead-unit warning."""
    from digin.gallery.detail import cell
    from digin.gallery.html import esc

    parts = []
    dead = is_dead(rows, nfo.get("top", []))
    tag, _, line = neuron_status(rows, dead)
    if dead:
        parts.append('<p class="warn" id="dead">Dead unit? The activation is 0 in every visualisation (before and '
                     'after) or on every top dataset image: nothing for the guidance to raise.</p>')
    parts.append(f'<p class="nsum" data-status="{esc(tag)}">{esc(line)}</p>')
    top = nfo.get("top", [])
    if top:
        cells = "".join(cell(f"top {j + 1}", img, prefix, "", [("activation", act, f"top{j + 1}")])
                        .replace("<figure ", f'<figure data-key="{esc(key)}" ', 1)
                        for j, (key, act, img) in enumerate(top))
        parts.append(f'<h2>Top-activating dataset images</h2><div class="cells lb top">{cells}</div>')
    words = nfo.get("words", [])
    if words:
        parts.append("<h2>Names</h2><p class='words'>" + ", ".join(
            f'<span class="w" data-count="{c}">{esc(w)} ({c})</span>' for w, c in words[:20]) + "</p>")
    ranked = nfo.get("ranked", [])
    if ranked:
        parts.append("<h2>Word search</h2><table class='mt ranked'><thead><tr><th>word</th><th>mean activation of "
                     "“a photograph of a &lt;word&gt;”</th></tr></thead><tbody>" + "".join(
                         f'<tr><td>{esc(w)}</td><td data-v="{s!r}">{s:.4g}</td></tr>' for w, s in ranked[:10])
                     + "</tbody></table>")
    parts.append("<h2>Visualisations</h2>")
    return f'<div class="neuron" data-neuron="{n}">{"".join(parts)}</div>'
