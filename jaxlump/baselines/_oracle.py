"""The oracle for structured compression at width `k` (reference §6): a lower bound no width-`k` layer can beat,
and the exact best subset for small layers.

For hidden layer `l` with centred calibration activations `A_c` and the next layer's weight `W`, the next layer's
centred pre-activations are `Z_c = A_c Wᵀ`. Any replacement of layer `l` by `k` neurons of any kind feeds the affine
next layer an `N × k` matrix, so its centred pre-activations have rank ≤ `k` and (Eckart–Young)

    LB_l(k) = Σ_{i>k} σ_i(Z_c)² = Σ_{i>k} λ_i(W H_c Wᵀ),   H_c = A_cᵀA_c.

Pruning to a subset `S` with the least-squares refit reaches `E(S) = tr(W H_c Wᵀ) − tr(C_Sᵀ (H_c)_SS⁺ C_S)`,
`C = H_c Wᵀ`; `OPT_sel(k) = min_{|S|=k} E(S) ≥ LB_l(k)`.
"""

import itertools
from typing import Any

import numpy as np
from jaxtyping import ArrayLike, Float

from .._errors import check_data
from .._model import to_chain
from .._model.activations import ACTIVATIONS
from .._model.network import refuse_gated
from ._obs import centred_gram, hidden_activations

MAX_ENUMERATION_WIDTH = 16
_NUMPY = {"identity": lambda z: z, "tanh": np.tanh, "relu": lambda z: np.maximum(z, 0.0)}


def _grams(model, x_calib):
    chain = to_chain(model)
    refuse_gated(chain, "model", "the oracle baselines (rank_bounds, best_subset, layer_errors)")
    x = check_data(x_calib, "x_calib", width=chain.widths[0]).astype(chain.weights[0].dtype)
    return chain, [centred_gram(a, 0.0) for a in hidden_activations(chain, x)]


def rank_bounds(model: Any, x_calib: Float[ArrayLike, "batch in"]) -> tuple[np.ndarray, ...]:
    """Per hidden layer `l`, the array `LB_l(k)` for `k = 0, …, n_l` (module docs): the least squared error, over the
    calibration set, of the next layer's centred pre-activations that any width-`k` layer `l` can reach.

    **Arguments:** `model` (any model jaxlump reads), `x_calib` calibration inputs `(batch, n_0)`.

    **Returns:** a tuple with one float64 array of length `n_l + 1` per hidden layer (non-increasing, ending at 0).

    **Raises:** `ValueError` for missing, non-finite or wrongly sized `x_calib`; `TypeError` for an unsupported model.

    ```python
    import equinox as eqx, jax.numpy as jnp, jax.random as jr
    from jaxlump.baselines import rank_bounds

    mlp = eqx.nn.MLP(3, 2, 8, 2, activation=jnp.tanh, key=jr.key(0))
    bounds = rank_bounds(mlp, jr.normal(jr.key(1), (64, 3)))
    assert bounds[0].shape == (9,) and bounds[0][-1] == 0.0
    ```
    """
    chain, grams = _grams(model, x_calib)
    bounds = []
    for l, h in enumerate(grams, start=1):
        w = np.asarray(chain.weights[l], np.float64)
        eig = np.clip(np.sort(np.linalg.eigvalsh(w @ h @ w.T))[::-1], 0.0, None)
        eig = np.concatenate([eig, np.zeros(max(h.shape[0] - eig.size, 0))])[: h.shape[0]]
        tails = np.concatenate([np.cumsum(eig[::-1])[::-1], [0.0]])
        bounds.append(tails)
    return tuple(bounds)


def subset_errors(h: ArrayLike, w: ArrayLike, subsets: ArrayLike) -> np.ndarray:
    """`E(S)` (module docs, undamped, pseudo-inverse) for each row of `subsets`, a `(count, k)` index array."""
    h, w = np.asarray(h, np.float64), np.asarray(w, np.float64)
    c = h @ w.T
    total = float(np.sum(w * (w @ h)))
    subsets = np.asarray(subsets, int)
    if subsets.shape[1] == 0:
        return np.full(len(subsets), total)
    h_ss = h[subsets[:, :, None], subsets[:, None, :]]
    c_s = c[subsets]
    explained = np.einsum("bkm,bkj,bjm->b", c_s, np.linalg.pinv(h_ss, hermitian=True), c_s)
    return total - explained


