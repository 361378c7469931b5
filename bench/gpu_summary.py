#!/usr/bin/env python
"""The decision of bench/gpu_check.sh from its rows: `python bench/gpu_summary.py rows.jsonl [costs.jsonl]`.

Per mode (reference, fast-eager, fast) the per-call milliseconds (the last row of each call), calls the compiled run
did not reach estimated from fast-eager's ratios (named), composed with the engine's call counts into seconds per
image of guidance, UVCE and null-text inversion (digin/stages/bench.py: compose), the speedups over the reference —
none where a side fell back to eager or ran UNet calls eagerly —, the targets (UVCE ≥ 10×, ≤ 6 s/image on an H100;
inversion ≥ 20×), the end-to-end optimise against its composition, and peak memory against the cost rows' prediction.
Prints markdown and appends one JSON `decision` row to rows.jsonl.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

WORKLOADS = ("guidance", "uvce", "inversion")
TARGETS = {"uvce": 10.0, "inversion": 20.0}
UVCE_S_PER_IMAGE_H100 = 6.0


def _rows(path) -> list[dict]:
    p = Path(path)
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def summarise(rows: list[dict], costs: list[dict]) -> dict:
    from digin.stages.bench import CALLS, compose, estimate_missing

    modes: dict = {}
    for r in rows:
        m = r.get("mode")
        if r.get("kind") not in ("call", "composed", "e2e") or m not in ("reference", "fast-eager", "fast"):
            continue
        d = modes.setdefault(m, {"ms": {}, "row": None, "composed": None, "e2e": None})
        if r["kind"] == "call" and r.get("status") == "ok":
            d["ms"][r["call"]] = r["ms_per_call"]
            d["row"] = r
        elif r["kind"] == "composed" and r.get("status") == "ok":
            d["composed"] = r
        elif r["kind"] == "e2e" and r.get("status") == "ok":
            d["e2e"] = r
    eager = modes.get("fast-eager", {}).get("ms")
    out = {"modes": {}, "speedups": {}, "targets": {}, "device": next((r.get("device") for r in rows), None)}
    for m, d in modes.items():
        ms, row = dict(d["ms"]), d["row"]
        if row is None:
            continue
        est = estimate_missing(ms, eager) if m == "fast" else []
        missing = sorted(set(CALLS) - set(ms))
        info = dict(batch=row["batch"], dtype=row["dtype"], checkpoint=row["checkpoint"], tf32=row.get("tf32"),
                    matmul_tf32=row.get("matmul_tf32"), cudnn_tf32=row.get("cudnn_tf32"), estimated_calls=est,
                    missing_calls=missing)
        side = d["e2e"] or d["composed"] or {}
        info["fell_back"] = side.get("fell_back") if side else None  # None: the run stopped before it said
        info["eager_unet_calls"] = side.get("eager_unet_calls") if side else None
        info["compile_s"] = side.get("compile_s_total") if side else None
        if not missing:
            settings = row.get("settings") or {}
            info["s_per_image"] = compose(ms, settings, row["checkpoint"], row["batch"])
        if d["e2e"]:
            e = d["e2e"]
            info["e2e_over_composed"] = e.get("measured_over_composed")
            info["peak_gib"] = e.get("peak_gib")
            cost = next((c for c in costs if c.get("workload") == "guidance"
                         and c.get("mode") == ("reference" if m == "reference" else "fast")), None)
            if cost:
                info["predicted_peak_gib"] = cost["weights_gib"] + row["batch"] * cost["saved_gib_per_sample"]
        out["modes"][m] = info
    ref = out["modes"].get("reference", {})
    for m in ("fast-eager", "fast"):
        f = out["modes"].get(m, {})
        for wl in WORKLOADS:
            key = f"{m}/{wl}"
            if "s_per_image" not in ref or "s_per_image" not in f:
                out["speedups"][key] = "no speedup: a side has no complete set of calls"
            elif f["fell_back"] is None and m == "fast":
                out["speedups"][key] = "no speedup: the compiled run stopped before it reported its call sites"
            elif f["fell_back"] or ref.get("fell_back"):
                why = "; ".join((f["fell_back"] or []) + (ref.get("fell_back") or []))
                out["speedups"][key] = f"no speedup: fell back ({why[:200]})"
            elif m == "fast" and f.get("eager_unet_calls"):
                out["speedups"][key] = f"no speedup: {f['eager_unet_calls']} UNet calls ran eagerly"
            else:
                out["speedups"][key] = ref["s_per_image"][wl] / f["s_per_image"][wl]
    fast = out["modes"].get("fast", {})
    for wl, want in TARGETS.items():
        got = out["speedups"].get(f"fast/{wl}")
        out["targets"][f"{wl}_speedup_ge_{want:g}x"] = (got >= want) if isinstance(got, float) else None
    if "s_per_image" in fast:
        out["targets"]["uvce_s_per_image"] = fast["s_per_image"]["uvce"]
        h100 = "H100" in (out["device"] or "")
        out["targets"][f"uvce_le_{UVCE_S_PER_IMAGE_H100:g}s_per_image_on_h100"] = \
            (fast["s_per_image"]["uvce"] <= UVCE_S_PER_IMAGE_H100) if h100 else None
    return out


def markdown(s: dict) -> str:
    lines = [f"# GPU check: {s['device']}", "", "| mode | batch | dtype | tf32 | guidance s/img | UVCE s/img | "
             "inversion s/img | e2e / composed | peak GiB (predicted) | fell back | eager UNet calls | estimated |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for m, i in s["modes"].items():
        spi = i.get("s_per_image") or {}
        f = lambda x: "–" if x is None else (f"{x:.3g}" if isinstance(x, float) else str(x))  # noqa: E731
        peak = f"{f(i.get('peak_gib'))} ({f(i.get('predicted_peak_gib'))})"
        est = ", ".join(i["estimated_calls"]) or "–"
        if i["missing_calls"]:
            est += " missing: " + ", ".join(i["missing_calls"])
        lines.append(f"| {m} | {i['batch']} | {i['dtype']} | {i['tf32']} | {f(spi.get('guidance'))} | "
                     f"{f(spi.get('uvce'))} | {f(spi.get('inversion'))} | {f(i.get('e2e_over_composed'))} | {peak} | "
                     f"{f(i.get('fell_back'))} | {f(i.get('eager_unet_calls'))} | {est} |")
    lines += ["", "| speedup over reference | value |", "| --- | --- |"]
    lines += [f"| {k} | {v:.2f}× |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in s["speedups"].items()]
    lines += ["", "| target | met |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in s["targets"].items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        raise SystemExit("usage: gpu_summary.py rows.jsonl [costs.jsonl]")
    rows, costs = _rows(argv[0]), _rows(argv[1]) if len(argv) > 1 else []
    s = summarise(rows, costs)
    print(markdown(s))
    with open(argv[0], "a") as f:
        f.write(json.dumps({"kind": "decision", **s}, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
