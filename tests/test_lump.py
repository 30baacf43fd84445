"""`lump`, `lump_masked` and `shrink` against planted structure, a NumPy reference and the API contract.

Compilation dominates the run time (each new shape or option set compiles the pipeline anew), so most
tests share one shape, `WIDTHS`, and hypothesis varies the planted groups and seeds, not the shapes.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from _networks import (
    build,
    hidden_widths,
    numpy_outputs,
    outputs,
    parameters,
    planted_mlp,
    random_mlp,
    set_partition,
)
from hypothesis import example, given, settings
from hypothesis import strategies as st

import jaxlump

WIDTHS = (3, 8, 8, 2)
X = np.asarray(jr.normal(jr.key(100), (64, 3)))
X_TEST = np.asarray(jr.normal(jr.key(101), (40, 3)))
SEEDS = st.integers(0, 2**20)
GROUPS = st.tuples(st.integers(1, 8), st.integers(1, 8))


def slow(value):
    return pytest.param(value, marks=pytest.mark.slow)


def lump(model, x, eps, **options):
    """`jaxlump.lump` without the ODE certificate (it compiles a diffrax solve; tested once below)."""
    return jaxlump.lump(model, x, eps, certify_ode=False, **options)


def max_deviation(a, b, x=X_TEST) -> float:
    return float(np.max(np.abs(numpy_outputs(a, x) - numpy_outputs(b, x))))


def partitions_of(info):
    return [set_partition(p) for p in info.partitions]


@pytest.mark.parametrize("activation", ["tanh", slow("sigmoid"), slow("relu"), slow("identity")])
@pytest.mark.parametrize("refit, with_data", [(False, False), (False, True), (True, True)])
@settings(max_examples=8)
@given(groups=GROUPS, seed=SEEDS, kind=st.sampled_from(["mlp", "sequential"]))
def test_eps_zero_recovers_planted_groups_exactly(activation, refit, with_data, groups, seed, kind):
    model, planted = planted_mlp(jr.key(seed), WIDTHS, groups, activation, kind=kind)
    small, info = lump(model, X if with_data else None, 0.0, reconstruct=refit)
    assert partitions_of(info) == [set_partition(p) for p in planted]
    assert hidden_widths(small) == groups
    assert max_deviation(small, model) <= 1e-10


@settings(max_examples=8)
@given(groups=GROUPS, seed=SEEDS)
def test_small_eps_recovers_near_duplicates(groups, seed):
    model, planted = planted_mlp(jr.key(seed), WIDTHS, groups, "tanh", noise=1e-6, kind="sequential")
    exact, _ = lump(model, None, 0.0)
    assert hidden_widths(exact) == WIDTHS[1:-1]  # the noise broke every exact tie
    small, info = lump(model, X, 1e-3)
    assert partitions_of(info) == [set_partition(p) for p in planted]
    assert max_deviation(small, model) <= 1e-4


EPS_GRID = (0.0, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0, 1.3, 1.7, 2.5)


def widths_along_grid(model, refinement):
    return np.array([hidden_widths(lump(model, None, e, refinement=refinement)[0]) for e in EPS_GRID])


@settings(max_examples=6)
@given(seed=SEEDS)
def test_components_never_grows_with_eps(seed):
    widths = widths_along_grid(random_mlp(jr.key(seed), WIDTHS), jaxlump.Components())
    assert np.all(np.diff(widths, axis=0) <= 0), widths  # per layer, hence in total
    assert widths[0].tolist() == list(WIDTHS[1:-1]) and widths[-1].sum() < widths[0].sum()


def permuted(model, perms):
    """The same network with hidden neurons reordered: new neuron i of layer l is old neuron perms[l][i]."""
    weights, biases = parameters(model)
    orders = [np.arange(WIDTHS[0]), *perms, np.arange(WIDTHS[-1])]
    weights = [w[np.ix_(orders[l + 1], orders[l])] for l, w in enumerate(weights)]
    biases = [b[orders[l + 1]] for l, b in enumerate(biases)]
    return build(WIDTHS, weights, biases, "tanh", "mlp")


@settings(max_examples=8)
@given(seed=SEEDS, eps=st.floats(0.3, 1.2), refit=st.booleans())
def test_invariant_to_permuting_hidden_neurons(seed, eps, refit):
    keys = jr.split(jr.key(seed), 3)
    model = random_mlp(keys[0], WIDTHS, kind="mlp")
    perms = [np.asarray(jr.permutation(k, n)) for k, n in zip(keys[1:], WIDTHS[1:-1])]
    small, info = lump(model, X, eps, reconstruct=refit)
    small_p, info_p = lump(permuted(model, perms), X, eps, reconstruct=refit)
    assert hidden_widths(small_p) == hidden_widths(small)
    assert max_deviation(small_p, small) <= 1e-10
    for perm, blocks, blocks_p in zip(perms, partitions_of(info), partitions_of(info_p)):
        assert blocks_p == frozenset(frozenset(np.argsort(perm)[sorted(b)].tolist()) for b in blocks)


@pytest.mark.parametrize("refit", [False, True])
@settings(max_examples=6)
@given(seed=SEEDS, eps=st.floats(0.0, 1.5))
def test_lump_equals_shrink_of_lump_masked(refit, seed, eps):
    model = random_mlp(jr.key(seed), WIDTHS)
    small, info = lump(model, X, eps, reconstruct=refit)
    masked, masked_info = jaxlump.lump_masked(model, X, eps, reconstruct=refit)
    assert hidden_widths(masked) == WIDTHS[1:-1]
    assert max_deviation(masked, model, X) == pytest.approx(float(masked_info.certificate.output_max_abs), abs=1e-12)
    shrunk, shrunk_info = jaxlump.shrink(masked, masked_info)
    assert hidden_widths(shrunk) == hidden_widths(small) == tuple(np.asarray(info.widths_after[1:-1]).tolist())
    assert max_deviation(shrunk, small) <= 1e-10 and max_deviation(masked, small) <= 1e-10
    assert partitions_of(shrunk_info) == partitions_of(masked_info) == partitions_of(info)


def numpy_structural_lump(weights, biases, eps):
    """The structural pipeline without refit, written independently: returns (labels, reduced weights, biases)."""
    labels, previous = [], np.arange(weights[0].shape[1])
    for l in range(len(weights) - 1):
        w, b = weights[l], biases[l]
        one_hot = (previous[:, None] == np.arange(w.shape[1])[None, :]).astype(float)
        features = np.concatenate([w @ one_hot, b[:, None]], axis=1)
        distances = np.abs(features[:, None, :] - features[None, :, :]).sum(-1)
        relative = distances / np.mean(np.abs(w).sum(1) + np.abs(b))
        importance = np.abs(weights[l + 1]).sum(0)
        representatives, current = [], np.arange(w.shape[0])
        for i in np.argsort(-importance, kind="stable"):
            home = next((r for r in representatives if relative[i, r] <= eps), None)
            if home is None:
                representatives.append(i)
            else:
                current[i] = home
        labels.append(current)
        previous = current
    all_labels = [np.arange(weights[0].shape[1]), *labels, np.arange(weights[-1].shape[0])]
    blocks = [[layer == r for r in np.unique(layer)] for layer in all_labels]
    reduced_w = [
        np.array([[w[h][:, s].sum(1).mean() for s in blocks[l]] for h in blocks[l + 1]]) for l, w in enumerate(weights)
    ]
    reduced_b = [np.array([b[h].mean() for h in blocks[l + 1]]) for l, b in enumerate(biases)]
    return labels, reduced_w, reduced_b


def test_matches_numpy_reference_pipeline():
    model = random_mlp(jr.key(7), WIDTHS)
    sizes = set()
    for eps in (0.5, 0.7, 0.8, 0.9, 1.1, 1.5, 2.0):
        small, info = jaxlump.lump(model, None, eps, reconstruct=False)
        labels, reduced_w, reduced_b = numpy_structural_lump(*parameters(model), eps)
        assert partitions_of(info) == [set_partition(p) for p in labels]
        weights, biases = parameters(small)
        assert [w.shape for w in weights] == [w.shape for w in reduced_w]
        for got, want in zip(weights + biases, reduced_w + reduced_b):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
        sizes.add(tuple(w.shape[0] for w in reduced_w[:-1]))
    assert len(sizes) >= 6  # the grid merges more and more


def test_filter_jit_compiles_once_for_many_eps():
    model = random_mlp(jr.key(3), WIDTHS, kind="mlp")
    step = eqx.filter_jit(eqx.debug.assert_max_traces(lambda m, e: jaxlump.lump_masked(m, X, e), max_traces=1))
    for eps in (0.0, 0.4, 0.9, 1.6):
        masked, info = step(model, jnp.asarray(eps))
        eager, eager_info = jaxlump.lump_masked(model, X, eps)
        assert partitions_of(info) == partitions_of(eager_info)
        assert max_deviation(masked, eager) <= 1e-10
    with pytest.raises(eqx.EquinoxRuntimeError, match="eps"):
        step(model, jnp.asarray(-1.0))


@pytest.mark.integration  # heavy (10–16 s on 2 cores, large compiles): the second test step keeps step 1 near 10 min
def test_vmap_over_eps_grid_matches_a_loop():
    model = random_mlp(jr.key(4), WIDTHS)
    grid = jnp.asarray([0.0, 0.3, 0.7, 1.1, 2.0])

    def summary(eps):
        masked, info = jaxlump.lump_masked(model, X, eps)
        return jax.vmap(masked)(jnp.asarray(X_TEST)), info.partitions, info.widths_after

    batched = jax.vmap(summary)(grid)
    for i, eps in enumerate(grid):
        looped = summary(eps)
        np.testing.assert_allclose(batched[0][i], looped[0], rtol=0, atol=1e-10)
        for p_batched, p_looped in zip(batched[1], looped[1]):
            np.testing.assert_array_equal(p_batched[i], p_looped)
        np.testing.assert_array_equal(batched[2][i], looped[2])
    assert len({tuple(np.asarray(w).tolist()) for w in batched[2]}) > 2  # the grid gives different sizes


@pytest.mark.parametrize(
    "kind, groups, expected",
    [("mlp", (4, 4), jaxlump.LumpedMLP), ("mlp", (3, 5), jaxlump.LumpedMLP), ("sequential", (3, 5), eqx.nn.Sequential)],
)
def test_result_type_purity_and_determinism(kind, groups, expected):
    model, _ = planted_mlp(jr.key(11), WIDTHS, groups, kind=kind)
    before = [np.array(leaf) for leaf in jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array))]
    small, info = lump(model, X, 0.0)
    again, info_again = lump(model, X, 0.0)
    assert type(small) is expected and hidden_widths(small) == groups  # the type does not depend on the widths
    after = jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array))
    assert len(after) == len(before) and all(np.array_equal(a, b) for a, b in zip(after, before))
    arrays = jax.tree_util.tree_leaves(eqx.filter((small, info), eqx.is_array))
    arrays_again = jax.tree_util.tree_leaves(eqx.filter((again, info_again), eqx.is_array))
    assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(arrays, arrays_again))
    np.testing.assert_allclose(outputs(small, X_TEST), numpy_outputs(small, X_TEST), rtol=0, atol=1e-12)


def dense_parameter_count(widths):
    return sum(n_in * n_out + n_out for n_in, n_out in zip(widths[:-1], widths[1:]))


def measured_deviation(small, model):
    return numpy_outputs(small, X) - numpy_outputs(model, X)


def test_info_is_consistent_with_the_model():
    model = random_mlp(jr.key(5), WIDTHS)
    small, info = lump(model, X, 0.7)
    widths = (WIDTHS[0], *hidden_widths(small), WIDTHS[-1])
    assert np.asarray(info.widths_after).tolist() == list(widths) and info.widths_before == WIDTHS
    assert int(info.cost_after.dense_params) == dense_parameter_count(widths) < dense_parameter_count(WIDTHS)
    assert int(info.cost_before.dense_params) == dense_parameter_count(WIDTHS)
    assert float(info.percent_of_original) == pytest.approx(
        100 * dense_parameter_count(widths) / dense_parameter_count(WIDTHS)
    )
    assert float(info.parameter_reduction) == pytest.approx(100 - float(info.percent_of_original))
    assert info.result == jaxlump.RESULTS.successful and float(info.knob) == 0.7
    deviation = measured_deviation(small, model)
    certificate = info.certificate
    assert float(certificate.output_max_abs) == pytest.approx(np.max(np.abs(deviation)), rel=1e-9)
    assert float(certificate.output_rms) == pytest.approx(np.sqrt(np.mean(deviation**2)), rel=1e-9)
    assert float(certificate.a_priori_bound) >= np.max(np.linalg.norm(deviation, axis=1)) > 0
    assert np.isnan(float(certificate.ode_max_abs))  # not requested
    _, data_free = lump(model, None, 0.7)
    assert all(np.isnan(float(v)) for v in jax.tree_util.tree_leaves(data_free.certificate))


@pytest.mark.slow
def test_ode_certificate_is_finite_and_reaches_the_measured_deviation():
    model = random_mlp(jr.key(5), WIDTHS)
    small, info = jaxlump.lump(model, X, 0.7)  # the default simulates both ODE encodings
    assert all(np.isfinite(float(v)) for v in jax.tree_util.tree_leaves(info.certificate))
    # the homotopy ends at the network itself, so the ODE deviation reaches the first 32 inputs' deviation
    assert float(info.certificate.ode_max_abs) >= np.max(np.abs(measured_deviation(small, model)[:32])) - 1e-6


def _mlp(activation=jnp.tanh):
    return eqx.nn.MLP(3, 2, 8, 2, activation=activation, key=jr.key(0))


def _with_weight(value):
    model = _mlp()
    return eqx.tree_at(lambda m: m.layers[1].weight, model, model.layers[1].weight.at[0, 0].set(value))


BAD_INPUTS = [
    ({"eps": -0.1}, ValueError, "eps"),
    ({"eps": float("nan")}, ValueError, "eps"),
    ({"eps": "0.1"}, TypeError, "eps"),
    ({"model": _with_weight(np.nan)}, ValueError, "model layer 1 weight"),
    ({"model": _with_weight(np.inf)}, ValueError, "model layer 1 weight"),
    ({"x_calib": np.where(np.arange(3) == 1, np.nan, X)}, ValueError, "x_calib"),
    ({"x_calib": np.where(np.arange(3) == 1, -np.inf, X)}, ValueError, "x_calib"),
    ({"x_calib": X[:, :2]}, ValueError, "x_calib"),
    ({"x_calib": np.zeros((0, 3))}, ValueError, "x_calib"),
    ({"x_calib": X[0]}, ValueError, "x_calib"),
    ({"model": eqx.nn.LayerNorm(3)}, TypeError, "model"),
    ({"model": eqx.nn.Sequential([eqx.nn.Linear(3, 2, key=jr.key(0)), eqx.nn.Dropout(0.5)])}, TypeError, "Dropout"),
    ({"model": _mlp(jax.nn.mish)}, TypeError, "activation"),
    ({"x_calib": None, "discrepancy": jaxlump.Dynamical()}, ValueError, "x_calib"),
    ({"refinement": "closest"}, TypeError, "refinement"),
    ({"ridge": -1.0}, ValueError, "ridge"),
]


@pytest.mark.parametrize("function", [jaxlump.lump, jaxlump.lump_masked])
@pytest.mark.parametrize("bad, error, name", BAD_INPUTS)
def test_bad_input_is_refused_naming_the_argument(function, bad, error, name):
    arguments = {"model": _mlp(), "x_calib": X, "eps": 0.1} | bad
    with pytest.raises(error, match=name):
        function(arguments.pop("model"), arguments.pop("x_calib"), arguments.pop("eps"), **arguments)


@pytest.mark.parametrize("split", [False, True])
@settings(max_examples=4)
@given(groups=GROUPS, seed=SEEDS)
@example(groups=(1, 1), seed=1)  # one block per layer: every layer-2 neuron must join it
def test_dynamical_discrepancy_recovers_planted_groups(split, groups, seed):
    """`split=True` plants duplicates whose incoming rows differ but sum equally over each previous group."""
    model, planted = planted_mlp(jr.key(seed), WIDTHS, groups, "tanh", split=split)
    small, info = lump(model, X, 0.0, discrepancy=jaxlump.Dynamical())
    assert partitions_of(info) == [set_partition(p) for p in planted]
    assert max_deviation(small, model) <= 1e-10


def test_eps_zero_is_exact_in_a_badly_scaled_layer():
    """The rounding floor is per pair: two small neurons that differ are not merged because a huge one sets the
    layer's scale (with a floor relative to the layer, neurons 1 and 2 merged and the output changed by ~100 %)."""
    w1 = np.array([[1e17, 1e17, 1e17], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.25]])
    weights, biases = parameters(random_mlp(jr.key(9), (3, 4, 4, 2)))
    model = build((3, 4, 4, 2), [w1, *weights[1:]], [np.zeros(4), *biases[1:]], "tanh", "sequential")
    for refit in (False, True):
        small, info = lump(model, X, 0.0, reconstruct=refit)
        assert hidden_widths(small) == (4, 4) and max_deviation(small, model) <= 1e-12
    small, _ = lump(model, X, 1e-12, reconstruct=False)  # relative to the layer, the pair is still within 1e-12
    assert hidden_widths(small)[0] < 4


