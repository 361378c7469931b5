"""What the neuron pipeline wrote beside its visualisations, for the gallery's neuron rows: the names / words of
each neuron (`neuron_words.json`), the ranked words of the search (`word_search.json`) and the top-activating
dataset images (`neuron_<n>_top_images.json` + the image shard set recorded in `selected_neurons.json`).

Read from the parent of a `visualise` result folder (`digin neurons ... out=<folder>` writes both). Anything
missing is a note on the page, not an error: the visualisations are shown either way.
"""
from __future__ import annotations

import json
from pathlib import Path

from digin.shards.manifest import ShardSet
from digin.shards.reader import iter_shard
from digin.stages.gallery.detail import cell
from digin.stages.gallery.html import esc, page
from digin.stages.gallery.records import keep_encoded


def neuron_folder(results_dir) -> Path | None:
    """The neuron pipeline's folder around a result shard set, when there is one."""
    parent = Path(results_dir).resolve().parent
    markers = ("selected_neurons.json", "neuron_words.json", "word_search.json")
    found = any((parent / m).is_file() for m in markers) or (parent / SIMILAR_DIR).is_dir()
    return parent if found else None


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _image_bytes(images_dir, keys: set[str]) -> dict[str, bytes]:
    """key → encoded image bytes from an image shard set, reading only the shards that hold the keys."""
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


# ------------------------------------------------------------------ similar neuron groups (digin neurons mode=similar)
SIMILAR_DIR = "similar_neurons"  # = digin.stages.neurons.similar.FOLDER (not imported: neurons sit above)


def similar_tables(folder) -> list[dict]:
    """The groups `mode=similar` wrote into a neuron folder: their json (activation matrix) with the grid's path."""
    out = []
    for js in sorted((Path(folder) / SIMILAR_DIR).glob("*.json")):
        table = _read(js)
        png = js.with_suffix(".png")
        if table.get("group") and png.is_file():
            out.append({**table, "png": png})
    return out


def similar_page(out, tables: list[dict], link_of=None) -> dict:
    """`similar-neurons/index.html`: one comparison grid per group (the PNG `mode=similar` drew) and its activation
    matrix, a row per visualisation (linked to its result when the gallery shows it), a column per group neuron;
    the image's own neuron in bold. Returns the top index's entry."""
    import shutil

    folder = Path(out) / "similar-neurons"
    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    for t in tables:
        group, name = [int(n) for n in t["group"]], t["png"].stem
        shutil.copyfile(t["png"], folder / f"{name}.png")
        head = "<tr><th>visualisation</th>" + "".join(f"<th>neuron {n}</th>" for n in group) + "</tr>"
        rows = []
        for r in t.get("images", []):
            href = link_of(r["key"]) if link_of else None
            key = f'<a href="{esc(href)}">{esc(r["key"])}</a>' if href else esc(r["key"])
            cells = "".join(f'<td data-v="{a!r}">' + (f"<b>{a:.4f}</b>" if n == r["neuron"] else f"{a:.4f}") + "</td>"
                            for n, a in zip(group, r.get("activations", [])))
            rows.append(f'<tr data-key="{esc(r["key"])}"><th>{key}</th>{cells}</tr>')
        parts.append(f'<section class="group" id="g-{esc(name)}" data-group="{esc(name)}"><h2>neurons '
                     f'{", ".join(map(str, group))}</h2><p><a class="pic" href="{esc(name)}.png"><img '
                     f'src="{esc(name)}.png" alt="neurons {esc(name)}" style="max-width:100%"></a></p>'
                     f'<table class="mt similar"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table></section>')
    body = ("<p>Each group's visualisations (`ours`) with every group neuron's activation on them (bold: the neuron "
            "the image was made for): a neuron as active on its neighbours' images as on its own is redundant with "
            "them.</p>" + "".join(parts))
    (folder / "index.html").write_text(page("similar neurons", body, depth=1, up="../index.html"), encoding="utf-8")
    return {"href": "similar-neurons/index.html", "title": "similar neurons",
            "line": f"{len(tables)} group(s) of neurons side by side, one grid each"}
