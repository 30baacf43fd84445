"""Linearity-based compression (Dobler & Lemmerich, arXiv 2506.21146), faithful to the official code.

ReLU neurons that are active on (almost) every calibration example act linearly there; they are removed and their
path `W^{l+1}[:, L] W^l[L, :]` becomes a dense skip into the next layer's pre-activation (a `SkipMLP`).
"""

import abc
import math
import warnings
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._errors import check_bool, check_data, check_fraction, require_concrete
from .._methods.base import (
    SURGERY,
    chain_and_data,
    finish_structured,
    hidden_statistics,
    keep_partition,
    numpy_statistics,
)
from .._methods.registry import RELU_FAMILY, Compressor, register_compressor
from .._model import to_chain
from .._model.network import DenseChain, refuse_gated
from .._model.skip_mlp import SkipMLP
from .._results.info import CompressionInfo
from .._sites.compress import over_sites

# `linearity_to_size` tries at most this many τ values: a finer `step` is refused rather than looped over.
MAX_STEPS = 10_000

# Activations that equal the identity on z > 0, so a neuron active on every example acts linearly.
RELU_LIKE = ("relu", "leaky_relu")


def activation_rates(model: Any, x: Float[ArrayLike, "batch in"]) -> tuple[Float[Array, " width"], ...]:
    """Per hidden layer, the fraction of examples on which each neuron's activation is positive.

    `r^l_i = (1/N) Σ_n 1[a^l_i(x_n) > 0]` — for ReLU the fraction of examples where the neuron is active, i.e.
    1 − APoZ (the official code's `get_activation_rates`, computed here in one batched forward pass).

    **Arguments:**

    - `model`: any model `to_chain` accepts, or a `SkipMLP`.
    - `x`: inputs `(batch, n_0)`.

    **Returns:** a tuple with one `(n_l,)` array per hidden layer `l = 1..L-1`.

    **Raises:** `ValueError` for empty, non-finite or wrongly sized `x`; `TypeError` for an unsupported model.

    ```python
    import equinox as eqx, jax, jax.random as jr
    from jaxlump.baselines._linearity import activation_rates

    mlp = eqx.nn.MLP(3, 1, 8, 2, activation=jax.nn.relu, key=jr.key(0))
    rates = activation_rates(mlp, jr.normal(jr.key(1), (100, 3)))
    assert len(rates) == 2 and rates[0].shape == (8,)
    ```

    Dobler & Lemmerich, *Linearity-based neural network compression*, arXiv 2506.21146 (2025).
    """
    network = model if isinstance(model, SkipMLP) else to_chain(model)
    if isinstance(network, DenseChain):
        refuse_gated(network, "model", "jaxlump.baselines.activation_rates")
    x = check_data(x, "x", width=network.widths[0]).astype(network.weights[0].dtype)
    return tuple(layer["rate"] for layer in hidden_statistics(network, x))


def _check_relu(chain: DenseChain) -> None:
    for l, act in enumerate(chain.activations[:-1], start=1):
        if act not in RELU_LIKE:
            raise TypeError(
                f"`model`: hidden layer {l} uses activation {act!r}; linearity-based merging needs ReLU-like hidden "
                f"activations ({', '.join(RELU_LIKE)}), whose active neurons are linear."
            )


class AbstractLayerRule(eqx.Module):
    """Whether a hidden layer with `n_linear` of its `n_neurons` neurons always active is merged into a linear
    skip (the official code's `layer_threshold`). A layer without a linear neuron is never merged."""

    @abc.abstractmethod
    def worth_merging(self, n_linear: int, n_neurons: int, n_in: int, n_out: int) -> bool:
        raise NotImplementedError


class SavesParameters(AbstractLayerRule):
    """Merge when it saves parameters: each merged neuron saves `n_in + n_out + 1`, the skip costs `n_in·n_out`, so
    `(n_in + n_out + 1)·|L| > n_in·n_out` (the official `"best"`). The default."""

    def worth_merging(self, n_linear: int, n_neurons: int, n_in: int, n_out: int) -> bool:
        return (n_in + n_out + 1) * n_linear > n_in * n_out


class MoreLinearThan(AbstractLayerRule):
    """Merge when more than `count` neurons are linear: `|L| > count` (`MoreLinearThan(0)`: any linear neuron).

    ```python
    import jaxlump
    assert jaxlump.baselines.MoreLinearThan(0).worth_merging(1, 8, 3, 3)
    ```
    """

    count: int = eqx.field(static=True)

    def __check_init__(self):
        if isinstance(self.count, (bool, np.bool_)) or not isinstance(self.count, (int, np.integer)):
            raise TypeError(f"`count` must be an int >= 0; received {self.count!r}.")
        if self.count < 0:
            raise ValueError(f"`count` must be an int >= 0; received {self.count!r}.")

    def worth_merging(self, n_linear: int, n_neurons: int, n_in: int, n_out: int) -> bool:
        return n_linear > self.count


