"""Measured, simulated and a-priori error figures of a compressed model (DESIGN §3, "Certificate").

The a-priori bound works for every compressor. The compressed network is first *lifted* back to the
original size: `W̃^l[m, k] = Ŵ^l[p_l(m), p_{l-1}(k)] / |block of k|` (zero for removed neurons), which
computes exactly the compressed function (members of a block share their incoming row, so they share
their activation). With `ΔM^l = [W̃^l − W^l, b̃^l − b^l]` and `e_l = ‖z̃^l(x) − z^l(x)‖₂`,

    e_l ≤ ‖ΔM^l‖_F ‖[a^{l-1}(x); 1]‖₂ + ‖W̃^l‖₂ L_{l-1} e_{l-1},   e_0 = 0,

so `‖f̃(x) − f(x)‖₂ ≤ L_L e_L` with `L_l` the Lipschitz constant of σ_l and `a` the original's activations.
"""

import jax
import jax.numpy as jnp
import numpy as np

from .._criteria.encoding.dynamical import simulate
from .._criteria.gram import batch_rows_for, fold_batches, row_batches
from .._errors import RESULTS, combine
from .._model.activations import ACTIVATIONS
from .._model.network import DenseChain, refuse_gated
from .._reconstruction.linalg import spectral_norm
from .._reconstruction.quotient import block_counts
from .info import Certificate

ODE_TIMES = tuple(np.linspace(0.0, 1.0, 11).tolist())


def lift(compressed: DenseChain, partitions, original_widths) -> DenseChain:
    """The original-size chain that computes exactly what `compressed` computes.

    Exact when compressed neurons that no original neuron maps to have zero outgoing columns — true of
    every jaxlump result (quotients, masked forms and reconstructions only use live columns).
    """
    refuse_gated(compressed, "compressed", "the certificate's lift (and a-priori bound)")
    labels = (jnp.arange(original_widths[0]), *partitions, jnp.arange(original_widths[-1]))
    weights, biases = [], []
    for l, (w, b) in enumerate(zip(compressed.weights, compressed.biases)):
        rows, cols = labels[l + 1], labels[l]
        counts = block_counts(cols, w.shape[1])
        col_scale = jnp.where(cols >= 0, 1 / jnp.maximum(counts[jnp.maximum(cols, 0)], 1).astype(w.dtype), 0)
        row_live = (rows >= 0).astype(w.dtype)
        lifted = w[jnp.maximum(rows, 0)][:, jnp.maximum(cols, 0)] * col_scale.astype(w.dtype)[None, :]
        weights.append(lifted * row_live[:, None])
        biases.append(b[jnp.maximum(rows, 0)] * row_live)
    return DenseChain(tuple(weights), tuple(biases), compressed.activations, compressed.use_bias)


def bound_factors(original: DenseChain, lifted: DenseChain) -> tuple[tuple[jax.Array, jax.Array], ...]:
    """Per layer of the a-priori bound, `(‖ΔM^l‖_F, ‖W̃^l‖₂ L_{l-1})`: what does not depend on the input."""
    refuse_gated(original, "original", "the certificate's a-priori bound")
    factors = []
    for l, (w, b, wt, bt) in enumerate(zip(original.weights, original.biases, lifted.weights, lifted.biases)):
        delta = jnp.sqrt(jnp.sum((wt - w) ** 2) + jnp.sum((bt - b) ** 2))
        previous = ACTIVATIONS[original.activations[l - 1]].lipschitz if l > 0 else 0.0
        factors.append((delta, spectral_norm(wt) * previous))
    return tuple(factors)


def bound_rows(original: DenseChain, factors, original_activations) -> jax.Array:
    """Per input, the bound on `‖f̃(x) − f(x)‖₂` from the module docs, given `bound_factors`."""
    error = jnp.zeros(original_activations[0].shape[0], original.weights[0].dtype)
    for (delta, gain), a in zip(factors, original_activations):
        error = delta * jnp.sqrt(jnp.sum(a**2, axis=1) + 1.0) + gain * error
    return ACTIVATIONS[original.activations[-1]].lipschitz * error


def a_priori_bound(original: DenseChain, lifted: DenseChain, original_activations) -> jax.Array:
    """Per input, the bound on `‖f̃(x) − f(x)‖₂` from the module docs."""
    return bound_rows(original, bound_factors(original, lifted), original_activations)


def certify(
    original: DenseChain,
    compressed: DenseChain,
    partitions,
    x: jax.Array,
    *,
    simulate_ode: bool,
    ode_inputs: int = 32,
) -> tuple[Certificate, RESULTS]:
    """The `Certificate` of `compressed` against `original` on calibration inputs `x`, and the `RESULTS` of its
    ODE simulations (`certificate_ode_failed` when either solve failed; `successful` when none was run).

    For a chain with gated layers only the measured errors are computed: the a-priori bound and the ODE
    deviation are NaN ("not computed"; a gated unit has no global Lipschitz constant and no ODE encoding)."""
    if original.is_gated:
        # σ(z_g) ⊙ z has no global Lipschitz constant and no ODE encoding: neither figure is computed (NaN).
        factors, simulate_ode = None, False
    else:
        factors = bound_factors(original, lift(compressed, partitions, original.widths))

    def add(total, batch, ok):
        _, original_activations = original.forward(batch)
        deviation = jnp.where(ok[:, None], compressed(batch) - original_activations[-1], 0)
        if factors is None:
            bound = jnp.full((), jnp.nan, deviation.dtype)
        else:
            bound = jnp.max(jnp.where(ok, bound_rows(original, factors, original_activations), -jnp.inf))
        return (
            jnp.maximum(total[0], jnp.max(jnp.abs(deviation))),
            total[1] + jnp.sum(deviation**2),
            jnp.maximum(total[2], bound),
        )

    dtype = jnp.result_type(original.weights[-1], x)
    init = (jnp.zeros((), dtype), jnp.zeros((), dtype), jnp.full((), -jnp.inf, dtype))
    batches, valid = row_batches(x, batch_rows_for(x.shape[0], max(original.widths)))
    max_abs, square, bound = fold_batches(add, init, batches, valid)
    if simulate_ode:
        subset = x[:ode_inputs]
        ode_original = simulate(original, subset, times=ODE_TIMES)
        ode_compressed = simulate(compressed, subset, times=ODE_TIMES)
        ode_max = jnp.max(jnp.abs(ode_compressed.activations[-1] - ode_original.activations[-1]))
        solved = combine(ode_original.result, ode_compressed.result) == RESULTS.successful
        result = RESULTS.where(solved, RESULTS.successful, RESULTS.certificate_ode_failed)
    else:
        ode_max = jnp.asarray(jnp.nan, dtype)
        result = RESULTS.successful
    certificate = Certificate(
        output_max_abs=max_abs,
        output_rms=jnp.sqrt(square / (x.shape[0] * original.widths[-1])),
        ode_max_abs=ode_max,
        a_priori_bound=bound,
    )
    return certificate, result
