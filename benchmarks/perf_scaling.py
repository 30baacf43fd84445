"""Time and peak memory against width, depth, calibration size and grid length, with the `n² d` cost model
(issue 14, point 5), plus compile time per new shape, a no-recompile check and the 4096-wide targets.

Network `16 → n → … → n → 4` tanh (`eqx.nn.MLP`, float32), ε = 0.5, structural discrepancy, representative
refinement. Each point compiles the fixed-shape core (`lump_chain`) once with `jax.jit(...).lower(...).compile()`
— its wall time is the compile time — and reads XLA's memory analysis of the compiled program (arguments +
outputs + temporaries: the peak XLA plans for, not a process RSS). The cost model `Σ_l n_l² (n_{l-1} + 1)` (the
pairwise work of every hidden layer) is drawn scaled to the largest measurement.
Targets: a 4096-wide hidden layer partitioned (refit off) in ≤ 5 s and lumped with refit in ≤ 15 s (2 CPU cores).
Run: `nice -n 10 python benchmarks/perf_scaling.py [--quick] [--overwrite]`.
"""

import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import provenance  # noqa: E402 — the sibling module
from perf_common import arguments, block, figure_path, timed, write  # noqa: E402

import jaxlump  # noqa: E402
from jaxlump._criteria.discrepancy import Structural  # noqa: E402
from jaxlump._criteria.refinement import Representative  # noqa: E402
from jaxlump._methods.lump import lump_chain_unjitted, partition  # noqa: E402
from jaxlump._model import to_chain  # noqa: E402
from jaxlump._sweep import _sweep_core  # noqa: E402

EPS = 0.5


def network(width, depth, key=0):
    return eqx.nn.MLP(16, 4, width, depth, activation=jnp.tanh, dtype=jnp.float32, key=jr.key(key))


def cost_model(widths) -> float:
    return float(sum(n * n * (m + 1) for m, n in zip(widths[:-2], widths[1:-1])))


def measure(width, depth, batch, repeats, *, refit=True, with_data=True):
    """Compile time, run time and XLA's memory analysis of the core at one shape."""
    chain = to_chain(network(width, depth))
    x = jr.normal(jr.key(1), (batch, 16), jnp.float32) if with_data else None
    ridge = jnp.asarray(1e-3, jnp.float32)

    def core(chain, x, eps):
        return lump_chain_unjitted(chain, x, eps, Structural(), Representative(), refit, ridge, False)

    eps = jnp.asarray(EPS, jnp.float32)
    start = time.perf_counter()
    compiled = jax.jit(core).lower(chain, x, eps).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    peak = None
    if memory is not None:
        peak = int(memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes)
    run = timed(compiled, chain, x, eps, repeats=repeats)
    return {
        "width": width,
        "depth": depth,
        "batch": batch,
        "refit": refit,
        "widths": list(chain.widths),
        "cost_model": cost_model(chain.widths),
        "compile_s": compile_s,
        "run": run,
        "peak_bytes": peak,
    }


def targets(repeats):
    """The issue's 4096-wide targets: partition only (refit off), and the whole lump with and without refit."""
    out = []
    for depth in (2, 1):
        model = network(4096, depth)
        chain = to_chain(model)
        x = jr.normal(jr.key(1), (512, 16), jnp.float32)
        run = timed(partition, chain, None, jnp.asarray(EPS, jnp.float32), Structural(), Representative(), repeats=1)
        out.append({"what": "partition (refit off, no certificate)", "depth": depth, "run": run})
        print(out[-1])
        for refit in (False, True) if depth == 1 else ():
            masked = eqx.filter_jit(
                lambda m, x, e, refit=refit: jaxlump.lump_masked(m, x, e, reconstruct=refit, throw=False)
            )
            run = timed(masked, model, x, jnp.asarray(EPS, jnp.float32), repeats=1)
            out.append({"what": f"lump_masked (refit={refit}, with certificate)", "depth": depth, "run": run})
            print(out[-1])
    return out