class LinearFractionAbove(AbstractLayerRule):
    """Merge when more than a `fraction` of the layer's neurons are linear: `|L| / n_l > fraction`."""

    fraction: float = eqx.field(static=True)

    def __check_init__(self):
        check_fraction(self.fraction, "fraction", upper_inclusive=True)

    def worth_merging(self, n_linear: int, n_neurons: int, n_in: int, n_out: int) -> bool:
        return n_linear / n_neurons > self.fraction


def _check_layer_rule(layer_threshold) -> AbstractLayerRule:
    if isinstance(layer_threshold, AbstractLayerRule):
        return layer_threshold
    raise TypeError(
        "`layer_threshold` must be a layer rule: `jaxlump.baselines.SavesParameters()` (default), `MoreLinearThan(k)`, "
        f"`LinearFractionAbove(f)` or a subclass of `AbstractLayerRule`; received {layer_threshold!r}."
    )


def _merge(chain: DenseChain, rates, tau: float, layer_threshold: AbstractLayerRule, chained: bool):
    """One pass over the hidden layers from the input; returns the `SkipMLP` and the partitions.

    The surgery has data-dependent shapes, so it runs on the host in NumPy (eager jnp would compile per op)."""
    n_layers = chain.n_layers
    weights, biases = [np.asarray(w) for w in chain.weights], [np.asarray(b) for b in chain.biases]
    use_bias = list(chain.use_bias)
    skips, sources = [None] * n_layers, [()] * n_layers
    partitions = []
    for l in range(1, n_layers):  # hidden layer l: made by weights[l-1], read by weights[l]
        linear = rates[l - 1] >= tau
        is_chained = skips[l - 1] is not None
        # A linear neuron's full pre-activation: [W^l | S^{l-1}] [a^{l-1}; u^{l-1}] + b^l.
        incoming = np.concatenate([weights[l - 1], skips[l - 1]], axis=1) if is_chained else weights[l - 1]
        n_in, n_out = incoming.shape[1], weights[l].shape[0]
        n_linear = int(linear.sum())
        if (
            (is_chained and not chained)
            or n_linear == 0
            or not layer_threshold.worth_merging(n_linear, linear.size, n_in, n_out)
        ):
            partitions.append(keep_partition(np.ones(linear.size, bool)))
            continue
        keep = ~linear
        outgoing = weights[l][:, linear]
        absorbed = outgoing @ biases[l - 1][linear]
        biases[l] = biases[l] + absorbed
        use_bias[l] = use_bias[l] or bool(np.any(absorbed != 0))  # a bias-free layer gains one only if needed
        skips[l] = outgoing @ incoming[linear]
        sources[l] = ((l - 1,) if weights[l - 1].shape[1] > 0 else ()) + sources[l - 1]
        weights[l - 1], biases[l - 1], weights[l] = weights[l - 1][keep], biases[l - 1][keep], weights[l][:, keep]
        if is_chained:
            skips[l - 1] = skips[l - 1][keep] if keep.any() else None
            sources[l - 1] = sources[l - 1] if keep.any() else ()
        partitions.append(keep_partition(keep))
    dtype = chain.weights[0].dtype
    as_jax = lambda arrays: [None if a is None else jnp.asarray(a, dtype=dtype) for a in arrays]
    new_model = SkipMLP(
        as_jax(weights), as_jax(biases), chain.activations, use_bias, skips=as_jax(skips), skip_sources=sources
    )
    return new_model, partitions


def _rates_of(chain: DenseChain, x) -> list[np.ndarray]:
    return [layer["rate"] for layer in numpy_statistics(chain, x)]


