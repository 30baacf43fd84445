"""The one least-squares reconstruction, used by `lump`'s refit and offered to every baseline.

Sequentially from the input, each compressed layer's incoming weights and bias are re-solved so that
its pre-activations on the calibration data match the original's, feeding the *compressed* network's
own activations forward (DESIGN §3, "Refit"). Targets come from the partitions: a kept neuron's
original pre-activation, the mean of the members' for a merged block, the exact targets for the
output layer. Each row is solved on its support only (the live columns, and for unstructured results
its kept weights), so zeros stay zero — all rows in one batched solve.

Ridge: `minimise ‖A w − t‖² + λ‖w − w₀‖²` with `w₀` the compressed model's current row and
`λ = ridge · mean(diag(AᵀA))`. Pulling towards `w₀` (not towards 0) keeps exact results exact and
makes calibration sets smaller than a layer well-posed. Data are centred per column when the layer
has a bias (better conditioned); Gram matrices accumulate in float64 when JAX's x64 mode is on and
at the highest matmul precision otherwise.
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._adapters import from_chain, to_chain
from ._errors import RESULTS, check_data, is_traced
from ._info import CompressionInfo, live_masks
from ._network import ACTIVATIONS, DenseChain
from ._reduction.quotient import mean_rows

DEFAULT_RIDGE = 1e-3
_HIGHEST = jax.lax.Precision.HIGHEST


def _accumulation_dtype(dtype):
    return jnp.float64 if jax.config.jax_enable_x64 else dtype


def solve_layer(inputs, targets, w0, b0, column_support, row_live, use_bias: bool, ridge, per_row: bool):
    """Least-squares rows `w_j, b_j` with `inputs @ w_j + b_j ≈ targets[:, j]` on each row's support."""
    dtype = _accumulation_dtype(inputs.dtype)
    a, t = inputs.astype(dtype), targets.astype(dtype)
    mu_a = jnp.mean(a, axis=0) if use_bias else jnp.zeros(a.shape[1], dtype)
    mu_t = jnp.mean(t, axis=0) if use_bias else jnp.zeros(t.shape[1], dtype)
    a, t = a - mu_a, t - mu_t
    gram = jnp.matmul(a.T, a, precision=_HIGHEST)
    rhs = jnp.matmul(a.T, t, precision=_HIGHEST).T
    prior = w0.astype(dtype)
    diagonal = jnp.diag(gram)

    live_columns = jnp.any(column_support, axis=0).astype(dtype)
    layer_scale = live_columns @ diagonal / jnp.maximum(jnp.sum(live_columns), 1)
    layer_scale = jnp.where(layer_scale > 0, layer_scale, 1.0)

    def solve_rows(support, rhs_rows, prior_rows):
        s = support.astype(dtype)
        # λ is relative to the mean Gram diagonal over the row's own support (dead columns don't count); a row
        # whose inputs are all constant on the data falls back to the layer's scale, so λ never vanishes.
        row_scale = s @ diagonal / jnp.maximum(jnp.sum(s), 1)
        lam = ridge * jnp.where(row_scale > 0, row_scale, layer_scale)
        system = gram * jnp.outer(s, s) + jnp.diag(1 - s + lam * s)
        # lstsq (SVD) rather than solve: with ridge = 0 and a rank-deficient design it returns the minimum-norm
        # least-squares solution instead of blowing up. Multiplying by s keeps pruned weights exactly zero.
        return jnp.linalg.lstsq(system, (s * (rhs_rows + lam * prior_rows)).T)[0].T * s

    if per_row:
        w = jax.vmap(lambda s, r, p: solve_rows(s, r[None], p[None])[0])(column_support, rhs, prior)
    else:
        w = solve_rows(column_support[0], rhs, prior)
    b = mu_t - w @ mu_a if use_bias else b0.astype(dtype)
    live = row_live.astype(dtype)
    return (w * live[:, None]).astype(w0.dtype), (b * live).astype(b0.dtype)


def check_compatible(original: DenseChain, compressed: DenseChain, partitions, weight_masks) -> None:
    """Refuse a compressed chain whose widths or partitions cannot come from `original`."""
    wo, wc = original.widths, compressed.widths
    if len(wo) != len(wc) or wo[0] != wc[0] or wo[-1] != wc[-1] or original.activations != compressed.activations:
        raise ValueError(
            f"`compressed` (widths {wc}, activations {compressed.activations}) cannot come from `original` "
            f"(widths {wo}, activations {original.activations}): depth, input/output widths and activations must match."
        )
    if len(partitions) != len(wo) - 2:
        raise ValueError(
            f"`info.partitions` has {len(partitions)} entries; the network has {len(wo) - 2} hidden layers."
        )
    for l, p in enumerate(partitions, start=1):
        if p.shape != (wo[l],):
            raise ValueError(f"`info.partitions[{l - 1}]` has shape {p.shape}; original layer {l} has {wo[l]} neurons.")
        if not is_traced(p) and int(jnp.max(p, initial=-1)) >= wc[l]:
            raise ValueError(
                f"`info.partitions[{l - 1}]` maps to neuron {int(jnp.max(p))}, but compressed layer {l} has {wc[l]}."
            )
    if weight_masks is not None:
        for l, (m, w) in enumerate(zip(weight_masks, compressed.weights)):
            if m.shape != w.shape:
                raise ValueError(f"`info.weight_masks[{l}]` has shape {m.shape}; the compressed weight has {w.shape}.")


