"""The `jaxlump` console command: a small end-to-end compression on the embedded glycolytic data set.

Generates the glycolytic-oscillator vector-field data with diffrax (seeded), trains a tanh MLP with
optax, sweeps ε, prints a table (ε, widths, parameters, % of original, test MSE, certificate), compares
with global magnitude pruning at matched sizes, and saves the raw results (JSON) and a plot.
"""

import argparse
import json
import pathlib
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxlump", description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=64, help="hidden width of the MLP (default 64)")
    parser.add_argument("--depth", type=int, default=2, help="number of hidden layers (default 2)")
    parser.add_argument("--steps", type=int, default=4000, help="training steps (default 4000)")
    parser.add_argument("--seed", type=int, default=0, help="seed for data, initialisation and training")
    parser.add_argument(
        "--eps",
        type=float,
        nargs="+",
        default=[0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
        help="the ε grid to sweep",
    )
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("jaxlump_output"), help="output folder")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    import jax

    jax.config.update("jax_enable_x64", True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tqdm.auto import tqdm

    import jaxlump
    from jaxlump._train import glycolytic_problem, mse
    from jaxlump.baselines import compress_to, magnitude

    progress = not args.no_progress
    print(
        "Generating the glycolytic-oscillator data set (Ruoff et al. 2003) with diffrax and training a "
        f"7→{'→'.join([str(args.width)] * args.depth)}→7 tanh MLP ...",
        flush=True,
    )
    model, data, x_calib = glycolytic_problem(
        seed=args.seed, width=args.width, depth=args.depth, steps=args.steps, progress=progress
    )
    x_test, y_test = data.x_test, data.y_test
    base_mse = float(mse(model, x_test, y_test))
    base_params = int(jaxlump.cost(model).dense_params)
    print(f"Original: {base_params} parameters, test MSE {base_mse:.3e}\n")

    rows = []
    for eps in tqdm(args.eps, desc="ε sweep", disable=not progress, leave=False):
        small, info = jaxlump.lump(model, x_calib, eps)
        rows.append(
            {
                "eps": eps,
                "widths": [int(w) for w in info.widths_after],
                "params": int(info.cost_after.dense_params),
                "percent": float(info.percent_of_original),
                "test_mse": float(mse(small, x_test, y_test)),
                "calib_max_abs": float(info.certificate.output_max_abs),
                "ode_max_abs": float(info.certificate.ode_max_abs),
                "bound": float(info.certificate.a_priori_bound),
            }
        )
    header = (
        f"{'ε':>6} {'widths':>18} {'params':>7} {'% orig':>7} {'test MSE':>10} {'calib max|Δf|':>13} "
        f"{'ODE max|Δ|':>11} {'bound':>9}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['eps']:>6.3f} {str(r['widths']):>18} {r['params']:>7d} {r['percent']:>6.1f}% {r['test_mse']:>10.3e} "
            f"{r['calib_max_abs']:>13.2e} {r['ode_max_abs']:>11.2e} {r['bound']:>9.2e}"
        )

    comparison = []
    print("\nAt matched sizes (lump: dense parameters; global magnitude pruning: non-zeros, no reconstruction):")
    for fraction in (0.6, 0.35):
        target = int(fraction * base_params)
        lumped, lump_info = compress_to(model, jaxlump.lump, target, x_calib, knob_range=(0.0, 1.0), grow_upper=True)
        pruned, prune_info = compress_to(model, magnitude, target, None, knob_range=(0.0, 0.999))
        entry = {
            "target_fraction": fraction,
            "lump": {
                "eps": float(lump_info.knob),
                "params": int(lump_info.cost_after.dense_params),
                "test_mse": float(mse(lumped, x_test, y_test)),
            },
            "magnitude": {
                "sparsity": float(prune_info.knob),
                "nonzeros": int(prune_info.cost_after.nonzeros),
                "test_mse": float(mse(pruned, x_test, y_test)),
            },
        }
        comparison.append(entry)
        print(
            f"  {fraction:.0%}: lump ε={entry['lump']['eps']:.3f} {entry['lump']['params']} params, test MSE "
            f"{entry['lump']['test_mse']:.3e} | magnitude {entry['magnitude']['nonzeros']} non-zeros, test MSE "
            f"{entry['magnitude']['test_mse']:.3e}"
        )

    args.out.mkdir(parents=True, exist_ok=True)
    results = {
        "original": {
            "params": base_params,
            "test_mse": base_mse,
            "width": args.width,
            "depth": args.depth,
            "steps": args.steps,
            "seed": args.seed,
        },
        "sweep": rows,
        "matched": comparison,
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["percent"] for r in rows], [r["test_mse"] for r in rows], "o-", label="lump (ε sweep)")
    for c in comparison:
        ax.plot(100 * c["magnitude"]["nonzeros"] / base_params, c["magnitude"]["test_mse"], "s", color="C1")
    ax.plot([], [], "s", color="C1", label="global magnitude (matched)")
    ax.axhline(base_mse, color="grey", ls="--", label="original")
    ax.set(xlabel="% of original parameters", ylabel="test MSE", yscale="log", title="glycolytic oscillator")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "size_vs_error.png", dpi=120)
    print(f"\nWrote {args.out / 'results.json'} and {args.out / 'size_vs_error.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
