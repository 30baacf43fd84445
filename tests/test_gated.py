"""Gated layers (`σ(W_g a + b_g) ⊙ (W a + b)`, SwiGLU / GeGLU) in `DenseChain`, checked against independent truth:
a hand-written float64 NumPy gated FFN, planted duplicate units, NumPy least squares and exhaustive subset search.
"""

import itertools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxlump
from jaxlump import baselines
from jaxlump._criteria.discrepancy import Structural
from jaxlump._criteria.merge_cost import RefitAware, initial_state, layer_inputs, merge_costs
from jaxlump._model.activations import ACTIVATIONS
from jaxlump._model.network import DenseChain
from jaxlump._reconstruction.quotient import quotient
from jaxlump._reconstruction.reconstruct import reconstruct_chain

N0, N1, N2 = 6, 12, 5
_ERF = np.vectorize(math.erf)
NUMPY_SIGMA = {
    "silu": lambda z: z / (1 + np.exp(-z)),
    "tanh": np.tanh,
    "gelu": lambda z: 0.5 * z * (1 + _ERF(z / np.sqrt(2))),
}
_NO_GELU = pytest.mark.skipif("gelu" not in ACTIVATIONS, reason="the gelu activation is not built in")
GATES = ["silu", "tanh", pytest.param("gelu", marks=_NO_GELU)]


def parameters(seed=0, n1=N1, planted=True):
    """Float64 NumPy parameters `(W_g, b_g, W, b, W_down, b_down)`; with `planted`, unit 1 duplicates unit 0 (gate and
    up rows; the down column split 0.7/0.3, so the function is that of the network without unit 1) and unit 3
    shares only unit 2's gate row and bias (its up row differs)."""
    rng = np.random.default_rng(seed)
    g, gb = rng.standard_normal((n1, N0)), 0.1 * rng.standard_normal(n1)
    w, b = rng.standard_normal((n1, N0)), 0.1 * rng.standard_normal(n1)
    down, down_b = rng.standard_normal((N2, n1)), rng.standard_normal(N2)
    if planted:
        g[1], gb[1], w[1], b[1] = g[0], gb[0], w[0], b[0]
        down[:, 1], down[:, 0] = 0.3 * down[:, 0], 0.7 * down[:, 0]
        g[3], gb[3] = g[2], gb[2]
    return g, gb, w, b, down, down_b


def gated_chain(params, gate="silu", dtype=jnp.float64) -> DenseChain:
    g, gb, w, b, down, down_b = (jnp.asarray(p, dtype) for p in params)
    return DenseChain((w, down), (b, down_b), (gate, "identity"), (True, True), (g, None), (gb, None))


def numpy_ffn(params, x, gate="silu"):
    g, gb, w, b, down, down_b = params
    hidden = NUMPY_SIGMA[gate](x @ g.T + gb) * (x @ w.T + b)
    return hidden @ down.T + down_b, hidden


def data(n=64, seed=1):
    return np.random.default_rng(seed).standard_normal((n, N0))


@pytest.mark.parametrize("gate", GATES)
def test_gated_forward_is_the_numpy_gated_ffn(gate):
    params, x = parameters(), data()
    chain = gated_chain(params, gate)
    expected, hidden = numpy_ffn(params, x, gate)
    assert chain.gated == (True, False)
    np.testing.assert_allclose(np.asarray(chain(jnp.asarray(x))), expected, rtol=1e-12, atol=1e-12)
    zs, acts = chain.forward(jnp.asarray(x))
    z_gate, z_up = zs[0]
    np.testing.assert_allclose(np.asarray(z_gate), x @ params[0].T + params[1], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(z_up), x @ params[2].T + params[3], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(acts[1]), hidden, rtol=1e-12, atol=1e-12)


