"""Refit-aware costs of merging or removing neurons: what the next layer's least-squares refit cannot recover.

For hidden layer l with centred calibration activations `A` (`N × n`), next-layer weights `W` (`m × n`) and
the next layer's centred pre-activations `Z = A Wᵀ`, merging neurons i and j (mean-in / sum-out,
`reference/structured_baselines.md` §1.4) replaces columns i, j of `A` by the merged neuron's activation
`μ = σ((z_i + z_j)/2)` (centred). The cost is the least-squares error of refitting the next layer on the
remaining columns `S` and `μ`:

    c(i, j) = min_β ‖Z − [A_S, μ] β‖²  =  tr(W_R K_RR⁻¹ W_Rᵀ) − ‖W_R K_RR⁻¹ u_R‖² / (‖μ‖² − gᵀu + u_Rᵀ K_RR⁻¹ u_R)

with `R = {i, j}`, `K = (AᵀA)⁻¹`, `g = Aᵀμ`, `u = K g`: structured OBS's error for removing both neurons
(§1.2) minus what adding the merged neuron back recovers (one forward-stepwise step). Removing neuron j alone
costs OBS's `‖W_:,j‖² / K_jj`. `merge_costs` evaluates both for all pairs from Gram matrices, a block of rows
at a time (a block's `b · n · (N + n + m)` pair moments never exceed `2²²` elements), in `O(N n² (n + m))`.

The same kernel serves a layer that is already partly compressed (`greedy_path`): columns are then blocks
(a merged block's activation is `σ` of its members' mean pre-activation), `W` is the current refit, and the
residual `r₀` of the current fit enters the merge cost through `e = μᵀ r₀` (exact, not an approximation).

The greedy path never recomputes the kernel. Each slot keeps `k` candidate partners (its `k` cheapest initial
merges; exact duplicates cost 0, so they are always among them) with their pair moments `(μ, u = K g, gᵀu, e,
‖μ‖²)`. A removal is a rank-one downdate of `K` and of the refit, and moves every pair's moments in
`O(n + m)`; a merge is two downdates and one bordered update (the merged column joins), `O(N + n + m)` per
pair. After a merge the merged slot's pairs are recomputed against every slot (its row of the kernel,
`O(N n (n + m) + n³)`) and its candidates become its `k` cheapest partners; after a removal the slot that lost
the most candidates is renewed the same way. With `k ≥ n − 1` this is the exact greedy (every pair, every
step); the tests check it step for step against brute-force least squares.

Damping: `K = (AᵀA + λI)⁻¹`, `λ = damping · mean(diag AᵀA)`. The formulas are then the exact least-squares
errors in the augmented geometry `Ã = [A; √λ I]`, `Z̃ = Ã Wᵀ`, where a block's augmented column is
`√λ ·` (its members' mean indicator) — what `tests/test_merge_cost.py` checks by brute force. With the
default damping this is structured OBS exactly as ZipLM computes it (damped Gram, downdated inverse).
Exactness: a pair whose pre-activations coincide on the data (RMS difference within 64 ulps of the layer's
RMS pre-activation) costs exactly 0 — its undamped cost is 0, since `[A_S, μ]` spans what `A` spans.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._discrepancy import AbstractDiscrepancy, LayerDistances
from ._network import ACTIVATIONS, DenseChain

_BLOCK_BUDGET = 2**22  # elements of one block's (rows, n, N) merged-activation tensor
_ROUNDING_ULPS = 64
_HIGHEST = jax.lax.Precision.HIGHEST


def _mm(spec, *operands):
    return jnp.einsum(spec, *operands, precision=_HIGHEST)


class LayerState(eqx.Module):
    """One hidden layer during compression, in fixed shape `n` (dead slots are zero and `alive` is False).

    `features`: the slots' activations on the data (centred when the next layer has a bias), `(N, n)`;
    `pre`: each slot's pre-activation (its members' mean), `(N, n)`; `members`: each slot's mean indicator
    over the original neurons, `(n, n)` (column = slot); `sizes`, `alive`: per slot; `labels`: each original
    neuron's slot, `-1` if removed.
    """

    features: jax.Array
    pre: jax.Array
    members: jax.Array
    sizes: jax.Array
    alive: jax.Array
    labels: jax.Array


class LayerProblem(eqx.Module):
    """What a layer's compression is measured against: the original next layer and the damping."""

    targets: jax.Array  # centred original next-layer pre-activations Z, (N, m)
    weights: jax.Array  # original next-layer weights W₀, (m, n)
    lam: jax.Array
    scale: jax.Array  # mean_j rms(a_j) ‖W₀_:,j‖₂, the unit of the relative costs
    z_rms: jax.Array
    centre: bool = eqx.field(static=True)
    activation: str = eqx.field(static=True)


