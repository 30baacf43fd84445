"""The greedy merge-or-remove path of one hidden layer, kept exact step by step
(`jaxlump._criteria.merge_cost`'s costs).

The greedy path never recomputes the kernel. Each slot keeps `k` candidate partners (its `k` cheapest initial
merges; exact duplicates cost 0, so they are always among them) with their pair moments `(μ, u = K g, gᵀu, e,
‖μ‖²)`. A removal is a rank-one downdate of `K` and of the refit, and moves every pair's moments in
`O(n + m)`; a merge is two downdates and one bordered update (the merged column joins), `O(N + n + m)` per
pair. After a merge the merged slot's pairs are recomputed against every slot (its row of the kernel,
`O(N n (n + m) + n³)`) and its candidates become its `k` cheapest partners; after a removal the slot that lost
the most candidates is renewed the same way. With `k ≥ n − 1` this is the exact greedy (every pair, every
step); the tests check it step for step against brute-force least squares.
"""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._criteria.merge_cost import (
    Fit,
    LayerProblem,
    LayerState,
    Moments,
    _mm,
    _share,
    centred,
    current_fit,
    initial_state,
    layer_inputs,
    merge_costs,
    moments,
    pair_costs,
    partner_costs,
    relative,
    removal_costs,
    unit,
)


class Path(eqx.Module):
    """A greedy compression path of one hidden layer: after step t (0-based) the layer has `n − 1 − t` slots.

    `labels[t]`: each original neuron's slot after step t (`-1`: removed); `merged[t]`: whether step t merged
    (else removed); `cumulative[t]`: the next layer's refit error after step t, relative (`sqrt(E/N)/scale`).
    JAX arrays inside `greedy_path`; `jaxlump._methods.select.layer_paths` returns them as NumPy arrays (float64).
    """

    labels: jax.Array | np.ndarray
    merged: jax.Array | np.ndarray
    cumulative: jax.Array | np.ndarray

    @property
    def width(self) -> int:
        return self.labels.shape[1]

    def labels_after(self, steps: int) -> np.ndarray:
        """Each original neuron's slot after `steps` operations (`-1`: removed)."""
        return np.arange(self.width) if steps == 0 else np.asarray(self.labels[steps - 1])


class AbstractPath(eqx.Module):
    """How `merge_or_remove` computes a hidden layer's compression path (strategy): `Greedy()` (exact, for
    widths up to a few hundred) or `jaxlump.Rounds()` (Gram-only, batched, for any width)."""

    @abc.abstractmethod
    def paths(self, chain, x, layers, *, merge: bool, damping: float, candidates: int | None, steps) -> list:
        """The paths of the hidden layers `layers` (0-based) of `chain` on `x` (both float64), each computed for at
        least `steps[l]` operations; objects with `labels_after(steps)`, `merged` and `cumulative`."""


DEFAULT_NEAREST = 64  # its cost in error and its speed-up: `benchmarks/perf_merge.py`


class Greedy(AbstractPath):
    """The exact greedy path (`jaxlump._methods.greedy`): every merge cost kept exact step by step on all
    calibration rows, merges among each neuron's `candidates` (the compressor's option) partners, chosen among its
    `nearest` neurons by pre-activation on the data; `O(N n² (p + m) + n² k (N + n + m))` time per layer
    (`p = nearest`), practical up to widths of about 512.

    `nearest` (default 64; `None`: every neuron) bounds which pairs are priced at all: a merged neuron's pairs are
    recomputed with its `p` nearest neurons rather than with every one, which takes the path's `O(N n³)` to
    `O(N n² p)`. Duplicates are at distance 0, so ε = 0 stays exact; layers up to 65 wide are unaffected."""

    nearest: int | None = eqx.field(static=True, default=DEFAULT_NEAREST)

    def __check_init__(self):
        check_nearest(self.nearest)

    def paths(self, chain, x, layers, *, merge, damping, candidates, steps):
        del steps  # the greedy path always runs to one neuron
        zs, acts = layer_inputs(chain, x)
        paths = []
        for l in layers:
            state, problem = initial_state(
                zs[l],
                acts[l],
                chain.weights[l + 1],
                chain.activations[l],
                centre=chain.use_bias[l + 1],
                damping=damping,
                gated=chain.gated[l],
            )
            path = greedy_path(state, problem, merge, candidates=candidates, nearest=self.nearest)
            paths.append(Path(*(np.asarray(a) for a in (path.labels, path.merged, path.cumulative))))
        return paths