def test_positional_chain_has_no_gates_and_the_same_leaves():
    w1, b1, w2, b2 = jnp.ones((3, 2)), jnp.zeros(3), jnp.ones((1, 3)), jnp.zeros(1)
    chain = DenseChain((w1, w2), (b1, b2), ("tanh", "identity"), (True, True))
    assert chain.gated == (False, False) and not chain.is_gated
    assert chain.gate_weights == () and chain.gate_biases == ()
    assert len(jax.tree_util.tree_leaves(chain)) == 4


def test_bad_gates_are_refused():
    g, gb, w, b, down, down_b = (jnp.asarray(p) for p in parameters())
    base = ((w, down), (b, down_b), ("silu", "identity"), (True, True))
    with pytest.raises(ValueError, match="gate weight"):
        DenseChain(*base, (g[:, :-1], None), (gb, None))
    with pytest.raises(ValueError, match="output layer"):
        DenseChain(*base, (None, down), (None, down_b))
    with pytest.raises(ValueError, match="both be arrays or both None"):
        DenseChain(*base, (g, None), (None, None))
    with pytest.raises(ValueError, match="one entry per layer"):
        DenseChain(*base, (g,), (gb,))


def test_cost_counts_the_gate():
    chain = gated_chain(parameters())
    cost = jaxlump.cost(chain)
    assert int(cost.dense_params) == 2 * (N0 * N1 + N1) + N1 * N2 + N2
    assert int(cost.flops) == 2 * (2 * N0 * N1 + N1) + 2 * N1 * N2 + N2


def test_quotient_averages_gate_and_up_rows():
    params = parameters(planted=False)
    chain = gated_chain(params)
    labels = np.arange(N1)
    labels[[4, 7]] = 4  # units 4 and 7 merge at 4
    labels[9] = -1  # unit 9 is removed
    got = eqx.filter_jit(quotient)(chain, (jnp.asarray(labels),), (N1,))
    g, gb, w, b, down, _ = params
    for mine, theirs in ((got.gate_weights[0], g), (got.gate_biases[0], gb), (got.weights[0], w), (got.biases[0], b)):
        mine = np.asarray(mine)
        np.testing.assert_allclose(mine[4], (theirs[4] + theirs[7]) / 2, rtol=1e-14)
        assert np.all(mine[[7, 9]] == 0)
        keep = [i for i in range(N1) if i not in (4, 7, 9)]
        np.testing.assert_array_equal(mine[keep], theirs[keep])
    np.testing.assert_allclose(np.asarray(got.weights[1])[:, 4], down[:, 4] + down[:, 7], rtol=1e-14)


def test_structural_distance_compares_gate_and_up_rows():
    params = parameters()
    chain = gated_chain(params)
    layer = eqx.filter_jit(lambda c: Structural().layer(c, None, 1, jnp.arange(N0)))  # one compilation, not one per op
    relative = np.asarray(layer(chain).relative)
    g, gb, w, b = params[:4]
    features = np.concatenate([w, b[:, None], g, gb[:, None]], axis=1)
    scale = np.mean(np.sum(np.abs(features), axis=1))
    expected = np.sum(np.abs(features[:, None] - features[None]), axis=2) / scale
    np.testing.assert_allclose(relative, expected, rtol=1e-9, atol=1e-12)
    assert relative[0, 1] == 0 and relative[2, 3] > 0.1


@pytest.mark.slow
@pytest.mark.parametrize("gate", GATES)
def test_lump_merges_planted_gated_duplicates_exactly(gate):
    params, x = parameters(), jnp.asarray(data())
    chain = gated_chain(params, gate, jnp.float32)
    x = x.astype(jnp.float32)
    small, info = jaxlump.lump(chain, x, 0.0)
    labels = np.asarray(info.partitions[0])
    assert labels[0] == labels[1]  # identical gate and up rows: one unit
    assert len(set(labels.tolist())) == N1 - 1  # units 2 and 3 share only the gate row: kept apart
    assert small.gated == (True, False) and small.weights[0].shape == (N1 - 1, N0)
    expected = numpy_ffn(params, np.asarray(x, np.float64), gate)[0]
    np.testing.assert_allclose(np.asarray(small(x)), expected, rtol=2e-5, atol=2e-5)
    assert bool(info.result == jaxlump.RESULTS.successful)
    assert "a-priori bound not computed" in info.certificate.describe()


