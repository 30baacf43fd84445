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
at a time (the `b × n × N` merged activations never exceed `2²²` elements), in `O(N n³)` per layer.

The same kernel serves a layer that is already partly compressed (`greedy_path`): columns are then blocks
(a merged block's activation is `σ` of its members' mean pre-activation), `W` is the current refit, and the
residual `r₀` of the current fit enters the merge cost through `μᵀ r₀` (exact, not an approximation).

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


class Costs(eqx.Module):
    """Squared next-layer refit errors added by merging slots i, j (`merge[i, j]`) or removing slot j."""

    merge: jax.Array
    removal: jax.Array


def merge_costs(state: LayerState, problem: LayerProblem, block_size: int = 256, pairs: bool = True) -> Costs:
    """All pairwise merge costs and all removal costs of the current layer (dead slots: `inf`); with
    `pairs=False` only the removal costs (merges all `inf`)."""
    fa, c, alive, lam = state.features, state.members, state.alive, problem.lam
    n_samples, n = fa.shape
    dtype = fa.dtype
    fn = ACTIVATIONS[problem.activation].fn
    ctc = _mm("ik,il->kl", c, c)
    gram = _mm("sk,sl->kl", fa, fa) + lam * ctc
    gram = jnp.where(alive[:, None] & alive[None, :], gram, jnp.eye(n, dtype=dtype))
    k = jnp.linalg.inv(gram)
    kd = jnp.diag(k)
    # The current refit of the next layer, W_c = (K (Aᵀ Z + λ Cᵀ W₀ᵀ))ᵀ, and W₀ C.
    w0c = _mm("mi,ik->mk", problem.weights, c)
    wc = _mm("kl,ml->mk", k, _mm("sl,sm->ml", fa, problem.targets) + lam * w0c) * alive
    wn = jnp.sum(wc**2, axis=0)
    ww = _mm("mk,ml->kl", wc, wc)
    removal = jnp.where(alive, wn / kd, jnp.inf)
    if not pairs:
        return Costs(jnp.full((n, n), jnp.inf, dtype), removal)

    rows = max(1, min(block_size, _BLOCK_BUDGET // max(n * n_samples, 1)))
    n_blocks = -(-n // rows)
    index = jnp.minimum(jnp.arange(n_blocks * rows), n - 1).reshape(n_blocks, rows)
    pre = state.pre.T  # (n, N)

    def block(i):
        b = i.shape[0]
        alpha = state.sizes[i][:, None] / (state.sizes[i][:, None] + state.sizes[None, :])  # (b, n)
        beta = 1 - alpha
        merged = _centred(
            fn(alpha[..., None] * pre[i][:, None, :] + beta[..., None] * pre[None, :, :]), problem.centre, 2
        )
        c_g = alpha[..., None] * ctc[i][:, None, :] + beta[..., None] * ctc[None, :, :]  # Cᵀ c_ij, (b, n, n)
        c_norm = alpha**2 * jnp.diag(ctc)[i][:, None] + 2 * alpha * beta * ctc[i] + beta**2 * jnp.diag(ctc)[None, :]
        g = _mm("pjs,sk->pjk", merged, fa) + lam * c_g
        u = _mm("pjk,kl->pjl", g, k)
        norm2 = jnp.sum(merged**2, axis=2) + lam * c_norm
        gu = jnp.sum(g * u, axis=2)
        u_i = u[jnp.arange(b)[:, None], jnp.arange(n)[None, :], i[:, None]]
        u_j = jnp.diagonal(u, axis1=1, axis2=2)
        k_ii, k_jj, k_ij = kd[i][:, None], kd[None, :], k[i]
        det = k_ii * k_jj - k_ij**2
        det = jnp.where(det > 0, det, 1.0)
        w_ii, w_jj, w_ij = wn[i][:, None], wn[None, :], ww[i]
        both_removed = (k_jj * w_ii - 2 * k_ij * w_ij + k_ii * w_jj) / det
        y_i, y_j = (k_jj * u_i - k_ij * u_j) / det, (k_ii * u_j - k_ij * u_i) / det
        # r_μᵀ Z = W_R K_RR⁻¹ u_R + μᵀ r₀, with μᵀ r₀ = Zᵀμ + λ W₀ c_ij − W_c g.
        t = _mm("pjs,sm->pjm", merged, problem.targets)
        t = t + lam * (alpha[..., None] * w0c.T[i][:, None, :] + beta[..., None] * w0c.T[None, :, :])
        t = t - _mm("pjk,mk->pjm", g, wc)
        r = y_i[..., None] * wc.T[i][:, None, :] + y_j[..., None] * wc.T[None, :, :] + t
        recovered = jnp.sum(r**2, axis=2)
        denominator = norm2 - gu + u_i * y_i + u_j * y_j
        ok = denominator > 64 * jnp.finfo(dtype).eps * jnp.maximum(norm2, jnp.finfo(dtype).tiny)
        cost = jnp.maximum(both_removed - jnp.where(ok, recovered / jnp.where(ok, denominator, 1.0), 0.0), 0.0)
        z_diff = jnp.sqrt(jnp.mean((pre[i][:, None, :] - pre[None, :, :]) ** 2, axis=2))
        duplicate = z_diff <= _ROUNDING_ULPS * jnp.finfo(dtype).eps * problem.z_rms
        return jnp.where(duplicate, 0.0, cost)

    merge = jax.lax.map(block, index).reshape(-1, n)[:n]
    valid = alive[:, None] & alive[None, :] & ~jnp.eye(n, dtype=bool)
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
    `jaxlump.merge_or_remove` recomputes the costs after every merge instead. Time `O(N n³)` per layer.

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
    """

    labels: jax.Array
    merged: jax.Array
    cumulative: jax.Array


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


@eqx.filter_jit
def greedy_path(state: LayerState, problem: LayerProblem, allow_merge: bool, block_size: int = 256) -> Path:
    """Greedy backward compression of one layer to width 1: at every step the cheapest operation under the
    current refit — merging two slots (if `allow_merge`) or removing one — costs recomputed after each step.

    With `allow_merge=False` this is structured OBS / ZipLM greedy elimination (parallel mode). A merge keeps
    the slot with the larger removal cost as the block's representative.
    """
    fn = ACTIVATIONS[problem.activation].fn
    n = state.alive.shape[0]

    def step(t, carry):
        state, path, total = carry
        costs = merge_costs(state, problem, block_size, pairs=allow_merge)
        merge = costs.merge
        flat = jnp.argmin(merge)
        i, j = flat // n, flat % n
        keep, gone = (
            jnp.where(costs.removal[i] >= costs.removal[j], i, j),
            jnp.where(costs.removal[i] >= costs.removal[j], j, i),
        )
        drop = jnp.argmin(costs.removal)
        do_merge = merge[i, j] < costs.removal[drop]
        increase = jnp.where(do_merge, merge[i, j], costs.removal[drop])

        s_keep, s_gone = state.sizes[keep], state.sizes[gone]
        alpha = s_keep / (s_keep + s_gone)
        pre_new = alpha * state.pre[:, keep] + (1 - alpha) * state.pre[:, gone]
        merged_state = LayerState(
            state.features.at[:, keep].set(_centred(fn(pre_new), problem.centre, 0)),
            state.pre.at[:, keep].set(pre_new),
            state.members.at[:, keep].set(alpha * state.members[:, keep] + (1 - alpha) * state.members[:, gone]),
            state.sizes.at[keep].add(s_gone),
            state.alive,
            state.labels,
        )
        merged_state = _kill(merged_state, gone, jnp.where(state.labels == gone, keep, state.labels).astype(jnp.int32))
        removed_state = _kill(state, drop, jnp.where(state.labels == drop, -1, state.labels).astype(jnp.int32))
        new = jax.tree.map(lambda a, b: jnp.where(do_merge, a, b), merged_state, removed_state)
        total = total + increase
        path = Path(
            path.labels.at[t].set(new.labels),
            path.merged.at[t].set(do_merge),
            path.cumulative.at[t].set(relative(total, problem)),
        )
        return new, path, total

    dtype = state.features.dtype
    empty = Path(jnp.zeros((n - 1, n), jnp.int32), jnp.zeros(n - 1, bool), jnp.zeros(n - 1, dtype))
    _, path, _ = jax.lax.fori_loop(0, n - 1, step, (state, empty, jnp.zeros((), dtype)))
    return path
