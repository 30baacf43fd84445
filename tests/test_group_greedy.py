"""The greedy path of a group site against brute-force ridge least squares in NumPy, step for step."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlump._methods.group_greedy import GroupProblem, group_path

DAMPING = 1e-6


def _problem(seed: int, n=5, batch=30, g=3, m=4, duplicate=None):
    rng = np.random.default_rng(seed)
    pre = rng.normal(size=(n, batch, g))
    if duplicate is not None:
        pre[duplicate[1]] = pre[duplicate[0]]
    weights = rng.normal(size=(m, n, g))
    return pre, weights


def _flatten_pairs(a):
    """A consumer that reads a unit's map `(B, 3)` at three positions, two at a time (overlapping windows)."""
    return jnp.concatenate([a[:, :2], a[:, 1:]], axis=0)


def _blocks(pre, features, slots):
    """The centred consumer columns of `slots` (lists of original units), as NumPy."""
    out = [np.asarray(features(jnp.tanh(jnp.asarray(np.mean(pre[list(s)], axis=0))))) for s in slots]
    x = np.concatenate(out, axis=1)
    return x - x.mean(axis=0)


def _error(pre, weights, features, slots, lam) -> float:
    full = _blocks(pre, features, [[u] for u in range(pre.shape[0])])
    y = full @ weights.reshape(weights.shape[0], -1).T
    if not slots:
        return float(np.sum(y**2))
    x = _blocks(pre, features, slots)
    beta = np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]), x.T @ y)
    return float(np.sum((y - x @ beta) ** 2) + lam * np.sum(beta**2))


def _slots(labels) -> list[list[int]]:
    live = sorted(set(int(v) for v in labels) - {-1})
    return [[u for u, v in enumerate(labels) if v == s] for s in live]


def _options(slots, merge):
    """Every slot configuration one operation away: each removal, and each merge when allowed."""
    out = [slots[:i] + slots[i + 1 :] for i in range(len(slots))]
    if merge:
        for i, j in itertools.combinations(range(len(slots)), 2):
            rest = [s for k, s in enumerate(slots) if k not in (i, j)]
            out.append(rest + [sorted(slots[i] + slots[j])])
    return out


def _units(pre, weights, features):
    """The damping λ, the rows and the relative-error scale of the uncompressed site, as `group_path` defines them."""
    n = pre.shape[0]
    full = _blocks(pre, features, [[u] for u in range(n)])
    rows = full.shape[0]
    by_unit = full.reshape(rows, n, -1)
    scale = np.mean([np.sqrt(np.sum((by_unit[:, u] @ weights[:, u].T) ** 2) / rows) for u in range(n)])
    return DAMPING * np.mean(np.sum(full**2, axis=0)), rows, scale


def _path(pre, weights, features, merge, candidates):
    with jax.enable_x64(True):
        problem = GroupProblem(jnp.asarray(pre), jnp.asarray(weights), features, "tanh", True)
        return group_path(problem, merge=merge, damping=DAMPING, candidates=candidates)


@pytest.mark.parametrize("features", [lambda a: a, _flatten_pairs], ids=["flatten", "windows"])
@pytest.mark.parametrize("merge", [True, False], ids=["merge_or_remove", "group_obs"])
def test_every_step_is_the_cheapest_operation_and_its_error_is_the_least_squares_error(features, merge):
    pre, _ = _problem(0)
    g_out = np.asarray(features(jnp.zeros((30, 3)))).shape[1]
    weights = np.random.default_rng(1).normal(size=(4, 5, g_out))
    path = _path(pre, weights, features, merge, None)
    lam, rows, scale = _units(pre, weights, features)
    slots = [[u] for u in range(5)]
    uncompressed = _error(pre, weights, features, slots, lam)
    for t in range(4):
        after = _slots(path.labels[t])
        options = _options(slots, merge)
        errors = [_error(pre, weights, features, option, lam) for option in options]
        chosen = _error(pre, weights, features, after, lam)
        assert sorted(map(sorted, after)) in [sorted(map(sorted, o)) for o in options]
        assert chosen == pytest.approx(min(errors), rel=1e-6, abs=1e-9)
        assert path.cumulative[t] == pytest.approx(np.sqrt((chosen - uncompressed) / rows) / scale, rel=1e-6)
        assert bool(path.merged[t]) == (sum(map(len, after)) == sum(map(len, slots)))
        slots = after


def test_duplicate_units_merge_first_at_exactly_zero_cost():
    pre, weights = _problem(2, n=6, duplicate=(1, 4))
    path = _path(pre, weights, lambda a: a, True, 2)
    assert bool(path.merged[0]) and path.labels[0].tolist() == [0, 1, 2, 3, 1, 5]
    assert path.cumulative[0] == 0.0 and path.cumulative[1] > 0.0


def test_units_that_differ_by_more_than_rounding_are_not_duplicates():
    pre, weights = _problem(3, n=4, duplicate=(0, 2))
    pre[2] *= 1 + 1e-9  # far above float64 rounding, far below float32's
    with jax.enable_x64(True):
        strict = GroupProblem(jnp.asarray(pre), jnp.asarray(weights), lambda a: a, "tanh", True)
        loose = GroupProblem(
            jnp.asarray(pre), jnp.asarray(weights), lambda a: a, "tanh", True, float(np.finfo(np.float32).eps)
        )
        paths = [group_path(p, merge=True, damping=DAMPING, candidates=None) for p in (strict, loose)]
    assert paths[0].cumulative[0] > 0.0 and paths[1].cumulative[0] == 0.0


def test_a_path_stopped_early_is_the_full_paths_beginning():
    pre, weights = _problem(7, n=6)
    with jax.enable_x64(True):
        problem = GroupProblem(jnp.asarray(pre), jnp.asarray(weights), lambda a: a, "tanh", True)
        full = group_path(problem, merge=True, damping=DAMPING, candidates=None)
        first = group_path(problem, merge=True, damping=DAMPING, candidates=None, max_steps=2)
        bound = float(full.cumulative[2]) * 0.999  # the third step is the first above it
        stopped = group_path(problem, merge=True, damping=DAMPING, candidates=None, stop_above=bound)
    np.testing.assert_array_equal(first.labels, full.labels[:2])
    np.testing.assert_array_equal(stopped.labels, full.labels[:3])
    np.testing.assert_allclose(stopped.cumulative, full.cumulative[:3])
    assert np.all(np.diff(full.cumulative[:3]) > 0)  # the bound falls between steps 2 and 3
