"""Activation-whitened low-rank factorisation (SVD-LLM), the non-neuron structured reference.

For a layer `z = W a + b` with centred calibration inputs `A_c` and `H = A_cᵀA_c + λI = L Lᵀ` (Cholesky),
`‖A_c Wᵀ − A_c W̃ᵀ‖_F² = ‖(W − W̃) L‖_F²`, so with `W L = U Σ Vᵀ` the best rank-`r` map is
`W̃ = U_r Σ_r V_rᵀ L⁻¹` and its loss is `Σ_{i>r} σ_i²` (Eckart–Young; it attains the oracle bound of a linear map).
The bias keeps the means: `b̃ = b + (W − W̃) ā`. The layer becomes two: `V_rᵀL⁻¹` (no bias, identity activation),
then `U_rΣ_r` with `b̃` and the original activation — `r(m + n) + m` parameters instead of `mn + m`.

Checked, per layer in order (`info.result`; `throw=True` raises): a Gram matrix with NaN or inf (the activations
overflowed) leaves the layer dense and reports `RESULTS.least_squares_nonfinite`; a singular one (`damping=0` with fewer
independent calibration inputs than the layer's width: Cholesky fails) is whitened by the square root
`Q₊Λ₊^{1/2}` of its positive eigenpairs instead — the minimum-norm optimum — and reports
`RESULTS.least_squares_rank_deficient`; a factorised model with NaN or inf reports `RESULTS.nonfinite_result`.
"""

from typing import Any

import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Float

from .._errors import RESULTS, check_bool, check_fraction, check_nonnegative, combine, host_rows, raise_if_failed
from .._methods.base import chain_and_data
from .._methods.registry import Compressor, register_compressor
from .._model import sequential_of
from .._model.network import DenseChain, refuse_gated
from .._reconstruction.reconstruct import result_status
from .._results.info import CompressionInfo, compression_info
from .._sites.compress import over_sites
from ._obs import DEFAULT_DAMPING, centred_gram


