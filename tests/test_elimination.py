"""Elimination–compensation against finite differences of a NumPy forward pass and the spec's formulas (§A.3)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from _networks import SCOPES

from jaxlump import LumpedMLP
from jaxlump._model.network import DenseChain
from jaxlump.baselines import PerLayer, PerRow
from jaxlump.baselines._elimination import elimination_compensation, linearised_scores, nonlinear_scores

NP_ACTIVATIONS = {
    "tanh": np.tanh,
    "relu": lambda z: np.maximum(z, 0),
    "identity": lambda z: z,
    "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
}


def _forward(weights, biases, activations, x):
    acts = [x]
    for w, b, act in zip(weights, biases, activations, strict=True):
        acts.append(NP_ACTIVATIONS[act](acts[-1] @ w.T + b))
    return acts


class Net:
    """A small network held both as NumPy arrays (for the references) and as a `DenseChain`."""

    def __init__(self, widths, activations, seed, use_bias=True, n=60):
        rng = np.random.default_rng(seed)
        self.weights = [rng.normal(size=(o, i)) for i, o in zip(widths[:-1], widths[1:], strict=True)]
        self.biases = [0.5 * rng.normal(size=o) if use_bias else np.zeros(o) for o in widths[1:]]
        self.activations = activations
        self.x = rng.normal(size=(n, widths[0])) + 0.5  # non-zero input means: compensation matters
        self.chain = DenseChain(
            tuple(map(jnp.asarray, self.weights)),
            tuple(map(jnp.asarray, self.biases)),
            activations,
            (use_bias,) * len(activations),
        )

    def deviation(self, l, i, j, delta):
        """True mean squared output deviation with W^l_ij removed and b^l_i shifted by delta."""
        weights, biases = [w.copy() for w in self.weights], [b.copy() for b in self.biases]
        weights[l][i, j], biases[l][i] = 0.0, biases[l][i] + delta
        new, old = (
            _forward(w, b, self.activations, self.x)[-1] for w, b in ((weights, biases), (self.weights, self.biases))
        )
        return np.mean(np.sum((new - old) ** 2, axis=1))

    def reference_scores(self, l, h=1e-5):
        """(I, δ*, I⁰) of the spec's formulas, with γ from central finite differences in the bias."""
        gamma = np.zeros((self.x.shape[0], self.biases[l].size))
        for i in range(self.biases[l].size):
            shifted = []
            for step in (h, -h):
                biases = [b.copy() for b in self.biases]
                biases[l][i] += step
                shifted.append(_forward(self.weights, biases, self.activations, self.x)[-1])
            gamma[:, i] = np.sum(((shifted[0] - shifted[1]) / (2 * h)) ** 2, axis=1)
        a, w, n = _forward(self.weights, self.biases, self.activations, self.x)[l], self.weights[l], self.x.shape[0]
        s0, s1, s2 = gamma.sum(0)[:, None], gamma.T @ a, gamma.T @ a**2
        return w**2 * (s2 - s1**2 / s0) / n, w * s1 / s0, w**2 * s2 / n


TANH_NET = dict(widths=(3, 5, 4, 2), activations=("tanh", "tanh", "identity"), seed=0)
WIDE_OUTPUT_NET = dict(widths=(2, 3, 8), activations=("tanh", "sigmoid"), seed=1)  # n_out > Σ n_l: forward mode


