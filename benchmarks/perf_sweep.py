"""A sweep of 1, 8, 64, 256 ε against one ε and against a Python loop of single jitted calls (issue 14, point 5).

Network: 8 → 256 → 256 → 4 tanh (`eqx.nn.MLP`, float32), 512 calibration rows, structural discrepancy,
representative refinement, refit on and off; the grid is `linspace(0, 1.5, G)`. "one ε" is a jitted
`lump_masked` at ε = 0.5; "loop" calls it once per ε of the grid; "sweep" is `jaxlump.sweep` (compiled once per
grid length; the first call's time, compile included, is recorded separately). Targets: a 64-ε sweep ≤ 0.5× the
loop on CPU; on a GPU ≤ 3× one ε.
Run: `nice -n 10 python benchmarks/perf_sweep.py [--quick] [--overwrite]`.
"""

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import provenance  # noqa: E402 — the sibling module
from perf_common import arguments, figure_path, save_log_log, timed, write  # noqa: E402

import jaxlump  # noqa: E402


def main():
    args = arguments(__doc__.splitlines()[0], lengths=True)
    width = 64 if args.quick else 256
    lengths = args.lengths or ([1, 8, 64] if args.quick else [1, 8, 64, 256])
    mlp = eqx.nn.MLP(8, 4, width, 2, activation=jnp.tanh, key=jr.key(0))
    x = jr.normal(jr.key(1), (512, 8))
    rows = []
    for refit in (False, True):
        single = eqx.filter_jit(lambda m, e, refit=refit: jaxlump.lump_masked(m, x, e, reconstruct=refit, throw=False))
        one = timed(single, mlp, jnp.asarray(0.5, jnp.float32), repeats=args.repeats)
        for n in lengths:
            grid = np.linspace(0.0, 1.5, n).astype(np.float32)
            eps = [jnp.asarray(e) for e in grid]
            loop = timed(lambda f, es: [f(mlp, e) for e in es], single, eps, repeats=1 if n >= 64 else args.repeats)
            swept = timed(lambda g, r: jaxlump.sweep(mlp, x, g, reconstruct=r).infos, grid, refit, repeats=args.repeats)
            row = {
                "refit": refit,
                "grid": n,
                "one_eps": one,
                "loop": loop,
                "sweep": swept,
                "sweep_over_loop": swept["best_s"] / loop["best_s"],
                "sweep_over_one_eps": swept["best_s"] / one["best_s"],
            }
            print({k: v for k, v in row.items() if not isinstance(v, dict)})
            rows.append(row)
    path = write("sweep", args, {"network": f"8-{width}-{width}-4 tanh float32", "calibration_rows": 512, "rows": rows})
    plot(rows, figure_path(path))


def plot(rows, path):
    fig, ax = plt.subplots(figsize=(6, 4))
    for refit, style in ((True, "-"), (False, "--")):
        part = [r for r in rows if r["refit"] == refit]
        grids = [r["grid"] for r in part]
        ax.plot(grids, [r["sweep"]["best_s"] for r in part], "o" + style, label=f"sweep (refit={refit})")
        ax.plot(grids, [r["loop"]["best_s"] for r in part], "s" + style, label=f"loop of single calls (refit={refit})")
        ax.axhline(part[0]["one_eps"]["best_s"], ls=style, color="grey", lw=0.8)
    save_log_log(fig, ax, path, "grid length (ε values)", "wall time (s), grey: one ε")


if __name__ == "__main__":
    with provenance.recording():
        main()
