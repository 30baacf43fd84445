"""Unstructured magnitude pruning: remove the weights of smallest absolute value."""

from typing import Any

from .._custom_types import Calibration
from .._methods.base import AbstractScope, Global, PerLayer, PerRow, check_scope
from .._methods.registry import WEIGHT_SPARSITY, Compressor, register_compressor
from .._results.info import CompressionInfo
from .._sites.compress import over_sites
from ._masks import apply_masks, check_flag, finish, prepare, prunable_layers, select_lowest


@over_sites
def magnitude(
    model: Any,
    x_calib: Calibration | None,
    sparsity: float,
    *,
    scope: AbstractScope = PerLayer(),
    prune_output: bool = False,
    throw: bool = True,
) -> tuple[Any, CompressionInfo]:
    """Prune the weights of smallest magnitude `|W_ij|`, leaving a same-shape model with exact zeros.

    Score `S_ij = |W^l_ij|`; in every group of `n` prunable weights exactly `int(n·s)` lowest scores
    are set to 0 (stable sort, ties broken by position). Biases are kept and not counted.

    **Arguments:**

    - `model`: an `eqx.nn.MLP`, `eqx.nn.Sequential`, `jaxlump.LumpedMLP` or `flax.nnx` model.
    - `x_calib`: not needed (may be `None`); when given it is validated as `(batch, in)` data.
    - `sparsity`: the fraction `s ∈ [0, 1)` of prunable weights to zero.
    - `scope`: `PerLayer()` (default, the same for every jaxlump pruning baseline: each prunable layer
      to `s`), `Global()` (one ranking over all prunable layers, which may thin small layers much
      more than large ones) or `PerRow()` (every output neuron keeps the same number of inputs).
    - `prune_output`: whether the output layer is prunable. Default `False`, the same for every
      jaxlump baseline: all hidden layers (the first one included) are pruned, the head is not,
      as in Wanda and the LLM pruning literature.
    - `throw`: raise a `jaxlump.CompressionError` if the result is not finite (default); `False` reports it in
      `info.result` instead.

    **Returns:** `(new_model, info)`: a model of the same type and shapes as `model`, and a
    `CompressionInfo` whose `weight_masks` are the keep masks (`True` = kept).

    **Raises:** `ValueError` for a sparsity outside `[0, 1)`, malformed or non-finite `x_calib`, or no prunable
    layer; `TypeError` for an unsupported model or a `scope` that is not a scope object.

    ```python
    import equinox as eqx, jax.numpy as jnp, jax.random as jr
    from jaxlump.baselines import PerLayer, magnitude

    mlp = eqx.nn.MLP(3, 2, 16, 2, key=jr.key(0))
    pruned, info = magnitude(mlp, None, 0.5, scope=PerLayer())
    assert int(jnp.sum(pruned.layers[0].weight == 0)) == 24      # int(48 · 0.5)
    assert bool(jnp.all(info.weight_masks[2]))                     # head kept
    ```

    Standard practice; see Han et al., *Learning both Weights and Connections for Efficient Neural
    Networks* (NeurIPS 2015), and Sun et al., *A Simple and Effective Pruning Approach for Large
    Language Models* (ICLR 2024) for the per-row group.
    """
    throw = check_flag(throw, "throw")
    chain, x, sparsity = prepare(model, x_calib, sparsity, needs_data=False)
    prunable = prunable_layers(chain, prune_output)
    scores = [abs(w) if p else None for w, p in zip(chain.weights, prunable, strict=True)]
    keep = select_lowest(scores, sparsity, check_scope(scope, (PerLayer, Global, PerRow)))
    new_chain = apply_masks(chain, keep)
    return finish("magnitude", model, chain, new_chain, keep, sparsity, x, throw)


# fmt: off
register_compressor(Compressor("magnitude", magnitude, "sparsity", WEIGHT_SPARSITY + ", smallest |W| first, per layer by default (biases and the output layer are kept, so magnitude(m, x, 0.5) keeps 55.7 % of the non-zeros of a 7→64→64→7 MLP)", structured=False, needs_data=False))  # noqa: E501
# fmt: on
