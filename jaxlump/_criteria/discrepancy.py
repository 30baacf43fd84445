"""Pairwise neuron-dynamics discrepancies (DESIGN §3), all pairs of a layer at once.

A discrepancy turns one hidden layer into per-neuron *features* and a metric on them:

- `Structural` (default, data-free; ERODE's ε-FDE distance): the features of neuron m are its ODE
  coefficients `[c_m(B) for B in previous-layer blocks, b_m]`, `c_m(B) = Σ_{k∈B} W_mk`; the distance is
  their L1 difference.
- `Dynamical` (data-aware): the features are the neuron's induced dynamics `a_m(t_k; x_n)` simulated
  with diffrax along the homotopy; the distance is the RMS trajectory difference weighted by the size
  of what the pair feeds forward, `(‖W^{l+1}_{:,m}‖₂ + ‖W^{l+1}_{:,m′}‖₂)/2`.

Distances are divided by a per-layer scale so that one ε means the same across layers and models
(documented in `docs/method.md`, "ε scale"). Pairwise matrices start from one GEMM (`‖a‖² + ‖b‖² − 2a·b`) and
sum differences directly only in the `128 × 128` tiles that need it, so no `n × n × d` intermediate is formed.
"""

import abc
import contextlib
import contextvars

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Distances
from .._errors import RESULTS
from .._model.network import DenseChain, refuse_gated
from .encoding.dynamical import simulate
from .encoding.structural import block_sums

_TINY = 1e-30
# A pair whose distance is at most this many machine epsilons of the pair's *own* magnitudes is rounding, not a
# difference: exact duplicates whose coefficients are summed in another order, or whose trajectories come from an ODE
# solve, still merge at ε = 0, while two small neurons of a badly scaled layer that really differ never do.
_ROUNDING_ULPS = 64
_TILE = 128  # rows and columns of one tile of a pairwise matrix
_UNROLL = 8


# Set by `jaxlump.sweep` while it traces its `vmap` over ε (named by this axis): a tile is then computed for the
# whole batch when any ε needs it, so the skip stays a real `lax.cond` (a batched predicate would turn it into a
# select that computes every tile).
_BATCH_AXIS = contextvars.ContextVar("jaxlump_batch_axis", default=None)


@contextlib.contextmanager
def batched_over(axis_name):
    """Trace pairwise kernels inside `jax.vmap(..., axis_name=axis_name)` with batch-wide tile skipping."""
    token = _BATCH_AXIS.set(axis_name)
    try:
        yield
    finally:
        _BATCH_AXIS.reset(token)


def batch_any(flags: jax.Array) -> jax.Array:
    """`flags`, OR-ed over the ε batch when traced inside `batched_over` (else unchanged).

    Use it for a `lax.cond` predicate that should stay a real branch under the sweep's `vmap`: take the costly
    branch when any ε needs it, and select per ε inside it.
    """
    axis = _BATCH_AXIS.get()
    return flags if axis is None else jax.lax.psum(flags.astype(jnp.int32), axis) > 0


def _rounding_floor(magnitudes: jax.Array) -> jax.Array:
    """Per pair, `64 ε_mach (mag_i + mag_j)`: distances at or below it are rounding (see `_ROUNDING_ULPS`)."""
    return _ROUNDING_ULPS * jnp.finfo(magnitudes.dtype).eps * (magnitudes[:, None] + magnitudes[None, :])


def _relative(distances: jax.Array, scale: jax.Array, floor: jax.Array) -> jax.Array:
    """`distances / scale`, with every pair at or below its rounding floor sent to exactly 0."""
    return jnp.where(distances <= floor, 0.0, distances / jnp.maximum(scale, _TINY))


def _direct_tile(rows_t: jax.Array, cols_t: jax.Array, term) -> jax.Array:
    """`Σ_k term(rows_t[k, i] − cols_t[k, j])` for a `(d, t)` × `(d, t)` pair of tiles, one k at a time.

    The accumulator `(t, t)` stays in cache and each step reads two contiguous rows, so nothing of size
    `t · t · d` is ever formed.
    """

    def step(k, total):
        return total + term(rows_t[k][:, None] - cols_t[k][None, :])

    zeros = jnp.zeros((rows_t.shape[1], cols_t.shape[1]), rows_t.dtype)
    return jax.lax.fori_loop(0, rows_t.shape[0], step, zeros, unroll=_UNROLL)


