"""Flax NNX `nnx.Sequential` of `nnx.Linear` + activation functions, and `nnx.Linear` alone ↔ `DenseChain`.

Flax is imported here only; `jaxlump._model` loads this module when it meets a Flax model.
NNX stores `kernel` as `(in, out)` and computes `x @ kernel + bias`, so the canonical weight is `kernel.T`.
"""

import inspect
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from .activations import ACTIVATIONS, identify_activation
from .network import DenseChain

SUPPORTED_NNX = (
    "flax.nnx.Linear, or flax.nnx.Sequential of flax.nnx.Linear layers each followed by at most one activation "
    f"function (a plain callable such as nnx.tanh or jax.nn.relu computing one of: {', '.join(ACTIVATIONS)})"
)
# Settings of the original `nnx.Linear` that a rebuilt layer keeps (those this Flax version accepts).
_COPIED_SETTINGS = ("dtype", "precision", "dot_general", "promote_dtype", "preferred_element_type")


def _walk(model: nnx.Sequential | nnx.Linear) -> tuple[list[int], list[nnx.Linear], list[str]]:
    """Positions of the `nnx.Linear` layers, the layers, and the activation name after each one."""
    if isinstance(model, nnx.Linear):
        return [0], [model], ["identity"]
    if not isinstance(model, nnx.Sequential):
        raise TypeError(f"a Flax model of type {type(model).__name__} is not supported; supported: {SUPPORTED_NNX}.")
    positions, linears, activations, after_linear = [], [], [], False
    for i, layer in enumerate(model.layers):
        where = f"flax.nnx.Sequential.layers[{i}]"
        if isinstance(layer, nnx.Linear):
            positions.append(i)
            linears.append(layer)
            activations.append("identity")
            after_linear = True
        elif callable(layer) and not isinstance(layer, nnx.Module):
            if not after_linear:
                raise TypeError(f"{where}: an activation must directly follow a flax.nnx.Linear (one per Linear).")
            activations[-1] = identify_activation(layer, where)
            after_linear = False
        else:
            raise TypeError(f"{where}: layer type {type(layer).__name__} is not supported; supported: {SUPPORTED_NNX}.")
    if not linears:
        raise TypeError("flax.nnx.Sequential: contains no flax.nnx.Linear layer.")
    return positions, linears, activations


def nnx_to_chain(model: nnx.Sequential | nnx.Linear) -> DenseChain:
    """Canonical chain of an NNX model: `W = kernel.T`, `b = bias` (zeros when `use_bias=False`).

    **Arguments:**

    - `model`: an `nnx.Linear`, or an `nnx.Sequential` of `nnx.Linear` layers each followed by at
        most one activation function.

    **Returns:** a `DenseChain` sharing the model's parameter values (nothing is mutated).

    **Raises:** `TypeError` naming the index and type of an unsupported layer or activation.

    ```python
    import jax.numpy as jnp
    from flax import nnx
    from jaxlump._model.flax_nnx import nnx_to_chain

    model = nnx.Sequential(nnx.Linear(3, 8, rngs=nnx.Rngs(0)), nnx.tanh, nnx.Linear(8, 2, rngs=nnx.Rngs(1)))
    chain = nnx_to_chain(model)
    assert chain.widths == (3, 8, 2) and chain.activations == ("tanh", "identity")
    assert jnp.allclose(chain(jnp.ones(3)), model(jnp.ones(3)), atol=1e-6)
    ```
    """
    _, linears, activations = _walk(model)
    weights, biases = [], []
    for layer in linears:
        kernel = layer.kernel[...]
        weights.append(kernel.T)
        biases.append(layer.bias[...] if layer.use_bias else jnp.zeros(kernel.shape[1], kernel.dtype))
    return DenseChain(tuple(weights), tuple(biases), tuple(activations), tuple(layer.use_bias for layer in linears))


def new_linear(template: nnx.Linear | None, weight: jax.Array, bias: jax.Array, use_bias: bool) -> nnx.Linear:
    accepted = inspect.signature(nnx.Linear.__init__).parameters
    settings = {
        name: getattr(template, name) for name in _COPIED_SETTINGS if name in accepted and hasattr(template, name)
    }
    return nnx.Linear(
        weight.shape[1],
        weight.shape[0],
        use_bias=use_bias,
        param_dtype=weight.dtype,
        kernel_init=lambda *_: weight.T,
        bias_init=lambda *_: bias,
        rngs=nnx.Rngs(0),
        **settings,
    )


