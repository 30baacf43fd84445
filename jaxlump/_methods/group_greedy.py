"""The greedy merge-or-remove path of a site whose units are *groups* of the consumer's input columns — a
convolution's channels (`k_h·k_w` columns of the next convolution's unfolded input, or `H·W` columns of a `Linear`
after a flatten), an attention layer's heads (`head_dim` columns of the output projection).

Unit u's activation is the block `X_u = f(σ(z_u))` (`R × g`): `f` maps the unit's activation map to its columns of
the consumer's input (an unfold, a flatten) and `z_u` is its pre-activation. The consumer's output on the rows is
`Y = Σ_u X_u W_uᵀ` (`R × m`). Removing unit u drops `X_u`; merging u and v (mean-in / sum-out) replaces both by
`X_m = f(σ(mean of their members' z))`, since the producer is linear in its rows. Each step applies the operation
whose cost — the rise of the consumer's least-squares refit error `E(S) = min_β ‖Y − X_S β‖² + λ‖β‖²` — is smallest:

- removal of a group G, group OBS: `ΔE_G = tr(A_Gᵀ (K_GG)⁻¹ A_G)` with `K = (X_SᵀX_S + λI)⁻¹` and `A = K X_SᵀY`;
- merge of u, v: removal of `G = u ∪ v`, then what adding `X_m` back recovers, by block elimination:
  `gain = tr(pᵀ S⁻¹ p)`, `S = X_mᵀX_m + λI − cᵀK_r c`, `p = X_mᵀY − cᵀA_r`, `c = X_restᵀX_m`, with `K_r`, `A_r` the
  downdated inverse and refit once G is gone.

Everything is recomputed from the current blocks at each step (one inverse of the `n·g` Gram, `O(R (n g)²)`, and
`O(R n g²)` per candidate pair), so the path is exact at every step; with `candidates=None` it is the exact greedy.
A pair whose pre-activations coincide on the data (within 64 ulps of their RMS) costs exactly 0, as for neurons.
Widths of a few hundred units at most (channels, heads) are what it is for.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._criteria.merge_cost import centred, unit_activation
from .._reconstruction.linalg import inv
from .greedy import Path

_ROUNDING_ULPS = 64
_PAIR_BLOCK = 64  # candidate pairs evaluated together (each holds an `R × g` block and its products)
_HIGHEST = jax.lax.Precision.HIGHEST


def _mm(spec, *operands):
    return jnp.einsum(spec, *operands, precision=_HIGHEST)


class GroupProblem(eqx.Module):
    """One group site's calibration data, in float64.

    - `pre`: each unit's pre-activation map `(n, B, ...)` (unit axis first); `features(a)` maps one unit's
      activation map `(B, ...)` to its `(R, g)` block of the consumer's input columns.
    - `weights`: the consumer's weights by unit, `(m, n, g)`; `centre`: the consumer has a bias (columns and
      targets are centred). `activation`: the combine's `jaxlump.Activation` name.
    - `precision`: the machine epsilon of the dtype `pre` was computed in (a float32 model's, when its
      pre-activations were captured in float32): two units whose pre-activations agree within 64 of it, relative to
      their RMS, are duplicates, whose merge costs exactly 0.
    - `merges_beyond_duplicates`: whether units that are not duplicates may merge (mean-in needs a producer that is
      linear in its rows; an attention head's output is not, so heads merge only with their duplicates).
    """

    pre: jax.Array
    weights: jax.Array
    features: object = eqx.field(static=True)
    activation: str = eqx.field(static=True)
    centre: bool = eqx.field(static=True)
    precision: float = eqx.field(static=True, default=float(np.finfo(np.float64).eps))
    merges_beyond_duplicates: bool = eqx.field(static=True, default=True)

    def blocks(self, pre) -> jax.Array:
        """`(R, n, g)`: the consumer's input columns of units with pre-activations `pre` `(n, B, ...)`, centred."""
        act = unit_activation(self.activation, False, pre, 0)
        return centred(jnp.moveaxis(jax.vmap(self.features)(act), 0, 1), self.centre, 0)


class _Step(eqx.Module):
    """The current refit: `inverse` `K` `(n g, n g)`, `fit` `A = K XᵀY` `(n g, m)` and `projected` `X K`
    `(R, n g)`."""

    inverse: jax.Array
    fit: jax.Array
    projected: jax.Array


def _refit(x, y, alive, lam) -> _Step:
    r, n, g = x.shape
    flat = x.reshape(r, n * g)
    live = jnp.repeat(alive, g).astype(x.dtype)
    gram = _mm("ri,rj->ij", flat, flat) + jnp.diag(lam * live + (1 - live))  # dead columns: decoupled, zero
    inverse = inv(gram) * live[:, None] * live[None, :]
    fit = _mm("ij,jm->im", inverse, _mm("ri,rm->im", flat, y))
    return _Step(inverse, fit, _mm("ri,ij->rj", flat, inverse))


def _removal_cost(step: _Step, columns) -> jax.Array:
    """`tr(A_Gᵀ (K_GG)⁻¹ A_G)` for the group of columns `columns` `(k,)`."""
    block = step.inverse[columns[:, None], columns[None, :]]
    a = step.fit[columns]
    return jnp.sum(a * _mm("ij,jm->im", inv(block), a))


def _columns(unit, g: int):
    return unit * g + jnp.arange(g)


def _merge_cost(problem: GroupProblem, state: "GroupState", step: _Step, lam, u, v) -> jax.Array:
    """The rise of the refit error when units u and v merge (see the module docs); `inf` unless both live."""
    x, y = state.blocks, state.targets
    r, n, g = x.shape
    pair = jnp.concatenate([_columns(u, g), _columns(v, g)])
    kgg = inv(step.inverse[pair[:, None], pair[None, :]])
    a_pair = step.fit[pair]
    removed = jnp.sum(a_pair * _mm("ij,jm->im", kgg, a_pair))
    weights = state.sizes[jnp.array([u, v])]
    pre = (weights[0] * state.pre[u] + weights[1] * state.pre[v]) / jnp.sum(weights)
    merged = problem.blocks(pre[None])[:, 0]  # (R, g)
    flat = x.reshape(r, n * g)
    c = _mm("ri,rg->ig", flat, merged)
    k_pair = step.inverse[:, pair]
    kc = _mm("ri,rg->ig", step.projected, merged) - _mm("ij,jg->ig", k_pair, c[pair])
    c = c.at[pair].set(0.0)
    kc_rest = kc - _mm("ij,jk,kg->ig", k_pair, kgg, kc[pair])
    fit_rest = step.fit - _mm("ij,jk,km->im", k_pair, kgg, a_pair)
    schur = _mm("rg,rh->gh", merged, merged) + lam * jnp.eye(g, dtype=x.dtype) - _mm("ig,ih->gh", c, kc_rest)
    p = _mm("rg,rm->gm", merged, y) - _mm("ig,im->gm", c, fit_rest)
    gain = jnp.sum(p * _mm("gh,hm->gm", inv(schur), p))
    z_diff = jnp.sqrt(jnp.mean((state.pre[u] - state.pre[v]) ** 2))
    duplicate = z_diff <= _ROUNDING_ULPS * problem.precision * state.pre_rms
    cost = jnp.maximum(removed - gain, 0.0) if problem.merges_beyond_duplicates else jnp.inf
    cost = jnp.where(duplicate, 0.0, cost)
    return jnp.where(state.alive[u] & state.alive[v] & (u != v), cost, jnp.inf)


class GroupState(eqx.Module):
    """The site between steps, in fixed shape `n` (dead slots are zero and not `alive`): `blocks` `(R, n, g)`,
    `pre` each slot's members' mean pre-activation, `sizes` its member count, `targets` the centred consumer
    output `(R, m)`, `pre_rms` the RMS pre-activation (the unit of the duplicate test)."""

    blocks: jax.Array
    pre: jax.Array
    sizes: jax.Array
    alive: jax.Array
    targets: jax.Array
    pre_rms: jax.Array


def _damping(state: GroupState, damping: float) -> jax.Array:
    r, n, g = state.blocks.shape
    diagonal = jnp.sum(state.blocks.reshape(r, n * g) ** 2, axis=0)
    level = jnp.mean(diagonal)
    return damping * jnp.where(level > 0, level, 1.0)


@eqx.filter_jit
def _costs(problem: GroupProblem, state: GroupState, pairs, lam):
    """Every slot's removal cost `(n,)` and the merge costs of `pairs` `(P, 2)` (`inf` for invalid pairs)."""
    g = state.blocks.shape[2]
    step = _refit(state.blocks, state.targets, state.alive, lam)
    n = state.alive.shape[0]
    removal = jax.vmap(lambda u: _removal_cost(step, _columns(u, g)))(jnp.arange(n))
    removal = jnp.where(state.alive, jnp.maximum(removal, 0.0), jnp.inf)
    merges = jax.lax.map(lambda uv: _merge_cost(problem, state, step, lam, uv[0], uv[1]), pairs, batch_size=_PAIR_BLOCK)
    return removal, merges


@eqx.filter_jit
def _merged(problem: GroupProblem, state: GroupState, u, v) -> GroupState:
    """`state` with slot u merged into slot v."""
    sizes = state.sizes
    pre = (sizes[u] * state.pre[u] + sizes[v] * state.pre[v]) / (sizes[u] + sizes[v])
    blocks = state.blocks.at[:, v].set(problem.blocks(pre[None])[:, 0]).at[:, u].set(0.0)
    return eqx.tree_at(
        lambda s: (s.blocks, s.pre, s.sizes, s.alive),
        state,
        (blocks, state.pre.at[v].set(pre), sizes.at[v].add(sizes[u]).at[u].set(0), state.alive.at[u].set(False)),
    )


def _removed(state: GroupState, u: int) -> GroupState:
    return eqx.tree_at(
        lambda s: (s.blocks, s.alive), state, (state.blocks.at[:, u].set(0.0), state.alive.at[u].set(False))
    )


def _padded(pairs: np.ndarray) -> jax.Array:
    """Pairs padded with `(0, 0)` (cost `inf`) to `_PAIR_BLOCK` times a power of two: a handful of shapes per site,
    each compiled once for every width the site is cut to, at most twice the pairs' work."""
    size = _PAIR_BLOCK * 2 ** int(np.ceil(np.log2(max(1, -(-len(pairs) // _PAIR_BLOCK))))) if len(pairs) else 0
    return jnp.asarray(np.concatenate([pairs, np.zeros((size - len(pairs), 2), np.int32)]))


def _candidate_pairs(partners: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """Each live slot with each of its live partners, every pair once."""
    n, k = partners.shape
    pairs = np.sort(np.stack([np.repeat(np.arange(n), k), partners.ravel()], axis=1), axis=1)
    pairs = pairs[alive[pairs[:, 0]] & alive[pairs[:, 1]] & (pairs[:, 0] != pairs[:, 1])]
    return np.unique(pairs, axis=0).astype(np.int32).reshape(-1, 2)


def group_path(
    problem: GroupProblem,
    *,
    merge: bool,
    damping: float,
    candidates: int | None,
    max_steps: int | None = None,
    stop_above: float | None = None,
) -> Path:
    """The greedy path of one group site down to one unit (`problem` in float64), as a `Path`: after step t the
    site has `n − 1 − t` units; `cumulative[t]` is how much the consumer's refit error has risen, relative
    (`sqrt(ΔE / R) / scale`, `scale` a typical unit's RMS contribution to the consumer's output), so ε = 0 admits
    only operations that cost exactly nothing. Merges are considered between each unit and its `candidates`
    partners of smallest merge cost (`None`: all pairs); a merged unit's partners are renewed from every live
    unit. The path stops early after `max_steps` steps, or after the first step whose `cumulative` exceeds
    `stop_above` (no later step can be within it)."""
    blocks = problem.blocks(problem.pre)
    r, n, g = blocks.shape
    targets = _mm("rug,mug->rm", blocks, problem.weights)
    scale = jnp.mean(jnp.sqrt(jnp.sum(_mm("rug,mug->urm", blocks, problem.weights) ** 2, axis=(1, 2)) / r))
    scale = float(jnp.maximum(scale, jnp.finfo(blocks.dtype).tiny))
    state = GroupState(blocks, problem.pre, jnp.ones(n), jnp.ones(n, bool), targets, jnp.sqrt(jnp.mean(problem.pre**2)))
    lam = _damping(state, damping)
    all_pairs = np.array([(u, v) for u in range(n) for v in range(u + 1, n)], np.int32).reshape(-1, 2)
    none = np.zeros((0, 2), np.int32)
    partners = None
    if merge and candidates is not None and n > 1:
        k = min(candidates, n - 1)
        _, costs = _costs(problem, state, _padded(all_pairs), lam)
        table = np.full((n, n), np.inf)
        costs = np.asarray(costs)[: len(all_pairs)]
        table[all_pairs[:, 0], all_pairs[:, 1]] = table[all_pairs[:, 1], all_pairs[:, 0]] = costs
        partners = np.argsort(table, axis=1, kind="stable")[:, :k]
    labels, total = np.arange(n), 0.0
    out_labels, out_merged, out_cumulative = [], [], []
    for _ in range(n - 1 if max_steps is None else min(max_steps, n - 1)):
        if stop_above is not None and out_cumulative and out_cumulative[-1] > stop_above:
            break
        alive = np.asarray(state.alive)
        if not merge:
            pairs = none
        elif partners is None:
            pairs = all_pairs[alive[all_pairs[:, 0]] & alive[all_pairs[:, 1]]]
        else:
            pairs = _candidate_pairs(partners, alive)
        removal, merges = _costs(problem, state, _padded(pairs), lam)
        removal, merges = np.asarray(removal), np.append(np.asarray(merges)[: len(pairs)], np.inf)
        best_removal, best_merge = int(np.argmin(removal)), int(np.argmin(merges))
        if merges[best_merge] < removal[best_removal]:
            keep, gone = (int(i) for i in pairs[best_merge])  # sorted: the merged unit takes the lower slot
            state = _merged(problem, state, jnp.asarray(gone), jnp.asarray(keep))  # traced: compiled once
            labels = np.where(labels == gone, keep, labels)
            total, merged = total + float(merges[best_merge]), True
            if partners is not None:
                renewed = np.array([(keep, j) for j in range(n)], np.int32)
                _, fresh = _costs(problem, state, _padded(renewed), lam)
                partners[keep] = np.argsort(np.asarray(fresh)[:n], kind="stable")[: partners.shape[1]]
        else:
            gone = best_removal
            state = _removed(state, gone)
            labels = np.where(labels == gone, -1, labels)
            total, merged = total + float(removal[best_removal]), False
        out_labels.append(labels.copy())
        out_merged.append(merged)
        out_cumulative.append(np.sqrt(total / r) / scale)
    return Path(
        np.asarray(out_labels, np.int32).reshape(-1, n),
        np.asarray(out_merged, bool),
        np.asarray(out_cumulative, np.float64),
    )
