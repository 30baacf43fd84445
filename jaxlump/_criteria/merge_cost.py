"""Refit-aware costs of merging or removing neurons: what the next layer's least-squares refit cannot recover.

For hidden layer l with centred calibration activations `A` (`N × n`), next-layer weights `W` (`m × n`) and
the next layer's centred pre-activations `Z = A Wᵀ`, merging neurons i and j (mean-in / sum-out,
`reference/structured_baselines.md` §1.4) replaces columns i, j of `A` by the merged neuron's activation
`μ = σ((z_i + z_j)/2)` (centred; for a gated layer
`μ = σ((z_g,i + z_g,j)/2) ⊙ (z_i + z_j)/2`). The cost is the least-squares error of refitting the next layer on the
remaining columns `S` and `μ`:

    c(i, j) = min_β ‖Z − [A_S, μ] β‖²  =  tr(W_R K_RR⁻¹ W_Rᵀ) − ‖W_R K_RR⁻¹ u_R‖² / (‖μ‖² − gᵀu + u_Rᵀ K_RR⁻¹ u_R)

with `R = {i, j}`, `K = (AᵀA)⁻¹`, `g = Aᵀμ`, `u = K g`: structured OBS's error for removing both neurons
(§1.2) minus what adding the merged neuron back recovers (one forward-stepwise step). Removing neuron j alone
costs OBS's `‖W_:,j‖² / K_jj`. `merge_costs` evaluates both for all pairs from Gram matrices, a block of rows
at a time (a block's `b · n · (N + n + m)` pair moments never exceed `2²²` elements), in `O(N n² (n + m))`.

The same kernel serves a layer that is already partly compressed (`jaxlump._methods.greedy.greedy_path`): columns are
then blocks (a merged block's activation is `σ` of its members' mean pre-activation), `W` is the current refit,
and the residual `r₀` of the current fit enters the merge cost through `e = μᵀ r₀` (exact, not an approximation).

The greedy path that reuses these moments step by step is `jaxlump._methods.greedy`.

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

from .._errors import check_nonnegative
from .._model.activations import ACTIVATIONS
from .._model.network import DenseChain
from .._reconstruction.linalg import inv
from .discrepancy import AbstractDiscrepancy, LayerDistances

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
    gated: bool = eqx.field(static=True, default=False)  # `pre` stacks `[z_g; z]` along the samples (see `unit`)


def unit(problem: LayerProblem, pre: jax.Array, axis: int) -> jax.Array:
    """A slot's activation from its (mean) pre-activation `pre`: `σ(z)`, or for a gated layer, whose `pre` stacks
    the gate's and the up's pre-activations along `axis` (`[z_g; z]`, samples), `σ(z_g) ⊙ z`."""
    return unit_activation(problem.activation, problem.gated, pre, axis)


def unit_activation(activation: str, gated: bool, pre: jax.Array, axis: int) -> jax.Array:
    """`unit` for an activation's name and whether the layer is gated."""
    fn = ACTIVATIONS[activation].fn
    if not gated:
        return fn(pre)
    gate, up = jnp.split(pre, 2, axis=axis)
    return fn(gate) * up


def centred(v, centre: bool, axis: int):
    return v - jnp.mean(v, axis=axis, keepdims=True) if centre else v