def _fix_tiles(estimate: jax.Array, features: jax.Array, needed: jax.Array, term) -> jax.Array:
    """The symmetric matrix `estimate`, with the direct `Σ_k term(F[i, k] − F[j, k])` wherever `needed[i, j]`.

    Works on the upper triangle of `_TILE²` tiles (the lower one is its transpose, so a fixed result is exactly
    symmetric; without any needed pair `estimate` comes back as it is). A tile without a needed pair is skipped
    (`lax.cond`; under `jaxlump.sweep`'s `vmap`, when no ε of the batch needs it — see `batched_over`).
    Working memory beside the matrix: `O(n · d + _TILE²)`.
    """
    n, d = features.shape
    # The diagonal is exactly 0; left to the estimate it would flag every diagonal tile.
    diagonal = jnp.eye(n, dtype=bool)
    estimate, needed = jnp.where(diagonal, 0, estimate), needed & ~diagonal
    t = min(_TILE, n)
    blocks = -(-n // t)
    size = blocks * t
    padded_t = jnp.pad(features, ((0, size - n), (0, 0))).T
    padded = jnp.pad(estimate, ((0, size - n), (0, size - n)))
    needed = jnp.pad(needed, ((0, size - n), (0, size - n)))
    upper_i, upper_j = (jnp.asarray(v, jnp.int32) for v in np.triu_indices(blocks))
    t32, zero = jnp.int32(t), jnp.int32(0)
    flags = jnp.any(needed.reshape(blocks, t, blocks, t), axis=(1, 3))[upper_i, upper_j]
    flags = batch_any(flags)

    def tile(k):
        corner = (upper_i[k] * t32, upper_j[k] * t32)
        current = jax.lax.dynamic_slice(padded, corner, (t, t))

        def exact():
            rows_t = jax.lax.dynamic_slice(padded_t, (zero, corner[0]), (d, t))
            cols_t = jax.lax.dynamic_slice(padded_t, (zero, corner[1]), (d, t))
            mask = jax.lax.dynamic_slice(needed, corner, (t, t))
            return jnp.where(mask, _direct_tile(rows_t, cols_t, term), current)

        return jax.lax.cond(flags[k], exact, lambda: current)

    def fix():
        tiles = jax.lax.map(tile, jnp.arange(upper_i.shape[0]))
        grid = jnp.zeros((blocks, blocks, t, t), estimate.dtype)
        grid = grid.at[upper_j, upper_i].set(jnp.swapaxes(tiles, 1, 2)).at[upper_i, upper_j].set(tiles)
        return grid.transpose(0, 2, 1, 3).reshape(size, size)[:n, :n]

    return jax.lax.cond(jnp.any(flags), fix, lambda: estimate)


def _gemm(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)


def _dot_error(d: int, dtype) -> float:
    """Worst-case relative error of a length-`d` dot product (Higham's γ_d), doubled for safety."""
    return 2.0 * (d + 2) * float(jnp.finfo(dtype).eps)


def pairwise_l1(features: jax.Array, threshold: jax.Array | float = jnp.inf) -> Distances:
    """`D[i, j] = Σ_k |F[i, k] − F[j, k]|` for `F` of shape `(n, d)`, exact wherever `D[i, j] ≤ threshold`.

    A GEMM gives a lower bound for every pair: for any signs `s`, `‖a − b‖₁ ≥ s·(a − b)`; with `s = sign(a)`,
    `‖a − b‖₁ ≥ ‖a‖₁ − sign(a)·b` (and symmetrically), minus the product's worst-case rounding. It is tight for
    near-duplicates (about 0.7 of the distance for unrelated random rows, where `‖·‖₂` gives `1/√d`). Pairs whose
    bound exceeds `threshold` keep it — still `> threshold`, all a refinement at `ε · scale ≤ threshold` needs;
    the others are summed directly, tile by tile, skipping tiles without one.
    Cost: one `n × d × n` GEMM plus `n² d / 2` for the tiles computed exactly (all of them for `threshold = ∞`).
    Peak memory: the `n × n` result plus `O(n · d + 128²)`.
    """
    norms = jnp.sum(jnp.abs(features), axis=1)
    signed = norms[:, None] - _gemm(jnp.sign(features), features)
    error = _dot_error(features.shape[1], features.dtype) * (norms[:, None] + norms[None, :])
    lower = jnp.maximum(jnp.maximum(signed, signed.T) - error, 0.0)
    return _fix_tiles(lower, features, lower <= threshold, jnp.abs)


def pairwise_rms(samples: jax.Array) -> Distances:
    """`D[i, j] = sqrt(mean_s (F[s, i] − F[s, j])²)` for `F` of shape `(samples, n)`, in GEMM form.

    `D² = (‖a‖² + ‖b‖² − 2a·b) / S` runs at GEMM speed; where that value is within four times its worst-case
    rounding (`γ_S (‖a‖² + ‖b‖²)`) cancellation could hide an exact duplicate, so those pairs (few, unless many
    neurons nearly coincide) are recomputed directly — exact duplicates get exactly 0 and ε = 0 stays exact.
    Peak memory: the `n × n` result plus `O(n · S + 128²)`.
    """
    features = samples.T
    norms = jnp.sum(features**2, axis=1)
    scale = norms[:, None] + norms[None, :]
    squared = scale - 2 * _gemm(features, features)
    suspect = squared <= 4 * _dot_error(features.shape[1], features.dtype) * scale
    squared = _fix_tiles(jnp.maximum(squared, 0.0), features, suspect, jnp.square)
    return jnp.sqrt(squared / features.shape[1])


class LayerDistances(eqx.Module):
    """Relative distances of one hidden layer's neurons and their visiting order.

    `relative[i, j]` is the distance divided by the layer's scale; `importance` ranks neurons by the
    size of what they feed forward (the representative refinement visits the largest first).
    """

    relative: Distances
    importance: jax.Array


class AbstractDiscrepancy(eqx.Module):
    """How two neurons of one layer are compared. Subclasses are frozen, final strategies."""

    @abc.abstractmethod
    def prepare(self, chain: DenseChain, x: jax.Array | None):
        """Per-network work done once (e.g. simulating trajectories); returned as a pytree."""

    @abc.abstractmethod
    def layer(self, chain: DenseChain, prepared, l: int, prev_labels: jax.Array) -> LayerDistances:
        """Distances of hidden layer `l` (1-based) given the block labels of layer `l-1`."""

    def layer_within(
        self, chain: DenseChain, prepared, l: int, prev_labels: jax.Array, eps_max: jax.Array
    ) -> LayerDistances:
        """`layer`, where only the pairs with relative distance `≤ eps_max` need their exact value.

        Every other pair may hold any value `> eps_max` (a refinement at `ε ≤ eps_max` cannot tell). A sweep
        passes its largest ε; a discrepancy with a cheap bound overrides this (default: `layer`).
        """
        del eps_max
        return self.layer(chain, prepared, l, prev_labels)

    needs_data: eqx.AbstractClassVar[bool]


def _outgoing_norms(chain: DenseChain, l: int, ord) -> jax.Array:
    return jnp.linalg.norm(chain.weights[l], ord=ord, axis=0)


class Structural(AbstractDiscrepancy):
    """ERODE's ε-FDE distance on the structural (affine) encoding; needs no data.

    `d(m, m′) = Σ_B |c_m(B) − c_{m′}(B)| + |b_m − b_{m′}|`, relative to the layer's scale
    `mean_m (Σ_k |W_mk| + |b_m|)` (fixed per layer, so the refinement stays monotone in ε).
    ERODE's own pair test counts a degree-1 difference three times: its ε is 3× this one.
    For a gated layer (`σ(z_g) ⊙ z`) a unit's coefficients are those of its up row and of its gate row, side by
    side (and its magnitude the sum of both): two gated units are exactly lumpable iff both coincide.
    A pair within `64 ε_mach` of its own `Σ_k |W_mk| + |b_m|` is rounding and counts as 0.
    Cost per layer: one `n × n_{l-1} × n` GEMM (an L2 lower bound) plus the exact L1 only for the
    tiles holding a pair the refinement may relate; peak memory the `n × n` result plus `O(n · n_{l-1})`.
    """

    needs_data = False

    def prepare(self, chain, x):
        return None

    def layer(self, chain, prepared, l, prev_labels):
        return self.layer_within(chain, prepared, l, prev_labels, jnp.inf)

    def layer_within(self, chain, prepared, l, prev_labels, eps_max):
        w, b = chain.weights[l - 1], chain.biases[l - 1]
        coefficients = block_sums(w, b, prev_labels, w.shape[1])
        magnitudes = jnp.sum(jnp.abs(w), axis=1) + jnp.abs(b)
        if chain.gated[l - 1]:  # a gated unit's coefficients: its up row and bias, then its gate row and bias
            g, gb = chain.gate_weights[l - 1], chain.gate_biases[l - 1]
            coefficients = jnp.concatenate([coefficients, block_sums(g, gb, prev_labels, g.shape[1])], axis=1)
            magnitudes = magnitudes + jnp.sum(jnp.abs(g), axis=1) + jnp.abs(gb)
        scale = jnp.mean(magnitudes)
        floor = _rounding_floor(magnitudes)
        threshold = jnp.where(jnp.isinf(eps_max), jnp.inf, eps_max * scale)
        distances = pairwise_l1(coefficients, jnp.maximum(threshold, floor))
        return LayerDistances(_relative(distances, scale, floor), _outgoing_norms(chain, l, 1))


class Dynamical(AbstractDiscrepancy):
    """RMS difference of simulated neuron trajectories, weighted by outgoing weight norms.

    `d(m, m′) = sqrt(mean_{k,n} (a_m(t_k; x_n) − a_{m′}(t_k; x_n))²) · (‖W^{l+1}_{:,m}‖₂ + ‖W^{l+1}_{:,m′}‖₂)/2`,
    relative to the layer's scale `mean_m rms(a_m) ‖W^{l+1}_{:,m}‖₂` — the typical size of one
    neuron's contribution to the next layer. Trajectories come from `jaxlump.simulate` (diffrax) along
    `x(t) = x_ref + t (x − x_ref)`.

    **Arguments:**

    - `times`: the t_k at which trajectories are compared (default 8 points in (0, 1]).
    - `x_ref`: `"zero"` (default) or `"mean"` (the calibration mean).
    - `max_inputs`: at most this many calibration inputs are simulated (the first ones).
    """

    times: tuple[float, ...] = eqx.field(static=True, default=(0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0))
    x_ref: str = eqx.field(static=True, default="zero")
    max_inputs: int = eqx.field(static=True, default=256)
    needs_data = True

    def __check_init__(self):
        if self.x_ref not in ("zero", "mean"):
            raise ValueError(f"`x_ref` must be 'zero' or 'mean'; received {self.x_ref!r}.")
        if not self.times or any(not 0.0 <= t <= 1.0 for t in self.times):
            raise ValueError(f"`times` must be a non-empty tuple of values in [0, 1]; received {self.times!r}.")

    def prepare(self, chain, x):
        refuse_gated(chain, "model", "the Dynamical discrepancy (an ODE encoding of each layer)")
        x = x[: self.max_inputs]
        x_ref = jnp.mean(x, axis=0) if self.x_ref == "mean" else None
        trajectory = simulate(chain, x, x_ref=x_ref, times=self.times)
        # A failed or mismatched solve poisons the trajectories, so `lump` reports the ODE stage as failed.
        ok = trajectory.result == RESULTS.successful
        return tuple(jnp.where(ok, a, jnp.nan).reshape(-1, a.shape[-1]) for a in trajectory.activations)

    def layer(self, chain, prepared, l, prev_labels):
        samples = prepared[l - 1]
        outgoing = _outgoing_norms(chain, l, 2)
        rms = jnp.sqrt(jnp.mean(samples**2, axis=0))
        scale = jnp.mean(rms * outgoing)
        trajectories = pairwise_rms(samples)
        trajectories = jnp.where(trajectories <= _rounding_floor(rms), 0.0, trajectories)
        weighted = trajectories * (outgoing[:, None] + outgoing[None, :]) / 2
        return LayerDistances(_relative(weighted, scale, jnp.zeros((), weighted.dtype)), rms * outgoing)
