"""Tables, figures and paired tests from the raw JSON that `benchmarks/experiments.py` writes.

    python3 benchmarks/experiments.py --report-only      # or: python3 benchmarks/experiments_report.py RAW OUT

Outputs (in OUT): `track_A.md`, `track_B.md`, `track_C.md` (per data set: method × size, mean ± std over seeds),
`points_A.md` / `points_B.md` (every point: seeds, test MSE, realised size, knob, wall time), `headline.md`,
`findings.md`, `criterion.md`, `oracle.md`, `wilcoxon.md`, `fixed.md`, `completed.md`, `readme_table.md`,
`summary.json`, and `track_A.png`, `track_B.png`, `track_C.png`. Methods are compared at a size level only over
the same seeds (`_means`).
"""

import collections
import json
import math
import pathlib
import sys

import numpy as np
import provenance

LUMPING = ("lump structural", "lump structural components", "lump dynamical", "lump dynamical components")
DEFAULT = "merge_or_remove"  # jaxlump's default structured compressor (issue 17)
TIE = 0.01  # a loss by at most this fraction of the winner's MSE is counted as a tie as well
VARIANTS = ("merge_or_remove uniform",)  # the default's own greedy path cut differently: not a competitor
PLOTTED = (
    "merge_or_remove", "lump structural", "lump dynamical", "OBS (ZipLM)", "OSSCAR", "ID", "FLAP", "fold",
    "ZipIt + REPAIR", "whitened low-rank", "structured wanda", "magnitude", "Wanda", "lump_then_prune",
)  # fmt: skip


