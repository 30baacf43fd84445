"""ε-refinements against plain-Python references, and their properties on random distance matrices."""

import equinox as eqx
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from _networks import random_mlp
from hypothesis import given

import jaxlump
from jaxlump._criteria.refinement import components, representative

MAX_N = 12
# XLA on CPU flushes subnormals to zero (5e-324 <= 0 holds there), so they are left out.
DISTANCES = st.floats(0.0, 3.0, allow_subnormal=False)
# Compiled once per width; eager calls would re-trace the loops every time.
jit_representative = jax.jit(representative)
jit_components = jax.jit(components)


def reference_representative(distances: np.ndarray, eps: float, importance: np.ndarray) -> list[int]:
    """The greedy rule, literally: visit by decreasing importance (ties by index), join the first-founded
    block whose representative is within ε, else found a block."""
    n = len(importance)
    order = sorted(range(n), key=lambda i: (-importance[i], i))
    founded, labels = [], [None] * n
    for i in order:
        labels[i] = next((r for r in founded if distances[i][r] <= eps), i)
        if labels[i] == i:
            founded.append(i)
    return labels


def reference_components(distances: np.ndarray, eps: float) -> list[int]:
    """Breadth-first search over the graph `d ≤ ε`; each component labelled by its smallest index."""
    n = len(distances)
    labels = [None] * n
    for start in range(n):
        if labels[start] is not None:
            continue
        labels[start], frontier = start, [start]
        while frontier:
            i = frontier.pop()
            for j in range(n):
                if labels[j] is None and (distances[i][j] <= eps or distances[j][i] <= eps):
                    labels[j] = start
                    frontier.append(j)
    return labels


