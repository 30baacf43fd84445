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
has a bias (better conditioned).

The solve (one factorisation per layer, no SVD): Cholesky of the regularised normal equations
`(AᵀA + λI) w = Aᵀt + λw₀`, followed by one step of fixed-precision iterative refinement whose residual
`Aᵀ(t − Aw) − λ(w − w₀)` is formed from `A` itself, never from the Gram matrix (the corrected
semi-normal equations, Björck 1987): when `κ(AᵀA + λI)·u < 1` the refined solution has the accuracy
of a QR solve, so the squared condition number does not cost the digits float32 keeps. The ridge
bounds that condition number by `n/ridge + 1`. Gram matrices accumulate in float64 when JAX's x64
mode is on, otherwise in float32 (bfloat16/float16 data too) at the highest matmul precision. Where
Cholesky fails — a singular system (`ridge=0` with rank-deficient data) or `κ·u ≥ 1/4` estimated
from the factor's diagonal — a truncated eigendecomposition gives the minimum-norm solution instead
and the result reports `RESULTS.least_squares_rank_deficient`; NaN/inf give
`RESULTS.least_squares_nonfinite`. (Under `jaxlump.sweep`'s `vmap` the fallback is evaluated only when
some ε of the batch needs it.)

A layer that is left as it was — its partition the identity, its weights those of the original and
its inputs unchanged — is kept bit for bit: its pre-activations already equal the targets, and a
solve would only add rounding.
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp

from .._criteria.discrepancy import batch_any
from .._criteria.gram import batch_rows_for, fold_batches, row_batches
from .._errors import RESULTS, check_bool, check_data, check_nonnegative, combine, finite_result, raise_if_failed
from .._model import from_chain, to_chain
from .._model.network import DenseChain
from .._results.accounting import chain_cost
from .._results.certificate import certify
from .._results.info import CompressionInfo, check_partitions, checked_result, compression_info, live_masks
from .linalg import cho_solve, cholesky, eigh
from .quotient import mean_rows

DEFAULT_RIDGE = 1e-3
_HIGHEST = jax.lax.Precision.HIGHEST
# Cholesky is trusted while the estimated κ(M)·u stays below this (iterative refinement then contracts).
_MAX_CONDITION_TIMES_EPS = 0.25


def _accumulation_dtype(dtype):
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.promote_types(dtype, jnp.float32)


def _equilibrated_cholesky(systems, support):
    """Cholesky of `D^{-1/2} M D^{-1/2}` (`D = diag M`) per system; a solver and whether each factor is usable.

    The diagonal scaling makes the factor's accuracy depend on the scaled condition number (van der Sluis)
    and `(max L_ii / min L_ii)²` a meaningful lower bound of it. The scaling would also hide a column that is
    zero up to rounding (a constant input once centred), so a support column whose diagonal is below
    `n·u` times the largest one makes the factor unusable too.
    """
    eps = jnp.finfo(systems.dtype).eps
    diagonal = jnp.diagonal(systems, axis1=-2, axis2=-1)
    largest = jnp.max(diagonal * support, axis=-1, keepdims=True)
    negligible = jnp.any((support > 0) & (diagonal <= systems.shape[-1] * eps * largest), axis=-1)
    scale = jnp.sqrt(diagonal)
    scale = jnp.where(scale > 0, scale, 1)
    factor = cholesky(systems / (scale[:, :, None] * scale[:, None, :]))
    pivots = jnp.diagonal(factor, axis1=-2, axis2=-1)
    condition = (jnp.max(pivots, axis=-1) / jnp.min(pivots, axis=-1)) ** 2
    usable = jnp.all(jnp.isfinite(factor), axis=(-2, -1)) & (condition * eps < _MAX_CONDITION_TIMES_EPS) & ~negligible

    def solve(rhs):  # rhs (batch, n, k)
        scaled = cho_solve(factor, rhs / scale[:, :, None])
        return scaled / scale[:, :, None]

    return solve, usable