@over_sites(refusal="it turns neurons into a linear skip connection, which the model's class has no place for")
def linearity_merge(
    model: Any,
    x_calib: Float[ArrayLike, "batch in"],
    tau: float,
    *,
    layer_threshold: AbstractLayerRule = SavesParameters(),
    chained: bool = True,
    throw: bool = True,
) -> tuple[SkipMLP, CompressionInfo]:
    """Merge always-active ReLU neurons into skip connections (linearity-based compression).

    With activation rates `r^l_i` measured on the original network (`activation_rates`), hidden layer l's linear
    set is `L^l = {i : r^l_i ≥ τ}`; layers are visited from the input and, when merged,

    `S^l = W^{l+1}[:, L] [W^l | S^{l-1}][L]`, `b^{l+1} += W^{l+1}[:, L] b^l[L]`, rows L of `W^l`, `b^l`, `S^{l-1}`
    and columns L of `W^{l+1}` removed; the skip `S^l` reads `[a^{l-1}; u^{l-1}]`, the current input first, then the
    older skip inputs `u^{l-1}` (chained merges). A layer whose neurons are all linear disappears (width 0); its map
    lives on in the skip, so this is not a layer pruned away. The output layer is never merged. A bias-free layer
    that absorbs a non-zero bias gains a bias. At `τ = 1` the result equals the original on the calibration set;
    in general it equals the original with the merged neurons' ReLU replaced by the identity.

    `layer_threshold` decides whether a layer is merged: `SavesParameters()` when it saves parameters,
    `(in + out + 1)·|L| > in·out`, with `in` the true input width of layer l's neurons (`n_{l-1}` plus the previous
    skip's input width when chained; the official code adds that skip's *output* width instead, a quirk not
    copied); `MoreLinearThan(t)` when `|L| > t`; `LinearFractionAbove(t)` when `|L| / n_l > t`.

    **Arguments:**

    - `model`: an `eqx.nn.MLP`, `eqx.nn.Sequential`, `LumpedMLP` or NNX chain with ReLU (or leaky-ReLU) hidden
      layers; any output activation. It is not modified.
    - `x_calib`: calibration inputs `(batch, n_0)`.
    - `tau`: activation-rate threshold in `[0, 1]`.
    - `layer_threshold`: a `jaxlump.baselines.AbstractLayerRule` (default `SavesParameters()`).
    - `chained`: allow merging a layer whose predecessor was merged (the official behaviour); `False` skips it.
    - `throw`: raise a `jaxlump.CompressionError` if the result is not finite (default); `False` reports it in
      `info.result` instead.

    **Returns:** `(SkipMLP, info)` with `info.knob = τ` and, per hidden layer, each original neuron's new index
    (`-1`: merged into a skip).

    **Raises:** `TypeError` for a hidden activation other than ReLU / leaky ReLU, an unsupported model or a
    `layer_threshold` that is not a layer rule; `ValueError` for `tau` outside `[0, 1]`, or missing, empty,
    non-finite or wrongly sized `x_calib`.

    ```python
    import equinox as eqx, jax, jax.numpy as jnp, jax.random as jr
    from jaxlump.baselines import MoreLinearThan, linearity_merge

    mlp = eqx.nn.MLP(3, 1, 8, 2, activation=jax.nn.relu, key=jr.key(0))
    x = jr.normal(jr.key(1), (100, 3))
    merged, info = linearity_merge(mlp, x, 1.0, layer_threshold=MoreLinearThan(0))
    assert jnp.allclose(jax.vmap(merged)(x), jax.vmap(mlp)(x), atol=1e-5)
    ```

    Dobler & Lemmerich, *Linearity-based neural network compression*, arXiv 2506.21146 (2025).
    """
    require_concrete("jaxlump.baselines.linearity_merge", SURGERY, model=model, x_calib=x_calib)
    tau = check_fraction(tau, "tau", upper_inclusive=True)
    layer_threshold = _check_layer_rule(layer_threshold)
    chained, throw = check_bool(chained, "chained"), check_bool(throw, "throw")
    chain, x = chain_and_data(model, x_calib, required=True, why="to measure activation rates")
    refuse_gated(chain, "model", "jaxlump.baselines.linearity_merge")
    _check_relu(chain)
    new_model, partitions = _merge(chain, _rates_of(chain, x), tau, layer_threshold, chained)
    return finish_structured("linearity_merge", tau, model, new_model, chain.widths, partitions, x, throw)


def _size(network: SkipMLP, count_first_layer: bool) -> int:
    """Dense parameters (weights, used biases, skips), from shapes alone: `SkipMLP.cost().dense_params`."""
    layers = zip(network.weights, network.biases, network.use_bias, network.skips, strict=True)
    sizes = [w.size + (b.size if has_bias else 0) + (0 if s is None else s.size) for w, b, has_bias, s in layers]
    return sum(sizes if count_first_layer else sizes[1:])  # layer 0 never has a skip


