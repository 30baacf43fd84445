"""Issue 15: compression inside jitted training loops (`jaxlump.wrap_optax`).

1. Overhead: time of a wrapped Adam step against a plain one (glycolytic data, 7→w→w→7 tanh, float32), for lumping
   every 1, 10, 100 steps (refit off, the default; and every 100 with refit), and with the masks only (no round);
   all configurations timed round-robin in one run.
2. Accuracy at the same final size, 3 seeds, on the glycolytic default (7→64→64→7) and UCI abalone (10→64→64→1):
   - during: `wrap_optax` with a `TargetSize` schedule shrinking linearly to the final fraction over the first
     T − F steps (a round every `every` steps), then F more steps (the wrapper keeps the dead neurons dead);
     `during_refit`: the same with the least-squares refit in every round;
   - after: dense training (cosine schedule over T), its checkpoint at T − F lumped (`lump_masked`, refit on) at
     the largest size within the during-run's, then `jaxlump.finetune` for F steps (the same T steps in total);
     also the dense model at T steps lumped, no fine-tune;
   - scratch: the network with the during-run's final widths trained from a random initialisation for T steps.

Writes benchmarks/results/perf_training.json (raw) and perf_training.png (derived from the JSON).
Run: nice -n 10 python3 benchmarks/perf_training.py [--quick] [--overwrite]
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import time

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import provenance  # noqa: E402 — the sibling module

import jaxlump  # noqa: E402
from jaxlump._training.train import mse  # noqa: E402
from jaxlump._training.training_loop import DEFAULT_GRID  # noqa: E402
from jaxlump.datasets import abalone, glycolytic  # noqa: E402

RESULTS = pathlib.Path(__file__).parent / "results"


def _data(name: str, seed: int, dtype):
    data = glycolytic(key=seed) if name == "glycolytic" else abalone(key=seed)
    cast = lambda a: jnp.asarray(a, dtype)  # noqa: E731
    return cast(data.x_train), cast(data.y_train), cast(data.x_test), cast(data.y_test), data


def _trainer(tx, static, x, y, batch: int):
    """A jitted `length`-step Adam loop (a `lax.scan`), random mini-batches drawn with replacement."""

    @eqx.filter_jit
    def run(params, state, key, length):
        def step(carry, k):
            p, s = carry
            idx = jr.randint(k, (batch,), 0, x.shape[0])
            grads = jax.grad(lambda q: mse(eqx.combine(q, static), x[idx], y[idx]))(p)
            updates, s = tx.update(grads, s, p)
            return (eqx.apply_updates(p, updates), s), None

        (params, state), _ = jax.lax.scan(step, (params, state), jr.split(key, length))
        return params, state

    return lambda params, state, key, length: run(params, state, key, int(length))


def overhead(width: int, steps: int, repeats: int, batch: int, n_calib: int, eps: float) -> dict:
    x, y, _, _, data = _data("glycolytic", 0, jnp.float32)
    model = eqx.nn.MLP(7, 7, width, 2, activation=jnp.tanh, dtype=jnp.float32, key=jr.key(0))
    x_calib = jnp.asarray(data.calibration(n_calib, jr.key(1)), jnp.float32)
    params, static = eqx.partition(model, eqx.is_array)
    inner = optax.adam(1e-3)
    configs = {
        "plain": inner,
        "masks only (no round)": jaxlump.wrap_optax(inner, model, x_calib, eps, every=1, until=0),
    }
    for every in (1, 10, 100):
        configs[f"every {every}"] = jaxlump.wrap_optax(inner, model, x_calib, eps, every=every)
    configs["every 100, refit on"] = jaxlump.wrap_optax(inner, model, x_calib, eps, every=100, reconstruct=True)
    runs, times, cpu, compile_s = {}, {name: [] for name in configs}, {name: [] for name in configs}, {}
    load_before = os.getloadavg()
    for name, tx in configs.items():
        run, state = _trainer(tx, static, x, y, batch), tx.init(params)
        start = time.perf_counter()
        jax.block_until_ready(run(params, state, jr.key(2), steps))
        compile_s[name] = time.perf_counter() - start
        runs[name] = (run, state)
    with provenance.paused():  # the compiles above recorded the code that the timed runs execute
        for r in range(repeats):  # round-robin: every configuration sees the same machine load
            for name, (run, state) in runs.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                jax.block_until_ready(run(params, state, jr.key(3 + r), steps))
                times[name].append((time.perf_counter() - start) / steps)
                cpu[name].append((time.process_time() - start_cpu) / steps)
    # Under load from other jobs the minimum over repeats is the least-disturbed time; the median is kept beside it.
    # The process's CPU time per step (all its threads) is kept too: it counts less of the other jobs' load.
    plain = {stat: fn(times["plain"]) for stat, fn in (("min", min), ("median", statistics.median))}
    plain_cpu = statistics.median(cpu["plain"])
    rows = []
    for name, t in times.items():
        rows.append({"config": name, "step_s_min": min(t), "step_s_median": statistics.median(t), "step_s_all": t,
                     "cpu_s_median": statistics.median(cpu[name]), "cpu_s_all": cpu[name],
                     "first_call_s": compile_s[name], "ratio_to_plain": min(t) / plain["min"],
                     "ratio_to_plain_median": statistics.median(t) / plain["median"],
                     "ratio_to_plain_cpu_median": statistics.median(cpu[name]) / plain_cpu})  # fmt: skip
    masks, every_1 = min(times["masks only (no round)"]), min(times["every 1"])
    return {
        "width": width,
        "steps_per_timing": steps,
        "repeats": repeats,
        "batch": batch,
        "n_calib": n_calib,
        "eps": eps,
        "statistic": "ratio_to_plain: min over repeats / plain's min (median ratios and process CPU-time ratios "
        "beside)",
        "load_average_1_5_15_min": {"before": list(load_before), "after": list(os.getloadavg())},
        "rows": rows,
        "round_cost_in_plain_steps": (every_1 - masks) / plain["min"],
    }


def _lump_to(model, x_calib, size: int):
    """`lump_masked` (refit on) at the ε of the largest result with at most `size` dense parameters: the grid,
    then a bisection between its last ε above and first ε within the size (sizes from the partitions only)."""

    def size_at(eps):
        return int(jaxlump.lump_masked(model, x_calib, eps, reconstruct=False)[1].cost_after.dense_params)

    sizes = {eps: size_at(eps) for eps in DEFAULT_GRID}
    within = [eps for eps, s in sizes.items() if s <= size]
    if not within:
        raise RuntimeError(f"no ε on the grid reaches {size} parameters.")
    high = min(within)
    low = max((eps for eps in DEFAULT_GRID if eps < high), default=0.0)
    for _ in range(20):
        middle = (low + high) / 2
        sizes[middle] = size_at(middle)
        low, high = (low, middle) if sizes[middle] <= size else (middle, high)
    eps = max((e for e, s in sizes.items() if s <= size), key=lambda e: (sizes[e], -e))
    masked, info = jaxlump.lump_masked(model, x_calib, eps)
    return masked, info, int(info.cost_after.dense_params)


def accuracy(name: str, seed: int, steps: int, finetune_steps: int, every: int, fraction: float, width: int) -> dict:
    x, y, x_test, y_test, data = _data(name, seed, jnp.float64)
    x_calib = jnp.asarray(data.calibration(512, jr.key(seed + 100)), jnp.float64)
    init_key, train_key, ft_key, scratch_key = jr.split(jr.key(seed), 4)
    model = eqx.nn.MLP(x.shape[1], y.shape[1], width, 2, activation=jnp.tanh, dtype=jnp.float64, key=init_key)
    params, static = eqx.partition(model, eqx.is_array)
    lr, batch, shrink_steps = 3e-3, 256, steps - finetune_steps
    test = lambda m: float(mse(m, x_test, y_test))  # noqa: E731
    row = {"dataset": name, "seed": seed, "dense_params": int(jaxlump.cost(model).dense_params)}
    start = time.perf_counter()

    # Compress during training (rounds without and with the least-squares refit).
    target = jaxlump.TargetSize(fraction=optax.linear_schedule(1.0, fraction, shrink_steps))
    for method, refit in (("during", False), ("during_refit", True)):
        tx = jaxlump.wrap_optax(optax.adam(optax.cosine_decay_schedule(lr, steps)), model, x_calib, target,
                                every=every, until=shrink_steps, reconstruct=refit)  # fmt: skip
        trained, state = _trainer(tx, static, x, y, batch)(params, tx.init(params), train_key, steps)
        small, small_info = jaxlump.shrink(eqx.combine(trained, static), state)
        row[method] = {"test_mse": test(small), "size": int(small_info.cost_after.dense_params),
                       "widths": [int(w) for w in small_info.widths_after], "requested": int(state.requested),
                       "result": str(state.info.result)}  # fmt: skip
    size = row["during"]["size"]

    # Dense training for T steps (cosine over T); compress after it, or compress its checkpoint at T − F and
    # fine-tune for F steps (the same T steps in total).
    dense_tx = optax.adam(optax.cosine_decay_schedule(lr, steps))
    run = _trainer(dense_tx, static, x, y, batch)
    checkpoint, dense_state = run(params, dense_tx.init(params), train_key, shrink_steps)
    full, _ = run(checkpoint, dense_state, jr.fold_in(train_key, 1), finetune_steps)
    masked, info, realised = _lump_to(eqx.combine(checkpoint, static), x_calib, size)
    tuned, _ = jaxlump.finetune(masked, x, y, steps=finetune_steps, info=info, key=ft_key, batch_size=batch,
                                optimizer=optax.adam(optax.cosine_decay_schedule(lr / 3, finetune_steps)))  # fmt: skip
    row["after_finetune"] = {"test_mse": test(jaxlump.shrink(tuned, info)[0]), "size": realised,
                             "widths": [int(w) for w in info.widths_after]}  # fmt: skip
    row["dense"] = {"test_mse": test(eqx.combine(full, static)), "size": row["dense_params"]}
    masked, info, realised = _lump_to(eqx.combine(full, static), x_calib, size)
    row["after_no_finetune"] = {"test_mse": test(jaxlump.shrink(masked, info)[0]), "size": realised,
                                "widths": [int(w) for w in info.widths_after]}  # fmt: skip

    # The small network from scratch, at the during-run's widths.
    widths = row["during"]["widths"]
    keys = jr.split(scratch_key, len(widths) - 1)
    layers = []
    for l, k in enumerate(keys):
        layers.append(eqx.nn.Linear(widths[l], widths[l + 1], dtype=jnp.float64, key=k))
        if l < len(keys) - 1:
            layers.append(eqx.nn.Lambda(jnp.tanh))
    small = eqx.nn.Sequential(layers)
    scratch, _ = jaxlump.finetune(small, x, y, steps=steps, key=train_key, batch_size=batch,
                                  optimizer=optax.adam(optax.cosine_decay_schedule(lr, steps)))  # fmt: skip
    row["scratch"] = {"test_mse": test(scratch), "size": int(jaxlump.cost(scratch).dense_params), "widths": widths}
    row["seconds"] = time.perf_counter() - start
    print(f"{name} seed {seed}: " + ", ".join(f"{k} {row[k]['test_mse']:.3g} ({row[k]['size']})" for k in METHODS))
    return row


METHODS = ("dense", "during", "during_refit", "after_finetune", "after_no_finetune", "scratch")


def plot(result: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for block in result["overhead"]:
        rows = [r for r in block["rows"] if r["config"] != "plain"]
        left.bar([f"{r['config']}\nw={block['width']}" for r in rows], [r["ratio_to_plain"] for r in rows])
    left.axhline(1.1, color="k", ls="--", lw=1, label="target at every 100: 1.10")
    left.set_yscale("log")
    left.set_ylabel("wrapped step time / plain step time")
    left.tick_params(axis="x", labelrotation=60, labelsize=7)
    left.legend(fontsize=8)
    datasets = sorted({r["dataset"] for r in result["accuracy"]})
    for d, name in enumerate(datasets):
        rows = [r for r in result["accuracy"] if r["dataset"] == name]
        for m, method in enumerate(METHODS):
            values = [r[method]["test_mse"] for r in rows]
            xs = d * (len(METHODS) + 1) + m + np.linspace(-0.15, 0.15, len(values))
            right.scatter(xs, values, color=f"C{m}", label=method if d == 0 else None, s=18)
    right.set_xticks([d * (len(METHODS) + 1) + 2 for d in range(len(datasets))], datasets)
    right.set_yscale("log")
    right.set_ylabel("test MSE (standardised), one dot per seed")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 seed; writes perf_training_quick.*")
    parser.add_argument("--overwrite", action="store_true", help="replace committed results")
    parser.add_argument("--overhead-only", action="store_true", help="re-measure the overhead block of the JSON only")
    args = parser.parse_args()
    stem = "perf_training_quick" if args.quick else "perf_training"
    out = RESULTS / f"{stem}.json"
    if out.exists() and not args.overwrite:
        raise SystemExit(f"{out} exists; pass --overwrite to replace it.")
    if args.quick:
        widths, timing, seeds, steps, ft, every = (64,), (100, 2), (0,), 600, 200, 50
    else:
        widths, timing, seeds, steps, ft, every = (256,), (200, 40), (0, 1, 2), 4000, 1000, 100
    start = time.perf_counter()
    if args.overhead_only:
        result = json.loads(out.read_text())
        result["overhead"] = [overhead(w, *timing, batch=256, n_calib=512, eps=0.1) for w in widths]
        result["overhead_seconds"] = time.perf_counter() - start
        result["machine"]["overhead_measured_on"] = {
            "platform": platform.platform(), "cpus": os.cpu_count(), "jax": jax.__version__,
            "backend": jax.default_backend(), "note": "shared machine, other jobs running (see each block's load)",
        }  # fmt: skip
        result["provenance"] = provenance.stamp(result.get("provenance", provenance.UNRECORDED))
        out.write_text(json.dumps(result, indent=1))
        plot(result, RESULTS / f"{stem}.png")
        print(f"rewrote the overhead block of {out} ({result['overhead_seconds']:.0f} s)")
        return
    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "note": "shared machine, other jobs running; ratios are measured in one run, round-robin",
        },  # fmt: skip
        "settings": {
            "fraction": 0.3,
            "steps": steps,
            "finetune_steps": ft,
            "every": every,
            "width": 64,
            "optimizer": "adam, cosine decay from 3e-3 (fine-tune: from 1e-3)",
            "batch": 256,
            "eps_grid": list(DEFAULT_GRID),
        },  # fmt: skip
        "overhead": [overhead(w, *timing, batch=256, n_calib=512, eps=0.1) for w in widths],
    }
    for block in result["overhead"]:
        print(
            f"width {block['width']}: " + ", ".join(f"{r['config']} ×{r['ratio_to_plain']:.3f}" for r in block["rows"])
        )
    result["accuracy"] = [
        accuracy(name, seed, steps, ft, every, 0.3, 64) for name in ("glycolytic", "abalone") for seed in seeds
    ]
    result["total_seconds"] = time.perf_counter() - start
    RESULTS.mkdir(exist_ok=True)
    result["provenance"] = provenance.stamp()
    out.write_text(json.dumps(result, indent=1))
    plot(result, RESULTS / f"{stem}.png")
    print(f"wrote {out} ({result['total_seconds']:.0f} s)")


if __name__ == "__main__":
    with provenance.recording():
        main()
