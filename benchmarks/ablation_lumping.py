"""Issue 17's ablation: lumping variants against the strong structured selectors, tracks B and C.

Every method gets the same least-squares reconstruction (track B); the table reports test MSE at ~60 %, 35 %,
15 % of the dense parameters (realised sizes and dense FLOPs recorded: track C), mean ± std over seeds, and for
each result the first hidden layer's refit error as a multiple of the rank-k oracle lower bound
(`jaxlump.baselines.rank_bounds`, `layer_errors`).

Writes benchmarks/results/ablation_lumping.json (raw, one entry per data set × seed × size × method),
ablation_lumping.md (the table) and ablation_lumping.png (test MSE vs dense FLOPs). `--quick` writes
ablation_lumping_quick.*. Existing results are kept unless `--overwrite`.
Run: nice -n 10 python3 benchmarks/ablation_lumping.py [--quick] [--seeds 3] [--steps 1500] [--overwrite]
"""

import argparse
import json
import pathlib
import time

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
import provenance  # noqa: E402 — the sibling module

import jaxlump  # noqa: E402
from jaxlump import datasets  # noqa: E402
from jaxlump._methods.select import compress_along, layer_paths, select_lumped, steps_to_sparsity, steps_within  # noqa: E402
from jaxlump._model import to_chain  # noqa: E402
from jaxlump._training.train import mse, train_mse  # noqa: E402
from jaxlump.baselines import (  # noqa: E402
    compress_to,
    id_prune,
    layer_errors,
    obs_prune,
    osscar_prune,
    rank_bounds,
    structured_prune,
)  # noqa: E402

RESULTS = pathlib.Path(__file__).parent / "results"
DATASETS = {"glycolytic": datasets.glycolytic, "rlc_network": datasets.rlc_network, "abalone": datasets.abalone}
FRACTIONS = (0.6, 0.35, 0.15)
MILD_EPS = 0.5  # the lumping ε of lump-then-select (issue 17: ε ≈ 0.6 removed ~15 % of the first layer)


def problem(name: str, seed: int, steps: int, width: int = 64, n_calib: int = 512):
    data = DATASETS[name](key=seed)
    data = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64) if eqx.is_inexact_array(a) else a, data)
    init_key, train_key, calib_key = jr.split(jr.key(seed), 3)
    model = eqx.nn.MLP(data.n_features, data.n_targets, width, 2, activation=jnp.tanh, dtype=jnp.float64, key=init_key)
    model = train_mse(model, data.x_train, data.y_train, key=train_key, steps=steps, progress=False)
    return model, data, data.calibration(n_calib, calib_key)


def params_of(widths) -> int:
    return int(sum(a * b + b for a, b in zip(widths[:-1], widths[1:])))


def uniform_sparsity(widths, target: int) -> float:
    """The sparsity (fraction of each hidden layer removed) whose uniform widths are the largest within `target`."""
    n = widths[1]
    for k in range(n, 0, -1):
        if params_of([widths[0], *[k] * (len(widths) - 2), widths[-1]]) <= target:
            return (n - k) / n
    raise ValueError(f"target {target} below the smallest network")


def widths_after_steps(widths, steps) -> list[int]:
    return [widths[0], *[n - s for n, s in zip(widths[1:-1], steps)], widths[-1]]


def eps_for_target(paths, widths, target: int) -> float:
    """The smallest path threshold ε (one for all layers) whose cut stays within `target` parameters."""
    candidates = np.unique(np.concatenate([[0.0], *[np.maximum.accumulate(np.asarray(p.cumulative)) for p in paths]]))
    for eps in candidates:  # ascending: sizes fall as ε grows
        if params_of(widths_after_steps(widths, [steps_within(p, eps) for p in paths])) <= target:
            return float(eps)
    raise ValueError(f"target {target} below the smallest network")


