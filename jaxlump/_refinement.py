"""ε-refinement: group one layer's neurons from their pairwise relative distances (DESIGN §3).

Both refinements return *representative labels*: `labels[i]` is the index of the neuron that
represents i's block (`labels[r] == r` for a representative). Shapes are fixed, ε may be traced, so
both run under `jax.jit` and `jax.vmap` over ε.

- `"representative"` (default): visit neurons in decreasing importance; a neuron joins the first
  founded block whose representative is within ε, else founds a block. Member–representative ≤ ε.
- `"components"` (ERODE's): the blocks are the connected components of the relation `d ≤ ε`.
  Monotone in ε, but it chains: on trained networks it collapses layers abruptly.
"""

import jax
import jax.numpy as jnp

from ._custom_types import Distances, Partition

REFINEMENTS = ("representative", "components")


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


def refine(name: str, relative: Distances, eps: jax.Array, importance: jax.Array) -> Partition:
    return {"representative": representative, "components": components}[name](relative, eps, importance)
