"""Pairwise neuron-dynamics discrepancies (DESIGN §3), all pairs of a layer at once.

A discrepancy turns one hidden layer into per-neuron *features* and a metric on them:

- `Structural` (default, data-free; ERODE's ε-FDE distance): the features of neuron m are its ODE
  coefficients `[c_m(B) for B in previous-layer blocks, b_m]`, `c_m(B) = Σ_{k∈B} W_mk`; the distance is
  their L1 difference.
- `Dynamical` (data-aware): the features are the neuron's induced dynamics `a_m(t_k; x_n)` simulated
  with diffrax along the homotopy; the distance is the RMS trajectory difference weighted by the size
  of what the pair feeds forward, `(‖W^{l+1}_{:,m}‖₂ + ‖W^{l+1}_{:,m′}‖₂)/2`.

Distances are divided by a per-layer scale so that one ε means the same across layers and models
(documented in `docs/method.md`, "ε scale"). Pairwise matrices are built in row blocks, so the `n × n × d`
intermediate never has to fit at once (at most `2²²` elements per block).
"""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp

from ._custom_types import Distances
from ._encoding.dynamical import simulate
from ._encoding.structural import aggregated_coefficients
from ._network import DenseChain

_TINY = 1e-30
# Relative distances this many machine epsilons or below are rounding, not a difference: exact duplicates whose
# coefficients are summed in another order, or whose trajectories come from an ODE solve, still merge at ε = 0.
_ROUNDING_ULPS = 64


def _relative(distances: jax.Array, scale: jax.Array) -> jax.Array:
    relative = distances / jnp.maximum(scale, _TINY)
    return jnp.where(relative <= _ROUNDING_ULPS * jnp.finfo(relative.dtype).eps, 0.0, relative)


_BLOCK_BUDGET = 2**22  # elements of one block's (rows, n, d) difference tensor


def _pairwise(features: jax.Array, reduce, block_size: int) -> Distances:
    """`D[i, j] = reduce(F[i] − F[j])` over the last axis, a block of rows at a time.

    Differences are formed directly (not through `‖a‖² + ‖b‖² − 2a·b`, whose cancellation leaves a floor of
    about √ε_machine and would hide exact duplicates at ε = 0).
    """
    n, d = features.shape
    rows = max(1, min(block_size, _BLOCK_BUDGET // max(n * d, 1)))
    n_blocks = -(-n // rows)
    padded = jnp.pad(features, ((0, n_blocks * rows - n), (0, 0)))

    def block(chunk):
        return reduce(chunk[:, None, :] - features[None, :, :])

    return jax.lax.map(block, padded.reshape(n_blocks, rows, d)).reshape(-1, n)[:n]


def pairwise_l1(features: jax.Array, block_size: int = 256) -> Distances:
    """`D[i, j] = Σ_k |F[i, k] − F[j, k]|` for `F` of shape `(n, d)`."""
    return _pairwise(features, lambda diff: jnp.sum(jnp.abs(diff), axis=-1), block_size)


def pairwise_rms(samples: jax.Array, block_size: int = 256) -> Distances:
    """`D[i, j] = sqrt(mean_s (F[s, i] − F[s, j])²)` for `F` of shape `(samples, n)`."""
    return _pairwise(samples.T, lambda diff: jnp.sqrt(jnp.mean(diff**2, axis=-1)), block_size)


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

    needs_data: eqx.AbstractClassVar[bool]


def _outgoing_norms(chain: DenseChain, l: int, ord) -> jax.Array:
    return jnp.linalg.norm(chain.weights[l], ord=ord, axis=0)


class Structural(AbstractDiscrepancy):
    """ERODE's ε-FDE distance on the structural (affine) encoding; needs no data.

    `d(m, m′) = Σ_B |c_m(B) − c_{m′}(B)| + |b_m − b_{m′}|`, relative to the layer's scale
    `mean_m (Σ_k |W_mk| + |b_m|)` (fixed per layer, so the refinement stays monotone in ε).
    ERODE's own pair test counts a degree-1 difference three times: its ε is 3× this one.

    **Arguments:**

    - `block_size`: rows per block of the pairwise computation (memory `block_size·n·n_{l-1}`).
    """

    block_size: int = eqx.field(static=True, default=256)
    needs_data = False

    def prepare(self, chain, x):
        return None

    def layer(self, chain, prepared, l, prev_labels):
        w, b = chain.weights[l - 1], chain.biases[l - 1]
        coefficients = aggregated_coefficients(w, b, prev_labels, w.shape[1])
        scale = jnp.mean(jnp.sum(jnp.abs(w), axis=1) + jnp.abs(b))
        distances = pairwise_l1(coefficients, self.block_size)
        return LayerDistances(_relative(distances, scale), _outgoing_norms(chain, l, 1))


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
        x = x[: self.max_inputs]
        x_ref = jnp.mean(x, axis=0) if self.x_ref == "mean" else None
        trajectory = simulate(chain, x, x_ref=x_ref, times=self.times)
        return tuple(a.reshape(-1, a.shape[-1]) for a in trajectory.activations)

    def layer(self, chain, prepared, l, prev_labels):
        samples = prepared[l - 1]
        outgoing = _outgoing_norms(chain, l, 2)
        rms = jnp.sqrt(jnp.mean(samples**2, axis=0))
        scale = jnp.mean(rms * outgoing)
        weighted = pairwise_rms(samples) * (outgoing[:, None] + outgoing[None, :]) / 2
        return LayerDistances(_relative(weighted, scale), rms * outgoing)
