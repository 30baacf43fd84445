"""Structured OBS (ZipLM) and OSSCAR swaps against NumPy references of their formulas, and exhaustive search."""

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from _networks import overflowing, parameters, random_mlp, rng

import jaxlump
from jaxlump import baselines as B
from jaxlump.baselines._obs import centred_gram, obs_removal_order
from jaxlump.baselines._osscar import local_search, refit_error, swap_gains


def _refit_error(h, w, keep):
    """E(S) = tr(W_R [(H⁻¹)_RR]⁻¹ W_Rᵀ), straight from the formula."""
    r = np.flatnonzero(~np.asarray(keep))
    if r.size == 0:
        return 0.0
    hinv = np.linalg.inv(h)
    return float(np.trace(w[:, r] @ np.linalg.inv(hinv[np.ix_(r, r)]) @ w[:, r].T))


def _greedy_reference(h, w, n_remove):
    """Greedy backward elimination that re-evaluates E(R ∪ {j}) for every candidate from scratch."""
    keep = np.ones(h.shape[0], bool)
    order = []
    for _ in range(n_remove):
        errors = []
        for j in range(h.shape[0]):
            trial = keep.copy()
            trial[j] = False
            errors.append(_refit_error(h, w, trial) if keep[j] else np.inf)
        j = int(np.argmin(errors))
        keep[j] = False
        order.append(j)
    return order


def _problem(seed, n=8, m=5, samples=40):
    generator = np.random.default_rng(seed)
    a = generator.standard_normal((samples, n)) @ generator.standard_normal((n, n))
    return centred_gram(a, 0.01), generator.standard_normal((m, n))


@pytest.mark.parametrize("seed", range(4))
def test_greedy_order_matches_the_formula(seed):
    h, w = _problem(seed)
    assert obs_removal_order(h, w, 7).tolist() == _greedy_reference(h, w, 7)


def _exhaustive_best(h, w, k):
    n = h.shape[0]
    best = min(itertools.combinations(range(n), k), key=lambda s: _refit_error(h, w, np.isin(np.arange(n), s)))
    return np.isin(np.arange(n), best)


@pytest.mark.parametrize("k", range(1, 6))
def test_greedy_is_exhaustive_optimum_for_diagonal_gram(k):
    # H diagonal: E(R) = Σ_{j∈R} ‖w_j‖² H_jj is additive, so greedy backward elimination is optimal.
    generator = np.random.default_rng(3)
    h = np.diag(generator.uniform(0.5, 3.0, 6))
    w = generator.standard_normal((4, 6))
    greedy = np.ones(6, bool)
    greedy[obs_removal_order(h, w, 6 - k)] = False
    assert np.array_equal(greedy, _exhaustive_best(h, w, k))


@pytest.mark.parametrize("seed", range(3))
def test_one_removal_is_exhaustive_optimum(seed):
    h, w = _problem(seed, n=6)
    greedy = np.ones(6, bool)
    greedy[obs_removal_order(h, w, 1)] = False
    assert np.array_equal(greedy, _exhaustive_best(h, w, 5))


def _np_hidden(weights, biases, x):
    return np.tanh(np.asarray(x) @ weights[0].T + biases[0])