@over_sites(refusal="it turns neurons into a linear skip connection, which the model's class has no place for")
def linearity_to_size(
    model: Any,
    x_calib: Float[ArrayLike, "batch in"],
    target_fraction: float,
    *,
    step: float = 0.1,
    count_first_layer: bool = True,
    throw: bool = True,
) -> tuple[SkipMLP, CompressionInfo]:
    """Linearity-based merging to a parameter budget (the official `seq_fixed_size_compression`).

    Tries `τ = 1, 1 − step, 1 − 2·step, ..., 0` (rounded to 12 decimals), each a fresh `linearity_merge(model,
    x_calib, τ)` (layer rule `SavesParameters()`), and returns the first result with
    `params ≤ target_fraction · params₀`.
    Parameters are dense weights, biases and skips; `count_first_layer=False` leaves the first layer's weight and
    bias out of both counts, as the official code does (the first layer never shrinks there).

    Requested size: `target_fraction`; realised size: `info.percent_of_original / 100` (all parameters) and
    `info.knob`, the τ reached. If even τ = 0 misses the target, the τ = 0 result is returned with a
    `UserWarning` giving both sizes.

    **Arguments:**

    - `model`: a ReLU network as for `linearity_merge`; not modified.
    - `x_calib`: calibration inputs `(batch, n_0)`.
    - `target_fraction`: the parameter budget as a fraction of the original, in `(0, 1]`.
    - `step`: the decrement of τ, in `[1e-4, 1]` (at most `MAX_STEPS` = 10 000 values of τ are tried).
    - `count_first_layer`: whether the first layer's parameters count toward both sizes.
    - `throw`: raise a `jaxlump.CompressionError` if the result is not finite (default); `False` reports it in
      `info.result` instead.

    **Returns:** `(SkipMLP, info)` as from `linearity_merge`, `info.knob` being the τ used.

    **Raises:** as `linearity_merge`, and `ValueError` for `target_fraction` outside `(0, 1]` or `step` outside
    `[1e-4, 1]` (a finer step would try more than `MAX_STEPS` values of τ; activation rates of N examples take only
    N + 1 values, so a step below `1/N` finds nothing new).

    ```python
    import equinox as eqx, jax, jax.random as jr
    from jaxlump.baselines._linearity import linearity_to_size

    mlp = eqx.nn.MLP(3, 1, 16, 3, activation=jax.nn.relu, key=jr.key(0))
    merged, info = linearity_to_size(mlp, jr.normal(jr.key(1), (100, 3)), 0.5)
    assert info.percent_of_original <= 50
    ```

    Dobler & Lemmerich, *Linearity-based neural network compression*, arXiv 2506.21146 (2025).
    """
    require_concrete("jaxlump.baselines.linearity_to_size", SURGERY, model=model, x_calib=x_calib)
    target_fraction = check_fraction(target_fraction, "target_fraction", upper_inclusive=True)
    step = check_fraction(step, "step", upper_inclusive=True)
    count_first_layer, throw = check_bool(count_first_layer, "count_first_layer"), check_bool(throw, "throw")
    if target_fraction == 0:
        raise ValueError("`target_fraction` must lie in (0, 1]; received 0.")
    if step * MAX_STEPS < 1:
        raise ValueError(
            f"`step` must lie in [{1 / MAX_STEPS:g}, 1] (at most {MAX_STEPS} values of τ are tried); received {step!r}."
        )
    chain, x = chain_and_data(model, x_calib, required=True, why="to measure activation rates")
    refuse_gated(chain, "model", "jaxlump.baselines.linearity_to_size")
    _check_relu(chain)
    rates = _rates_of(chain, x)
    budget = target_fraction * _size(SkipMLP.from_chain(chain), count_first_layer)
    n_steps = math.ceil(round(1.0 / step, 9))
    merged_sets = None
    for k in range(n_steps + 1):
        tau = max(round(1.0 - k * step, 12), 0.0)
        linear_sets = [r >= tau for r in rates]
        if merged_sets is None or any((a != b).any() for a, b in zip(linear_sets, merged_sets)):
            # The merge depends on τ only through the linear sets: re-merge only when one of them changes.
            merged_sets = linear_sets
            new_model, partitions = _merge(chain, rates, tau, SavesParameters(), True)
        if _size(new_model, count_first_layer) <= budget:
            break
    else:
        warnings.warn(
            f"linearity_to_size: requested {target_fraction:.3g} of the parameters, reached only "
            f"{_size(new_model, count_first_layer) / (budget / target_fraction):.3g} at tau = 0.",
            stacklevel=2,
        )
    return finish_structured("linearity_to_size", tau, model, new_model, chain.widths, partitions, x, throw)


_BUDGET = "it takes a size budget, not widths (its knob is the parameter budget itself, a fraction of the original)"

_SKIP = (
    "it turns always-active neurons into a linear skip connection that keeps their parameters, so hidden widths do "
    "not bound its size, and whether a layer merges at all is decided by `layer_threshold`"
)

# fmt: off
register_compressor(Compressor("linearity_merge", linearity_merge, "tau", "activation-rate threshold τ ∈ [0, 1]: neurons active on at least a fraction τ of the data become a linear skip; a *smaller* τ merges more", structured=True, needs_data=True, knob_range=(0.0, 1.0), larger_knob_smaller_model=False, activations=RELU_FAMILY, no_widths=_SKIP))  # noqa: E501
register_compressor(Compressor("linearity_to_size", linearity_to_size, "target_fraction", "the parameter budget as a fraction of the original: linearity merging with τ stepped down until the budget is met", structured=True, needs_data=True, knob_range=None, size_knob="fraction", activations=RELU_FAMILY, no_widths=_BUDGET))  # noqa: E501
# fmt: on
