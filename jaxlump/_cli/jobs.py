"""The jobs behind the `jaxlump` subcommands: the problem, the compressions, and their JSON / CSV / PNG outputs.

Options arrive already checked by `jaxlump._cli.commands`; nothing here validates arguments again.
"""

import csv
import inspect
import json
import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from tqdm.auto import tqdm

import jaxlump

from .. import datasets
from .._io.serialisation import save
from .._methods.registry import compressors as compressors
from .._methods.targets import compress_to
from .._reconstruction.reconstruct import reconstruct as solve
from .._results.accounting import cost
from .._results.plotting import eps_labels, keep_readable
from .._training.train import train_mse

SIMULATED = ("glycolytic", "polymerization", "reaction_network", "rlc_network")


def _activation(name: str):
    return {
        "tanh": jnp.tanh,
        "sigmoid": jax.nn.sigmoid,
        "relu": jax.nn.relu,
        "leaky_relu": jax.nn.leaky_relu,
        "softplus": jax.nn.softplus,
        "silu": jax.nn.silu,
        "identity": eqx.nn.Identity(),
    }[name]


def problem(args, *, data_name: str = "glycolytic"):
    """Load the data (float64), train the MLP, draw the calibration set: `(model, data, x_calib)`.

    With the defaults this is `jaxlump._training.train.glycolytic_problem` (same data, keys and training).
    """
    loader = getattr(datasets, data_name)
    data = loader(args.n_train, args.n_test, key=args.seed) if data_name in SIMULATED else loader(key=args.seed)
    data = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64) if eqx.is_inexact_array(a) else a, data)
    if args.n_calib > data.n_train:
        raise SystemExit(f"jaxlump: error: --n-calib must be at most {data_name}'s {data.n_train} training samples")
    init_key, train_key, calib_key = jr.split(jr.key(args.seed), 3)
    model = eqx.nn.MLP(
        data.n_features,
        data.n_targets,
        args.width,
        args.depth,
        activation=_activation(args.activation),
        dtype=jnp.float64,
        key=init_key,
    )
    widths = "→".join(map(str, [data.n_features, *[args.width] * args.depth, data.n_targets]))
    print(f"Data: {data_name} ({data.n_train} train, {data.n_test} test). Training a {widths} {args.activation} MLP.")
    model = train_mse(model, data.x_train, data.y_train, key=train_key, steps=args.steps, progress=not args.no_progress)
    return model, data, data.calibration(args.n_calib, calib_key)


def _mse(model, x, y) -> float:
    return float(jnp.mean((jax.vmap(model)(x) - y) ** 2))


def describe(label: str, original, small, info, data, x_calib) -> dict:
    """One result as a flat record: sizes, widths, knob, errors (test MSE, calibration RMS deviation)."""
    deviation = jax.vmap(small)(x_calib) - jax.vmap(original)(x_calib)
    before = info.cost_before.dense_params if info.structured else info.cost_before.nonzeros
    after = info.cost_after.dense_params if info.structured else info.cost_after.nonzeros
    record = {
        "method": label,
        "structured": bool(info.structured),
        "knob": float(info.knob),
        "widths": [int(w) for w in info.widths_after],
        "params": int(info.cost_after.dense_params),
        "nonzeros": int(info.cost_after.nonzeros),
        "flops": int(info.cost_after.flops),
        "percent": 100.0 * int(after) / int(before),
        "test_mse": _mse(small, data.x_test, data.y_test),
        "calib_rms": float(jnp.sqrt(jnp.mean(deviation**2))),
    }
    target = getattr(info, "target", None)
    if target is not None:
        record["requested"] = list(target.requested) if target.kind == "widths" else target.requested
        record["requested_size"] = target.requested_size
        if isinstance(target.knob, tuple):  # a widths target: one knob per hidden layer (`info.knob` is NaN)
            record["knob"] = list(target.knob)
    return record


