"""Tables for issue 31's benchmark (`benchmarks/real_models.py`), generated from its raw JSON alone.

Per model family: each method's test metric at each target size (mean ± std over seeds, with the realised fraction
of the compressible parameters and the number of seeds), the compression wall time and latency, the refusals and
failures with their messages, and `merge_or_remove` against the strongest other method of the same scope, paired
over seeds × sizes with an exact Wilcoxon signed-rank test (`experiments_report.py`'s).

    python3 benchmarks/real_models_report.py [RAW_DIR [OUT_DIR]]
"""

import json
import pathlib
import sys
from collections import defaultdict

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from experiments_report import wilcoxon_signed_rank  # noqa: E402

# family prefix → (metric, "lower" or "higher" is better, label)
METRICS = {"lm": ("test_bpb", "lower", "test bits/byte"), "cnn": ("test_accuracy", "higher", "test accuracy")}
SECONDARY = {"cnn": ("test_logit_rel_rms", "lower", "test logits' relative RMS error")}
REFERENCE = "merge_or_remove"


def metric_of(family: str, secondary: bool = False):
    table = SECONDARY if secondary else METRICS
    return table.get(family.split("-")[0])


def load(raw: pathlib.Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(raw.glob("*.json"))]


def _mean_std(values, fmt: str) -> str:
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return "—"
    std = v.std(ddof=1) if v.size > 1 else 0.0
    return f"{fmt.format(v.mean())} ± {fmt.format(std)}"


def _by_family(records) -> dict[str, list[dict]]:
    out = defaultdict(list)
    for r in records:
        out[r["family"]].append(r)
    return dict(sorted(out.items()))


def _methods(records) -> list[str]:
    return list(dict.fromkeys(p["method"] for r in records for p in r["points"]))


def _sizes(records) -> list[float]:
    return sorted({p["target_fraction"] for r in records for p in r["points"]}, reverse=True)


def family_tables(family: str, records: list[dict]) -> str:
    key, better, label = metric_of(family)
    fmt = "{:.3f}" if key == "test_bpb" else "{:.3f}"
    sizes = _sizes(records)
    seeds = sorted(r["seed"] for r in records)
    dense = _mean_std([r["original"][key] for r in records], fmt)
    lines = [
        f"## {family}",
        "",
        f"Seeds {seeds}; dense model: {label} {dense}, {records[0]['original']['params']:,} parameters. Cells: "
        f"{label} (mean ± std over seeds) [realised fraction of the compressible parameters; seeds with a result]. "
        f"{'Lower' if better == 'lower' else 'Higher'} is better. Sites: "
        + ", ".join(f"{s['path']} ({s['width']} {s['unit']}s)" for s in records[0]["sites"])
        + ".",
        "",
        "| method | " + " | ".join(f"{f:.0%}" for f in sizes) + " |",
        "|---" * (len(sizes) + 1) + "|",
    ]
    errors: dict[str, set[str]] = defaultdict(set)
    timing = []
    for method in _methods(records):
        cells = []
        for fraction in sizes:
            points = [
                p for r in records for p in r["points"] if p["method"] == method and p["target_fraction"] == fraction
            ]
            ok = [p for p in points if "error" not in p]
            for p in points:
                if "error" in p:
                    errors[method].add(p["error"].split("\n")[0][:400])
            if not ok:
                cells.append("refused/failed" if points else "")
                continue
            realised = np.mean([p["realised_fraction"] for p in ok])
            cells.append(f"{_mean_std([p[key] for p in ok], fmt)} [{realised:.0%}; {len(ok)}]")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
        ok = [p for r in records for p in r["points"] if p["method"] == method and "error" not in p]
        if ok:
            timing.append(
                f"| {method} | {np.median([p['wall_s'] for p in ok]):.1f} | "
                f"{np.median([p['latency_b1_us'] for p in ok]):.0f} | "
                f"{np.median([p['latency_big_us'] for p in ok]):.0f} |"
            )
    big = records[0]["original"]["latency_big_batch"]
    dense_b1 = np.median([r["original"]["latency_b1_us"] for r in records])
    dense_big = np.median([r["original"]["latency_big_us"] for r in records])
    lines += [
        "",
        f"Compression wall time (compilation included: a method run first on a model may compile programs that "
        f"later ones reuse) and latency (medians over every point; dense model: {dense_b1:.0f} µs at batch 1, "
        f"{dense_big:.0f} µs at batch {big}; the machine's load average is recorded with every point, median "
        f"{np.median([p['load_before'][0] for r in records for p in r['points']]):.1f}):",
        "",
        f"| method | compression s | latency batch 1 µs | latency batch {big} µs |",
        "|---|---|---|---|",
        *timing,
    ]
    if errors:
        lines += ["", "Refusals and failures (the library's messages):", ""]
        lines += [f"- **{m}**: " + " / ".join(f"`{e}`" for e in sorted(es)) for m, es in errors.items()]
    return "\n".join(lines)