def _minimum_norm_solve(systems, rhs):
    """Batched truncated-eigendecomposition solve of symmetric positive semi-definite systems, rhs `(batch, n, k)`."""
    values, vectors = eigh(systems)
    cutoff = systems.shape[-1] * jnp.finfo(systems.dtype).eps * jnp.max(values, axis=-1, keepdims=True)
    inverse = jnp.where(values > cutoff, 1 / jnp.where(values > cutoff, values, 1), 0)
    projected = jnp.einsum("bji,bjk->bik", vectors, rhs) * inverse[:, :, None]
    return jnp.einsum("bij,bjk->bik", vectors, projected)


class _Moments(eqx.Module):
    """The centred moments of one least-squares problem `a w ≈ t` over every calibration row."""

    mean_inputs: jax.Array
    mean_targets: jax.Array
    gram: jax.Array  # Σ (a − ā)ᵀ(a − ā)
    cross: jax.Array  # Σ (a − ā)ᵀ(t − t̄)


def _moments(rows, batches, valid, dtype, centre: bool) -> _Moments:
    """`_Moments` of the problem whose rows `rows(batch) -> (a, t)` produces a batch at a time. The sums are taken
    about the first batch's means (then `Σ(a−s)ᵀ(a−s) − N d dᵀ`, `d = ā − s`, loses no digits to cancellation);
    uncentred (`ā = t̄ = 0`) when `centre` is False."""
    a0, t0 = rows(jax.tree_util.tree_map(lambda b: b[0], batches))
    weight0 = valid[0].astype(dtype)[:, None]
    first = jnp.maximum(jnp.sum(weight0), 1)
    shift_a = jnp.sum(a0.astype(dtype) * weight0, axis=0) / first if centre else jnp.zeros(a0.shape[1], dtype)
    shift_t = jnp.sum(t0.astype(dtype) * weight0, axis=0) / first if centre else jnp.zeros(t0.shape[1], dtype)

    def add(total, batch, ok):
        a, t = rows(batch)
        weight = ok.astype(dtype)[:, None]
        a, t = (a.astype(dtype) - shift_a[None]) * weight, (t.astype(dtype) - shift_t[None]) * weight
        sums = (
            jnp.sum(weight),
            jnp.sum(a, axis=0),
            jnp.sum(t, axis=0),
            jnp.matmul(a.T, a, precision=_HIGHEST),
            jnp.matmul(a.T, t, precision=_HIGHEST),
        )
        return jax.tree_util.tree_map(jnp.add, total, sums)

    n_in, n_out = a0.shape[1], t0.shape[1]
    init = tuple(jnp.zeros(s, dtype) for s in ((), (n_in,), (n_out,), (n_in, n_in), (n_in, n_out)))
    count, sum_a, sum_t, second, cross = fold_batches(add, init, batches, valid)
    count = jnp.maximum(count, 1)
    offset_a, offset_t = (sum_a / count, sum_t / count) if centre else (jnp.zeros_like(sum_a), jnp.zeros_like(sum_t))
    return _Moments(
        shift_a + offset_a,
        shift_t + offset_t,
        second - count * jnp.outer(offset_a, offset_a),
        cross - count * jnp.outer(offset_a, offset_t),
    )