def no_recompile():
    model = network(64, 2)
    x = jr.normal(jr.key(1), (256, 16), jnp.float32)
    jaxlump.sweep(model, x, np.linspace(0, 1, 8))
    before = eqx.debug.get_num_traces(_sweep_core)
    start = time.perf_counter()
    block(jaxlump.sweep(model, x, np.linspace(0.1, 2, 8)).infos)
    return {"new_traces_for_a_second_grid_of_length_8": eqx.debug.get_num_traces(_sweep_core) - before,
            "second_call_s": time.perf_counter() - start}  # fmt: skip


def grid_lengths(lengths, repeats):
    model = network(256, 2)
    x = jr.normal(jr.key(1), (512, 16), jnp.float32)
    rows = []
    for n in lengths:
        grid = np.linspace(0, 1.5, n)
        run = timed(lambda g: jaxlump.sweep(model, x, g).infos, grid, repeats=repeats)
        rows.append({"grid": n, "run": run, "compile_s": run["first_s"] - run["best_s"]})
        print(rows[-1])
    return rows


def main():
    args = arguments(__doc__.splitlines()[0], targets=True)
    quick, r = args.quick, args.repeats
    if args.targets_only:
        payload = {"network": "16-4096-...-4 tanh float32", "eps": EPS, "targets_4096": targets(r)}
        write("scaling_targets", args, payload)
        return
    width_series = [64, 128, 256] if quick else [64, 128, 256, 512, 1024, 2048]  # 2048 with refit: ~70 s here
    payload = {"network": "16-n-...-n-4 tanh float32", "eps": EPS}
    payload["width"] = [measure(n, 2, 512, r if n <= 1024 else 1) for n in width_series]
    print(payload["width"])
    payload["depth"] = [measure(256, d, 512, r) for d in ([1, 2, 4] if quick else [1, 2, 4, 8])]
    payload["calibration"] = [measure(256, 2, b, r) for b in ([128, 512] if quick else [128, 512, 2048, 8192])]
    payload["grid"] = grid_lengths([1, 8] if quick else [1, 8, 64, 256], r)
    payload["no_recompile"] = no_recompile()
    payload["targets_4096"] = [] if quick else targets(r)  # width 4096 costs minutes per point: only here
    print(payload["no_recompile"], payload["targets_4096"])
    path = write("scaling", args, payload)
    plot(payload, figure_path(path))


def plot(payload, path):
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    series = (("width", "width n (depth 2)"), ("depth", "depth (width 256)"), ("calibration", "calibration rows"))
    for ax, (key, label) in zip(axes, series):
        rows = payload[key]
        xs = [r["width"] if key == "width" else r["depth"] if key == "depth" else r["batch"] for r in rows]
        times = [r["run"]["best_s"] for r in rows]
        ax.plot(xs, times, "o-", label="time (s)")
        model = np.asarray([r["cost_model"] for r in rows])
        ax.plot(xs, model * times[-1] / model[-1], "k:", label="n² d model (scaled)")
        if all(r["peak_bytes"] for r in rows):
            twin = ax.twinx()
            twin.plot(xs, [r["peak_bytes"] / 2**20 for r in rows], "s--", color="tab:red", label="peak MiB")
            twin.set_ylabel("XLA peak memory (MiB)", color="tab:red")
            twin.set_yscale("log")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("run time (s)")
        ax.legend(fontsize=7, loc="upper left")
    grid = payload["grid"]
    axes[3].plot([g["grid"] for g in grid], [g["run"]["best_s"] for g in grid], "o-", label="sweep run")
    axes[3].plot([g["grid"] for g in grid], [g["compile_s"] for g in grid], "s--", label="compile")
    axes[3].set_xscale("log")
    axes[3].set_yscale("log")
    axes[3].set_xlabel("grid length (width 256)")
    axes[3].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    with provenance.recording():
        main()