class Candidates(eqx.Module):
    """Each slot's candidate partners `(n, k)` and the `Moments` of those pairs, flat: pair `i k + r` is
    `(i, partners[i, r])`."""

    partners: jax.Array
    moments: Moments

    def pairs(self):
        n, k = self.partners.shape
        return jnp.repeat(jnp.arange(n), k), self.partners.ravel()


class GreedyState(eqx.Module):
    """The state of a greedy path between steps: the layer, its current refit, the merge candidates (`None`
    when merges are off)."""

    layer: LayerState
    fit: Fit
    candidates: Candidates | None


def check_candidates(candidates) -> int | None:
    if candidates is not None and (
        isinstance(candidates, (bool, np.bool_)) or not isinstance(candidates, (int, np.integer)) or candidates < 1
    ):
        raise ValueError(f"`candidates` must be an integer >= 1 or None (all pairs); received {candidates!r}.")
    return None if candidates is None else int(candidates)


def check_nearest(nearest) -> int | None:
    if nearest is not None and (
        isinstance(nearest, (bool, np.bool_)) or not isinstance(nearest, (int, np.integer)) or nearest < 1
    ):
        raise ValueError(f"`nearest` must be an integer >= 1 or None (every slot); received {nearest!r}.")
    return None if nearest is None else int(nearest)


def start(
    state: LayerState,
    problem: LayerProblem,
    allow_merge: bool,
    candidates: int | None,
    block_size: int = 256,
    pool: int | None = None,
):
    """The greedy path's first state: each slot's `candidates` partners of smallest initial merge cost (`None`:
    all `n − 1`), among all slots (`pool=None`, one `merge_costs` call) or among its `pool` nearest slots by
    pre-activation (`nearest`); planted duplicates cost 0 and are at distance 0, so they are always among them."""
    fit = current_fit(state, problem)
    if not allow_merge:
        return GreedyState(state, fit, None)
    n = state.alive.shape[0]
    k = n - 1 if candidates is None else min(candidates, n - 1)
    if pool is None:
        _, partners = jax.lax.top_k(-merge_costs(state, problem, block_size).merge, k)
    else:
        near = nearest(state, jnp.arange(n), pool)
        _, best = jax.lax.top_k(-partner_costs(state, problem, fit, near, block_size), k)
        partners = jnp.take_along_axis(near, best, axis=1)
    rows, cols = jnp.repeat(jnp.arange(n), k), partners.ravel()
    return GreedyState(state, fit, Candidates(partners, moments(state, problem, fit, rows, cols)))


def nearest(state: LayerState, slots: jax.Array, count: int) -> jax.Array:
    """For each of `slots`, the `count` other live slots whose pre-activations on the data are nearest
    (Euclidean; a merged slot's is its members' mean), `(len(slots), count)`; dead slots only fill a short list."""
    pre = state.pre
    square = jnp.sum(pre**2, axis=0)
    distance = square[slots][:, None] + square[None] - 2 * _mm("sa,sb->ab", pre[:, slots], pre)
    invalid = ~state.alive[None] | (jnp.arange(pre.shape[1])[None] == slots[:, None])
    return jax.lax.top_k(-jnp.where(invalid, jnp.inf, distance), count)[1]


def candidate_costs(greedy: GreedyState) -> jax.Array:
    """The current merge costs of every candidate pair `(i, partners[i, r])`, `(n, k)` (invalid: `inf`)."""
    rows, cols = greedy.candidates.pairs()
    costs = pair_costs(greedy.candidates.moments, greedy.fit, greedy.layer.alive, rows, cols)
    return costs.reshape(greedy.candidates.partners.shape)


def _kill(state: LayerState, j, labels) -> LayerState:
    dead = jnp.arange(state.alive.shape[0]) == j
    return LayerState(
        jnp.where(dead[None, :], 0.0, state.features),
        jnp.where(dead[None, :], 0.0, state.pre),
        jnp.where(dead[None, :], 0.0, state.members),
        jnp.where(dead, 0.0, state.sizes),
        state.alive & ~dead,
        labels,
    )