def solve_layer(rows, batches, valid, w0, b0, column_support, row_live, use_bias: bool, ridge, per_row: bool):
    """Least-squares rows `w_j, b_j` with `a @ w_j + b_j ≈ t[:, j]` on each row's support, over the calibration rows
    that `rows(batch) -> (a, t)` produces from each of `batches` (a pytree with a leading batch axis; `valid` marks
    the real rows). Neither `a` nor `t` exists for all rows at once: one pass accumulates the moments, a second the
    refinement's residual.

    `column_support` is `(out, in)`; with `per_row=False` its first row is every row's support (one system
    for the layer), else each row has its own system. Returns `(w, b, result)`, `result` this solve's `RESULTS`.
    """
    probe = jax.eval_shape(rows, jax.tree_util.tree_map(lambda b: b[0], batches))[0]
    dtype = _accumulation_dtype(probe.dtype)
    moments = _moments(rows, batches, valid, dtype, use_bias)
    gram, mu_a, mu_t = moments.gram, moments.mean_inputs, moments.mean_targets
    prior = w0.astype(dtype)
    diagonal = jnp.diag(gram)

    support = column_support.astype(dtype) if per_row else column_support[:1].astype(dtype)  # (systems, in)
    live_columns = jnp.any(column_support, axis=0).astype(dtype)
    layer_scale = live_columns @ diagonal / jnp.maximum(jnp.sum(live_columns), 1)
    layer_scale = jnp.where(layer_scale > 0, layer_scale, 1.0)
    # λ is relative to the mean Gram diagonal over the row's own support (dead columns don't count); a row
    # whose inputs are all constant on the data falls back to the layer's scale, so λ never vanishes.
    row_scale = support @ diagonal / jnp.maximum(jnp.sum(support, axis=1), 1)
    lam = (ridge * jnp.where(row_scale > 0, row_scale, layer_scale)).astype(dtype)  # one per system
    # Columns off a row's support get the decoupled equation 1·w = 0, so pruned weights come out exactly zero.
    systems = gram[None] * (support[:, :, None] * support[:, None, :]) + jax.vmap(jnp.diag)(
        1 - support + lam[:, None] * support
    )
    rows_support = support if per_row else jnp.broadcast_to(support, w0.shape)  # (out, in)
    row_lam = (lam if per_row else jnp.broadcast_to(lam, (w0.shape[0],)))[:, None]

    def normal_residual(w):
        """`rhs − M w`, with the data term `Aᵀ(t − A w)` formed from `A` (a second pass), not from the Gram matrix."""

        def add(total, batch, ok):
            a, t = rows(batch)
            weight = ok.astype(dtype)[:, None]
            a, t = (a.astype(dtype) - mu_a[None]) * weight, (t.astype(dtype) - mu_t[None]) * weight
            return total + jnp.matmul(a.T, t - jnp.matmul(a, w.T, precision=_HIGHEST), precision=_HIGHEST)

        correlation = fold_batches(add, jnp.zeros(w.shape[::-1], dtype), batches, valid).T
        return rows_support * correlation - row_lam * rows_support * (w - prior) - (1 - rows_support) * w

    # Right-hand sides as one batch of systems: per row `(out, in, 1)`, shared `(1, in, out)`.
    arrange = (lambda r: r[:, :, None]) if per_row else (lambda r: r.T[None])
    unarrange = (lambda s: s[:, :, 0]) if per_row else (lambda s: s[0].T)
    rhs = rows_support * moments.cross.T + row_lam * rows_support * prior
    solve, usable = _equilibrated_cholesky(systems, support)

    def cholesky_path(_):
        w = unarrange(solve(arrange(rhs)))
        return w + unarrange(solve(arrange(normal_residual(w))))  # one step of iterative refinement

    def fallback_path(_):
        return unarrange(_minimum_norm_solve(systems, arrange(rhs)))

    fine = jnp.all(usable)
    # Under a sweep's vmap a plain `lax.cond` becomes a select and every ε would pay for the fallback: branch on
    # "any ε needs it" instead and select per ε inside that branch.
    w = jax.lax.cond(
        batch_any(~fine), lambda _: jnp.where(fine, cholesky_path(None), fallback_path(None)), cholesky_path, None
    )
    w = w * rows_support
    b = mu_t - w @ mu_a if use_bias else b0.astype(dtype)
    live = row_live.astype(dtype)
    w, b = w * live[:, None], b * live
    result = RESULTS.where(fine, RESULTS.successful, RESULTS.least_squares_rank_deficient)
    result = combine(finite_result((w, b), RESULTS.least_squares_nonfinite), result)
    return w.astype(w0.dtype), b.astype(b0.dtype), result


