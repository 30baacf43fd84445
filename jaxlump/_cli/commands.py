"""The `jaxlump` console command: train a small MLP on a shipped data set, then lump, compress, sweep or compare.

Subcommands (`jaxlump SUBCOMMAND --help` explains each option):

- `run` (the default with no subcommand): the main job — glycolytic-oscillator data (diffrax), a tanh MLP trained
  with optax, an ε sweep with certificates, and lumping against pruning at matched sizes, with and without the
  least-squares reconstruction;
- `compress`: one method (any name from `jaxlump.compressors()`) to one target, optionally reconstructed, and the
  compressed model saved with `jaxlump.save`;
- `sweep`: size and error over an ε grid, and the smallest model within an error budget (`--max-error`, bounding
  the certificate field `--error` as `Sweep.smallest_within` does);
- `bench`: every chosen method at every chosen size, with and without reconstruction.

Every option is checked before any data is generated or any network trained. Results go to the output folder as
JSON (raw), CSV (the table) and PNG (the plot).
"""

import argparse
import inspect
import pathlib
import sys

import jax

from .._methods.targets import widths_methods, widths_refusal
from .._results.info import Certificate
from .._sweep import Sweep
from . import jobs as jobs

DATA = ("glycolytic", "polymerization", "reaction_network", "rlc_network", "abalone", "protein", "metro_traffic",
        "household_power")  # fmt: skip
SIMULATED = DATA[:4]
ACTIVATIONS = ("tanh", "sigmoid", "relu", "leaky_relu", "softplus", "silu", "identity")
DEFAULT_EPS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
BENCH_DEFAULT = ("merge_or_remove", "lump", "obs_prune", "structured_prune", "magnitude", "wanda")
SUBCOMMANDS = ("run", "compress", "sweep", "bench")
# `--error` is `Sweep.smallest_within`'s `error`: the same choices (the certificate's fields), the same default
ERRORS = tuple(Certificate.__dataclass_fields__)
DEFAULT_ERROR = inspect.signature(Sweep.smallest_within).parameters["error"].default


def _number(kind, name: str, *, low=None, high=None, low_open=False):
    """An argparse `type`: converts with `kind` (int or float), checks finiteness and bounds, names what is accepted."""
    left = "(" if low_open else "["
    interval = f"{left}{low}, {high}]" if high is not None else f"{left}{low}, ∞)"
    what = f"{'an integer' if kind is int else 'a finite number'} in {interval}"

    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}; received {text!r}") from None
        finite = value == value and abs(value) != float("inf")
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and value > high
        if not finite or too_low or too_high:
            raise argparse.ArgumentTypeError(f"must be {what}; received {text!r}")
        return value

    convert.__name__ = name
    return convert


def parse_target(text: str):
    """`"500"` → 500 parameters, `"0.35"` → 35 % of the original, `"16,8"` → hidden widths (16, 8)."""
    text = text.strip()
    try:
        if "," in text or "x" in text:
            widths = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
            if not widths or min(widths) < 1:
                raise ValueError
            return widths
        if text.isdigit():
            if int(text) < 1:
                raise ValueError
            return int(text)
        value = float(text)
        if not 0 < value <= 1:
            raise ValueError
        return value
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a parameter count (a positive integer, e.g. 500), a fraction of the original in "
            f"(0, 1] (e.g. 0.35) or hidden widths separated by commas (e.g. 16,8); received {text!r}"
        ) from None


def _common(parser: argparse.ArgumentParser, *, data: bool = True) -> None:
    g = parser.add_argument_group("problem (data, network, training)")
    if data:
        g.add_argument("--data", choices=DATA, default="glycolytic", help="the shipped data set (default glycolytic)")
    g.add_argument("--width", type=_number(int, "--width", low=1), default=64, help="hidden width (default 64)")
    g.add_argument("--depth", type=_number(int, "--depth", low=1), default=2, help="hidden layers (default 2)")
    g.add_argument("--activation", choices=ACTIVATIONS, default="tanh", help="hidden activation (default tanh)")
    g.add_argument("--steps", type=_number(int, "--steps", low=1), default=4000, help="Adam steps (default 4000)")
    g.add_argument("--seed", type=_number(int, "--seed", low=0), default=0, help="seed of data, init and training")
    g.add_argument(
        "--n-train",
        type=_number(int, "--n-train", low=2),
        default=3200,
        help="training samples drawn for a simulated data set (default 3200; the UCI sets use their own split)",
    )
    g.add_argument(
        "--n-test", type=_number(int, "--n-test", low=1), default=800, help="test samples, simulated sets (800)"
    )
    g.add_argument(
        "--n-calib",
        type=_number(int, "--n-calib", low=1),
        default=512,
        help="calibration inputs drawn from the training set (default 512, at most the training set's size)",
    )
    o = parser.add_argument_group("output")
    o.add_argument(
        "--out", type=pathlib.Path, default=pathlib.Path("jaxlump_output"), help="output folder (jaxlump_output)"
    )
    o.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _fractions(parser, default, what):
    parser.add_argument(
        "--fractions",
        type=_number(float, "--fractions", low=0, high=1, low_open=True),
        nargs="+",
        default=list(default),
        help=f"{what} as fractions of the original size in (0, 1] (dense parameters for structured methods, "
        f"non-zeros for unstructured ones; default {' '.join(map(str, default))})",
    )


