"""Merging peers: model folding (k-means), ZipIt!-style matching, REPAIR and Neuron Merging, against references."""

import jax
import jax.random as jr
import numpy as np
import pytest
from _networks import build, numpy_outputs, parameters, random_mlp, set_partition

import jaxlump
from jaxlump import baselines as B
from jaxlump.baselines._folding import kmeans, zipit_clusters


def _duplicated(seed, activation="tanh", scales=(1.0, 1.0)):
    """(3, 8, 2): four distinct neurons, each present twice; the second copy's incoming row and bias are scaled by
    `scales[1]`, both copies' outgoing columns are half the distinct neuron's."""
    generator = np.random.default_rng(seed)
    w_in, b_in = generator.standard_normal((4, 3)), 0.3 * generator.standard_normal(4)
    w_out, b_out = generator.standard_normal((2, 4)), 0.3 * generator.standard_normal(2)
    c = scales[1]
    weights = [np.concatenate([w_in, c * w_in]), np.concatenate([0.5 * w_out, 0.5 * w_out], axis=1)]
    biases = [np.concatenate([b_in, c * b_in]), b_out]
    planted = np.concatenate([np.arange(4), np.arange(4)])
    return build((3, 8, 2), weights, biases, activation, "sequential"), planted


def test_kmeans_recovers_separated_clusters():
    generator = np.random.default_rng(0)
    centres = 10 * generator.standard_normal((4, 5))
    truth = generator.permutation(np.repeat(np.arange(4), 5))
    points = centres[truth] + 0.01 * generator.standard_normal((20, 5))
    assert set_partition(kmeans(points, 4, seed=1)) == set_partition(truth)


def test_fold_merges_planted_duplicates_exactly():
    model, planted = _duplicated(1)
    small, info = B.fold(model, None, 0.5)
    assert set_partition(info.partitions[0]) == set_partition(planted)
    x = jr.normal(jr.key(0), (40, 3))
    np.testing.assert_allclose(numpy_outputs(small, x), numpy_outputs(model, x), atol=1e-12)