@pytest.mark.slow
def test_merge_or_remove_merges_planted_gated_duplicates_exactly():
    params, x = parameters(), jnp.asarray(data(), jnp.float32)
    chain = gated_chain(params, "silu", jnp.float32)
    small, info = jaxlump.merge_or_remove(chain, x, 0.0)
    labels = np.asarray(info.partitions[0])
    assert labels[0] == labels[1] >= 0
    assert len(set(labels.tolist()) - {-1}) == N1 - 1 and np.all(labels >= 0)
    assert small.gated == (True, False)
    expected = numpy_ffn(params, np.asarray(x, np.float64))[0]
    np.testing.assert_allclose(np.asarray(small(x)), expected, rtol=2e-5, atol=2e-5)


@pytest.mark.slow
def test_gated_merge_cost_is_the_least_squares_error_of_the_merged_unit():
    params, x = parameters(planted=False), data(128)
    chain = gated_chain(params, "silu")
    zs, acts = layer_inputs(chain, jnp.asarray(x))
    damping = 1e-12
    state, problem = initial_state(zs[0], acts[0], chain.weights[1], "silu", centre=True, damping=damping, gated=True)
    costs = np.asarray(merge_costs(state, problem).merge)
    g, gb, w, b, down, _ = params
    hidden = numpy_ffn(params, x)[1]
    centred = hidden - hidden.mean(axis=0)
    target = centred @ down.T
    for i, j in ((0, 1), (2, 5), (3, 11)):
        z_gate = (x @ g[[i, j]].T + gb[[i, j]]).mean(axis=1)
        z_up = (x @ w[[i, j]].T + b[[i, j]]).mean(axis=1)
        merged = NUMPY_SIGMA["silu"](z_gate) * z_up
        columns = np.concatenate([np.delete(centred, [i, j], axis=1), (merged - merged.mean())[:, None]], axis=1)
        residual = target - columns @ np.linalg.lstsq(columns, target, rcond=None)[0]
        np.testing.assert_allclose(costs[i, j], np.sum(residual**2), rtol=1e-6)


@pytest.mark.slow
def test_lump_with_refit_aware_discrepancy_on_a_gated_chain():
    params, x = parameters(), jnp.asarray(data())
    chain = gated_chain(params)
    small, info = jaxlump.lump(chain, x, 0.0, discrepancy=RefitAware(), certify_ode=False)
    labels = np.asarray(info.partitions[0])
    assert labels[0] == labels[1] and len(set(labels.tolist())) == N1 - 1
    np.testing.assert_allclose(np.asarray(small(x)), numpy_ffn(params, np.asarray(x))[0], rtol=1e-9, atol=1e-9)


