"""What the methods share: the model's chain and data, per-layer knobs, partitions, the info record, and the
scopes (which weights or neurons compete in one ranking)."""

import abc
import itertools
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._errors import (
    RESULTS,
    check_data,
    check_fraction,
    check_layer_fractions,
    finite_result,
    is_per_layer,
    raise_if_failed,
)
from .._model import to_chain
from .._model.network import DenseChain
from .._results.info import CompressionInfo, compression_info


def chain_and_data(model, x_calib, *, required: bool, why: str = "") -> tuple[DenseChain, jax.Array | None]:
    """The canonical chain of `model` and the checked calibration set in the model's dtype (`None` allowed when
    not `required`)."""
    chain = to_chain(model)
    if x_calib is None:
        if required:
            raise ValueError(f"`x_calib` is required {why}; received None. Pass a (batch, {chain.widths[0]}) array.")
        return chain, None
    return chain, check_data(x_calib, "x_calib", width=chain.widths[0]).astype(chain.weights[0].dtype)


@eqx.filter_jit
def hidden_statistics(network, x: jax.Array) -> tuple[dict[str, jax.Array], ...]:
    """Per hidden layer, per-neuron statistics of the activations over the batch `x`, from one batched forward
    pass: `abs_mean` (mean |a|), `rate` (fraction with a > 0), `norm` (‖a‖₂ over the samples), `mean`."""
    hidden = network.forward(x)[1][1:-1]
    return tuple(
        dict(
            abs_mean=jnp.mean(jnp.abs(a), axis=0),
            rate=jnp.mean(a > 0, axis=0, dtype=a.dtype),
            norm=jnp.linalg.norm(a, axis=0),
            mean=jnp.mean(a, axis=0),
        )
        for a in hidden
    )


def numpy_statistics(network, x: jax.Array) -> list[dict[str, np.ndarray]]:
    return [{k: np.asarray(v) for k, v in layer.items()} for layer in hidden_statistics(network, x)]


def keep_partition(keep: np.ndarray) -> np.ndarray:
    """For a keep mask over a layer's original neurons: each kept neuron's new index, `-1` for removed ones."""
    keep = np.asarray(keep, bool)
    return np.where(keep, np.cumsum(keep) - 1, -1)


SURGERY = "it removes neurons chosen from the values, so the result's shapes depend on them."

Fractions = float | tuple[float, ...]  # a knob for every hidden layer, or one per hidden layer


def layer_knob(knob: Fractions, i: int) -> float:
    """The knob of hidden layer `i` (0-based): `knob` itself, or its `i`-th entry when given per layer."""
    return knob[i] if isinstance(knob, tuple) else knob


def check_sparsity(sparsity, model, name: str = "sparsity") -> Fractions:
    """A fraction in [0, 1), or one per hidden layer of `model` (`check_layer_fractions`; only then is `model`
    read, for its number of hidden layers)."""
    if is_per_layer(sparsity):
        return check_layer_fractions(sparsity, name, len(to_chain(model).widths) - 2)
    return check_fraction(sparsity, name)


def fraction_for(n: int, width: int) -> float:
    """The smallest sparsity `s` with `n − int(n·s) = width` (`1 ≤ width ≤ n`): how a layer of `n` neurons is cut
    to `width` by every per-layer count here (`(n − width)/n` may round just below, hence the nudge)."""
    s = (n - width) / n
    while n - int(n * s) > width:
        s = float(np.nextafter(s, 1.0))
    return s


def knob_number(knob: Fractions) -> float:
    """`info.knob` of a result: the knob, or NaN ("not set") when it was given per layer (no one value made it)."""
    return float("nan") if isinstance(knob, tuple) else float(knob)