def check_compatible(original: DenseChain, compressed: DenseChain, partitions, weight_masks) -> None:
    """Refuse a compressed chain whose widths or partitions cannot come from `original`."""
    wo, wc = original.widths, compressed.widths
    if (
        len(wo) != len(wc)
        or wo[0] != wc[0]
        or wo[-1] != wc[-1]
        or original.activations != compressed.activations
        or original.gated != compressed.gated
    ):
        raise ValueError(
            f"`compressed` (widths {wc}, activations {compressed.activations}, gated layers {compressed.gated}) cannot "
            f"come from `original` (widths {wo}, activations {original.activations}, gated layers {original.gated}): "
            "depth, input/output widths, activations and gated layers must match."
        )
    check_partitions(partitions, wo, wc, "info.partitions")
    if weight_masks is not None and compressed.is_gated:
        raise ValueError(
            "`info.weight_masks` is set, but `compressed` has gated layers: unstructured (masked) results of gated "
            "models are not supported; gated layers are reconstructed structurally (`info.weight_masks=None`)."
        )
    if weight_masks is not None:
        if len(weight_masks) != compressed.n_layers:
            raise ValueError(
                f"`info.weight_masks` has {len(weight_masks)} entries; `compressed` has {compressed.n_layers} layers."
            )
        for l, (m, w) in enumerate(zip(weight_masks, compressed.weights)):
            if jnp.shape(m) != w.shape:
                raise ValueError(
                    f"`info.weight_masks[{l}]` has shape {jnp.shape(m)}; the compressed weight has {w.shape}."
                )


def _is_identity(labels, n_original: int, n_compressed: int):
    if n_original != n_compressed:
        return jnp.asarray(False)
    return jnp.all(labels == jnp.arange(n_original, dtype=labels.dtype))


def reconstruct_chain(
    original, compressed, x, partitions, weight_masks=None, *, ridge=DEFAULT_RIDGE, batch_rows: int | None = None
) -> tuple[DenseChain, RESULTS]:
    """`reconstruct` on canonical chains (jittable; `partitions` per hidden layer). Returns `(chain, result)`.

    The calibration rows are streamed `batch_rows` at a time (default `batch_rows_for`): each layer's inputs (the
    compressed prefix's activations) and targets (the original's pre-activations) are recomputed a batch at a time,
    so no layer's activations exist for every row at once."""
    check_compatible(original, compressed, partitions, weight_masks)
    wo, wc = original.widths, compressed.widths
    labels = (*partitions, jnp.arange(wc[-1]))
    live = [jnp.ones(wc[0], bool), *live_masks(wc[1:-1], partitions), jnp.ones(wc[-1], bool)]
    batches, valid = row_batches(x, batch_rows or batch_rows_for(x.shape[0], max(wo)))
    unchanged = jnp.asarray(True)  # whether this layer's inputs are the original's, bit for bit
    solved, results = [], []  # per layer (w, b, gate w, gate b)
    gated = compressed.gated
    for l, (w0, b0) in enumerate(zip(compressed.weights, compressed.biases)):
        support = jnp.broadcast_to(live[l][None, :], w0.shape)
        if weight_masks is not None:
            support = support & weight_masks[l]
        current = _with_first_layers(compressed, solved)

        def rows(batch, l=l, current=current):
            """This layer's inputs and targets on a batch: the members' mean pre-activation for each compressed
            neuron (a gated layer's up targets, then its gate targets). Whole forward passes, of which XLA keeps
            only what layer l needs."""
            z = original.forward(batch)[0][l]
            parts = (z[1], z[0]) if gated[l] else (z,)
            targets = [mean_rows(part.T, labels[l], wc[l + 1]).T for part in parts]
            return current.forward(batch)[1][l], jnp.concatenate(targets, axis=1)

        # A gated layer's up and gate rows share its inputs and support: one solve of the stacked rows.
        producers = [(w0, b0)] + ([(compressed.gate_weights[l], compressed.gate_biases[l])] if gated[l] else [])
        stacked_w0 = jnp.concatenate([w for w, _ in producers])
        stacked_b0 = jnp.concatenate([b for _, b in producers])
        w, b, result = solve_layer(
            rows,
            batches,
            valid,
            stacked_w0,
            stacked_b0,
            jnp.concatenate([support] * len(producers)),
            jnp.concatenate([live[l + 1]] * len(producers)),
            compressed.use_bias[l],
            ridge,
            per_row=weight_masks is not None,
        )
        keep = unchanged & _is_identity(labels[l], wo[l + 1], wc[l + 1]) & jnp.all(support)
        if w0.shape == original.weights[l].shape:
            before = [(original.weights[l], original.biases[l])]
            if gated[l]:
                before.append((original.gate_weights[l], original.gate_biases[l]))
            for (w_now, b_now), (w_then, b_then) in zip(producers, before):
                keep = keep & jnp.all(w_now == w_then) & jnp.all(b_now == b_then)
        else:
            keep = jnp.asarray(False)
        w, b = jnp.where(keep, stacked_w0, w), jnp.where(keep, stacked_b0, b)
        n_out = wc[l + 1]
        solved.append((w[:n_out], b[:n_out], *((w[n_out:], b[n_out:]) if gated[l] else (None, None))))
        results.append(RESULTS.where(keep, RESULTS.successful, result))
        unchanged = keep
    return _with_first_layers(compressed, solved), combine(*results)


