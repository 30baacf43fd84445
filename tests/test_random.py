"""Random pruning: determinism per key, exact counts, uniformity, explicit keys."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jaxlump import LumpedMLP
from jaxlump._model.network import DenseChain
from jaxlump.baselines import Global, PerRow
from jaxlump.baselines._random import random


def _chain(widths=(3, 6, 5, 2), seed=0):
    rng = np.random.default_rng(seed)
    weights = tuple(jnp.asarray(rng.normal(size=(o, i))) for i, o in zip(widths[:-1], widths[1:], strict=True))
    biases = tuple(jnp.asarray(rng.normal(size=o)) for o in widths[1:])
    return DenseChain(weights, biases, ("tanh",) * (len(widths) - 2) + ("identity",), (True,) * (len(widths) - 1))


def _pruned(info):
    return [np.asarray(~m) for m in info.weight_masks]


def test_same_key_same_mask_different_keys_differ():
    chain = _chain()
    _, first = random(chain, None, 0.5, key=jr.key(3))
    _, again = random(chain, None, 0.5, key=jr.key(3))
    _, other = random(chain, None, 0.5, key=jr.key(4))
    for a, b in zip(_pruned(first), _pruned(again), strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(_pruned(first), _pruned(other), strict=True))
    _, legacy = random(chain, None, 0.5, key=jr.PRNGKey(3))  # raw uint32 keys are accepted too
    assert sum(int(p.sum()) for p in _pruned(legacy)) == sum(int(p.sum()) for p in _pruned(first))


@pytest.mark.parametrize("sparsity", [0.0, 0.2, 0.5, 0.9])
@pytest.mark.parametrize("prune_output", [False, True])
def test_exact_counts(sparsity, prune_output):
    chain = _chain(widths=(4, 7, 9, 3))
    sizes = [w.size for w in chain.weights]
    prunable = [True, True, prune_output]
    _, info = random(chain, None, sparsity, key=jr.key(0), prune_output=prune_output)
    expected = [int(n * sparsity) if p else 0 for n, p in zip(sizes, prunable, strict=True)]
    assert [int(p.sum()) for p in _pruned(info)] == expected
    new, info = random(chain, None, sparsity, key=jr.key(0), scope=Global(), prune_output=prune_output)
    assert sum(int(p.sum()) for p in _pruned(info)) == int(
        sum(n for n, p in zip(sizes, prunable, strict=True) if p) * sparsity
    )
    if not prune_output:
        assert not _pruned(info)[2].any()
    for w, new_w, keep in zip(chain.weights, new.weights, info.weight_masks, strict=True):
        np.testing.assert_array_equal(np.asarray(new_w), np.where(np.asarray(keep), np.asarray(w), 0.0))
    _, info = random(chain, None, sparsity, key=jr.key(0), scope=PerRow())
    for w, m in zip(chain.weights[:2], info.weight_masks[:2], strict=True):
        assert np.all(np.asarray(m.sum(axis=1)) == w.shape[1] - int(w.shape[1] * sparsity))


def test_every_weight_equally_likely():
    # Over 200 keys each of 20 weights is pruned with frequency 0.5 ± 0.035 (1 s.d.); allow ±4.3 s.d.
    chain = _chain(widths=(5, 4, 1))
    counts = np.zeros((4, 5))
    for seed in range(200):
        counts += _pruned(random(chain, None, 0.5, key=jr.key(seed))[1])[0]
    assert np.all(np.abs(counts / 200 - 0.5) < 0.15)


def test_global_scope_does_not_split_evenly():
    # A uniform subset over all layers: some key gives a layer a count other than int(n·s).
    chain = _chain(widths=(4, 7, 9, 3))
    counts = {
        tuple(int(p.sum()) for p in _pruned(random(chain, None, 0.5, key=jr.key(k), scope=Global())[1]))
        for k in range(5)
    }
    assert any(c[:2] != (14, 31) for c in counts)
    assert all(sum(c) == 45 for c in counts)


def test_eqx_model_and_purity():
    mlp = eqx.nn.MLP(3, 2, 6, 2, key=jr.key(0))
    before = [np.array(leaf) for leaf in jax.tree_util.tree_leaves(eqx.filter(mlp, eqx.is_array))]
    new, info = random(mlp, np.ones((4, 3)), 0.5, key=jr.key(1))
    assert type(new) is LumpedMLP and info.method == "random" and not info.structured
    assert int(jnp.sum(new.layers[1].weight == 0)) == 18
    for a, b in zip(before, jax.tree_util.tree_leaves(eqx.filter(mlp, eqx.is_array)), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        ((None, 0.5), {}, TypeError, "key"),
        ((None, 0.5), {"key": 0}, TypeError, "key"),
        ((None, 1.2), {"key": jr.key(0)}, ValueError, "sparsity"),
        ((None, -0.5), {"key": jr.key(0)}, ValueError, "sparsity"),
        ((np.full((2, 3), np.nan), 0.5), {"key": jr.key(0)}, ValueError, "x_calib"),
        ((np.ones((2, 4)), 0.5), {"key": jr.key(0)}, ValueError, "x_calib"),
        ((np.ones((0, 3)), 0.5), {"key": jr.key(0)}, ValueError, "x_calib"),
        ((None, 0.5), {"key": jr.key(0), "scope": "neuron"}, TypeError, "scope"),
    ],
)
def test_bad_input(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        random(_chain(), *args, **kwargs)


def test_nonfinite_weights_refused():
    chain = _chain()
    bad = DenseChain(
        chain.weights[:2] + (chain.weights[2].at[1, 1].set(jnp.inf),), chain.biases, chain.activations, chain.use_bias
    )
    with pytest.raises(ValueError, match="model layer 2 weight"):
        random(bad, None, 0.5, key=jr.key(0))
