"""Stage 1, model: every supported model kind ↔ `DenseChain`, through one registry of `ModelKind`s.

`to_chain(model)` validates (supported layers and activations, finite parameters), converts, and — outside
a trace — *verifies* that the chain reproduces `model(x)` itself on a small probe batch; `from_chain(chain,
like=model)` rebuilds a model of the kind's one result type and verifies it against the chain the same way.

Result types depend only on the input kind, never on the widths (so never on ε or data):
`eqx.nn.MLP` → `jaxlump.LumpedMLP` (an MLP whose hidden widths may differ), `jaxlump.LumpedMLP` →
`LumpedMLP`, `eqx.nn.Sequential` → `eqx.nn.Sequential`, `flax.nnx.Sequential` → `flax.nnx.Sequential`,
`flax.nnx.Linear` → `flax.nnx.Linear`, `DenseChain` → `DenseChain`.

Half-precision parameters (`float16`, `bfloat16`) are converted to float32 in the chain (every algorithm then
accumulates in float32, and LAPACK routines that have no 16-bit kernels work) and cast back to the model's
own dtype by `from_chain`.
"""

import weakref
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._errors import check_finite, is_traced
from .base import ModelKind
from .eqx_nn import EQX_KINDS, LumpedMLP
from .network import DenseChain, ParameterDtypeError

SUPPORTED = "eqx.nn.MLP, eqx.nn.Sequential of eqx.nn.Linear + activations, jaxlump.LumpedMLP, flax.nnx.Sequential"


def _is_flax(kind_class: str) -> Callable:
    def matches(model) -> bool:
        cls = type(model)
        return cls.__module__.startswith("flax.") and any(c.__name__ == kind_class for c in cls.__mro__)

    return matches


def _flax(function_name: str) -> Callable:
    def call(*args):
        from . import flax_nnx  # flax is imported only when a Flax model is met

        return getattr(flax_nnx, function_name)(*args)

    return call


_CHAIN_KIND = ModelKind(
    "jaxlump.DenseChain",
    lambda model: isinstance(model, DenseChain),
    lambda model: model,
    lambda chain, like: chain,
    lambda model, x: model(x),
    lambda model, chain: {},
    lambda options, chain: chain,
    lambda chain: chain,
)
_NNX_KINDS = tuple(
    ModelKind(
        f"flax.nnx.{cls}",
        _is_flax(cls),
        _flax("nnx_to_chain"),
        _flax("chain_to_nnx"),
        lambda model, x: model(x),
        _flax("nnx_describe"),
        _flax("nnx_build"),
        _flax("nnx_sequential"),
    )
    for cls in ("Sequential", "Linear")
)
KINDS: tuple[ModelKind, ...] = (_CHAIN_KIND, *EQX_KINDS, *_NNX_KINDS)


def sequential_of(model, chain: DenseChain):
    """`chain` (of any depth) as a plain sequence of layers in `model`'s family (`ModelKind.sequential`)."""
    return kind_of(model).sequential(chain)


def kind_of(model, name: str = "model") -> ModelKind:
    """The `ModelKind` of `model`; `TypeError` naming `name` when no kind supports it."""
    for kind in KINDS:
        if kind.matches(model):
            return kind
    if type(model).__name__ == "SkipMLP":
        raise TypeError(
            f"`{name}` is a jaxlump.SkipMLP (the result of linearity merging): its linear skip connections have no "
            "dense-chain form, so jaxlump cannot lump, prune or reconstruct it; it can be called, costed "
            "(`jaxlump.cost`), saved and loaded."
        )
    raise TypeError(
        f"`{name}` of type {type(model).__name__} is not supported; supported: {SUPPORTED}. (The compressors "
        "also take any other Equinox or Flax NNX module, site by site: see `jaxlump.sites`; this function takes "
        "those chain models only, or one segment of sites from `jaxlump.site_chains`.)"
    )


def is_chain_kind(model) -> bool:
    """Whether `model` is a chain model (one of `KINDS`, or a `SkipMLP`) rather than a model of sites."""
    return any(kind.matches(model) for kind in KINDS) or type(model).__name__ == "SkipMLP"


def apply_model(model, x: jax.Array, name: str = "model") -> jax.Array:
    """`model` applied to a batch `x` of shape `(batch, n_0)` (Equinox models are vmapped over examples)."""
    return kind_of(model, name).apply(model, x)


def _is_half(dtype) -> bool:
    return jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 32


def _cast(chain: DenseChain, dtype) -> DenseChain:
    return jax.tree.map(lambda a: a.astype(dtype), chain)  # gates (if any) too


def param_dtype(model):
    leaves = [leaf for leaf in jax.tree_util.tree_leaves(model) if eqx.is_inexact_array(leaf)]
    return leaves[0].dtype if leaves else None


_PROBE_ROWS = 4


def probe_batch(width: int, dtype) -> jax.Array:
    """A fixed probe batch: standard-normal rows, the last scaled by 4 to reach saturated and clipped regions."""
    rows = np.random.default_rng(0).standard_normal((_PROBE_ROWS, width))
    rows[-1] *= 4.0
    return jnp.asarray(rows, dtype)


