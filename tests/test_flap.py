"""FLAP: fluctuation scores, the global cut over standardised scores and the bias compensation, against NumPy."""

import jax.random as jr
import numpy as np
import pytest
from _networks import build, numpy_outputs, overflowing, parameters, random_mlp

import jaxlump
from jaxlump import baselines as B


def _reference(model, x, sparsity):
    weights, biases = parameters(model)
    a = np.asarray(x)
    acts = []
    for w, b in zip(weights[:-1], biases[:-1]):
        a = np.tanh(a @ w.T + b)
        acts.append(a)
    z = []
    for l, a in enumerate(acts, start=1):
        s = a.var(axis=0) * (weights[l] ** 2).sum(axis=0)
        s = (s - s.mean()) / s.std()
        s[np.argmax(s)] = np.inf
        z.append(s)
    flat = np.concatenate(z)
    n_remove = int(flat.size * sparsity)
    removed = np.zeros(flat.size, bool)
    removed[np.argsort(flat, kind="stable")[:n_remove]] = True
    keeps = [~r for r in np.split(removed, np.cumsum([s.size for s in z])[:-1])]
    # Pruned network with b^{l+1} += W^{l+1}[:, R] ā_R.
    new_w, new_b = [], []
    live = [np.ones(weights[0].shape[1], bool), *keeps, np.ones(weights[-1].shape[0], bool)]
    for l, (w, b) in enumerate(zip(weights, biases)):
        b = b.copy()
        if l > 0:
            gone = ~live[l]
            b = b + w[:, gone] @ acts[l - 1][:, gone].mean(axis=0)
        new_w.append(w[np.ix_(live[l + 1], live[l])])
        new_b.append(b[live[l + 1]])
    return keeps, new_w, new_b


@pytest.mark.parametrize("sparsity", [0.3, 0.6])
def test_flap_matches_reference(sparsity):
    model = random_mlp(jr.key(0), (3, 9, 7, 2), "tanh")
    x = jr.normal(jr.key(1), (80, 3))
    keeps, w_ref, b_ref = _reference(model, x, sparsity)
    small, info = B.flap_prune(model, x, sparsity)
    for p, keep in zip(info.partitions, keeps):
        assert np.array_equal(np.asarray(p) >= 0, keep)
    weights, biases = parameters(small)
    for w, wr, b, br in zip(weights, w_ref, biases, b_ref):
        np.testing.assert_allclose(w, wr, rtol=1e-12)
        np.testing.assert_allclose(b, br, rtol=1e-10, atol=1e-12)


def test_bias_compensation_is_lossless_for_constant_neurons():
    model = random_mlp(jr.key(2), (3, 8, 2), "tanh")
    weights, biases = (list(map(np.array, group)) for group in parameters(model))
    weights[0][:3] = 0.0  # three constant neurons: zero variance, lowest score
    model = build((3, 8, 2), weights, biases, "tanh", "sequential")
    x = jr.normal(jr.key(3), (50, 3))
    small, info = B.flap_prune(model, x, 3 / 8)
    assert np.flatnonzero(np.asarray(info.partitions[0]) < 0).tolist() == [0, 1, 2]
    np.testing.assert_allclose(numpy_outputs(small, x), numpy_outputs(model, x), atol=1e-12)


def test_overflowing_scores_fail_the_selection():
    """Activations ~1e200 (finite): their variances overflow, so the global cut means nothing."""
    model = overflowing()
    x = jr.normal(jr.key(1), (32, 3))
    _, info = B.flap_prune(model, x, 0.5, throw=False)
    assert info.result == jaxlump.RESULTS.selection_nonfinite
    with pytest.raises(jaxlump.CompressionError, match="flap_prune"):
        B.flap_prune(model, x, 0.5)


def test_a_singular_reconstruction_is_reported_or_raised():
    model, x = random_mlp(jr.key(0), (3, 6, 6, 2), "tanh"), jr.normal(jr.key(1), (2, 3))
    with pytest.raises(jaxlump.CompressionError, match="least-squares refit"):
        B.flap_prune(model, x, 0.5, reconstruct=True, ridge=0.0)
    _, info = B.flap_prune(model, x, 0.5, reconstruct=True, ridge=0.0, throw=False)
    assert info.result == jaxlump.RESULTS.least_squares_rank_deficient
    _, info = B.flap_prune(model, x, 0.5)  # FLAP's own bias compensation needs no solve
    assert info.result == jaxlump.RESULTS.successful


def _ffn_inputs_by_hand(model, tokens):
    """The two FFN blocks' input rows of `test_sites.TokenModel`, computed in NumPy (pre-LN residual blocks)."""

    def norm(x, layer):
        x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + layer.eps)
        return x * np.asarray(layer.weight) + np.asarray(layer.bias)

    def gelu(z):
        return 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z**3)))

    x = np.asarray(model.embed.weight, np.float64)[np.asarray(tokens)].reshape(-1, model.embed.weight.shape[1])
    rows, hidden = [], []
    for layer_norm, ffn in zip(model.norms, model.ffns):
        y = norm(x, layer_norm)
        a = gelu(y @ np.asarray(ffn.up.weight).T + np.asarray(ffn.up.bias))
        rows.append(y)
        hidden.append(a)
        x = x + a @ np.asarray(ffn.down.weight).T + np.asarray(ffn.down.bias)
    return rows, hidden


@pytest.mark.integration  # compiles a model of sites anew: the second test step
def test_one_global_threshold_over_every_site_of_a_model():
    from test_sites import TOKENS, TokenModel

    model = TokenModel(jr.key(3), widths=(32, 16))
    _, hidden = _ffn_inputs_by_hand(model, TOKENS)
    z = []
    for a, ffn in zip(hidden, model.ffns):
        s = a.var(axis=0) * (np.asarray(ffn.down.weight, np.float64) ** 2).sum(axis=0)
        s = (s - s.mean()) / s.std()
        s[np.argmax(s)] = np.inf
        z.append(s)
    flat = np.concatenate(z)
    removed = np.zeros(flat.size, bool)
    removed[np.argsort(flat, kind="stable")[: int(flat.size * 0.3)]] = True
    keeps = [~r for r in np.split(removed, [32])]
    assert keeps[0].sum() != keeps[1].sum() * 2  # the global cut does not split the sites' units in proportion
    small, info = B.flap_prune(model, TOKENS, 0.3, independent=True)
    assert info.widths_after == {"ffns[0]": int(keeps[0].sum()), "ffns[1]": int(keeps[1].sum())}
    for segment, keep in zip(info.segments, keeps):
        assert np.array_equal(np.asarray(segment.partitions[0]) >= 0, keep)
    sequential, info = B.flap_prune(model, TOKENS, 0.3)  # the same widths; the second site ranked on its new inputs
    assert info.widths_after == {"ffns[0]": int(keeps[0].sum()), "ffns[1]": int(keeps[1].sum())}
    with pytest.raises(TypeError, match="one fraction of all its sites' units"):
        B.flap_prune(model, TOKENS, (0.5,))
