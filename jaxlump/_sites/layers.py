"""The layers a site is made of, and the model families whose module trees jaxlump walks: two open registries.

A **layer type** says how to read a layer's weights in canonical form (`(out, in)` and a bias) and how to build a
smaller layer of the same class; a **family** says how to list a model's layers with their paths, how to apply the
model to a batch and how to put rebuilt layers back (Equinox: a new pytree; Flax NNX: a copy, then attribute
assignment). Register a new one with `register_layer_type` / `register_family`.
"""

import dataclasses
import inspect
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .._model.eqx_nn import make_linear
from .._model.network import check_parameter_dtype
from .norms import is_norm

Path = tuple  # keys from the model's root: attribute names (str) and sequence indices (int)


def node_at(model, path: Path):
    """The node of `model` at `path`."""
    for key in path:
        model = model[key] if isinstance(key, int) else getattr(model, key)
    return model


def path_name(path: Path) -> str:
    """`("blocks", 0, "ffn", "up")` → `"blocks[0].ffn.up"`."""
    text = ""
    for key in path:
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else str(key))
    return text or "<model>"


@dataclasses.dataclass(frozen=True)
class LayerType:
    """One kind of layer a site's producer or consumer can be.

    - `name`: shown in listings and errors (`"eqx.nn.Linear"`).
    - `matches(layer)`: whether `layer` is of this type.
    - `read(layer)`: `(weight (out, in), bias (out,), use_bias)`, the bias zeros when the layer has none.
    - `rebuild(layer, weight, bias)`: a new layer of `layer`'s class and settings with these parameters.
    - `why_not(layer)`: why this layer cannot take part in a site (`None` when it can).
    - `flops(layer, shape)`: the dense FLOPs of one call on an input of `shape` (`None`: one example); default
      `2·in·out (+ out with a bias)` per row, every axis of `shape` but the last counting rows.
    - `channels`: its units are channels: `read` gives the weight as `(out, in, *kernel)` and the layer maps
      `(in, *spatial)` to `(out, *spatial')` (a convolution); otherwise `(out, in)` on the last axis.
    - `channels_last`: for a convolution, whether its channel axis is the last (`(..., *spatial, in)`, Flax) rather
      than the one before the spatial axes (Equinox).
    - `window(layer)`: for a convolution, how it reads its input: `(kernel_size, stride, padding, dilation,
      input_dilation)` as `jax.lax.conv_general_dilated_patches` takes them (padding as pairs or `"SAME"`/`"VALID"`).
    """

    name: str
    matches: Callable
    read: Callable
    rebuild: Callable
    why_not: Callable = lambda layer: None
    flops: Callable = None
    channels: bool = False
    channels_last: bool = False
    window: Callable = None

    def __post_init__(self):
        if self.flops is None:
            object.__setattr__(self, "flops", _dense_flops)


@dataclasses.dataclass(frozen=True)
class Family:
    """One family of models: how to find its layers, apply it, copy it and put layers back.

    - `name`: shown in listings (`"Equinox"`).
    - `matches(model)`: whether `model` belongs to the family.
    - `layers(model)`: `[(path, layer)]` for every layer of a registered `LayerType`, in a fixed order.
    - `replace(model, {path: layer})`: a model with these layers replaced; `model` itself is not changed.
    - `arrays(model)`: the model's parameter arrays (what its size is counted in).
    - `per_example`: whether users call the model on one example and `jax.vmap` it over a batch (Equinox), rather
      than on the batch itself (NNX).
    - `state(model)`: the pytree whose leaves `jaxlump.save` stores (Equinox: the model itself; NNX: `nnx.state`).
    - `with_state(model, state)`: a model like `model` holding `state`'s leaves; `model` itself is not changed.
    - `norms(model)`: `[(path, norm)]` for every per-channel normalisation of a registered `NormType` (folded into
      channel sites, `jaxlump._sites.norms`); `replace` must accept them too. Default: none.
    """

    name: str
    matches: Callable
    layers: Callable
    replace: Callable
    arrays: Callable
    per_example: bool
    state: Callable = lambda model: model
    with_state: Callable = lambda model, state: state
    norms: Callable = lambda model: []

    def apply(self, model, x):
        """The model on a batch `x` (one leading batch axis), as its users call it."""
        return jax.vmap(model)(x) if self.per_example else model(x)