def methods(model, x):
    """name → compress(target) -> (model, info). Paths are computed once per network and cut per size."""
    chain = to_chain(model)
    widths = chain.widths
    cache = {}

    def paths(merge):
        if merge not in cache:
            cache[merge] = layer_paths(chain, x, merge=merge, damping=1e-3)
        return cache[merge]

    def along(merge, uniform):
        def run(target):
            p = paths(merge)
            if uniform:
                s = uniform_sparsity(widths, target)
                return compress_along(model, x, p, [steps_to_sparsity(q, s) for q in p], "path", s, 1e-3)
            eps = eps_for_target(p, widths, target)
            return compress_along(model, x, p, [steps_within(q, eps) for q in p], "path", eps, 1e-3)

        return run

    def lumped_then_select(discrepancy, eps, merge):
        key = ("lump", type(discrepancy).__name__, eps, merge)

        def run(target):
            if key not in cache:
                lumped, lump_info = jaxlump.lump(model, x, eps, discrepancy=discrepancy, certify_ode=False)
                cache[key] = lumped, lump_info, layer_paths(to_chain(lumped), x, merge=merge, damping=1e-3)
            lumped, lump_info, p = cache[key]
            lw = to_chain(lumped).widths
            best = None
            for s in np.linspace(0, 1, 129)[:-1]:  # the largest result within the target (sizes fall with s)
                if params_of(widths_after_steps(lw, [steps_to_sparsity(q, s) for q in p])) <= target:
                    best = float(s)
                    break
            return select_lumped(model, x, lump_info, p, best, 1e-3)

        return run

    def uniform(method, **options):
        return lambda target: method(model, x, uniform_sparsity(widths, target), **options)

    def lump_to(**options):
        return lambda target: compress_to(model, jaxlump.lump, target, x, grow_upper=True, certify_ode=False, **options)

    def pruned(target):
        small, info = structured_prune(model, x, uniform_sparsity(widths, target))
        return jaxlump.reconstruct(model, small, x, info)

    return {
        "lump (structural, default)": lump_to(),
        "lump (RefitAware)": lump_to(discrepancy=jaxlump.RefitAware()),
        "structured_prune + reconstruct": pruned,
        "ID (E) + reconstruct": uniform(id_prune),
        "OBS (E) + reconstruct": uniform(obs_prune),
        "OSSCAR (E) + reconstruct": uniform(osscar_prune),
        "OBS path, uniform": along(False, True),
        "OBS path, one ε": along(False, False),
        "merge_or_remove, uniform": along(True, True),
        "merge_or_remove, one ε": along(True, False),
        "lump_then_select (structural ε=0.5, OBS)": lumped_then_select(jaxlump.Structural(), MILD_EPS, False),
    }


def run_one(name, seed, steps, quick):
    t0 = time.time()
    model, data, x = problem(name, seed, steps)
    base = jaxlump.cost(model)
    bounds = rank_bounds(model, x)
    rows = [dict(dataset=name, seed=seed, method="original", fraction=1.0, size=int(base.dense_params),
                 flops=int(base.flops), test_mse=float(mse(model, data.x_test, data.y_test)))]  # fmt: skip
    compressors = methods(model, x)
    if quick:
        compressors = {k: v for k, v in compressors.items() if not any(s in k for s in ("RefitAware", "ID", "OSSCAR"))}
    for fraction in FRACTIONS:
        target = int(fraction * int(base.dense_params))
        for method, compress in compressors.items():
            t = time.time()
            small, info = compress(target)
            widths = [int(w) for w in info.widths_after]
            errors = layer_errors(model, small, x)
            rows.append(dict(
                dataset=name, seed=seed, method=method, fraction=fraction, target=target,
                size=int(jaxlump.cost(small).dense_params), flops=int(jaxlump.cost(small).flops), widths=widths,
                knob=float(info.knob), test_mse=float(mse(small, data.x_test, data.y_test)),
                calib_output_rms=float(info.certificate.output_rms) if info.certificate is not None else None,
                layer1_error=float(errors[0]), layer1_bound=float(bounds[0][widths[1]]), seconds=time.time() - t,
            ))  # fmt: skip
            print(f"{name} s{seed} {fraction:.0%} {method}: {rows[-1]['test_mse']:.3e} {widths}", flush=True)
    print(f"{name} seed {seed}: {time.time() - t0:.0f} s", flush=True)
    return rows