def test_obs_prune_selection_and_weights_match_reference():
    model = random_mlp(jr.key(0), (3, 6, 2), "tanh")
    x = jr.normal(jr.key(1), (80, 3))
    weights, biases = parameters(model)
    a = _np_hidden(weights, biases, x)
    keep = np.ones(6, bool)
    keep[obs_removal_order(centred_gram(a, 0.01), weights[1], 3)] = False
    small, info = B.obs_prune(model, x, 0.5, ridge=0.0)
    assert np.array_equal(np.asarray(info.partitions[0]) >= 0, keep)
    # Refit with ridge 0: W̃_S = W_S + W_R H_RS H_SS⁻¹ (centred, undamped H), b̃ = z̄ − W̃ ā_S.
    ac = a - a.mean(axis=0)
    h = ac.T @ ac
    s, r = np.flatnonzero(keep), np.flatnonzero(~keep)
    w_ref = weights[1][:, s] + weights[1][:, r] @ h[np.ix_(r, s)] @ np.linalg.inv(h[np.ix_(s, s)])
    z_mean = (a @ weights[1].T + biases[1]).mean(axis=0)
    b_ref = z_mean - w_ref @ a[:, s].mean(axis=0)
    new_w, new_b = parameters(small)
    np.testing.assert_allclose(new_w[0], weights[0][s], atol=1e-9)
    np.testing.assert_allclose(new_w[1], w_ref, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(new_b[1], b_ref, rtol=1e-8, atol=1e-9)


def test_sequential_selection_uses_the_pruned_network():
    model = random_mlp(jr.key(2), (3, 8, 8, 2), "tanh")
    x = jr.normal(jr.key(3), (100, 3))
    weights, biases = parameters(model)
    a1 = _np_hidden(weights, biases, x)
    keep1 = np.ones(8, bool)
    keep1[obs_removal_order(centred_gram(a1, 0.01), weights[1], 4)] = False
    a2 = np.tanh(a1[:, keep1] @ weights[1][:, keep1].T + biases[1])  # layer 2 after layer 1's pruning, no refit
    keep2 = np.ones(8, bool)
    keep2[obs_removal_order(centred_gram(a2, 0.01), weights[2], 4)] = False
    _, info = B.obs_prune(model, x, 0.5, sequential=True, reconstruct=False)
    assert np.array_equal(np.asarray(info.partitions[0]) >= 0, keep1)
    assert np.array_equal(np.asarray(info.partitions[1]) >= 0, keep2)


def test_sequential_mode_reports_a_failed_intermediate_refit():
    """With 8 examples and no ridge, the refit inside the sequential loop (layer 3 still reads all 12 neurons of
    layer 2) is rank-deficient, while the final one (3 neurons left in each layer) is not: only the first fails."""
    model = random_mlp(jr.key(2), (3, 12, 12, 2), "tanh")
    x = jr.normal(jr.key(3), (8, 3))
    options = dict(sparsity=0.75, reconstruct=True, ridge=0.0, throw=False)
    _, parallel = B.obs_prune(model, x, **options)
    assert parallel.result == jaxlump.RESULTS.successful
    _, sequential = B.obs_prune(model, x, sequential=True, **options)
    assert sequential.result == jaxlump.RESULTS.least_squares_rank_deficient
    with pytest.raises(jaxlump.CompressionError, match="least-squares refit"):
        B.obs_prune(model, x, sequential=True, sparsity=0.75, ridge=0.0)


@pytest.mark.parametrize("seed", range(3))
def test_swap_gains_match_brute_force(seed):
    h, w = _problem(seed, n=7)
    keep = np.zeros(7, bool)
    keep[rng(jr.key(seed)).permutation(7)[:4]] = True
    gains = swap_gains(h, w, keep)
    base = refit_error(h, w, keep)
    for a, i in enumerate(np.flatnonzero(keep)):
        for b, j in enumerate(np.flatnonzero(~keep)):
            trial = keep.copy()
            trial[i], trial[j] = False, True
            np.testing.assert_allclose(gains[a, b], base - _refit_error(h, w, trial), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(base, _refit_error(h, w, keep), rtol=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_local_search_is_a_local_optimum_no_worse_than_obs(seed):
    h, w = _problem(seed + 10, n=9)
    start = np.ones(9, bool)
    start[obs_removal_order(h, w, 5)] = False
    final = local_search(h, w, start, max_swaps=50)
    assert final.sum() == 4
    assert _refit_error(h, w, final) <= _refit_error(h, w, start) + 1e-12
    base = _refit_error(h, w, final)
    for i in np.flatnonzero(final):
        for j in np.flatnonzero(~final):
            trial = final.copy()
            trial[i], trial[j] = False, True
            assert _refit_error(h, w, trial) >= base * (1 - 1e-9)


def test_osscar_prune_never_has_a_larger_first_layer_error_than_obs():
    model = random_mlp(jr.key(4), (3, 12, 2), "tanh")
    x = jr.normal(jr.key(5), (60, 3))
    a = _np_hidden(*parameters(model), x)
    h = centred_gram(a, 0.01)
    w = parameters(model)[0][1]
    for sparsity in (0.25, 0.5, 0.75):
        _, obs_info = B.obs_prune(model, x, sparsity)
        _, osscar_info = B.osscar_prune(model, x, sparsity)
        obs_keep, osscar_keep = (np.asarray(i.partitions[0]) >= 0 for i in (obs_info, osscar_info))
        assert osscar_keep.sum() == obs_keep.sum()
        assert refit_error(h, w, osscar_keep) <= refit_error(h, w, obs_keep) + 1e-12


X = jr.normal(jr.key(7), (64, 3))
MODEL = eqx.nn.MLP(3, 2, 10, 2, activation=jnp.tanh, key=jr.key(6))
STRUCTURED = {
    "obs": lambda m, x, s: B.obs_prune(m, x, s),
    "obs_sequential": lambda m, x, s: B.obs_prune(m, x, s, sequential=True),
    "osscar": lambda m, x, s: B.osscar_prune(m, x, s),
    "id": lambda m, x, s: B.id_prune(m, x, s),
    "id_weighted": lambda m, x, s: B.id_prune(m, x, s, weighted=True),
    "flap": lambda m, x, s: B.flap_prune(m, x, s),
    "fold": lambda m, x, s: B.fold(m, x, s, repair=True, reconstruct=True),
    "zipit": lambda m, x, s: B.zipit_merge(m, x, s, reconstruct=True),
    "neuron_merge": lambda m, x, s: B.neuron_merge(m, x, s),
    "lowrank": lambda m, x, s: B.lowrank(m, x, s),
}


@pytest.mark.parametrize("name", STRUCTURED)
def test_keeping_every_neuron_returns_the_model_unchanged(name):
    """The same parameters; lowrank's result is a plain sequence of layers whatever the sparsity (its type may not
    depend on how many layers it factorised)."""
    small, info = STRUCTURED[name](MODEL, X, 0.0)
    assert type(small) is (eqx.nn.Sequential if name == "lowrank" else type(MODEL))
    for a, b in zip(jax.tree_util.tree_leaves(eqx.filter(small, eqx.is_array)), jax.tree_util.tree_leaves(MODEL)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert info.structured and int(info.cost_after.dense_params) == int(info.cost_before.dense_params)


@pytest.mark.parametrize("name", STRUCTURED)
def test_results_are_physically_smaller_and_consistent(name):
    import jaxlump

    small, info = STRUCTURED[name](MODEL, X, 0.5)
    assert info.structured
    assert int(jaxlump.cost(small).dense_params) == int(info.cost_after.dense_params)
    assert int(info.cost_after.dense_params) < int(info.cost_before.dense_params)
    assert bool(jnp.all(jnp.isfinite(jax.vmap(small)(X))))
    if name != "lowrank":
        widths = jaxlump._model.to_chain(small).widths
        assert [int(w) for w in info.widths_after] == list(widths)
        for p, n in zip(info.partitions, widths[1:-1]):
            p = np.asarray(p)
            assert p.max() == n - 1 and p.min() >= -1


@pytest.mark.parametrize("name", STRUCTURED)
def test_bad_sparsity_is_refused(name):
    with pytest.raises(ValueError, match="sparsity"):
        STRUCTURED[name](MODEL, X, 1.0)


def test_bad_damp_and_missing_data_are_refused():
    with pytest.raises(ValueError, match="damping"):
        B.obs_prune(MODEL, X, 0.5, damping=-1.0)
    with pytest.raises(ValueError, match="x_calib"):
        B.obs_prune(MODEL, None, 0.5)
    with pytest.raises(ValueError, match="max_swaps"):
        B.osscar_prune(MODEL, X, 0.5, max_swaps=-1)


# --- failures are checked: info.result, or a CompressionError with throw=True -------------------------------------


@pytest.mark.parametrize("prune", [B.obs_prune, B.osscar_prune])
@pytest.mark.parametrize("undamped", ["ridge", "damping"])
def test_a_singular_solve_is_reported_or_raised(prune, undamped):
    """Two examples: the centred activations have rank 1. With `ridge=0` the refit of the kept neurons is singular,
    with `damping=0` OBS's `H⁻¹` does not exist; a success would be false. The default call on the same data is
    well-posed."""
    model, x = random_mlp(jr.key(0), (3, 6, 6, 2), "tanh"), jr.normal(jr.key(1), (2, 3))
    with pytest.raises(jaxlump.CompressionError, match="singular"):
        prune(model, x, 0.5, **{undamped: 0.0})
    _, info = prune(model, x, 0.5, **{undamped: 0.0}, throw=False)
    expected = {"ridge": jaxlump.RESULTS.least_squares_rank_deficient, "damping": jaxlump.RESULTS.selection_singular}
    assert info.result == expected[undamped]
    assert info.widths_after.tolist() == [3, 3, 3, 2]
    _, info = prune(model, x, 0.5)
    assert info.result == jaxlump.RESULTS.successful


@pytest.mark.parametrize("prune", [B.obs_prune, B.osscar_prune])
def test_an_overflowing_gram_fails_the_selection_even_when_the_result_is_finite(prune):
    model, x = overflowing(), jr.normal(jr.key(1), (32, 3))
    small, info = prune(model, x, 0.5, reconstruct=False, throw=False)
    assert info.result == jaxlump.RESULTS.selection_nonfinite
    assert all(np.all(np.isfinite(w)) for w in parameters(small)[0])  # only the choice of neurons is meaningless
    with pytest.raises(jaxlump.CompressionError, match="obs_prune|osscar_prune"):
        prune(model, x, 0.5)
    _, info = prune(model, x, 0.0, throw=False)  # nothing is selected at s = 0: nothing fails
    assert info.result == jaxlump.RESULTS.successful