def _with_first_layers(chain: DenseChain, layers: list) -> DenseChain:
    """`chain` with its first `len(layers)` layers' parameters replaced by `layers` (`(w, b, gate w, gate b)` each)."""
    k = len(layers)
    none = (None,) * chain.n_layers
    old = list(zip(chain.weights, chain.biases, chain.gate_weights or none, chain.gate_biases or none))
    weights, biases, gate_weights, gate_biases = zip(*(list(layers) + old[k:]))
    gates = (gate_weights, gate_biases) if chain.is_gated else ((), ())
    return DenseChain(weights, biases, chain.activations, chain.use_bias, *gates)


def infer_support(
    original: DenseChain, compressed: DenseChain
) -> tuple[tuple[jax.Array, ...], tuple[jax.Array, ...] | None]:
    """Partitions and weight masks of a same-shape compressed model, read from its exact zeros.

    A hidden neuron whose incoming row and outgoing column are both all zero is removed (`-1`); every
    other neuron represents itself. The weight masks are the non-zero weights (`None` for a chain with gated layers,
    which is reconstructed structurally).
    """
    if original.widths != compressed.widths:
        raise ValueError(
            f"without `info`, `compressed` must have the widths of `original` (a same-shape masked or pruned model): "
            f"received widths {compressed.widths} for an original of widths {original.widths}. Pass the "
            "compressor's `info` to reconstruct a physically smaller model."
        )
    partitions = []
    for l in range(1, compressed.n_layers):
        row_zero = jnp.all(compressed.weights[l - 1] == 0, axis=1)
        if compressed.gated[l - 1]:  # a gated unit is removed when its gate row is zero too
            row_zero = row_zero & jnp.all(compressed.gate_weights[l - 1] == 0, axis=1)
        column_zero = jnp.all(compressed.weights[l] == 0, axis=0)
        partitions.append(jnp.where(row_zero & column_zero, -1, jnp.arange(compressed.widths[l])))
    masks = tuple(w != 0 for w in compressed.weights)
    if compressed.is_gated:  # the weight masks cover the up weights only: a gated model is reconstructed structurally
        masks = None
    return tuple(partitions), masks


@eqx.filter_jit
def _reconstruct_and_certify(original, compressed, x, partitions, weight_masks, ridge):
    """The solve and the certificate, compiled once per shape (eagerly, each primitive would dispatch alone)."""
    new_chain, result = reconstruct_chain(original, compressed, x, partitions, weight_masks, ridge=ridge)
    certificate, _ = certify(original, new_chain, partitions, x, simulate_ode=False)
    return new_chain, result, certificate


