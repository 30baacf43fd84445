"""OSSCAR-style combinatorial local search: best-improvement swaps on top of structured OBS.

With `C = H Wᵀ` (n × m) the refit error of a kept set `S` is `E(S) = tr(W H Wᵀ) − g(S)`,
`g(S) = tr(C_Sᵀ H_SS⁻¹ C_S)`. For `M = H_SS⁻¹` and the refit `B = M C_S`, removing `i ∈ S` costs
`‖B_i‖² / M_ii`, and then adding `j ∉ S` gains `‖r_j‖² / d_j` with (through the rank-1 downdate of `M`)

    r_j = C_j − H_jS B + P_ji B_i / M_ii,   d_j = H_jj − H_jS M H_Sj + P_ji² / M_ii,   P = H_RS M,

so every swap of a sweep is scored in `O(|R| k (k + m))`; the best one is taken while it lowers `E`.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
from jaxtyping import ArrayLike, Float

from .._methods.registry import NEURON_SPARSITY, Compressor, register_compressor
from .._reconstruction.reconstruct import DEFAULT_RIDGE
from .._results.info import CompressionInfo
from .._sites.compress import over_sites
from ._obs import DEFAULT_DAMPING, obs_select, prune_by_selector


def swap_gains(h: np.ndarray, w: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """`g(S − i + j) − g(S)` for every kept `i` (rows, in index order) and removed `j` (columns, in index order)."""
    s, r = np.flatnonzero(keep), np.flatnonzero(~keep)
    c = h @ w.T
    m = np.linalg.inv(h[np.ix_(s, s)])
    b = m @ c[s]
    m_diag = np.diag(m)
    p = h[np.ix_(r, s)] @ m  # (|R|, k)
    residual = c[r] - h[np.ix_(r, s)] @ b  # (|R|, m)
    schur = np.diag(h)[r] - np.sum(p * h[np.ix_(r, s)], axis=1)  # (|R|,)
    b_norm2 = np.sum(b**2, axis=1)  # (k,)
    cross = residual @ b.T  # (|R|, k): r_j · B_i
    r_norm2 = (
        np.sum(residual**2, axis=1)[:, None] + 2 * p * cross / m_diag[None, :] + p**2 * (b_norm2 / m_diag**2)[None, :]
    )
    d = schur[:, None] + p**2 / m_diag[None, :]
    gains = r_norm2 / d - (b_norm2 / m_diag)[None, :]
    return gains.T


def refit_error(h: np.ndarray, w: np.ndarray, keep: np.ndarray) -> float:
    """`E(S) = tr(W H Wᵀ) − tr(C_Sᵀ H_SS⁻¹ C_S)`: the (damped) refit error of keeping `S`."""
    s = np.flatnonzero(keep)
    c = h @ w.T
    total = float(np.sum(w * (w @ h)))
    return total - float(np.sum(c[s] * np.linalg.solve(h[np.ix_(s, s)], c[s]))) if s.size else total


def local_search(h: np.ndarray, w: np.ndarray, keep: np.ndarray, max_swaps: int, tol: float = 1e-12) -> np.ndarray:
    """Best-improvement swaps from `keep` until none lowers the error by more than `tol` (relative) or
    `max_swaps` swaps were made."""
    keep = np.array(keep, bool)
    if keep.all() or not keep.any():
        return keep
    scale = max(float(np.sum(w * (w @ h))), np.finfo(np.float64).tiny)
    for _ in range(max_swaps):
        gains = swap_gains(h, w, keep)
        i, j = np.unravel_index(int(np.argmax(gains)), gains.shape)
        if gains[i, j] <= tol * scale:
            break
        kept, removed = np.flatnonzero(keep), np.flatnonzero(~keep)
        keep[kept[i]], keep[removed[j]] = False, True
    return keep


@over_sites
def osscar_prune(
    model: Any,
    x_calib: Float[ArrayLike, "batch in"],
    sparsity: float | Sequence[float],
    *,
    max_swaps: int | None = None,
    sequential: bool = False,
    damping: float = DEFAULT_DAMPING,
    reconstruct: bool = True,
    ridge: float = DEFAULT_RIDGE,
    throw: bool = True,
) -> tuple[Any, CompressionInfo]:
    """Structured pruning by OBS followed by OSSCAR-style swap local search on the refit error.

    Per hidden layer, start from `obs_prune`'s kept set and repeatedly make the swap (one kept neuron out, one
    removed neuron in) that lowers `E(S) = tr(W_R [(H⁻¹)_RR]⁻¹ W_Rᵀ)` the most, while one does (module docs for the
    closed-form swap scores). On the same Gram matrix its layer-wise refit error is never larger than OBS's.

    **Arguments:** as `obs_prune` (`throw` included), plus `max_swaps`: the most swaps per layer (default: the
    layer's width).

    **Returns:** `(new_model, info)`, physically smaller; partitions as `obs_prune`'s.

    **Raises:** as `obs_prune`, and `ValueError` for a negative `max_swaps`.

    ```python
    import equinox as eqx, jax.numpy as jnp, jax.random as jr
    from jaxlump.baselines import osscar_prune

    mlp = eqx.nn.MLP(3, 2, 8, 2, activation=jnp.tanh, key=jr.key(0))
    x = jr.normal(jr.key(1), (64, 3))
    small, info = osscar_prune(mlp, x, 0.5)
    assert info.widths_after.tolist() == [3, 4, 4, 2]
    ```

    Meng, Ibrahim, Behdin, Hazimeh, Ponomareva, Mazumder, *OSSCAR: One-Shot Structured Pruning in Vision and
    Language Models with Combinatorial Optimization*, ICML 2024 (the swap phase from the paper's description).
    """
    if max_swaps is not None and (not isinstance(max_swaps, int) or max_swaps < 0):
        raise ValueError(f"`max_swaps` must be None or an integer >= 0; received {max_swaps!r}.")

    def selector(h, w, k):
        return local_search(h, w, obs_select(h, w, k), h.shape[0] if max_swaps is None else max_swaps)

    options = dict(sequential=sequential, damping=damping, reconstruct=reconstruct, ridge=ridge, throw=throw)
    return prune_by_selector("osscar_prune", selector, model, x_calib, sparsity, **options)


# fmt: off
register_compressor(Compressor("osscar_prune", osscar_prune, "sparsity", NEURON_SPARSITY + ", chosen by OSSCAR's swap local search on the refit error, then reconstructed", structured=True, needs_data=True, per_layer=True))  # noqa: E501
# fmt: on