def initial_state(
    z, a, w, activation: str, *, centre: bool, damping: float, gated: bool = False
) -> tuple[LayerState, LayerProblem]:
    """The uncompressed layer: one slot per neuron. `z`, `a`: `(N, n)` (`z` of a gated layer: `(2N, n)`, the gate's
    pre-activations above the up's); `w`: next layer's weights `(m, n)`."""
    n_samples, n = a.shape
    features = centred(a, centre, 0)
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
        gated,
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
    k = jnp.where(live, inv(jnp.where(live, gram, jnp.eye(alive.shape[0], dtype=fa.dtype))), 0.0)
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
    fa, c, lam = state.features, state.members, problem.lam
    square = jnp.sum(c**2, axis=0)  # CᵀC is diagonal: slots have disjoint members
    alpha = _share(state.sizes, rows, cols)
    beta = 1 - alpha
    pre = state.pre.T  # (n, N)
    mu = centred(unit(problem, alpha[:, None] * pre[rows] + beta[:, None] * pre[cols], 1), problem.centre, 1)
    c_norm = alpha**2 * square[rows] + beta**2 * square[cols]
    slots = jnp.arange(c.shape[1])
    ctc_pair = (alpha * square[rows])[:, None] * (slots[None] == rows[:, None]) + (beta * square[cols])[:, None] * (
        slots[None] == cols[:, None]
    )
    g = _mm("ps,sk->pk", mu, fa) + lam * ctc_pair  # + λ Cᵀc_ij
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
    n = state.features.shape[1]
    if not pairs:
        return Costs(jnp.full((n, n), jnp.inf, state.features.dtype), removal)
    merge = partner_costs(state, problem, fit, jnp.broadcast_to(jnp.arange(n), (n, n)), block_size)
    valid = state.alive[:, None] & state.alive[None, :] & ~jnp.eye(n, dtype=bool)
    return Costs(jnp.where(valid, (merge + merge.T) / 2, jnp.inf), removal)


def partner_costs(state: LayerState, problem: LayerProblem, fit: Fit, partners: jax.Array, block_size: int = 256):
    """The merge costs of each slot `i` with its `partners[i]` (`(n, q)` → `(n, q)`, invalid: `inf`), a block of
    slots at a time (a block's `b · q · (N + n + m)` pair moments never exceed `_BLOCK_BUDGET` elements)."""
    n_samples, n = state.features.shape
    q = partners.shape[1]
    width = n_samples + n + problem.targets.shape[1]
    rows = max(1, min(block_size, _BLOCK_BUDGET // max(q * width, 1)))
    n_blocks = -(-n // rows)
    index = jnp.minimum(jnp.arange(n_blocks * rows), n - 1).reshape(n_blocks, rows)

    def block(i):
        rows, cols = jnp.repeat(i, q), partners[i].ravel()
        return pair_costs(moments(state, problem, fit, rows, cols), fit, state.alive, rows, cols).reshape(-1, q)

    return jax.lax.map(block, index).reshape(-1, q)[:n]


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
    small, info = jaxlump.lump(mlp, x, 0.02, discrepancy=jaxlump.RefitAware(), certify_ode=False)
    exact, exact_info = jaxlump.lump(mlp, x, 0.0, discrepancy=jaxlump.RefitAware(), certify_ode=False)
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
        check_nonnegative(self.damping, "damping", positive=True)
        if not (isinstance(self.max_inputs, int) and self.max_inputs >= 1):
            raise ValueError(f"`max_inputs` must be an integer >= 1; received {self.max_inputs!r}.")

    def prepare(self, chain, x):
        return layer_inputs(chain, x[: self.max_inputs])

    def layer(self, chain, prepared, l, prev_labels):
        del prev_labels  # parallel mode: the original network's activations
        z, a = prepared[0][l - 1], prepared[1][l - 1]
        state, problem = initial_state(
            z,
            a,
            chain.weights[l],
            chain.activations[l - 1],
            centre=chain.use_bias[l],
            damping=self.damping,
            gated=chain.gated[l - 1],
        )
        costs = merge_costs(state, problem, self.block_size)
        distances = jnp.where(jnp.eye(a.shape[1], dtype=bool), 0.0, relative(costs.merge, problem))
        return LayerDistances(distances, relative(costs.removal, problem))


def layer_inputs(chain: DenseChain, x):
    """Per hidden layer, the original network's pre-activations and activations on `x` (a gated layer's
    pre-activations `[z_g; z]`, stacked along the samples: `(2N, n)`)."""
    zs, acts = chain.forward(x)
    zs = [jnp.concatenate(z, axis=0) if isinstance(z, tuple) else z for z in zs[:-1]]
    return tuple(zs), tuple(acts[1:-1])
