"""`jaxlump.sweep` against single `lump_masked` calls, sharded against one device, and its pickers."""

import textwrap

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
import pytest
from _devices import on_host_devices
from _networks import hidden_widths, numpy_outputs, random_mlp

import jaxlump
from jaxlump._sweep import _sweep_core, sweep_to_size

WIDTHS = (3, 12, 12, 2)
X = np.asarray(jr.normal(jr.key(200), (48, 3)))
GRID = (0.0, 0.05, 0.2, 0.4, 0.7, 1.0, 1.5, 3.0)


@pytest.fixture(scope="module")
def default_sweep():
    """One sweep with the default options, shared by the tests that only read it (compiling is the cost)."""
    model = random_mlp(jr.key(0), WIDTHS)
    return model, jaxlump.sweep(model, X, GRID)


def assert_slices_match_single_calls(model, x, grid, atol, result=None, **options):
    result = jaxlump.sweep(model, x, grid, **options) if result is None else result
    assert len(result) == len(grid) and result.widths.shape == (len(grid), len(WIDTHS))
    for i, eps in enumerate(grid):
        masked, info = result.at(i)
        single, single_info = jaxlump.lump_masked(model, x, eps, **options)
        for got, want in zip(info.partitions, single_info.partitions):
            np.testing.assert_array_equal(got, want)
        np.testing.assert_allclose(numpy_outputs(masked, X), numpy_outputs(single, X), rtol=0, atol=atol)
        assert np.asarray(info.widths_after).tolist() == np.asarray(single_info.widths_after).tolist()
        assert int(info.cost_after.dense_params) == int(single_info.cost_after.dense_params)
        assert float(info.knob) == float(single_info.knob) == eps
        assert info.result == single_info.result
        np.testing.assert_allclose(
            float(info.certificate.output_max_abs), float(single_info.certificate.output_max_abs), rtol=1e-6, atol=atol
        )
    assert len({tuple(np.asarray(w).tolist()) for w in result.widths}) >= 3  # the grid really merges
    return result


def test_each_slice_equals_lump_masked(default_sweep):
    model, result = default_sweep
    assert_slices_match_single_calls(model, X, GRID, 1e-10, result=result)
    assert_slices_match_single_calls(random_mlp(jr.key(1), WIDTHS), X, GRID, 1e-10)  # compiled: same shapes


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"refinement": jaxlump.Components()}, marks=pytest.mark.slow),
        pytest.param({"reconstruct": False}, marks=pytest.mark.slow),
        pytest.param({"discrepancy": jaxlump.Dynamical(times=(0.5, 1.0), max_inputs=16)}, marks=pytest.mark.slow),
    ],
    ids=["components", "structural-quotient", "dynamical"],
)
def test_each_slice_equals_lump_masked_with_options(options):
    assert_slices_match_single_calls(random_mlp(jr.key(2), WIDTHS), X, GRID, 1e-10, **options)


@pytest.mark.integration  # heavy (10–16 s on 2 cores, large compiles): the second test step keeps step 1 near 10 min
def test_float32_slices_equal_lump_masked():
    model = eqx.nn.MLP(3, 2, 12, 2, activation=jnp.tanh, dtype=jnp.float32, key=jr.key(3))
    result = assert_slices_match_single_calls(model, X.astype(np.float32), GRID, 1e-6)
    assert result.models.layers[0].weight.dtype == jnp.float32


def test_any_grid_length_and_no_recompile_for_a_new_grid_of_the_same_length(default_sweep):
    model = random_mlp(jr.key(4), WIDTHS)
    before = eqx.debug.get_num_traces(_sweep_core)
    first = jaxlump.sweep(model, X, np.linspace(0.0, 2.0, len(GRID)))
    second = jaxlump.sweep(model, X, np.geomspace(0.01, 3.0, len(GRID)))
    assert eqx.debug.get_num_traces(_sweep_core) == before  # the fixture's sweep compiled this length already
    single = jaxlump.sweep(model, X, [float(second.eps_grid[3])])  # a new length compiles anew; length 1 works
    assert eqx.debug.get_num_traces(_sweep_core) == before + 1
    np.testing.assert_array_equal(single.widths[0], second.widths[3])
    assert first.eps_grid.tolist() == np.linspace(0.0, 2.0, len(GRID)).tolist()