def _dense_flops(layer, shape) -> int:
    weight, _, use_bias = layer_type_of(layer).read(layer)
    n_out, n_in = np.shape(weight)
    rows = 1 if shape is None else int(np.prod(shape[:-1], dtype=int))
    return rows * (2 * n_out * n_in + (n_out if use_bias else 0))


LAYER_TYPES: list[LayerType] = []
FAMILIES: list[Family] = []


def register_layer_type(layer_type: LayerType) -> LayerType:
    """Add a layer type that sites can be made of (checked before the built-in ones); returns it. See the
    documentation's "Extending jaxlump" page for a worked example.

    **Raises:** `TypeError` for anything but a `jaxlump.LayerType`.
    """
    if not isinstance(layer_type, LayerType):
        raise TypeError(f"`layer_type` must be a jaxlump.LayerType; received {type(layer_type).__name__}.")
    LAYER_TYPES.insert(0, layer_type)
    return layer_type


def register_family(family: Family) -> Family:
    """Add a model family (checked before the built-in ones); returns it.

    **Raises:** `TypeError` for anything but a `jaxlump.Family`.
    """
    if not isinstance(family, Family):
        raise TypeError(f"`family` must be a jaxlump.Family; received {type(family).__name__}.")
    FAMILIES.insert(0, family)
    return family


def layer_type_of(layer) -> LayerType | None:
    return next((t for t in LAYER_TYPES if t.matches(layer)), None)


def is_layer(node) -> bool:
    return layer_type_of(node) is not None


def family_of(model, name: str = "model") -> Family:
    family = next((f for f in FAMILIES if f.matches(model)), None)
    if family is None:
        raise TypeError(
            f"`{name}` of type {type(model).__name__} is not supported: jaxlump compresses Equinox modules "
            f"(`equinox.Module`) and Flax NNX modules (`flax.nnx.Module`); registered families: "
            f"{', '.join(f.name for f in FAMILIES)}."
        )
    return family


# Equinox ----------------------------------------------------------------------------------------------------


def _eqx_read(layer: eqx.nn.Linear):
    check_parameter_dtype(layer.weight, "weight")
    bias = layer.bias if layer.use_bias else jnp.zeros(layer.out_features, layer.weight.dtype)
    return layer.weight, bias, layer.use_bias


def _eqx_rebuild(layer: eqx.nn.Linear, weight, bias) -> eqx.nn.Linear:
    return make_linear(weight, bias, layer.use_bias)


def _eqx_why_not(layer: eqx.nn.Linear) -> str | None:
    if layer.in_features == "scalar" or layer.out_features == "scalar":
        return "it has in/out features 'scalar'"
    if type(layer) is not eqx.nn.Linear:
        return f"it is a subclass ({type(layer).__name__}) whose computation jaxlump cannot assume"
    return None


def _keys(path) -> Path:
    out = []
    for key in path:
        if isinstance(key, jax.tree_util.GetAttrKey):
            out.append(key.name)
        elif isinstance(key, jax.tree_util.SequenceKey):
            out.append(key.idx)
        elif isinstance(key, jax.tree_util.DictKey):
            out.append(key.key)
        else:
            out.append(str(key))
    return tuple(out)


def _eqx_nodes(model, kind: Callable) -> list:
    leaves = jax.tree_util.tree_flatten_with_path(model, is_leaf=kind)[0]
    return [(_keys(path), leaf) for path, leaf in leaves if kind(leaf)]


def _replaceable(node) -> bool:
    return is_layer(node) or is_norm(node)


def _eqx_arrays(model) -> list:
    return [leaf for leaf in jax.tree_util.tree_leaves(model) if eqx.is_inexact_array(leaf)]


def _eqx_replace(model, replacements: dict):
    if not replacements:
        return model
    leaves, treedef = jax.tree_util.tree_flatten_with_path(model, is_leaf=_replaceable)
    new = [replacements.get(_keys(path), leaf) if _replaceable(leaf) else leaf for path, leaf in leaves]
    return jax.tree_util.tree_unflatten(treedef, new)


register_layer_type(
    LayerType("eqx.nn.Linear", lambda m: isinstance(m, eqx.nn.Linear), _eqx_read, _eqx_rebuild, _eqx_why_not)
)


def _conv_read(layer: eqx.nn.Conv):
    check_parameter_dtype(layer.weight, "weight")
    bias = layer.bias.reshape(layer.out_channels) if layer.use_bias else jnp.zeros(layer.out_channels)
    return layer.weight, bias.astype(layer.weight.dtype), layer.use_bias