def _centred(v, centre: bool, axis: int):
    return v - jnp.mean(v, axis=axis, keepdims=True) if centre else v


def initial_state(z, a, w, activation: str, *, centre: bool, damping: float) -> tuple[LayerState, LayerProblem]:
    """The uncompressed layer: one slot per neuron. `z`, `a`: `(N, n)`; `w`: next layer's weights `(m, n)`."""
    n_samples, n = a.shape
    features = _centred(a, centre, 0)
    diagonal = jnp.sum(features**2, axis=0)
    level = jnp.mean(diagonal)
    lam = damping * jnp.where(level > 0, level, 1.0)
    scale = jnp.mean(jnp.sqrt(diagonal / n_samples) * jnp.linalg.norm(w, axis=0))
    problem = LayerProblem(
        _mm("sn,mn->sm", features, w),
        w,
        lam,
        jnp.maximum(scale, jnp.finfo(a.dtype).tiny),
        jnp.sqrt(jnp.mean(z**2)),
        centre,
        activation,
    )
    eye = jnp.eye(n, dtype=a.dtype)
    state = LayerState(features, z, eye, jnp.ones(n, a.dtype), jnp.ones(n, bool), jnp.arange(n, dtype=jnp.int32))
    return state, problem


class Fit(eqx.Module):
    """The current least-squares refit of the next layer: `inverse` is `K = (F̃ᵀF̃)⁻¹` on the live slots (zero
    rows and columns for dead ones), `weights` the refit `W_c = (K F̃ᵀZ̃)ᵀ`, `(m, n)` (zero columns for dead
    slots), with `F̃ = [F; √λ C]` and `Z̃ = [Z; √λ W₀ᵀ]` the augmented features and targets."""

    inverse: jax.Array
    weights: jax.Array


def current_fit(state: LayerState, problem: LayerProblem) -> Fit:
    """The refit of the next layer on the current slots, from scratch (one `inv` of the damped Gram)."""
    fa, c, alive, lam = state.features, state.members, state.alive, problem.lam
    live = alive[:, None] & alive[None, :]
    gram = _mm("sk,sl->kl", fa, fa) + lam * _mm("ik,il->kl", c, c)
    k = jnp.where(live, jnp.linalg.inv(jnp.where(live, gram, jnp.eye(alive.shape[0], dtype=fa.dtype))), 0.0)
    h = _mm("sk,sm->km", fa, problem.targets) + lam * _mm("mi,ik->km", problem.weights, c)
    return Fit(k, _mm("kl,lm->mk", k, h))


def removal_costs(state: LayerState, fit: Fit) -> jax.Array:
    """Structured OBS's cost of removing each slot, `‖W_c[:, j]‖² / K_jj` (dead slots: `inf`)."""
    kd = jnp.diag(fit.inverse)
    wn = jnp.sum(fit.weights**2, axis=0)
    return jnp.where(state.alive, wn / jnp.where(state.alive, kd, 1.0), jnp.inf)