def parser() -> argparse.ArgumentParser:
    """The `jaxlump` argument parser (subcommands `run`, `compress`, `sweep`, `bench`)."""
    top = argparse.ArgumentParser(
        prog="jaxlump",
        description=__doc__.split("\n\n")[0],
        epilog="With no subcommand, `jaxlump [options]` is `jaxlump run [options]`.",
    )
    sub = top.add_subparsers(dest="command", metavar="{run,compress,sweep,bench}", help="the job (default: run)")
    eps = _number(float, "--eps", low=0)

    run = sub.add_parser("run", help="the main job (default)", description=jobs.run.__doc__)
    _common(run, data=False)
    run.add_argument("--eps", type=eps, nargs="+", default=list(DEFAULT_EPS), help="the ε grid (each ≥ 0)")
    _fractions(run, (0.6, 0.35), "matched sizes of the comparison")

    names = tuple(jobs.compressors())
    compress = sub.add_parser("compress", help="one method to one target", description=jobs.compress.__doc__)
    _common(compress)
    compress.add_argument(
        "--method",
        choices=names,
        default="merge_or_remove",
        help="the compressor (default merge_or_remove, jaxlump's default structured compressor)",
    )
    compress.add_argument(
        "--target",
        type=parse_target,
        required=True,
        help="a parameter count (e.g. 500: dense parameters for structured methods, non-zeros for unstructured "
        "ones), a fraction of the original in (0, 1] (e.g. 0.35) or hidden widths (e.g. 16,8; structured methods)",
    )
    compress.add_argument(
        "--reconstruct",
        action="store_true",
        help="re-solve the compressed model's weights by least squares against the original on the calibration set "
        "(jaxlump.reconstruct; lump refits by default and merge_or_remove always, this applies to the others)",
    )

    sweep = sub.add_parser("sweep", help="size and error over an ε grid", description=jobs.sweep.__doc__)
    _common(sweep)
    sweep.add_argument("--eps", type=eps, nargs="+", default=list(DEFAULT_EPS), help="the ε grid (each ≥ 0)")
    sweep.add_argument(
        "--max-error",
        type=_number(float, "--max-error", low=0),
        default=None,
        help="report the smallest model whose --error is at most this (Sweep.smallest_within(max_error, error=...))",
    )
    sweep.add_argument(
        "--error",
        choices=ERRORS,
        default=DEFAULT_ERROR,
        help="the error --max-error bounds, a field of the certificate as in Sweep.smallest_within: output_max_abs "
        "(default: the largest absolute deviation from the original's outputs on the calibration set), output_rms "
        "(their RMS), a_priori_bound or ode_max_abs (sweeps with the ODE certificate)",
    )

    bench = sub.add_parser("bench", help="methods at matched sizes", description=jobs.bench.__doc__)
    _common(bench)
    bench.add_argument(
        "--methods",
        choices=names,
        nargs="+",
        default=list(BENCH_DEFAULT),
        help=f"the methods compared (default {' '.join(BENCH_DEFAULT)})",
    )
    _fractions(bench, (0.6, 0.35, 0.15), "the sizes compared")
    return top


def _check(p: argparse.ArgumentParser, args) -> None:
    """Cross-option checks, all before any data or training (argparse has checked each option alone)."""
    if getattr(args, "data", "glycolytic") in SIMULATED and args.n_calib > args.n_train:
        p.error(f"--n-calib must be at most --n-train ({args.n_train}); received {args.n_calib}")
    methods = {"compress": [getattr(args, "method", None)], "bench": getattr(args, "methods", [])}.get(args.command, [])
    registry = jobs.compressors()
    for name in methods:
        accepted = registry[name].activations
        if accepted is not None and args.activation not in accepted:
            p.error(f"--method {name} needs hidden activations in {accepted}; received --activation {args.activation}")
    if args.command == "compress" and isinstance(args.target, tuple):
        reason = widths_refusal(registry[args.method])
        if reason is not None:
            p.error(
                f"--target as widths: --method {args.method} cannot reach per-layer widths: {reason}. Give a "
                f"count or a fraction instead, or a method that sets each layer's width ({', '.join(widths_methods())})"
            )
        if len(args.target) != args.depth or max(args.target) > args.width:
            p.error(
                f"--target as widths must give --depth ({args.depth}) widths, each from 1 to --width "
                f"({args.width}); received {','.join(map(str, args.target))}"
            )
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        p.error(f"--out {str(args.out)!r} cannot be created: {error}")


def main(argv=None) -> int:
    """Entry point of the `jaxlump` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help")):
        argv = ["run", *argv]
    p = parser()
    args = p.parse_args(argv)
    subparser = p._subparsers._group_actions[0].choices[args.command]
    _check(subparser, args)
    jax.config.update("jax_enable_x64", True)  # the jobs train and compare in float64
    return getattr(jobs, args.command)(args)


if __name__ == "__main__":
    sys.exit(main())
