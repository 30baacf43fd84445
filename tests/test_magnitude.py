"""Magnitude pruning and the shared selection rule, against a NumPy reference (stable argsort, int(n·s))."""

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
from jaxlump.baselines._masks import select_lowest

SPARSITIES = (0.0, 0.1, 0.3, 0.5, 0.77, 0.95)


def _tied_chain(seed=0, widths=(3, 6, 5, 2)):
    """Weights in {−3..3}: many equal magnitudes, some exact zeros."""
    rng = np.random.default_rng(seed)
    weights = tuple(
        jnp.asarray(rng.integers(-3, 4, (o, i)), float) for i, o in zip(widths[:-1], widths[1:], strict=True)
    )
    biases = tuple(jnp.asarray(rng.normal(size=o)) for o in widths[1:])
    return DenseChain(weights, biases, ("tanh",) * (len(widths) - 2) + ("identity",), (True,) * (len(widths) - 1))


def _arrays(model):
    return jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array))


def _reference_keep(scores, prunable, s, scope):
    """Keep masks by NumPy: stable ascending order, exactly int(n·s) pruned per group."""
    scores = [np.asarray(x) for x in scores]
    keep = [np.ones(x.shape, bool) for x in scores]
    groups = []  # (layer, flat indices into that layer) per group, in tie-breaking order
    if scope == "global":
        groups.append([(l, i) for l in range(len(scores)) if prunable[l] for i in range(scores[l].size)])
    for l, x in enumerate(scores):
        if prunable[l] and scope == "layer":
            groups.append([(l, i) for i in range(x.size)])
        if prunable[l] and scope == "row":
            groups += [[(l, r * x.shape[1] + c) for c in range(x.shape[1])] for r in range(x.shape[0])]
    for group in groups:
        values = np.array([scores[l].ravel()[i] for l, i in group])
        for g in np.argsort(values, kind="stable")[: int(len(group) * s)]:
            l, i = group[g]
            keep[l].ravel()[i] = False
    return keep


@pytest.mark.parametrize("scope", ["global", "layer", "row"])
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("prune_output", [False, True])
def test_matches_numpy_reference_with_ties(scope, sparsity, prune_output):
    chain = _tied_chain()
    new, info = magnitude(chain, None, sparsity, scope=SCOPES[scope], prune_output=prune_output)
    prunable = [True, True, prune_output]
    expected = _reference_keep([np.abs(w) for w in chain.weights], prunable, sparsity, scope)
    for l, (w, new_w, keep, ref) in enumerate(
        zip(chain.weights, new.weights, info.weight_masks, expected, strict=True)
    ):
        np.testing.assert_array_equal(np.asarray(keep), ref, err_msg=f"layer {l}")
        np.testing.assert_array_equal(np.asarray(new_w), np.where(ref, np.asarray(w), 0.0))
    for b, new_b in zip(chain.biases, new.biases, strict=True):
        np.testing.assert_array_equal(np.asarray(new_b), np.asarray(b))


@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_exact_counts_per_group(sparsity):
    chain = _tied_chain(seed=1, widths=(4, 7, 9, 3))
    sizes = [w.size for w in chain.weights[:2]]
    _, info = magnitude(chain, None, sparsity, scope=Global())
    assert sum(int(jnp.sum(~m)) for m in info.weight_masks) == int(sum(sizes) * sparsity)
    _, info = magnitude(chain, None, sparsity, scope=PerLayer())
    assert [int(jnp.sum(~m)) for m in info.weight_masks] == [int(n * sparsity) for n in sizes] + [0]
    _, info = magnitude(chain, None, sparsity, scope=PerRow())
    for w, m in zip(chain.weights[:2], info.weight_masks[:2], strict=True):
        kept_per_row = np.asarray(jnp.sum(m, axis=1))
        assert np.all(kept_per_row == w.shape[1] - int(w.shape[1] * sparsity))


def test_ties_broken_by_position_not_threshold():
    # Six equal magnitudes: a `<= threshold` rule would prune all six; the stable rule prunes the first three.
    scores = [jnp.ones((2, 3)), None]
    (keep, untouched) = select_lowest(scores, 0.5, PerLayer())
    np.testing.assert_array_equal(np.asarray(keep), [[False, False, False], [True, True, True]])
    assert untouched is None
    (keep, _) = select_lowest(scores, 0.5, Global())
    np.testing.assert_array_equal(np.asarray(keep), [[False, False, False], [True, True, True]])
    (keep, _) = select_lowest(scores, 0.5, PerRow())
    np.testing.assert_array_equal(np.asarray(keep), [[False, True, True], [False, True, True]])


