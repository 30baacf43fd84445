"""merge_or_remove's greedy path: time and drift of the candidate-restricted path against the exact one (issue 17).

Two parts, raw JSON in benchmarks/results/perf_merge.json (one section each; an existing section is kept
unless `--overwrite`):

- `speed`: one greedy path of a synthetic layer (N = 512 calibration inputs, width n, m = n next-layer
  neurons, tanh, float64) for n in `--widths`: compile time and run time (compile excluded) with the defaults
  (k = 16 candidates chosen among each neuron's 64 nearest, `Greedy(nearest=64)`), with every neuron priced
  (`nearest=None`; run-time ratio and final-error ratio) and with all pairs (`candidates=None`, where its
  `O(n² (N + n + m))` memory fits),
  plus the pre-change algorithm (the all-pairs kernel recomputed at every step, `O(N n⁴)`) at small n; ratios
  in the same run. `drift`: after half the steps, the rank-one-updated inverse Gram and refit against the fit
  from scratch, and the maintained candidate costs against costs recomputed from scratch (relative, max).
- `quality`: on the ablation networks (`benchmarks/ablation_lumping.py`'s `problem()`: glycolytic, rlc_network,
  abalone, 2×64 tanh), test MSE of merge_or_remove with uniform widths at 60/35/15 % of the dense parameters
  and with one ε per size (the smallest ε within the size), for k ∈ {4, 8, 16} against all pairs.

Run: nice -n 10 python3 benchmarks/perf_merge.py --part quality [--seeds 3] [--steps 1500]
     nice -n 10 python3 benchmarks/perf_merge.py --part speed [--widths 64 128 256 512]
"""

import argparse
import json
import os
import pathlib
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import provenance  # noqa: E402 — the sibling module
from perf_common import machine  # noqa: E402

from jaxlump._criteria.merge_cost import (  # noqa: E402
    ACTIVATIONS,
    LayerState,
    centred,
    current_fit,
    initial_state,
    merge_costs,
    moments,
    pair_costs,
    relative,
)
from jaxlump._methods.greedy import (  # noqa: E402
    DEFAULT_NEAREST,
    _greedy_path,
    _kill,
    advance,
    candidate_costs,
    pool_size,
    start,
)

RESULT = pathlib.Path(__file__).parent / "results" / "perf_merge.json"
N_SAMPLES, DEFAULT_K = 512, 16
EXACT_MAX_WIDTH = 256  # all-pairs moments: n² (N + 2n) float64 ≈ 0.5 GB at 256, 4 GB at 512
OLD_MAX_WIDTH = 128  # the per-step kernel: O(N n⁴), ~2 TFLOP at 256


def layer(n: int, seed: int = 0):
    generator = np.random.default_rng(seed)
    x = generator.standard_normal((N_SAMPLES, 16))
    z = x @ (generator.standard_normal((n, 16)) / 4.0).T + 0.3 * generator.standard_normal(n)
    w2 = generator.standard_normal((n, n)) / np.sqrt(n)
    return initial_state(jnp.asarray(z), jnp.asarray(np.tanh(z)), jnp.asarray(w2), "tanh", centre=True, damping=1e-3)


@eqx.filter_jit
def old_path(state, problem):
    """The greedy path as it was before the incremental version: `merge_costs` from scratch at every step."""
    fn = ACTIVATIONS[problem.activation].fn
    n = state.alive.shape[0]

    def step(t, carry):
        state, merged, cumulative, total = carry
        costs = merge_costs(state, problem)
        flat = jnp.argmin(costs.merge)
        i, j = flat // n, flat % n
        keep = jnp.where(costs.removal[i] >= costs.removal[j], i, j)
        gone = jnp.where(costs.removal[i] >= costs.removal[j], j, i)
        drop = jnp.argmin(costs.removal)
        do_merge = costs.merge[i, j] < costs.removal[drop]
        alpha = state.sizes[keep] / (state.sizes[keep] + state.sizes[gone])
        pre = alpha * state.pre[:, keep] + (1 - alpha) * state.pre[:, gone]
        merged_state = LayerState(
            state.features.at[:, keep].set(centred(fn(pre), problem.centre, 0)),
            state.pre.at[:, keep].set(pre),
            state.members.at[:, keep].set(alpha * state.members[:, keep] + (1 - alpha) * state.members[:, gone]),
            state.sizes.at[keep].add(state.sizes[gone]),
            state.alive,
            state.labels,
        )
        merged_state = _kill(merged_state, gone, jnp.where(state.labels == gone, keep, state.labels).astype(jnp.int32))
        removed = _kill(state, drop, jnp.where(state.labels == drop, -1, state.labels).astype(jnp.int32))
        state = jax.tree.map(lambda a, b: jnp.where(do_merge, a, b), merged_state, removed)
        total = total + jnp.where(do_merge, costs.merge[i, j], costs.removal[drop])
        return state, merged.at[t].set(do_merge), cumulative.at[t].set(relative(total, problem)), total

    dtype = state.features.dtype
    init = (state, jnp.zeros(n - 1, bool), jnp.zeros(n - 1, dtype), jnp.zeros((), dtype))
    _, merged, cumulative, _ = jax.lax.fori_loop(0, n - 1, step, init)
    return merged, cumulative


