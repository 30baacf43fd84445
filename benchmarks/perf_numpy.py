"""jaxlump against the same pipeline written the obvious way in NumPy (issue 14, point 5; target ≥ 100× at 1024).

The pipeline: structural discrepancy, representative refinement, forward quotient, no refit, over a grid of ε.
NumPy: one ε at a time, each hidden layer's aggregated coefficients, the L1 distance by a loop over pairs
(`np.abs(f[i] − f[j]).sum()` for i < j), the greedy refinement in Python, the quotient. jaxlump: one
`jaxlump.sweep(model, None, grid, reconstruct=False)` (compile time recorded separately). Both in float64; the
partitions must be identical. Network: 16 → n → n → 4 tanh with Gaussian weights.
Run: `nice -n 10 python benchmarks/perf_numpy.py [--quick] [--overwrite]`.
"""

import time

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import provenance  # noqa: E402 — the sibling module
from perf_common import arguments, figure_path, save_log_log, timed, write  # noqa: E402

import jaxlump  # noqa: E402


def numpy_pipeline(weights, biases, eps):
    """Labels per hidden layer and the reduced weights, the obvious way."""
    labels, previous = [], np.arange(weights[0].shape[1])
    for l in range(len(weights) - 1):
        w, b = weights[l], biases[l]
        blocks = np.unique(previous)
        features = np.stack([w[:, previous == block].sum(axis=1) for block in blocks] + [b], axis=1)
        n = w.shape[0]
        distances = np.zeros((n, n))
        for i in range(n):
            for j in range(i + 1, n):
                distances[i, j] = distances[j, i] = np.abs(features[i] - features[j]).sum()
        magnitudes = np.abs(w).sum(axis=1) + np.abs(b)
        floor = 64 * np.finfo(float).eps * (magnitudes[:, None] + magnitudes[None, :])
        relative = np.where(distances <= floor, 0.0, distances / magnitudes.mean())
        importance = np.abs(weights[l + 1]).sum(axis=0)
        representatives, current = [], np.arange(n)
        for i in np.argsort(-importance, kind="stable"):
            home = next((r for r in representatives if relative[i, r] <= eps), None)
            if home is None:
                representatives.append(i)
            else:
                current[i] = home
        labels.append(current)
        previous = current
    all_labels = [np.arange(weights[0].shape[1]), *labels, np.arange(weights[-1].shape[0])]
    members = [[layer == r for r in np.unique(layer)] for layer in all_labels]
    reduced = [
        np.array([[w[h][:, s].sum(1).mean() for s in members[l]] for h in members[l + 1]])
        for l, w in enumerate(weights)
    ]
    return labels, reduced


def main():
    args = arguments(__doc__.splitlines()[0])
    widths = [64, 128] if args.quick else [128, 256, 512, 1024]
    grid = np.array([0.2, 0.6] if args.quick else [0.1, 0.3, 0.6, 1.0])
    rows = []
    for n in widths:
        mlp = eqx.nn.MLP(16, 4, n, 2, activation=jnp.tanh, dtype=jnp.float64, key=jr.key(n))
        weights = [np.asarray(layer.weight) for layer in mlp.layers]
        biases = [np.asarray(layer.bias) for layer in mlp.layers]
        start = time.perf_counter()
        reference = [numpy_pipeline(weights, biases, e) for e in grid]
        numpy_s = time.perf_counter() - start
        jax_time = timed(
            lambda m, g: jaxlump.sweep(m, None, g, reconstruct=False).infos, mlp, grid, repeats=args.repeats
        )
        result = jaxlump.sweep(mlp, None, grid, reconstruct=False)
        identical = all(
            np.array_equal(np.asarray(result.infos.partitions[l][i]), reference[i][0][l])
            for i in range(len(grid))
            for l in range(2)
        )
        row = {
            "width": n,
            "grid": grid.tolist(),
            "numpy_s": numpy_s,
            "jaxlump": jax_time,
            "speedup": numpy_s / jax_time["best_s"],
            "speedup_with_compile": numpy_s / jax_time["first_s"],
            "identical_partitions": identical,
            "hidden_widths_after": np.asarray(result.widths[:, 1:-1]).tolist(),
        }
        print({k: v for k, v in row.items() if k not in ("jaxlump", "hidden_widths_after")})
        rows.append(row)
    path = write("numpy", args, {"network": "16-n-n-4 tanh float64", "rows": rows})
    plot(rows, figure_path(path))


def plot(rows, path):
    fig, ax = plt.subplots(figsize=(5, 3.5))
    widths = [r["width"] for r in rows]
    ax.plot(widths, [r["speedup"] for r in rows], "o-", label="compiled (compile excluded)")
    ax.plot(widths, [r["speedup_with_compile"] for r in rows], "s--", label="first call (compile included)")
    ax.axhline(100, color="grey", lw=0.8, ls=":")
    save_log_log(fig, ax, path, "hidden width n", "NumPy time / jaxlump time", xbase=2)


if __name__ == "__main__":
    with provenance.recording():
        main()