# ------------------------------------------------------------------------------------------------- statistics
def wilcoxon_signed_rank(differences) -> tuple[float, float, int]:
    """Exact two-sided Wilcoxon signed-rank test of "the median difference is 0".

    Zero differences are dropped (Wilcoxon's convention); tied |d| get their average rank. The null distribution of
    `W+` (sum of the ranks of positive differences) is computed exactly by dynamic programming over the (doubled,
    hence integer) ranks, each entering with probability ½. Returns `(W+, p, n)`; `p = 1` when `n = 0`.
    """
    d = np.asarray(differences, np.float64)
    d = d[d != 0]
    n = d.size
    if n == 0:
        return 0.0, 1.0, 0
    magnitudes = np.abs(d)
    order = np.argsort(magnitudes, kind="stable")
    ranks = np.empty(n)
    sorted_m = magnitudes[order]
    i = 0
    while i < n:
        j = i
        while j + 1 < n and sorted_m[j + 1] == sorted_m[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    doubled = np.rint(2 * ranks).astype(int)
    w_plus = float(ranks[d > 0].sum())
    counts = np.zeros(doubled.sum() + 1)
    counts[0] = 1.0
    for r in doubled:
        counts[r:] = counts[r:] + counts[: counts.size - r].copy()
    probabilities = counts / 2.0**n
    w2 = int(round(2 * w_plus))
    lower, upper = probabilities[: w2 + 1].sum(), probabilities[w2:].sum()
    return w_plus, float(min(1.0, 2 * min(lower, upper))), n


def mean_std(values) -> tuple[float, float]:
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


# ------------------------------------------------------------------------------------------------------ loading
def load(raw: pathlib.Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(raw.glob("*.json"))]


def points(records, track: str, *, oversize: bool = False):
    """(dataset, width) → method → target fraction → list of (seed, row, point, record).

    Points larger than their target (only a method without a knob, exact lumping, has them) are left out unless
    `oversize`; `fixed_points` lists them."""
    table = collections.defaultdict(lambda: collections.defaultdict(lambda: collections.defaultdict(list)))
    for r in records:
        for p in r["points"]:
            if track in p and (oversize or p[track]["realised_size"] <= p["target_size"]):
                table[(r["dataset"], r["width"])][p["method"]][p["target_fraction"]].append((r["seed"], p[track], p, r))
    return table


def fixed_points(records) -> str:
    """Methods without a size knob (exact lumping): their one size and error per data set."""
    lines = ["| data set | width | method | seeds | size % | test MSE | original test MSE |", "|" + "---|" * 7]
    table = points(records, "A", oversize=True)
    for (dataset, width), methods in sorted(table.items()):
        for method, per in methods.items():
            entries = [e for es in per.values() for e in es if e[1]["realised_size"] > e[2]["target_size"]]
            if not entries:
                continue
            size = np.mean([100 * e[1]["realised_size"] / e[3]["original"]["dense_params"] for e in entries])
            m, s = mean_std([e[3]["original"]["test_mse"] for e in entries])
            lines.append(f"| {dataset} | {width} | {method} | {len(entries)} | {size:.1f} | {_cell(entries)} | "
                         f"{_fmt(m)} ± {_fmt(s)} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _fmt(x: float) -> str:
    return f"{x:.3g}" if math.isfinite(x) else "–"


def _cell(entries) -> str:
    m, s = mean_std([e[1]["test_mse"] for e in entries])
    return f"{_fmt(m)} ± {_fmt(s)}"


# --------------------------------------------------------------------------------------------------------- tables
def matrix_tables(records, track: str) -> str:
    table = points(records, track)
    lines = [f"# Track {track}: test MSE (mean ± std over seeds) at each target size\n"]
    lines.append(_TRACK_TEXT[track] + "\n")
    for (dataset, width), methods in sorted(table.items()):
        seeds = sorted({r["seed"] for r in records if r["dataset"] == dataset and r["width"] == width})
        original = [r["original"]["test_mse"] for r in records if r["dataset"] == dataset and r["width"] == width]
        m, s = mean_std(original)
        fractions = sorted({f for per in methods.values() for f in per}, reverse=True)
        lines.append(f"## {dataset}, 2×{width}, seeds {seeds} — original test MSE {_fmt(m)} ± {_fmt(s)}\n")
        lines.append("| method | kind | " + " | ".join(f"{f:.0%}" for f in fractions) + " |")
        lines.append("|---|---|" + "---|" * len(fractions))
        for method, per in methods.items():
            kind = "S" if next(iter(per.values()))[0][2]["structured"] else "U"
            cells = [_cell(per[f]) if f in per else "–" for f in fractions]
            lines.append(f"| {method} | {kind} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


_TRACK_TEXT = {
    "A": "No reconstruction for anyone: each method's own weights (OBS/ID/OSSCAR selection alone, lumping's "
    "quotient, FLAP's bias compensation). S = structured (dense parameters), U = unstructured (non-zeros).",
    "B": "The same least-squares reconstruction (`jaxlump.reconstruct`'s solver) for everyone; methods that cannot "
    "be reconstructed (whitened low-rank, exact lumping) give their track-A point.",
    "C": "Test MSE against measured cost, track B's models: dense FLOPs per example and the median jitted forward "
    "latency (µs) at batch 1 and 1024 on this machine (measured on seed 0's runs; each new shape compiles), so "
    "a shared, loaded machine makes them noisy. Masks buy nothing here.",
}


def point_seconds(point: dict, row: dict) -> float:
    """Seconds to a point: the knob search (which ran the point's unreconstructed result, or its share of a sweep)
    plus, when the track re-ran the method with the reconstruction, that run."""
    return point.get("search_s", 0.0) + (row["wall_s"] if row.get("reconstructed") else 0.0)


def point_tables(records, track: str) -> str:
    table = points(records, track)
    lines = [f"# Track {track}: every point\n", "Realised size in % of the original (dense parameters for "
             "structured, non-zeros for unstructured), the knob (ε, sparsity …), and the time to the point (s): the "
             "knob search (the point's share of a sweep) and the runs, the reconstruction included on track B "
             "(merge_or_remove's greedy paths, computed once per network for both variants, count where they were "
             "computed; every point also records them as `path_s`).\n",
             "| data set | width | method | target | seeds | test MSE | size % (min–max) | knob (min–max) | time s |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for (dataset, width), methods in sorted(table.items()):
        for method, per in methods.items():
            for f in sorted(per, reverse=True):
                entries = per[f]
                base = [e[3]["original"]["dense_params" if e[2]["structured"] else "nonzeros"] for e in entries]
                size = [100 * e[1]["realised_size"] / b for e, b in zip(entries, base)]
                knobs = [e[2].get("knob") for e in entries if e[2].get("knob") is not None]
                knob = f"{min(knobs):.4g}–{max(knobs):.4g}" if knobs else "–"
                wall = np.mean([point_seconds(e[2], e[1]) for e in entries])
                lines.append(
                    f"| {dataset} | {width} | {method} | {f:.0%} | {len(entries)} | {_cell(entries)} | "
                    f"{np.mean(size):.1f} ({min(size):.1f}–{max(size):.1f}) | {knob} | {wall:.3g} |"
                )
    return "\n".join(lines) + "\n"


def cost_table(records) -> str:
    table = points(records, "B")
    lines = ["# Track C: test MSE against measured cost\n", _TRACK_TEXT["C"] + "\n"]
    for (dataset, width), methods in sorted(table.items()):
        rec = [r for r in records if r["dataset"] == dataset and r["width"] == width]
        o = rec[0]["original"]
        lines.append(f"## {dataset}, 2×{width} — original: {o['flops']} FLOPs, {o['latency_b1_us']:.1f} µs (b=1), "
                     f"{o['latency_b1024_us']:.1f} µs (b=1024)\n")  # fmt: skip
        lines.append("| method | kind | target | test MSE | dense FLOPs | latency b=1 (µs) | latency b=1024 (µs) |")
        lines.append("|---|---|---|---|---|---|---|")
        for method, per in methods.items():
            for f in sorted(per, reverse=True):
                e = per[f]
                kind = "S" if e[0][2]["structured"] else "U"
                flops = np.mean([x[1]["flops"] for x in e])
                l1, l2 = (_latency([x[1][k] for x in e]) for k in ("latency_b1_us", "latency_b1024_us"))
                lines.append(f"| {method} | {kind} | {f:.0%} | {_cell(e)} | {flops:.0f} | {l1} | {l2} |")
        lines.append("")
    return "\n".join(lines)


def _latency(values) -> str:
    """Mean of the measured latencies (measured on seed 0's runs only), or – when none was measured."""
    measured = [v for v in values if v is not None]
    return f"{np.mean(measured):.1f}" if measured else "–"


def _means(per_method, fraction):
    """Mean test MSE per method at `fraction`, over the seeds of the method with the most; a method that lacks
    one of those seeds is left out (means over different seeds are not comparable)."""
    seeds = {m: {e[0] for e in p[fraction]} for m, p in per_method.items() if fraction in p}
    full = set().union(*seeds.values())
    return {m: mean_std([e[1]["test_mse"] for e in per_method[m][fraction]])[0] for m in seeds if seeds[m] == full}


def headline(records) -> tuple[str, dict]:
    """Per data set at ~35 % and ~10 %: best structured and best unstructured method (track B and A), lumping's
    rank among the structured methods."""
    summary = {}
    lines = ["# Headline: best method per data set at 35 % and 10 % of the parameters\n",
             f"Mean test MSE over seeds. Rank = place among all structured methods (1 = best) of `{DEFAULT}` "
             "(jaxlump's default structured compressor) and of the best AFDE lumping variant.\n",
             f"| data set | width | track | size | best structured | best unstructured | {DEFAULT} | rank | "
             "best lumping | lumping rank |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for track in ("B", "A"):
        table = points(records, track)
        for (dataset, width), methods in sorted(table.items()):
            for fraction in (0.35, 0.1):
                means = _means(methods, fraction)
                kinds = {m: next(iter(per.values()))[0][2]["structured"] for m, per in methods.items()}
                s = sorted((v, m) for m, v in means.items() if kinds[m])
                u = sorted((v, m) for m, v in means.items() if not kinds[m])
                lump = sorted((v, m) for m, v in means.items() if m in LUMPING)
                rank = 1 + [m for _, m in s].index(lump[0][1]) if lump else None
                default = 1 + [m for _, m in s].index(DEFAULT) if DEFAULT in means else None
                best = {"structured": s[0] if s else None, "unstructured": u[0] if u else None,
                        "lumping": lump[0] if lump else None, "lumping_rank": rank, "n_structured": len(s),
                        "default": (means[DEFAULT], DEFAULT) if default else None, "default_rank": default}  # fmt: skip
                summary[f"{dataset}/w{width}/{track}/{fraction}"] = best

                def show(x):
                    return f"{x[1]} ({_fmt(x[0])})" if x else "–"

                lines.append(f"| {dataset} | {width} | {track} | {fraction:.0%} | {show(best['structured'])} | "
                             f"{show(best['unstructured'])} | {show(best['default'])} | "
                             f"{default if default else '–'} / {len(s)} | {show(best['lumping'])} | "
                             f"{rank if rank else '–'} / {len(s)} |")  # fmt: skip
    return "\n".join(lines) + "\n", summary


def criterion_table(records, method: str = DEFAULT) -> tuple[str, dict]:
    """Issue 17's test on track B: at how many size levels `method` has the lowest mean test MSE among all
    structured methods, per data set and width; the best competitor and the MSE ratio at each level where it
    does not; and the median ratio of its first layer's error to the rank-k oracle bound."""
    table = points(records, "B")
    lines = [f"# Issue 17's criterion: is `{method}` the best structured method? (track B)\n",
             "Per data set: size levels where it has the lowest mean test MSE among all structured methods other "
             f"than its own variants ({', '.join(VARIANTS)}: the same greedy paths cut at uniform widths) (the "
             "target: ≥ 80 % of the levels on ≥ 6 of the 8 data sets), the levels it loses with the winner and "
             "the ratio (its MSE / the winner's), and its first-layer error as a multiple of the rank-k oracle "
             "bound (median over seeds and sizes; the target: ≤ 1.5×).\n",
             f"`ties`: levels it loses by at most {TIE:.0%} of the winner's MSE.\n",
             "| data set | width | seeds | lowest at | share | ties | lost to (level: winner, ratio) | oracle ratio |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    summary = {}
    for (dataset, width), methods in sorted(table.items()):
        if method not in methods:
            continue
        kinds = {m: next(iter(per.values()))[0][2]["structured"] for m, per in methods.items()}
        structured = {m: per for m, per in methods.items() if kinds[m] and m not in VARIANTS}
        levels = sorted(methods[method], reverse=True)
        wins, ties, losses = 0, 0, []
        for f in levels:
            means = _means(structured, f)
            winner = min(means, key=means.get)
            ratio = means[method] / means[winner]
            wins += winner == method
            ties += winner != method and ratio <= 1 + TIE
            if winner != method:
                losses.append((f, winner, ratio))
        ratios = [e[1]["layer_errors"][0] / e[1]["layer_bounds"][0] for es in methods[method].values() for e in es
                  if "layer_errors" in e[1] and e[1]["layer_bounds"][0] > 0]  # fmt: skip
        oracle = float(np.median(ratios)) if ratios else None
        seeds = sorted({e[0] for es in methods[method].values() for e in es})
        share = wins / len(levels)
        summary[f"{dataset}/w{width}"] = {"wins": wins, "ties": ties, "levels": len(levels), "share": share,
                                          "oracle": oracle, "losses": losses}  # fmt: skip
        lost = "; ".join(f"{f:.0%}: {winner}, {ratio:.3f}" for f, winner, ratio in losses)
        lines.append(f"| {dataset} | {width} | {len(seeds)} | {wins} / {len(levels)} | {share:.0%} | {ties} | "
                     f"{lost or '–'} | {_fmt(oracle) if oracle else '–'} |")  # fmt: skip
    met = sum(v["share"] >= 0.8 for v in summary.values())
    lines.append(f"\nData sets (× width) where the share is ≥ 80 %: {met} of {len(summary)}.\n")
    return "\n".join(lines), summary


def oracle_table(records) -> str:
    table = points(records, "B")
    lines = ["# Oracle: first hidden layer's error as a multiple of the rank-k lower bound (track B)\n",
             "`layer_errors[0] / rank_bounds[0][k]`: how well the compressed network's first hidden layer (width k) "
             "can predict the original's second-layer pre-activations, relative to the best any width-k layer can "
             "do (1 = optimal). Median over seeds.\n"]  # fmt: skip
    for (dataset, width), methods in sorted(table.items()):
        fractions = sorted({f for per in methods.values() for f in per}, reverse=True)
        lines.append(f"## {dataset}, 2×{width}\n")
        lines.append("| method | " + " | ".join(f"{f:.0%}" for f in fractions) + " |")
        lines.append("|---|" + "---|" * len(fractions))
        for method, per in methods.items():
            cells = []
            for f in fractions:
                ratios = [e[1]["layer_errors"][0] / e[1]["layer_bounds"][0] for e in per.get(f, [])
                          if "layer_errors" in e[1] and e[1]["layer_bounds"][0] > 0]  # fmt: skip
                cells.append(f"{np.median(ratios):.3g}" if ratios else "–")
            if any(c != "–" for c in cells):
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def wilcoxon_table(records, reference: str = "lump structural") -> str:
    lines = [f"# Paired Wilcoxon signed-rank tests: `{reference}` against every other method\n",
             "Pairs: the same (seed, target size) on one data set and width; d = log(MSE_ref) − log(MSE_other). "
             "`ref wins` counts pairs where the reference has the lower test MSE; p is the exact two-sided p-value; "
             "ratio = median MSE_ref / MSE_other.\n",
             "| track | data set | width | other method | pairs | ref wins | median ratio | p |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for track in ("B", "A"):
        table = points(records, track)
        for (dataset, width), methods in sorted(table.items()):
            if reference not in methods:
                continue
            for method in methods:
                if method == reference or (pair := paired(methods, reference, method)) is None:
                    continue
                pairs, wins, ratio, p = pair
                lines.append(f"| {track} | {dataset} | {width} | {method} | {pairs} | {wins} | {ratio:.3g} | "
                             f"{p:.2g} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def paired(methods, reference: str, other: str):
    """`(pairs, reference wins, median MSE ratio, exact Wilcoxon p)` over the (seed, size) pairs both methods have
    (d = log MSE_reference − log MSE_other), or None when they share none."""
    ref = {(e[0], f): e[1]["test_mse"] for f, es in methods[reference].items() for e in es}
    them = {(e[0], f): e[1]["test_mse"] for f, es in methods[other].items() for e in es}
    keys = sorted(set(ref) & set(them))
    if not keys:
        return None
    d = np.asarray([math.log(ref[k]) - math.log(them[k]) for k in keys])
    return len(keys), int((d < 0).sum()), math.exp(np.median(d)), wilcoxon_signed_rank(d)[1]


RIVALS = ("OBS (ZipLM)", "OSSCAR")  # the strongest selection baselines, compared pair by pair with the default


def _span(values, fmt="{}") -> str:
    low, high = min(values), max(values)
    return fmt.format(low) if low == high else f"{fmt.format(low)}–{fmt.format(high)}"


def findings(records, headline_summary: dict, criterion: dict) -> str:
    """The benchmark's claims as bullets, every number computed here from the raw JSON (per network width)."""
    lines = []
    for width in sorted({r["width"] for r in records}):
        groups = {k: v for k, v in criterion.items() if k.endswith(f"/w{width}")}
        if not groups:
            continue
        names = [k.split("/w")[0] for k in groups]
        seeds = sorted({len({r["seed"] for r in records if r["dataset"] == n and r["width"] == width}) for n in names})
        n_structured = {h["n_structured"] for k, h in headline_summary.items() if f"/w{width}/B/" in k}
        levels = sum(v["levels"] for v in groups.values())
        wins = sum(v["wins"] for v in groups.values())
        ties = sum(v["ties"] for v in groups.values())
        strict = [n for n, v in zip(names, groups.values()) if v["share"] >= 0.8]
        tied = [n for n, v in zip(names, groups.values()) if (v["wins"] + v["ties"]) / v["levels"] >= 0.8]
        lines.append(f"**2×{width} networks: {len(names)} data sets × {_span(seeds)} seeds, "
                     f"{_span(n_structured)} structured methods (track B unless stated).**\n")  # fmt: skip
        lines.append(f"- `{DEFAULT}` has the lowest mean test MSE among the structured methods at {wins} of the "
                     f"{levels} (data set, size) levels and is within {TIE * 100:.0f} % of the best at {ties} more. "
                     f"Issue 17's criterion (lowest at ≥ 80 % of the levels on ≥ 6 of 8 data sets) holds on "
                     f"{len(strict)} of {len(names)} ({', '.join(strict) or 'none'}), on {len(tied)} of "
                     f"{len(names)} when {TIE * 100:.0f} % ties count.")  # fmt: skip
        clear = [(n, *loss) for n, v in zip(names, groups.values()) for loss in v["losses"] if loss[2] > 1 + TIE]
        if clear:
            shown = "; ".join(f"{n} {f:.0%} ({w}, {r:.2f}×)" for n, f, w, r in clear)
            lines.append(f"- Where it loses by more than {TIE * 100:.0f} % (data set, size: the winner, its MSE ÷ the "
                         f"winner's): {shown}.")  # fmt: skip
        table = points(records, "B")
        for rival in RIVALS:
            pairs = [paired(table[(n, width)], DEFAULT, rival) for n in names if rival in table[(n, width)]]
            pairs = [x for x in pairs if x is not None]
            if pairs:
                lines.append(f"- Against {rival}, paired over seeds × sizes: lower test MSE in "
                             f"{_span([x[1] for x in pairs])} of {_span([x[0] for x in pairs])} runs per data set "
                             f"(exact Wilcoxon p ≤ {max(x[3] for x in pairs):.2g} on each).")  # fmt: skip
        ranks = [h["lumping_rank"] for k, h in headline_summary.items() if k.endswith(f"/w{width}/B/0.1")]
        if ranks := [r for r in ranks if r]:
            lines.append(f"- AFDE lumping (`lump`, its best variant) at 10 %: rank {_span(ranks)} of "
                         f"{_span(n_structured)} structured methods.")  # fmt: skip
        oracle = [v["oracle"] for v in groups.values() if v["oracle"]]
        if oracle:
            lines.append(f"- `{DEFAULT}`'s first hidden layer leaves {_span(oracle, '{:.3g}')}× the rank-k lower "
                         "bound on its refit error (median per data set; issue 17's target: ≤ 1.5×).")  # fmt: skip
        structured_ahead, exceptions = 0, []
        for n in names:
            for fraction in (0.35, 0.1):
                h = headline_summary.get(f"{n}/w{width}/B/{fraction}")
                if h and h["structured"] and h["unstructured"]:
                    ahead = h["structured"][0] < h["unstructured"][0]
                    structured_ahead += ahead
                    if not ahead:
                        exceptions.append(f"{n} {fraction:.0%} ({h['unstructured'][1]} {_fmt(h['unstructured'][0])}"
                                          f" vs {h['structured'][1]} {_fmt(h['structured'][0])})")  # fmt: skip
        lines.append(f"- The best unstructured method (matched non-zeros) is behind the best structured one in "
                     f"{structured_ahead} of {2 * len(names)} (data set, 35 % / 10 %) cases"
                     + (f"; not in: {'; '.join(exceptions)}." if exceptions else "."))  # fmt: skip
        table_a = points(records, "A")
        beats, cases = 0, 0
        for n in names:
            for fraction in (0.35, 0.1):
                means = _means(table_a[(n, width)], fraction)
                lump = [means[m] for m in LUMPING if m in means]
                weak = [means[m] for m in ("magnitude", "Wanda") if m in means]
                if lump and weak:
                    cases += 1
                    beats += min(lump) < min(weak)
        if cases:
            lines.append(f"- Track A (no reconstruction, the paper's protocol): the best lumping has a lower test MSE "
                         f"than both magnitude and Wanda pruning in {beats} of {cases} (data set, 35 % / 10 %) "
                         "cases.")  # fmt: skip
        lines.append("")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------------- figures
def figure(records, track: str, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = points(records, "B" if track == "C" else track)
    keys = sorted(table)
    if not keys:
        return
    cols = min(4, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, key in zip(axes.ravel(), keys):
        methods = table[key]
        rec = [r for r in records if (r["dataset"], r["width"]) == key]
        for method in PLOTTED:
            if method not in methods:
                continue
            per = methods[method]
            xs, ys, es = [], [], []
            for f in sorted(per):
                e = per[f]
                if track == "C":
                    x = np.mean([v[1]["flops"] / v[3]["original"]["flops"] for v in e])
                else:
                    base = "dense_params" if e[0][2]["structured"] else "nonzeros"
                    x = np.mean([v[1]["realised_size"] / v[3]["original"][base] for v in e])
                m, s = mean_std([v[1]["test_mse"] for v in e])
                xs.append(100 * x), ys.append(m), es.append(s)
            style = "-" if next(iter(per.values()))[0][2]["structured"] else "--"
            ax.errorbar(xs, ys, yerr=es, fmt=style + "o", ms=3, capsize=2, label=method, lw=1.2 if method in LUMPING
                        else 0.8)  # fmt: skip
        ax.axhline(np.mean([r["original"]["test_mse"] for r in rec]), color="k", lw=0.6, ls=":")
        ax.set_yscale("log")
        ax.set_title(f"{key[0]} (2×{key[1]}, {len(rec)} seeds)", fontsize=9)
        ax.set_xlabel("dense FLOPs (% of original)" if track == "C" else "size (% of original)", fontsize=8)
        ax.set_ylabel("test MSE", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(keys) :]:
        ax.axis("off")
    handles, labels = axes.ravel()[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=7, fontsize=7)
    titles = {"A": "Track A: no reconstruction", "B": "Track B: same reconstruction for all",
              "C": "Track C: test MSE vs dense FLOPs (track-B models)"}  # fmt: skip
    fig.suptitle(titles[track] + " — solid: structured, dashed: unstructured; mean ± std over seeds")
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def completed_table(records, runs: list[dict]) -> str:
    """What the raw JSON holds: per data set and width, the seeds, methods and wall time; the runs' log."""
    lines = ["# Completed runs\n", "| data set | width | seeds | methods | mean train steps | encoding max deviation "
             "| run wall time (s, sum) |", "|" + "---|" * 7]  # fmt: skip
    groups = collections.defaultdict(list)
    for r in records:
        groups[(r["dataset"], r["width"])].append(r)
    for (dataset, width), rs in sorted(groups.items()):
        methods = sorted({p["method"] for r in rs for p in r["points"]})
        steps = np.mean([r["training"]["steps"] for r in rs])
        deviation = max(r["encoding_max_deviation"] for r in rs)
        lines.append(f"| {dataset} | {width} | {sorted(r['seed'] for r in rs)} | {len(methods)} | {steps:.0f} | "
                     f"{deviation:.2g} | {sum(r['wall_s'] for r in rs):.0f} |")  # fmt: skip
    total = sum(r["wall_s"] for r in records)
    lines.append(f"\nAll {len(records)} runs: {total:.0f} s of summed run wall time ({total / 3600:.1f} h; runs in "
                 "parallel processes overlap, so this is process time, not elapsed time).")  # fmt: skip
    if runs:
        lines += ["", "Invocations of `benchmarks/experiments.py` (wall time of each whole invocation):", ""]
        lines += [f"- {_invocation(r)}, arguments `{' '.join(r['argv']) or '(none)'}`"
              + (f"; {r['note']}" if "note" in r else "") for r in runs]  # fmt: skip
        totals = collections.defaultdict(list)
        for r in runs:
            if "run" in r:
                totals[r["run"]].append(r)
        for run, parts in totals.items():
            elapsed = sum(r["wall_s"] for r in parts)
            state = "complete" if parts[-1]["complete"] else "not complete yet"
            lines.append(f"\n**Run {run}**: {len(parts)} invocation(s), {elapsed:.0f} s elapsed in all "
                         f"({elapsed / 3600:.2f} h), {state}.")  # fmt: skip
    return "\n".join(lines) + "\n"


def _invocation(run: dict) -> str:
    """One line of the runs' log: when, how much, how long (elapsed, with how many processes when recorded)."""
    if "processes" not in run:  # the first invocations recorded one process's wall time only
        return f"{run['finished']}: {run['computed']} of {run['jobs']} jobs computed in {run['wall_s']:.0f} s"
    hours = run["wall_s"] / 3600
    return (f"{run['started']} to {run['finished']}: {run['computed']} of {run['jobs']} jobs computed in "
            f"{run['wall_s']:.0f} s elapsed ({hours:.2f} h) by {run['processes']} processes"
            + ("" if run.get("complete", True) else ", stopped before the end"))  # fmt: skip


def readme_table(summary: dict, completed: dict) -> str:
    """The README's headline: per data set and width (track B, 35 % and 10 %), the best structured method, the
    default's value and rank, the best lumping's value and rank, the best unstructured method."""

    def show(entry):
        return f"{entry[1]} {_fmt(entry[0])}" if entry else "–"

    lines = [f"| data set (width, seeds) | size | best structured | `{DEFAULT}` (rank) | best AFDE lumping (rank) | "
             "best unstructured |", "|---|---|---|---|---|---|"]  # fmt: skip
    for key, seeds in sorted(completed.items(), key=lambda kv: (int(kv[0].split("/w")[1]), kv[0])):
        dataset, width = key.split("/w")
        for fraction in (0.35, 0.1):
            h = summary.get(f"{dataset}/w{width}/B/{fraction}")
            if not h:
                continue
            n = h["n_structured"]
            default = f"{_fmt(h['default'][0])} ({h['default_rank']}/{n})" if h["default"] else "–"
            lump = f"{h['lumping'][1]} {_fmt(h['lumping'][0])} ({h['lumping_rank']}/{n})" if h["lumping"] else "–"
            lines.append(f"| {dataset} (2×{width}, {len(seeds)}) | {fraction:.0%} | {show(h['structured'])} | "
                         f"{default} | {lump} | {show(h['unstructured'])} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def replace_between(path: pathlib.Path, body: str, marker: str = "experiments-report") -> None:
    """Replace what lies between the two `marker` comments in `path` (appending them if absent) with `body`."""
    start, end = f"<!-- {marker}: start -->", f"<!-- {marker}: end -->"
    text = path.read_text() if path.exists() else f"{start}\n{end}\n"
    if start not in text:
        text += f"\n{start}\n{end}\n"
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    path.write_text(f"{head}{start}\n\n{body}\n\n{end}{tail}")


def update_docs(path: pathlib.Path, out: pathlib.Path) -> None:
    """Replace the generated part of the docs page (between the two markers) with the current tables."""
    parts = ["completed.md", "findings.md", "headline.md", "criterion.md", "track_B.md", "track_A.md", "track_C.md"]
    parts += ["oracle.md", "wilcoxon.md", "fixed.md"]
    body = "\n\n".join((out / p).read_text() for p in parts)
    body = "\n".join(("#" + line) if line.startswith("#") else line for line in body.splitlines())  # one level down
    replace_between(path, body)


def report(
    raw: pathlib.Path, out: pathlib.Path, docs: pathlib.Path | None = None, readme_path: pathlib.Path | None = None
) -> None:
    """Every table and figure from the raw files in `raw`, to `out`; `summary.json` carries the provenance of the raw
    files' code and of this report's."""
    records = load(raw)
    out.mkdir(parents=True, exist_ok=True)
    if not records:
        print(f"no raw results in {raw}")
        return
    with provenance.recording():
        summary = write_report(records, raw, out, docs, readme_path)
    summary["provenance"] = provenance.stamp(provenance.combined([r.get("provenance") for r in records]))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"report from {len(records)} runs written to {out}")


def write_report(records, raw, out, docs, readme_path) -> dict:
    for track in ("A", "B"):
        (out / f"track_{track}.md").write_text(matrix_tables(records, track))
        (out / f"points_{track}.md").write_text(point_tables(records, track))
    (out / "track_C.md").write_text(cost_table(records))
    text, summary = headline(records)
    (out / "headline.md").write_text(text)
    (out / "oracle.md").write_text(oracle_table(records))
    (out / "wilcoxon.md").write_text(wilcoxon_table(records, DEFAULT) + "\n" + wilcoxon_table(records))
    criterion, criterion_summary = criterion_table(records)
    (out / "criterion.md").write_text(criterion)
    log = raw.parent / ("runs-quick.json" if raw.name == "raw-quick" else "runs.json")
    (out / "completed.md").write_text(completed_table(records, json.loads(log.read_text()) if log.exists() else []))
    (out / "fixed.md").write_text("# Methods without a size knob (exact lumping, ε = 0)\n\n" + fixed_points(records))
    completed = collections.defaultdict(list)
    for r in records:
        completed[f"{r['dataset']}/w{r['width']}"].append(r["seed"])
    summary = {"completed": {k: sorted(v) for k, v in completed.items()}, "headline": summary,
               "criterion": criterion_summary}  # fmt: skip
    for track in ("A", "B", "C"):
        figure(records, track, out / f"track_{track}.png")
    claims = findings(records, summary["headline"], criterion_summary)
    (out / "findings.md").write_text("# What the numbers show\n\n" + claims)
    (out / "readme_table.md").write_text(readme_table(summary["headline"], summary["completed"]) + "\n" + claims)
    if docs is not None:
        update_docs(docs, out)
    if readme_path is not None:
        replace_between(readme_path, (out / "readme_table.md").read_text())
    return summary


if __name__ == "__main__":
    report(pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]))
