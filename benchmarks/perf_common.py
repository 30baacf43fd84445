"""Shared helpers of the perf_* benchmarks: timing, machine description, result files that never overwrite.

Every script takes `--quick` (small sizes, `results/perf_<name>_quick.json`) and `--overwrite`; without the latter an
existing result file is kept and the new one gets a time-stamped name. Plots are drawn from the JSON only.
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import time

import jax
import numpy as np
import provenance

RESULTS = pathlib.Path(__file__).parent / "results"


def arguments(description: str, *, lengths: bool = False, targets: bool = False) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    if targets:
        parser.add_argument("--targets-only", action="store_true", help="only the 4096-wide targets")
    if lengths:
        parser.add_argument("--lengths", type=int, nargs="+", help="grid lengths to measure (default: all)")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run); writes *_quick.json")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing result file")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions per point (the minimum is kept)")
    return parser.parse_args()


def block(tree):
    return jax.block_until_ready(tree)


def timed(fn, *args, repeats: int = 3) -> dict:
    """First call (compile + run) and the best and median of `repeats` further calls, in seconds, timed with the
    profiler paused; while `provenance` records, one more untimed call after emptying JAX's caches records the code
    (tracing included)."""
    with provenance.paused():
        start = time.perf_counter()
        block(fn(*args))
        first = time.perf_counter() - start
        times = []
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            block(fn(*args))
            times.append(time.perf_counter() - start)
    if provenance.is_recording():
        jax.clear_caches()
        block(fn(*args))
    return {"first_s": first, "best_s": float(np.min(times)), "median_s": float(np.median(times))}


def machine() -> dict:
    """What the numbers were measured on (the load average says how shared the machine was)."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_1_5_15": list(os.getloadavg()),
        "jax": jax.__version__,
        "devices": [str(d) for d in jax.devices()],
        "x64": bool(jax.config.jax_enable_x64),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def latency_us(model, batch: int, **options) -> float:
    """`jaxlump.measure_latency` in µs, timed with the profiler paused (one untimed pass first records its code)."""
    import jaxlump

    jaxlump.measure_latency(model, batch, repeats=1, warmup=0)
    with provenance.paused():
        return 1e6 * jaxlump.measure_latency(model, batch, **options)


def fresh_path(directory: pathlib.Path, name: str, overwrite: bool) -> pathlib.Path:
    """`directory/name`, or a time-stamped sibling (`stem.<UTC time>.suffix`) when it exists and `overwrite` is off."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    if path.exists() and not overwrite:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
        path = directory / f"{path.stem}.{stamp}{path.suffix}"
    return path


def output_path(name: str, quick: bool, overwrite: bool, suffix: str = ".json") -> pathlib.Path:
    """`results/perf_<name>[_quick]<suffix>`, or a time-stamped sibling when it exists and `overwrite` is off."""
    return fresh_path(RESULTS, f"perf_{name}{'_quick' if quick else ''}{suffix}", overwrite)


def write(name: str, args: argparse.Namespace, payload: dict) -> pathlib.Path:
    payload = {"machine": machine(), "quick": bool(args.quick), **payload, "provenance": provenance.stamp()}
    path = output_path(name, args.quick, args.overwrite)
    path.write_text(json.dumps(payload, indent=1))
    print(f"wrote {path}")
    return path


def figure_path(json_path: pathlib.Path) -> pathlib.Path:
    return json_path.with_suffix(".png")


def save_log_log(fig, ax, path: pathlib.Path, xlabel: str, ylabel: str, *, xbase: int = 10) -> None:
    """Finish a log-log plot (labels, a small legend) and save it at 120 dpi."""
    ax.set_xscale("log", base=xbase)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")