def timed_path(fn, *args):
    """`(output, compile seconds, run seconds)`; the compile (tracing) is recorded by the profiler, the run is not."""
    start_ = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - start_
    with provenance.paused():
        start_ = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        run_s = time.perf_counter() - start_
    return out, compile_s, run_s


@eqx.filter_jit
def half_way(state, problem, k: int, pool: int | None):
    greedy = start(state, problem, True, k, pool=pool)
    return jax.lax.fori_loop(0, state.alive.shape[0] // 2, lambda t, g: advance(g, problem, pool)[0], greedy)


def drift(state, problem, k: int, pool: int | None) -> dict:
    """After n/2 steps: the maintained fit and candidate costs against the same from scratch."""
    greedy = half_way(state, problem, k, pool)
    fresh = current_fit(greedy.layer, problem)
    rows, cols = greedy.candidates.pairs()
    kept = np.asarray(candidate_costs(greedy)).ravel()
    recomputed = np.asarray(pair_costs(moments(greedy.layer, problem, fresh, rows, cols), fresh, greedy.layer.alive,
                                       rows, cols))  # fmt: skip
    finite = np.isfinite(recomputed) & (recomputed > 0)

    def rel(a, b):
        return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))

    return {
        "steps": int(state.alive.shape[0] // 2),
        "inverse_gram_rel_fro": rel(greedy.fit.inverse, fresh.inverse),
        "refit_rel_fro": rel(greedy.fit.weights, fresh.weights),
        "candidate_costs_max_rel": float(np.max(np.abs(kept[finite] - recomputed[finite]) / recomputed[finite])),
        "candidate_pairs_checked": int(finite.sum()),
    }


def speed(widths) -> list[dict]:
    rows = []
    for n in widths:
        state, problem = layer(n)
        k = min(DEFAULT_K, n - 1)
        pool = pool_size(n, k, DEFAULT_NEAREST)
        row = {"n": n, "N": N_SAMPLES, "m": n, "k": DEFAULT_K, "nearest": DEFAULT_NEAREST, "pool": pool}
        row["load_before"] = list(os.getloadavg())
        path, row["compile_s"], row["run_s"] = timed_path(_greedy_path, state, problem, True, 256, k, pool)
        row["merges"] = int(np.sum(np.asarray(path.merged)))
        if pool is not None:  # the same path with every slot priced, the default before `nearest`
            every, row["every_slot_compile_s"], row["every_slot_run_s"] = timed_path(
                _greedy_path, state, problem, True, 256, k, None
            )
            row["every_slot_over_nearest_run"] = row["every_slot_run_s"] / row["run_s"]
            row["final_cumulative_nearest_over_every_slot"] = float(path.cumulative[-2] / every.cumulative[-2])
        if n <= EXACT_MAX_WIDTH:
            exact, row["exact_compile_s"], row["exact_run_s"] = timed_path(
                _greedy_path, state, problem, True, 256, n - 1, None
            )
            row["exact_over_k_run"] = row["exact_run_s"] / row["run_s"]
            same = np.asarray(exact.merged) == np.asarray(path.merged)
            row["steps_identical_to_exact"] = int(np.argmin(same)) if not same.all() else n - 1
            row["final_cumulative_k_over_exact"] = float(path.cumulative[-2] / exact.cumulative[-2])
        if n <= OLD_MAX_WIDTH:
            (merged, cumulative), row["old_compile_s"], row["old_run_s"] = timed_path(old_path, state, problem)
            row["old_over_k_run"] = row["old_run_s"] / row["run_s"]
            if n <= EXACT_MAX_WIDTH:
                row["exact_equals_old_merged"] = bool(np.array_equal(np.asarray(merged), np.asarray(exact.merged)))
                row["exact_vs_old_cumulative_max_rel"] = float(
                    np.max(np.abs(np.asarray(exact.cumulative) - np.asarray(cumulative)) / np.asarray(cumulative))
                )
        row["drift"] = drift(state, problem, k, pool)
        row["load_after"] = list(os.getloadavg())
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def quality(seeds: int, steps: int, ks) -> list[dict]:
    from ablation_lumping import DATASETS, FRACTIONS, eps_for_target, problem, uniform_sparsity

    from jaxlump import cost
    from jaxlump._methods.select import compress_along, layer_paths, steps_to_sparsity, steps_within
    from jaxlump._model import to_chain
    from jaxlump._training.train import mse

    rows = []
    for name in DATASETS:
        for seed in range(seeds):
            model, data, x = problem(name, seed, steps)
            chain = to_chain(model)
            widths, dense = chain.widths, int(cost(model).dense_params)
            for k in [None, *ks]:
                t0 = time.perf_counter()
                paths = layer_paths(chain, x, merge=True, damping=1e-3, candidates=k)
                path_s = time.perf_counter() - t0
                for fraction in FRACTIONS:
                    target = int(fraction * dense)
                    s = uniform_sparsity(widths, target)
                    eps = eps_for_target(paths, widths, target)
                    for mode, cut in (("uniform", [steps_to_sparsity(p, s) for p in paths]),
                                      ("one_eps", [steps_within(p, eps) for p in paths])):  # fmt: skip
                        small, info = compress_along(model, x, paths, cut, "merge_or_remove", eps, 1e-3)
                        rows.append(dict(
                            dataset=name, seed=seed, candidates=k, fraction=fraction, mode=mode,
                            widths=[int(w) for w in info.widths_after], merges=[int(np.sum(p.merged[:c]))
                            for p, c in zip(paths, cut)], test_mse=float(mse(small, data.x_test, data.y_test)),
                            path_seconds=path_s,
                        ))  # fmt: skip
                        print(json.dumps(rows[-1]), flush=True)
    return rows


def summary(rows) -> list[dict]:
    """Per k: the pairs (data set, seed, size, mode) against all pairs, the median ratio and how often equal."""

    def key(r):
        return r["dataset"], r["seed"], r["fraction"], r["mode"]

    exact = {key(r): r["test_mse"] for r in rows if r["candidates"] is None}
    out = []
    for k in sorted({r["candidates"] for r in rows if r["candidates"] is not None}):
        for mode in ("uniform", "one_eps", "both"):
            ratios = [r["test_mse"] / exact[key(r)] for r in rows
                      if r["candidates"] == k and mode in (r["mode"], "both")]  # fmt: skip
            ratios = np.asarray(ratios)
            out.append(dict(candidates=k, mode=mode, pairs=len(ratios), median_ratio=float(np.median(ratios)),
                            min_ratio=float(ratios.min()), max_ratio=float(ratios.max()),
                            identical=int(np.sum(ratios == 1.0)), lower=int(np.sum(ratios < 1.0))))  # fmt: skip
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["speed", "quality"], required=True)
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--ks", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--overwrite", action="store_true", help="replace an existing section")
    args = parser.parse_args()
    results = json.loads(RESULT.read_text()) if RESULT.exists() else {}
    if args.part in results and not args.overwrite:
        raise SystemExit(f"{RESULT} already has a '{args.part}' section; pass --overwrite to replace it.")
    start_ = time.time()
    if args.part == "speed":
        section = dict(machine=machine(), rows=speed(args.widths))
    else:
        rows = quality(args.seeds, args.steps, args.ks)
        section = dict(machine=machine(), seeds=args.seeds, steps=args.steps, rows=rows, summary=summary(rows))
    section["wall_seconds"] = time.time() - start_
    results = json.loads(RESULT.read_text()) if RESULT.exists() else {}  # the other part may have finished since
    section["provenance"] = provenance.stamp()
    results[args.part] = section
    # The file's provenance covers both parts: a part computed by other (or unrecorded) code keeps it stale.
    others = [s.get("provenance") for part, s in results.items() if part not in (args.part, "provenance")]
    results["provenance"] = provenance.stamp(provenance.combined(others) if others else None)
    RESULT.parent.mkdir(exist_ok=True)
    RESULT.write_text(json.dumps(results, indent=1))
    print(json.dumps(section.get("summary", section["rows"]), indent=1))


if __name__ == "__main__":
    with provenance.recording():
        main()
