"""Flax NNX attention as a head site: `nnx.LinearGeneral` as a layer type, `nnx.MultiHeadAttention` as an attention
type, both registered when `jaxlump._sites` is imported (flax is imported only inside the functions).

`nnx.MultiHeadAttention` projects with `nnx.LinearGeneral`: the query, key and value kernels are `(in, heads,
head_dim)` and give `(..., T, heads, head_dim)`; the output kernel is `(heads, head_dim, out)` and contracts the last
two axes. In canonical form a `LinearGeneral` is the `Linear` that acts on its flattened features: its weight is the
kernel reshaped to `(prod(in_features), prod(out_features))` and transposed, so the query's rows and the output
projection's columns come in head order, `head_dim` per head, as a head site needs. A smaller layer keeps the trailing
feature axes (`head_dim`) and changes the first (the heads); only these layers are registered (see
`_is_linear_general`).
"""

import inspect

import jax.numpy as jnp
import numpy as np

from .._model.network import check_parameter_dtype
from .heads import AttentionType, register_attention_type
from .layers import LayerType, _nnx_replace, register_layer_type

# Settings of the original `nnx.LinearGeneral` that a rebuilt one keeps (those this Flax version accepts).
_COPIED_SETTINGS = ("dtype", "precision", "promote_dtype", "dot_general", "dot_general_cls", "preferred_element_type")


def _is_flax_class(cls: type, name: str) -> bool:
    return cls.__module__.startswith("flax.nnx") and cls.__name__ == name


def _is_flax(obj, name: str) -> bool:
    """Whether `obj` is an instance of Flax NNX's class `name` (or of a subclass), without importing flax."""
    return any(_is_flax_class(c, name) for c in type(obj).__mro__)


def _is_linear_general(layer) -> bool:
    """An `nnx.LinearGeneral` with a canonical `(out, in)` form: no batch axes (a kernel per batch index has none)
    and contracting the trailing axes of its input in order, so that its input rows are `(..., prod(in_features))`.
    Others are not layers jaxlump reads (they are left as they are, as before the type was registered)."""
    if not _is_flax(layer, "LinearGeneral"):
        return False
    return not layer.batch_axis and tuple(layer.axis) == tuple(range(-len(layer.in_features), 0))


def _linear_general_read(layer):
    kernel = layer.kernel[...]
    check_parameter_dtype(kernel, "kernel")
    n_in, n_out = int(np.prod(layer.in_features)), int(np.prod(layer.out_features))
    bias = layer.bias[...].reshape(n_out) if layer.use_bias else jnp.zeros(n_out, kernel.dtype)
    return kernel.reshape(n_in, n_out).T, bias, layer.use_bias


def _resized(features: tuple, size: int) -> tuple:
    """`features` holding `size` values: their first axis changed (`(heads, head_dim)` → `(k, head_dim)`), or one axis
    of `size` when it is not a multiple of the trailing ones (a neuron site between two such layers: the values in
    between are only acted on elementwise, so both sides flattened alike compute the same)."""
    rest = int(np.prod(features[1:]))
    return (size // rest, *features[1:]) if size % rest == 0 else (size,)


def _linear_general_rebuild(layer, weight, bias):
    from flax import nnx

    n_out, n_in = weight.shape
    accepted = inspect.signature(nnx.LinearGeneral.__init__).parameters
    settings = {name: getattr(layer, name) for name in _COPIED_SETTINGS if name in accepted and hasattr(layer, name)}
    kernel = weight.T  # LinearGeneral's kernel_init is asked for `(prod(in), prod(out))` and reshapes it
    in_features = _resized(layer.in_features, int(n_in))
    return nnx.LinearGeneral(
        in_features,
        _resized(layer.out_features, int(n_out)),
        axis=tuple(range(-len(in_features), 0)),
        use_bias=layer.use_bias,
        param_dtype=weight.dtype,
        kernel_init=lambda *_: kernel,
        bias_init=lambda *_: bias,
        rngs=nnx.Rngs(0),
        **settings,
    )


def _linear_general_why_not(layer) -> str | None:
    if not _is_flax_class(type(layer), "LinearGeneral"):
        return f"it is a subclass ({type(layer).__name__}) whose computation jaxlump cannot assume"
    return None


def _linear_general_flops(layer, shape) -> int:
    """`2·in·out (+ out with a bias)` per row; the rows are every axis of `shape` but the contracted ones."""
    n_in, n_out = int(np.prod(layer.in_features)), int(np.prod(layer.out_features))
    rows = 1 if shape is None else int(np.prod(shape[: len(shape) - len(layer.in_features)], dtype=int))
    return rows * (2 * n_out * n_in + (n_out if layer.use_bias else 0))


register_layer_type(
    LayerType(
        "flax.nnx.LinearGeneral",
        _is_linear_general,
        _linear_general_read,
        _linear_general_rebuild,
        _linear_general_why_not,
        flops=_linear_general_flops,
    )
)


def _attention_heads(module) -> tuple[int, int, int, int]:
    kv_heads = getattr(module, "num_kv_heads", module.num_heads)  # older flax versions have no grouped queries
    return module.num_heads, kv_heads, module.head_dim, module.head_dim


def _attention_rebuild(module, projections, kv_heads: int):
    """A copy of `module` (every setting kept) with `kv_heads` KV heads, as many query heads per KV head as before
    and these four projections."""
    from flax import nnx

    _, before, head_dim, _ = _attention_heads(module)
    fresh = nnx.clone(module)
    fresh.num_heads = kv_heads * (module.num_heads // before)
    if hasattr(module, "num_kv_heads"):
        fresh.num_kv_heads = kv_heads
    fresh.qkv_features = fresh.num_heads * head_dim
    fresh.query, fresh.key, fresh.value, fresh.out = projections
    return fresh


def _attention_put(model, path, module):
    return module if not path else _nnx_replace(model, {path: module})


def _attention_why_not(module) -> str | None:
    from flax import nnx

    if not _is_flax_class(type(module), "MultiHeadAttention"):
        return f"it is a subclass ({type(module).__name__}) whose computation jaxlump cannot assume"
    if module.attention_fn is not nnx.dot_product_attention:
        function = module.attention_fn
        name = getattr(function, "__qualname__", None) or f"a {type(function).__name__} object"
        return (
            f"its attention_fn ({name}) is not flax.nnx.dot_product_attention, so jaxlump cannot assume that each "
            "head attends on its own"
        )
    if module.decode or getattr(module, "cached_key", None) is not None:
        return (
            "it holds an autoregressive cache (decode=True, init_cache) shaped by its number of heads; compress the "
            "model built with decode=False and no cache"
        )
    return None


register_attention_type(
    AttentionType(
        "flax.nnx.MultiHeadAttention",
        lambda module: _is_flax(module, "MultiHeadAttention"),
        ("query", "key", "value", "out"),
        _attention_heads,
        _attention_rebuild,
        put=_attention_put,
        why_not=_attention_why_not,
    )
)
