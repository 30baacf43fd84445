"""The `jaxlump` command: every subcommand on a tiny problem, every invalid option refused before any training."""

import csv
import inspect
import json
import types

import jax.random as jr
import matplotlib
import numpy as np
import pytest
from _networks import random_mlp

import jaxlump
from jaxlump._cli import commands as _cli
from jaxlump._cli import jobs as _cli_jobs

matplotlib.use("Agg")

TINY = ["--width", "6", "--steps", "30", "--n-calib", "32", "--no-progress"]
TINY_SIMULATED = [*TINY, "--n-train", "80", "--n-test", "20"]


@pytest.fixture
def no_training(monkeypatch):
    """Make any data loading or training fail loudly: a refusal must come before both."""

    def fail(*args, **kwargs):
        raise AssertionError("the command started loading data or training before refusing an option")

    monkeypatch.setattr(_cli_jobs, "problem", fail)


def _refused(capsys, argv, *fragments):
    with pytest.raises(SystemExit) as exit_info:
        _cli.main(argv)
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["--eps", "-1"], ["--eps", "'-1'", "[0, ∞)"]),
        (["--eps", "nan"], ["--eps", "'nan'"]),
        (["run", "--width", "0"], ["--width", "'0'", "integer in [1, ∞)"]),
        (["--depth", "0"], ["--depth"]),
        (["--steps", "2.5"], ["--steps", "'2.5'"]),
        (["--fractions", "0"], ["--fractions", "(0, 1]"]),
        (["--fractions", "1.2"], ["--fractions"]),
        (["--n-calib", "5000"], ["--n-calib", "5000", "3200"]),
        (["sweep", "--max-error", "-1"], ["--max-error"]),
        (["sweep", "--max-error", "0.05", "--error", "rms"], ["--error", "'rms'", "output_max_abs", "output_rms"]),
        (["sweep", "--data", "mnist"], ["--data", "mnist", "abalone"]),
        (["compress"], ["--target"]),
        (["compress", "--target", "0"], ["--target", "'0'"]),
        (["compress", "--target", "1.5"], ["--target", "(0, 1]"]),
        (["compress", "--target", "abc"], ["--target"]),
        (["compress", "--method", "magnitud", "--target", "0.5"], ["--method", "magnitud", "magnitude"]),
        (["compress", "--method", "magnitude", "--target", "4,4"], ["widths", "magnitude is unstructured"]),
        (["compress", "--method", "lump_then_prune", "--target", "4,4"], ["widths", "lump_then_prune"]),
        (["compress", "--method", "lowrank", "--target", "4,4"], ["as widths", "lowrank", "bottleneck"]),
        (["compress", "--target", "4,4,4"], ["--depth (2)"]),
        (["compress", "--width", "8", "--target", "9,4"], ["--width (8)"]),
        (["compress", "--method", "linearity_merge", "--target", "0.5"], ["linearity_merge", "relu", "tanh"]),
        (["bench", "--methods", "lump", "proportional_lump"], ["proportional_lump", "--activation tanh"]),
        (["bench", "--methods"], ["--methods"]),
        (["frobnicate"], ["frobnicate"]),
    ],
)
def test_invalid_options_are_refused_before_training(no_training, capsys, tmp_path, argv, fragments):
    _refused(capsys, [*argv, "--out", str(tmp_path / "out")], *fragments)