def reconstruct_chain(original, compressed, x, partitions, weight_masks=None, *, ridge=DEFAULT_RIDGE) -> DenseChain:
    """`reconstruct` on canonical chains (jittable; `partitions` per hidden layer)."""
    check_compatible(original, compressed, partitions, weight_masks)
    wc = compressed.widths
    original_z, _ = original.forward(x)
    labels = (*partitions, jnp.arange(wc[-1]))
    live = [jnp.ones(wc[0], bool), *live_masks(wc[1:-1], partitions), jnp.ones(wc[-1], bool)]
    a = x
    weights, biases = [], []
    for l, (w0, b0, act) in enumerate(zip(compressed.weights, compressed.biases, compressed.activations)):
        targets = mean_rows(original_z[l].T, labels[l], wc[l + 1]).T
        support = jnp.broadcast_to(live[l][None, :], w0.shape)
        if weight_masks is not None:
            support = support & weight_masks[l]
        w, b = solve_layer(
            a, targets, w0, b0, support, live[l + 1], compressed.use_bias[l], ridge, per_row=weight_masks is not None
        )
        weights.append(w)
        biases.append(b)
        a = ACTIVATIONS[act].fn(a @ w.T + b)
    return DenseChain(tuple(weights), tuple(biases), compressed.activations, compressed.use_bias)


def result_status(chain: DenseChain) -> RESULTS:
    finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(w)) for w in chain.weights + chain.biases]))
    return RESULTS.where(finite, RESULTS.successful, RESULTS.nonfinite_result)


def reconstruct(original, compressed, x_calib, info: CompressionInfo, *, ridge: float = DEFAULT_RIDGE):
    """Re-solve every layer of a compressed model by least squares against the original.

    Layer by layer from the input, `min ‖A_c w_j + b_j − t_j‖² + λ‖w_j − w_j⁰‖²` on each row's support,
    where `A_c` are the compressed network's own activations on `x_calib` and `t_j` the original
    pre-activations of the neurons that compressed neuron j represents (their mean for a merged block).

    **Arguments:**

    - `original`: the model before compression.
    - `compressed`: the result of any jaxlump compressor (same-shape or physically smaller).
    - `x_calib`: calibration inputs, shape `(batch, n_in)`.
    - `info`: the compressor's `CompressionInfo` (its partitions and weight masks say what to solve).
    - `ridge`: λ relative to the mean diagonal of the Gram matrix (default `1e-3`); `0` is plain
      least squares (needs at least as many calibration examples as inputs to the widest layer).

    **Returns:** `(reconstructed_model, info)`; the info's method gains `+reconstruct`, its costs and
    certificate are recomputed, and `info.result` reports a non-finite solve.

    **Raises:** `ValueError` for a compressed model whose widths or partitions cannot come from
    `original`, calibration data of the wrong width, NaN/inf, or an empty calibration set.

    ```python
    import equinox as eqx, jax.numpy as jnp, jax.random as jr, jaxlump
    mlp = eqx.nn.MLP(3, 2, 16, 2, activation=jnp.tanh, key=jr.key(0))
    x = jr.normal(jr.key(1), (256, 3))
    small, info = jaxlump.lump(mlp, x, 0.3, refit=False)
    refit, refit_info = jaxlump.reconstruct(mlp, small, x, info)
    ```
    """
    from ._accounting import chain_cost
    from ._certificate import certify  # the certificate needs the simulator; imported lazily

    original_chain = to_chain(original, "original")
    compressed_chain = to_chain(compressed, "compressed")
    x = check_data(x_calib, "x_calib", width=original_chain.widths[0])
    ridge = float(ridge)
    if not np.isfinite(ridge) or ridge < 0:
        raise ValueError(f"`ridge` must be a finite number >= 0; received {ridge!r}.")
    new_chain = reconstruct_chain(original_chain, compressed_chain, x, info.partitions, info.weight_masks, ridge=ridge)
    new_info = eqx.tree_at(
        lambda i: (i.cost_after, i.certificate, i.result),
        info,
        (
            chain_cost(new_chain, neuron_masks=live_masks(new_chain.widths[1:-1], info.partitions)),
            certify(original_chain, new_chain, info.partitions, x, simulate_ode=False),
            result_status(new_chain),
        ),
        is_leaf=lambda node: node is None,
    )
    new_info = dataclasses.replace(new_info, method=f"{info.method}+reconstruct")
    return from_chain(new_chain, like=compressed), new_info
