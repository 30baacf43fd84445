"""`eqx.nn.MLP`, `eqx.nn.Sequential` and jaxlump's `LumpedMLP` ↔ the canonical `DenseChain`."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu

from .activations import ACTIVATIONS, identify_activation
from .base import ModelKind
from .network import DenseChain

_SEQUENTIAL_ACTIVATIONS = (eqx.nn.Lambda, eqx.nn.Identity)


class LumpedMLP(eqx.Module):
    """An MLP whose hidden layers may have different widths: what lumping (or any jaxlump method) returns for
    an `eqx.nn.MLP` or a `LumpedMLP`, at every ε and whatever the resulting widths, so that the result type
    depends only on the input type.

    Behaves like `eqx.nn.MLP`: `activation` after each hidden layer, `final_activation` after the
    last; called on one example of shape `(in_size,)`. `width_size` is the tuple of hidden widths.

    **Arguments:**

    - `layers`: the `eqx.nn.Linear` layers, input first.
    - `activation`: the hidden activation (e.g. `jax.nn.tanh`).
    - `final_activation`: applied to the output (default identity).

    ```python
    import equinox as eqx, jax, jax.numpy as jnp, jax.random as jr
    import jaxlump

    keys = jr.split(jr.key(0), 3)
    layers = [eqx.nn.Linear(3, 5, key=keys[0]), eqx.nn.Linear(5, 2, key=keys[1]), eqx.nn.Linear(2, 1, key=keys[2])]
    model = jaxlump.LumpedMLP(layers, jax.nn.tanh)
    assert (model.in_size, model.width_size, model.out_size, model.depth) == (3, (5, 2), 1, 2)
    assert model(jnp.ones(3)).shape == (1,)
    ```
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
        """`(in_size, *width_size, out_size)`."""
        return (self.layers[0].in_features,) + tuple(layer.out_features for layer in self.layers)

    @property
    def in_size(self) -> int:
        return self.widths[0]

    @property
    def out_size(self) -> int:
        return self.widths[-1]

    @property
    def width_size(self) -> tuple[int, ...]:
        """The hidden widths, input side first (an `eqx.nn.MLP` has one `int` here; a `LumpedMLP` one per layer)."""
        return self.widths[1:-1]

    @property
    def depth(self) -> int:
        """The number of hidden layers, as `eqx.nn.MLP.depth`."""
        return len(self.layers) - 1

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


def make_linear(weight: jax.Array, bias: jax.Array, use_bias: bool) -> eqx.nn.Linear:
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
    return [make_linear(w, b, u) for w, b, u in zip(chain.weights, chain.biases, chain.use_bias)]


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


def _mlp_activations(mlp: eqx.nn.MLP) -> tuple[Callable, Callable]:
    # equinox's depth-0 MLP returns its single layer's output without applying final_activation.
    return mlp.activation, (eqx.nn.Identity() if mlp.depth == 0 else mlp.final_activation)


def chain_to_lumped(chain: DenseChain, like: eqx.nn.MLP | LumpedMLP) -> LumpedMLP:
    """A `LumpedMLP` holding `chain`, with `like`'s activation functions (whatever the widths)."""
    activation, final = (
        _mlp_activations(like) if isinstance(like, eqx.nn.MLP) else (like.activation, like.final_activation)
    )
    return LumpedMLP(_linears_from_chain(chain), activation, final)


def _mlp_shape(chain: DenseChain) -> tuple[set, set]:
    hidden_widths, hidden_bias = set(chain.widths[1:-1]), set(chain.use_bias[:-1])
    if len(hidden_widths) > 1 or len(hidden_bias) > 1:
        raise ValueError(
            f"an eqx.nn.MLP has equal hidden widths and bias flags; received widths {chain.widths} and use_bias "
            f"{chain.use_bias}."
        )
    return hidden_widths, hidden_bias