def test_unwritable_output_folder_is_refused(no_training, capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    _refused(capsys, ["run", "--out", str(blocker / "sub")], "--out", "cannot be created")


def test_calibration_larger_than_a_uci_training_set_is_refused_before_training(monkeypatch, capsys, tmp_path):
    import jaxlump._training.train

    def fail(*args, **kwargs):
        raise AssertionError("trained before refusing --n-calib")

    monkeypatch.setattr(jaxlump._training.train, "train_mse", fail)
    with pytest.raises(SystemExit, match="--n-calib must be at most abalone's 3342"):
        _cli.main(["sweep", "--data", "abalone", "--n-calib", "100000", "--out", str(tmp_path)])


def test_no_subcommand_is_run_with_the_documented_defaults(monkeypatch):
    seen = {}
    monkeypatch.setattr(_cli_jobs, "run", lambda args: seen.setdefault("args", args) and 0)
    assert _cli.main([]) == 0
    args = seen["args"]
    assert (args.command, args.width, args.depth, args.steps, args.activation) == ("run", 64, 2, 4000, "tanh")
    assert args.eps == list(_cli.DEFAULT_EPS) and args.fractions == [0.6, 0.35]
    seen.clear()
    _cli.main(["--width", "16"])
    assert seen["args"].command == "run" and seen["args"].width == 16


@pytest.mark.parametrize("command", [[], ["run"], ["compress"], ["sweep"], ["bench"]])
def test_help_explains_every_option(capsys, command):
    with pytest.raises(SystemExit) as exit_info:
        _cli.main([*command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    subparser = _cli.parser() if not command else _cli.parser()._subparsers._group_actions[0].choices[command[0]]
    for action in subparser._actions:
        assert action.help, f"{action.option_strings} has no help"
        for option in action.option_strings:
            assert option in text


def _read_csv(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


@pytest.mark.integration
def test_run_tiny(tmp_path, capsys):
    out = tmp_path / "run"
    assert _cli.main(["run", *TINY_SIMULATED, "--eps", "0", "0.8", "--fractions", "0.5", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["eps"] for r in results["sweep"]] == [0.0, 0.8]
    methods = {r["method"] for r in results["matched"]}
    assert methods == {
        "merge_or_remove (refit)",
        "lump + refit",
        "magnitude",
        "magnitude + reconstruction",
        "structured_prune + reconstruction",
    }
    for row in results["matched"]:
        assert "error" in row or row["percent"] <= 50.0
        assert row["reconstructed"] == (row["method"] != "magnitude"), row["method"]
    assert len(_read_csv(out / "results.csv")) == 2 + 5
    assert (out / "size_vs_error.png").stat().st_size > 0
    assert "test_mse" in capsys.readouterr().out


def test_run_plot_labels_eps_and_shows_reconstructed_baselines(tmp_path):
    fig, ax = _cli_jobs._figure()
    points = [(0.0, 100.0, 1.0), (0.3, 100.0, 1.0), (0.5, 50.0, 2.0), (0.9, 20.0, 4.0)]
    _cli_jobs._plot_eps_line(ax, [{"eps": e, "percent": p, "test_mse": m} for e, p, m in points])
    rows = [
        {"method": m, "compressor": "magnitude", "reconstructed": r, "percent": 50.0, "test_mse": 3.0}
        for m, r in (("magnitude", False), ("magnitude + reconstruction", True))
    ]
    _cli_jobs._plot_matched(ax, rows)
    _cli_jobs._save_figure(fig, ax, tmp_path / "plot.png", "title", 1.0)
    # identical points (ε = 0 and 0.3 here) share one label
    assert sorted(t.get_text() for t in ax.texts) == ["ε=0.5", "ε=0.9", "ε=0…0.3"]
    assert {line.get_label() for line in ax.lines} >= {"lump (ε sweep)", "magnitude", "magnitude + reconstruction"}


def test_matched_plot_fills_what_the_rows_say_is_reconstructed():
    """The fill comes from each row's `reconstructed`, not from its label: `merge_or_remove (refit)` (always
    refitted, no '+' in its label) was drawn hollow and dotted, the docs' sign of "not reconstructed"."""
    runs = [("merge_or_remove", True, True), ("lump", True, True), ("lump", False, False),
            ("magnitude", False, False), ("magnitude", True, True), ("lump_then_select", False, True)]  # fmt: skip
    rows = [
        {
            "method": _cli_jobs._label(name, recon),
            "compressor": name,
            "reconstructed": flag,
            "percent": p,
            "test_mse": 1.0 + i,
        }
        for i, (name, recon, flag) in enumerate(runs)
        for p in (35.0, 60.0)
    ]
    _, ax = _cli_jobs._figure()
    _cli_jobs._plot_matched(ax, rows)
    for name, recon, flag in runs:
        (line,) = [line for line in ax.lines if line.get_label() == _cli_jobs._label(name, recon)]
        drawn = (line.get_markerfacecolor() != "none", line.get_linestyle())
        assert drawn == ((True, "--") if flag else (False, ":")), (name, recon)
    # the job's rows carry the flag: always-refitting methods are reconstructed whatever `reconstruct` says
    assert [_cli_jobs._reconstructed(name, recon) for name, recon, _ in runs] == [flag for *_, flag in runs]


def test_bench_plot_draws_the_rows_and_their_deviation_from_the_original(tmp_path):
    """Left: each curve is its rows' test MSE; right: their calibration RMS deviation from the original, which
    separates reconstructed results that a noisy data set's test MSE puts all on the original's line (abalone: all
    within 4 % of 0.400, deviations 0.005-0.16, measured at 813be88). One colour per compressor, never the
    original's grey nor the ε sweep's C0 (the eleven curves of the default bench cycled through C1...C11: C7 was
    the original's grey and C11 repeated C1)."""
    names = ["merge_or_remove", "lump", "obs_prune", "structured_prune", "magnitude", "wanda", "fold", "zipit", "flap"]
    runs = [(n, r) for n in names for r in ((True,) if n == "merge_or_remove" else (False, True))]
    rows = [
        {"method": _cli_jobs._label(n, r), "compressor": n, "reconstructed": _cli_jobs._reconstructed(n, r),
         "percent": p, "test_mse": 0.4 + 0.01 * i + p / 1e3, "calib_rms": 0.1 * (i + 1) + p / 1e4}
        for i, (n, r) in enumerate(runs)
        for p in (15.0, 35.0, 60.0)
    ]  # fmt: skip
    rows.append({"method": "flap", "compressor": "flap", "reconstructed": False, "requested": 0.1, "error": "x"})
    _cli_jobs._plot_bench(rows, {"test_mse": 0.4}, tmp_path / "bench.png", "title")
    fig = matplotlib.pyplot.gcf()
    left, right = fig.axes
    colours = {}
    for ax, y in ((left, "test_mse"), (right, "calib_rms")):
        for line in ax.lines:
            if line.get_label() == "original":
                continue
            drawn = [r for r in rows if r["method"] == line.get_label() and "error" not in r]
            assert line.get_xdata().tolist() == [r["percent"] for r in drawn]
            assert line.get_ydata().tolist() == [r[y] for r in drawn]
            colours.setdefault(drawn[0]["compressor"], set()).add((line.get_color(), line.get_marker()))
    assert len({line.get_label() for line in right.lines}) == len({r["method"] for r in rows}) == 17
    assert all(len(c) == 1 for c in colours.values()) and len(set.union(*colours.values())) == len(names)
    assert not {c for c, _ in set.union(*colours.values())} & {"C0", "C7", "grey"}
    assert (tmp_path / "bench.png").stat().st_size > 0


def test_main_job_eps_labels_do_not_overlap(tmp_path):
    """The main job's ε = 0…0.5 sit at 93–100 % of the size with nearly equal MSE: their labels piled into a smear.
    Only labels that overlap no other are kept, both ends of the curve always."""
    eps = [0.0, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7, 0.8, 0.9, 1.0]
    percent = [100.0, 100.0, 99.1, 97.2, 95.0, 93.0, 89.0, 84.6, 51.6, 18.7, 10.5, 6.3]
    mse = [7.84e-3, 7.84e-3, 7.8e-3, 7.7e-3, 7.5e-3, 7.31e-3, 8.0e-3, 8.66e-3, 2.27e-2, 6.59e-2, 0.304, 0.445]
    fig, ax = _cli_jobs._figure()
    _cli_jobs._plot_eps_line(ax, [{"eps": e, "percent": p, "test_mse": m} for e, p, m in zip(eps, percent, mse)])
    _cli_jobs._save_figure(fig, ax, tmp_path / "plot.png", "title", 7.84e-3)
    texts = [t.get_text() for t in ax.texts]
    assert "ε=0…0.3" in texts and "ε=1" in texts and 3 <= len(texts) < len(eps) - 1, texts
    renderer = fig.canvas.get_renderer()  # at the figure's dpi (a text caches the renderer of the last savefig)
    boxes = [text.get_window_extent(renderer) for text in ax.texts]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[:i]), texts


@pytest.mark.integration
def test_compress_tiny_saves_a_loadable_model(tmp_path):
    out = tmp_path / "compress"
    argv = ["compress", "--data", "abalone", *TINY, "--method", "magnitude", "--target", "0.5", "--reconstruct"]
    assert _cli.main([*argv, "--out", str(out)]) == 0
    result = json.loads((out / "compress.json").read_text())["result"]
    assert result["method"] == "magnitude + reconstruction" and result["requested"] == 0.5
    original = json.loads((out / "compress.json").read_text())["original"]
    assert result["nonzeros"] <= 0.5 * original["params"]
    loaded = jaxlump.load(out / "model.npz")
    assert int(jaxlump.cost(loaded).nonzeros) == result["nonzeros"]
    assert (out / "predictions.png").exists() and len(_read_csv(out / "compress.csv")) == 1


@pytest.mark.integration
def test_compress_defaults_to_merge_or_remove(tmp_path):
    out = tmp_path / "default"
    assert _cli.main(["compress", "--data", "abalone", *TINY, "--target", "0.5", "--out", str(out)]) == 0
    payload = json.loads((out / "compress.json").read_text())
    assert payload["result"]["method"] == "merge_or_remove (refit)"
    assert payload["result"]["params"] <= 0.5 * payload["original"]["params"]
    assert int(jaxlump.cost(jaxlump.load(out / "model.npz")).dense_params) == payload["result"]["params"]


@pytest.mark.integration
def test_compress_to_widths(tmp_path):
    out = tmp_path / "widths"
    argv = ["compress", "--data", "abalone", *TINY, "--method", "structured_prune", "--target", "3,3"]
    assert _cli.main([*argv, "--out", str(out)]) == 0
    result = json.loads((out / "compress.json").read_text())["result"]
    assert result["widths"][1:-1] == [3, 3] and result["requested"] == [3, 3]


@pytest.mark.integration
@pytest.mark.parametrize("method", ["lump", "merge_or_remove"])
def test_compress_to_unequal_widths_meets_each_layer(tmp_path, method):
    # docs/cli.md's `--method lump --target 16,16`, at the tiny width: each layer within one neuron of its target
    out = tmp_path / method
    argv = ["compress", "--data", "abalone", *TINY, "--method", method, "--target", "6,2"]
    assert _cli.main([*argv, "--out", str(out)]) == 0
    result = json.loads((out / "compress.json").read_text())["result"]
    assert result["requested"] == [6, 2] and 5 <= result["widths"][1] <= 6 and 1 <= result["widths"][2] <= 2
    assert len(result["knob"]) == 2  # one knob per hidden layer


@pytest.mark.integration
def test_sweep_tiny(tmp_path):
    out = tmp_path / "sweep"
    argv = ["sweep", "--data", "abalone", *TINY, "--eps", "0", "0.5", "2", "--max-error", "1e9"]
    assert _cli.main([*argv, "--out", str(out)]) == 0
    payload = json.loads((out / "sweep.json").read_text())
    assert [r["eps"] for r in payload["sweep"]] == [0.0, 0.5, 2.0]
    # a budget every ε meets: the smallest model of the grid is chosen
    assert payload["chosen"]["params"] == min(r["params"] for r in payload["sweep"])
    assert len(_read_csv(out / "sweep.csv")) == 3 and (out / "sweep.png").exists()


@pytest.mark.integration
def test_sweep_budget_chooses_what_the_api_chooses(monkeypatch, tmp_path, capsys):
    """`jaxlump sweep --max-error b [--error e]` reports the model `Sweep.smallest_within(b, error=e)` returns, with
    the same default `e` (the command once bounded the calibration RMS where the API bounds the largest |error|)."""
    model = random_mlp(jr.key(0), (3, 12, 12, 2))  # the network and data of tests/test_sweep.py
    x = np.asarray(jr.normal(jr.key(200), (48, 3)))
    data = types.SimpleNamespace(x_test=x[:8], y_test=np.zeros((8, 2)))
    monkeypatch.setattr(_cli_jobs, "problem", lambda args, data_name: (model, data, x))
    grid = ["0", "0.05", "0.2", "0.4", "0.7", "1", "1.5", "3"]
    api = jaxlump.sweep(model, x, [float(e) for e in grid])
    size, rms, largest = np.asarray(api.dense_params), api.errors("output_rms"), api.errors("output_max_abs")
    assert api.successful.all()
    # a budget that the two errors read differently: the RMS admits a smaller model than the largest |error|
    budget = next(b for b in np.unique(rms) if size[rms <= b].min() < size[largest <= b].min())
    for option, error in [([], "output_max_abs"), (["--error", "output_rms"], "output_rms")]:
        out = tmp_path / error
        argv = ["sweep", "--no-progress", "--eps", *grid, "--max-error", repr(float(budget)), *option]
        assert _cli.main([*argv, "--out", str(out)]) == 0
        payload = json.loads((out / "sweep.json").read_text())
        _, info = api.smallest_within(budget, error=error)
        chosen = payload["chosen"]
        assert (chosen["params"], chosen["eps"]) == (int(info.cost_after.dense_params), float(info.knob)), error
        assert payload["budget"] == {"error": error, "max_error": float(budget)}
        assert chosen[error] <= budget and f"Smallest within {error} <= " in capsys.readouterr().out
        assert [r[error] for r in payload["sweep"]] == api.errors(error).tolist()
    assert size[largest <= budget].min() > size.min()  # the budget binds


def test_sweep_error_option_is_the_apis():
    options = {a.dest: a for a in _cli.parser()._subparsers._group_actions[0].choices["sweep"]._actions}
    signature = inspect.signature(jaxlump.Sweep.smallest_within).parameters
    assert options["error"].default == signature["error"].default == "output_max_abs"
    assert set(options["error"].choices) == set(jaxlump.Certificate.__dataclass_fields__)


@pytest.mark.integration
def test_bench_tiny(tmp_path):
    out = tmp_path / "bench"
    argv = ["bench", "--data", "abalone", *TINY, "--methods", "magnitude", "structured_prune", "--fractions", "0.5"]
    assert _cli.main([*argv, "--out", str(out)]) == 0
    rows = json.loads((out / "bench.json").read_text())["rows"]
    assert [r["method"] for r in rows] == [
        "magnitude",
        "magnitude + reconstruction",
        "structured_prune",
        "structured_prune + reconstruction",
    ]
    assert all(r["percent"] <= 50.0 for r in rows) and (out / "bench.png").exists()
    # the reconstruction is applied: each reconstructed result is closer to the original than the plain one
    plain, refit = rows[0::2], rows[1::2]
    assert [r["reconstructed"] for r in rows] == [False, True] * 2
    assert all(b["calib_rms"] < a["calib_rms"] and a["compressor"] == b["compressor"] for a, b in zip(plain, refit))
