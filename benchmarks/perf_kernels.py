"""Kernel throughput as a ratio to a same-run `jnp.dot` of the same shapes (issue 14, point 5).

For `F` of shape `(n, d)` with `d = n + 1` (a square layer's structural coefficients, one column per previous
neuron plus the bias), float32:

- `gemm`: `F @ Fᵀ`, the reference (`2 n² d` FLOPs);
- `l1_all`: the structural L1 kernel with every pair exact (`threshold = ∞`);
- `l1_pruned`: the same with the threshold a sweep uses, `eps_max · scale` for `eps_max = 0.1` (the GEMM-form
  L2 lower bound excludes most pairs; on random features none survives, the common case at small ε);
- `rms`: the dynamical RMS kernel on `(S = d, n)` samples, GEMM form with direct recompute of suspect pairs.

Ratios are `time / time(gemm)` measured in one run; FLOP/s counts `2 n² d` for every kernel.
Run: `nice -n 10 python benchmarks/perf_kernels.py [--quick] [--overwrite]`.
"""

import jax
import jax.numpy as jnp
import jax.random as jr
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import provenance  # noqa: E402 — the sibling module
from perf_common import arguments, figure_path, timed, write  # noqa: E402

from jaxlump._criteria.discrepancy import pairwise_l1, pairwise_rms  # noqa: E402


def main():
    args = arguments(__doc__.splitlines()[0])
    sizes = [64, 256, 1024] if args.quick else [64, 256, 1024, 2048, 4096, 8192]
    gemm = jax.jit(lambda f: jnp.matmul(f, f.T, precision=jax.lax.Precision.HIGHEST))
    l1_all = jax.jit(lambda f: pairwise_l1(f))
    l1_pruned = jax.jit(lambda f, threshold: pairwise_l1(f, threshold))
    rms = jax.jit(lambda s: pairwise_rms(s))
    rows = []
    for n in sizes:
        d = n + 1
        features = jr.normal(jr.key(n), (n, d), jnp.float32)
        scale = jnp.mean(jnp.sum(jnp.abs(features), axis=1))
        repeats = args.repeats if n <= 2048 else 1
        row = {"n": n, "d": d, "flops": 2.0 * n * n * d}
        row["gemm"] = timed(gemm, features, repeats=repeats)
        row["l1_pruned"] = timed(l1_pruned, features, 0.1 * scale, repeats=repeats)
        row["rms"] = timed(rms, features.T, repeats=repeats)
        if n <= (1024 if args.quick else 4096):
            row["l1_all"] = timed(l1_all, features, repeats=repeats)
        for kernel in ("l1_all", "l1_pruned", "rms"):
            if kernel in row:
                row[kernel]["ratio_to_gemm"] = row[kernel]["best_s"] / row["gemm"]["best_s"]
                row[kernel]["gflops"] = row["flops"] / row[kernel]["best_s"] / 1e9
        row["gemm"]["gflops"] = row["flops"] / row["gemm"]["best_s"] / 1e9
        print({k: (v["best_s"], v.get("ratio_to_gemm")) if isinstance(v, dict) else v for k, v in row.items()})
        rows.append(row)
    path = write("kernels", args, {"dtype": "float32", "rows": rows})
    plot(rows, figure_path(path))


def plot(rows, path):
    fig, ax = plt.subplots(figsize=(6, 4))
    kernels = (("l1_all", "L1, all pairs exact"), ("l1_pruned", "L1, pruned at ε_max = 0.1"), ("rms", "RMS"))
    for kernel, label in kernels:
        points = [(r["n"], r[kernel]["ratio_to_gemm"]) for r in rows if kernel in r]
        ax.plot(*zip(*points), "o-", label=label)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("neurons n (features d = n + 1)")
    ax.set_ylabel("time / time of the same-shape GEMM")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    with provenance.recording():
        main()