def _downdate(fit: Fit, m: Moments | None, j) -> tuple[Fit, Moments | None]:
    """Drop slot j from the fit (OBS: `K ← K − K_:j K_j: / K_jj`, `W_c ← W_c − W_c[:, j] K_j: / K_jj`) and carry
    the pairs' moments along in `O(n + m)` each: `u ← u − K_:j u_j / K_jj`, `e ← e + W_c[:, j] u_j / K_jj`,
    `gᵀu ← gᵀu − u_j² / K_jj`."""
    k, wc = fit.inverse, fit.weights
    kj, kjj, wj = k[:, j], k[j, j], wc[:, j]
    other = (jnp.arange(k.shape[0]) != j).astype(k.dtype)
    fit = Fit(
        (k - jnp.outer(kj, kj) / kjj) * other[:, None] * other[None], (wc - jnp.outer(wj, kj) / kjj) * other[None]
    )
    if m is None:
        return fit, None
    uj = m.u[:, j]
    step = uj[:, None] / kjj
    updated = ((m.u - step * kj[None]) * other[None], m.gu - uj * step[:, 0], m.e + step * wj[None])
    return fit, eqx.tree_at(lambda t: (t.u, t.gu, t.e), m, updated)


def _refresh(greedy: GreedyState, problem: LayerProblem, slot, pool: int | None) -> GreedyState:
    """Recompute the pairs of `slot` with every slot (`pool=None`; its row of the kernel, `O(N n (n + m) + n³)`)
    or with its `pool` nearest slots (`O(N pool (n + m) + pool n²)`): its candidates become its `k` cheapest
    partners among them, and every other slot's entry for it is renewed — or, if that slot is not among them,
    dropped (it then counts as lost, see `_remove`)."""
    layer, fit = greedy.layer, greedy.fit
    n, k = greedy.candidates.partners.shape
    rows, cols = greedy.candidates.pairs()
    near = jnp.arange(n) if pool is None else nearest(layer, jnp.asarray(slot)[None], pool)[0]
    this = jnp.full(near.shape[0], slot)
    fresh = moments(layer, problem, fit, this, near)
    _, top = jax.lax.top_k(-pair_costs(fresh, fit, layer.alive, this, near), k)
    position = jnp.full(n, -1).at[near].set(jnp.arange(near.shape[0]))[rows]
    pointing = cols == slot
    renewed = pointing & (position >= 0)

    (entries,) = jnp.nonzero(renewed, size=near.shape[0], fill_value=n * k)  # a pair list never repeats a slot
    source = position[jnp.minimum(entries, n * k - 1)]

    def renew(old, new):  # a scatter of the few renewed pairs: the moments of all pairs are never rewritten
        old = old.at[entries].set(new[source], mode="drop")
        return jax.lax.dynamic_update_slice_in_dim(old, new[top], slot * k, axis=0)

    partners = greedy.candidates.partners
    partners = jnp.where((pointing & ~renewed).reshape(n, k), jnp.arange(n, dtype=partners.dtype)[:, None], partners)
    partners = partners.at[slot].set(near[top].astype(partners.dtype))
    candidates = Candidates(partners, jax.tree.map(renew, greedy.candidates.moments, fresh))
    return GreedyState(layer, fit, candidates)


def _remove(greedy: GreedyState, problem: LayerProblem, j, pool: int | None) -> GreedyState:
    """Remove slot j; then the live slot that lost the most candidates to removals gets its list renewed."""
    fit, m = _downdate(greedy.fit, None if greedy.candidates is None else greedy.candidates.moments, j)
    labels = jnp.where(greedy.layer.labels == j, -1, greedy.layer.labels).astype(jnp.int32)
    layer = _kill(greedy.layer, j, labels)
    if m is None:
        return GreedyState(layer, fit, None)
    partners = greedy.candidates.partners
    lost = jnp.sum(~layer.alive[partners] | (partners == jnp.arange(partners.shape[0])[:, None]), axis=1)
    return _refresh(
        GreedyState(layer, fit, Candidates(partners, m)), problem, jnp.argmax(jnp.where(layer.alive, lost, -1)), pool
    )