class Moments(eqx.Module):
    """What the merge cost of a pair (i, j) needs, for a flat list of pairs (leading axis): the merged slot's
    centred activation `mu` (`N`), `u = K g` with `g = F̃ᵀμ̃` (`n`), `gu = gᵀu`, `e = r₀ᵀμ̃` — the current
    residual against the merged column (`m`) —, `norm2 = ‖μ̃‖²` and whether the two pre-activations coincide."""

    mu: jax.Array
    u: jax.Array
    gu: jax.Array
    e: jax.Array
    norm2: jax.Array
    duplicate: jax.Array


def _share(sizes, rows, cols):
    """The weight α = s_i / (s_i + s_j) of slot i in the merged slot of the pairs (rows, cols)."""
    total = sizes[rows] + sizes[cols]
    return sizes[rows] / jnp.where(total > 0, total, 1.0)


def moments(state: LayerState, problem: LayerProblem, fit: Fit, rows, cols) -> Moments:
    """The `Moments` of the pairs `(rows[p], cols[p])` from scratch, `O(N (n + m) + n²)` each."""
    fn = ACTIVATIONS[problem.activation].fn
    fa, c, lam = state.features, state.members, problem.lam
    ctc = _mm("ik,il->kl", c, c)
    alpha = _share(state.sizes, rows, cols)
    beta = 1 - alpha
    pre = state.pre.T  # (n, N)
    mu = _centred(fn(alpha[:, None] * pre[rows] + beta[:, None] * pre[cols]), problem.centre, 1)
    c_norm = alpha**2 * jnp.diag(ctc)[rows] + 2 * alpha * beta * ctc[rows, cols] + beta**2 * jnp.diag(ctc)[cols]
    g = _mm("ps,sk->pk", mu, fa) + lam * (alpha[:, None] * ctc[rows] + beta[:, None] * ctc[cols])  # + λ Cᵀc_ij
    u = _mm("pk,kl->pl", g, fit.inverse)
    w0c = _mm("mi,ik->km", problem.weights, c)  # W₀ C, slot-major
    # e = Z̃ᵀμ̃ − W_c g: the current residual r₀ = Z̃ − F̃ W_cᵀ against the merged column.
    e = _mm("ps,sm->pm", mu, problem.targets) + lam * (alpha[:, None] * w0c[rows] + beta[:, None] * w0c[cols])
    e = e - _mm("pk,mk->pm", g, fit.weights)
    z_diff = jnp.sqrt(jnp.mean((pre[rows] - pre[cols]) ** 2, axis=1))
    duplicate = z_diff <= _ROUNDING_ULPS * jnp.finfo(fa.dtype).eps * problem.z_rms
    norm2 = jnp.sum(mu**2, axis=1) + lam * c_norm
    return Moments(mu, u, jnp.sum(g * u, axis=1), e, norm2, duplicate)


def pair_costs(m: Moments, fit: Fit, alive, rows, cols) -> jax.Array:
    """Merge costs of the pairs `(rows[p], cols[p])` from their `Moments` and the current fit (invalid: `inf`).

    `c = tr(W_R K_RR⁻¹ W_Rᵀ) − ‖W_R K_RR⁻¹ u_R + e‖² / (‖μ̃‖² − gᵀu + u_Rᵀ K_RR⁻¹ u_R)`, `R = {i, j}`."""
    k, wt = fit.inverse, fit.weights.T
    dtype = k.dtype
    kd, wn = jnp.diag(k), jnp.sum(wt**2, axis=1)
    k_ii, k_jj, k_ij = kd[rows], kd[cols], k[rows, cols]
    u_i = jnp.take_along_axis(m.u, rows[:, None], axis=1)[:, 0]
    u_j = jnp.take_along_axis(m.u, cols[:, None], axis=1)[:, 0]
    w_i, w_j = wt[rows], wt[cols]
    w_ij = jnp.sum(w_i * w_j, axis=1)
    det = k_ii * k_jj - k_ij**2
    det = jnp.where(det > 0, det, 1.0)
    both_removed = (k_jj * wn[rows] - 2 * k_ij * w_ij + k_ii * wn[cols]) / det
    y_i, y_j = (k_jj * u_i - k_ij * u_j) / det, (k_ii * u_j - k_ij * u_i) / det
    recovered = jnp.sum((y_i[:, None] * w_i + y_j[:, None] * w_j + m.e) ** 2, axis=1)
    denominator = m.norm2 - m.gu + u_i * y_i + u_j * y_j
    ok = denominator > 64 * jnp.finfo(dtype).eps * jnp.maximum(m.norm2, jnp.finfo(dtype).tiny)
    cost = jnp.maximum(both_removed - jnp.where(ok, recovered / jnp.where(ok, denominator, 1.0), 0.0), 0.0)
    cost = jnp.where(m.duplicate, 0.0, cost)
    return jnp.where(alive[rows] & alive[cols] & (cols != rows), cost, jnp.inf)


