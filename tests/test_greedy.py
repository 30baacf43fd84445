"""The greedy merge-or-remove path (`jaxlump._methods.greedy`) against brute-force least squares and ZipLM's loop
(NumPy, float64)."""

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from _networks import random_mlp, set_partition
from _refit_reference import brute_costs, least_squares_error, zipLM_order

from jaxlump import Greedy
from jaxlump._criteria.merge_cost import current_fit, initial_state
from jaxlump._methods.greedy import advance, candidate_costs, greedy_path, start
from jaxlump._model import to_chain

N_OUT = 4


def test_removal_path_is_zipLM_greedy_elimination():
    model = random_mlp(jr.key(6), (3, 10, 5))
    chain = to_chain(model)
    x = jr.normal(jr.key(7), (120, 3))
    zs, acts = chain.forward(x)
    state, problem = initial_state(zs[0], acts[1], chain.weights[1], "tanh", centre=True, damping=1e-3)
    path = greedy_path(state, problem, False)
    labels = np.asarray(path.labels)
    order = [
        int(np.flatnonzero((labels[t] == -1) & ((labels[t - 1] if t else np.arange(10)) != -1))[0]) for t in range(9)
    ]
    features = np.asarray(acts[1]) - np.asarray(acts[1]).mean(0)
    assert order == zipLM_order(features, np.asarray(chain.weights[1]), float(problem.lam), 9)
    assert not np.any(np.asarray(path.merged))
    assert np.all(np.diff(np.asarray(path.cumulative)) >= 0)


# --- the greedy path against brute-force least squares ------------------------------------------------------------


def _activation(name):
    return np.tanh if name == "tanh" else (lambda v: np.maximum(v, 0.0))


def _reference_greedy(z, a, w2, activation, centre, damping):
    """The exact greedy, independently: every step tries every merge and every removal by brute-force least
    squares in the augmented geometry, applies the cheapest (ties: lowest (i, j), then lowest slot; pairs whose
    pre-activations coincide cost exactly 0 — their undamped cost; a merge keeps the member the refit can least
    do without), and records the sum of the costs it applied (without duplicates: the refit error it reached)."""
    fn = _activation(activation)
    n_samples, n = a.shape
    features = a - a.mean(0) if centre else a
    lam = damping * np.mean(np.sum(features**2, axis=0))
    targets = np.vstack([features @ w2.T, np.sqrt(lam) * w2.T])
    scale = np.mean(np.sqrt(np.sum(features**2, 0) / n_samples) * np.linalg.norm(w2, axis=0))
    z_rms = np.sqrt(np.mean(z**2))
    pre, members, sizes = list(z.T), list(np.eye(n)), np.ones(n)
    alive, labels = list(range(n)), np.arange(n)

    def column(p, c):
        f = fn(p)
        return np.concatenate([f - f.mean() if centre else f, np.sqrt(lam) * c])

    def error(slots, extra=()):
        return least_squares_error(np.column_stack([column(pre[s], members[s]) for s in slots] + list(extra)), targets)

    out, total = [], 0.0
    for _ in range(n - 1):
        base = error(alive)
        removal = {j: error([s for s in alive if s != j]) - base for j in alive}
        merge = {}
        for i in alive:
            for j in alive:
                if i < j:
                    alpha = sizes[i] / (sizes[i] + sizes[j])
                    p, c = alpha * pre[i] + (1 - alpha) * pre[j], alpha * members[i] + (1 - alpha) * members[j]
                    duplicate = np.sqrt(np.mean((pre[i] - pre[j]) ** 2)) <= 64 * np.finfo(float).eps * z_rms
                    rest = [s for s in alive if s not in (i, j)]
                    merge[i, j] = 0.0 if duplicate else error(rest, [column(p, c)]) - base
        drop = min(alive, key=lambda j: (removal[j], j))
        pair = min(merge, key=lambda ij: (merge[ij], ij)) if merge else None
        total += min(merge[pair], removal[drop]) if pair is not None else removal[drop]
        if pair is not None and merge[pair] < removal[drop]:
            keep, gone = pair if removal[pair[0]] >= removal[pair[1]] else pair[::-1]
            alpha = sizes[keep] / (sizes[keep] + sizes[gone])
            pre[keep] = alpha * pre[keep] + (1 - alpha) * pre[gone]
            members[keep] = alpha * members[keep] + (1 - alpha) * members[gone]
            sizes[keep] += sizes[gone]
            labels = np.where(labels == gone, keep, labels)
            alive.remove(gone)
        else:
            labels = np.where(labels == drop, -1, labels)
            alive.remove(drop)
        out.append((labels.copy(), pair is not None and merge[pair] < removal[drop], total))
    labels, merged, errors = zip(*out)
    return np.array(labels), np.array(merged), np.sqrt(np.maximum(errors, 0) / n_samples) / scale


