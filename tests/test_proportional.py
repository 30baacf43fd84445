"""Proportional lumping on planted proportional ReLU neurons: merged, and the function is unchanged."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jaxlump._model import LumpedMLP
from jaxlump._model.network import DenseChain
from jaxlump.baselines._proportional import proportional_lump


@eqx.filter_jit
def _apply(model, x):
    return model(x)


def _normal(key, shape):
    return np.array(jr.normal(key, shape), dtype=np.float64)


def _numpy_net(weights, biases, x, slope=0.0):
    a = x
    for w, b in zip(weights[:-1], biases[:-1], strict=True):
        z = a @ w.T + b
        a = np.where(z > 0, z, slope * z)
    return a @ weights[-1].T + biases[-1]


def _planted(key=0):
    """3 -> 5 -> 4 -> 2. Layer 1: neuron 3 = 2.5 x neuron 0, neuron 4 = 0.3 x neuron 1 (rows and biases).
    Layer 2: rows 0 and 1 are not proportional, but become so (ratio 2) once layer 1's columns are merged."""
    k = jr.split(jr.key(key), 6)
    w1, b1 = _normal(k[0], (5, 3)), _normal(k[1], (5,))
    w1[3], b1[3] = 2.5 * w1[0], 2.5 * b1[0]
    w1[4], b1[4] = 0.3 * w1[1], 0.3 * b1[1]
    w2, b2 = _normal(k[2], (4, 5)), _normal(k[3], (4,))
    w2[0] = [1.0, 1.0, 1.0, 0.0, 0.0]  # merged: [1, 1, 1]
    w2[1] = [0.0, 0.0, 2.0, 0.8, 20.0 / 3.0]  # merged: [0 + 2.5·0.8, 0 + 0.3·20/3, 2] = [2, 2, 2]
    b2[1] = 2 * b2[0]
    w3, b3 = _normal(k[4], (2, 4)), _normal(k[5], (2,))
    return [w1, w2, w3], [b1, b2, b3]


def _chain(weights, biases, hidden="relu"):
    acts = (hidden,) * (len(weights) - 1) + ("identity",)
    return DenseChain(tuple(map(jnp.asarray, weights)), tuple(map(jnp.asarray, biases)), acts, (True,) * len(weights))


@pytest.mark.parametrize("hidden, slope", [("relu", 0.0), ("leaky_relu", 0.01)])
def test_planted_proportional_neurons_are_merged_exactly(hidden, slope):
    weights, biases = _planted()
    chain = _chain(weights, biases, hidden)
    lumped, info = proportional_lump(chain, None, 0.0)
    assert lumped.widths == (3, 3, 3, 2) and info.widths_after.tolist() == [3, 3, 3, 2]
    p1, p2 = (np.asarray(p) for p in info.partitions)
    assert p1[0] == p1[3] and p1[1] == p1[4] and len(set(p1)) == 3
    assert p2[0] == p2[1] and len(set(p2)) == 3
    x = _normal(jr.key(9), (200, 3)) * 3
    np.testing.assert_allclose(_apply(lumped, x), _numpy_net(weights, biases, x, slope), rtol=0, atol=1e-10)
    assert int(info.cost_after.dense_params) == 3 * 3 + 3 + 3 * 3 + 3 + 2 * 3 + 2
    assert info.structured and float(info.knob) == 0.0 and info.method == "proportional_lump"


def test_negative_ratio_and_generic_rows_are_not_merged():
    weights, biases = _planted()
    weights[0][3], biases[0][3] = -2.5 * weights[0][0], -2.5 * biases[0][0]  # ρ < 0: ReLU is not odd
    lumped, info = proportional_lump(_chain(weights, biases), None, 0.0)
    p1 = np.asarray(info.partitions[0])
    assert p1[0] != p1[3] and p1[1] == p1[4]
    # Generic random rows: nothing merges.
    k = jr.split(jr.key(3), 4)
    generic = _chain([_normal(k[0], (6, 3)), _normal(k[1], (2, 6))], [_normal(k[2], (6,)), np.zeros(2)])
    assert proportional_lump(generic, None, 0.0)[1].widths_after.tolist() == [3, 6, 2]


def test_tolerance_merges_nearly_proportional_rows():
    weights, biases = _planted()
    weights[0][3] += 1e-3 * np.array([1.0, -1.0, 0.5])  # now only nearly proportional to neuron 0
    chain = _chain(weights, biases)
    exact, _ = proportional_lump(chain, None, 0.0)
    loose, info = proportional_lump(chain, None, 1e-2)
    assert exact.widths[1] == 4 and loose.widths[1] == 3
    x = _normal(jr.key(4), (100, 3))
    error = np.abs(np.asarray(_apply(loose, x)) - _numpy_net(weights, biases, x)).max()
    assert 0 < error < 0.1 and float(info.knob) == 1e-2


def test_model_kinds_and_purity():
    mlp = eqx.nn.MLP(3, 2, 5, 2, activation=jax.nn.relu, key=jr.key(5))
    w = mlp.layers[0].weight
    planted = eqx.tree_at(lambda m: m.layers[0].weight, mlp, w.at[4].set(1.7 * w[2]))
    planted = eqx.tree_at(
        lambda m: m.layers[0].bias, planted, planted.layers[0].bias.at[4].set(1.7 * planted.layers[0].bias[2])
    )
    before = [np.array(leaf) for leaf in jax.tree_util.tree_leaves(planted)]
    lumped, info = proportional_lump(planted, np.ones((4, 3)), 0.0)
    assert isinstance(lumped, LumpedMLP) and lumped.widths == (3, 4, 5, 2)
    x = _normal(jr.key(6), (50, 3))
    np.testing.assert_allclose(jax.vmap(lumped)(x), jax.vmap(planted)(x), atol=1e-10)
    for old, new in zip(before, jax.tree_util.tree_leaves(planted), strict=True):
        np.testing.assert_array_equal(old, new)


@pytest.mark.parametrize(
    "x, tol, error, match",
    [
        (None, -0.1, ValueError, "tol"),
        (None, float("nan"), ValueError, "tol"),
        (None, 1.5, ValueError, "tol"),
        (None, "small", TypeError, "tol"),
        (np.ones((4, 2)), 0.0, ValueError, "x_calib"),
        (np.full((4, 3), np.nan), 0.0, ValueError, "x_calib"),
        (np.ones((0, 3)), 0.0, ValueError, "x_calib"),
    ],
)
def test_bad_input(x, tol, error, match):
    with pytest.raises(error, match=match):
        proportional_lump(_chain(*_planted()), x, tol)


def test_non_homogeneous_activation_refused():
    with pytest.raises(TypeError, match="hidden layer 1.*tanh"):
        proportional_lump(_chain(*_planted(), hidden="tanh"), None, 0.0)