def paired(records, reference: str, other: str, key: str):
    """Differences `reference − other` of `key` over the (seed, size) points both have results at."""
    values = defaultdict(dict)
    for r in records:
        for p in r["points"]:
            if "error" not in p:
                values[p["method"]][(r["seed"], p["target_fraction"])] = p[key]
    common = sorted(set(values[reference]) & set(values[other]))
    return np.asarray([values[reference][c] - values[other][c] for c in common]), common


def wilcoxon_table(family: str, records: list[dict], secondary: bool = False) -> str:
    """Each `merge_or_remove` entry against the strongest other method of the same scope (the best mean metric over
    the points both have results at), paired over seeds × sizes."""
    chosen = metric_of(family, secondary)
    if chosen is None:
        return ""
    key, better, label = chosen
    sign = 1.0 if better == "lower" else -1.0
    scopes = {p["method"]: p.get("scope") for r in records for p in r["points"]}
    lines = [
        f"### {family}: merge_or_remove against the strongest other method ({label})",
        "",
        "| merge_or_remove entry | strongest other | pairs | mean difference (mor − other) | mor better in | W+ "
        "(positive: mor − other > 0) | exact p |",
        "|---|---|---|---|---|---|---|",
    ]
    for reference in [m for m in _methods(records) if m.startswith(REFERENCE)]:
        candidates = []
        for other in _methods(records):
            if other.startswith(REFERENCE) or scopes.get(other) != scopes.get(reference):
                continue
            d, common = paired(records, reference, other, key)
            if len(common):
                ref = {(r["seed"], q["target_fraction"]): q[key] for r in records for q in r["points"]
                       if q["method"] == reference and "error" not in q}  # fmt: skip
                other_values = [ref[c] - x for c, x in zip(common, d)]
                candidates.append((sign * float(np.mean(other_values)), other, d, common))
        if not candidates:
            lines.append(f"| {reference} | (no other method has results at the same points) | | | | | |")
            continue
        _, other, d, common = min(candidates, key=lambda c: c[0])
        w, p, n = wilcoxon_signed_rank(d)
        wins, ties = int(np.sum(sign * d < 0)), int(np.sum(d == 0))
        lines.append(
            f"| {reference} | {other} | {len(common)} | {np.mean(d):+.4g} | {wins} of {len(d)} ({ties} tied) | "
            f"{w:g} | {p:.3g} |"
        )
    return "\n".join(lines)


def report(raw: pathlib.Path, out: pathlib.Path) -> None:
    """Write `real_models.md` (every table) under `out` from the raw JSON in `raw`."""
    records = load(raw)
    out.mkdir(parents=True, exist_ok=True)
    if not records:
        (out / "real_models.md").write_text("# Real models\n\n(no raw results yet)\n")
        return
    parts = [
        "# Real models: structured compressors on a byte-level transformer LM and a CNN",
        "",
        f"Generated by `benchmarks/real_models_report.py` from {len(records)} raw file(s) in `{raw.name}/`; "
        "nothing here is typed by hand. Sizes are fractions of the compressible parameters (the parameters of the "
        "sites a method cuts: FFN layers for scope `neurons`, FFN and attention or convolution layers for `all`).",
        "",
    ]
    families = _by_family(records)
    for family, group in families.items():
        parts += [family_tables(family, group), ""]
    parts += ["## merge_or_remove, paired (exact Wilcoxon signed-rank over seeds × sizes)", ""]
    for family, group in families.items():
        for secondary in (False, True):
            table = wilcoxon_table(family, group, secondary)
            if table:
                parts += [table, ""]
    (out / "real_models.md").write_text("\n".join(parts))
    print(f"wrote {out / 'real_models.md'}")


if __name__ == "__main__":
    root = pathlib.Path(__file__).parent / "results" / "real_models"
    raw_dir = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else root / "raw"
    report(raw_dir, pathlib.Path(sys.argv[2]) if len(sys.argv) > 2 else root)
