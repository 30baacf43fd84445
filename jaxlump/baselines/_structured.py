"""Structured (neuron-level) pruning: remove whole hidden neurons, giving a physically smaller dense model."""

import abc
from collections.abc import Sequence
from typing import Any, ClassVar

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Float

from .._errors import (
    check_bool,
    require_concrete,
)
from .._methods.base import (
    SURGERY,
    AbstractScope,
    Fractions,
    Global,
    PerLayer,
    chain_and_data,
    check_scope,
    check_sparsity,
    finish_structured,
    keep_partition,
    layer_knob,
    numpy_statistics,
)
from .._methods.registry import Compressor, register_compressor
from .._model import from_chain
from .._model.network import DenseChain, refuse_gated
from .._results.info import CompressionInfo
from .._sites.compress import over_sites


class AbstractNeuronScore(eqx.Module):
    """One importance score per hidden neuron (higher: kept), computed on the original network.

    Subclass it with `needs_data` and `__call__(chain, stats, l)`: hidden layer `l`'s scores (`l` from 1), with
    `stats[l - 1]` that layer's activation statistics on the calibration data (`abs_mean`, `rate`, `norm`, `mean`;
    `stats` is `None` when the score needs no data)."""

    needs_data: eqx.AbstractClassVar[bool]

    @abc.abstractmethod
    def __call__(self, chain: DenseChain, stats, l: int) -> np.ndarray:
        raise NotImplementedError


class IncomingNorm(AbstractNeuronScore):
    """`‖W^l[k, :]‖₂`, the L2 norm of the incoming row, bias excluded (Li et al. 2017; data-free). The default."""

    needs_data: ClassVar[bool] = False

    def __call__(self, chain: DenseChain, stats, l: int) -> np.ndarray:
        return np.linalg.norm(np.asarray(chain.weights[l - 1]), axis=1)


class MeanActivation(AbstractNeuronScore):
    """`mean_n |a^l_k(x_n)|`, the mean absolute activation."""

    needs_data: ClassVar[bool] = True

    def __call__(self, chain: DenseChain, stats, l: int) -> np.ndarray:
        return stats[l - 1]["abs_mean"]


class ActivationRate(AbstractNeuronScore):
    """`mean_n 1[a^l_k(x_n) > 0]`, the activation rate, i.e. 1 − APoZ for ReLU (Hu et al. 2016; the rule of Dobler &
    Lemmerich's `importance_based_pruning.py`)."""

    needs_data: ClassVar[bool] = True

    def __call__(self, chain: DenseChain, stats, l: int) -> np.ndarray:
        return stats[l - 1]["rate"]


class WandaScore(AbstractNeuronScore):
    """`‖X_k‖₂ · ‖W^{l+1}[:, k]‖₂`, the activation column's norm over the calibration samples times the outgoing
    column's norm (Wanda's `|W|·‖X‖` score, Sun et al. 2024, lifted to neurons)."""

    needs_data: ClassVar[bool] = True

    def __call__(self, chain: DenseChain, stats, l: int) -> np.ndarray:
        return stats[l - 1]["norm"] * np.linalg.norm(np.asarray(chain.weights[l]), axis=0)


def _neuron_scores(chain: DenseChain, stats, score: AbstractNeuronScore) -> list[np.ndarray]:
    """Per hidden layer (1..L-1) one importance score per neuron (higher = keep)."""
    return [np.asarray(score(chain, stats, l), dtype=np.float64) for l in range(1, chain.n_layers)]


def _removed_per_layer(scores: list[np.ndarray], sparsity: Fractions) -> list[np.ndarray]:
    """Indices of the `int(n·s)` lowest-scoring neurons of each layer (stable sort; at least one neuron stays)."""
    return [np.argsort(s, kind="stable")[: int(s.size * layer_knob(sparsity, i))] for i, s in enumerate(scores)]