def _mismatch(expected: np.ndarray, got: np.ndarray, chain: DenseChain, x, dtypes) -> float | None:
    """The largest deviation when it exceeds rounding (scaled by the largest pre-activation), else `None`."""
    finite = np.isfinite(expected) & np.isfinite(got)
    if not np.array_equal(np.where(finite, 0.0, expected), np.where(finite, 0.0, got), equal_nan=True):
        return float("inf")
    zs, _ = chain.forward(x.astype(chain.weights[0].dtype))
    scale = 1.0 + max(float(np.max(np.abs(np.nan_to_num(np.asarray(z, np.float64))), initial=0.0)) for z in zs)
    eps = max(float(jnp.finfo(d).eps) for d in dtypes)
    tolerance = scale * chain.n_layers * max(np.sqrt(eps), 4 * eps * np.sqrt(max(chain.widths)))
    deviation = float(np.max(np.abs(np.where(finite, expected - got, 0.0)), initial=0.0))
    return deviation if deviation > tolerance else None


# Equinox models are immutable: one that passed the check (or was built by `from_chain`) need not be probed again.
# Keyed by `id`, with a weak reference to tell a live model from a new object that reuses a freed id.
_VERIFIED: dict[int, weakref.ref] = {}


def _remember(model) -> None:
    if isinstance(model, eqx.Module):
        key = id(model)
        _VERIFIED[key] = weakref.ref(model, lambda _, key=key: _VERIFIED.pop(key, None))


def _verify(model, kind: ModelKind, chain: DenseChain, name: str, what: str) -> None:
    """Check `model(x) ≈ chain(x)` on the probe batch; skipped while either holds traced values."""
    known = _VERIFIED.get(id(model))
    if known is not None and known() is model:
        return
    if any(is_traced(a) for a in chain.weights + chain.biases) or any(
        is_traced(leaf) for leaf in jax.tree_util.tree_leaves(model)
    ):
        return
    model_dtype = param_dtype(model) or chain.weights[0].dtype
    with jax.ensure_compile_time_eval():
        x = probe_batch(chain.widths[0], model_dtype)
        expected = np.asarray(kind.apply(model, x), np.float64)
        got = np.asarray(chain(x.astype(chain.weights[0].dtype)), np.float64)
        if expected.shape != got.shape:
            deviation = float("inf")
        else:
            deviation = _mismatch(expected, got, chain, x, (model_dtype, chain.weights[0].dtype))
    if deviation is not None:
        raise ValueError(
            f"`{name}` ({kind.name}): {what} (max |difference| {deviation:.3g} on a probe batch of "
            f"{_PROBE_ROWS} inputs); the model is not the plain chain of dense layers and recognised activations "
            f"jaxlump reads it as (e.g. a subclass overriding __call__). Supported: {SUPPORTED}."
        )
    _remember(model)


def to_chain(model, name: str = "model", *, require_finite: bool = True) -> DenseChain:
    """Canonical form of `model`: refuses unsupported modules, parameters that are not real floating-point
    (complex, integer, boolean; `TypeError` naming `name`) and (unless told not to) NaN/inf parameters,
    converts half-precision parameters to float32, and verifies the chain against `model(x)` on a probe."""
    kind = kind_of(model, name)
    try:
        chain = kind.to_chain(model)
    except ParameterDtypeError as error:  # raised by `DenseChain`: name the argument
        raise TypeError(f"`{name}` ({kind.name}): {error}") from None
    if require_finite:
        weights = tuple(check_finite(w, f"{name} layer {l} weight") for l, w in enumerate(chain.weights))
        biases = tuple(check_finite(b, f"{name} layer {l} bias") for l, b in enumerate(chain.biases))
        gate_weights = tuple(
            None if g is None else check_finite(g, f"{name} layer {l} gate weight")
            for l, g in enumerate(chain.gate_weights)
        )
        gate_biases = tuple(
            None if g is None else check_finite(g, f"{name} layer {l} gate bias")
            for l, g in enumerate(chain.gate_biases)
        )
        chain = DenseChain(weights, biases, chain.activations, chain.use_bias, gate_weights, gate_biases)
    if any(_is_half(w.dtype) for w in jax.tree_util.tree_leaves(chain)):
        chain = _cast(chain, jnp.float32)
    if kind is not _CHAIN_KIND:
        _verify(model, kind, chain, name, "jaxlump's reading of it does not reproduce its output")
    return chain


def from_chain(chain: DenseChain, like):
    """Rebuild `chain` as a model of `like`'s kind's result type (see the module docs), in `like`'s dtype when
    that is half precision, verified against `chain` on a probe batch."""
    kind = kind_of(like, "like")
    dtype = param_dtype(like)
    if dtype is not None and _is_half(dtype):
        chain = _cast(chain, dtype)
    model = kind.from_chain(chain, like)
    if kind is not _CHAIN_KIND:
        _verify(model, kind_of(model), chain, "like", "the rebuilt model does not reproduce the chain")
    return model


__all__ = [
    "KINDS",
    "SUPPORTED",
    "LumpedMLP",
    "ModelKind",
    "apply_model",
    "from_chain",
    "is_chain_kind",
    "kind_of",
    "param_dtype",
    "probe_batch",
    "sequential_of",
    "to_chain",
]
