"""Streamed, Gram-only calibration statistics of a network's hidden layers.

What the scalable merge-or-remove path (`jaxlump._methods.rounds`) needs from the calibration data, accumulated over
batches of rows so the `N × n` activation matrix of a layer never exists at once:

- the centred Gram `F_cᵀF_c` of each hidden layer's activations (`Σ aaᵀ − N ā āᵀ`, accumulated in the dtype of the
  statistics: float64 under `jax.enable_x64`) — with the next layer's original weights `W₀` it is the whole
  least-squares problem of structured OBS, since the targets' cross moments are `F_cᵀZ = F_cᵀF_c W₀ᵀ`;
- a *sketch*: the pre-activations on `sketch_rows` evenly spaced rows (all rows when there are fewer), from which
  each neuron's merge candidates (its nearest neighbours in pre-activation) and the nonlinear part of a merge's
  cost are estimated;
- for each candidate pair, the exact squared distance of the two pre-activations summed over *every* row, so an
  exact duplicate (pre-activations that coincide on the data) is recognised exactly, not from the sketch.

Memory per layer `O(n² + S n + n k)`; time `O(N n (n + k))` (one GEMM per batch).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from .._model.network import DenseChain

_HIGHEST = jax.lax.Precision.HIGHEST
_BLOCK_BUDGET = 2**24  # elements of one block of the candidates' distance matrix
# Streamed passes take batches of at most this many activations of the widest layer (128 MiB in float64; see
# `batch_rows_for`).
_BATCH_ELEMENTS = 2**24
_MIN_BATCH_ROWS = 256


def batch_rows_for(n_rows: int, widest: int) -> int:
    """Rows per batch for `n_rows` calibration rows through a network whose widest layer is `widest`: all of them
    unless that layer's activations on them would exceed `_BATCH_ELEMENTS` entries (never fewer than
    `_MIN_BATCH_ROWS` rows): the usual calibration set of a small network is one batch."""
    return max(1, min(n_rows, max(_MIN_BATCH_ROWS, _BATCH_ELEMENTS // max(widest, 1))))


def row_batches(x: jax.Array, rows: int) -> tuple[jax.Array, jax.Array]:
    """The calibration rows `x` (`(N, n_0)`) as `(batches, valid)`, `(B, rows, n_0)` and `(B, rows)`: every batch has
    the same number of rows (one compilation), the last padded with zero rows that `valid` marks."""
    n_rows = x.shape[0]
    count = -(-n_rows // rows)
    padded = jnp.pad(x, ((0, count * rows - n_rows), (0, 0)))
    valid = jnp.arange(count * rows) < n_rows
    return padded.reshape(count, rows, x.shape[1]), valid.reshape(count, rows)


def fold_batches(fn, init, batches, valid):
    """`fn(total, batch, valid)` folded over the batches (no loop for a single batch: XLA then shares its work with
    the passes around it)."""
    if jax.tree_util.tree_leaves(batches)[0].shape[0] == 1:
        return fn(init, jax.tree_util.tree_map(lambda b: b[0], batches), valid[0])
    return jax.lax.scan(lambda total, item: (fn(total, *item), None), init, (batches, valid))[0]


class LayerStatistics(eqx.Module):
    """One hidden layer's calibration statistics (see the module docstring). A gated layer's pre-activations stack
    the gate's above the up's along the rows (`sketch`: `(2S, n)`), as `jaxlump._criteria.merge_cost` does."""

    gram: jax.Array  # centred (when the next layer has a bias) Gram of the activations, (n, n), undamped
    count: jax.Array  # N, the number of calibration rows
    pre_square: jax.Array  # Σ z² over every row (and both halves of a gated layer)
    sketch: jax.Array  # pre-activations on the sketch rows, (S, n) or (2S, n)
    partners: jax.Array  # each neuron's merge candidates, (n, k)
    gap: jax.Array  # Σ over every row of (z_i − z_partner)², (n, k)


def sketch_rows(n_rows: int, size: int) -> np.ndarray:
    """`size` evenly spaced row indices of `n_rows` (all of them when `size ≥ n_rows`)."""
    if size >= n_rows:
        return np.arange(n_rows)
    return np.unique(np.linspace(0, n_rows - 1, size).round().astype(int))


def _stacked(z) -> jax.Array:
    return jnp.concatenate(z, axis=0) if isinstance(z, tuple) else z


def nearest_partners(pre: jax.Array, k: int) -> jax.Array:
    """Each column's `k` nearest other columns of `pre` (`(S, n)`) in Euclidean distance, `(n, k)`; ties to the
    lower index. Computed a block of rows at a time (the `n × n` distance matrix never exists)."""
    n = pre.shape[1]
    gram = jnp.einsum("si,sj->ij", pre, pre, precision=_HIGHEST)
    norms = jnp.diag(gram)
    rows = max(1, min(n, _BLOCK_BUDGET // max(n, 1)))
    n_blocks = -(-n // rows)
    index = jnp.minimum(jnp.arange(n_blocks * rows), n - 1).reshape(n_blocks, rows)

    def block(i):
        distance = norms[i][:, None] + norms[None, :] - 2 * gram[i]
        distance = jnp.where(i[:, None] == jnp.arange(n)[None, :], jnp.inf, distance)
        return jax.lax.top_k(-distance, k)[1]

    return jax.lax.map(block, index).reshape(-1, k)[:n]


@eqx.filter_jit
def _sketch_partners(chain: DenseChain, x_sketch, k: int):
    zs, _ = chain.forward(x_sketch)
    sketches = tuple(_stacked(z) for z in zs[:-1])
    return sketches, tuple(nearest_partners(s, min(k, s.shape[1] - 1)) for s in sketches)


def _partial_sums(chain: DenseChain, partners, batch, valid):
    """One batch's moments per hidden layer (rows where `valid` is False count for nothing)."""
    zs, acts = chain.forward(batch)
    weight = valid.astype(batch.dtype)[:, None]
    out = []
    for z, a, p in zip(zs[:-1], acts[1:-1], partners):
        a = a * weight
        z = _stacked(z) * jnp.concatenate([weight] * (2 if isinstance(z, tuple) else 1), axis=0)
        pair_gap = jnp.stack([jnp.sum((z - z[:, p[:, r]]) ** 2, axis=0) for r in range(p.shape[1])], axis=1)
        out.append(
            (
                jnp.sum(weight),
                jnp.sum(a, axis=0),
                jnp.einsum("si,sj->ij", a, a, precision=_HIGHEST),
                jnp.sum(z**2),
                pair_gap,
            )
        )
    return tuple(out)