def test_pickers_agree_with_the_figures(default_sweep):
    _, result = default_sweep
    sizes, errors = np.asarray(result.dense_params), result.errors("output_rms")
    assert result.successful.all() and result.results == [""] * len(GRID)
    limit = float(np.median(errors))
    small, info = result.smallest_within(limit, error="output_rms")
    assert int(info.cost_after.dense_params) == sizes[errors <= limit].min()
    assert float(info.certificate.output_rms) <= limit
    assert hidden_widths(small) == tuple(np.asarray(info.widths_after[1:-1]).tolist())
    target = int(np.mean(sizes))
    _, closest = result.closest_to(params=target)
    assert abs(int(closest.cost_after.dense_params) - target) == np.abs(sizes - target).min()
    with pytest.raises(ValueError, match="no ε"):
        result.smallest_within(-1.0)
    with pytest.raises(ValueError, match="error"):
        result.errors("mse")
    with pytest.raises(IndexError):
        result.at(len(GRID))


def test_plot_has_log_axes_and_eps_labels(default_sweep):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    _, result = default_sweep
    ax = result.plot()
    assert ax.get_xscale() == ax.get_yscale() == "log"
    labels = [t.get_text() for t in ax.texts]
    assert labels and all(t.startswith("ε=") for t in labels)
    assert len(ax.lines[0].get_xdata()) == int(np.sum(result.errors() > 0)) >= len(labels)


def test_plot_labels_a_readable_subset_of_64_eps(default_sweep):
    """64 ε (the fixture's 8 results, repeated 8 times on a finer grid: the curve crosses itself, the worst case
    for labels) gave 64 overlapping labels. Now: at most 12, no two overlapping, the curve's ends labelled."""
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    _, result = default_sweep

    def tile(leaf):
        return jnp.tile(leaf, (8,) + (1,) * (leaf.ndim - 1)) if eqx.is_array(leaf) else leaf

    repeated = jtu.tree_map(tile, (result.models, result.infos))
    grid = jnp.linspace(0.0, 3.0, 8 * len(GRID))
    ax = jaxlump.Sweep(grid, *repeated).plot()
    shown = np.flatnonzero(np.tile(result.errors() > 0, 8))
    assert len(ax.lines[0].get_xdata()) == len(shown) >= 32  # more points than labels allowed
    texts = [t.get_text() for t in ax.texts]
    assert 3 <= len(texts) <= 12, texts
    assert f"ε={float(grid[shown[0]]):.3g}" in texts and f"ε={float(grid[shown[-1]]):.3g}" in texts
    boxes = [t.get_window_extent(ax.figure.canvas.get_renderer()) for t in ax.texts]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[:i]), texts


@pytest.mark.parametrize(
    "grid, error, match",
    [([], ValueError, "eps_grid"), ([[0.1, 0.2]], ValueError, "eps_grid"), ([0.1, -1.0], ValueError, "eps_grid"),
     ([0.1, float("nan")], ValueError, "eps_grid"), ("abc", TypeError, "eps_grid"),
     ([True, False], TypeError, "eps_grid` must hold real numbers"),
     (np.array([0.1, 0.2 + 1j]), TypeError, "eps_grid` must hold real numbers")],
    ids=["empty", "2-d", "negative", "nan", "string", "bool", "complex"],
)  # fmt: skip
def test_bad_grid_is_refused(grid, error, match):
    with pytest.raises(error, match=match):
        jaxlump.sweep(random_mlp(jr.key(0), WIDTHS), X, grid)


@pytest.mark.parametrize("devices", [[], ["cpu"], 3], ids=["empty", "strings", "int"])
def test_bad_devices_are_refused(devices):
    with pytest.raises(TypeError, match="devices"):
        jaxlump.sweep(random_mlp(jr.key(0), WIDTHS), X, [0.1], devices=devices)