@pytest.mark.parametrize("spec", [TANH_NET, WIDE_OUTPUT_NET])
def test_scores_match_finite_difference_reference(spec):
    net = Net(**spec)
    layers = tuple(range(len(net.weights)))
    importance, delta = linearised_scores(net.chain, jnp.asarray(net.x), layers, True)
    importance_0, delta_0 = linearised_scores(net.chain, jnp.asarray(net.x), layers, False)
    for l in layers:
        ref_i, ref_d, ref_i0 = net.reference_scores(l)
        np.testing.assert_allclose(importance[l], ref_i, rtol=1e-6, atol=1e-9 * ref_i.max())
        np.testing.assert_allclose(delta[l], ref_d, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(importance_0[l], ref_i0, rtol=1e-6)
        assert not np.any(delta_0[l])
    only_first = linearised_scores(net.chain, jnp.asarray(net.x), (0,), True)[0]
    assert only_first[1] is None and np.allclose(only_first[0], importance[0], rtol=1e-12)


def test_linear_output_layer_is_mean_replacement():
    net = Net(**TANH_NET)
    importance, delta = linearised_scores(net.chain, jnp.asarray(net.x), (2,), True)
    a = _forward(net.weights, net.biases, net.activations, net.x)[2]
    w = net.weights[2]
    np.testing.assert_allclose(delta[2], w * a.mean(0), rtol=1e-12)
    np.testing.assert_allclose(importance[2], w**2 * a.var(0), rtol=1e-10)


@pytest.mark.parametrize("sparsity", [0.2, 0.5, 0.8])
def test_compensation_never_hurts_on_linear_output_layer(sparsity):
    model = eqx.nn.MLP(6, 3, 4, 0, key=jr.key(0))  # one linear layer: the output layer
    x = np.asarray(jr.normal(jr.key(1), (50, 6))) * np.arange(1, 7) + np.arange(6)
    new, info = elimination_compensation(model, x, sparsity, scope=PerLayer(), prune_output=True)
    w, b = np.asarray(model.layers[0].weight), np.asarray(model.layers[0].bias)
    pruned = ~np.asarray(info.weight_masks[0])
    removed = x @ np.where(pruned, w, 0.0).T  # (N, out): what the pruned weights contributed
    with_delta = np.mean(np.sum((jax.vmap(new)(x) - (x @ w.T + b)) ** 2, axis=1))
    without_delta = np.mean(np.sum(removed**2, axis=1))
    np.testing.assert_allclose(with_delta, np.sum(removed.var(0)), rtol=1e-10)  # exact mean replacement
    assert with_delta <= without_delta
    assert int(pruned.sum()) == int(18 * sparsity)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_selection_and_bias_update(scope):
    net = Net(**TANH_NET)
    importance, delta = linearised_scores(net.chain, jnp.asarray(net.x), (0, 1), True)
    new, info = elimination_compensation(net.chain, net.x, 0.4, scope=SCOPES[scope])
    groups = [[0, 1]] if scope == "global" else [[0], [1]]
    for group in groups:
        flat = np.concatenate([np.asarray(importance[l]).ravel() for l in group])
        expected = np.ones(flat.size, bool)
        expected[np.argsort(flat, kind="stable")[: int(flat.size * 0.4)]] = False
        got = np.concatenate([np.asarray(info.weight_masks[l]).ravel() for l in group])
        np.testing.assert_array_equal(got, expected)
    for l in (0, 1):
        keep = np.asarray(info.weight_masks[l])
        np.testing.assert_array_equal(np.asarray(new.weights[l]), np.where(keep, net.weights[l], 0.0))
        shift = np.where(keep, 0.0, np.asarray(delta[l])).sum(1)
        np.testing.assert_allclose(np.asarray(new.biases[l]), net.biases[l] + shift, rtol=1e-12)
    assert bool(jnp.all(info.weight_masks[2])) and np.array_equal(np.asarray(new.biases[2]), net.biases[2])
    assert info.method == "elimination_compensation" and not info.structured


@pytest.mark.parametrize("l", [0, 1, 2])
def test_nonlinear_scores_attain_true_optimum(l):
    net = Net(**TANH_NET)
    x = jnp.asarray(net.x)
    delta_star = linearised_scores(net.chain, x, (l,), True)[1][l]
    deviation, delta = nonlinear_scores(net.chain, x, l, delta_star, 5)
    shape = net.weights[l].shape
    at_star = np.array(
        [[net.deviation(l, i, j, float(delta_star[i, j])) for j in range(shape[1])] for i in range(shape[0])]
    )
    at_opt = np.array([[net.deviation(l, i, j, float(delta[i, j])) for j in range(shape[1])] for i in range(shape[0])])
    np.testing.assert_allclose(deviation, at_opt, rtol=1e-10, atol=1e-14)  # the score is a true deviation
    assert np.all(np.asarray(deviation) <= at_star * (1 + 1e-12))  # NL-A ≤ EC (EC's attained true deviation)
    i, j = np.unravel_index(np.argmax(at_star), shape)  # brute force over a grid for the costliest weight
    grid = float(delta_star[i, j]) + np.linspace(-2, 2, 401) * abs(net.weights[l][i, j])
    assert float(deviation[i, j]) <= min(net.deviation(l, i, j, d) for d in grid) * (1 + 1e-3)
    if l == 2:  # linear output layer: the linearisation is exact, Gauss-Newton cannot improve on δ*
        np.testing.assert_allclose(deviation, at_star, rtol=1e-10)
    else:
        assert np.mean(at_star - np.asarray(deviation)) > 0


def test_nonlinear_pipeline_and_leave_one_out():
    net = Net(**TANH_NET)
    x = jnp.asarray(net.x)
    new, info = elimination_compensation(net.chain, net.x, 0.3, nonlinear=True, scope=PerLayer())
    assert info.method == "elimination_compensation_nonlinear"
    for l in (0, 1):
        delta_star = linearised_scores(net.chain, x, (l,), True)[1][l]
        deviation, delta = nonlinear_scores(net.chain, x, l, delta_star, 5)
        expected = np.ones(deviation.size, bool)
        expected[np.argsort(np.asarray(deviation).ravel(), kind="stable")[: int(deviation.size * 0.3)]] = False
        np.testing.assert_array_equal(np.asarray(info.weight_masks[l]).ravel(), expected)
        shift = np.where(np.asarray(info.weight_masks[l]), 0.0, np.asarray(delta)).sum(1)
        np.testing.assert_allclose(np.asarray(new.biases[l]), net.biases[l] + shift, rtol=1e-12)
    _, leave_one_out = elimination_compensation(
        net.chain, net.x, 0.3, nonlinear=True, compensate=False, scope=PerLayer()
    )
    removal = np.array([[net.deviation(1, i, j, 0.0) for j in range(5)] for i in range(4)])
    expected = np.ones(20, bool)
    expected[np.argsort(removal.ravel(), kind="stable")[:6]] = False
    np.testing.assert_array_equal(np.asarray(leave_one_out.weight_masks[1]).ravel(), expected)


def test_layers_without_bias_are_not_compensated():
    net = Net(**TANH_NET, use_bias=False)
    importance, delta = linearised_scores(net.chain, jnp.asarray(net.x), (0, 1), True)
    np.testing.assert_allclose(importance[1], net.reference_scores(1)[2], rtol=1e-6)
    assert not np.any(delta[1])
    for nonlinear in (False, True):
        new, _ = elimination_compensation(net.chain, net.x, 0.5, nonlinear=nonlinear)
        assert all(not np.any(np.asarray(b)) for b in new.biases)


def test_eqx_model_type_and_purity():
    mlp = eqx.nn.MLP(3, 2, 6, 2, activation=jax.nn.relu, key=jr.key(0))
    before = [np.array(leaf) for leaf in jax.tree_util.tree_leaves(eqx.filter(mlp, eqx.is_array))]
    new, info = elimination_compensation(mlp, np.asarray(jr.normal(jr.key(1), (32, 3))), 0.5)
    assert type(new) is LumpedMLP
    assert sum(int(jnp.sum(layer.weight == 0)) for layer in new.layers[:2]) == int(54 * 0.5)
    for a, b in zip(before, jax.tree_util.tree_leaves(eqx.filter(mlp, eqx.is_array)), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        ((None, 0.5), {}, ValueError, "x_calib"),
        ((np.ones((0, 3)), 0.5), {}, ValueError, "x_calib"),
        ((np.ones((5, 4)), 0.5), {}, ValueError, "x_calib"),
        ((np.full((5, 3), -np.inf), 0.5), {}, ValueError, "x_calib"),
        ((np.ones((5, 3)), 1.0), {}, ValueError, "sparsity"),
        ((np.ones((5, 3)), -1e-3), {}, ValueError, "sparsity"),
        ((np.ones((5, 3)), 0.5), {"scope": PerRow()}, TypeError, "scope"),
        ((np.ones((5, 3)), 0.5), {"compensate": "yes"}, TypeError, "compensate"),
        ((np.ones((5, 3)), 0.5), {"nonlinear": 1}, TypeError, "nonlinear"),
        ((np.ones((5, 3)), 0.5), {"nonlinear_steps": -1}, ValueError, "nonlinear_steps"),
        ((np.ones((5, 3)), 0.5), {"nonlinear_steps": 2.5}, TypeError, "nonlinear_steps"),
    ],
)
def test_bad_input(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        elimination_compensation(Net(**TANH_NET).chain, *args, **kwargs)


def test_nonfinite_weights_refused():
    chain = Net(**TANH_NET).chain
    bad = DenseChain(
        (chain.weights[0].at[2, 1].set(jnp.nan),) + chain.weights[1:], chain.biases, chain.activations, chain.use_bias
    )
    with pytest.raises(ValueError, match="model layer 0 weight"):
        elimination_compensation(bad, np.ones((5, 3)), 0.5)