@eqx.filter_jit
def _accumulate(chain: DenseChain, partners, totals, batch, valid, mesh: Mesh | None):
    """`totals` plus one batch's moments; with a `mesh` the batch's rows are split over its devices, each device sums
    its rows and `psum` adds the devices' sums (data parallel)."""
    if mesh is None:
        sums = _partial_sums(chain, partners, batch, valid)
    else:
        axis = mesh.axis_names[0]
        arrays, static = eqx.partition(chain, eqx.is_array)

        def local(arrays, partners, batch, valid):
            return jax.lax.psum(_partial_sums(eqx.combine(arrays, static), partners, batch, valid), axis)

        replicated, rows = PartitionSpec(), PartitionSpec(axis)
        sums = jax.shard_map(
            local, mesh=mesh, in_specs=(replicated, replicated, rows, rows), out_specs=replicated, check_vma=False
        )(arrays, partners, batch, valid)
    return jax.tree.map(jnp.add, totals, sums)


def layer_statistics(
    chain: DenseChain, x, *, sketch_size: int, candidates: int, batch_rows: int = 2048, mesh: Mesh | None = None
) -> tuple[LayerStatistics, ...]:
    """Every hidden layer's `LayerStatistics` on the calibration inputs `x` (`(N, n_0)`), streamed `batch_rows` rows
    at a time (the last batch padded and masked, so every batch has one shape and compiles once), each batch split
    over the devices of `mesh` when one is given (a 1-D mesh; the rows per batch rounded up to a multiple of its
    size). The Gram is centred for a layer whose next layer has a bias (its refit has an intercept)."""
    x = jnp.asarray(x)
    n_rows = x.shape[0]
    sketches, partners = _sketch_partners(chain, x[sketch_rows(n_rows, sketch_size)], candidates)
    dtype = x.dtype
    totals = tuple(
        (
            jnp.zeros((), dtype),
            jnp.zeros(s.shape[1], dtype),
            jnp.zeros((s.shape[1], s.shape[1]), dtype),
            jnp.zeros((), dtype),
            jnp.zeros(p.shape, dtype),
        )
        for s, p in zip(sketches, partners)
    )
    size = 1 if mesh is None else mesh.devices.size
    batches, valid = row_batches(x, -(-min(batch_rows, n_rows) // size) * size)
    for index in range(batches.shape[0]):  # by index: `x` may span several processes (`jax.distributed`)
        totals = _accumulate(chain, partners, totals, batches[index], valid[index], mesh)
    stats = []
    for l, ((count, first, second, square, gap), sketch, p) in enumerate(zip(totals, sketches, partners)):
        mean = first / count
        gram = second - count * jnp.outer(mean, mean) if chain.use_bias[l + 1] else second
        stats.append(LayerStatistics(gram, count, square, sketch, p, gap))
    return tuple(stats)
