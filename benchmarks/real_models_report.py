"""Tables for issue 31's benchmark (`benchmarks/real_models.py`), generated from its raw JSON alone.

Per model family: each method's test metric at each target size (mean ± std over seeds, with the realised fraction
of the compressible parameters and the number of seeds), the compression wall time and latency, the refusals and
failures with their messages, and `merge_or_remove` against the strongest other method of the same scope, paired
over seeds × sizes with an exact Wilcoxon signed-rank test (`experiments_report.py`'s).

    python3 benchmarks/real_models_report.py [RAW_DIR [OUT_DIR]]
"""

import json
import pathlib
import re
import sys
from collections import defaultdict

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from experiments_report import replace_between, wilcoxon_signed_rank  # noqa: E402

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
        if not any(p["method"] == method and "error" not in p for r in records for p in r["points"]):
            for p in (p for r in records for p in r["points"] if p["method"] == method):
                errors[method].add(p["error"].split("\n")[0][:400])
            continue  # refused everywhere: listed with the refusals below
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
        by_message = defaultdict(list)
        for method, messages in errors.items():
            for message in sorted(messages):
                by_message[message].append(method)
        heading = "Refusals and failures (the library's messages; a method refused everywhere has no row above):"
        lines += ["", heading, ""]
        lines += [f"- {', '.join(f'**{m}**' for m in methods)}: `{message}`" for message, methods in by_message.items()]
    return "\n".join(lines)


def values_of(records, method: str, key: str, recovered: bool = False) -> dict:
    """`{(seed, size): value}` of `key` for `method`'s points with a result (after the recovery fine-tune with
    `recovered`)."""
    out = {}
    for r in records:
        for p in r["points"]:
            if p["method"] == method and "error" not in p:
                source = p.get("recovered") if recovered else p
                if source is not None and key in source:
                    out[(r["seed"], p["target_fraction"])] = source[key]
    return out


def paired(records, first: str, second: str, key: str):
    """Differences `first − second` of `key` over the (seed, size) points both have results at."""
    a, b = values_of(records, first, key), values_of(records, second, key)
    common = sorted(set(a) & set(b))
    return np.asarray([a[c] - b[c] for c in common]), common


def paired_cells(d, better: str) -> list[str]:
    """Pairs, mean difference, how often the first is better, `W+` and the exact two-sided p of differences `d`."""
    sign = 1.0 if better == "lower" else -1.0
    w, p, _ = wilcoxon_signed_rank(d)
    wins, ties = int(np.sum(sign * d < 0)), int(np.sum(d == 0))
    return [str(len(d)), f"{np.mean(d):+.4g}", f"{wins} of {len(d)} ({ties} tied)", f"{w:g}", f"{p:.3g}"]


def _scopes(records) -> dict:
    return {p["method"]: p.get("scope") for r in records for p in r["points"]}


def wilcoxon_table(family: str, records: list[dict], secondary: bool = False) -> str:
    """Each `merge_or_remove` entry against the strongest other method of the same scope (the best mean metric over
    the points both have results at), paired over seeds × sizes."""
    chosen = metric_of(family, secondary)
    if chosen is None:
        return ""
    key, better, label = chosen
    sign = 1.0 if better == "lower" else -1.0
    scopes = _scopes(records)
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
                theirs = values_of(records, other, key)
                candidates.append((sign * float(np.mean([theirs[c] for c in common])), other, d))
        if not candidates:
            continue  # no result, or no other method with results at the same points
        _, other, d = min(candidates, key=lambda c: c[0])
        lines.append(f"| {reference} | {other} | " + " | ".join(paired_cells(d, better)) + " |")
    return "\n".join(lines)


