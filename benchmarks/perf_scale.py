"""merge_or_remove at transformer widths (issue 29): time and peak memory of one site, and quality against
structured OBS, with a NumPy ZipLM (Gram-only, rank-one downdates) written here as the yardstick.

Parts (raw JSON in benchmarks/results/perf_scale.json, one section each; an existing section is kept unless
`--overwrite`):

- `acceptance`: an MLP with one 2048-wide tanh hidden layer trained on the protein data (CASP, 9 features), 8192
  calibration rows: `compress_to(model, "merge_or_remove", (w,), x)` (the default path: `Rounds()` at this width)
  against `compress_to(model, "obs_prune", (w,), x)` and the NumPy ZipLM + the same least-squares refit, at
  w = 1024 and 256; test MSE and wall time of each, in the same run.
- `small`: `Rounds()` against the exact greedy and structured OBS on the ablation networks (2×64 tanh; glycolytic,
  RLC network, abalone × 3 seeds) at uniform hidden widths 40 / 20 / 8: test MSE, the same reconstruction after each.
- `scaling`: one synthetic site, 64 inputs → n tanh units → m = n/4 outputs, N = 16384 calibration rows, compressed to
  n/2: wall time and peak resident memory of `compress_to(..., "merge_or_remove", ...)` (Gram statistics, path,
  reconstruction) and of the NumPy ZipLM (its Gram included), each point in a fresh process (`ru_maxrss`), with the
  log-log slope of time against n.

Run: nice -n 10 python3 benchmarks/perf_scale.py --part acceptance
     nice -n 10 python3 benchmarks/perf_scale.py --part scaling [--widths 512 1024 2048 4096 8192 16384]
     nice -n 10 python3 benchmarks/perf_scale.py --part small [--seeds 3]
"""

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import provenance  # noqa: E402 — the sibling module
from perf_common import machine  # noqa: E402

import jaxlump  # noqa: E402
from jaxlump._criteria.gram import layer_statistics  # noqa: E402
from jaxlump._methods.rounds import rounds_path  # noqa: E402
from jaxlump._methods.select import finish  # noqa: E402
from jaxlump._model import to_chain  # noqa: E402
from jaxlump._reconstruction.reconstruct import DEFAULT_RIDGE  # noqa: E402
from jaxlump._training.train import train_mse  # noqa: E402
from jaxlump.baselines import compress_to  # noqa: E402

RESULT = pathlib.Path(__file__).parent / "results" / "perf_scale.json"
N_CALIB, N_SCALING, ZIPLM_MAX_WIDTH, DEVICES_WIDTH = 8192, 16384, 4096, 2048
DAMPING = 0.01  # obs_prune's (ZipLM's) damping, for both OBS implementations


def numpy_ziplm(activations: np.ndarray, w: np.ndarray, keep: int, batch: int = 4096) -> np.ndarray:
    """ZipLM's structured OBS in NumPy (float64): the centred Gram accumulated over row batches, one inverse, then
    greedy removal of `argmin ‖W_:,j‖² / (H⁻¹)_jj` with the OBS compensation and the rank-one downdate of `H⁻¹`.
    Returns the kept mask."""
    n = activations.shape[1]
    total, second = np.zeros(n), np.zeros((n, n))
    for start in range(0, len(activations), batch):
        a = np.asarray(activations[start : start + batch], np.float64)
        total += a.sum(axis=0)
        second += a.T @ a
    mean = total / len(activations)
    h = second - len(activations) * np.outer(mean, mean)
    h += DAMPING * np.mean(np.diag(h)) * np.eye(n)
    hinv = np.linalg.inv(h)
    w = np.array(w, np.float64)
    alive = np.ones(n, bool)
    for _ in range(n - keep):
        score = np.where(alive, np.sum(w**2, axis=0) / np.where(alive, np.diag(hinv), 1.0), np.inf)
        j = int(np.argmin(score))
        w -= np.outer(w[:, j] / hinv[j, j], hinv[j])
        hinv -= np.outer(hinv[:, j], hinv[j]) / hinv[j, j]
        alive[j] = False
    return alive


def hidden(model, x) -> np.ndarray:
    return np.asarray(jnp.tanh(x @ model.layers[0].weight.T + model.layers[0].bias))


def refit_kept(model, x, keep: np.ndarray):
    """The model with only the kept hidden units, reconstructed by the shared least squares (as every method)."""
    labels = np.where(keep, np.arange(len(keep)), -1)
    return finish(model, x, [labels], "numpy_ziplm", float("nan"), DEFAULT_RIDGE)[0]


