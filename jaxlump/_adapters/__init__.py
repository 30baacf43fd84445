"""Model ↔ `DenseChain` conversion for every supported model type.

`to_chain(model)` validates (supported layers and activations, finite parameters) and returns the
canonical chain; `from_chain(chain, like=model)` rebuilds the same kind of module as `model`.
"""

import equinox as eqx

from .._errors import check_finite
from .._network import DenseChain
from .eqx_nn import (
    LumpedMLP,
    chain_to_lumped,
    chain_to_mlp,
    chain_to_sequential,
    lumped_to_chain,
    mlp_to_chain,
    sequential_to_chain,
)

SUPPORTED = "eqx.nn.MLP, eqx.nn.Sequential of eqx.nn.Linear + activations, jaxlump.LumpedMLP, flax.nnx.Sequential"


def _is_nnx(model) -> bool:
    return type(model).__module__.startswith("flax.")


def to_chain(model, name: str = "model", *, require_finite: bool = True) -> DenseChain:
    """Canonical form of `model`; refuses unsupported modules and (unless told not to) NaN/inf parameters."""
    if isinstance(model, DenseChain):
        chain = model
    elif isinstance(model, eqx.nn.MLP):
        chain = mlp_to_chain(model)
    elif isinstance(model, eqx.nn.Sequential):
        chain = sequential_to_chain(model)
    elif isinstance(model, LumpedMLP):
        chain = lumped_to_chain(model)
    elif _is_nnx(model):
        from .flax_nnx import nnx_to_chain

        chain = nnx_to_chain(model)
    else:
        raise TypeError(f"`{name}` of type {type(model).__name__} is not supported; supported: {SUPPORTED}.")
    if not require_finite:
        return chain
    weights = tuple(check_finite(w, f"{name} layer {l} weight") for l, w in enumerate(chain.weights))
    biases = tuple(check_finite(b, f"{name} layer {l} bias") for l, b in enumerate(chain.biases))
    return DenseChain(weights, biases, chain.activations, chain.use_bias)


def from_chain(chain: DenseChain, like):
    """Rebuild `chain` as the same kind of model as `like` (a smaller MLP may become a `LumpedMLP`)."""
    if isinstance(like, DenseChain):
        return chain
    if isinstance(like, eqx.nn.MLP):
        return chain_to_mlp(chain, like)
    if isinstance(like, eqx.nn.Sequential):
        return chain_to_sequential(chain, like)
    if isinstance(like, LumpedMLP):
        return chain_to_lumped(chain, like)
    if _is_nnx(like):
        from .flax_nnx import chain_to_nnx

        return chain_to_nnx(chain, like)
    raise TypeError(f"cannot rebuild a model of type {type(like).__name__}; supported: {SUPPORTED}.")