def _random_layer(seed, activation, n=8, n_samples=48, planted=False):
    generator = np.random.default_rng(seed)
    x = generator.standard_normal((n_samples, 3))
    w1, b1 = generator.standard_normal((n, 3)), 0.3 * generator.standard_normal(n)
    if planted:  # neurons 1 and 5, and 2, 6 and 7, are exact duplicates
        w1[5], b1[5] = w1[1], b1[1]
        w1[[6, 7]], b1[[6, 7]] = w1[2], b1[2]
    z = x @ w1.T + b1
    return z, _activation(activation)(z), generator.standard_normal((N_OUT, n))


def _path(z, a, w2, activation, centre, candidates, damping=1e-3, nearest=None):
    state, problem = initial_state(jnp.asarray(z), jnp.asarray(a), jnp.asarray(w2), activation, centre=centre,
                                   damping=damping)  # fmt: skip
    return greedy_path(state, problem, True, candidates=candidates, nearest=nearest)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("centre", [True, False])
def test_greedy_path_with_all_candidates_is_the_exact_greedy(activation, centre):
    z, a, w2 = _random_layer(11, activation)
    labels, merged, cumulative = _reference_greedy(z, a, w2, activation, centre, 1e-3)
    assert 0 < merged.sum() < len(merged)  # both kinds of step occur
    for candidates, nearest in ((None, None), (7, None), (40, None), (None, 7)):  # 7 = n − 1; 40 is clamped
        path = _path(z, a, w2, activation, centre, candidates, nearest=nearest)
        np.testing.assert_array_equal(np.asarray(path.labels), labels)
        np.testing.assert_array_equal(np.asarray(path.merged), merged)
        np.testing.assert_allclose(np.asarray(path.cumulative), cumulative, rtol=1e-7)


@pytest.mark.parametrize("candidates, nearest", [(None, None), (1, None), (1, 2)])
def test_planted_duplicates_are_merged_first_at_zero_cost(candidates, nearest):
    z, a, w2 = _random_layer(12, "tanh", planted=True)
    labels, merged, cumulative = _reference_greedy(z, a, w2, "tanh", True, 1e-3)
    path = _path(z, a, w2, "tanh", True, candidates, nearest=nearest)
    np.testing.assert_array_equal(np.asarray(path.merged[:3]), [True] * 3)
    np.testing.assert_array_equal(np.asarray(path.cumulative[:3]), 0.0)  # exactly: ε = 0 merges them
    assert set_partition(np.asarray(path.labels[2])) == set_partition([0, 1, 2, 3, 4, 1, 2, 2])
    if candidates is None:
        np.testing.assert_array_equal(np.asarray(path.labels), labels)
        np.testing.assert_allclose(np.asarray(path.cumulative[3:]), cumulative[3:], rtol=1e-7)


