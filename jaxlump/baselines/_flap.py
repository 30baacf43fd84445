"""FLAP: fluctuation-based adaptive structured pruning with bias compensation (An et al., AAAI 2024).

Score (WIFV, FLAP's default, `lib/prune.py`): `S_j = Var_n(a_j) · ‖W^{l+1}[:, j]‖²`. Adaptive structure: the
scores are standardised per layer, `(S − mean S) / std S`, pooled over all hidden layers and cut by one global
threshold, so layers get different widths. Compensation: no refit, only the bias
`b^{l+1} ← b^{l+1} + W^{l+1}[:, R] ā_R` (FLAP's `output_bias = (mean_inp * ~mask) @ W.T`).
"""

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Float

from .._methods.base import Fractions, layer_knob
from .._methods.registry import Compressor, register_compressor
from .._model.network import DenseChain, refuse_gated
from .._reconstruction.reconstruct import DEFAULT_RIDGE
from .._results.info import CompressionInfo
from .._sites.compress import over_sites
from ._masks import check_flag
from ._obs import finish, hidden_activations, masked_quotient, prepare, pruning_labels, selection_status
from ._structured import global_cut


def flap_scores(chain: DenseChain, x) -> list[np.ndarray]:
    """Per hidden layer, `Var_n(a_j) · ‖W^{l+1}[:, j]‖²` (population variance over the calibration samples)."""
    acts = hidden_activations(chain, x)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported by `flap_prune`'s finiteness check
        return [
            np.var(np.asarray(a, np.float64), axis=0) * np.sum(np.asarray(chain.weights[l], np.float64) ** 2, axis=0)
            for l, a in enumerate(acts, start=1)
        ]


def standardised(score: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):  # inf scores (reported by `flap_prune`) have no standard deviation
        std = score.std()
    return (score - score.mean()) / std if std > 0 else np.zeros_like(score)


def global_keep(scores: list[np.ndarray], sparsity: Fractions) -> list[np.ndarray]:
    """Keep masks from one global cut of the per-layer standardised scores (`global_cut`: the `int(N·s)` lowest of
    the `N` hidden neurons go, each layer's best neuron is protected); with one sparsity per layer, the `int(n_l·s_l)`
    lowest of each layer go instead (a stable sort, as `structured_prune`'s `scope=PerLayer()`)."""
    if not isinstance(sparsity, tuple):
        return global_cut([standardised(s) for s in scores], sparsity)
    keeps = []
    for i, s in enumerate(scores):
        keep = np.ones(s.size, bool)
        keep[np.argsort(s, kind="stable")[: int(s.size * layer_knob(sparsity, i))]] = False
        keeps.append(keep)
    return keeps


def compensated(chain: DenseChain, masked: DenseChain, keeps: list[np.ndarray], means: list[np.ndarray]) -> DenseChain:
    """`masked` with `b^{l+1} += W^{l+1}[:, R] ā_R` for every hidden layer's removed set `R` (live rows only)."""
    biases = list(masked.biases)
    live_rows = [*keeps, np.ones(chain.widths[-1], bool)]
    for l, (keep, mean) in enumerate(zip(keeps, means, strict=True), start=1):
        if keep.all():
            continue
        if not chain.use_bias[l]:
            raise ValueError(
                f"FLAP's bias compensation needs a bias in layer {l}, which has none; pass `compensate=False`."
            )
        shift = np.asarray(chain.weights[l], np.float64)[:, ~keep] @ mean[~keep]
        biases[l] = biases[l] + jnp.asarray(shift * live_rows[l], biases[l].dtype)
    return DenseChain(masked.weights, tuple(biases), masked.activations, masked.use_bias)


def across_sites(chains: list[DenseChain], rows: list, sparsity, **options) -> list:
    """FLAP's one global threshold over a model of sites: every segment's scores on the original model's rows,
    standardised per layer and cut together; each segment gets one fraction per layer that removes exactly its
    share (`(removed + ½) / n`, so that `int(n · s)` is the count whatever the rounding)."""
    for chain in chains:
        refuse_gated(chain, "model", "jaxlump.baselines.flap_prune")
    if isinstance(sparsity, Sequence):
        raise TypeError(
            "`sparsity` for a model of sites is one fraction of all its sites' units (one global threshold); "
            f"received {sparsity!r}. Give widths per site with `jaxlump.baselines.compress_to`."
        )
    sparsity = prepare(chains[0], rows[0], sparsity, 0.0, DEFAULT_RIDGE, False)[2]
    scores = [flap_scores(chain, r) for chain, r in zip(chains, rows)]
    keeps = global_keep([s for segment in scores for s in segment], sparsity)
    shares, start = [], 0
    for segment in scores:
        kept = keeps[start : start + len(segment)]
        shares.append(tuple((np.sum(~k) + 0.5) / k.size for k in kept))
        start += len(segment)
    return shares