def _merge(greedy: GreedyState, problem: LayerProblem, keep, gone, pool: int | None) -> GreedyState:
    """Merge slot `gone` into `keep`: both leave the fit, the merged column `ṽ` joins it (bordered inverse,
    `s = ‖ṽ‖² − qᵀK q`, `q = F̃ᵀṽ`), the pairs' moments follow in `O(N + n + m)` each, and the pairs with the
    merged slot are recomputed (`_refresh`)."""
    state, lam = greedy.layer, problem.lam
    n = state.alive.shape[0]
    s_keep, s_gone = state.sizes[keep], state.sizes[gone]
    alpha = s_keep / (s_keep + s_gone)
    pre = alpha * state.pre[:, keep] + (1 - alpha) * state.pre[:, gone]
    feature = centred(unit(problem, pre, 0), problem.centre, 0)
    member = alpha * state.members[:, keep] + (1 - alpha) * state.members[:, gone]
    layer = LayerState(
        state.features.at[:, keep].set(feature),
        state.pre.at[:, keep].set(pre),
        state.members.at[:, keep].set(member),
        state.sizes.at[keep].add(s_gone),
        state.alive,
        state.labels,
    )
    layer = _kill(layer, gone, jnp.where(state.labels == gone, keep, state.labels).astype(jnp.int32))
    fit0 = greedy.fit
    fit1, _ = _downdate(fit0, None, gone)
    fit, _ = _downdate(fit1, None, keep)
    new = (jnp.arange(n) == keep).astype(pre.dtype)
    cc = _mm("ik,i->k", layer.members, member)
    q = (_mm("sk,s->k", layer.features, feature) + lam * cc) * (1 - new)
    w = _mm("kl,l->k", fit.inverse, q)
    s = jnp.sum(feature**2) + lam * jnp.sum(member**2) - jnp.sum(q * w)
    w_bar = w - new
    rho = _mm("sm,s->m", problem.targets, feature) + lam * _mm("mi,i->m", problem.weights, member)
    rho = rho - _mm("mk,k->m", fit.weights, q)
    fit = Fit(fit.inverse + jnp.outer(w_bar, w_bar) / s, fit.weights - jnp.outer(rho, w_bar) / s)
    # The pairs' moments in one pass: `_downdate` of `gone`, then of `keep`, then the merged column joins —
    # g gains its entry g_keep = ṽᵀμ̃, u and e move along w̄ = K q − e_keep by t = w̄ᵀg = qᵀu − g_keep, and
    # gᵀu grows by t² / s. Only per-pair scalars are sequential.
    m = greedy.candidates.moments
    rows, cols = greedy.candidates.pairs()
    share = _share(layer.sizes, rows, cols)
    kappa1, kappa2 = fit0.inverse[:, gone], fit1.inverse[:, keep]
    u_gone, u_keep = m.u[:, gone], m.u[:, keep]
    sigma1 = u_gone / fit0.inverse[gone, gone]
    u1_keep = u_keep - sigma1 * fit0.inverse[keep, gone]
    sigma2 = u1_keep / fit1.inverse[keep, keep]
    g_keep = _mm("ps,s->p", m.mu, feature) + lam * (share * cc[rows] + (1 - share) * cc[cols])
    t = _mm("pk,k->p", m.u, q) - sigma1 * jnp.sum(q * kappa1) - sigma2 * jnp.sum(q * kappa2) - g_keep
    tau = t / s
    other = 1 - new - (jnp.arange(n) == gone).astype(pre.dtype)
    sigma1, sigma2, tau_ = sigma1[:, None], sigma2[:, None], tau[:, None]
    u = (m.u - sigma1 * kappa1[None] - sigma2 * kappa2[None]) * other[None] + tau_ * w_bar[None]
    e = m.e + sigma1 * fit0.weights[None, :, gone] + sigma2 * fit1.weights[None, :, keep] + tau_ * rho[None]
    gu = m.gu - sigma1[:, 0] * u_gone - sigma2[:, 0] * u1_keep + t * tau
    m = eqx.tree_at(lambda x: (x.u, x.gu, x.e), m, (u, gu, e))
    return _refresh(GreedyState(layer, fit, Candidates(greedy.candidates.partners, m)), problem, keep, pool)


