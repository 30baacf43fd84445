"""The oracle: rank-k lower bound and exact best subset against NumPy; the sandwich LB ≤ OPT ≤ greedy."""

import itertools

import jax.random as jr
import numpy as np
import pytest
from _networks import parameters, random_mlp

from jaxlump import baselines as B


def _setup(seed=0, widths=(3, 6, 5, 2)):
    model = random_mlp(jr.key(seed), widths, "tanh")
    x = jr.normal(jr.key(seed + 1), (70, widths[0]))
    weights, biases = parameters(model)
    a, acts = np.asarray(x), []
    for w, b in zip(weights[:-1], biases[:-1]):
        a = np.tanh(a @ w.T + b)
        acts.append(a)
    return model, x, weights, acts


def test_rank_bounds_are_the_tail_singular_values():
    model, x, weights, acts = _setup()
    bounds = B.rank_bounds(model, x)
    for l, a in enumerate(acts, start=1):
        z = a @ weights[l].T
        sigma = np.linalg.svd(z - z.mean(axis=0), compute_uv=False)
        expected = [np.sum(sigma[k:] ** 2) for k in range(a.shape[1] + 1)]
        np.testing.assert_allclose(bounds[l - 1], expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_best_subset_is_the_brute_force_least_squares_optimum(k):
    model, x, weights, acts = _setup()
    a = acts[0] - acts[0].mean(axis=0)
    z = a @ weights[1].T

    def error(subset):
        coefficients = np.linalg.lstsq(a[:, subset], z, rcond=None)[0]
        return np.sum((z - a[:, subset] @ coefficients) ** 2)

    best = min(itertools.combinations(range(6), k), key=lambda s: error(list(s)))
    keep, err = B.best_subset(model, x, 1, k)
    assert np.flatnonzero(keep).tolist() == list(best)
    np.testing.assert_allclose(err, error(list(best)), rtol=1e-8)


def test_sandwich_bound_optimum_greedy():
    model, x, _, _ = _setup(seed=3, widths=(3, 8, 2))
    bounds = B.rank_bounds(model, x)[0]
    for k in range(1, 8):
        _, best = B.best_subset(model, x, 1, k)
        small, _ = B.obs_prune(model, x, 1 - k / 8 + 1e-9, damping=0.0, ridge=0.0)
        greedy = B.layer_errors(model, small, x)[0]
        assert bounds[k] <= best * (1 + 1e-9) + 1e-12
        assert best <= greedy * (1 + 1e-7) + 1e-10


def test_layer_errors_respect_the_bound_for_every_structured_method():
    model, x, _, _ = _setup(seed=5, widths=(3, 10, 10, 2))
    bounds = B.rank_bounds(model, x)
    for small, info in (
        B.obs_prune(model, x, 0.5),
        B.fold(model, x, 0.5),
        B.zipit_merge(model, x, 0.5),
        B.flap_prune(model, x, 0.5),
    ):
        errors = B.layer_errors(model, small, x)
        for l, error in enumerate(errors):
            assert error >= bounds[l][int(info.widths_after[l + 1])] * (1 - 1e-9) - 1e-12


def test_enumeration_width_is_limited():
    model = random_mlp(jr.key(0), (3, 17, 2))
    with pytest.raises(ValueError, match="16"):
        B.best_subset(model, jr.normal(jr.key(1), (20, 3)), 1, 8)


@pytest.mark.parametrize(("layer", "k"), [(True, 2), (1.0, 2), (1, True), (1, 2.0)])
def test_best_subset_refuses_bad_layer_or_k(layer, k):
    """A bool is an int in Python: `layer=True` meant layer 1 without a word."""
    model = random_mlp(jr.key(0), (3, 6, 2))
    with pytest.raises(TypeError, match=r"`(layer|k)` must be an integer; received (True|1\.0|2\.0)"):
        B.best_subset(model, jr.normal(jr.key(1), (20, 3)), layer, k)