@st.composite
def problems(draw, distinct_importance=False):
    """A symmetric non-negative distance matrix with zero diagonal, ε (often exactly one of the distances, to
    exercise the `≤`), and importances (from a small set, to force ties, unless `distinct_importance`)."""
    n = draw(st.integers(1, MAX_N))
    values = st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0, 2.0]) | DISTANCES
    upper = draw(st.lists(values, min_size=n * (n - 1) // 2, max_size=n * (n - 1) // 2))
    distances = np.zeros((n, n))
    distances[np.triu_indices(n, 1)] = upper
    distances = distances + distances.T
    eps = draw(st.sampled_from(upper) | DISTANCES if upper else DISTANCES)
    if distinct_importance:
        importance = np.asarray(draw(st.permutations(range(n))), dtype=np.float64) * 0.5 + 0.25
    else:
        importance = np.asarray(draw(st.lists(st.sampled_from([0.0, 1.0, 2.5, 3.0]), min_size=n, max_size=n)))
    return distances, float(eps), importance


def _run(refinement, distances, eps, importance):
    return np.asarray(refinement(jnp.asarray(distances), jnp.asarray(eps), jnp.asarray(importance)))


def _blocks(labels) -> set[frozenset[int]]:
    labels = np.asarray(labels)
    return {frozenset(np.flatnonzero(labels == r).tolist()) for r in np.unique(labels)}


@given(problems())
def test_representative_matches_reference(problem):
    distances, eps, importance = problem
    labels = _run(jit_representative, distances, eps, importance)
    assert labels.tolist() == reference_representative(distances, eps, importance)
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels[labels], labels)  # every label is a representative of itself
    assert np.all(distances[np.arange(len(labels)), labels] <= eps)  # member–representative ≤ ε


@given(problems())
def test_components_matches_reference(problem):
    distances, eps, importance = problem
    labels = _run(jit_components, distances, eps, importance)
    assert labels.tolist() == reference_components(distances, eps)
    np.testing.assert_array_equal(labels[labels], labels)
    # Transitive closure: no related pair is split; each label is the smallest index of its block.
    related = distances <= eps
    assert np.all(labels[:, None] == labels[None, :], where=related)
    assert all(min(block) == labels[next(iter(block))] for block in _blocks(labels))


@given(problems(), st.floats(0.0, 1.0, allow_subnormal=False))
def test_components_is_monotone_in_eps(problem, extra):
    distances, eps, importance = problem
    fine = _run(jit_components, distances, eps, importance)
    coarse = _run(jit_components, distances, eps + extra, importance)
    assert len(np.unique(coarse)) <= len(np.unique(fine))
    together = fine[:, None] == fine[None, :]
    assert np.all(coarse[:, None] == coarse[None, :], where=together)  # coarse refines nothing apart


@given(problems(distinct_importance=True), st.randoms(use_true_random=False))
def test_permutation_equivariance(problem, rng):
    distances, eps, importance = problem
    n = len(importance)
    permutation = np.asarray(rng.sample(range(n), n))  # new neuron k is old neuron permutation[k]
    inverse = np.argsort(permutation)
    permuted = (distances[np.ix_(permutation, permutation)], eps, importance[permutation])
    labels = _run(jit_representative, distances, eps, importance)
    # With distinct importances the visiting order, hence each representative, moves with its neuron.
    np.testing.assert_array_equal(_run(jit_representative, *permuted), inverse[labels[permutation]])
    blocks = _run(jit_components, distances, eps, importance)
    assert _blocks(_run(jit_components, *permuted)) == _blocks(inverse[blocks[permutation]])


@pytest.mark.parametrize("refinement", [representative, components])
def test_deterministic(refinement):
    rng = np.random.default_rng(0)
    upper = rng.uniform(0, 1, (10, 10))
    distances = np.triu(upper, 1) + np.triu(upper, 1).T
    importance = np.round(rng.uniform(0, 2, 10))  # many ties
    runs = [_run(refinement, distances, 0.3, importance) for _ in range(2)]
    runs.append(_run(jax.jit(refinement), distances, 0.3, importance))
    assert all(np.array_equal(runs[0], run) for run in runs)
    assert 1 < len(np.unique(runs[0])) < 10


@pytest.mark.parametrize(
    "refinement, reference",
    [
        (representative, reference_representative),
        (components, lambda d, eps, importance: reference_components(d, eps)),
    ],
)
def test_traced_eps_jit_and_vmap_without_recompiling(refinement, reference):
    rng = np.random.default_rng(1)
    upper = rng.uniform(0, 1, (9, 9))
    distances = jnp.asarray(np.triu(upper, 1) + np.triu(upper, 1).T)
    importance = jnp.asarray(rng.uniform(0, 1, 9))

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def refine_at(eps):
        return refinement(distances, eps, importance)

    grid = np.array([0.0, 0.05, 0.2, 0.4, 0.7, 1.5])
    for eps in grid:
        expected = reference(np.asarray(distances), eps, np.asarray(importance))
        assert np.asarray(refine_at(jnp.asarray(eps))).tolist() == expected
    swept = jax.vmap(lambda eps: refinement(distances, eps, importance))(jnp.asarray(grid))
    for eps, labels in zip(grid, np.asarray(swept)):
        assert labels.tolist() == reference(np.asarray(distances), eps, np.asarray(importance))
    sizes = [len(np.unique(labels)) for labels in np.asarray(swept)]
    assert sizes[0] == 9 and sizes[-1] == 1  # ε = 0: singletons (no ties at distance 0); ε > max d: one block


def test_zero_distance_pairs_merge_at_eps_zero():
    distances = np.ones((5, 5)) - np.eye(5)
    distances[1, 3] = distances[3, 1] = 0.0
    importance = np.array([1.0, 0.5, 2.0, 3.0, 0.0])
    assert _run(representative, distances, 0.0, importance).tolist() == [0, 3, 2, 3, 4]
    assert _run(components, distances, 0.0, importance).tolist() == [0, 1, 2, 1, 4]


@pytest.mark.parametrize("given", ["components", "representative", None, 1])
def test_a_refinement_that_is_not_a_strategy_object_is_refused_naming_it(given):
    with pytest.raises(TypeError, match=r"`refinement` must be a jaxlump refinement.*jaxlump.Representative\(\)"):
        jaxlump.lump(random_mlp(jr.key(0), (2, 4, 1)), None, 0.1, refinement=given)


def test_a_user_refinement_is_used_as_given():
    class EveryNeuronAlone(jaxlump.AbstractRefinement):
        def __call__(self, relative, eps, importance):
            return jnp.arange(relative.shape[0], dtype=jnp.int32)

    model = random_mlp(jr.key(0), (2, 4, 1))
    small, info = jaxlump.lump(model, None, 1e9, refinement=EveryNeuronAlone())
    assert tuple(info.widths_after) == (2, 4, 1)
    assert tuple(jaxlump.lump(model, None, 1e9)[1].widths_after) == (2, 1, 1)