def _brute_now(greedy, problem, w2):
    """The live slots and the brute-force merge costs between them in the greedy state's configuration."""
    layer, lam = greedy.layer, float(problem.lam)
    live = np.flatnonzero(np.asarray(layer.alive))
    f, m, pre = np.asarray(layer.features), np.asarray(layer.members), np.asarray(layer.pre)
    columns = [np.concatenate([f[:, i], np.sqrt(lam) * m[:, i]]) for i in live]
    targets = np.vstack([np.asarray(problem.targets), np.sqrt(lam) * w2.T])
    sizes = np.asarray(layer.sizes)[live]
    merge, _ = brute_costs(columns, [pre[:, i] for i in live], [m[:, i] for i in live], sizes, targets, lam, True)
    return live, (merge + merge.T) / 2


def _nearest_now(greedy, slot, count):
    """The `count` live slots other than `slot` whose pre-activations are nearest to its own (NumPy)."""
    layer = greedy.layer
    pre, live = np.asarray(layer.pre), np.flatnonzero(np.asarray(layer.alive))
    others = live[live != slot]
    distance = np.sum((pre[:, others] - pre[:, [slot]]) ** 2, axis=0)
    return set(others[np.argsort(distance)[:count]].tolist())


@pytest.mark.parametrize("pool", [None, 5])
def test_restricted_candidates_carry_exact_costs_and_fit(pool):
    """With 3 candidates per slot, after merges and removals every candidate pair's maintained cost is the
    brute-force least-squares increase of merging it now, the rank-one-updated fit is the fit from scratch, and
    right after a merge the merged slot's candidates are its 3 cheapest partners — among all slots, or among its
    `pool` nearest by pre-activation."""
    z, a, w2 = _random_layer(13, "tanh", n=10)
    state, problem = initial_state(jnp.asarray(z), jnp.asarray(a), jnp.asarray(w2), "tanh", centre=True, damping=1e-2)
    greedy = start(state, problem, True, 3, pool=pool)
    step = eqx.filter_jit(lambda g, p: advance(g, p, pool))
    kinds, refreshed = [], 0
    for _ in range(5):
        sizes = np.asarray(greedy.layer.sizes)
        greedy, merged, _ = step(greedy, problem)
        kinds.append(bool(merged))
        if merged:
            keep = int(np.argmax(np.asarray(greedy.layer.sizes) - sizes))
            live, brute = _brute_now(greedy, problem, w2)
            allowed = set(live.tolist()) if pool is None else _nearest_now(greedy, keep, pool)
            row = brute[list(live).index(keep)]
            order = [s for s in live[np.argsort(row)].tolist() if s in allowed]
            cheapest = set(order[:3])
            assert set(np.asarray(greedy.candidates.partners[keep]).tolist()) == cheapest
            refreshed += 1
    assert True in kinds and False in kinds and refreshed
    live, brute = _brute_now(greedy, problem, w2)
    costs, partners = np.asarray(candidate_costs(greedy)), np.asarray(greedy.candidates.partners)
    index = {s: r for r, s in enumerate(live.tolist())}
    scale = np.max(brute[np.isfinite(brute)])
    checked = 0
    for i in live:
        for r, j in enumerate(partners[i].tolist()):
            if j in index and j != i:
                np.testing.assert_allclose(costs[i, r], brute[index[i], index[j]], rtol=1e-8, atol=1e-12 * scale)
                checked += 1
            else:
                assert costs[i, r] == np.inf
    assert checked >= 8
    fresh = current_fit(greedy.layer, problem)
    np.testing.assert_allclose(np.asarray(greedy.fit.inverse), np.asarray(fresh.inverse), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.asarray(greedy.fit.weights), np.asarray(fresh.weights), rtol=1e-9, atol=1e-12)


def test_bad_candidates_are_refused():
    z, a, w2 = _random_layer(14, "tanh")
    for bad in (0, -2, 2.5, True, "4"):
        with pytest.raises(ValueError, match="candidates"):
            _path(z, a, w2, "tanh", True, bad)
    for bad in (0, -2, 2.5, True, "4"):
        with pytest.raises(ValueError, match="nearest"):
            _path(z, a, w2, "tanh", True, 3, nearest=bad)
        with pytest.raises(ValueError, match="nearest"):
            Greedy(nearest=bad)
