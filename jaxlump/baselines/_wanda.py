"""Wanda: prune by weight magnitude times input-activation norm (Sun et al., ICLR 2024)."""

from typing import Any

import jax
import jax.numpy as jnp

from .._custom_types import Calibration
from .._methods.base import AbstractScope, PerLayer, PerRow, check_scope
from .._methods.registry import WEIGHT_SPARSITY, Compressor, register_compressor
from .._model.network import DenseChain
from .._results.info import CompressionInfo
from .._sites.compress import over_sites
from ._masks import apply_masks, check_flag, finish, prepare, prunable_layers, select_lowest


def _single_layer(chain: DenseChain, l: int) -> DenseChain:
    return DenseChain((chain.weights[l],), (chain.biases[l],), (chain.activations[l],), (chain.use_bias[l],))


def wanda_scores(weight: jax.Array, inputs: jax.Array) -> jax.Array:
    """`S_ij = |W_ij| · ‖X_{:,j}‖₂`, with `inputs` the layer's `(N, n_in)` input activations."""
    return jnp.abs(weight) * jnp.sqrt(jnp.sum(inputs**2, axis=0))[None, :]


@over_sites
def wanda(
    model: Any,
    x_calib: Calibration,
    sparsity: float,
    *,
    scope: AbstractScope = PerLayer(),
    sequential: bool = True,
    first_layer: AbstractScope | None = PerLayer(),
    bias_correction: bool = False,
    prune_output: bool = False,
    throw: bool = True,
) -> tuple[Any, CompressionInfo]:
    """Prune the weights with the smallest `|W_ij|·‖X_j‖₂` (per layer, or per output neuron), with no weight update.

    `X ∈ R^{N×n_in}` stacks the layer's input activations over the calibration data (the raw
    features for the first layer). In every group of `n` weights exactly `int(n·s)` lowest scores are
    zeroed (stable sort). With `bias_correction`, each pruned row absorbs its mean contribution:
    `b_i ← b_i + Σ_j [pruned_ij] W_ij mean_n(X_nj)`.

    **Arguments:**

    - `model`: an `eqx.nn.MLP`, `eqx.nn.Sequential`, `jaxlump.LumpedMLP` or `flax.nnx` model.
    - `x_calib`: calibration inputs, shape `(N, in)`; required.
    - `sparsity`: the fraction `s ∈ [0, 1)` of prunable weights to zero.
    - `scope`: `PerLayer()` (default, the same for every jaxlump pruning baseline: one ranking per weight
      matrix, as Wanda's image-classifier code offers) or `PerRow()` (Wanda's LLM per-output group: every
      neuron keeps `n_in − int(n_in·s)` inputs; pass it to reproduce the paper's setting).
    - `sequential`: `True` (default, Wanda's LLM code) scores each layer on the activations of the
      already-pruned layers before it; `False` (Wanda's image-classifier code) on the dense
      network's activations, so pruning error is not propagated into the statistics.
    - `first_layer`: how the first layer is grouped. Its fan-in is the number of input features,
      often tiny for regressors (per-row 50 % of `(x, t)` leaves each neuron one input), so the
      default `PerLayer()` ranks it as one group (the sparsity is still exactly `int(n·s)`); pass the
      same scope as `scope` to group it like every other layer (Wanda's own choice); `None` leaves it dense
      (the realised overall sparsity is then lower than `s`).
    - `bias_correction`: add the mean of each pruned contribution to the bias (default `False`,
      faithful to Wanda; layers built without bias are never given one).
    - `prune_output`: whether the output layer is pruned (default `False`: Wanda leaves the head).
    - `throw`: raise a `jaxlump.CompressionError` if the result is not finite (default); `False` reports it in
      `info.result` instead.

    **Returns:** `(new_model, info)`: a same-type, same-shape model with exact zeros, and a
    `CompressionInfo` whose `weight_masks` are the keep masks.

    **Raises:** `ValueError` for missing, empty, non-finite or wrong-width `x_calib`, a sparsity
    outside `[0, 1)`, or no prunable layer; `TypeError` for an unsupported model, non-boolean flags, or a
    `scope`/`first_layer` other than `PerLayer()` or `PerRow()` (`first_layer` may also be `None`).

    ```python
    import equinox as eqx, jax.numpy as jnp, jax.random as jr
    from jaxlump.baselines import PerRow, wanda

    mlp = eqx.nn.MLP(4, 1, 8, 2, activation=jnp.tanh, key=jr.key(0))
    x = jr.normal(jr.key(1), (64, 4))
    pruned, info = wanda(mlp, x, 0.5, scope=PerRow())
    assert bool(jnp.all(jnp.sum(info.weight_masks[1], axis=1) == 4))   # 8 inputs per row, half kept
    ```

    Sun, Liu, Bair, Kolter, *A Simple and Effective Pruning Approach for Large Language Models*
    (ICLR 2024, arXiv 2306.11695); official code github.com/locuslab/wanda.
    """
    scope = check_scope(scope, (PerLayer, PerRow))
    first_layer = None if first_layer is None else check_scope(first_layer, (PerLayer, PerRow), "first_layer")
    sequential = check_flag(sequential, "sequential")
    bias_correction, throw = check_flag(bias_correction, "bias_correction"), check_flag(throw, "throw")
    chain, x, sparsity = prepare(model, x_calib, sparsity, needs_data=True)
    prunable = prunable_layers(chain, prune_output, skip_first=first_layer is None)
    dense_inputs = None if sequential else chain.forward(x)[1]
    inputs = x
    keep_masks, bias_updates = [], []
    for l, weight in enumerate(chain.weights):
        if not sequential:
            inputs = dense_inputs[l]
        keep = update = None
        if prunable[l]:
            layer_scope = first_layer if l == 0 else scope
            keep = select_lowest([wanda_scores(weight, inputs)], sparsity, layer_scope)[0]
            if bias_correction:
                update = jnp.where(keep, 0.0, weight) @ jnp.mean(inputs, axis=0)
        keep_masks.append(keep)
        bias_updates.append(update)
        if sequential:
            inputs = apply_masks(_single_layer(chain, l), [keep], [update])(inputs)
    new_chain = apply_masks(chain, keep_masks, bias_updates)
    return finish("wanda", model, chain, new_chain, keep_masks, sparsity, x, throw)


# fmt: off
register_compressor(Compressor("wanda", wanda, "sparsity", WEIGHT_SPARSITY + ", smallest |W|·‖X‖ first", structured=False, needs_data=True))  # noqa: E501
# fmt: on