def comparison_table(title: str, family: str, records: list[dict], pairs) -> str:
    """Rows `first` against `second` for each pair that both have results for, paired over seeds × sizes."""
    key, better, label = metric_of(family)
    rows = []
    for first, second in pairs:
        d, _ = paired(records, first, second, key)
        if len(d):
            rows.append(f"| {first} | {second} | " + " | ".join(paired_cells(d, better)) + " |")
    if not rows:
        return ""
    return "\n".join(
        [
            f"### {family}: {title} ({label})",
            "",
            "| first | second | pairs | mean difference (first − second) | first better in | W+ | exact p |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]
    )


def recovery_table(family: str, records: list[dict]) -> str:
    """Each method measured after the recovery fine-tune: its metric before and after, per size."""
    key, better, label = metric_of(family)
    methods = [m for m in _methods(records) if values_of(records, m, key, recovered=True)]
    if not methods:
        return ""
    sizes = _sizes(records)
    steps = {p["recovered"]["steps"] for r in records for p in r["points"] if "recovered" in p}
    lines = [
        f"### {family}: after a short recovery fine-tune ({label}, {'/'.join(map(str, sorted(steps)))} steps)",
        "",
        f"Cells: compressed → fine-tuned (mean over seeds); the dense model: "
        f"{np.mean([r['original'][key] for r in records]):.3f}.",
        "",
        "| method | " + " | ".join(f"{f:.0%}" for f in sizes) + " |",
        "|---" * (len(sizes) + 1) + "|",
    ]
    for method in methods:
        before, after = values_of(records, method, key), values_of(records, method, key, recovered=True)
        cells = []
        for f in sizes:
            common = [c for c in after if c[1] == f and c in before]
            cells.append(
                f"{np.mean([before[c] for c in common]):.3f} → {np.mean([after[c] for c in common]):.3f}" if common
                else ""
            )  # fmt: skip
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def standings(family: str, records: list[dict], fraction: float) -> list[tuple[float, str]]:
    """`(mean metric, method)` of every scope-`neurons` entry with a result at `fraction` for every seed of the
    family, best first (the entries that cut the same parameters, so their sizes compare)."""
    key, better, _ = metric_of(family)
    seeds = {r["seed"] for r in records}
    scopes = _scopes(records)
    out = []
    for method in _methods(records):
        if scopes.get(method) != "neurons":
            continue
        found = {s: v for (s, f), v in values_of(records, method, key).items() if f == fraction}
        if set(found) == seeds:
            out.append((float(np.mean(list(found.values()))), method))
    return sorted(out, reverse=better == "higher")


HEADLINE_SIZES = (0.7, 0.4)


def _standing(method: str, ranked, dense: float, records) -> str:
    for rank, (value, name) in enumerate(ranked, 1):
        if name == method:
            return f"{value:.3f} ({value - dense:+.3f}), rank {rank}"
    tried = any(p["method"] == method for r in records for p in r["points"])
    return "refused" if tried else "not run"


def headline(families: dict[str, list[dict]]) -> str:
    """Per family and headline size: the best structured method, where `merge_or_remove` and `lump` rank, and each
    one's change over the dense model."""
    lines = [
        "| model | dense | size | best | merge_or_remove | lump | entries ranked |",
        "|---|---|---|---|---|---|---|",
    ]
    for family, records in families.items():
        key, better, label = metric_of(family)
        dense = float(np.mean([r["original"][key] for r in records]))
        seeds = f"{len(records)} seed{'s' * (len(records) > 1)}"
        for fraction in HEADLINE_SIZES:
            ranked = standings(family, records, fraction)
            if ranked:
                value, best = ranked[0]
                mor, lump = (_standing(m, ranked, dense, records) for m in (REFERENCE, "lump"))
                lines.append(
                    f"| {family} ({seeds}) | {label} {dense:.3f} | {fraction:.0%} | {best}: {value:.3f} "
                    f"({value - dense:+.3f}) | {mor} | {lump} | {len(ranked)} |"
                )
    return "\n".join(lines)


PLOTTED_STYLE = {"lump": "--", "lump (no refit)": "--", REFERENCE: "-"}


def figure(families: dict[str, list[dict]], path: pathlib.Path) -> None:
    """One panel per family: each scope-`neurons` entry's loss over the dense model (bits/byte gained, accuracy
    lost; mean ± std over seeds, symmetric-log axis) against the realised fraction of the compressible parameters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(families), figsize=(5.6 * len(families), 4.6), squeeze=False)
    for ax, (family, records) in zip(axes[0], families.items()):
        key, better, label = metric_of(family)
        sign = 1.0 if better == "lower" else -1.0
        dense = {r["seed"]: r["original"][key] for r in records}
        scopes = _scopes(records)
        ax.set_prop_cycle(color=plt.cm.tab20.colors)
        for method in _methods(records):
            if scopes.get(method) != "neurons":
                continue
            xs, ys, es = [], [], []
            for f in _sizes(records):
                ok = [(r["seed"], p) for r in records for p in r["points"] if p["method"] == method
                      and p["target_fraction"] == f and "error" not in p]  # fmt: skip
                if ok:
                    loss = np.asarray([sign * (p[key] - dense[seed]) for seed, p in ok], np.float64)
                    xs.append(100 * np.mean([p["realised_fraction"] for _, p in ok]))
                    ys.append(loss.mean())
                    es.append(loss.std(ddof=1) if loss.size > 1 else 0.0)
            if xs:
                width = 2.2 if method == REFERENCE else 1.0
                ax.errorbar(xs, ys, yerr=es, fmt=PLOTTED_STYLE.get(method, ":") + "o", ms=3, capsize=2, lw=width,
                            label=method)  # fmt: skip
        ax.set_yscale("symlog", linthresh=1e-3)
        seeds = f"{len(records)} seed{'s' * (len(records) > 1)}"
        ax.set_title(f"{family} ({seeds}); dense {label} {np.mean(list(dense.values())):.3f}", fontsize=9)
        ax.set_xlabel("realised size (% of the compressible parameters)", fontsize=8)
        ax.set_ylabel(f"{label}: {'increase' if better == 'lower' else 'drop'} from the dense model", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, ncol=2)
    fig.suptitle("Real models: structured compressors at 90–30 % of the FFN / channel parameters (mean ± std)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


TRACK_A = (("lump (no refit)", "structured magnitude"), ("lump (no refit)", "structured Wanda"))
REFIT = (
    ("lump", "lump (no refit)"),
    ("OBS (ZipLM)", "OBS (no refit)"),
    ("FLAP + refit", "FLAP"),
    ("fold + refit", "fold"),
)


def report(raw: pathlib.Path, out: pathlib.Path, pages: tuple[pathlib.Path, ...] = ()) -> None:
    """Write `real_models.md` (every table), `headline.md` and `real_models.png` under `out` from the raw JSON in
    `raw`; in each of `pages` (the README, the docs page) replace the generated block between its
    `real-models` markers."""
    records = load(raw)
    out.mkdir(parents=True, exist_ok=True)
    if not records:
        empty = f"(no complete raw file in `{raw.name}/` yet)"
        (out / "real_models.md").write_text(f"# Real models\n\n{empty}\n")
        for page in pages:
            replace_between(page, empty, "real-models")
        return
    families = _by_family(records)
    intro = (
        f"Generated by `benchmarks/real_models_report.py` from {len(records)} raw file(s) in `{raw.name}/`; "
        "nothing here is typed by hand. Sizes are fractions of the compressible parameters (the parameters of the "
        "sites a method cuts: FFN layers for scope `neurons`, FFN and attention or convolution layers for `all`)."
    )
    summary = headline(families)
    parts = ["# Real models: structured compressors on a byte-level transformer LM and a CNN", "", intro, ""]
    parts += ["## Headline", "", summary, ""]
    for family, group in families.items():
        parts += [family_tables(family, group), ""]
    parts += ["## merge_or_remove, paired (exact Wilcoxon signed-rank over seeds × sizes)", ""]
    for family, group in families.items():
        for secondary in (False, True):
            parts += [wilcoxon_table(family, group, secondary), ""]
    parts += ["## Track A: lumping against magnitude and Wanda, none of them refitted", ""]
    for family, group in families.items():
        parts += [comparison_table("track A", family, group, TRACK_A), ""]
    parts += ["## The least-squares refit: each method with and without it", ""]
    for family, group in families.items():
        parts += [comparison_table("with against without the refit", family, group, REFIT), ""]
    parts += ["## Recovery fine-tune", ""]
    for family, group in families.items():
        parts += [recovery_table(family, group), ""]
    text = "\n".join(parts)
    text = re.sub(r"\n{3,}", "\n\n", text)
    (out / "real_models.md").write_text(text + "\n")
    (out / "headline.md").write_text(summary + "\n")
    figure(families, out / "real_models.png")
    figure_link = "![Loss over the dense model against size](figures/real_models/real_models.png)"
    for page in pages:  # the README gets the headline; a docs page every table, under its own title
        body = summary if page.name == "README.md" else figure_link + "\n\n" + text.partition("\n")[2].strip()
        replace_between(page, body, "real-models")
    print(f"wrote {out / 'real_models.md'}")


if __name__ == "__main__":
    root = pathlib.Path(__file__).parent / "results" / "real_models"
    raw_dir = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else root / "raw"
    report(raw_dir, pathlib.Path(sys.argv[2]) if len(sys.argv) > 2 else root)