def _removed_global(scores: list[np.ndarray], sparsity: float) -> list[np.ndarray]:
    """Indices removed by one ranking over all hidden neurons of the scores normalised by their layer's mean.

    Each layer's best neuron is protected, so no layer is emptied; the count removed is then
    `min(int(N·s), N − #layers)` with `N` the total number of hidden neurons.
    """
    normalised = [s / s.mean() if s.mean() > 0 else np.zeros_like(s) for s in scores]
    return [np.flatnonzero(~keep) for keep in global_cut(normalised, sparsity)]


def global_cut(scores: list[np.ndarray], sparsity: float) -> list[np.ndarray]:
    """Keep masks from one ranking of every hidden neuron's (already comparable) score: the `int(N·s)` lowest of
    the `N` go (stable order: layer by layer, then index), each layer's best neuron is protected, so no layer
    empties and at most `N − #layers` go."""
    if not scores:
        return []
    protected = []
    for s in scores:
        s = np.array(s, np.float64)
        s[np.argmax(s)] = np.inf
        protected.append(s)
    flat = np.concatenate(protected)
    n_remove = min(int(flat.size * sparsity), flat.size - len(scores))
    keep = np.ones(flat.size, bool)
    keep[np.argsort(flat, kind="stable")[:n_remove]] = False
    return np.split(keep, np.cumsum([s.size for s in scores])[:-1])