def _conv_rebuild(layer: eqx.nn.Conv, weight, bias) -> eqx.nn.Conv:
    settings = dict(
        in_channels=int(weight.shape[1]),
        out_channels=int(weight.shape[0]),
        kernel_size=layer.kernel_size,
        stride=layer.stride,
        padding=layer.padding,
        dilation=layer.dilation,
        groups=layer.groups,
        use_bias=layer.use_bias,
        padding_mode=layer.padding_mode,
        dtype=weight.dtype,
        key=jr.key(0),
    )
    if type(layer) is eqx.nn.Conv:
        settings["num_spatial_dims"] = layer.num_spatial_dims
    new = eqx.filter_eval_shape(type(layer), **settings)  # built abstractly, then given the real parameters
    new = eqx.tree_at(lambda m: m.weight, new, weight)
    if not layer.use_bias:
        return new
    return eqx.tree_at(lambda m: m.bias, new, bias.reshape((-1,) + (1,) * layer.num_spatial_dims))


_CONV_CLASSES = (eqx.nn.Conv, eqx.nn.Conv1d, eqx.nn.Conv2d, eqx.nn.Conv3d)


def _conv_why_not(layer: eqx.nn.Conv) -> str | None:
    if type(layer) not in _CONV_CLASSES:
        return f"it is a subclass ({type(layer).__name__}) whose computation jaxlump cannot assume"
    if layer.groups != 1:
        return f"it is a grouped convolution (groups={layer.groups})"
    if layer.padding_mode != "ZEROS":
        return f"its padding mode is {layer.padding_mode!r} (only zero padding is supported)"
    return None


def _conv_flops(layer, shape) -> int:
    """A convolution's FLOPs on an input of `shape`: `2·in·out·∏kernel (+ out with a bias)` per output position."""
    if shape is None:
        raise ValueError("`x`: the FLOPs of a convolution depend on the size of its input; pass an example batch `x`.")
    layer_type = layer_type_of(layer)
    weight, _, use_bias = layer_type.read(layer)
    n_out, n_in, *kernel = np.shape(weight)
    example = jax.ShapeDtypeStruct(tuple(shape[-len(kernel) - 1 :]), weight.dtype)
    out = jax.eval_shape(layer, example).shape
    positions = int(np.prod(out[:-1] if layer_type.channels_last else out[1:], dtype=int))
    calls = int(np.prod(shape[: -len(kernel) - 1], dtype=int))
    return calls * positions * (2 * n_out * n_in * int(np.prod(kernel)) + (n_out if use_bias else 0))


def _conv_window(layer: eqx.nn.Conv) -> tuple:
    padding = tuple(map(tuple, layer.padding))
    return layer.kernel_size, layer.stride, padding, layer.dilation, (1,) * layer.num_spatial_dims


register_layer_type(
    LayerType(
        "eqx.nn.Conv",
        lambda m: isinstance(m, eqx.nn.Conv),
        _conv_read,
        _conv_rebuild,
        _conv_why_not,
        flops=_conv_flops,
        channels=True,
        window=_conv_window,
    )
)
register_family(
    Family(
        "Equinox",
        lambda m: isinstance(m, eqx.Module),
        lambda model: _eqx_nodes(model, is_layer),
        _eqx_replace,
        _eqx_arrays,
        per_example=True,
        norms=lambda model: _eqx_nodes(model, is_norm),
    )
)


# Flax NNX (imported only when an NNX model is met) -------------------------------------------------------------


def _is_nnx(model) -> bool:
    return any(c.__module__.startswith("flax.nnx") and c.__name__ == "Module" for c in type(model).__mro__)


def _nnx_nodes(model, kind: Callable) -> list:
    from flax import nnx

    return [(tuple(path), node) for path, node in nnx.iter_graph(model) if kind(node)]


def _nnx_arrays(model) -> list:
    from flax import nnx

    return jax.tree_util.tree_leaves(nnx.state(model, nnx.Param))


def _nnx_replace(model, replacements: dict):
    from flax import nnx

    copy = nnx.clone(model)
    for path, layer in replacements.items():
        parent = node_at(copy, path[:-1])
        if isinstance(path[-1], int):
            parent[path[-1]] = layer
        else:
            setattr(parent, path[-1], layer)
    return copy