def best_subset(model: Any, x_calib: Float[ArrayLike, "batch in"], layer: int, k: int) -> tuple[np.ndarray, float]:
    """The exact best `k` neurons of hidden layer `layer` (1-based) to keep, by enumerating every subset.

    **Arguments:** `model`, `x_calib` as `rank_bounds`; `layer` in `1..L−1`; `k` in `0..n_layer`. Layers wider than
    16 neurons are refused (C(n, k) subsets).

    **Returns:** `(keep_mask, error)`: the minimiser of `E(S)` (ties: the first subset in lexicographic order) and its
    error, comparable with `rank_bounds(...)[layer − 1][k]`.

    **Raises:** `TypeError` for a `layer` or `k` that is not an integer (`True` too); `ValueError` for a layer or `k`
    out of range or a layer wider than 16.

    ```python
    import equinox as eqx, jax.numpy as jnp, jax.random as jr
    from jaxlump.baselines import best_subset, rank_bounds

    mlp = eqx.nn.MLP(3, 2, 6, 2, activation=jnp.tanh, key=jr.key(0))
    x = jr.normal(jr.key(1), (64, 3))
    keep, error = best_subset(mlp, x, 1, 3)
    assert keep.sum() == 3 and error >= rank_bounds(mlp, x)[0][3] - 1e-9
    ```
    """
    for name, value in (("layer", layer), ("k", k)):  # a bool is an int in Python: `layer=True` would mean 1
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"`{name}` must be an integer; received {value!r} of type {type(value).__name__}.")
    chain, grams = _grams(model, x_calib)
    if not 1 <= layer < chain.n_layers:
        raise ValueError(f"`layer` must be a hidden layer in 1..{chain.n_layers - 1}; received {layer!r}.")
    n = chain.widths[layer]
    if n > MAX_ENUMERATION_WIDTH:
        raise ValueError(f"layer {layer} has {n} neurons; enumeration is limited to {MAX_ENUMERATION_WIDTH}.")
    if not 0 <= k <= n:
        raise ValueError(f"`k` must lie in 0..{n}; received {k!r}.")
    subsets = np.asarray(list(itertools.combinations(range(n), k)), int).reshape(-1, k)
    errors = subset_errors(grams[layer - 1], chain.weights[layer], subsets)
    best = int(np.argmin(errors))
    keep = np.zeros(n, bool)
    keep[subsets[best]] = True
    return keep, float(errors[best])


def _numpy_forward(chain, x) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Pre-activations and hidden activations in NumPy float64 (results of many shapes: no compilation each)."""
    a, zs, hidden = np.asarray(x, np.float64), [], []
    for l, (w, b, act) in enumerate(zip(chain.weights, chain.biases, chain.activations)):
        z = a @ np.asarray(w, np.float64).T + np.asarray(b, np.float64)
        a = _NUMPY.get(act, lambda v, name=act: np.asarray(ACTIVATIONS[name].fn(v)))(z)
        zs.append(z)
        if l < chain.n_layers - 1:
            hidden.append(a)
    return zs, hidden


def layer_errors(model: Any, compressed: Any, x_calib: Float[ArrayLike, "batch in"]) -> tuple[float, ...]:
    """Per hidden layer `l`, how well the compressed network's own layer-`l` activations `Ã` can predict the
    original's next pre-activations: `min_B ‖Z_c − Ã_c B‖_F²` (centred, least squares) on `x_calib`.

    This is what a width-`k_l` layer `l` leaves for the next layer to reach at best, whatever that layer does, so it is
    at least `rank_bounds(model, x)[l − 1][k_l]`; for a pruned first layer it equals the refit error `E(S)`.

    **Arguments:** the original `model`; a `compressed` model of the same depth; calibration inputs.

    **Returns:** one float per hidden layer.

    **Raises:** `ValueError` when the depths or input/output widths differ, or for bad `x_calib`.

    ```python
    import equinox as eqx, jax.numpy as jnp, jax.random as jr
    from jaxlump.baselines import layer_errors, obs_prune, rank_bounds

    mlp = eqx.nn.MLP(3, 2, 8, 2, activation=jnp.tanh, key=jr.key(0))
    x = jr.normal(jr.key(1), (64, 3))
    small, info = obs_prune(mlp, x, 0.5)
    assert layer_errors(mlp, small, x)[0] >= rank_bounds(mlp, x)[0][4] - 1e-9
    ```
    """
    chain, small = to_chain(model), to_chain(compressed, "compressed")
    refuse_gated(chain, "model", "jaxlump.baselines.layer_errors")
    if chain.n_layers != small.n_layers or chain.widths[0] != small.widths[0] or chain.widths[-1] != small.widths[-1]:
        raise ValueError(
            f"`compressed` (widths {small.widths}) must have the depth and ends of `model` ({chain.widths})."
        )
    x = check_data(x_calib, "x_calib", width=chain.widths[0]).astype(chain.weights[0].dtype)
    z = _numpy_forward(chain, x)[0]
    acts = _numpy_forward(small, x)[1]
    errors = []
    for l in range(1, chain.n_layers):
        target = np.asarray(z[l], np.float64)
        target = target - target.mean(axis=0)
        a = np.asarray(acts[l - 1], np.float64)
        a = a - a.mean(axis=0)
        coefficients = np.linalg.lstsq(a, target, rcond=None)[0]
        errors.append(float(np.sum((target - a @ coefficients) ** 2)))
    return tuple(errors)