def test_fold_weights_are_mean_in_sum_out():
    model = random_mlp(jr.key(2), (3, 10, 2), "tanh")
    small, info = B.fold(model, None, 0.6)
    labels = np.asarray(info.partitions[0])
    c = np.eye(labels.max() + 1)[labels].T  # (k, n) indicator
    weights, biases = parameters(model)
    w_in = np.linalg.inv(c @ c.T) @ c @ np.concatenate([weights[0], biases[0][:, None]], axis=1)
    new_w, new_b = parameters(small)
    np.testing.assert_allclose(new_w[0], w_in[:, :-1], rtol=1e-12)
    np.testing.assert_allclose(new_b[0], w_in[:, -1], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(new_w[1], weights[1] @ c.T, rtol=1e-12)
    assert c.shape[0] == 4


def test_zipit_merges_perfectly_correlated_pairs_first():
    generator = np.random.default_rng(3)
    base = generator.standard_normal((60, 3))
    a = np.concatenate([base, 2 * base + 1, generator.standard_normal((60, 2))], axis=1)  # pairs (0,3),(1,4),(2,5)
    clusters = zipit_clusters(a, 5, alpha=0.5)
    assert set_partition(clusters) == set_partition([0, 1, 2, 0, 1, 2, 6, 7])


def test_zipit_merge_on_duplicates_is_exact():
    model, planted = _duplicated(4)
    x = jr.normal(jr.key(5), (50, 3))
    small, info = B.zipit_merge(model, x, 0.5, repair=False)
    assert set_partition(info.partitions[0]) == set_partition(planted)
    np.testing.assert_allclose(numpy_outputs(small, x), numpy_outputs(model, x), atol=1e-12)


def test_repair_matches_member_moments():
    model = random_mlp(jr.key(6), (3, 10, 2), "tanh")
    x = jr.normal(jr.key(7), (80, 3))
    small, info = B.zipit_merge(model, x, 0.5, repair=True)
    weights, biases = parameters(model)
    z = np.asarray(x) @ weights[0].T + biases[0]
    new_w, new_b = parameters(small)
    z_new = np.asarray(x) @ new_w[0].T + new_b[0]
    labels = np.asarray(info.partitions[0])
    for r in range(z_new.shape[1]):
        members = labels == r
        np.testing.assert_allclose(z_new[:, r].mean(), z[:, members].mean(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(z_new[:, r].std(), z[:, members].std(axis=0).mean(), rtol=1e-9)


def test_neuron_merge_is_exact_for_positively_scaled_relu_copies():
    model, planted = _duplicated(8, "relu", scales=(1.0, 2.5))  # copies are 2.5× their twins: the copies are kept
    small, info = B.neuron_merge(model, None, 0.5)
    assert set_partition(info.partitions[0]) == set_partition(planted)
    x = jr.normal(jr.key(9), (40, 3))
    np.testing.assert_allclose(numpy_outputs(small, x), numpy_outputs(model, x), atol=1e-12)


def test_neuron_merge_weights_match_reference():
    model = random_mlp(jr.key(10), (3, 6, 2), "relu")
    weights, biases = parameters(model)
    u = np.concatenate([weights[0], biases[0][:, None]], axis=1)
    norms = np.linalg.norm(u, axis=1)
    keep = np.zeros(6, bool)
    keep[np.argsort(-norms, kind="stable")[:3]] = True
    w_next = weights[1].copy()
    kept = np.flatnonzero(keep)
    for i in np.flatnonzero(~keep):
        cos = u[kept] @ u[i] / (norms[kept] * norms[i])
        if cos.max() >= 0.2:
            j = kept[np.argmax(cos)]
            w_next[:, j] += norms[i] / norms[j] * weights[1][:, i]
    small, _ = B.neuron_merge(model, None, 0.5, threshold=0.2)
    new_w, new_b = parameters(small)
    np.testing.assert_allclose(new_w[0], weights[0][kept], rtol=1e-12)
    np.testing.assert_allclose(new_w[1], w_next[:, kept], rtol=1e-12)


@pytest.mark.parametrize("bad", [{"alpha": 0.0}, {"alpha": 1.5}])
def test_bad_alpha_is_refused(bad):
    with pytest.raises(ValueError, match="alpha"):
        B.zipit_merge(random_mlp(jr.key(0), (3, 6, 2)), jax.numpy.ones((4, 3)), 0.5, **bad)


def test_repair_needs_data():
    with pytest.raises(ValueError, match="x_calib"):
        B.fold(random_mlp(jr.key(0), (3, 6, 2)), None, 0.5, repair=True)


def _pairs(outgoing: float):
    """(3, 4, 2) ReLU: neurons 1 and 3 are copies of 0 and 2 at half the scale (incoming row and bias), and every
    outgoing weight is `outgoing`, so merging either pair adds two outgoing columns."""
    generator = np.random.default_rng(0)
    w_in, b_in = generator.standard_normal((2, 3)), 0.3 * generator.standard_normal(2)
    weights = [np.stack([w_in[0], w_in[0] / 2, w_in[1], w_in[1] / 2]), np.full((2, 4), outgoing)]
    biases = [np.array([b_in[0], b_in[0] / 2, b_in[1], b_in[1] / 2]), np.zeros(2)]
    return build((3, 4, 2), weights, biases, "relu", "sequential")


@pytest.mark.parametrize("merge", [B.fold, B.neuron_merge])
def test_a_merge_that_overflows_is_reported_or_raised(merge):
    """Outgoing weights of 1.5e308 are finite; a merged column adds two of them (or one and a half) and is not. The
    inputs are small, so the original's outputs (about 1.5e308 · 1.01) are finite: only the merge overflows."""
    x = 1e-3 * jr.normal(jr.key(1), (16, 3))
    small, info = merge(_pairs(1.5e308), x, 0.5, throw=False)
    assert info.result == jaxlump.RESULTS.nonfinite_result
    assert not np.all(np.isfinite(small.layers[-1].weight))  # the returned model is what was checked
    with pytest.raises(jaxlump.CompressionError, match="compression"):
        merge(_pairs(1.5e308), x, 0.5)
    _, info = merge(_pairs(1.0), x, 0.5)  # the same merge of ordinary weights succeeds
    assert info.result == jaxlump.RESULTS.successful and info.widths_after.tolist() == [3, 2, 2]


def test_zipit_on_activations_that_overflow_fails_the_selection():
    """Hidden activations of inf (finite weights of 1e200 in two layers): the correlations mean nothing, and the
    first failure reported is the cause, the model's own forward pass."""
    weights, biases = parameters(random_mlp(jr.key(0), (3, 6, 6, 2), "relu"))
    model = build((3, 6, 6, 2), [1e200 * weights[0], 1e200 * weights[1], weights[2]], biases, "relu", "sequential")
    x = jr.normal(jr.key(1), (32, 3))
    _, info = B.zipit_merge(model, x, 0.5, repair=False, throw=False)
    assert info.result == jaxlump.RESULTS.model_nonfinite
    with pytest.raises(jaxlump.CompressionError, match="zipit.*Stage 'input model'"):
        B.zipit_merge(model, x, 0.5, repair=False)


def test_the_exact_rescaling_keeps_large_values_clustered_as_small_ones():
    """k-means of points ~1e210 and ZipIt! of activations ~1e210 (whose squares overflow) choose as on the same
    values ~1."""
    generator = np.random.default_rng(3)
    points = generator.standard_normal((12, 4))
    np.testing.assert_array_equal(kmeans(2.0**700 * points, 3, seed=0), kmeans(points, 3, seed=0))
    a = generator.standard_normal((20, 6))
    np.testing.assert_array_equal(zipit_clusters(2.0**700 * a, 3, alpha=0.5), zipit_clusters(a, 3, alpha=0.5))


@pytest.mark.parametrize(
    ("threshold", "error", "match"),
    [
        (-1, ValueError, r"`threshold` must lie in \[0, 1\].*received -1\.0"),
        (-0.2, ValueError, r"`threshold` must lie in \[0, 1\]"),
        (1.5, ValueError, r"`threshold` must lie in \[0, 1\]"),
        (float("nan"), ValueError, r"`threshold` must lie in \[0, 1\]"),
        (True, TypeError, r"`threshold` must be a real number in \[0, 1\]; received True"),
        ("0.5", TypeError, r"`threshold` must be a real number"),
    ],
)
def test_neuron_merge_refuses_bad_threshold(threshold, error, match):
    """A negative cosine threshold merged every removed neuron, even one pointing opposite to its match, whose
    compensation then has the wrong sign (the bad-input run accepted `threshold=-1`)."""
    with pytest.raises(error, match=match):
        B.neuron_merge(random_mlp(jr.key(0), (3, 6, 2), "relu"), None, 0.5, threshold=threshold)
