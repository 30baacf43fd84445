"""The info record every compressor returns beside the new model."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ._accounting import Cost
from ._custom_types import Partition, WeightMask
from ._errors import RESULTS, is_traced


class Certificate(eqx.Module):
    """Error figures of a compressed model against its original.

    - `output_max_abs`, `output_rms`: measured `|f̃(x) − f(x)|` over the calibration data (max, RMS).
    - `ode_max_abs`: max deviation of the two simulated ODEs' outputs over the homotopy
      `x(t) = x_ref + t(x − x_ref)`, t ∈ [0, 1] (NaN when the simulation was not requested).
    - `a_priori_bound`: `max_x Σ_l (Π_{j>l} L_{j-1}‖W̃^j‖₂) ‖[ΔW^l ΔB^l]‖_F ‖[a^{l-1}(x); 1]‖₂` over
      the calibration data, a bound on `‖f̃(x) − f(x)‖₂` (see `docs/method.md`, "Guarantee").
    """

    output_max_abs: Float[Array, ""]
    output_rms: Float[Array, ""]
    ode_max_abs: Float[Array, ""]
    a_priori_bound: Float[Array, ""]


class CompressionInfo(eqx.Module):
    """What a compressor did.

    - `method`: the compressor's name; `structured`: whether the result is physically smaller
      (dense, fewer neurons) rather than a same-shape sparse mask.
    - `knob`: the value of the method's one knob that produced this result (ε, sparsity, τ ...).
    - `partitions`: per hidden layer, for every *original* neuron the index of the compressed
      neuron that represents it (`-1`: removed). Merged neurons share an index.
    - `weight_masks`: per layer, which weights of the compressed model are kept (unstructured
      methods), or `None`.
    - `widths_before`, `widths_after`: `(n_0, ..., n_L)`; `widths_after` counts live neurons.
    - `cost_before`, `cost_after`: `Cost` (dense parameters, non-zeros, FLOPs) of both models.
    - `certificate`: a `Certificate` (lumping computes one; other methods may leave `None`).
    - `result`: `RESULTS.successful` or the numerical failure met.
    """

    method: str = eqx.field(static=True)
    structured: bool = eqx.field(static=True)
    knob: Float[Array, ""]
    partitions: tuple[Partition, ...]
    weight_masks: tuple[WeightMask, ...] | None
    widths_before: tuple[int, ...] = eqx.field(static=True)
    widths_after: Int[Array, " layers"]
    cost_before: Cost
    cost_after: Cost
    certificate: Certificate | None
    result: RESULTS

    @property
    def percent_of_original(self) -> jax.Array:
        """Dense parameters after, in % of before (non-zeros for unstructured results)."""
        after = self.cost_after.dense_params if self.structured else self.cost_after.nonzeros
        before = self.cost_before.dense_params if self.structured else self.cost_before.nonzeros
        return 100.0 * after / before

    @property
    def parameter_reduction(self) -> jax.Array:
        """`100 (1 − params_after / params_before)` (the paper's GRP %)."""
        return 100.0 - self.percent_of_original


def live_masks(hidden_widths, partitions) -> list[jax.Array]:
    """Per hidden layer, which compressed neurons are live (something maps to them)."""
    if not any(is_traced(p) for p in partitions):
        # NumPy for concrete labels: eager JAX scatters would compile anew for every result shape.
        masks = []
        for n, p in zip(hidden_widths, partitions):
            labels, mask = np.asarray(p), np.zeros(n, bool)
            mask[labels[labels >= 0]] = True
            masks.append(jnp.asarray(mask))
        return masks
    # -1 (removed) must be sent out of range explicitly: JAX would wrap it to the last neuron.
    return [
        jnp.zeros(n, bool).at[jnp.where(p >= 0, p, n)].set(True, mode="drop") for n, p in zip(hidden_widths, partitions)
    ]


def live_widths(widths: tuple[int, ...], partitions) -> jax.Array:
    """`(n_0, live hidden widths..., n_L)` of a compressed model with hidden widths `widths[1:-1]`."""
    hidden = [jnp.sum(mask) for mask in live_masks(widths[1:-1], partitions)]
    return jnp.asarray([widths[0], *hidden, widths[-1]])