def _original(model, data, args) -> dict:
    return {
        "data": getattr(args, "data", "glycolytic"),
        "params": int(cost(model).dense_params),
        "test_mse": _mse(model, data.x_test, data.y_test),
        "width": args.width,
        "depth": args.depth,
        "activation": args.activation,
        "steps": args.steps,
        "seed": args.seed,
    }


def write(out: pathlib.Path, stem: str, payload: dict, rows: list[dict]) -> list[pathlib.Path]:
    """`stem.json` (everything) and `stem.csv` (the rows; lists joined with '-')."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=2))
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(out / f"{stem}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "-".join(map(str, v)) if isinstance(v, list) else v for k, v in row.items()})
    return [out / f"{stem}.json", out / f"{stem}.csv"]


def _table(rows: list[dict], columns: tuple[str, ...]) -> str:
    def cell(row, key):
        value = row.get(key, "")
        if isinstance(value, list):
            return "-".join(map(str, value))
        if isinstance(value, float):
            return f"{value:.1f}" if key == "percent" else f"{value:.3g}"
        return str(value)

    cells = [[cell(row, key) for key in columns] for row in rows]
    sizes = [max(len(key), *(len(c[i]) for c in cells)) for i, key in enumerate(columns)]
    lines = ["  ".join(key.rjust(n) for key, n in zip(columns, sizes))]
    lines += ["  ".join(c.rjust(n) for c, n in zip(line, sizes)) for line in cells]
    return "\n".join(lines)


def _figure(panels: int = 1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, panels, figsize=(6.4 if panels == 1 else 12.0, 4.2 if panels == 1 else 4.8))


def _save_figure(fig, ax, path: pathlib.Path, title: str, base_mse: float, *, legend_below=False) -> pathlib.Path:
    """The original's line, axes and legend (in `ax`, or below the figure's panels); then, with the layout final,
    only the ε labels that stay readable."""
    ax.axhline(base_mse, color="grey", ls="--", label="original")
    ax.set(xlabel="% of the original size (dense params / non-zeros)", ylabel="test MSE", yscale="log", title=title)
    if legend_below:
        handles, labels = ax.get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8)
        fig.tight_layout(rect=(0, 0.03 + 0.045 * -(-len(labels) // 4), 1, 1))
    else:
        ax.legend(fontsize=8)
        fig.tight_layout()
    keep_readable(ax, list(ax.texts))  # the ε labels of `_plot_eps_line`, in the order to try them
    fig.savefig(path, dpi=120)
    return path


def _plot_eps_line(ax, rows: list[dict]) -> None:
    """The lumping curve and its ε labels (one `ε=a…b` per run of identical points), thinned by `_save_figure`."""
    percent, mse = [r["percent"] for r in rows], [r["test_mse"] for r in rows]
    ax.plot(percent, mse, "o-", color="C0", label="lump (ε sweep)")
    eps_labels(ax, percent, mse, [r["eps"] for r in rows], fontsize=7.0)


def _compress(model, name: str, target, x_calib, *, reconstruct: bool, seed: int):
    """`compress_to` by name, then the least-squares reconstruction when asked (lump: its refit; a method with a
    `reconstruct` option: that option; any other: `jaxlump.reconstruct`)."""
    accepted = inspect.signature(compressors()[name].function).parameters
    options = {"key": jr.key(seed)} if "key" in accepted else {}
    if name == "lump":
        options = {"reconstruct": reconstruct, "certify_ode": False}
    own = "reconstruct" in accepted  # methods with their own reconstruction option (obs_prune, fold ...) use it
    if own:
        options["reconstruct"] = reconstruct
    small, info = compress_to(model, name, target, x_calib, **options)
    if reconstruct and name not in ("lump", *ALWAYS_REFIT) and not own:
        small, info = solve(model, small, x_calib, info)
    return small, info


ALWAYS_REFIT = ("merge_or_remove", "lump_then_select")  # their result is always the reconstructed one


def _reconstructed(name: str, reconstruct: bool) -> bool:
    """Whether the result of `_compress(name, reconstruct=reconstruct)` is least-squares reconstructed (refitted)."""
    return reconstruct or name in ALWAYS_REFIT


def _label(name: str, reconstruct: bool) -> str:
    if name == "lump":
        return "lump + refit" if reconstruct else "lump (quotient)"
    if name in ALWAYS_REFIT:
        return f"{name} (refit)"
    return f"{name} + reconstruction" if reconstruct else name


def _matched(model, data, x_calib, runs, fractions, seed: int, progress: bool) -> list[dict]:
    """Every `(method name, reconstruct)` of `runs` at every fraction; a failure is recorded, not hidden.

    Each row names its compressor (`"compressor"`, the plot's colour) and says whether its result is reconstructed
    (`"reconstructed"`, drawn filled).
    """
    jobs = [(f, name, recon) for f in fractions for name, recon in runs]
    rows = []
    for fraction, name, recon in tqdm(jobs, desc="matched sizes", disable=not progress, leave=False):
        label, flag = _label(name, recon), {"compressor": name, "reconstructed": _reconstructed(name, recon)}
        try:
            small, info = _compress(model, name, fraction, x_calib, reconstruct=recon, seed=seed)
        except ValueError as error:
            rows.append({"method": label} | flag | {"requested": fraction, "error": str(error)})
            continue
        rows.append(describe(label, model, small, info, data, x_calib) | flag | {"requested": fraction})
    return rows


_COLOURS = ("C1", "C2", "C3", "C4", "C5", "C6", "C8", "C9")  # C0 is the ε sweep's; grey (C7) is the original's line
_MARKERS = ("s", "^", "D", "v")  # after every colour is used once, the next compressors change marker


def _plot_matched(ax, rows: list[dict], y: str = "test_mse") -> None:
    """One curve per method label, its `y` against the size: one colour per compressor, filled and dashed when the rows
    are reconstructed, hollow and dotted when not."""
    rows = [r for r in rows if "error" not in r]
    names = list(dict.fromkeys(r["compressor"] for r in rows))
    for label in dict.fromkeys(r["method"] for r in rows):
        drawn = [r for r in rows if r["method"] == label]
        filled = all(r["reconstructed"] for r in drawn)  # one label is one (method, reconstruct) pair
        k = names.index(drawn[0]["compressor"])
        points = sorted((r["percent"], r[y]) for r in drawn)
        ax.plot(*zip(*points), ls="--" if filled else ":", marker=_MARKERS[k // len(_COLOURS) % len(_MARKERS)],
                color=_COLOURS[k % len(_COLOURS)], mfc=None if filled else "none", label=label, alpha=0.9)  # fmt: skip


def _plot_bench(rows: list[dict], original: dict, path: pathlib.Path, title: str) -> pathlib.Path:
    """Test MSE (left) and the RMS deviation from the original on the calibration set (right) against the size.

    On a noisy data set the original's test MSE is mostly the data's noise, and every well reconstructed result sits
    on it (abalone, docs/cli.md's bench command: all within a few per cent of 0.40); the right panel separates them.
    """
    fig, (ax, deviation) = _figure(panels=2)
    _plot_matched(ax, rows)
    _plot_matched(deviation, rows, "calib_rms")
    deviation.set(xlabel="% of the original size (dense params / non-zeros)", yscale="log")
    deviation.set(ylabel="RMS deviation from the original (calibration)", title="closeness to the original")
    return _save_figure(fig, ax, path, title, original["test_mse"], legend_below=True)


def run(args) -> int:
    """The main job: train on the glycolytic oscillator, sweep ε with certificates, compare at matched sizes.

    Compares jaxlump's default structured compressor (`merge_or_remove`) and lumping (with its least-squares
    refit) against global magnitude pruning with and without the same reconstruction and structured neuron
    pruning with reconstruction, at each of `--fractions`. Writes
    `results.json`, `results.csv` and `size_vs_error.png` (ε labelled on the lumping curve) to `--out`.
    """
    progress = not args.no_progress
    model, data, x_calib = problem(args)
    original = _original(model, data, args)
    print(f"Original: {original['params']} parameters, test MSE {original['test_mse']:.3e}\n")
    sweep_rows = []
    for eps in tqdm(args.eps, desc="ε sweep", disable=not progress, leave=False):
        small, info = jaxlump.lump(model, x_calib, eps)
        cert = info.certificate
        sweep_rows.append(
            {"eps": eps}
            | describe("lump", model, small, info, data, x_calib)
            | {"ode_max_abs": float(cert.ode_max_abs), "bound": float(cert.a_priori_bound)}
        )
    print(_table(sweep_rows, ("eps", "widths", "params", "percent", "test_mse", "calib_rms", "ode_max_abs", "bound")))
    runs = [("merge_or_remove", True), ("lump", True), ("magnitude", False), ("magnitude", True)]
    runs.append(("structured_prune", True))
    matched = _matched(model, data, x_calib, runs, args.fractions, args.seed, progress)
    print("\nAt matched sizes (dense parameters for structured methods, non-zeros for magnitude pruning):")
    print(_table(matched, ("requested", "method", "knob", "widths", "params", "nonzeros", "percent", "test_mse")))
    files = write(args.out, "results", {"original": original, "sweep": sweep_rows, "matched": matched},
                  [{"job": "sweep"} | r for r in sweep_rows] + [{"job": "matched"} | r for r in matched])  # fmt: skip
    fig, ax = _figure()
    _plot_eps_line(ax, sweep_rows)
    _plot_matched(ax, matched)
    files.append(_save_figure(fig, ax, args.out / "size_vs_error.png", "glycolytic oscillator", original["test_mse"]))
    print("\nWrote " + ", ".join(map(str, files)))
    return 0


def compress(args) -> int:
    """Compress the trained network with one method (`--method`) to one target (`--target`).

    Prints the result's summary (widths, sizes, knob, requested vs realised size), writes `compress.json`,
    `compress.csv`, the model (`model.npz`, readable with `jaxlump.load`) and `predictions.png` (test predictions
    of the original and the compressed model against the truth, first output) to `--out`.
    """
    model, data, x_calib = problem(args, data_name=args.data)
    small, info = _compress(model, args.method, args.target, x_calib, reconstruct=args.reconstruct, seed=args.seed)
    print(info.summary())
    record = describe(_label(args.method, args.reconstruct), model, small, info, data, x_calib)
    print(f"  test MSE:     {_mse(model, data.x_test, data.y_test):.3e} → {record['test_mse']:.3e}")
    files = write(args.out, "compress", {"original": _original(model, data, args), "result": record}, [record])
    save(args.out / "model.npz", small, info)
    fig, ax = _figure()
    truth = np.asarray(data.y_test[:, 0])
    ax.plot(truth, np.asarray(jax.vmap(model)(data.x_test)[:, 0]), ".", ms=3, label="original")
    ax.plot(truth, np.asarray(jax.vmap(small)(data.x_test)[:, 0]), ".", ms=3, label=record["method"])
    ax.set(xlabel=f"true {data.target_names[0]}", ylabel="predicted", title=f"{args.data}: test set, first output")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "predictions.png", dpi=120)
    print("Wrote " + ", ".join(map(str, [*files, args.out / "model.npz", args.out / "predictions.png"])))
    return 0


def sweep(args) -> int:
    """Sweep ε: per ε the widths, dense parameters, test MSE and certificate of the lumped model.

    The whole grid runs as one compiled call (`jaxlump.sweep`); each result is then shrunk (`jaxlump.shrink`).
    The errors are the certificate's fields on the calibration set, named as in the API: `output_max_abs` (the
    largest absolute deviation from the original's outputs), `output_rms` (their RMS), `a_priori_bound`
    (`ode_max_abs` too when `--error ode_max_abs` asks for the ODE certificate). With `--max-error`, reports the
    model `Sweep.smallest_within(max_error, error=--error)` chooses: the fewest dense parameters whose `--error`
    (default `output_max_abs`, as in the API) is at most `--max-error`. Writes `sweep.json`, `sweep.csv` and
    `sweep.png` to `--out`.
    """
    model, data, x_calib = problem(args, data_name=args.data)
    certify_ode = args.error == "ode_max_abs"  # the ODE certificate is costly: only when it is the budget
    result = jaxlump.sweep(model, x_calib, args.eps, certify_ode=certify_ode)
    errors = ("output_max_abs", "output_rms", "a_priori_bound", "ode_max_abs")[: 4 if certify_ode else 3]
    rows = []
    for i, eps in enumerate(tqdm(args.eps, desc="shrinking", disable=args.no_progress, leave=False)):
        small, info = jaxlump.shrink(*result.at(i))
        record = {k: v for k, v in describe("lump", model, small, info, data, x_calib).items() if k != "calib_rms"}
        rows.append({"eps": eps} | record | {e: float(result.errors(e)[i]) for e in errors})
    print(_table(rows, ("eps", "widths", "params", "percent", "test_mse", *errors)))
    payload = {"original": _original(model, data, args), "sweep": rows, "budget": None, "chosen": None}
    if args.max_error is not None:
        payload["budget"] = {"error": args.error, "max_error": args.max_error}
        budget = f"{args.error} <= {args.max_error:g}"
        try:
            _, info = result.smallest_within(args.max_error, error=args.error)
        except ValueError as error:
            print(f"\nNo model within {budget}: {error}")
        else:
            chosen = rows[int(np.flatnonzero(np.asarray(result.eps_grid) == info.knob)[0])]
            payload["chosen"] = chosen
            print(f"\nSmallest within {budget}: ε={chosen['eps']:g}, {chosen['params']} params, "
                  f"{args.error} {chosen[args.error]:.3g}")  # fmt: skip
    files = write(args.out, "sweep", payload, rows)
    fig, ax = _figure()
    _plot_eps_line(ax, rows)
    files.append(
        _save_figure(fig, ax, args.out / "sweep.png", f"{args.data}: ε sweep", payload["original"]["test_mse"])
    )
    print("Wrote " + ", ".join(map(str, files)))
    return 0


def bench(args) -> int:
    """Compare methods (`--methods`) at matched sizes (`--fractions`), each with and without reconstruction.

    Lumping's "reconstruction" is its own least-squares refit; `merge_or_remove` and `lump_then_select` always
    refit (one row each); the other methods get `jaxlump.reconstruct`. A
    size a method cannot reach is recorded with the reason. Writes `bench.json`, `bench.csv` and `bench.png` to
    `--out`. One network and one seed; the repository's `benchmarks/experiments.py` runs the full experiments.
    """
    model, data, x_calib = problem(args, data_name=args.data)
    original = _original(model, data, args)
    runs = [(name, recon) for name in args.methods for recon in ((True,) if name in ALWAYS_REFIT else (False, True))]
    rows = _matched(model, data, x_calib, runs, args.fractions, args.seed, not args.no_progress)
    columns = ("requested", "method", "knob", "widths", "params", "nonzeros", "percent", "test_mse", "calib_rms")
    print(_table(rows, columns))
    for row in rows:
        if "error" in row:
            print(f"  {row['method']} at {row['requested']}: {row['error']}")
    files = write(args.out, "bench", {"original": original, "rows": rows}, rows)
    files.append(_plot_bench(rows, original, args.out / "bench.png", f"{args.data}: matched sizes"))
    print("Wrote " + ", ".join(map(str, files)))
    return 0
