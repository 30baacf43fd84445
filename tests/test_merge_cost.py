"""Refit-aware merge / removal costs against brute-force least squares (NumPy, float64)."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from _networks import outputs, planted_mlp, random_mlp, set_partition
from _refit_reference import brute_costs, least_squares_error

import jaxlump
from jaxlump._criteria.merge_cost import LayerState, initial_state, merge_costs
from jaxlump._methods.greedy import _kill
from jaxlump._model.network import DenseChain
from jaxlump._reconstruction.quotient import quotient

N, N_IN, N_HIDDEN, N_OUT = 40, 3, 6, 4


def _layer(seed=0):
    generator = np.random.default_rng(seed)
    x = generator.standard_normal((N, N_IN))
    w1, b1 = generator.standard_normal((N_HIDDEN, N_IN)), 0.3 * generator.standard_normal(N_HIDDEN)
    z = x @ w1.T + b1
    return x, w1, b1, z, np.tanh(z), generator.standard_normal((N_OUT, N_HIDDEN))


def _augmented(features, lam):
    return np.vstack([features, np.sqrt(lam) * np.eye(features.shape[1])])


@pytest.mark.parametrize("damping", [1e-3, 1e-1])
@pytest.mark.parametrize("centre", [True, False])
def test_closed_form_matches_brute_force(damping, centre):
    _, _, _, z, a, w2 = _layer()
    state, problem = initial_state(
        jnp.asarray(z), jnp.asarray(a), jnp.asarray(w2), "tanh", centre=centre, damping=damping
    )
    costs = merge_costs(state, problem, block_size=4)  # 4 rows per block: exercises blocks and padding
    features = a - a.mean(0) if centre else a
    lam = damping * np.mean(np.sum(features**2, axis=0))
    aug = _augmented(features, lam)
    merge, removal = brute_costs(
        list(aug.T), list(z.T), list(np.eye(N_HIDDEN)), np.ones(N_HIDDEN), aug @ w2.T, lam, centre
    )
    off = ~np.eye(N_HIDDEN, dtype=bool)
    np.testing.assert_allclose(np.asarray(costs.merge)[off], merge[off], rtol=1e-9, atol=1e-12 * merge[off].max())
    np.testing.assert_allclose(np.asarray(costs.removal), removal, rtol=1e-9)
    # Removal is structured OBS: ‖W_:,j‖² / (H⁻¹)_jj.
    obs = np.sum(w2**2, axis=0) / np.diag(np.linalg.inv(features.T @ features + lam * np.eye(N_HIDDEN)))
    np.testing.assert_allclose(np.asarray(costs.removal), obs, rtol=1e-9)


def test_costs_of_a_partly_merged_layer_match_brute_force():
    """After one merge the target is no longer in the features' span; the residual term must be exact."""
    _, _, _, z, a, w2 = _layer(1)
    state, problem = initial_state(jnp.asarray(z), jnp.asarray(a), jnp.asarray(w2), "tanh", centre=True, damping=1e-2)
    pre0 = (z[:, 0] + z[:, 1]) / 2
    members = np.eye(N_HIDDEN)
    members[:, 0] = (members[:, 0] + members[:, 1]) / 2
    merged = LayerState(
        state.features.at[:, 0].set(np.tanh(pre0) - np.tanh(pre0).mean()),
        state.pre.at[:, 0].set(pre0),
        jnp.asarray(members),
        state.sizes.at[0].set(2.0),
        state.alive,
        state.labels,
    )
    merged = _kill(merged, 1, state.labels)
    costs = merge_costs(merged, problem, block_size=4)
    lam = float(problem.lam)
    targets = _augmented(np.asarray(state.features), lam) @ w2.T
    keep = [i for i in range(N_HIDDEN) if i != 1]
    f = np.asarray(merged.features)
    columns = [np.concatenate([f[:, i], np.sqrt(lam) * members[:, i]]) for i in keep]
    pre = [np.asarray(merged.pre)[:, i] for i in keep]
    merge, removal = brute_costs(columns, pre, [members[:, i] for i in keep], [2.0, 1, 1, 1, 1], targets, lam, True)
    off = ~np.eye(len(keep), dtype=bool)
    np.testing.assert_allclose(np.asarray(costs.merge)[np.ix_(keep, keep)][off], merge[off], rtol=1e-9)
    np.testing.assert_allclose(np.asarray(costs.removal)[keep], removal, rtol=1e-9)
    assert np.all(np.isinf(np.asarray(costs.merge)[1])) and np.isinf(float(costs.removal[1]))


def test_cost_is_the_error_of_refitting_the_merged_network():
    """Independent route: merge the pair with the quotient, refit the output layer (weights and bias) by plain
    least squares, measure its error against the original outputs — equals the cost as the damping vanishes."""
    x, w1, b1, z, a, w2 = _layer(2)
    b2 = np.zeros(N_OUT)
    chain = DenseChain((jnp.asarray(w1), jnp.asarray(w2)), (jnp.asarray(b1), jnp.asarray(b2)), ("tanh", "identity"),
                       (True, True))  # fmt: skip
    state, problem = initial_state(jnp.asarray(z), jnp.asarray(a), jnp.asarray(w2), "tanh", centre=True, damping=1e-11)
    costs = np.asarray(merge_costs(state, problem).merge)
    target = a @ w2.T
    for i, j in [(0, 1), (2, 5), (3, 4)]:
        labels = np.arange(N_HIDDEN)
        labels[j] = i
        merged = quotient(chain, (jnp.asarray(labels),), (N_HIDDEN,))
        hidden = np.tanh(x @ np.asarray(merged.weights[0]).T + np.asarray(merged.biases[0]))
        kept = np.flatnonzero(np.bincount(labels, minlength=N_HIDDEN) > 0)
        design = np.column_stack([hidden[:, kept], np.ones(N)])
        error = least_squares_error(design, target)
        np.testing.assert_allclose(costs[i, j], error, rtol=1e-6)


@pytest.mark.integration  # heavy (10–16 s on 2 cores, large compiles): the second test step keeps step 1 near 10 min
def test_exact_duplicates_cost_nothing_and_eps_zero_is_exact():
    model, planted = planted_mlp(jr.key(3), (3, 12, 12, 2), (5, 4))
    x = jr.normal(jr.key(4), (200, 3))
    small, info = jaxlump.lump(model, x, 0.0, discrepancy=jaxlump.RefitAware())
    for found, truth in zip(info.partitions, planted):
        assert set_partition(found) == set_partition(truth)
    np.testing.assert_allclose(outputs(small, x), outputs(model, x), atol=1e-10)


def test_one_eps_means_the_same_when_the_next_layer_is_rescaled():
    """The relative cost is in units of a typical neuron's contribution: scaling the next layer changes nothing."""
    _, _, _, z, a, w2 = _layer(5)
    relative = []
    for factor in (1.0, 7.0):
        state, problem = initial_state(jnp.asarray(z), jnp.asarray(a), jnp.asarray(factor * w2), "tanh", centre=True,
                                       damping=1e-3)  # fmt: skip
        relative.append(np.sqrt(np.asarray(merge_costs(state, problem).merge) / N) / float(problem.scale))
    np.testing.assert_allclose(relative[0], relative[1], rtol=1e-10)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="damping"):
        jaxlump.RefitAware(damping=0.0)
    with pytest.raises(ValueError, match="max_inputs"):
        jaxlump.RefitAware(max_inputs=0)
    mlp = random_mlp(jr.key(8), (2, 4, 1))
    with pytest.raises(ValueError, match="x_calib"):
        jaxlump.lump(mlp, None, 0.1, discrepancy=jaxlump.RefitAware())