def reconstruct(
    original,
    compressed,
    x_calib,
    info: CompressionInfo | None = None,
    *,
    ridge: float = DEFAULT_RIDGE,
    throw: bool = True,
):
    """Re-solve every layer of a compressed model by least squares against the original.

    Layer by layer from the input, `min ‖A_c w_j + b_j − t_j‖² + λ‖w_j − w_j⁰‖²` on each row's support,
    where `A_c` are the compressed network's own activations on `x_calib` and `t_j` the original
    pre-activations of the neurons that compressed neuron j represents (their mean for a merged block).
    Solved by Cholesky with one refinement step, reported fallback
    (module docs of `jaxlump._reconstruction.reconstruct`). The calibration rows are streamed in batches (at most
    2²⁴ activations of the widest layer each), so the activations of a wide layer never exist for every row at once.

    The call shape differs from a compressor's, by design: it takes two models (the original supplies the
    targets) and the compressor's `info` as its fourth, optional argument.

    **Arguments:**

    - `original`: the model before compression.
    - `compressed`: the result of any compressor (jaxlump's or another library's; same-shape or smaller).
    - `x_calib`: calibration inputs, shape `(batch, n_in)`.
    - `info`: the compressor's `CompressionInfo` (its partitions and weight masks say what to solve). When
      `None`, `compressed` must have the original's widths and the support is read from its exact zeros:
      hidden neurons whose incoming row and outgoing column are all zero are removed, every other neuron
      keeps its own targets, and each weight that is zero stays zero (in a model with gated layers a unit is
      removed when its gate row is zero too, and the kept rows are re-solved in full).
    - `ridge`: λ relative to the mean diagonal of the Gram matrix (default `1e-3`); `0` is plain
      least squares (needs at least as many calibration examples as inputs to the widest layer).
    - `throw`: raise a `jaxlump.CompressionError` naming the failed stage (default); `False` returns the
      result with `info.result` set instead.

    **Returns:** `(reconstructed_model, info)`; the info's method gains `+reconstruct` (`"reconstruct"`
    without `info`, with `knob = ridge`), its costs and certificate are recomputed, and `info.result` reports
    a failed solve (`RESULTS.least_squares_nonfinite`, `RESULTS.least_squares_rank_deficient`).

    **Raises:** `ValueError` for a compressed model whose widths or partitions cannot come from
    `original`, calibration data of the wrong width, NaN/inf, or an empty calibration set; `CompressionError`
    for a failed solve when `throw=True`.

    ```python
    import equinox as eqx, jax.numpy as jnp, jax.random as jr, jaxlump
    mlp = eqx.nn.MLP(3, 2, 16, 2, activation=jnp.tanh, key=jr.key(0))
    x = jr.normal(jr.key(1), (256, 3))
    small, info = jaxlump.lump(mlp, x, 0.3, reconstruct=False)
    refit, refit_info = jaxlump.reconstruct(mlp, small, x, info)
    assert refit_info.certificate.output_rms <= info.certificate.output_rms
    ```
    """
    original_chain = to_chain(original, "original")
    compressed_chain = to_chain(compressed, "compressed")
    x = check_data(x_calib, "x_calib", width=original_chain.widths[0]).astype(original_chain.weights[0].dtype)
    throw = check_bool(throw, "throw")
    ridge = check_nonnegative(ridge, "ridge")
    if info is None:
        partitions, weight_masks = infer_support(original_chain, compressed_chain)
    elif not isinstance(info, CompressionInfo):
        raise TypeError(f"`info` must be a jaxlump.CompressionInfo or None; received {type(info).__name__}.")
    else:
        partitions, weight_masks = info.partitions, info.weight_masks
    check_compatible(original_chain, compressed_chain, partitions, weight_masks)  # eagerly: label ranges too
    new_chain, result, certificate = _reconstruct_and_certify(
        original_chain, compressed_chain, x, partitions, weight_masks, jnp.asarray(ridge, x.dtype)
    )
    if info is None:
        new_info = compression_info(
            "reconstruct",
            ridge,
            original_chain,
            new_chain,
            partitions,
            structured=False,
            result=result,
            x=x,
            weight_masks=weight_masks,
            certificate=certificate,
        )
    else:
        cost_after = chain_cost(new_chain, neuron_masks=live_masks(new_chain.widths[1:-1], partitions))
        new_info = eqx.tree_at(
            lambda i: (i.cost_after, i.certificate, i.result),
            info,
            (cost_after, certificate, combine(info.result, result)),
            is_leaf=lambda node: node is None,
        )
        checked = checked_result(new_info.result, original_chain, new_chain, x, certificate)
        new_info = dataclasses.replace(new_info, method=f"{info.method}+reconstruct", result=checked)
    new_chain = raise_if_failed(new_info.result, new_chain, throw, "jaxlump.reconstruct")
    return from_chain(new_chain, like=compressed), new_info


def result_status(chain: DenseChain) -> RESULTS:
    """`RESULTS.nonfinite_result` when a compressor's own output chain holds NaN or inf, else `successful`."""
    return finite_result(chain, RESULTS.nonfinite_result)