def table(rows) -> str:
    methods_ = list(dict.fromkeys(r["method"] for r in rows if r["method"] != "original"))
    sets = list(dict.fromkeys(r["dataset"] for r in rows))
    lines = ["| data set | size | " + " | ".join(methods_) + " |", "|---|---|" + "---|" * len(methods_)]
    for name in sets:
        for fraction in FRACTIONS:
            cells = []
            means = {}
            for m in methods_:
                v = [
                    r["test_mse"]
                    for r in rows
                    if r["dataset"] == name and r["fraction"] == fraction and r["method"] == m
                ]
                means[m] = np.mean(v) if v else np.inf
                cells.append(f"{np.mean(v):.3g} ± {np.std(v):.2g}" if v else "–")
            best = min(means, key=means.get)
            cells = [f"**{c}**" if m == best else c for c, m in zip(cells, methods_)]
            lines.append(f"| {name} | {fraction:.0%} | " + " | ".join(cells) + " |")
    lines += ["", paired(rows, "merge_or_remove, uniform"), ""]
    lines += ["", "Layer-1 refit error as a multiple of the rank-k oracle lower bound (mean over seeds and sizes):", ""]
    lines += ["| data set | " + " | ".join(methods_) + " |", "|---|" + "---|" * len(methods_)]
    for name in sets:
        cells = []
        for m in methods_:
            v = [r["layer1_error"] / r["layer1_bound"] for r in rows
                 if r["dataset"] == name and r["method"] == m and r["layer1_bound"] > 0]  # fmt: skip
            cells.append(f"{np.mean(v):.2f}" if v else "–")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paired(rows, reference: str) -> str:
    """`reference` against every other method over all (data set, seed, size): how often it is lower, the median
    ratio of test MSEs, and a two-sided Wilcoxon signed-rank test."""
    from scipy.stats import wilcoxon

    def key(r):
        return r["dataset"], r["seed"], r["fraction"]

    ours = {key(r): r["test_mse"] for r in rows if r["method"] == reference}
    lines = [
        f"Paired over data set × seed × size: `{reference}` against each method",
        "",
        "| method | pairs | reference lower | median MSE ratio (reference / method) | Wilcoxon p |",
        "|---|---|---|---|---|",
    ]
    for m in dict.fromkeys(r["method"] for r in rows if r["method"] not in ("original", reference)):
        theirs = {key(r): r["test_mse"] for r in rows if r["method"] == m}
        common = sorted(set(ours) & set(theirs))
        a, b = np.array([ours[k] for k in common]), np.array([theirs[k] for k in common])
        p = wilcoxon(a, b).pvalue if len(common) >= 6 and np.any(a != b) else float("nan")
        lines.append(f"| {m} | {len(common)} | {int(np.sum(a < b))} | {np.median(a / b):.3f} | {p:.2g} |")
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 4), squeeze=False)
    for ax, name in zip(axes[0], sets):
        for m in dict.fromkeys(r["method"] for r in rows if r["method"] != "original"):
            pts = [(f, [(r["flops"], r["test_mse"]) for r in rows if r["dataset"] == name and r["method"] == m
                        and r["fraction"] == f]) for f in FRACTIONS]  # fmt: skip
            xs = [np.mean([p[0] for p in v]) for _, v in pts if v]
            ys = [np.mean([p[1] for p in v]) for _, v in pts if v]
            es = [np.std([p[1] for p in v]) for _, v in pts if v]
            ax.errorbar(xs, ys, yerr=es, marker="o", label=m, capsize=2)
        ax.set(xscale="log", yscale="log", xlabel="dense FLOPs", ylabel="test MSE", title=name)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="glycolytic only, 2 seeds, fewer methods")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS))
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--from-json", action="store_true", help="only rebuild the table and figure from the JSON")
    args = parser.parse_args()
    stem = RESULTS / ("ablation_lumping_quick" if args.quick else "ablation_lumping")
    if args.from_json:
        rows = json.loads(stem.with_suffix(".json").read_text())["rows"]
        stem.with_suffix(".md").write_text(table(rows))
        plot(rows, stem.with_suffix(".png"))
        return print(table(rows))
    if stem.with_suffix(".json").exists() and not args.overwrite:
        raise SystemExit(f"{stem}.json exists; pass --overwrite to replace it.")
    sets, seeds = (["glycolytic"], 2) if args.quick else (args.datasets, args.seeds)
    start, rows = time.time(), []
    for name in sets:
        for seed in range(seeds):
            rows += run_one(name, seed, args.steps, args.quick)
            RESULTS.mkdir(exist_ok=True)
            meta = dict(steps=args.steps, seeds=seeds, datasets=sets, width=64, depth=2, n_calib=512,
                        mild_eps=MILD_EPS, wall_seconds=time.time() - start)  # fmt: skip
            record = dict(meta=meta, rows=rows, provenance=provenance.stamp())
            stem.with_suffix(".json").write_text(json.dumps(record, indent=1))
    stem.with_suffix(".md").write_text(table(rows))
    plot(rows, stem.with_suffix(".png"))
    print(table(rows))


if __name__ == "__main__":
    with provenance.recording():
        main()