@over_sites
def structured_prune(
    model: Any,
    x_calib: Float[ArrayLike, "batch in"] | None,
    sparsity: float | Sequence[float],
    *,
    score: AbstractNeuronScore = IncomingNorm(),
    scope: AbstractScope = PerLayer(),
    compensate: bool = False,
    throw: bool = True,
) -> tuple[Any, CompressionInfo]:
    """Remove the least important hidden neurons, physically shrinking the model.

    Removing hidden neuron k of layer l removes row k of `W^l`, `b^l[k]` and column k of `W^{l+1}`; with
    `compensate=True` its mean contribution is kept: `b^{l+1} += W^{l+1}[:, k] · mean_n a^l_k(x_n)`
    (mean replacement; lossless for a neuron whose activation is constant on the data).

    Scores (higher = keep), all computed on the *original* network in one forward pass: `IncomingNorm()`,
    `MeanActivation()`, `ActivationRate()`, `WandaScore()` (see each), or a subclass of `AbstractNeuronScore`.

    `sparsity` is the fraction of hidden neurons removed. `scope=PerLayer()`: exactly `int(n_l·s)` neurons of each
    hidden layer, the lowest by a stable sort (ties: lower index goes first); since `s < 1` at least one neuron
    per layer stays. `scope=Global()`: one ranking over all hidden neurons of the scores divided by their layer's
    mean score (so layers of different fan-in or activation scale compete fairly), removing `int(N·s)` of the
    `N` hidden neurons; each layer's top neuron is never removed, so no layer is emptied, which caps the count at
    `N − (L − 1)` — `info.widths_after` gives the realised widths. Input and output neurons are never removed.
    A tuple of fractions, one per hidden layer, removes `int(n_l·s_l)` of layer l's neurons (`PerLayer()` only):
    the per-layer widths `jaxlump.baselines.compress_to` reaches with it.

    **Arguments:**

    - `model`: an `eqx.nn.MLP`, `eqx.nn.Sequential`, `LumpedMLP` or NNX chain; it is not modified.
    - `x_calib`: calibration inputs `(batch, n_0)`; may be `None` only for a data-free score (`IncomingNorm()`)
      without `compensate`.
    - `sparsity`: fraction of hidden neurons to remove, in `[0, 1)`, or one such fraction per hidden layer.
    - `score`: the neuron score, a `jaxlump.baselines.AbstractNeuronScore` (default `IncomingNorm()`).
    - `scope`: `jaxlump.baselines.PerLayer()` (default) or `Global()`.
    - `compensate`: add removed neurons' mean contribution to the next layer's bias.
    - `throw`: raise a `jaxlump.CompressionError` if the result is not finite (default); `False` reports it in
      `info.result` instead.

    **Returns:** `(new_model, info)`: a model whose type depends only on `model`'s (an `eqx.nn.MLP` comes back as
    a `LumpedMLP`), and a `CompressionInfo` with `structured=True`, `knob=sparsity` (NaN when given per layer) and,
    per hidden layer, each original neuron's new index (`-1`: removed).

    **Raises:** `ValueError` for a sparsity outside `[0, 1)`, an unknown `score`/`scope`, missing, empty, non-finite
    or wrongly sized `x_calib`, or `compensate=True` when a receiving layer has no bias; `TypeError` for an
    unsupported model.

    ```python
    import equinox as eqx, jax.random as jr
    from jaxlump.baselines import WandaScore, structured_prune

    mlp = eqx.nn.MLP(3, 2, 8, 2, key=jr.key(0))
    x = jr.normal(jr.key(1), (64, 3))
    small, info = structured_prune(mlp, x, 0.5, score=WandaScore(), compensate=True)
    assert small.width_size == (4, 4) and info.widths_after.tolist() == [3, 4, 4, 2]
    _, info = structured_prune(mlp, x, (0.25, 0.5))  # one fraction per hidden layer
    assert info.widths_after.tolist() == [3, 6, 4, 2]
    ```
    """
    require_concrete("jaxlump.baselines.structured_prune", SURGERY, model=model, x_calib=x_calib)
    sparsity = check_sparsity(sparsity, model)
    compensate, throw = check_bool(compensate, "compensate"), check_bool(throw, "throw")
    if not isinstance(score, AbstractNeuronScore):
        raise TypeError(
            "`score` must be a neuron score: `jaxlump.baselines.IncomingNorm()` (default), `MeanActivation()`, "
            f"`ActivationRate()`, `WandaScore()` or a subclass of `AbstractNeuronScore`; received {score!r}."
        )
    scope = check_scope(scope, (PerLayer, Global))
    if isinstance(scope, Global) and isinstance(sparsity, tuple):
        raise ValueError(
            f"`sparsity` as one fraction per hidden layer {sparsity} needs scope=PerLayer(): scope=Global() ranks "
            "every hidden neuron together, so the layers' widths follow from one fraction."
        )
    needs_data = score.needs_data or compensate
    why = f"for score={score!r}" if score.needs_data else "for compensate=True"
    chain, x = chain_and_data(model, x_calib, required=needs_data, why=why)
    refuse_gated(chain, "model", "jaxlump.baselines.structured_prune")
    stats = numpy_statistics(chain, x) if needs_data else None
    removed = (_removed_global if isinstance(scope, Global) else _removed_per_layer)(
        _neuron_scores(chain, stats, score), sparsity
    )
    keeps = [np.ones(n, bool) for n in chain.widths]
    for keep, r in zip(keeps[1:-1], removed, strict=True):
        keep[r] = False

    # Surgery with data-dependent shapes: on the host, in NumPy (eager jnp would compile once per op and shape).
    weights, biases = [], []
    for j, (w, b) in enumerate(zip(chain.weights, chain.biases, strict=True)):
        w, b = np.asarray(w), np.asarray(b)
        if compensate and j > 0 and not keeps[j].all():
            if not chain.use_bias[j]:
                raise ValueError(
                    f"`compensate=True` needs a bias in layer {j} to absorb removed neurons of hidden layer {j}, "
                    "but that layer has none; use compensate=False."
                )
            gone = ~keeps[j]
            b = (b + w[:, gone] @ stats[j - 1]["mean"][gone]).astype(b.dtype)
        weights.append(jnp.asarray(w[np.ix_(keeps[j + 1], keeps[j])]))
        biases.append(jnp.asarray(b[keeps[j + 1]]))
    new_model = from_chain(DenseChain(tuple(weights), tuple(biases), chain.activations, chain.use_bias), like=model)
    partitions = [keep_partition(k) for k in keeps[1:-1]]
    return finish_structured("structured_prune", sparsity, model, new_model, chain.widths, partitions, x, throw)


# fmt: off
register_compressor(Compressor("structured_prune", structured_prune, "sparsity", "fraction s ∈ [0, 1) of the hidden *neurons* removed; parameters fall faster than s, since a neuron's row and column go: structured_prune(m, x, 0.5) keeps 30.1 % of the parameters of a 7→64→64→7 MLP", structured=True, needs_data=False, per_layer=True))  # noqa: E501
# fmt: on
