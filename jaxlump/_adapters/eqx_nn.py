"""`eqx.nn.MLP`, `eqx.nn.Sequential` and jaxlump's `LumpedMLP` ↔ the canonical `DenseChain`."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu

from .._network import ACTIVATIONS, DenseChain, identify_activation

_SEQUENTIAL_ACTIVATIONS = (eqx.nn.Lambda, eqx.nn.Identity)


class LumpedMLP(eqx.Module):
    """An MLP whose hidden layers may have different widths — what lumping an `eqx.nn.MLP` gives
    when its layers end up with unequal widths.

    Behaves like `eqx.nn.MLP`: `activation` after each hidden layer, `final_activation` after the
    last; called on one example of shape `(in_size,)`.

    **Arguments:**

    - `layers`: the `eqx.nn.Linear` layers, input first.
    - `activation`: the hidden activation (e.g. `jax.nn.tanh`).
    - `final_activation`: applied to the output (default identity).
    """

    layers: tuple[eqx.nn.Linear, ...]
    activation: Callable
    final_activation: Callable

    def __init__(self, layers, activation, final_activation=eqx.nn.Identity()):
        self.layers = tuple(layers)
        self.activation = activation
        self.final_activation = final_activation

    @property
    def widths(self) -> tuple[int, ...]:
        return (self.layers[0].in_features,) + tuple(layer.out_features for layer in self.layers)

    def __call__(self, x: jax.Array, *, key=None) -> jax.Array:
        del key
        for layer in self.layers[:-1]:
            x = self.activation(layer(x))
        return self.final_activation(self.layers[-1](x))


def _linear_params(layer: eqx.nn.Linear) -> tuple[jax.Array, jax.Array, bool]:
    if layer.in_features == "scalar" or layer.out_features == "scalar":
        raise TypeError("eqx.nn.Linear with in/out features 'scalar' is not supported; use width-1 layers.")
    bias = layer.bias if layer.use_bias else jnp.zeros(layer.out_features, layer.weight.dtype)
    return layer.weight, bias, layer.use_bias


def _make_linear(weight: jax.Array, bias: jax.Array, use_bias: bool) -> eqx.nn.Linear:
    # Built abstractly (no random initialisation to compute), then given the real parameters.
    layer = eqx.filter_eval_shape(
        eqx.nn.Linear, weight.shape[1], weight.shape[0], use_bias=use_bias, dtype=weight.dtype, key=jr.key(0)
    )
    layer = eqx.tree_at(lambda m: m.weight, layer, weight)
    return eqx.tree_at(lambda m: m.bias, layer, bias) if use_bias else layer


def _chain_from_linears(layers, activations) -> DenseChain:
    params = [_linear_params(layer) for layer in layers]
    return DenseChain(
        tuple(p[0] for p in params), tuple(p[1] for p in params), tuple(activations), tuple(p[2] for p in params)
    )


def _linears_from_chain(chain: DenseChain) -> list[eqx.nn.Linear]:
    return [_make_linear(w, b, u) for w, b, u in zip(chain.weights, chain.biases, chain.use_bias)]


def _mlp_layers(mlp: eqx.nn.MLP) -> list[eqx.nn.Linear]:
    if not mlp.scan or mlp.depth < 1:
        return list(mlp.layers)
    first, stacked, last = mlp.layers  # with depth 1 the stack is empty: no hidden-to-hidden layer
    hidden = [jtu.tree_map(lambda x, i=i: x[i] if eqx.is_array(x) else x, stacked) for i in range(mlp.depth - 1)]
    return [first, *hidden, last]


def mlp_to_chain(mlp: eqx.nn.MLP) -> DenseChain:
    if mlp.in_size == "scalar" or mlp.out_size == "scalar":
        raise TypeError("eqx.nn.MLP with in_size/out_size 'scalar' is not supported; use size 1 instead.")
    layers = _mlp_layers(mlp)
    hidden = identify_activation(mlp.activation, "eqx.nn.MLP.activation")
    # equinox's depth-0 MLP returns its single layer's output without applying final_activation.
    final = "identity" if mlp.depth == 0 else identify_activation(mlp.final_activation, "eqx.nn.MLP.final_activation")
    return _chain_from_linears(layers, [hidden] * (len(layers) - 1) + [final])


def chain_to_mlp(chain: DenseChain, like: eqx.nn.MLP):
    """An `eqx.nn.MLP` when all hidden widths are equal, else a `LumpedMLP`."""
    layers = _linears_from_chain(chain)
    hidden_widths = set(chain.widths[1:-1])
    if len(hidden_widths) > 1:
        return LumpedMLP(layers, like.activation, like.final_activation)
    width = hidden_widths.pop() if hidden_widths else like.width_size
    new = eqx.filter_eval_shape(
        eqx.nn.MLP,
        chain.widths[0],
        chain.widths[-1],
        width,
        like.depth,
        activation=like.activation,
        final_activation=like.final_activation,
        use_bias=like.use_bias,
        use_final_bias=like.use_final_bias,
        dtype=chain.weights[0].dtype,
        scan=like.scan,
        key=jr.key(0),
    )
    if like.scan and like.depth == 1:
        empty_stack = jtu.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), new.layers[1])  # equinox's (0, w, w) stack
        layers = [layers[0], empty_stack, layers[-1]]
    elif like.scan and like.depth >= 2:
        stacked = jtu.tree_map(lambda *xs: jnp.stack(xs) if eqx.is_array(xs[0]) else xs[0], *layers[1:-1])
        layers = [layers[0], stacked, layers[-1]]
    return eqx.tree_at(lambda m: m.layers, new, tuple(layers))


def sequential_to_chain(seq: eqx.nn.Sequential) -> DenseChain:
    linears, activations, after_linear = [], [], False
    for i, layer in enumerate(seq.layers):
        where = f"eqx.nn.Sequential.layers[{i}]"
        if isinstance(layer, eqx.nn.Linear):
            linears.append(layer)
            activations.append("identity")
            after_linear = True
        elif isinstance(layer, _SEQUENTIAL_ACTIVATIONS) or (callable(layer) and not isinstance(layer, eqx.Module)):
            if not after_linear:
                raise TypeError(f"{where}: an activation must directly follow an eqx.nn.Linear (one per Linear).")
            activations[-1] = identify_activation(layer, where)
            after_linear = False
        else:
            raise TypeError(
                f"{where}: layer type {type(layer).__name__} is not supported; jaxlump accepts eqx.nn.Linear "
                f"layers, each followed by at most one activation (eqx.nn.Lambda or eqx.nn.Identity of "
                f"{', '.join(ACTIVATIONS)})."
            )
    if not linears:
        raise TypeError("eqx.nn.Sequential: contains no eqx.nn.Linear layer.")
    return _chain_from_linears(linears, activations)


def chain_to_sequential(chain: DenseChain, like: eqx.nn.Sequential) -> eqx.nn.Sequential:
    new_linears = iter(_linears_from_chain(chain))
    return eqx.nn.Sequential(
        [next(new_linears) if isinstance(layer, eqx.nn.Linear) else layer for layer in like.layers]
    )


def lumped_to_chain(model: LumpedMLP) -> DenseChain:
    hidden = identify_activation(model.activation, "LumpedMLP.activation")
    final = identify_activation(model.final_activation, "LumpedMLP.final_activation")
    return _chain_from_linears(model.layers, [hidden] * (len(model.layers) - 1) + [final])


def chain_to_lumped(chain: DenseChain, like: LumpedMLP) -> LumpedMLP:
    return LumpedMLP(_linears_from_chain(chain), like.activation, like.final_activation)
