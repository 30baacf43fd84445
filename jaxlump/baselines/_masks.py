"""Score → mask → apply: the selection logic every unstructured pruning baseline shares.

A baseline scores each prunable weight (lower = pruned first), `select_lowest` turns the scores
into keep masks for one comparison group, `apply_masks` zeroes the pruned weights (optionally
shifting biases), and `make_info` records the result. Conventions, the same for every baseline:

- Exactly `int(n·s)` weights are pruned per group of `n` weights, the lowest scores first, ties
  broken by position (a stable sort; within a layer row-major, in `Global()` layer by layer), so
  equal scores never overshoot the requested count as a `score <= threshold` rule would.
- Groups (`scope`): `Global()` one ranking over every prunable weight of the network;
  `PerLayer()` each prunable layer pruned to `s` on its own; `PerRow()` each output neuron (row of
  `W`) keeps the same number `n_in − int(n_in·s)` of inputs.
- Biases are never pruned and never scored. Layers built without a bias (`use_bias=False`) keep
  their zero bias: bias updates are dropped there.
- Masks are *keep* masks (`True` = the weight survives), as in `CompressionInfo.weight_masks`; a
  `None` entry means "this layer is not pruned".
"""

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp

from .._errors import (
    RESULTS,
    check_bool,
    check_data,
    check_fraction,
    finite_result,
    is_traced,
    raise_if_failed,
)
from .._methods.base import AbstractScope
from .._model import from_chain, to_chain
from .._model.network import DenseChain, refuse_gated
from .._results.info import CompressionInfo, compression_info


def prepare(model, x_calib, sparsity, *, needs_data: bool) -> tuple[DenseChain, jax.Array | None, float]:
    """Validate the common arguments: canonical chain, calibration data (in the model's dtype), sparsity.

    Data that a method does not need may be `None`; when given it is validated all the same.
    """
    chain = to_chain(model)
    sparsity = check_fraction(sparsity, "sparsity")
    refuse_gated(chain, "model", "the unstructured baselines (magnitude, random, wanda, elimination_compensation)")
    if x_calib is None and not needs_data:
        return chain, None, sparsity
    x = check_data(x_calib, "x_calib", width=chain.widths[0])
    if not needs_data and is_traced(x):
        # The method never reads the data, so a traced check on it alone would be removed as dead code: tie it
        # to the chain, which the result is built from.
        chain = eqx.error_if(chain, ~jnp.all(jnp.isfinite(x)), "`x_calib` contains NaN or inf.")
    return chain, x.astype(chain.weights[0].dtype), sparsity


check_flag = check_bool


def prunable_layers(chain: DenseChain, prune_output: bool, *, skip_first: bool = False) -> list[bool]:
    """Per layer, whether it is pruned: every hidden layer, the output layer only if `prune_output`."""
    check_flag(prune_output, "prune_output")
    flags = [l < chain.n_layers - 1 or prune_output for l in range(chain.n_layers)]
    if skip_first:
        flags[0] = False
    if not any(flags):
        raise ValueError(
            f"no layer of this {chain.n_layers}-layer model is prunable with prune_output={prune_output}"
            f"{' and the first layer skipped' if skip_first else ''}; pass `prune_output=True` to prune the "
            "output layer."
        )
    return flags


def select_lowest(
    scores_per_layer: Sequence[jax.Array | None], sparsity: float, scope: AbstractScope
) -> list[jax.Array | None]:
    """Keep masks that prune exactly `int(n·s)` lowest-scored weights of every group.

    **Arguments:**

    - `scores_per_layer`: per layer an `(out, in)` score array (lower = pruned first), or `None` for
      a layer that is not pruned.
    - `sparsity`: the fraction `s ∈ [0, 1)` to prune per group.
    - `scope`: which weights compete in one ranking (`jaxlump.baselines.PerLayer()`, `Global()`, `PerRow()`).

    **Returns:** per layer a boolean keep mask of the score's shape (`None` where the score was `None`).
    """
    scored = [s for s in scores_per_layer if s is not None]
    kept = scope.keep(scored, sparsity)
    kept_iter = iter(kept)
    return [None if s is None else next(kept_iter) for s in scores_per_layer]


def apply_masks(
    chain: DenseChain,
    keep_masks: Sequence[jax.Array | None],
    bias_updates: Sequence[jax.Array | None] | None = None,
) -> DenseChain:
    """Zero the pruned weights (exactly 0) and add `bias_updates[l]` to layer `l`'s bias where it has one."""
    weights, biases = [], []
    updates = [None] * chain.n_layers if bias_updates is None else bias_updates
    for w, b, has_bias, keep, update in zip(
        chain.weights, chain.biases, chain.use_bias, keep_masks, updates, strict=True
    ):
        weights.append(w if keep is None else jnp.where(keep, w, jnp.zeros((), w.dtype)))
        biases.append(b + update.astype(b.dtype) if has_bias and update is not None else b)
    return DenseChain(tuple(weights), tuple(biases), chain.activations, chain.use_bias)


def make_info(
    method: str,
    chain: DenseChain,
    new_chain: DenseChain,
    keep_masks: Sequence[jax.Array | None],
    sparsity: float,
    x: jax.Array | None,
) -> CompressionInfo:
    """The `CompressionInfo` of a same-shape unstructured result (identity partitions, all neurons live); its result
    is computed from `new_chain` (`RESULTS.nonfinite_result` when the method's arithmetic overflowed) and, on the
    calibration data `x` (`None`: data-free), the forward passes of both chains (see `compression_info`)."""
    partitions = tuple(jnp.arange(n) for n in chain.widths[1:-1])
    masks = tuple(jnp.ones(w.shape, bool) if k is None else k for w, k in zip(chain.weights, keep_masks, strict=True))
    result = finite_result(new_chain, RESULTS.nonfinite_result)
    return compression_info(
        method, sparsity, chain, new_chain, partitions, structured=False, result=result, x=x, weight_masks=masks
    )


def finish(method: str, model, chain: DenseChain, new_chain: DenseChain, keep_masks, sparsity: float, x, throw: bool):
    """`(new_model, info)` of an unstructured baseline; with `throw`, raise if a check of `make_info` failed (the
    model's or the result's forward pass on the calibration data `x` not finite, or the result's weights)."""
    info = make_info(method, chain, new_chain, keep_masks, sparsity, x)
    new_chain = raise_if_failed(info.result, new_chain, throw, f"jaxlump.baselines.{method}")
    return from_chain(new_chain, like=model), info
