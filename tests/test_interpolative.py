"""Interpolative-decomposition pruning: pivots equal LAPACK's column-pivoted QR (jax.scipy.linalg.qr)."""

import jax.numpy as jnp
import jax.random as jr
import jax.scipy.linalg as jsl
import numpy as np
import pytest
from _networks import overflowing, parameters, random_mlp

import jaxlump
from jaxlump import baselines as B
from jaxlump.baselines._interpolative import pivoted_cholesky_pivots


def _qr_pivots(a, k):
    _, _, pivots = jsl.qr(jnp.asarray(a), mode="economic", pivoting=True)
    return np.asarray(pivots)[:k]


@pytest.mark.parametrize("seed", range(4))
def test_pivoted_cholesky_pivots_equal_cpqr(seed):
    generator = np.random.default_rng(seed)
    a = generator.standard_normal((50, 9)) * generator.uniform(0.2, 3.0, 9)
    assert pivoted_cholesky_pivots(a.T @ a, 6).tolist() == _qr_pivots(a, 6).tolist()


def test_rank_deficient_columns_come_last():
    generator = np.random.default_rng(0)
    base = generator.standard_normal((30, 3))
    a = np.concatenate([base, base @ generator.standard_normal((3, 3))], axis=1)  # rank 3
    pivots = pivoted_cholesky_pivots(a.T @ a, 6)
    assert len(set(pivots.tolist())) == 6
    assert np.linalg.matrix_rank(a[:, pivots[:3]]) == 3


@pytest.mark.parametrize("weighted", [False, True])
def test_id_prune_keeps_the_cpqr_pivots_of_the_centred_activations(weighted):
    model = random_mlp(jr.key(0), (3, 10, 2), "tanh")
    x = jr.normal(jr.key(1), (70, 3))
    weights, biases = parameters(model)
    a = np.tanh(np.asarray(x) @ weights[0].T + biases[0])
    a = a - a.mean(axis=0)
    if weighted:
        a = a * np.linalg.norm(weights[1], axis=0)
    _, info = B.id_prune(model, x, 0.4, weighted=weighted)
    assert set(np.flatnonzero(np.asarray(info.partitions[0]) >= 0)) == set(_qr_pivots(a, 6).tolist())


def test_id_prune_refit_is_the_interpolative_decomposition():
    # T = R11⁻¹R12 (the ID's interpolation matrix) equals the LS coefficients: with ridge 0 the next layer is
    # W_S + W_R Tᵀ.
    model = random_mlp(jr.key(2), (3, 8, 2), "tanh")
    x = jr.normal(jr.key(3), (90, 3))
    weights, biases = parameters(model)
    a = np.tanh(np.asarray(x) @ weights[0].T + biases[0])
    ac = a - a.mean(axis=0)
    _, r, pivots = jsl.qr(jnp.asarray(ac), mode="economic", pivoting=True)
    r, pivots = np.asarray(r), np.asarray(pivots)
    k = 5
    t = np.linalg.solve(r[:k, :k], r[:k, k:])  # (k, n − k): A_R ≈ A_S T
    s_idx, r_idx = pivots[:k], pivots[k:]
    w_ref = weights[1][:, s_idx] + weights[1][:, r_idx] @ t.T
    small, info = B.id_prune(model, x, 3 / 8, ridge=0.0)
    kept = np.flatnonzero(np.asarray(info.partitions[0]) >= 0)
    order = np.argsort(s_idx)  # the small model stores kept neurons in index order
    assert kept.tolist() == sorted(s_idx.tolist())
    np.testing.assert_allclose(parameters(small)[0][1], w_ref[:, order], rtol=1e-7, atol=1e-9)


def test_a_singular_refit_is_reported_or_raised():
    """Two examples and `ridge=0`: the refit of the kept neurons is rank-deficient (rank 1)."""
    model, x = random_mlp(jr.key(0), (3, 6, 6, 2), "tanh"), jr.normal(jr.key(1), (2, 3))
    with pytest.raises(jaxlump.CompressionError, match="least-squares refit"):
        B.id_prune(model, x, 0.5, ridge=0.0)
    _, info = B.id_prune(model, x, 0.5, ridge=0.0, throw=False)
    assert info.result == jaxlump.RESULTS.least_squares_rank_deficient
    _, info = B.id_prune(model, jr.normal(jr.key(1), (64, 3)), 0.5, ridge=0.0)
    assert info.result == jaxlump.RESULTS.successful


def test_an_overflowing_gram_fails_the_selection():
    """Activations ~1e200 (finite): their Gram overflows, so the pivots mean nothing although the pruned model is
    finite."""
    model = overflowing()
    x = jr.normal(jr.key(1), (32, 3))
    small, info = B.id_prune(model, x, 0.5, reconstruct=False, throw=False)
    assert info.result == jaxlump.RESULTS.selection_nonfinite
    assert all(np.all(np.isfinite(w)) for w in parameters(small)[0])
    with pytest.raises(jaxlump.CompressionError, match="id_prune"):
        B.id_prune(model, x, 0.5, reconstruct=False)
