"""ε-refinement: group one layer's neurons from their pairwise relative distances (DESIGN §3).

A refinement is a frozen strategy object (`jaxlump.Representative()`, `jaxlump.Components()`, or a subclass of
`jaxlump.AbstractRefinement`). Both return *representative labels*: `labels[i]` is the index of the neuron that
represents i's block (`labels[r] == r` for a representative). Shapes are fixed, ε may be traced, so
both run under `jax.jit` and `jax.vmap` over ε.

- `Representative()` (default): visit neurons in decreasing importance; a neuron joins the first
  founded block whose representative is within ε, else founds a block. Member–representative ≤ ε.
- `Components()` (ERODE's): the blocks are the connected components of the relation `d ≤ ε`.
  Monotone in ε, but it chains: on trained networks it collapses layers abruptly.
"""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Distances, Partition


def representative(relative: Distances, eps: jax.Array, importance: jax.Array) -> Partition:
    """Greedy representative refinement; ties in importance are broken by neuron index."""
    n = relative.shape[0]
    order = jnp.argsort(-importance, stable=True)
    rank = jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))

    def visit(k, state):
        labels, is_rep = state
        i = order[k]
        candidate_rank = jnp.where(is_rep & (relative[i] <= eps), rank, n)
        j = jnp.argmin(candidate_rank)
        joins = candidate_rank[j] < n
        return labels.at[i].set(jnp.where(joins, j, i).astype(jnp.int32)), is_rep.at[i].set(~joins)

    init = (jnp.arange(n, dtype=jnp.int32), jnp.zeros(n, bool))
    labels, _ = jax.lax.fori_loop(0, n, visit, init)
    return labels


def components(relative: Distances, eps: jax.Array, importance: jax.Array | None = None) -> Partition:
    """Connected components of `relative ≤ ε`, each labelled by its smallest neuron index."""
    del importance
    n = relative.shape[0]
    adjacent = (relative <= eps) | jnp.eye(n, dtype=bool)

    def propagate(state):
        labels, _ = state
        new = jnp.min(jnp.where(adjacent, labels[None, :], n), axis=1)
        return new, jnp.any(new != labels)

    labels, _ = jax.lax.while_loop(lambda s: s[1], propagate, (jnp.arange(n, dtype=jnp.int32), jnp.asarray(True)))
    return labels


class AbstractRefinement(eqx.Module):
    """How one layer's neurons are grouped into blocks from their pairwise relative distances at ε.

    Subclass it and implement `__call__(relative, eps, importance) -> labels`: `relative` the `(n, n)` distances,
    `eps` a traced scalar, `importance` one number per neuron; `labels[i]` the neuron representing i's block
    (`labels[r] == r` for a representative), with fixed shapes so that it runs under `jax.jit` and `jax.vmap`."""

    @abc.abstractmethod
    def __call__(self, relative: Distances, eps: jax.Array, importance: jax.Array) -> Partition:
        raise NotImplementedError


class Representative(AbstractRefinement):
    """Visit neurons in decreasing importance; each joins the first representative within ε, else founds a block
    (member–representative ≤ ε; smooth in ε). The default.

    ```python
    import jax.numpy as jnp, jaxlump
    d = jnp.array([[0.0, 0.1, 0.9], [0.1, 0.0, 0.9], [0.9, 0.9, 0.0]])
    assert jaxlump.Representative()(d, jnp.asarray(0.2), jnp.ones(3)).tolist() == [0, 0, 2]
    ```
    """

    def __call__(self, relative: Distances, eps: jax.Array, importance: jax.Array) -> Partition:
        return representative(relative, eps, importance)


class Components(AbstractRefinement):
    """ERODE's: the blocks are the connected components of `d ≤ ε` (monotone in ε, but it chains: on trained
    networks it collapses layers abruptly).

    ```python
    import jax.numpy as jnp, jaxlump
    d = jnp.array([[0.0, 0.1, 0.9], [0.1, 0.0, 0.15], [0.9, 0.15, 0.0]])
    assert jaxlump.Components()(d, jnp.asarray(0.2), jnp.ones(3)).tolist() == [0, 0, 0]
    ```
    """

    def __call__(self, relative: Distances, eps: jax.Array, importance: jax.Array) -> Partition:
        return components(relative, eps, importance)


def check_refinement(refinement) -> AbstractRefinement:
    """`refinement` itself when it is a refinement object; `TypeError` naming the argument otherwise."""
    if isinstance(refinement, AbstractRefinement):
        return refinement
    hint = ""
    if isinstance(refinement, str) and refinement in ("representative", "components"):
        hint = f" (strategies are objects: `jaxlump.{refinement.capitalize()}()`)"
    raise TypeError(
        "`refinement` must be a jaxlump refinement: `jaxlump.Representative()` (default), `jaxlump.Components()` or "
        f"a subclass of `jaxlump.AbstractRefinement`; received {refinement!r}{hint}."
    )