def advance(
    greedy: GreedyState, problem: LayerProblem, pool: int | None = None
) -> tuple[GreedyState, jax.Array, jax.Array]:
    """One greedy step: the cheapest of merging a candidate pair and removing a slot. Returns the new state,
    whether it merged and the squared error it added. Ties go to the lowest `(min(i, j), max(i, j))`, then the
    lowest slot, and a merge keeps the slot with the larger removal cost as the block's representative."""
    removal = removal_costs(greedy.layer, greedy.fit)
    drop = jnp.argmin(removal)
    if greedy.candidates is None:
        return _remove(greedy, problem, drop, pool), jnp.asarray(False), removal[drop]
    costs = candidate_costs(greedy)
    n = costs.shape[0]
    partners = greedy.candidates.partners
    rows = jnp.broadcast_to(jnp.arange(n)[:, None], partners.shape)
    lo, hi = jnp.minimum(rows, partners), jnp.maximum(rows, partners)
    best = jnp.min(costs)
    flat = jnp.argmin(jnp.where(costs == best, lo * n + hi, n * n))
    i, j = lo.ravel()[flat], hi.ravel()[flat]
    keep, gone = jnp.where(removal[i] >= removal[j], i, j), jnp.where(removal[i] >= removal[j], j, i)
    do_merge = best < removal[drop]
    greedy = jax.lax.cond(
        do_merge, lambda g: _merge(g, problem, keep, gone, pool), lambda g: _remove(g, problem, drop, pool), greedy
    )
    return greedy, do_merge, jnp.where(do_merge, best, removal[drop])


def greedy_path(
    state: LayerState,
    problem: LayerProblem,
    allow_merge: bool,
    block_size: int = 256,
    candidates: int | None = None,
    nearest: int | None = None,
) -> Path:
    """GreedyState backward compression of one layer to width 1: at every step the cheapest operation under the
    current refit — merging two candidate slots (if `allow_merge`) or removing one.

    With `allow_merge=False` this is structured OBS / ZipLM greedy elimination (parallel mode). Nothing is
    recomputed from scratch between steps: the inverse Gram and the refit follow by rank-one updates, each
    candidate pair's moments by `O(n + m)` updates (`_downdate`, `_merge`; `O(N)` more after a merge), and
    after a merge the merged slot's pairs are computed anew: with every slot (`nearest=None`, its row of the
    kernel, `O(N n (n + m) + n³)`) or with its `nearest` slots by pre-activation (`O(N p (n + m) + p n²)`,
    `p = nearest`; the first candidates too are then chosen among each slot's `p` nearest).
    `candidates=None` (or `≥ n − 1`) keeps every pair: the exact greedy, memory `O(n² (N + n + m))`.
    """
    n = state.alive.shape[0]
    k = n - 1 if candidates is None else min(check_candidates(candidates), n - 1)
    return _greedy_path(
        state, problem, allow_merge, block_size, max(k, 1) if allow_merge else 1, pool_size(n, k, nearest)
    )


def pool_size(n: int, k: int, nearest: int | None) -> int | None:
    """With how many nearest slots a slot's merges are priced in a layer of width `n` with `k` candidates
    (`None`: with every slot, which a pool of `n − 1` or more is)."""
    if nearest is None:
        return None
    pool = max(check_nearest(nearest), k)
    return None if pool >= n - 1 else pool


@eqx.filter_jit
def _greedy_path(
    state: LayerState, problem: LayerProblem, allow_merge: bool, block_size: int, k: int, pool: int | None
) -> Path:
    n = state.alive.shape[0]

    def step(t, carry):
        greedy, path, total = carry
        greedy, merged, increase = advance(greedy, problem, pool)
        total = total + increase
        path = Path(
            path.labels.at[t].set(greedy.layer.labels),
            path.merged.at[t].set(merged),
            path.cumulative.at[t].set(relative(total, problem)),
        )
        return greedy, path, total

    dtype = state.features.dtype
    empty = Path(jnp.zeros((n - 1, n), jnp.int32), jnp.zeros(n - 1, bool), jnp.zeros(n - 1, dtype))
    greedy = start(state, problem, allow_merge, k, block_size, pool)
    _, path, _ = jax.lax.fori_loop(0, n - 1, step, (greedy, empty, jnp.zeros((), dtype)))
    return path