def chain_to_nnx(chain: DenseChain, like: nnx.Sequential | nnx.Linear) -> nnx.Sequential | nnx.Linear:
    """A new NNX model of the same kind as `like`, holding `chain`'s weights (widths may differ).

    Every `nnx.Linear` is built afresh (`like` is not modified) with the chain's widths, dtype and
    per-layer `use_bias`, keeping `like`'s computation settings (`dtype`, `precision`, ...); the
    activation functions are `like`'s own.

    **Arguments:**

    - `chain`: the canonical chain to convert, with as many layers and the same activations as `like`.
    - `like`: the NNX model `chain` came from.

    **Returns:** an `nnx.Sequential` (or `nnx.Linear`, when `like` is one).

    **Raises:** `ValueError` when the number of layers or the activations differ from `like`'s;
    `TypeError` when `like` is not a supported NNX model.

    ```python
    import jax.numpy as jnp
    from flax import nnx
    from jaxlump._model.flax_nnx import chain_to_nnx, nnx_to_chain

    model = nnx.Sequential(nnx.Linear(3, 8, rngs=nnx.Rngs(0)), nnx.relu, nnx.Linear(8, 2, rngs=nnx.Rngs(1)))
    rebuilt = chain_to_nnx(nnx_to_chain(model), like=model)
    assert rebuilt is not model and jnp.array_equal(rebuilt(jnp.ones(3)), model(jnp.ones(3)))
    ```
    """
    positions, linears, activations = _walk(like)
    if chain.n_layers != len(linears) or chain.activations != tuple(activations):
        raise ValueError(
            f"`chain` has {chain.n_layers} layers with activations {chain.activations}; the NNX model `like` has "
            f"{len(linears)} flax.nnx.Linear layers with activations {tuple(activations)}."
        )
    new_linears = [
        new_linear(template, w, b, u)
        for template, w, b, u in zip(linears, chain.weights, chain.biases, chain.use_bias, strict=True)
    ]
    if isinstance(like, nnx.Linear):
        return new_linears[0]
    replacement = dict(zip(positions, new_linears, strict=True))
    return nnx.Sequential(*(replacement.get(i, layer) for i, layer in enumerate(like.layers)))


def nnx_describe(model: nnx.Sequential | nnx.Linear, chain: DenseChain | None = None) -> dict:
    """What `jaxlump.save` stores to rebuild `model`: `{"layout": None}` for a bare `nnx.Linear`, otherwise one
    entry per `nnx.Sequential` element, `"linear"` or the activation's name."""
    del chain
    if isinstance(model, nnx.Linear):
        return {"layout": None}
    _, _, activations = _walk(model)
    names, layout, current = iter(activations), [], None
    for layer in model.layers:  # `_walk` checked that each activation directly follows its Linear
        current = next(names) if isinstance(layer, nnx.Linear) else current
        layout.append("linear" if isinstance(layer, nnx.Linear) else current)
    return {"layout": layout}


def nnx_build(options: dict, chain: DenseChain) -> nnx.Sequential | nnx.Linear:
    """An NNX model of the stored layout holding `chain` (inverse of `nnx_describe`)."""
    linears = [new_linear(None, w, b, u) for w, b, u in zip(chain.weights, chain.biases, chain.use_bias, strict=True)]
    layout = options["layout"]
    if layout is None:
        if len(linears) != 1:
            raise ValueError(f"a flax.nnx.Linear has one layer; the record has {len(linears)}.")
        return linears[0]
    linear_iter = iter(linears)
    layers: list[Callable] = [
        next(linear_iter) if entry == "linear" else ACTIVATIONS[entry].model_fn for entry in layout
    ]
    return nnx.Sequential(*layers)


def nnx_sequential(chain: DenseChain) -> nnx.Sequential:
    """An `nnx.Sequential` holding `chain`: each `nnx.Linear` followed by its activation (none for the identity)."""
    layout = [entry for act in chain.activations for entry in ("linear", act) if entry != "identity"]
    return nnx_build({"layout": layout}, chain)