def _nnx_read(layer):
    kernel = layer.kernel[...]
    check_parameter_dtype(kernel, "kernel")
    bias = layer.bias[...] if layer.use_bias else jnp.zeros(kernel.shape[1], kernel.dtype)
    return kernel.T, bias, layer.use_bias


def _nnx_rebuild(layer, weight, bias):
    from .._model.flax_nnx import new_linear

    return new_linear(layer, weight, bias, layer.use_bias)


def _is_nnx_linear(layer) -> bool:
    cls = type(layer)
    return cls.__module__.startswith("flax.nnx") and cls.__name__ == "Linear"


def _nnx_state(model):
    from flax import nnx

    return nnx.state(model)


def _nnx_with_state(model, state):
    from flax import nnx

    copy = nnx.clone(model)
    nnx.update(copy, state)
    return copy


register_layer_type(LayerType("flax.nnx.Linear", _is_nnx_linear, _nnx_read, _nnx_rebuild))


def _is_nnx_conv(layer) -> bool:
    cls = type(layer)
    return cls.__module__.startswith("flax.nnx") and cls.__name__ == "Conv"


def _nnx_conv_read(layer):
    kernel = layer.kernel[...]  # (*kernel, in, out)
    check_parameter_dtype(kernel, "kernel")
    spatial = kernel.ndim - 2
    bias = layer.bias[...] if layer.use_bias else jnp.zeros(kernel.shape[-1], kernel.dtype)
    return jnp.transpose(kernel, (spatial + 1, spatial, *range(spatial))), bias, layer.use_bias


def _nnx_conv_rebuild(layer, weight, bias):
    from flax import nnx

    spatial = weight.ndim - 2
    kernel = jnp.transpose(weight, (*range(2, spatial + 2), 1, 0))
    accepted = inspect.signature(nnx.Conv.__init__).parameters
    copied = (
        "strides padding input_dilation kernel_dilation feature_group_count mask dtype precision "
        "conv_general_dilated promote_dtype preferred_element_type"
    ).split()
    settings = {name: getattr(layer, name) for name in copied if name in accepted and hasattr(layer, name)}
    return nnx.Conv(
        int(weight.shape[1]),
        int(weight.shape[0]),
        tuple(kernel.shape[:spatial]),
        use_bias=layer.use_bias,
        param_dtype=weight.dtype,
        kernel_init=lambda *_: kernel,
        bias_init=lambda *_: bias,
        rngs=nnx.Rngs(0),
        **settings,
    )


_LAX_PADDINGS = ("SAME", "SAME_LOWER", "VALID")


def _nnx_conv_why_not(layer) -> str | None:
    if layer.feature_group_count != 1:
        return f"it is a grouped convolution (feature_group_count={layer.feature_group_count})"
    if layer.mask is not None:
        return "its kernel is masked (`mask`)"
    if isinstance(layer.padding, str) and layer.padding.upper() not in _LAX_PADDINGS:
        return f"its padding is {layer.padding!r} (supported: zero padding, 'SAME', 'VALID')"
    return None


def _per_axis(value, spatial: int) -> tuple:
    """An NNX convolution setting (an int, a sequence, or None for 1) as one int per spatial axis."""
    if value is None:
        return (1,) * spatial
    return (int(value),) * spatial if isinstance(value, int) else tuple(int(v) for v in value)


def _nnx_conv_window(layer) -> tuple:
    spatial = layer.kernel[...].ndim - 2
    padding = layer.padding
    if isinstance(padding, str):
        padding = padding.upper()
    elif isinstance(padding, int):
        padding = ((padding, padding),) * spatial
    else:
        padding = tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)
    return (
        _per_axis(layer.kernel_size, spatial),
        _per_axis(layer.strides, spatial),
        padding,
        _per_axis(layer.kernel_dilation, spatial),
        _per_axis(layer.input_dilation, spatial),
    )


register_layer_type(
    LayerType(
        "flax.nnx.Conv",
        _is_nnx_conv,
        _nnx_conv_read,
        _nnx_conv_rebuild,
        _nnx_conv_why_not,
        flops=_conv_flops,
        channels=True,
        channels_last=True,
        window=_nnx_conv_window,
    )
)
register_family(
    Family(
        "Flax NNX",
        _is_nnx,
        lambda model: _nnx_nodes(model, is_layer),
        _nnx_replace,
        _nnx_arrays,
        per_example=False,
        state=_nnx_state,
        with_state=_nnx_with_state,
        norms=lambda model: _nnx_nodes(model, is_norm),
    )
)