@over_sites(allocate=across_sites)
def flap_prune(
    model: Any,
    x_calib: Float[ArrayLike, "batch in"],
    sparsity: float | Sequence[float],
    *,
    compensate: bool = True,
    reconstruct: bool = False,
    ridge: float = DEFAULT_RIDGE,
    throw: bool = True,
) -> tuple[Any, CompressionInfo]:
    """FLAP: remove the hidden neurons of lowest standardised fluctuation score under one global threshold.

    `S^l_j = Var_n(a^l_j) ‖W^{l+1}[:, j]‖²`, standardised per layer; the `int(N·s)` lowest of all `N` hidden neurons
    are removed (each layer's best is protected, so no layer empties) and their mean contribution moves into the next
    layer's bias (module docs).

    **Arguments:**

    - `model`: an `eqx.nn.MLP`, `eqx.nn.Sequential`, `LumpedMLP` or NNX chain; not modified.
    - `x_calib`: calibration inputs `(batch, n_0)`.
    - `sparsity`: the fraction of *all* hidden neurons removed, in `[0, 1)`; the per-layer widths follow from the
      global threshold (`info.widths_after`). On a model of sites the threshold is global over every site (scored
      on the original model), and each site's lowest scores go on the inputs it is compressed on. Or one fraction
      per hidden layer: the widths are then set per layer and each layer's lowest scores go (FLAP's uniform
      structure; `compress_to` uses it for widths targets).
    - `compensate`: FLAP's bias compensation (default `True`).
    - `reconstruct`: apply the shared least-squares reconstruction afterwards (default `False`, as FLAP).
    - `ridge`: the reconstruction's ridge.
    - `throw`: raise a `jaxlump.CompressionError` naming the failed stage (default): NaN/inf scores (the activations
      overflowed), a non-finite compensated model, a failed reconstruction; `False` reports it in `info.result`.

    **Returns:** `(new_model, info)`, physically smaller; kept neurons map to their new index, removed ones to −1.

    **Raises:** `ValueError` for a sparsity outside `[0, 1)`, missing or bad `x_calib`, or `compensate=True` when a
    receiving layer has no bias; `TypeError` for an unsupported model; `CompressionError` for a failed stage when
    `throw=True`.

    ```python
    import equinox as eqx, jax.numpy as jnp, jax.random as jr
    from jaxlump.baselines import flap_prune

    mlp = eqx.nn.MLP(3, 2, 8, 2, activation=jnp.tanh, key=jr.key(0))
    x = jr.normal(jr.key(1), (64, 3))
    small, info = flap_prune(mlp, x, 0.5)
    assert int(sum(info.widths_after[1:-1])) == 8
    ```

    An, Zhao, Yu, Tang, Wang, *Fluctuation-based Adaptive Structured Pruning for Large Language Models*, AAAI 2024.
    """
    chain, x, sparsity, _, ridge = prepare(model, x_calib, sparsity, 0.0, ridge, reconstruct)
    refuse_gated(chain, "model", "jaxlump.baselines.flap_prune")
    check_flag(compensate, "compensate")
    check_flag(throw, "throw")
    scores = flap_scores(chain, x)
    keeps = global_keep(scores, sparsity)
    labels = [pruning_labels(k) for k in keeps]
    masked = None
    if compensate and not all(k.all() for k in keeps):
        means = [np.asarray(a, np.float64).mean(axis=0) for a in hidden_activations(chain, x)]
        masked = compensated(chain, masked_quotient(chain, labels), keeps, means)
    options = dict(reconstruct=reconstruct, ridge=ridge, masked=masked, throw=throw)
    return finish("flap_prune", sparsity, model, chain, x, labels, selection=selection_status(*scores), **options)


# fmt: off
register_compressor(Compressor("flap_prune", flap_prune, "sparsity", "fraction s ∈ [0, 1) of *all* hidden neurons removed by FLAP's fluctuation score (one global ranking), with bias compensation", structured=True, needs_data=True, per_layer=True))  # noqa: E501
# fmt: on
