"""The forward quotient (DESIGN §3, "Reduced network").

For target block H and source block B: `Ŵ[H, B] = mean_{m∈H} Σ_{k∈B} W_mk`, `b̂_H = mean_{m∈H} b_m` —
a merged neuron's incoming weights are its members' mean, its outgoing weights their sum (for a gated unit, both
its gate and its up rows are averaged). This is the
closest exact FDE to the network (the minimum-norm perturbation onto the exact-FDE constraints
separates per block pair) followed by the exact quotient.

Labels are per hidden layer, `labels[i] ∈ [0, num_blocks)`, or `-1` for a removed neuron. With
representative labels and `num_blocks = n` the result keeps its shape (the masked form: a block sits at
its representative's index, other rows and columns are zero); with compact labels it is physically smaller.
"""

import jax
import jax.numpy as jnp

from .._model.network import DenseChain


def block_counts(labels: jax.Array, num_blocks: int) -> jax.Array:
    return jax.ops.segment_sum(jnp.ones(labels.shape, jnp.int32), labels, num_blocks)


def mean_rows(matrix: jax.Array, labels: jax.Array, num_blocks: int) -> jax.Array:
    """Row `r` of the result is the mean of the rows `i` with `labels[i] == r` (zero if none)."""
    counts = block_counts(labels, num_blocks)
    totals = jax.ops.segment_sum(matrix, labels, num_blocks)
    return totals / jnp.maximum(counts, 1).astype(matrix.dtype).reshape((-1,) + (1,) * (matrix.ndim - 1))


def quotient(chain: DenseChain, labels: tuple[jax.Array, ...], num_blocks: tuple[int, ...]) -> DenseChain:
    """The reduced chain of `chain` under the hidden-layer partitions `labels`."""
    widths = chain.widths
    all_labels = (jnp.arange(widths[0]), *labels, jnp.arange(widths[-1]))
    all_blocks = (widths[0], *num_blocks, widths[-1])

    def merged(w, b, l):
        rows = mean_rows(jnp.concatenate([w, b[:, None]], axis=1), all_labels[l + 1], all_blocks[l + 1])
        w_rows, b_new = rows[:, :-1], rows[:, -1]
        return jax.ops.segment_sum(w_rows.T, all_labels[l], all_blocks[l]).T, b_new

    weights, biases = zip(*(merged(w, b, l) for l, (w, b) in enumerate(zip(chain.weights, chain.biases))))
    # A gated unit's producer is its gate row and its up row: both are averaged over the block.
    gates = tuple(
        None if g is None else merged(g, gb, l) for l, (g, gb) in enumerate(zip(chain.gate_weights, chain.gate_biases))
    )
    gate_weights = tuple(None if g is None else g[0] for g in gates)
    gate_biases = tuple(None if g is None else g[1] for g in gates)
    return DenseChain(weights, biases, chain.activations, chain.use_bias, gate_weights, gate_biases)