def build_mlp(chain: DenseChain, activation: Callable, final_activation: Callable, scan: bool, width_size: int):
    """An `eqx.nn.MLP` holding `chain` (equal hidden widths and bias flags required)."""
    hidden_widths, hidden_bias = _mlp_shape(chain)
    depth = chain.n_layers - 1
    new = eqx.filter_eval_shape(
        eqx.nn.MLP,
        chain.widths[0],
        chain.widths[-1],
        hidden_widths.pop() if hidden_widths else width_size,
        depth,
        activation=activation,
        final_activation=final_activation,
        use_bias=hidden_bias.pop() if hidden_bias else True,
        use_final_bias=chain.use_bias[-1],
        dtype=chain.weights[0].dtype,
        scan=scan,
        key=jr.key(0),
    )
    layers = _linears_from_chain(chain)
    if scan and depth == 1:
        empty_stack = jtu.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), new.layers[1])  # equinox's (0, w, w) stack
        layers = [layers[0], empty_stack, layers[-1]]
    elif scan and depth >= 2:
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


def _sequential_layout(seq: eqx.nn.Sequential, chain: DenseChain) -> list[str]:
    names, layout, current = iter(chain.activations), [], None
    for layer in seq.layers:  # `to_chain` checked that each activation directly follows its Linear
        current = next(names) if isinstance(layer, eqx.nn.Linear) else current
        layout.append("linear" if isinstance(layer, eqx.nn.Linear) else current)
    return layout


def sequential_from_chain(chain: DenseChain, layout: list[str] | None = None) -> eqx.nn.Sequential:
    """An `eqx.nn.Sequential` holding `chain`. `layout` names each entry (`"linear"` or an activation); by default
    every `Linear` is followed by its activation (`eqx.nn.Identity` for the identity)."""
    layout = [entry for act in chain.activations for entry in ("linear", act)] if layout is None else layout
    linears = iter(_linears_from_chain(chain))
    return eqx.nn.Sequential(
        [
            next(linears)
            if entry == "linear"
            else (eqx.nn.Identity() if entry == "identity" else eqx.nn.Lambda(ACTIVATIONS[entry].model_fn))
            for entry in layout
        ]
    )


def _build_sequential(options: dict, chain: DenseChain) -> eqx.nn.Sequential:
    return sequential_from_chain(chain, options["layout"])


def _hidden_and_final(chain: DenseChain) -> tuple[Callable, Callable]:
    hidden = ACTIVATIONS[chain.activations[0]].model_fn if chain.n_layers > 1 else eqx.nn.Identity()
    final = chain.activations[-1]
    return hidden, (eqx.nn.Identity() if final == "identity" else ACTIVATIONS[final].model_fn)


def _build_mlp(options: dict, chain: DenseChain) -> eqx.nn.MLP:
    _mlp_shape(chain)
    hidden, final = _hidden_and_final(chain)
    return build_mlp(chain, hidden, final, bool(options["scan"]), int(options["width_size"]))


def _build_lumped(options: dict, chain: DenseChain) -> LumpedMLP:
    return LumpedMLP(_linears_from_chain(chain), *_hidden_and_final(chain))


def _vmapped(model, x):
    return jax.vmap(model)(x)


EQX_KINDS = (
    ModelKind(
        "eqx.nn.MLP",
        lambda model: isinstance(model, eqx.nn.MLP),
        mlp_to_chain,
        chain_to_lumped,
        _vmapped,
        lambda model, chain: {"scan": model.scan, "width_size": model.width_size},
        _build_mlp,
        sequential_from_chain,
    ),
    ModelKind(
        "eqx.nn.Sequential",
        lambda model: isinstance(model, eqx.nn.Sequential),
        sequential_to_chain,
        chain_to_sequential,
        _vmapped,
        lambda model, chain: {"layout": _sequential_layout(model, chain)},
        _build_sequential,
        sequential_from_chain,
    ),
    ModelKind(
        "jaxlump.LumpedMLP",
        lambda model: isinstance(model, LumpedMLP),
        lumped_to_chain,
        chain_to_lumped,
        _vmapped,
        lambda model, chain: {},
        _build_lumped,
        sequential_from_chain,
    ),
)
