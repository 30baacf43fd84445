"""Width allocation across layers (issue 29, item 3): `jaxlump.allocate`'s end-to-end search against one ε, uniform
widths and FLAP's global threshold, at the same size.

On the ablation networks (`ablation_lumping.problem`: 2×64 tanh MLPs trained on glycolytic, rlc_network and abalone,
512 calibration inputs), at 60 %, 35 % and 15 % of the dense parameters, every method followed by the shared
least-squares reconstruction:

- `merge_or_remove, uniform`: both hidden layers at the largest equal width within the target;
- `merge_or_remove, one ε`: `compress_to(model, "merge_or_remove", count, x)` (every layer cut at one refit error);
- `merge_or_remove, end-to-end`: `jaxlump.allocate(model, x, count)` (16 levels per layer);
- `FLAP + reconstruct`: `compress_to(model, "flap_prune", count, x, reconstruct=True)` (FLAP's scores and its one
  global threshold, which sets the widths);
- `merge_or_remove at FLAP's widths`: the widths FLAP's threshold chose, filled by merge_or_remove — FLAP's allocation
  with jaxlump's selection.

Writes benchmarks/results/allocation.json (raw rows, paired summaries, provenance) and allocation.md (the table).
Existing results are kept unless `--overwrite`.
Run: nice -n 10 python3 benchmarks/allocation.py [--seeds 3] [--steps 1500] [--overwrite]
"""

import argparse
import json
import pathlib
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import provenance  # noqa: E402 — the sibling module
from ablation_lumping import DATASETS, FRACTIONS, params_of, problem, uniform_sparsity  # noqa: E402
from perf_common import machine  # noqa: E402

import jaxlump  # noqa: E402
from jaxlump._model import to_chain  # noqa: E402
from jaxlump.baselines import compress_to  # noqa: E402

RESULTS = pathlib.Path(__file__).parent / "results"
REFERENCE = "merge_or_remove, end-to-end"


def methods(model, x, widths):
    """name → compress(target count) -> (model, info)."""

    def uniform(target):
        width = round(widths[1] * (1 - uniform_sparsity(widths, target)))
        return compress_to(model, "merge_or_remove", (width,) * (len(widths) - 2), x)

    def at_flap_widths(target):
        _, flap_info = compress_to(model, "flap_prune", target, x, reconstruct=True)
        return compress_to(model, "merge_or_remove", tuple(flap_info.widths_after.tolist()), x)

    return {
        "merge_or_remove, uniform": uniform,
        "merge_or_remove, one ε": lambda target: compress_to(model, "merge_or_remove", target, x),
        REFERENCE: lambda target: jaxlump.allocate(model, x, target, levels=16),
        "FLAP + reconstruct": lambda target: compress_to(model, "flap_prune", target, x, reconstruct=True),
        "merge_or_remove at FLAP's widths": at_flap_widths,
    }


def run(seeds: int, steps: int) -> list[dict]:
    rows = []
    for name in DATASETS:
        for seed in range(seeds):
            model, data, x = problem(name, seed, steps)
            widths = to_chain(model).widths

            def test_mse(m, data=data) -> float:
                return float(jnp.mean((jax.vmap(m)(data.x_test) - data.y_test) ** 2))

            rows.append({"dataset": name, "seed": seed, "method": "original", "test_mse": test_mse(model)})
            for fraction in FRACTIONS:
                target = int(fraction * params_of(widths))
                for method, compress in methods(model, x, widths).items():
                    start = time.perf_counter()
                    small, info = compress(target)
                    row = {
                        "dataset": name,
                        "seed": seed,
                        "fraction": fraction,
                        "target": target,
                        "method": method,
                        "size": int(info.cost_after.dense_params),
                        "widths": [int(w) for w in info.widths_after],
                        "test_mse": test_mse(small),
                        "seconds": time.perf_counter() - start,
                    }
                    rows.append(row)
                    print(row, flush=True)
    return rows


def paired(rows) -> list[dict]:
    """`REFERENCE` against every other method over data set × seed × size: pairs, how often it is lower, the
    geometric-mean and median ratio of test MSEs, the exact two-sided Wilcoxon signed-rank p."""
    from scipy.stats import wilcoxon

    def by_case(method):
        return {(r["dataset"], r["seed"], r["fraction"]): r["test_mse"] for r in rows if r["method"] == method}

    ours = by_case(REFERENCE)
    out = []
    for method in dict.fromkeys(r["method"] for r in rows if r["method"] not in ("original", REFERENCE)):
        theirs = by_case(method)
        common = sorted(set(ours) & set(theirs))
        a, b = np.array([ours[k] for k in common]), np.array([theirs[k] for k in common])
        differ = a != b
        p = wilcoxon(a[differ], b[differ], method="exact").pvalue if np.sum(differ) >= 6 else float("nan")
        out.append(
            {
                "method": method,
                "pairs": len(common),
                "reference_lower": int(np.sum(a < b)),
                "ties": int(np.sum(~differ)),
                "geomean_ratio": float(np.exp(np.mean(np.log(a / b)))),
                "median_ratio": float(np.median(a / b)),
                "wilcoxon_p": float(p),
            }
        )
    return out


def table(rows, summary) -> str:
    methods_seen = [m for m in dict.fromkeys(r["method"] for r in rows) if m != "original"]
    lines = [
        "# Width allocation across layers (`benchmarks/allocation.py`)",
        "",
        "Test MSE (mean ± std over seeds) of the 2×64 tanh networks at a fraction of their dense parameters, every "
        "method followed by the shared reconstruction; the hidden widths chosen, as the mean over seeds.",
        "",
        "| data set | size | " + " | ".join(methods_seen) + " |",
        "|---|---|" + "---|" * len(methods_seen),
    ]
    for name in dict.fromkeys(r["dataset"] for r in rows):
        for fraction in FRACTIONS:
            cells = []
            for m in methods_seen:
                hits = [r for r in rows if (r["dataset"], r.get("fraction"), r["method"]) == (name, fraction, m)]
                mse = np.array([r["test_mse"] for r in hits])
                hidden = np.mean([r["widths"][1:-1] for r in hits], axis=0)
                cells.append(f"{mse.mean():.3e} ± {mse.std():.1e} ({'-'.join(f'{w:.0f}' for w in hidden)})")
            lines.append(f"| {name} | {fraction:.0%} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Paired over data set × seed × size: `{REFERENCE}` against each method (ratio: reference / method).",
        "",
        "| method | pairs | reference lower | ties | geomean ratio | median ratio | exact Wilcoxon p |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['method']} | {s['pairs']} | {s['reference_lower']} | {s['ties']} | {s['geomean_ratio']:.3f} | "
            f"{s['median_ratio']:.3f} | {s['wilcoxon_p']:.2g} |"
        )
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--overwrite", action="store_true", help="replace committed results")
    args = parser.parse_args()
    out_json, out_md = RESULTS / "allocation.json", RESULTS / "allocation.md"
    if out_json.exists() and not args.overwrite:
        sys.exit(f"{out_json} exists; pass --overwrite to replace it")
    with provenance.recording():
        rows = run(args.seeds, args.steps)
        result = {"rows": rows, "paired": paired(rows), "machine": machine(), "provenance": provenance.stamp()}
    out_json.write_text(json.dumps(result, indent=1))
    out_md.write_text(table(rows, result["paired"]))
    print(out_md.read_text())


if __name__ == "__main__":
    main()