def test_sweep_to_size_returns_the_largest_result_within_the_target():
    model = random_mlp(jr.key(7), WIDTHS)
    full = int(jaxlump.cost(model).dense_params)
    for target in (full // 2, full // 4):
        small, info = sweep_to_size(model, X, target)
        size = int(info.cost_after.dense_params)
        assert size <= target and int(jaxlump.cost(small).dense_params) == size
        coarse = jaxlump.sweep(model, X, [0.0, *np.geomspace(1e-3, 10, 15)])
        sizes = np.asarray(coarse.dense_params)
        assert size >= sizes[sizes <= target].max()  # the refinement never does worse than the coarse grid
        again, _ = jaxlump.lump(model, X, float(info.knob), certify_ode=False)
        assert hidden_widths(again) == hidden_widths(small)
    with pytest.raises(ValueError, match="cannot reach"):
        sweep_to_size(model, X, 5)


_SHARDED = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    jax.config.update("jax_enable_x64", True)
    sys.path.insert(0, "tests")
    import jax.random as jr
    from _networks import random_mlp
    import jaxlump
    assert len(jax.devices()) == 8
    model = random_mlp(jr.key(8), (3, 12, 12, 2))
    x = np.asarray(jr.normal(jr.key(9), (48, 3)))
    grid = [0.0, 0.05, 0.2, 0.4, 0.7, 1.0, 1.5, 3.0, 0.3, 5.0, 0.1]  # 11: padded to 16
    out = {}
    for name, devices in (("sharded", None), ("one", jax.devices()[:1])):
        result = jaxlump.sweep(model, x, grid, devices=devices)
        out[name] = {
            "partitions": [np.asarray(p).tolist() for p in result.infos.partitions],
            "weights": [np.asarray(w).tolist() for w in jax.tree_util.tree_leaves(result.models)
                        if hasattr(w, "shape")],
            "error": np.asarray(result.certificate.output_max_abs).tolist(),
        }
    print(json.dumps(out))
    """
)


@pytest.mark.slow  # a fresh process compiling two programs: 15-70 s on the shared 2-core machine
def test_sharded_over_eight_host_devices_equals_one_device():
    out = on_host_devices(_SHARDED)
    assert out["sharded"]["partitions"] == out["one"]["partitions"]
    for got, want in zip(out["sharded"]["weights"], out["one"]["weights"]):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(out["sharded"]["error"], out["one"]["error"], rtol=0, atol=1e-12)
    assert len({tuple(map(tuple, p)) for p in zip(*out["one"]["partitions"])}) >= 3


@pytest.fixture(scope="module")
def data_free_sweep():
    return jaxlump.sweep(random_mlp(jr.key(0), WIDTHS), None, GRID[:3])


def test_labels_are_representatives_and_data_free_sweeps_work(default_sweep, data_free_sweep):
    _, result = default_sweep
    for labels in result.infos.partitions:
        for row in np.asarray(labels):
            assert np.all(row[row] == row)  # every label is a representative of itself
    data_free = data_free_sweep
    assert np.all(np.isnan(data_free.errors())) and data_free.successful.all()
    for got, want in zip(data_free.infos.partitions, result.infos.partitions):
        np.testing.assert_array_equal(got, want[:3])  # the structural partition does not need data


def test_data_free_sweep_refuses_to_choose_by_an_error_it_did_not_measure(data_free_sweep):
    with pytest.raises(ValueError, match="`output_max_abs` was not computed for this sweep"):
        data_free_sweep.smallest_within(1.0)
    _, info = data_free_sweep.at(1)
    summary = info.summary()
    assert "measured error not computed" in summary and "a-priori bound not computed" in summary
    assert "nan" not in summary
    small, _ = data_free_sweep.closest_to(params=10**6)  # by size it can still choose
    assert jaxlump.cost(small).dense_params > 0


@pytest.mark.parametrize("params", [0, -5, True, 2.5], ids=["zero", "negative", "bool", "float"])
def test_closest_to_refuses_a_bad_size(default_sweep, params):
    _, result = default_sweep
    with pytest.raises((TypeError, ValueError), match="`params` must be a positive integer"):
        result.closest_to(params=params)
