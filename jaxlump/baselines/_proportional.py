"""Proportional lumping: merge neurons whose incoming weights and bias are positively proportional.

Exact for positively homogeneous activations (ReLU, leaky ReLU, identity): `σ(ρz) = ρσ(z)` for `ρ > 0`.
"""

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Float

from .._errors import check_bool, check_eps, is_per_layer, require_concrete
from .._methods.base import SURGERY, chain_and_data, finish_structured, layer_knob
from .._methods.registry import RELU_FAMILY, Compressor, register_compressor
from .._model import from_chain
from .._model.network import DenseChain, refuse_gated
from .._results.info import CompressionInfo
from .._sites.compress import over_sites

POSITIVELY_HOMOGENEOUS = ("relu", "leaky_relu", "identity")
_MAX_BLOCK_ENTRIES = 2**22  # entries of one (rows, n, d) block of pairwise differences


def _pairwise_distances(u: jax.Array) -> jax.Array:
    """`‖u_i − u_j‖₂` for all pairs, by differences (not the GEMM identity, whose cancellation would cost ~√eps)."""
    n, d = u.shape
    batch = max(1, _MAX_BLOCK_ENTRIES // max(1, n * d))
    return jax.lax.map(lambda ui: jnp.linalg.norm(u - ui[None], axis=1), u, batch_size=batch)


def _representatives(close: jax.Array, order: jax.Array) -> jax.Array:
    """Greedy representative refinement: visiting neurons in `order`, each joins the first earlier representative
    it is close to, or founds a block. Returns every neuron's representative."""
    n = close.shape[0]
    position = jnp.zeros(n, int).at[order].set(jnp.arange(n))

    def visit(is_rep, i):
        candidates = close[i] & is_rep
        found = jnp.any(candidates)
        rep = jnp.where(found, jnp.argmin(jnp.where(candidates, position, n)), i)
        return is_rep.at[i].set(~found), rep

    _, reps = jax.lax.scan(visit, jnp.zeros(n, bool), order)
    return jnp.zeros(n, int).at[order].set(reps)


@jax.jit
def _block_representatives(incoming: jax.Array, importance: jax.Array, tol: jax.Array) -> jax.Array:
    """Each neuron's representative, from the normalised augmented incoming rows `[W^l | b^l]`."""
    norms = jnp.linalg.norm(incoming, axis=1)
    unit = incoming / jnp.where(norms > 0, norms, 1.0)[:, None]
    rounding = 2 * incoming.shape[1] * jnp.finfo(incoming.dtype).eps
    close = _pairwise_distances(unit) <= tol + rounding
    return _representatives(close, jnp.argsort(-importance, stable=True))


def _lump_layer(incoming: np.ndarray, outgoing: np.ndarray, tol: float):
    """Blocks of one layer; returns (kept incoming rows, merged outgoing columns, partition)."""
    importance = np.linalg.norm(incoming, axis=1) * np.linalg.norm(outgoing, axis=0)
    rep_of = np.asarray(_block_representatives(incoming, importance, jnp.asarray(tol, incoming.dtype)))
    reps = np.flatnonzero(rep_of == np.arange(rep_of.size))
    block = np.searchsorted(reps, rep_of)  # blocks numbered in the order of their representatives
    rep_rows = incoming[rep_of]
    rep_sq = np.sum(rep_rows**2, axis=1)
    rho = np.sum(incoming * rep_rows, axis=1) / np.where(rep_sq > 0, rep_sq, 1.0)  # least-squares ratio
    merge = np.zeros((reps.size, rep_of.size), incoming.dtype)
    merge[block, np.arange(rep_of.size)] = rho
    return incoming[reps], outgoing @ merge.T, block


@over_sites
def proportional_lump(
    model: Any,
    x_calib: Float[ArrayLike, "batch in"] | None,
    tol: float | Sequence[float],
    *,
    throw: bool = True,
) -> tuple[Any, CompressionInfo]:
    """Lump hidden neurons whose incoming weights and bias are positively proportional (exact for ReLU).

    If `[W^l | b^l]_{m'} = ρ [W^l | b^l]_m` with `ρ > 0` and σ is positively homogeneous, then `a_{m'} = ρ a_m`,
    so `m'` is removed and `ρ W^{l+1}[:, m']` is added to column m — the function is unchanged. Rows are compared
    by the L2 distance of their normalised augmented rows, `‖r_m/‖r_m‖ − r_{m'}/‖r_{m'}‖‖₂ ≤ tol`
    (`= √(2 − 2 cos)`; only positive cosines, so `tol < √2`), plus a rounding allowance of `2·(n_{l-1}+1)·eps`,
    so `tol = 0` merges exactly proportional rows. Blocks are formed greedily: neurons are visited by decreasing
    `‖r_m‖·‖W^{l+1}[:, m]‖` and each joins the first representative within `tol` or founds a block; a member's
    ratio is the least-squares `ρ = ⟨r_{m'}, r_m⟩ / ‖r_m‖²` and the block keeps its representative's row. Layers
    are processed from the input, so layer l's rows use the columns merged at layer l−1. All-zero rows (dead
    neurons) form one block. No layer is emptied: every block keeps one neuron.

    **Arguments:**

    - `model`: an `eqx.nn.MLP`, `eqx.nn.Sequential`, `LumpedMLP` or NNX chain whose hidden activations are ReLU,
      leaky ReLU or identity; not modified.
    - `x_calib`: accepted for the common call shape and validated when given; the criterion is data-free.
    - `tol`: the distance threshold, in `[0, √2)` (0: exactly proportional rows only), or one per hidden
      layer (a tuple: `jaxlump.baselines.compress_to` sets each layer's width with it).
    - `throw`: raise a `jaxlump.CompressionError` if the result is not finite (default); `False` reports it in
      `info.result` instead.

    **Returns:** `(new_model, info)`: the same kind of model (an `eqx.nn.MLP` with unequal hidden widths becomes a
    `LumpedMLP`) and a `CompressionInfo` whose partitions give each original neuron's block (merged neurons share
    an index), `knob = tol` (NaN when given per layer).

    **Raises:** `TypeError` for other hidden activations or an unsupported model; `ValueError` for `tol` outside
    `[0, √2)` and for empty, non-finite or wrongly sized `x_calib`.

    ```python
    import jax, jax.numpy as jnp, jax.random as jr
    from jaxlump._model.network import DenseChain
    from jaxlump.baselines._proportional import proportional_lump

    w1 = jr.normal(jr.key(0), (3, 2))
    w1 = w1.at[2].set(2.5 * w1[0])  # neuron 2 = 2.5 x neuron 0
    chain = DenseChain((w1, jnp.ones((1, 3))), (jnp.zeros(3), jnp.zeros(1)), ("relu", "identity"), (True, True))
    small, info = proportional_lump(chain, None, 0.0)
    x = jr.normal(jr.key(1), (5, 2))
    assert small.widths == (2, 2, 1) and jnp.allclose(small(x), chain(x))
    ```

    The proportional (ρ > 0) form of exact lumping for ReLU networks: Ressi, Romanello, Piazza, Rossi, *Neural
    networks reduction via lumping*, AIxIA 2023 (arXiv 2209.07475); DESIGN §3 "Exactness".
    """
    require_concrete("jaxlump.baselines.proportional_lump", SURGERY, model=model, x_calib=x_calib, tol=tol)
    throw = check_bool(throw, "throw")
    per_layer = is_per_layer(tol)
    tols = [float(check_eps(t, f"tol[{i}]" if per_layer else "tol")) for i, t in enumerate(tol if per_layer else [tol])]
    if not max(tols, default=0.0) < math.sqrt(2):
        raise ValueError(f"`tol` must lie in [0, √2) (a positive cosine between rows); received {tol!r}.")
    chain, x = chain_and_data(model, x_calib, required=False)
    refuse_gated(chain, "model", "jaxlump.baselines.proportional_lump")
    if per_layer and len(tols) != chain.n_layers - 1:
        raise ValueError(
            f"`tol` as one threshold per hidden layer must hold {chain.n_layers - 1} numbers (the model has "
            f"{chain.n_layers - 1} hidden layers); received {tol!r}."
        )
    tol = tuple(tols) if per_layer else tols[0]
    for l, act in enumerate(chain.activations[:-1], start=1):
        if act not in POSITIVELY_HOMOGENEOUS:
            raise TypeError(
                f"`model`: hidden layer {l} uses activation {act!r}; proportional lumping is exact only for "
                f"positively homogeneous activations ({', '.join(POSITIVELY_HOMOGENEOUS)})."
            )
    # The merge has data-dependent shapes: it runs on the host in NumPy; the pairwise search is jitted.
    weights, biases = [np.asarray(w) for w in chain.weights], [np.asarray(b) for b in chain.biases]
    partitions = []
    for l in range(1, chain.n_layers):
        incoming = np.concatenate([weights[l - 1], biases[l - 1][:, None]], axis=1)
        rows, weights[l], block = _lump_layer(incoming, weights[l], layer_knob(tol, l - 1))
        weights[l - 1], biases[l - 1] = rows[:, :-1], rows[:, -1]
        partitions.append(block)
    weights, biases = tuple(map(jnp.asarray, weights)), tuple(map(jnp.asarray, biases))
    new_model = from_chain(DenseChain(weights, biases, chain.activations, chain.use_bias), like=model)
    return finish_structured("proportional_lump", tol, model, new_model, chain.widths, partitions, x, throw)


# fmt: off
register_compressor(Compressor("proportional_lump", proportional_lump, "tol", "distance tol ∈ [0, √2) between normalised incoming rows; tol = 0 merges exactly proportional neurons, larger tol merges more", structured=True, needs_data=False, knob_range=(0.0, 1.414), activations=(*RELU_FAMILY, "identity"), per_layer=True))  # noqa: E501
# fmt: on