class Costs(eqx.Module):
    """Squared next-layer refit errors added by merging slots i, j (`merge[i, j]`) or removing slot j."""

    merge: jax.Array
    removal: jax.Array


def merge_costs(state: LayerState, problem: LayerProblem, block_size: int = 256, pairs: bool = True) -> Costs:
    """All pairwise merge costs and all removal costs of the current layer (dead slots: `inf`); with
    `pairs=False` only the removal costs (merges all `inf`)."""
    fit = current_fit(state, problem)
    removal = removal_costs(state, fit)
    n_samples, n = state.features.shape
    if not pairs:
        return Costs(jnp.full((n, n), jnp.inf, state.features.dtype), removal)
    width = n_samples + n + problem.targets.shape[1]
    rows = max(1, min(block_size, _BLOCK_BUDGET // max(n * width, 1)))
    n_blocks = -(-n // rows)
    index = jnp.minimum(jnp.arange(n_blocks * rows), n - 1).reshape(n_blocks, rows)

    def block(i):
        rows, cols = jnp.repeat(i, n), jnp.tile(jnp.arange(n), i.shape[0])
        return pair_costs(moments(state, problem, fit, rows, cols), fit, state.alive, rows, cols).reshape(-1, n)

    merge = jax.lax.map(block, index).reshape(-1, n)[:n]
    valid = state.alive[:, None] & state.alive[None, :] & ~jnp.eye(n, dtype=bool)
    return Costs(jnp.where(valid, (merge + merge.T) / 2, jnp.inf), removal)


def relative(cost: jax.Array, problem: LayerProblem) -> jax.Array:
    """A squared error in the layer's unit: `sqrt(cost / N) / scale`."""
    return jnp.sqrt(cost / problem.targets.shape[0]) / problem.scale


class RefitAware(AbstractDiscrepancy):
    """The merge cost the next layer's least-squares refit cannot recover (the OBS analogue for merging).

    `d(i, j) = sqrt(c(i, j) / N) / scale_l`, where `c(i, j) = min_β ‖Z^{l+1} − [A_S, σ((z_i + z_j)/2)] β‖²` is the
    next layer's refit error once neurons i, j are merged (mean-in / sum-out) and `scale_l = mean_j rms(a_j)
    ‖W^{l+1}_{:,j}‖₂` a typical neuron's RMS contribution to the next layer (centred when the next layer has
    a bias). So `ε = 1` lets one merge leave, after the refit, as much RMS error in the next layer's
    pre-activations as one typical neuron contributes; ε = 0 merges only neurons whose pre-activations
    coincide on the data (exact). Neurons are visited in decreasing structured-OBS removal cost
    `sqrt(‖W^{l+1}_{:,j}‖² / (H⁻¹)_jj / N) / scale_l`, so representatives are what the refit can least do without.

    Each cost assumes every other neuron stays (the "parallel" mode of structured OBS, on the original
    network's activations), so many individually cheap merges can add up: on trained networks the useful ε
    are much smaller than the structural ones (see `docs/method.md`, "What the default does and why").
    `jaxlump.merge_or_remove` keeps the costs exact after every merge instead. Time `O(N n² (n + m))` per
    layer (m: the next layer's width).

    **Arguments:**

    - `damping`: `λ` relative to the mean Gram diagonal (default `1e-3`, the refit's default ridge).
    - `max_inputs`: at most this many calibration inputs are used (the first ones).
    - `block_size`: rows per block of the pairwise computation.

    ```python
    import equinox as eqx, jax.numpy as jnp, jax.random as jr, jaxlump
    mlp = eqx.nn.MLP(3, 2, 16, 2, activation=jnp.tanh, key=jr.key(0))
    x = jr.normal(jr.key(1), (256, 3))
    small, info = jaxlump.lump(mlp, x, 0.02, discrepancy=jaxlump.RefitAware())
    exact, exact_info = jaxlump.lump(mlp, x, 0.0, discrepancy=jaxlump.RefitAware())
    assert exact_info.widths_after.tolist() == [3, 16, 16, 2]
    ```

    Reference: Kurtic, Frantar, Alistarh, *ZipLM*, NeurIPS 2023 (structured OBS); the merge operator of model
    folding (Wang et al., ICLR 2025) and of Dhiman et al., arXiv 2606.01402 (2026).
    """

    damping: float = eqx.field(static=True, default=1e-3)
    max_inputs: int = eqx.field(static=True, default=1024)
    block_size: int = eqx.field(static=True, default=256)
    needs_data = True

    def __check_init__(self):
        check_damping(self.damping)
        if not (isinstance(self.max_inputs, int) and self.max_inputs >= 1):
            raise ValueError(f"`max_inputs` must be an integer >= 1; received {self.max_inputs!r}.")

    def prepare(self, chain, x):
        return layer_inputs(chain, x[: self.max_inputs])

    def layer(self, chain, prepared, l, prev_labels):
        del prev_labels  # parallel mode: the original network's activations
        z, a = prepared[0][l - 1], prepared[1][l - 1]
        state, problem = initial_state(
            z, a, chain.weights[l], chain.activations[l - 1], centre=chain.use_bias[l], damping=self.damping
        )
        costs = merge_costs(state, problem, self.block_size)
        distances = jnp.where(jnp.eye(a.shape[1], dtype=bool), 0.0, relative(costs.merge, problem))
        return LayerDistances(distances, relative(costs.removal, problem))


def check_damping(damping) -> float:
    if not (isinstance(damping, (int, float)) and 0 < damping < float("inf")):
        raise ValueError(f"`damping` must be a finite number > 0; received {damping!r}.")
    return float(damping)


def layer_inputs(chain: DenseChain, x):
    """Per hidden layer, the original network's pre-activations and activations on `x`."""
    zs, acts = chain.forward(x)
    return tuple(zs[:-1]), tuple(acts[1:-1])


class Path(eqx.Module):
    """A greedy compression path of one hidden layer: after step t (0-based) the layer has `n − 1 − t` slots.

    `labels[t]`: each original neuron's slot after step t (`-1`: removed); `merged[t]`: whether step t merged
    (else removed); `cumulative[t]`: the next layer's refit error after step t, relative (`sqrt(E/N)/scale`).
    JAX arrays inside `greedy_path`; `jaxlump._select.layer_paths` returns them as NumPy arrays (float64).
    """

    labels: jax.Array | np.ndarray
    merged: jax.Array | np.ndarray
    cumulative: jax.Array | np.ndarray


class Candidates(eqx.Module):
    """Each slot's candidate partners `(n, k)` and the `Moments` of those pairs, flat: pair `i k + r` is
    `(i, partners[i, r])`."""

    partners: jax.Array
    moments: Moments

    def pairs(self):
        n, k = self.partners.shape
        return jnp.repeat(jnp.arange(n), k), self.partners.ravel()


class Greedy(eqx.Module):
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


def start(state: LayerState, problem: LayerProblem, allow_merge: bool, candidates: int | None, block_size: int = 256):
    """The greedy path's first state: each slot's `candidates` partners of smallest initial merge cost (`None`:
    all `n − 1`), from one `merge_costs` call; planted duplicates cost 0, so they are always among them."""
    fit = current_fit(state, problem)
    if not allow_merge:
        return Greedy(state, fit, None)
    n = state.alive.shape[0]
    k = n - 1 if candidates is None else min(candidates, n - 1)
    _, partners = jax.lax.top_k(-merge_costs(state, problem, block_size).merge, k)
    rows, cols = jnp.repeat(jnp.arange(n), k), partners.ravel()
    return Greedy(state, fit, Candidates(partners, moments(state, problem, fit, rows, cols)))


def candidate_costs(greedy: Greedy) -> jax.Array:
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
    fit = Fit((k - jnp.outer(kj, kj) / kjj) * other[:, None] * other, (wc - jnp.outer(wj, kj) / kjj) * other)
    if m is None:
        return fit, None
    uj = m.u[:, j]
    step = uj[:, None] / kjj
    updated = ((m.u - step * kj) * other, m.gu - uj * step[:, 0], m.e + step * wj)
    return fit, eqx.tree_at(lambda t: (t.u, t.gu, t.e), m, updated)


def _refresh(greedy: Greedy, problem: LayerProblem, slot) -> Greedy:
    """Recompute the pairs of `slot` with every slot from scratch (its row of the kernel, `O(N n (n + m) + n³)`):
    its candidates become its `k` cheapest partners now, and every other slot's entry for it is renewed."""
    layer, fit = greedy.layer, greedy.fit
    n, k = greedy.candidates.partners.shape
    rows, cols = greedy.candidates.pairs()
    everyone, this = jnp.arange(n), jnp.full(n, slot)
    fresh = moments(layer, problem, fit, this, everyone)
    _, top = jax.lax.top_k(-pair_costs(fresh, fit, layer.alive, this, everyone), k)
    pointing = cols == slot

    def renew(old, new):
        old = jnp.where(pointing.reshape(pointing.shape + (1,) * (old.ndim - 1)), new[rows], old)
        return jax.lax.dynamic_update_slice_in_dim(old, new[top], slot * k, axis=0)

    candidates = Candidates(
        greedy.candidates.partners.at[slot].set(top), jax.tree.map(renew, greedy.candidates.moments, fresh)
    )
    return Greedy(layer, fit, candidates)


def _remove(greedy: Greedy, problem: LayerProblem, j) -> Greedy:
    """Remove slot j; then the live slot that lost the most candidates to removals gets its list renewed."""
    fit, m = _downdate(greedy.fit, None if greedy.candidates is None else greedy.candidates.moments, j)
    labels = jnp.where(greedy.layer.labels == j, -1, greedy.layer.labels).astype(jnp.int32)
    layer = _kill(greedy.layer, j, labels)
    if m is None:
        return Greedy(layer, fit, None)
    partners = greedy.candidates.partners
    lost = jnp.sum(~layer.alive[partners] | (partners == jnp.arange(partners.shape[0])[:, None]), axis=1)
    return _refresh(Greedy(layer, fit, Candidates(partners, m)), problem, jnp.argmax(jnp.where(layer.alive, lost, -1)))


def _merge(greedy: Greedy, problem: LayerProblem, keep, gone) -> Greedy:
    """Merge slot `gone` into `keep`: both leave the fit, the merged column `ṽ` joins it (bordered inverse,
    `s = ‖ṽ‖² − qᵀK q`, `q = F̃ᵀṽ`), the pairs' moments follow in `O(N + n + m)` each, and the pairs with the
    merged slot are recomputed (`_refresh`)."""
    state, lam = greedy.layer, problem.lam
    n = state.alive.shape[0]
    s_keep, s_gone = state.sizes[keep], state.sizes[gone]
    alpha = s_keep / (s_keep + s_gone)
    pre = alpha * state.pre[:, keep] + (1 - alpha) * state.pre[:, gone]
    feature = _centred(ACTIVATIONS[problem.activation].fn(pre), problem.centre, 0)
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
    u = (m.u - sigma1 * kappa1 - sigma2 * kappa2) * other + tau_ * w_bar
    e = m.e + sigma1 * fit0.weights[:, gone] + sigma2 * fit1.weights[:, keep] + tau_ * rho
    gu = m.gu - sigma1[:, 0] * u_gone - sigma2[:, 0] * u1_keep + t * tau
    m = eqx.tree_at(lambda x: (x.u, x.gu, x.e), m, (u, gu, e))
    return _refresh(Greedy(layer, fit, Candidates(greedy.candidates.partners, m)), problem, keep)


def advance(greedy: Greedy, problem: LayerProblem) -> tuple[Greedy, jax.Array, jax.Array]:
    """One greedy step: the cheapest of merging a candidate pair and removing a slot. Returns the new state,
    whether it merged and the squared error it added. Ties go to the lowest `(min(i, j), max(i, j))`, then the
    lowest slot, and a merge keeps the slot with the larger removal cost as the block's representative."""
    removal = removal_costs(greedy.layer, greedy.fit)
    drop = jnp.argmin(removal)
    if greedy.candidates is None:
        return _remove(greedy, problem, drop), jnp.asarray(False), removal[drop]
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
        do_merge, lambda g: _merge(g, problem, keep, gone), lambda g: _remove(g, problem, drop), greedy
    )
    return greedy, do_merge, jnp.where(do_merge, best, removal[drop])


def greedy_path(
    state: LayerState, problem: LayerProblem, allow_merge: bool, block_size: int = 256, candidates: int | None = None
) -> Path:
    """Greedy backward compression of one layer to width 1: at every step the cheapest operation under the
    current refit — merging two candidate slots (if `allow_merge`) or removing one.

    With `allow_merge=False` this is structured OBS / ZipLM greedy elimination (parallel mode). Nothing is
    recomputed from scratch between steps: the inverse Gram and the refit follow by rank-one updates, each
    candidate pair's moments by `O(n + m)` updates (`_downdate`, `_merge`; `O(N)` more after a merge), and
    after a merge the merged slot's row of the kernel is computed anew (`O(N n (n + m) + n³)`).
    `candidates=None` (or `≥ n − 1`) keeps every pair: the exact greedy, memory `O(n² (N + n + m))`.
    """
    n = state.alive.shape[0]
    k = n - 1 if candidates is None else min(check_candidates(candidates), n - 1)
    return _greedy_path(state, problem, allow_merge, block_size, max(k, 1) if allow_merge else 1)


@eqx.filter_jit
def _greedy_path(state: LayerState, problem: LayerProblem, allow_merge: bool, block_size: int, k: int) -> Path:
    n = state.alive.shape[0]

    def step(t, carry):
        greedy, path, total = carry
        greedy, merged, increase = advance(greedy, problem)
        total = total + increase
        path = Path(
            path.labels.at[t].set(greedy.layer.labels),
            path.merged.at[t].set(merged),
            path.cumulative.at[t].set(relative(total, problem)),
        )
        return greedy, path, total

    dtype = state.features.dtype
    empty = Path(jnp.zeros((n - 1, n), jnp.int32), jnp.zeros(n - 1, bool), jnp.zeros(n - 1, dtype))
    greedy = start(state, problem, allow_merge, k, block_size)
    _, path, _ = jax.lax.fori_loop(0, n - 1, step, (greedy, empty, jnp.zeros((), dtype)))
    return path
