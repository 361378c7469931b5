"""Contact sheets of the toy-world science results, so a reader sees what the numbers measure: one row per sample,
one column per image (UVCEs: orig / sd / ours; classifier differences: sd / ours), the row's numbers beside it.

  python -m digin.science.contact_sheet                   # held-out set → digin/toy/figures/*.png
  python -m digin.science.contact_sheet set=dev out=/tmp/sheets work=/tmp/science-work

The images come from the same CLI runs (digin/toy/settings.py) and measurements (toy_science.py) as the tests.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from digin.science import toy_science as science

FIGURES = Path(__file__).resolve().parents[1] / "toy" / "figures"  # shipped with the toy world


def sheet(columns: list[str], rows: list[tuple[list[torch.Tensor], str]], title: str = "", scale: int = 2,
          gap: int = 4):
    """PIL image: a header line with `title` and the column names, then per row its images (3, H, W) in [0, 1]
    side by side (nearest-neighbour ×scale) and its text to the right."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    H = rows[0][0][0].shape[-1] * scale
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max(measure.textlength(line, font=font) for _, t in rows for line in t.split("\n")) + 2 * gap
    width = int(max(len(columns) * (H + gap) + text_w, measure.textlength(title, font=font) + 2 * gap))
    head = 30
    im = Image.new("RGB", (width, head + len(rows) * (H + gap)), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    draw.text((gap, 2), title, fill=(0, 0, 0), font=font)
    for j, name in enumerate(columns):
        draw.text((j * (H + gap) + gap, 16), name, fill=(0, 0, 0), font=font)
    for i, (images, text) in enumerate(rows):
        y = head + i * (H + gap)
        for j, img in enumerate(images):
            a = (img.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
            im.paste(Image.fromarray(a).resize((H, H), Image.NEAREST), (j * (H + gap), y))
        for k, line in enumerate(text.split("\n")):
            draw.text((len(columns) * (H + gap) + gap, y + 4 + 12 * k), line, fill=(0, 0, 0), font=font)
    return im


def save_png(im, path):
    """A 256-colour palette PNG: the scenes are a few flat colours, so this keeps the figures small in the repo."""
    im.quantize(256, dither=0).save(path, optimize=True)


def uvce_rows(res: dict) -> list:
    img = res["images"]
    v = res["verdicts"]
    rows = []
    for b, ((src, tgt), c_sd, c_ours, (col, col_ours), bg) in enumerate(zip(
            res["pairs"], res["target_conf_sd"], res["target_conf"], res["colours"], res["background_rms"])):
        bg_from, bg_to, _ = res["background_change"][b]
        text = (f"{src} -> {tgt}\np(target) sd {c_sd:.2f}  ours {c_ours:.2f}\n"
                f"colour {col} -> {col_ours or 'none'}\nbackground RMS {bg:.3f}\n"
                f"judge: {res['judged_shape'][b]} ({res['judged_iou'][b]:.2f}), {res['judged_colour'][b] or '-'}\n"
                f"  bg {bg_from} -> {bg_to}\n"
                f"  success {'yes' if v['success'][b] else 'no'}, judged {'yes' if v['confirmed'][b] else 'no'}, "
                f"clean edit {'yes' if v['clean_edit'][b] else 'no'}")
        rows.append(([img["orig"][b], img["recon"][b], img["sd"][b], img["ours"][b]], text))
    return rows


def spurious_rows(res: dict) -> list:
    img = res["images"]
    rows = []
    for b, prompt in enumerate(res["prompts"]):
        words = prompt.split()
        ok = "yes" if res["keeps_shape"][b] and res["moved_toward"][b] and res["spurious_star"][b] else "no"
        rr = res["p_spur_rerender"][b]
        text = (f"{' '.join(words[1:4])} on {words[6]}\np_spur(star) {res['p_spur_sd'][b]:.2f} -> "
                f"{res['p_spur_ours'][b]:.2f}\np_clean(star) {res['p_clean_star_ours'][b]:.2f}, shape kept: "
                f"{'yes' if res['keeps_shape'][b] else 'no'}\nto green {res['dist_sd'][b]:.2f} -> "
                f"{res['dist_ours'][b]:.2f}   story: {ok}\n"
                f"judge: {res['judged_shape'][b]} ({res['judged_iou'][b]:.2f}), {res['judged_colour'][b] or '-'}\n"
                f"  bg {res['background_sd'][b]} -> {res['background_ours'][b]}\n"
                f"  cue rate {res['cue_rate_sd'][b]:.2f} -> {res['cue_rate_ours'][b]:.2f}, re-render "
                f"{'-' if rr is None else f'{rr:.2f}'}")
        rows.append(([img["sd"][b], img["ours"][b]], text))
    return rows


def make_sheets(set_name: str, out, work) -> dict:
    """Run the UVCE (both variants) and classifier-difference checks on `set_name`, write three PNGs into `out`,
    return the numbers."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    S = science.TEST_SETTINGS
    numbers = {}
    for name, edit in (("uvce", True), ("uvce_gradient_only", False)):
        r = science.check_uvce(work, set_name, prompt_edit=edit, **S["uvce"])
        title = (f"UVCE {'P2P shape swap + gradient' if edit else 'gradient only (caption kept)'}, {set_name}: "
                 f"success sd {r['success_sd']:.2f} ours {r['success_rate']:.2f}, "
                 f"judged {r['judged_success_rate']:.2f}, clean edits {r['clean_edit_rate']:.2f}, "
                 f"colour changed {r['colour_change_rate']:.2f}")
        save_png(sheet(["orig", "recon", "sd", "ours"], uvce_rows(r), title), out / f"{name}_{set_name}.png")
        numbers[name] = science._numbers(r)
    r = science.check_spurious(work, set_name, **S["spurious"])
    title = (f"classifier differences spurious - clean (star), {set_name}: story {r['story_rate']:.2f}, with the "
             f"judge's shape {r['judged_story_rate']:.2f}, in the measured cue {r['cue_story_rate']:.2f}")
    save_png(sheet(["sd", "ours"], spurious_rows(r), title), out / f"diff_{set_name}.png")
    numbers["spurious"] = science._numbers(r)
    return numbers


def main(argv=None):
    import sys
    import tempfile

    torch.set_num_threads(1)
    kv = dict(a.split("=", 1) for a in (argv if argv is not None else sys.argv[1:]))
    unknown = set(kv) - {"set", "out", "work"}
    if unknown:
        raise SystemExit(f"contact_sheet: unknown key(s) {sorted(unknown)}; use set=, out=, work=")
    with tempfile.TemporaryDirectory(prefix="digin-sheets-") as tmp:
        numbers = make_sheets(kv.get("set", "heldout"), kv.get("out", FIGURES), kv.get("work", tmp))
    print(json.dumps(numbers, indent=1, default=lambda x: None if isinstance(x, float) and not np.isfinite(x)
                     else x))


if __name__ == "__main__":
    main()