def test_neuron_with_zero_outgoing_column_is_removed_exactly_at_any_eps():
    weights, biases = parameters(random_mlp(jr.key(12), WIDTHS))
    weights = [np.array(w) for w in weights]
    weights[1][:, 2] = 0.0  # layer-1 neuron 2 feeds nothing
    weights[2][:, 5] = 0.0  # layer-2 neuron 5 feeds nothing: its incoming weights are irrelevant
    model = build(WIDTHS, weights, biases, "tanh", "sequential")
    for eps in (0.0, 0.4, np.inf):
        small, info = lump(model, X, eps, reconstruct=False)
        _, masked_info = jaxlump.lump_masked(model, X, eps, reconstruct=False)
        assert int(info.partitions[0][2]) == int(masked_info.partitions[0][2]) == -1
        assert int(info.partitions[1][5]) == int(masked_info.partitions[1][5]) == -1
        assert 2 not in np.asarray(masked_info.partitions[0]) and 5 not in np.asarray(masked_info.partitions[1])
        if eps == 0.0:
            assert hidden_widths(small) == (7, 7) and max_deviation(small, model) <= 1e-12
        if eps == np.inf:
            assert hidden_widths(small) == (1, 1)


@pytest.mark.parametrize("refit", [False, True])
def test_lumping_a_masked_result_again_keeps_no_zero_neuron(refit):
    """The masked form's unused neurons have zero outgoing columns, so lumping it again removes them."""
    model = random_mlp(jr.key(13), WIDTHS)
    masked, info = jaxlump.lump_masked(model, X, 1.0, reconstruct=refit)
    widths = tuple(np.asarray(info.widths_after[1:-1]).tolist())
    assert widths != WIDTHS[1:-1]
    again, again_info = lump(masked, X, 0.0, reconstruct=refit)
    assert hidden_widths(again) == widths
    assert max_deviation(again, masked) <= 1e-10
