"""Interpolative-decomposition (ID) neuron pruning: column-pivoted QR of the calibration activations.

Chee et al. keep the first `k` pivots `S = P[:k]` of `A P = Q R` (the hidden layer's activation matrix) and absorb
`T = [I, R₁₁⁻¹R₁₂] Pᵀ` into the next layer; since `R₁₁⁻¹R₁₂ = pinv(A_S) A_R` that update *is* the least-squares
refit (reference §2.3). The pivots are computed here as a pivoted Cholesky factorisation of `H = A_cᵀA_c`
(the same pivots as CPQR of `A_c` in exact arithmetic): repeatedly take the column with the largest residual
norm² `d_j`, and downdate `d ← d − l²` with `l` the new Cholesky column.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
from jaxtyping import ArrayLike, Float

from .._methods.registry import NEURON_SPARSITY, Compressor, register_compressor
from .._reconstruction.reconstruct import DEFAULT_RIDGE
from .._results.info import CompressionInfo
from .._sites.compress import over_sites
from ._masks import check_flag
from ._obs import prune_by_selector


def pivoted_cholesky_pivots(h: np.ndarray, k: int) -> np.ndarray:
    """The first `k` pivots of the greedy (diagonal-pivoting) Cholesky factorisation of the PSD matrix `h`.

    Ties, and columns whose residual is already zero, go to the lower index.
    """
    h = np.asarray(h, np.float64)
    n = h.shape[0]
    d = np.diag(h).copy()
    factor = np.zeros((n, k))
    chosen = np.zeros(n, bool)
    pivots = []
    for t in range(k):
        j = int(np.argmax(np.where(chosen, -np.inf, d)))
        column = h[:, j] - factor[:, :t] @ factor[j, :t]
        factor[:, t] = column / np.sqrt(d[j]) if d[j] > 0 else 0.0
        d = d - factor[:, t] ** 2
        chosen[j] = True
        pivots.append(j)
    return np.asarray(pivots, int)


def id_select(h: np.ndarray, w: np.ndarray, k: int, *, weighted: bool = False) -> np.ndarray:
    """Keep mask of the first `k` CPQR pivots of `A_c` (or of `A_c diag(‖W[:, j]‖)` when `weighted`)."""
    if weighted:
        norms = np.linalg.norm(np.asarray(w, np.float64), axis=0)
        h = h * np.outer(norms, norms)
    keep = np.zeros(h.shape[0], bool)
    keep[pivoted_cholesky_pivots(h, k)] = True
    return keep


@over_sites
def id_prune(
    model: Any,
    x_calib: Float[ArrayLike, "batch in"],
    sparsity: float | Sequence[float],
    *,
    weighted: bool = False,
    sequential: bool = False,
    damping: float = 0.0,
    reconstruct: bool = True,
    ridge: float = DEFAULT_RIDGE,
    throw: bool = True,
) -> tuple[Any, CompressionInfo]:
    """Keep, per hidden layer, the neurons an interpolative decomposition of its activations selects.

    `S` = the first `k = n − int(n·s)` pivots of column-pivoted QR of the centred activations `A_c`
    (`A_c P = Q R`), optionally weighted by the outgoing norms, `A_c diag(‖W^{l+1}[:, j]‖₂)`, so the columns that
    matter downstream count more. The next layer's update is the least-squares refit (module docs).

    **Arguments:**

    - `model`: an `eqx.nn.MLP`, `eqx.nn.Sequential`, `LumpedMLP` or NNX chain; not modified.
    - `x_calib`: calibration inputs `(batch, n_0)`.
    - `sparsity`: the fraction of each hidden layer's neurons removed, in `[0, 1)`, or one per hidden layer (as
      `structured_prune`).
    - `weighted`: weight the columns by the outgoing norms (default `False`, the paper's).
    - `sequential`: pivot each layer on the already-compressed network's activations (default `False`).
    - `damping`: Gram damping relative to its mean diagonal (default 0: plain CPQR).
    - `reconstruct`: apply the shared least-squares reconstruction (default `True`: ID's update is the refit);
      `False` keeps the surviving weights unchanged.
    - `ridge`: the reconstruction's ridge (see `jaxlump.reconstruct`).
    - `throw`: raise a `jaxlump.CompressionError` naming the failed stage (default); `False` returns the result with
      `info.result` set instead (NaN/inf activations' Gram, a non-finite result, a failed refit).

    **Returns:** `(new_model, info)`, physically smaller; kept neurons map to their new index, removed ones to −1.

    **Raises:** `ValueError` for a sparsity outside `[0, 1)`, a negative `damping`/`ridge`, or missing, non-finite or
    wrongly sized `x_calib`; `TypeError` for an unsupported model; `CompressionError` for a failed stage when
    `throw=True`.

    ```python
    import equinox as eqx, jax.numpy as jnp, jax.random as jr
    from jaxlump.baselines import id_prune

    mlp = eqx.nn.MLP(3, 2, 8, 2, activation=jnp.tanh, key=jr.key(0))
    x = jr.normal(jr.key(1), (64, 3))
    small, info = id_prune(mlp, x, 0.25, weighted=True)
    assert info.widths_after.tolist() == [3, 6, 6, 2]
    ```

    Chee, Flynn, Damle, De Sa, *Model Preserving Compression for Neural Networks*, NeurIPS 2022.
    """
    check_flag(weighted, "weighted")

    def selector(h, w, k):
        return id_select(h, w, k, weighted=weighted)

    method = "id_prune" + ("_weighted" if weighted else "")
    options = dict(sequential=sequential, damping=damping, reconstruct=reconstruct, ridge=ridge, throw=throw)
    return prune_by_selector(method, selector, model, x_calib, sparsity, **options)


# fmt: off
register_compressor(Compressor("id_prune", id_prune, "sparsity", NEURON_SPARSITY + ", kept by an interpolative decomposition of the activations (pivoted Cholesky), then reconstructed", structured=True, needs_data=True, per_layer=True))  # noqa: E501
# fmt: on