def test_global_ranks_across_layers():
    small = jnp.asarray([[0.1, 5.0]])
    large = jnp.asarray([[0.2, 0.3], [4.0, 6.0]])
    first, second = select_lowest([small, large], 0.5, Global())  # 6 weights, prune 3: 0.1, 0.2, 0.3
    np.testing.assert_array_equal(np.asarray(first), [[False, True]])
    np.testing.assert_array_equal(np.asarray(second), [[False, False], [True, True]])


def test_sparsity_zero_is_identity_and_info():
    chain = _tied_chain()
    new, info = magnitude(chain, None, 0.0)
    for a, b in zip(jax.tree_util.tree_leaves(chain), jax.tree_util.tree_leaves(new), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert info.method == "magnitude" and not info.structured and info.certificate is None
    assert int(info.cost_after.nonzeros) == int(info.cost_before.nonzeros)
    assert [p.tolist() for p in info.partitions] == [list(range(6)), list(range(5))]
    np.testing.assert_array_equal(np.asarray(info.widths_after), [3, 6, 5, 2])


def test_eqx_models_keep_type_and_cost_counts_zeros():
    mlp = eqx.nn.MLP(4, 2, 8, 2, activation=jax.nn.relu, key=jr.key(0))
    new, info = magnitude(mlp, jr.normal(jr.key(1), (5, 4)), 0.4, scope=PerLayer(), prune_output=True)
    assert type(new) is LumpedMLP
    assert all(a.shape == b.shape for a, b in zip(_arrays(mlp), _arrays(new), strict=True))
    pruned = int(32 * 0.4) + int(64 * 0.4) + int(16 * 0.4)
    assert int(info.cost_before.nonzeros - info.cost_after.nonzeros) == pruned
    assert int(sum(jnp.sum(layer.weight == 0) for layer in new.layers)) == pruned
    assert float(info.knob) == 0.4
    seq = eqx.nn.Sequential(
        [eqx.nn.Linear(3, 5, key=jr.key(2)), eqx.nn.Lambda(jnp.tanh), eqx.nn.Linear(5, 1, key=jr.key(3))]
    )
    new_seq, _ = magnitude(seq, None, 0.5)
    assert type(new_seq) is eqx.nn.Sequential
    assert int(jnp.sum(new_seq.layers[0].weight == 0)) == 7
    np.testing.assert_array_equal(np.asarray(new_seq.layers[2].weight), np.asarray(seq.layers[2].weight))


def test_input_model_not_modified():
    chain = _tied_chain()
    before = [np.array(leaf) for leaf in jax.tree_util.tree_leaves(chain)]
    magnitude(chain, None, 0.6, scope=PerRow(), prune_output=True)
    for a, b in zip(before, jax.tree_util.tree_leaves(chain), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))


def _bad_weight_chain():
    chain = _tied_chain()
    return DenseChain(
        (chain.weights[0].at[0, 0].set(jnp.nan),) + chain.weights[1:], chain.biases, chain.activations, chain.use_bias
    )


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        ((None, -0.1), {}, ValueError, "sparsity"),
        ((None, 1.0), {}, ValueError, "sparsity"),
        ((None, float("nan")), {}, ValueError, "sparsity"),
        ((None, "half"), {}, TypeError, "sparsity"),
        ((np.full((4, 3), np.inf), 0.5), {}, ValueError, "x_calib"),
        ((np.ones((4, 5)), 0.5), {}, ValueError, "x_calib"),
        ((np.ones((0, 3)), 0.5), {}, ValueError, "x_calib"),
        ((np.ones(3), 0.5), {}, ValueError, "x_calib"),
        ((None, 0.5), {"scope": "neuron"}, TypeError, "scope"),
        ((None, 0.5), {"prune_output": "yes"}, TypeError, "prune_output"),
    ],
)
def test_bad_input(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        magnitude(_tied_chain(), *args, **kwargs)


def test_bad_model():
    with pytest.raises(ValueError, match="model layer 0 weight"):
        magnitude(_bad_weight_chain(), None, 0.5)
    single = eqx.nn.MLP(3, 2, 4, 0, key=jr.key(0))
    with pytest.raises(ValueError, match="prune_output"):
        magnitude(single, None, 0.5)
    new, _ = magnitude(single, None, 0.5, prune_output=True)
    assert int(jnp.sum(new.layers[0].weight == 0)) == 3
