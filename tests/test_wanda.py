"""Wanda against a NumPy re-implementation of the official code's rule, and its invariants."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from _networks import SCOPES

from jaxlump import LumpedMLP
from jaxlump._model.network import DenseChain
from jaxlump.baselines import Global, PerLayer, PerRow
from jaxlump.baselines._magnitude import magnitude
from jaxlump.baselines._wanda import wanda

NP_ACTIVATIONS = {"tanh": np.tanh, "relu": lambda z: np.maximum(z, 0), "identity": lambda z: z}


def _chain(widths=(3, 6, 5, 2), seed=0, hidden="tanh", use_bias=True):
    rng = np.random.default_rng(seed)
    weights = tuple(jnp.asarray(rng.normal(size=(o, i))) for i, o in zip(widths[:-1], widths[1:], strict=True))
    biases = tuple(jnp.asarray(rng.normal(size=o) if use_bias else np.zeros(o)) for o in widths[1:])
    n = len(widths) - 1
    return DenseChain(weights, biases, (hidden,) * (n - 1) + ("identity",), (use_bias,) * n)


def _np_prune(scores, s, scope):
    """Pruned mask: stable ascending order, int(n·s) per row or per matrix."""
    if scope == "row":
        order = np.argsort(scores, axis=1, kind="stable")[:, : int(scores.shape[1] * s)]
        pruned = np.zeros(scores.shape, bool)
        np.put_along_axis(pruned, order, True, axis=1)
        return pruned
    pruned = np.zeros(scores.size, bool)
    pruned[np.argsort(scores.ravel(), kind="stable")[: int(scores.size * s)]] = True
    return pruned.reshape(scores.shape)


def _np_wanda(chain, x, s, *, scope="row", sequential=True, first_layer="layer", bias_correction=False):
    """Reference: the hidden layers (not the head) pruned by |W|·‖X_j‖₂ on dense or already-pruned inputs."""
    weights = [np.asarray(w) for w in chain.weights]
    biases = [np.asarray(b) for b in chain.biases]
    acts = [NP_ACTIVATIONS[a] for a in chain.activations]
    dense, a = [x], x
    for w, b, act in zip(weights, biases, acts, strict=True):
        a = act(a @ w.T + b)
        dense.append(a)
    a, masks = x, []
    for l, (w, b, act) in enumerate(zip(weights, biases, acts, strict=True)):
        inputs = a if sequential else dense[l]
        pruned = np.zeros(w.shape, bool)
        if l < len(weights) - 1 and not (l == 0 and first_layer == "skip"):
            scores = np.abs(w) * np.sqrt((inputs**2).sum(0))[None, :]
            pruned = _np_prune(scores, s, "layer" if l == 0 and first_layer == "layer" else scope)
        new_w = np.where(pruned, 0.0, w)
        new_b = b + (np.where(pruned, w, 0.0) @ inputs.mean(0) if bias_correction else 0.0)
        weights[l], biases[l] = new_w, new_b
        masks.append(~pruned)
        a = act(inputs @ new_w.T + new_b)
    return masks, weights, biases


def _data(n=40, width=3, seed=1):
    return np.random.default_rng(seed).normal(size=(n, width)) * np.array([1.0, 3.0, 0.2, 2.0, 0.5])[:width] + 0.3


@pytest.mark.parametrize("sequential", [True, False])
@pytest.mark.parametrize(
    "scope, first_layer", [("row", "layer"), ("row", "prune"), ("row", "skip"), ("layer", "prune")]
)
@pytest.mark.parametrize("bias_correction", [False, True])
@pytest.mark.parametrize("sparsity", [0.3, 0.6])
def test_matches_numpy_reference(sequential, scope, first_layer, bias_correction, sparsity):
    chain, x = _chain(widths=(5, 8, 7, 6, 2)), _data(width=5)
    first = {"layer": PerLayer(), "prune": SCOPES[scope], "skip": None}[first_layer]  # the reference's names
    new, info = wanda(
        chain,
        x,
        sparsity,
        scope=SCOPES[scope],
        sequential=sequential,
        first_layer=first,
        bias_correction=bias_correction,
    )
    masks, weights, biases = _np_wanda(
        chain, x, sparsity, scope=scope, sequential=sequential, first_layer=first_layer, bias_correction=bias_correction
    )
    for l in range(chain.n_layers):
        np.testing.assert_array_equal(np.asarray(info.weight_masks[l]), masks[l], err_msg=f"layer {l}")
        np.testing.assert_array_equal(np.asarray(new.weights[l]), weights[l])
        np.testing.assert_allclose(np.asarray(new.biases[l]), biases[l], rtol=1e-12, atol=1e-12)


def test_sequential_and_dense_statistics_differ_as_expected():
    # The first layer sees the raw inputs either way; the second is scored on pruned vs dense activations.
    chain, x = _chain(widths=(3, 6, 5, 2), seed=6), _data()
    seq_ref, dense_ref = _np_wanda(chain, x, 0.5)[0], _np_wanda(chain, x, 0.5, sequential=False)[0]
    _, seq = wanda(chain, x, 0.5, scope=PerRow(), sequential=True)
    _, dense = wanda(chain, x, 0.5, scope=PerRow(), sequential=False)
    np.testing.assert_array_equal(np.asarray(seq.weight_masks[0]), np.asarray(dense.weight_masks[0]))
    assert not np.array_equal(seq_ref[1], dense_ref[1])  # the planted case really separates the two modes
    np.testing.assert_array_equal(np.asarray(seq.weight_masks[1]), seq_ref[1])
    np.testing.assert_array_equal(np.asarray(dense.weight_masks[1]), dense_ref[1])


@pytest.mark.parametrize("scope", ["row", "layer"])
def test_equal_input_norms_give_magnitude(scope):
    x = np.array([[i, j, k] for i in (-1.0, 1.0) for j in (-1.0, 1.0) for k in (-1.0, 1.0)])  # every ‖X_j‖ = √8
    chain = _chain(widths=(3, 7, 2), seed=3)
    _, by_wanda = wanda(chain, x, 0.5, scope=SCOPES[scope], first_layer=SCOPES[scope])
    _, by_magnitude = magnitude(chain, None, 0.5, scope=SCOPES[scope])
    np.testing.assert_array_equal(np.asarray(by_wanda.weight_masks[0]), np.asarray(by_magnitude.weight_masks[0]))
    _, skewed = wanda(chain, x * np.array([10.0, 1.0, 0.1]), 0.5, scope=SCOPES[scope], first_layer=SCOPES[scope])
    assert not np.array_equal(np.asarray(skewed.weight_masks[0]), np.asarray(by_magnitude.weight_masks[0]))


@pytest.mark.parametrize("sequential", [True, False])
def test_invariant_to_rescaling_inputs(sequential):
    # A bias-free ReLU net is positively homogeneous, so every layer's activations scale with x.
    chain, x = _chain(widths=(4, 6, 5, 3), seed=4, hidden="relu", use_bias=False), _data(width=4)
    _, base = wanda(chain, x, 0.5, sequential=sequential, prune_output=True)
    _, scaled = wanda(chain, 37.5 * x, 0.5, sequential=sequential, prune_output=True)
    for a, b in zip(base.weight_masks, scaled.weight_masks, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    tanh_chain = _chain(seed=5)  # any net: the first layer sees x itself
    _, base = wanda(tanh_chain, _data(), 0.5, first_layer=PerLayer())
    _, scaled = wanda(tanh_chain, 0.01 * _data(), 0.5, first_layer=PerLayer())
    np.testing.assert_array_equal(np.asarray(base.weight_masks[0]), np.asarray(scaled.weight_masks[0]))


def test_default_scope_is_the_layer_as_for_every_baseline():
    """One default per concept: every jaxlump pruning baseline compares weights within a layer by default."""
    import inspect

    from jaxlump.baselines import elimination_compensation, magnitude, random, structured_prune

    for function in (wanda, magnitude, random, elimination_compensation, structured_prune):
        assert inspect.signature(function).parameters["scope"].default == PerLayer(), function.__name__
    chain, x = _chain(widths=(2, 8, 8, 1), seed=6), _data(width=2)
    _, info = wanda(chain, x, 0.5)
    assert int(jnp.sum(~info.weight_masks[1])) == 32  # int(64 · 0.5) in the layer, rows may differ


@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.8])
def test_exact_per_row_sparsity_and_first_layer_modes(sparsity):
    chain, x = _chain(widths=(2, 8, 8, 1), seed=6), _data(width=2)
    _, info = wanda(chain, x, sparsity, scope=PerRow(), first_layer=PerRow())
    for m in info.weight_masks[:2]:
        assert np.all(np.asarray(m.sum(axis=1)) == m.shape[1] - int(m.shape[1] * sparsity))
    assert bool(jnp.all(info.weight_masks[2]))
    _, info = wanda(chain, x, sparsity, scope=PerRow())  # default first_layer=PerLayer(): one group of 16 weights
    assert int(jnp.sum(~info.weight_masks[0])) == int(16 * sparsity)
    assert np.all(np.asarray(info.weight_masks[1].sum(axis=1)) == 8 - int(8 * sparsity))
    _, info = wanda(chain, x, sparsity, scope=PerRow(), first_layer=None)
    assert bool(jnp.all(info.weight_masks[0])) and int(jnp.sum(~info.weight_masks[1])) == 8 * int(8 * sparsity)


def test_bias_correction_preserves_mean_preactivation():
    chain, x = _chain(seed=7), _data()
    new, _ = wanda(chain, x, 0.6, bias_correction=True)
    np.testing.assert_allclose(
        np.mean(x @ new.weights[0].T + new.biases[0], 0),
        np.mean(x @ chain.weights[0].T + chain.biases[0], 0),
        atol=1e-12,
    )
    no_bias = _chain(seed=7, use_bias=False)
    new, _ = wanda(no_bias, x, 0.6, bias_correction=True)
    assert all(not bool(jnp.any(b != 0)) for b in new.biases)  # layers without bias never get one


def test_eqx_model_type_and_purity():
    mlp = eqx.nn.MLP(3, 2, 6, 2, activation=jnp.tanh, key=jr.key(0))
    before = [np.array(leaf) for leaf in jax.tree_util.tree_leaves(eqx.filter(mlp, eqx.is_array))]
    new, info = wanda(mlp, _data(), 0.5)
    assert type(new) is LumpedMLP and info.method == "wanda" and not info.structured
    assert int(jnp.sum(new.layers[1].weight == 0)) == 18
    for a, b in zip(before, jax.tree_util.tree_leaves(eqx.filter(mlp, eqx.is_array)), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        ((None, 0.5), {}, ValueError, "x_calib"),
        ((np.ones((0, 3)), 0.5), {}, ValueError, "x_calib"),
        ((np.ones((5, 2)), 0.5), {}, ValueError, "x_calib"),
        ((np.full((5, 3), np.nan), 0.5), {}, ValueError, "x_calib"),
        ((np.ones((5, 3)), 1.0), {}, ValueError, "sparsity"),
        ((np.ones((5, 3)), -0.01), {}, ValueError, "sparsity"),
        ((np.ones((5, 3)), 0.5), {"scope": Global()}, TypeError, "scope"),
        ((np.ones((5, 3)), 0.5), {"first_layer": "dense"}, TypeError, "first_layer"),
        ((np.ones((5, 3)), 0.5), {"sequential": 1}, TypeError, "sequential"),
        ((np.ones((5, 3)), 0.5), {"bias_correction": None}, TypeError, "bias_correction"),
    ],
)
def test_bad_input(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        wanda(_chain(), *args, **kwargs)


def test_nonfinite_weights_and_no_prunable_layer():
    chain = _chain()
    bad = DenseChain(
        chain.weights, (chain.biases[0].at[0].set(jnp.nan),) + chain.biases[1:], chain.activations, chain.use_bias
    )
    with pytest.raises(ValueError, match="model layer 0 bias"):
        wanda(bad, _data(), 0.5)
    with pytest.raises(ValueError, match="prune_output"):
        wanda(_chain(widths=(3, 2)), _data(), 0.5)
