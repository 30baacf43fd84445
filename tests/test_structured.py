"""Structured neuron pruning on hand-built networks whose right answers are known."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from _networks import SCORES

from jaxlump._model import LumpedMLP, to_chain
from jaxlump._model.network import DenseChain
from jaxlump.baselines import Global, IncomingNorm, MeanActivation, PerRow, WandaScore
from jaxlump.baselines._structured import structured_prune

# 3 -> 4 -> 2 ReLU net. Incoming row norms 1, 3, 2, 0.5. On inputs in (0, 1): a0 = x0 + 5, a1 = 0 (dead),
# a2 = 2 x2 + 0.1, a3 = 0.5 x0 + 5; outgoing column of neuron 0 is tiny.
W1 = np.array([[1.0, 0, 0], [0, 3.0, 0], [0, 0, 2.0], [0.5, 0, 0]])
B1 = np.array([5.0, -100.0, 0.1, 5.0])
W2 = np.array([[0.001, 1.0, 1.0, 1.0], [0.0, -1.0, 2.0, 0.5]])
B2 = np.array([0.3, -0.2])


@eqx.filter_jit
def _apply(model, x):
    return model(x)


def _chain(w1=W1, b1=B1, w2=W2, b2=B2, act="relu"):
    return DenseChain(
        (jnp.asarray(w1), jnp.asarray(w2)), (jnp.asarray(b1), jnp.asarray(b2)), (act, "identity"), (True,) * 2
    )


def _x(n=50, key=0):
    return np.asarray(jr.uniform(jr.key(key), (n, 3)), dtype=np.float64)


def _numpy_net(w1, b1, w2, b2, x):
    return np.maximum(x @ w1.T + b1, 0) @ w2.T + b2


@pytest.mark.parametrize(
    "score, sparsity, removed",
    [
        ("norm", 0.5, [0, 3]),  # smallest incoming norms 0.5 (neuron 3) and 1 (neuron 0)
        ("activation", 0.5, [1, 2]),  # mean |a|: 0 (dead), ~1.1, ~5.25, ~5.5
        ("rate", 0.25, [1]),  # only the dead neuron is ever inactive
        ("rate", 0.5, [0, 1]),  # then a tie at rate 1: the stable sort takes the lowest index
        ("wanda", 0.5, [0, 1]),  # ‖X_k‖·‖W2[:, k]‖: 0 (dead), tiny outgoing column
    ],
)
def test_the_right_neurons_go(score, sparsity, removed):
    x = _x()
    new, info = structured_prune(_chain(), x, sparsity, score=SCORES[score])
    keep = [k for k in range(4) if k not in removed]
    expected_partition = np.full(4, -1)
    expected_partition[keep] = np.arange(len(keep))
    np.testing.assert_array_equal(info.partitions[0], expected_partition)
    np.testing.assert_array_equal(new.weights[0], W1[keep])
    np.testing.assert_array_equal(new.biases[0], B1[keep])
    np.testing.assert_array_equal(new.weights[1], W2[:, keep])
    np.testing.assert_array_equal(new.biases[1], B2)
    np.testing.assert_allclose(_apply(new, x), _numpy_net(W1[keep], B1[keep], W2[:, keep], B2, x), atol=1e-12)
    assert info.widths_after.tolist() == [3, len(keep), 2] and info.structured and info.weight_masks is None
    assert int(info.cost_after.dense_params) == 3 * len(keep) + len(keep) + 2 * len(keep) + 2
    assert float(info.knob) == sparsity and info.method == "structured_prune"


def test_wanda_score_matches_formula():
    """On a random net the removed set equals the lowest of ‖X_k‖₂·‖W2[:, k]‖₂ computed in NumPy."""
    keys = jr.split(jr.key(1), 4)
    w1, b1 = np.asarray(jr.normal(keys[0], (10, 3))), np.asarray(jr.normal(keys[1], (10,)))
    w2 = np.asarray(jr.normal(keys[2], (2, 10)))
    x = np.asarray(jr.normal(keys[3], (40, 3)))
    scores = np.linalg.norm(np.maximum(x @ w1.T + b1, 0), axis=0) * np.linalg.norm(w2, axis=0)
    _, info = structured_prune(_chain(w1, b1, w2, B2), x, 0.3, score=WandaScore())
    assert set(np.flatnonzero(np.asarray(info.partitions[0]) < 0)) == set(np.argsort(scores)[:3])


def test_mean_replacement_is_exact_on_a_constant_neuron():
    w1 = W1.copy()
    w1[1] = 0.0  # neuron 1: a = relu(2) = 2 on every input, and the smallest norm
    b1 = B1.copy()
    b1[1] = 2.0
    x, fresh = _x(), _x(20, key=5)
    original = _numpy_net(w1, b1, W2, B2, fresh)
    compensated, info = structured_prune(_chain(w1, b1), x, 0.25, compensate=True)
    plain, _ = structured_prune(_chain(w1, b1), x, 0.25)
    np.testing.assert_array_equal(info.partitions[0], [0, -1, 1, 2])
    np.testing.assert_allclose(_apply(compensated, fresh), original, atol=1e-12)
    np.testing.assert_allclose(_apply(plain, fresh) - original, -np.broadcast_to(W2[:, 1] * 2.0, (20, 2)), atol=1e-12)


def test_compensation_adds_mean_contribution():
    x = _x()
    new, _ = structured_prune(_chain(), x, 0.5, score=IncomingNorm(), compensate=True)
    mean_a = np.maximum(x @ W1.T + B1, 0).mean(0)
    np.testing.assert_allclose(new.biases[1], B2 + W2[:, [0, 3]] @ mean_a[[0, 3]], rtol=1e-12)


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 1 / 3, 0.5, 0.9])
@pytest.mark.parametrize("score", ["norm", "activation", "rate", "wanda"])
def test_exact_counts(sparsity, score):
    mlp = eqx.nn.MLP(3, 2, 16, 2, activation=jax.nn.relu, key=jr.key(2))
    x = jr.normal(jr.key(3), (30, 3))
    layered, info = structured_prune(mlp, x, sparsity, score=SCORES[score])
    n_keep = 16 - int(16 * sparsity)
    assert isinstance(layered, LumpedMLP) and layered.width_size == (n_keep, n_keep)  # type-stable: MLP → LumpedMLP
    assert info.widths_after.tolist() == [3, n_keep, n_keep, 2]
    _, info = structured_prune(mlp, x, sparsity, score=SCORES[score], scope=Global())
    assert int(info.widths_after[1] + info.widths_after[2]) == 32 - int(32 * sparsity)
    for p, width in zip(info.partitions, info.widths_after[1:-1], strict=True):
        kept = np.asarray(p)[np.asarray(p) >= 0]
        np.testing.assert_array_equal(kept, np.arange(int(width)))  # kept neurons keep their order


def test_global_normalised_scores_ignore_layer_scale():
    """Rescaling layer 2 by 1000 (and layer 3 by 1/1000, the same ReLU function) changes no global decision."""
    mlp = eqx.nn.MLP(3, 2, 6, 2, activation=jax.nn.relu, key=jr.key(4))
    chain = to_chain(mlp)
    scaled = DenseChain(
        (chain.weights[0], 1000 * chain.weights[1], chain.weights[2] / 1000),
        (chain.biases[0], 1000 * chain.biases[1], chain.biases[2]),
        chain.activations,
        chain.use_bias,
    )
    x = jr.normal(jr.key(5), (30, 3))
    for score in ("norm", "activation", "wanda"):
        _, a = structured_prune(chain, x, 0.5, score=SCORES[score], scope=Global())
        _, b = structured_prune(scaled, x, 0.5, score=SCORES[score], scope=Global())
        for pa, pb in zip(a.partitions, b.partitions, strict=True):
            np.testing.assert_array_equal(pa, pb)
    # And the removed set is the lowest of the mean-normalised norms, computed in NumPy.
    norms = [np.linalg.norm(np.asarray(w), axis=1) for w in chain.weights[:2]]
    flat = np.concatenate([s / s.mean() for s in norms])
    _, info = structured_prune(chain, None, 0.5, scope=Global())
    removed = np.concatenate([np.asarray(p) < 0 for p in info.partitions])
    assert set(np.flatnonzero(removed)) == set(np.argsort(flat, kind="stable")[:6])


def test_at_least_one_neuron_per_layer_is_kept():
    mlp = eqx.nn.MLP(3, 2, 4, 2, activation=jax.nn.relu, key=jr.key(6))
    x = jr.normal(jr.key(7), (10, 3))
    new, info = structured_prune(mlp, x, 0.95, scope=Global())  # int(8 * 0.95) = 7 > 8 - 2
    assert info.widths_after.tolist() == [3, 1, 1, 2]
    assert isinstance(new, LumpedMLP) and new.width_size == (1, 1)
    chain = DenseChain(
        (jnp.ones((1, 3)), jnp.ones((2, 1))), (jnp.zeros(1), jnp.zeros(2)), ("relu", "identity"), (True, True)
    )
    assert structured_prune(chain, None, 0.99)[1].widths_after.tolist() == [3, 1, 2]


def test_model_kinds():
    x = jr.normal(jr.key(8), (20, 3))
    mlp = eqx.nn.MLP(3, 2, 8, 2, activation=jax.nn.relu, key=jr.key(9))
    chain = to_chain(mlp)
    # Scale layer-1 rows so global pruning takes unequal numbers from the two layers.
    uneven = DenseChain(
        (chain.weights[0] * jnp.arange(1.0, 9.0)[:, None] ** 2, *chain.weights[1:]),
        chain.biases,
        chain.activations,
        (True,) * 3,
    )
    new, info = structured_prune(uneven, None, 0.5, scope=Global())
    assert isinstance(new, DenseChain) and new.widths == tuple(info.widths_after.tolist())
    seq = eqx.nn.Sequential(
        [eqx.nn.Linear(3, 5, key=jr.key(10)), eqx.nn.Lambda(jax.nn.tanh), eqx.nn.Linear(5, 2, key=jr.key(11))]
    )
    new_seq, _ = structured_prune(seq, x, 0.4, score=MeanActivation())
    assert isinstance(new_seq, eqx.nn.Sequential) and new_seq.layers[0].out_features == 3
    rescaled = eqx.tree_at(lambda m: m.layers[0].weight, mlp, mlp.layers[0].weight * jnp.arange(1.0, 9.0)[:, None] ** 2)
    lumped, info = structured_prune(rescaled, x, 0.5, scope=Global())
    assert isinstance(lumped, LumpedMLP) and lumped.widths == tuple(info.widths_after.tolist())


def test_input_model_not_modified():
    mlp = eqx.nn.MLP(3, 2, 8, 2, key=jr.key(12))
    before = [np.array(leaf) for leaf in jax.tree_util.tree_leaves(mlp)]
    structured_prune(mlp, jr.normal(jr.key(13), (20, 3)), 0.5, score=WandaScore(), compensate=True, scope=Global())
    for old, new in zip(before, jax.tree_util.tree_leaves(mlp), strict=True):
        np.testing.assert_array_equal(old, new)


@pytest.mark.parametrize(
    "x, sparsity, options, error, match",
    [
        (np.full((4, 3), np.nan), 0.5, {}, ValueError, "x_calib"),
        (np.ones((4, 2)), 0.5, {}, ValueError, "x_calib"),
        (np.ones((0, 3)), 0.5, {}, ValueError, "x_calib"),
        (None, 0.5, {"score": WandaScore()}, ValueError, "x_calib"),
        (None, 0.5, {"compensate": True}, ValueError, "x_calib"),
        (np.ones((4, 3)), 1.0, {}, ValueError, "sparsity"),
        (np.ones((4, 3)), -0.1, {}, ValueError, "sparsity"),
        (np.ones((4, 3)), "half", {}, TypeError, "sparsity"),
        (np.ones((4, 3)), 0.5, {"score": "taylor"}, TypeError, "score"),
        (np.ones((4, 3)), 0.5, {"scope": PerRow()}, TypeError, "scope"),
    ],
)
def test_bad_input(x, sparsity, options, error, match):
    with pytest.raises(error, match=match):
        structured_prune(_chain(), x, sparsity, **options)


def test_bad_model_and_bias_free_compensation():
    with pytest.raises(ValueError, match="NaN"):
        structured_prune(_chain(w1=np.full((4, 3), np.inf)), None, 0.5)
    mlp = eqx.nn.MLP(3, 2, 4, 1, use_final_bias=False, key=jr.key(14))
    with pytest.raises(ValueError, match="compensate"):
        structured_prune(mlp, jr.normal(jr.key(15), (5, 3)), 0.5, compensate=True)