@pytest.mark.slow
def test_obs_prune_refits_the_consumer_on_the_true_gated_activations():
    n1 = 6
    params, x = parameters(n1=n1, planted=False), data(96)
    chain = gated_chain(params, "silu")
    small, info = baselines.obs_prune(chain, jnp.asarray(x), 0.5, ridge=0.0)
    labels = np.asarray(info.partitions[0])
    kept = np.flatnonzero(labels >= 0)
    assert kept.size == 3 and small.gated == (True, False)
    g, gb, w, b, down, down_b = params
    # The kept units' gate and up rows are their own (their targets are their own pre-activations).
    np.testing.assert_allclose(np.asarray(small.gate_weights[0]), g[kept], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(np.asarray(small.weights[0]), w[kept], rtol=1e-9, atol=1e-9)
    # The down projection is the least-squares refit on the true gated activations of the kept units.
    hidden = numpy_ffn(params, x)[1]
    target = hidden @ down.T + down_b

    def refit_error(subset):
        design = np.concatenate([hidden[:, subset], np.ones((x.shape[0], 1))], axis=1)
        solution = np.linalg.lstsq(design, target, rcond=None)[0]
        return solution, float(np.sum((target - design @ solution) ** 2))

    solution, greedy_error = refit_error(kept)
    np.testing.assert_allclose(np.asarray(small.weights[1]), solution[:-1].T, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(np.asarray(small.biases[1]), solution[-1], rtol=1e-7, atol=1e-9)
    errors = [refit_error(list(s))[1] for s in itertools.combinations(range(n1), 3)]
    assert min(errors) <= greedy_error * (1 + 1e-9)
    assert greedy_error <= np.median(errors)  # the greedy choice is among the better half of all 20 kept sets


@pytest.mark.slow
def test_shrink_of_a_masked_gated_result_gives_the_same_outputs():
    params, x = parameters(), jnp.asarray(data())
    chain = gated_chain(params)
    masked, info = jaxlump.lump_masked(chain, x, 0.0)
    small, small_info = jaxlump.shrink(masked, info)
    assert small.gated == (True, False) and small.weights[0].shape[0] == N1 - 1
    assert small.gate_weights[0].shape == small.weights[0].shape
    np.testing.assert_allclose(np.asarray(small(x)), np.asarray(masked(x)), rtol=1e-12, atol=1e-12)
    assert int(small_info.cost_after.dense_params) == int(jaxlump.cost(small).dense_params)


@pytest.mark.slow
def test_reconstruct_without_info_keeps_gated_units_with_their_gate_rows():
    params, x = parameters(planted=False), jnp.asarray(data())
    chain = gated_chain(params)
    refit, info = jaxlump.reconstruct(chain, chain, x)
    assert refit.gated == (True, False)
    np.testing.assert_allclose(np.asarray(refit(x)), np.asarray(chain(x)), rtol=1e-9, atol=1e-9)


def _refusal_calls(chain, x):
    return {
        "simulate": lambda: jaxlump.simulate(chain, x),
        "check_encoding": lambda: jaxlump.check_encoding(chain, x),
        "to_erode": lambda: jaxlump.to_erode(chain),
        "dynamical": lambda: jaxlump.lump(chain, x, 0.1, discrepancy=jaxlump.Dynamical()),
        "magnitude": lambda: baselines.magnitude(chain, None, 0.5),
        "wanda": lambda: baselines.wanda(chain, x, 0.5),
        "structured_prune": lambda: baselines.structured_prune(chain, x, 0.5),
        "lowrank": lambda: baselines.lowrank(chain, x, 0.5),
        "fold": lambda: baselines.fold(chain, x, 0.5),
        "zipit_merge": lambda: baselines.zipit_merge(chain, x, 0.5),
        "neuron_merge": lambda: baselines.neuron_merge(chain, x, 0.5),
        "flap_prune": lambda: baselines.flap_prune(chain, x, 0.5),
        "linearity_merge": lambda: baselines.linearity_merge(chain, x, 0.5),
        "proportional_lump": lambda: baselines.proportional_lump(chain, None, 0.0),
        "best_subset": lambda: baselines.best_subset(chain, x, 1, 3),
        "lump_then_prune": lambda: jaxlump.lump_then_prune(chain, x, 100),
        "save": lambda: jaxlump.save("unused.npz", chain),
        "skip_mlp": lambda: jaxlump.SkipMLP.from_chain(chain),
    }


@pytest.mark.parametrize("method", sorted(_refusal_calls(None, None)))
def test_unsupported_methods_refuse_gated_chains(method, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    chain, x = gated_chain(parameters()), jnp.asarray(data())
    with pytest.raises(TypeError, match="gated layers") as error:
        _refusal_calls(chain, x)[method]()
    assert "supported by" in str(error.value) and "`" in str(error.value)


def test_wrap_optax_round_merges_the_planted_gated_unit_with_its_gate_row():
    """A round at ε = 0 inside the wrapped update: unit 1 (gate and up rows equal to unit 0's) merges into unit 0,
    its gate row, up row, biases and down column become exactly zero, and the function is unchanged."""
    params, x = parameters(), jnp.asarray(data())
    chain = gated_chain(params)
    tx = jaxlump.wrap_optax(optax.sgd(0.0), chain, x, 0.0, every=1)
    trainable, static = eqx.partition(chain, eqx.is_array)
    state = tx.init(trainable)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, trainable)
    updates, state = tx.update(zeros, state, trainable)
    lumped = eqx.combine(eqx.apply_updates(trainable, updates), static)
    (labels,) = state.info.partitions
    assert np.asarray(labels)[1] == 0 and np.asarray(state.info.widths_after).tolist() == [N0, N1 - 1, N2]
    for array in (lumped.gate_weights[0][1], lumped.gate_biases[0][1], lumped.weights[0][1], lumped.weights[1][:, 1]):
        assert not np.any(np.asarray(array))
    np.testing.assert_allclose(np.asarray(lumped(x)), numpy_ffn(params, np.asarray(x))[0], rtol=1e-10, atol=1e-10)
    small, _ = jaxlump.shrink(lumped, state)
    assert small.widths == (N0, N1 - 1, N2) and small.gated == (True, False)


def test_refit_solves_gate_and_up_rows_by_least_squares_over_batches_of_rows():
    """The shared reconstruction of a gated layer, rows streamed 7 at a time: each kept unit's gate and up rows are
    NumPy's least squares against the members' mean gate and up pre-activations, and the consumer is refit on the
    refit unit's true gated activations."""
    params = parameters(planted=False)
    chain, x = gated_chain(params), data()
    labels = np.asarray([0, 0, 2, 3, 4, 4, 6, 7, -1, 9, 10, 11])  # two merges, one removal
    compressed = quotient(chain, (jnp.asarray(labels),), (N1,))
    refit, result = eqx.filter_jit(reconstruct_chain)(
        chain, compressed, jnp.asarray(x), (jnp.asarray(labels),), ridge=0.0, batch_rows=7
    )
    assert result == jaxlump.RESULTS.successful
    g, gb, w, b, down, down_b = params
    ones = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    hidden = np.zeros((len(x), N1))
    for unit in np.unique(labels[labels >= 0]):
        members = labels == unit
        for got_w, got_b, (rows, bias) in (
            (refit.weights[0], refit.biases[0], (w, b)),
            (refit.gate_weights[0], refit.gate_biases[0], (g, gb)),
        ):
            target = (x @ rows[members].T + bias[members]).mean(axis=1)
            want = np.linalg.lstsq(ones, target, rcond=None)[0]
            np.testing.assert_allclose(np.asarray(got_w)[unit], want[:-1], rtol=1e-8, atol=1e-10)
            np.testing.assert_allclose(float(got_b[unit]), want[-1], rtol=1e-8, atol=1e-10)
        z_gate = x @ np.asarray(refit.gate_weights[0])[unit] + float(refit.gate_biases[0][unit])
        hidden[:, unit] = NUMPY_SIGMA["silu"](z_gate) * (
            x @ np.asarray(refit.weights[0])[unit] + float(refit.biases[0][unit])
        )
    live = np.unique(labels[labels >= 0])
    want = np.linalg.lstsq(
        np.concatenate([hidden[:, live], np.ones((len(x), 1))], axis=1), numpy_ffn(params, x)[0], rcond=None
    )[0]
    np.testing.assert_allclose(np.asarray(refit.weights[1])[:, live], want[:-1].T, rtol=1e-7, atol=1e-9)
