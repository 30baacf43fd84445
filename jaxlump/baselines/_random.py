"""Unstructured random pruning: a seeded uniform random mask (the floor every method must beat)."""

from typing import Any

import jax
import jax.random as jr
from jaxtyping import PRNGKeyArray

from .._custom_types import Calibration
from .._methods.base import AbstractScope, Global, PerLayer, PerRow, check_scope
from .._methods.registry import WEIGHT_SPARSITY, Compressor, register_compressor
from .._results.info import CompressionInfo
from .._sites.compress import over_sites
from ._masks import apply_masks, check_flag, finish, prepare, prunable_layers, select_lowest


def _check_key(key) -> jax.Array:
    if isinstance(key, jax.Array) and (
        jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) or (key.dtype == "uint32" and key.shape == (2,))
    ):
        return key
    raise TypeError(
        f"`key` must be a JAX PRNG key (`jax.random.key(seed)` or `jax.random.PRNGKey(seed)`); received {key!r}."
    )


@over_sites
def random(
    model: Any,
    x_calib: Calibration | None,
    sparsity: float,
    *,
    key: PRNGKeyArray,
    scope: AbstractScope = PerLayer(),
    prune_output: bool = False,
    throw: bool = True,
) -> tuple[Any, CompressionInfo]:
    """Prune a uniformly random subset of the weights, of exactly `int(n·s)` weights per group.

    Every prunable weight gets an independent score `U_ij ~ Uniform[0, 1)` from `key`; the lowest
    `int(n·s)` of each group are zeroed, so every subset of that size is equally likely. The same
    key gives the same mask; report the mean over several keys.

    **Arguments:**

    - `model`: an `eqx.nn.MLP`, `eqx.nn.Sequential`, `jaxlump.LumpedMLP` or `flax.nnx` model.
    - `x_calib`: not needed (may be `None`); when given it is validated as `(batch, in)` data.
    - `sparsity`: the fraction `s ∈ [0, 1)` of prunable weights to zero.
    - `key`: a JAX PRNG key; required and keyword-only, as in Equinox (there is no hidden default seed).
    - `scope`: `PerLayer()` (default: each prunable layer to `s`), `Global()` (a uniform subset of all
      prunable weights) or `PerRow()` (every output neuron keeps the same number of inputs).
    - `prune_output`: whether the output layer is prunable (default `False`, as every baseline).
    - `throw`: raise a `jaxlump.CompressionError` if the result is not finite (default); `False` reports it in
      `info.result` instead.

    **Returns:** `(new_model, info)`: a same-type, same-shape model with exact zeros, and a
    `CompressionInfo` whose `weight_masks` are the keep masks.

    **Raises:** `TypeError` for a missing or malformed `key` (e.g. `None`) or an unsupported model; `ValueError`
    for a sparsity outside `[0, 1)`, a `scope` that is not a scope object (`TypeError`) or malformed `x_calib`.

    ```python
    import equinox as eqx, jax.numpy as jnp, jax.random as jr
    from jaxlump.baselines import random

    mlp = eqx.nn.MLP(3, 2, 16, 2, key=jr.key(0))
    pruned, info = random(mlp, None, 0.25, key=jr.key(1))
    assert int(jnp.sum(~info.weight_masks[1])) == 64      # int(256 · 0.25)
    ```

    The random baseline of Ballini et al., *Elimination-compensation pruning for fully-connected
    neural networks* (arXiv 2602.20467, 2026), and of most pruning studies.
    """
    key, throw = _check_key(key), check_flag(throw, "throw")
    chain, x, sparsity = prepare(model, x_calib, sparsity, needs_data=False)
    prunable = prunable_layers(chain, prune_output)
    keys = jr.split(key, chain.n_layers)
    scores = [jr.uniform(k, w.shape) if p else None for k, w, p in zip(keys, chain.weights, prunable, strict=True)]
    keep = select_lowest(scores, sparsity, check_scope(scope, (PerLayer, Global, PerRow)))
    new_chain = apply_masks(chain, keep)
    return finish("random", model, chain, new_chain, keep, sparsity, x, throw)


# fmt: off
register_compressor(Compressor("random", random, "sparsity", WEIGHT_SPARSITY + ", uniformly at random (pass `key=`)", structured=False, needs_data=False))  # noqa: E501
# fmt: on