def site(n: int, seed: int = 0):
    model = eqx.nn.MLP(64, n // 4, n, 1, activation=jnp.tanh, dtype=jnp.float32, key=jr.key(seed))
    x = jr.normal(jr.key(seed + 1), (N_SCALING, 64), jnp.float32)
    return model, x


def point(n: int, method: str) -> dict:
    """One scaling point in this process: wall time of compressing the site to n/2 and the peak resident memory
    (`merge_or_remove` by `Rounds()`, the default beyond width 512, over every device this process sees)."""
    model, x = site(n)
    jax.block_until_ready(x)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if method == "merge_or_remove":
        devices = jax.devices() if len(jax.devices()) > 1 else None
        small, _ = compress_to(model, "merge_or_remove", (n // 2,), x, path=jaxlump.Rounds(devices=devices))
        jax.block_until_ready(small)
    else:
        numpy_ziplm(hidden(model, x), np.asarray(model.layers[1].weight), n // 2)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "width": n,
        "method": method,
        "devices": len(jax.devices()),
        "seconds": seconds,
        "peak_rss_gb": peak / 2**20,
        "rss_before_gb": base / 2**20,
        "load_after": list(os.getloadavg()),
    }


def in_fresh_process(n: int, method: str, devices: int = 1) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, __file__, "--point", str(n), method], capture_output=True, text=True, check=False, env=env
    )
    if out.returncode != 0:
        return {"width": n, "method": method, "devices": devices, "error": out.stderr[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def scaling(widths) -> dict:
    for method in ("merge_or_remove", "numpy_ziplm"):  # record the code that runs, untimed, in this process
        point(256, method)
    rows = []
    for n in widths:
        for method in ("merge_or_remove", "numpy_ziplm"):
            if method == "numpy_ziplm" and n > ZIPLM_MAX_WIDTH:
                continue
            rows.append(in_fresh_process(n, method))
            print(rows[-1], flush=True)
    for devices in (2, 8):
        rows.append(in_fresh_process(DEVICES_WIDTH, "merge_or_remove", devices))
        print(rows[-1], flush=True)
    slopes = {}
    for method in ("merge_or_remove", "numpy_ziplm"):
        done = [
            (r["width"], r["seconds"])
            for r in rows
            if r["method"] == method and "seconds" in r and r["width"] >= 1024 and r["devices"] == 1
        ]
        if len(done) >= 2:
            slopes[method] = float(np.polyfit(np.log([w for w, _ in done]), np.log([s for _, s in done]), 1)[0])
    return {
        "rows_calibration": N_SCALING,
        "site": "64 → n tanh → n/4, to n/2",
        "rows": rows,
        "log_log_slope_from_1024": slopes,
    }


def float32_drift(model, x, steps: int = 1024) -> dict:
    """The Rounds path of the 2048-wide layer computed in float32 against float64 (statistics and path): the share of
    identical labels after `steps` operations, and the largest relative difference of the cumulative errors."""
    paths = {}
    for dtype in (jnp.float32, jnp.float64):
        chain = jax.tree.map(lambda a, t=dtype: a.astype(t) if eqx.is_inexact_array(a) else a, to_chain(model))
        stats = layer_statistics(chain, jnp.asarray(x, dtype), sketch_size=2048, candidates=16)
        options = dict(gated=False, centre=True, damping=1e-3, merge=True, strategy=jaxlump.Rounds(), steps=steps)
        paths[dtype] = rounds_path(stats[0], chain.weights[1], chain.activations[0], **options)
    low, high = paths[jnp.float32], paths[jnp.float64]
    return {
        "steps": steps,
        "identical_labels": float(np.mean(low.labels_after(steps) == high.labels_after(steps))),
        "cumulative_max_rel": float(np.max(np.abs(low.cumulative - high.cumulative) / np.abs(high.cumulative))),
    }


def acceptance(steps: int) -> dict:
    data = jaxlump.datasets.protein(key=0)
    model = eqx.nn.MLP(data.n_features, data.n_targets, 2048, 1, activation=jnp.tanh, dtype=jnp.float32, key=jr.key(0))
    model = train_mse(model, data.x_train, data.y_train, key=jr.key(1), steps=steps, progress=False)
    x = jnp.asarray(data.x_train[:N_CALIB], jnp.float32)
    x_test, y_test = jnp.asarray(data.x_test, jnp.float32), jnp.asarray(data.y_test, jnp.float32)

    def mse(m):
        return float(jnp.mean((jax.vmap(m)(x_test) - y_test) ** 2))

    rows = [{"method": "dense", "width": 2048, "test_mse": mse(model)}]
    for width in (1024, 256):
        for method, run in (
            ("merge_or_remove", lambda w: compress_to(model, "merge_or_remove", (w,), x)[0]),
            ("obs_prune", lambda w: compress_to(model, "obs_prune", (w,), x)[0]),
            ("numpy_ziplm", None),
        ):
            start = time.perf_counter()
            if run is None:
                keep = numpy_ziplm(hidden(model, x), np.asarray(model.layers[1].weight), width)
                path_s = time.perf_counter() - start
                small = refit_kept(model, x, keep)
            else:
                small = run(width)
                path_s = None
            jax.block_until_ready(small)
            rows.append(
                {
                    "method": method,
                    "width": width,
                    "test_mse": mse(small),
                    "seconds": time.perf_counter() - start,
                    "selection_seconds": path_s,
                }
            )
            print(rows[-1], flush=True)
    return {
        "float32_drift": float32_drift(model, x),
        "data": "protein (CASP), 9 features",
        "model": "9 → 2048 tanh → 1, float32",
        "train_steps": steps,
        "calibration_rows": N_CALIB,
        "rows": rows,
    }


def small(seeds: int, steps: int) -> dict:
    """`Rounds()` against the exact greedy (`Greedy()`, the default at these widths) and structured OBS on the
    ablation networks (`ablation_lumping.problem`: 2×64 tanh, 512 calibration inputs): test MSE at uniform hidden
    widths 40, 20 and 8, every method followed by the same reconstruction."""
    from ablation_lumping import DATASETS, problem

    rows = []
    for name in DATASETS:
        for seed in range(seeds):
            model, data, x = problem(name, seed, steps)
            for width in (40, 20, 8):
                row = {"dataset": name, "seed": seed, "width": width}
                for method, options in (
                    ("greedy", dict(path=jaxlump.Greedy())),
                    ("rounds", dict(path=jaxlump.Rounds())),
                    ("rounds_one_at_a_time", dict(path=jaxlump.Rounds(fraction=1e-9))),
                ):
                    small_model = compress_to(model, "merge_or_remove", (width, width), x, **options)[0]
                    row[method] = float(jnp.mean((jax.vmap(small_model)(data.x_test) - data.y_test) ** 2))
                small_model = compress_to(model, "obs_prune", (width, width), x)[0]
                row["obs_prune"] = float(jnp.mean((jax.vmap(small_model)(data.x_test) - data.y_test) ** 2))
                rows.append(row)
                print(row, flush=True)
    ratios = np.asarray([r["rounds"] / r["greedy"] for r in rows])
    return {
        "rows": rows,
        "rounds_over_greedy_geomean": float(np.exp(np.mean(np.log(ratios)))),
        "rounds_within_1pc_of_greedy": int(np.sum(ratios <= 1.01)),
        "rounds_at_most_obs": int(sum(r["rounds"] <= r["obs_prune"] for r in rows)),
        "greedy_at_most_obs": int(sum(r["greedy"] <= r["obs_prune"] for r in rows)),
        "count": len(rows),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["acceptance", "scaling", "small"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--widths", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--point", nargs=2, metavar=("WIDTH", "METHOD"))
    parser.add_argument("--overwrite", action="store_true", help="replace an existing section")
    args = parser.parse_args()
    if args.point:
        print(json.dumps(point(int(args.point[0]), args.point[1])))
        return
    results = json.loads(RESULT.read_text()) if RESULT.exists() else {}
    if args.part in results and not args.overwrite:
        sys.exit(f"{RESULT} already has the '{args.part}' section; pass --overwrite to replace it")
    with provenance.recording():
        if args.part == "acceptance":
            section = acceptance(args.steps)
        elif args.part == "scaling":
            section = scaling(args.widths)
        else:
            section = small(args.seeds, 1500)
        section["machine"] = machine()
        section["provenance"] = provenance.stamp()
    results = json.loads(RESULT.read_text()) if RESULT.exists() else {}  # another part may have finished since
    results[args.part] = section
    # The file's provenance covers every part: a part computed by other (or unrecorded) code keeps it stale.
    others = [s.get("provenance") for part, s in results.items() if part not in (args.part, "provenance")]
    results["provenance"] = provenance.stamp(provenance.combined(others) if others else None)
    RESULT.write_text(json.dumps(results, indent=1))
    print(f"wrote {RESULT}")


if __name__ == "__main__":
    main()