def break_even_rank(m: int, n: int) -> int:
    """The largest rank whose factorisation `r(m + n)` is smaller than the dense `m n` weights."""
    return max((m * n - 1) // (m + n), 0)


def whitened_factors(w: ArrayLike, b: ArrayLike, a: ArrayLike, r: int, damping: float):
    """`((V, U, b̃), result)` with `W̃ = U V` the best rank-`r` map on the inputs `a` (module docs); `V`: (r, n),
    `U`: (m, r). `result` is `RESULTS.least_squares_rank_deficient` when the Gram matrix is singular (then `V` is
    `V_rᵀ Λ₊^{-1/2} Q₊ᵀ`, the minimum-norm choice); when it holds NaN or inf, `(None, least_squares_nonfinite)`."""
    w, b = np.asarray(w, np.float64), np.asarray(b, np.float64)
    h = centred_gram(a, damping)
    if not np.all(np.isfinite(h)):
        return None, RESULTS.least_squares_nonfinite
    try:
        lower = np.linalg.cholesky(h)
        u, s, vt = np.linalg.svd(w @ lower, full_matrices=False)
        v = np.linalg.solve(lower.T, vt[:r].T).T  # V_rᵀ L⁻¹
        result = RESULTS.successful
    except np.linalg.LinAlgError:
        values, vectors = np.linalg.eigh(h)
        positive = values > h.shape[0] * np.finfo(np.float64).eps * max(values.max(), 0.0)
        root = vectors[:, positive] * np.sqrt(values[positive])  # H = root rootᵀ on its range
        u, s, vt = np.linalg.svd(w @ root, full_matrices=False)
        pad = max(r - s.size, 0)  # the range may hold fewer than r directions: the rest of the factors are zero
        u, s = np.pad(u, ((0, 0), (0, pad))), np.pad(s, (0, pad))
        v = np.pad((vt[:r] / np.sqrt(values[positive])) @ vectors[:, positive].T, ((0, pad), (0, 0)))
        result = RESULTS.least_squares_rank_deficient
    left = u[:, :r] * s[:r]
    bias = b + (w - left @ v) @ host_rows(a).astype(np.float64).mean(axis=0)
    return (v, left, bias), result


@over_sites(refusal="it replaces a layer by a rank-r factorisation, adding a layer the model's class has no place for")
def lowrank(
    model: Any,
    x_calib: Float[ArrayLike, "batch in"],
    sparsity: float,
    *,
    damping: float = DEFAULT_DAMPING,
    throw: bool = True,
) -> tuple[Any, CompressionInfo]:
    """Replace every layer by its activation-whitened best low-rank factorisation (SVD-LLM).

    Layer `l` (`m × n`) gets rank `r_l = max(1, ⌊(1 − s) r*_l⌋)` with `r*_l = ⌊(mn − 1)/(m + n)⌋` the break-even rank,
    whitened by its calibration inputs in the original network (module docs); layers whose break-even rank is 0 and
    every layer at `s = 0` stay dense. The result is a deeper chain: each factorised layer becomes an
    identity-activation bottleneck of width `r_l` followed by the layer's own activation.

    **Arguments:**

    - `model`: an `eqx.nn.MLP`, `eqx.nn.Sequential`, `LumpedMLP` or NNX chain; not modified.
    - `x_calib`: calibration inputs `(batch, n_0)`.
    - `sparsity`: in `[0, 1)`: how far below the break-even rank each layer goes.
    - `damping`: Gram damping relative to its mean diagonal (default 0.01).
    - `throw`: raise a `jaxlump.CompressionError` naming the failed stage (default); `False` returns the result with
      `info.result` set instead (module docs: NaN/inf or singular Gram matrices, a non-finite result).

    **Returns:** `(new_model, info)`: an `eqx.nn.Sequential` for an Equinox model, an `nnx.Sequential` for an NNX
    one, a `DenseChain` for a `DenseChain`, whatever the sparsity (also when nothing is factorised), and a
    `CompressionInfo` with `structured=True`; its
    `partitions` are the original hidden layers' (every neuron is kept: the bottlenecks are new layers),
    `widths_after` the new chain's widths.

    **Raises:** `ValueError` for a sparsity outside `[0, 1)`, a negative `damping`, or missing/bad `x_calib`;
    `CompressionError` for a failed stage when `throw=True`.

    The shared least-squares reconstruction does not apply (the depth changes); the factorisation is already the
    least-squares optimum of each layer's rank-`r` map.

    ```python
    import equinox as eqx, jax.numpy as jnp, jax.random as jr, jaxlump
    from jaxlump.baselines import lowrank

    mlp = eqx.nn.MLP(3, 2, 16, 2, activation=jnp.tanh, key=jr.key(0))
    small, info = lowrank(mlp, jr.normal(jr.key(1), (64, 3)), 0.5)
    assert int(jaxlump.cost(small).dense_params) < int(jaxlump.cost(mlp).dense_params)
    ```

    Wang, Zheng, Wan, Zhang, *SVD-LLM: Truncation-aware Singular Value Decomposition for Large Language Model
    Compression*, ICLR 2025.
    """
    sparsity = check_fraction(sparsity, "sparsity")
    damping, throw = check_nonnegative(damping, "damping"), check_bool(throw, "throw")
    chain, x = chain_and_data(model, x_calib, required=True, why="by lowrank")
    refuse_gated(chain, "model", "jaxlump.baselines.lowrank")
    _, acts = chain.forward(x)
    weights, biases, activations, use_bias, results = [], [], [], [], []
    for l, (w, b, act, has_bias) in enumerate(
        zip(chain.weights, chain.biases, chain.activations, chain.use_bias, strict=True)
    ):
        r_star = break_even_rank(*w.shape)
        r = max(1, int((1 - sparsity) * r_star))
        factors, result = (
            (None, RESULTS.successful) if sparsity == 0 or r_star == 0 else whitened_factors(w, b, acts[l], r, damping)
        )
        results.append(result)
        if factors is None:  # kept dense
            weights.append(w), biases.append(b), activations.append(act), use_bias.append(has_bias)
            continue
        v, left, bias = factors
        dtype = w.dtype
        weights += [jnp.asarray(v, dtype), jnp.asarray(left, dtype)]
        biases += [jnp.zeros(r, dtype), jnp.asarray(bias if has_bias else np.zeros_like(bias), dtype)]
        activations += ["identity", act]
        use_bias += [False, has_bias]
    new_chain = DenseChain(tuple(weights), tuple(biases), tuple(activations), tuple(use_bias))
    partitions = [jnp.arange(n) for n in chain.widths[1:-1]]
    result = combine(*results, result_status(new_chain))
    info = compression_info(
        "lowrank", sparsity, chain, new_chain, partitions, structured=True, result=result, x=x,
        widths_after=jnp.asarray(new_chain.widths),
    )  # fmt: skip
    raise_if_failed(info.result, None, throw, "jaxlump.baselines.lowrank")
    return sequential_of(model, new_chain), info


_DEEPER = (
    "it keeps every hidden neuron and replaces each layer by a rank-r factorisation, adding a bottleneck layer, so "
    "its result has no hidden widths to match"
)

# fmt: off
register_compressor(Compressor("lowrank", lowrank, "sparsity", "s ∈ [0, 1): how far below its break-even rank each layer's activation-whitened factorisation goes (SVD-LLM); larger s, lower rank", structured=True, needs_data=True, no_widths=_DEEPER))  # noqa: E501
# fmt: on
