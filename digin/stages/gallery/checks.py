"""The VLM yes/no check (`digin neurons mode=spurious_check`) in the gallery: a page with every checked image and the
answer beside it, by class with the yes-fraction; and the answers of checked results, for their detail pages.

The check's shard set holds `answer.json` and `image.jpg` (its own small copy of the checked image), so the page needs
neither the image shards nor the results; a checked result that the gallery also shows links to its page.
"""
from __future__ import annotations

from pathlib import Path

from digin.shards.manifest import ShardSet
from digin.shards.reader import iter_shard
from digin.stages.gallery.html import esc, page
from digin.stages.gallery.records import keep_encoded

CHECK_DIR = "spurious_check"  # = digin.stages.neurons.vlm_check.FOLDER (not imported: neurons sit above)


def check_set(folder):
    """The check's shard set: `folder` itself or `folder/spurious_check` (the neuron folder)."""
    for cand in (Path(folder), Path(folder) / CHECK_DIR):
        if (cand / "manifest.json").is_file():
            return ShardSet.load(cand)
    raise SystemExit(f"digin gallery: checks: {folder} holds no spurious_check shard set (run `digin neurons "
                     "mode=spurious_check` first)")


def read_answers(folders) -> list[dict]:
    """Every answer of the check shard sets, with its image bytes (`image`)."""
    rows = []
    for folder in folders:
        ss = check_set(folder)
        for index in sorted(ss.records):
            for s in iter_shard(ss, index, decode=keep_encoded):
                a = s.get("answer")
                if isinstance(a, dict):
                    rows.append({**a, "key": s["__key__"], "image": s.get("image"), "check": str(ss.dir)})
    return rows


def answers_by_result(rows: list[dict]) -> dict[str, dict[str, str]]:
    """result key → {member: 'yes' | 'no' (the answer)}, for the results' detail pages."""
    out: dict[str, dict[str, str]] = {}
    for r in rows:
        if r.get("member") in ("sd", "ours"):
            out.setdefault(r["source_key"], {})[r["member"]] = f"{'yes' if r['yes'] else 'no'} ({r['answer']})"
    return out


def check_page(out, rows: list[dict], link_of=None) -> dict:
    """`spurious-check/index.html`: per class the yes-fraction and every checked image with its answer beside it."""
    folder = Path(out) / "spurious-check"
    (folder / "img").mkdir(parents=True, exist_ok=True)
    by_class: dict = {}
    for r in rows:
        by_class.setdefault(r["class"], []).append(r)
    parts, n_yes = [], sum(bool(r["yes"]) for r in rows)
    for c in sorted(by_class, key=lambda c: (c is None, c)):
        rs = sorted(by_class[c], key=lambda r: r["key"])
        yes = sum(bool(r["yes"]) for r in rs)
        figs = []
        for j, r in enumerate(rs):
            name = f"c{c}-{j}.jpg"
            if isinstance(r.get("image"), (bytes, bytearray)):
                (folder / "img" / name).write_bytes(bytes(r["image"]))
                pic = f'<img src="img/{esc(name)}" alt="{esc(r["key"])}" loading="lazy">'
            else:
                pic = "<em>no image</em>"
            href = link_of(r["source_key"]) if link_of else None
            src = f'<a href="{esc(href)}">{esc(r["source_key"])}</a>' if href else esc(r["source_key"])
            figs.append(f'<figure class="vlm" data-key="{esc(r["key"])}" data-yes="{int(bool(r["yes"]))}">{pic}'
                        f'<figcaption><b class="ans ok{int(bool(r["yes"]))}">{"yes" if r["yes"] else "no"}</b> '
                        f'“{esc(r["answer"])}”<br>{src} · {esc(r.get("member", "image"))}</figcaption></figure>')
        parts.append(f'<section class="class" data-class="{esc(str(c))}"><h2>{esc(str(rs[0]["label"]))} '
                     f'({esc(str(c))}): {yes} of {len(rs)} yes ({yes / len(rs):.3f})</h2><div class="cells">'
                     f'{"".join(figs)}</div></section>')
    q = rows[0]["question"] if rows else ""
    total = f"{n_yes} of {len(rows)} yes ({n_yes / len(rows):.3f})" if rows else "no answers"
    body = f'<p>Question: “{esc(q)}” (yes = the answer contains “yes”). Total: {esc(total)}.</p>' + "".join(parts)
    (folder / "index.html").write_text(page("VLM check", body, depth=1, up="../index.html"), encoding="utf-8")
    return {"href": "spurious-check/index.html", "title": "VLM yes/no check", "line": total}