def structured_info(method: str, knob, model, new_model, widths_before, partitions, x) -> CompressionInfo:
    """The `CompressionInfo` of a structured (physically smaller) result; `partitions` as NumPy int arrays. Its
    result is computed from `new_model` (`RESULTS.nonfinite_result` when the method's arithmetic overflowed) and,
    on the calibration data `x` (`None`: data-free), the forward passes of both models (see `compression_info`)."""
    partitions = tuple(jnp.asarray(p, dtype=int) for p in partitions)
    result = finite_result(eqx.filter(new_model, eqx.is_inexact_array), RESULTS.nonfinite_result)
    return compression_info(
        method,
        knob_number(knob),
        model,
        new_model,
        partitions,
        structured=True,
        result=result,
        x=x,
        widths_before=widths_before,
    )


def finish_structured(method: str, knob, model, new_model, widths_before, partitions, x, throw: bool):
    """`(new_model, info)` of a structured baseline; with `throw`, raise if a check of `structured_info` failed."""
    info = structured_info(method, knob, model, new_model, widths_before, partitions, x)
    return raise_if_failed(info.result, new_model, throw, f"jaxlump.baselines.{method}"), info


class AbstractScope(eqx.Module):
    """Which weights (or neurons) compete in one ranking when a method prunes a fraction `s`: in every group of `n`
    entries exactly `int(n·s)` of the lowest scores go, ties broken by position (a stable sort), so equal scores
    never overshoot the count as a `score <= threshold` rule would. `spans_layers`: whether one group holds
    several layers' entries (then the scope needs the layers side by side, as in a chain)."""

    spans_layers: ClassVar[bool] = False

    @abc.abstractmethod
    def keep(self, scores: list[jax.Array], sparsity: float) -> list[jax.Array]:
        """Boolean keep masks, one per score array (lower score: pruned first)."""
        raise NotImplementedError


class PerLayer(AbstractScope):
    """Each layer's scores form one group: every pruned layer loses the same fraction (the default)."""

    def keep(self, scores: list[jax.Array], sparsity: float) -> list[jax.Array]:
        return [(_ranks(s.ravel()) >= int(s.size * sparsity)).reshape(s.shape) for s in scores]


class Global(AbstractScope):
    """One ranking over every layer's scores together: layers lose different fractions."""

    spans_layers: ClassVar[bool] = True

    def keep(self, scores: list[jax.Array], sparsity: float) -> list[jax.Array]:
        flat = jnp.concatenate([s.ravel() for s in scores])
        keep_flat = _ranks(flat) >= int(flat.size * sparsity)
        splits = list(itertools.accumulate(s.size for s in scores))[:-1]
        return [k.reshape(s.shape) for k, s in zip(jnp.split(keep_flat, splits), scores, strict=True)]


class PerRow(AbstractScope):
    """Each output neuron's weights (a row of `W`) form one group: every neuron keeps `n_in − int(n_in·s)` inputs
    (Wanda's setting for language models)."""

    def keep(self, scores: list[jax.Array], sparsity: float) -> list[jax.Array]:
        return [_ranks(s, axis=1) >= int(s.shape[1] * sparsity) for s in scores]


def _ranks(scores: jax.Array, axis: int = -1) -> jax.Array:
    """Position of each entry in the stable ascending order along `axis` (0 = pruned first)."""
    order = jnp.argsort(scores, axis=axis, stable=True)
    return jnp.argsort(order, axis=axis, stable=True)


def check_scope(scope, accepted: tuple[type[AbstractScope], ...], name: str = "scope") -> AbstractScope:
    """`scope` itself when it is one of the `accepted` scope classes; `TypeError` naming `name` and them otherwise."""
    if isinstance(scope, accepted):
        return scope
    names = " or ".join(f"jaxlump.baselines.{c.__name__}()" for c in accepted)
    hint = ""
    strings = {"layer": "PerLayer", "global": "Global", "row": "PerRow"}
    if isinstance(scope, str) and scope in strings:
        hint = f" (scopes are objects: `jaxlump.baselines.{strings[scope]}()`)"
    raise TypeError(f"`{name}` must be {names} here; received {scope!r}{hint}.")
