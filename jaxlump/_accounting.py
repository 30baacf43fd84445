"""Parameter, non-zero, FLOP and latency accounting — the one function every result uses.

Conventions (documented in `docs/accounting.md`):

- `dense_params`: weights + biases that the model stores densely, counting only *live* neurons
  (a masked-but-not-shrunk model is counted as its shrunk self); layers without bias count none.
- `nonzeros`: of those, how many are non-zero (what unstructured pruning reduces).
- `flops`: dense floating-point operations of one forward pass for one example:
  `Σ_l 2·n_{l-1}·n_l` (multiply-adds) `+ n_l` per bias, activations not counted. Unstructured
  masks do not reduce it: dense kernels multiply the zeros too.
"""

import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int

from ._adapters import to_chain
from ._errors import check_positive_int
from ._network import DenseChain


class Cost(eqx.Module):
    """Size and cost of one model (see module docs for the conventions)."""

    dense_params: Int[Array, ""]
    nonzeros: Int[Array, ""]
    flops: Int[Array, ""]

    def __repr__(self):  # concise in tables and notebooks
        return f"Cost(dense_params={self.dense_params}, nonzeros={self.nonzeros}, flops={self.flops})"


def widths_dense_params(widths, use_bias=None, gated=None) -> int:
    """Dense parameters of a chain with layer widths `widths` (`use_bias[l]`: whether layer `l` has a bias; default
    all; `gated[l]`: whether layer `l` is gated, default none), without building it: what
    `chain_cost(...).dense_params` gives for those widths."""
    use_bias = (True,) * (len(widths) - 1) if use_bias is None else use_bias
    gated = (False,) * (len(widths) - 1) if gated is None else gated
    return sum(
        (2 if gate else 1) * (a * b + (b if bias else 0))
        for a, b, bias, gate in zip(widths[:-1], widths[1:], use_bias, gated)
    )


def chain_cost(chain: DenseChain, neuron_masks=None) -> Cost:
    """`Cost` of a canonical chain; `neuron_masks[l]` marks the live neurons of hidden layer `l+1`. A gated layer
    counts twice (its gate weights and bias beside its up weights and bias; the elementwise product, like every
    activation, is not counted)."""
    arrays = [*jax.tree_util.tree_leaves(chain), *(neuron_masks or ())]
    # NumPy for concrete models: eager JAX would compile every reduction anew for each model shape.
    xp = jnp if any(isinstance(a, jax.core.Tracer) for a in arrays) else np
    widths = chain.widths
    hidden = [xp.ones(n, bool) for n in widths[1:-1]] if neuron_masks is None else neuron_masks
    live = [xp.ones(widths[0], bool), *(xp.asarray(m, bool) for m in hidden), xp.ones(widths[-1], bool)]
    dense = nonzero = flops = 0
    for l, (w, b, has_bias) in enumerate(zip(chain.weights, chain.biases, chain.use_bias)):
        n_out, n_in = xp.sum(live[l + 1]), xp.sum(live[l])
        block = live[l + 1][:, None] & live[l][None, :]
        bias_params = n_out if has_bias else 0
        dense = dense + n_out * n_in + bias_params
        nonzero = nonzero + xp.sum(block & (xp.asarray(w) != 0))
        nonzero = nonzero + (xp.sum(live[l + 1] & (xp.asarray(b) != 0)) if has_bias else 0)
        flops = flops + 2 * n_out * n_in + bias_params
        if chain.gated[l]:
            g, gb = chain.gate_weights[l], chain.gate_biases[l]
            dense = dense + n_out * n_in + bias_params
            nonzero = nonzero + xp.sum(block & (xp.asarray(g) != 0))
            nonzero = nonzero + (xp.sum(live[l + 1] & (xp.asarray(gb) != 0)) if has_bias else 0)
            flops = flops + 2 * n_out * n_in + bias_params
    return Cost(jnp.asarray(dense), jnp.asarray(nonzero), jnp.asarray(flops))


def cost(model, neuron_masks=None) -> Cost:
    """Dense parameters, non-zeros and dense FLOPs per example of `model`.

    **Arguments:**

    - `model`: any supported model (`eqx.nn.MLP`, `eqx.nn.Sequential`, `LumpedMLP`, NNX, `SkipMLP`).
    - `neuron_masks`: optional live-neuron masks per hidden layer (for fixed-shape masked results): one boolean
      (or 0/1) vector per hidden layer, of that layer's width. Not for a `SkipMLP`, which has no masked form.

    **Returns:** a `Cost`.

    **Raises:** `TypeError`/`ValueError` for `neuron_masks` that do not fit the model, or given with a `SkipMLP`.

    ```python
    import equinox as eqx, jax.random as jr, jaxlump
    mlp = eqx.nn.MLP(3, 2, 8, 2, key=jr.key(0))
    c = jaxlump.cost(mlp)
    assert int(c.dense_params) == 3 * 8 + 8 + 8 * 8 + 8 + 8 * 2 + 2
    ```
    """
    own_cost = getattr(model, "cost", None)
    if callable(own_cost) and not isinstance(model, DenseChain):
        if neuron_masks is not None:
            raise ValueError(
                f"`neuron_masks` does not apply to a {type(model).__name__}: it has no masked form (its neurons are "
                "removed physically), so its cost is that of its stored layers; pass `neuron_masks=None`."
            )
        return own_cost()
    chain = to_chain(model)
    return chain_cost(chain, None if neuron_masks is None else _check_neuron_masks(neuron_masks, chain.widths))


def _check_neuron_masks(masks, widths) -> tuple:
    """One 1-D boolean or 0/1 mask per hidden layer, of that layer's width (traced masks: shapes only)."""
    hidden = tuple(widths[1:-1])
    if isinstance(masks, (str, bytes)) or not isinstance(masks, (tuple, list)) or len(masks) != len(hidden):
        length = f" of length {len(masks)}" if hasattr(masks, "__len__") else ""
        raise TypeError(
            f"`neuron_masks` must be a sequence of {len(hidden)} live-neuron masks, one per hidden layer of widths "
            f"{hidden}; received {type(masks).__name__}{length}."
        )
    for l, (mask, n) in enumerate(zip(masks, hidden), start=1):
        shape = np.shape(mask)
        if shape != (n,):
            raise ValueError(f"`neuron_masks[{l - 1}]` must have shape ({n},) (hidden layer {l}); received {shape}.")
        if not isinstance(mask, jax.core.Tracer):
            values = np.asarray(mask)
            if values.dtype != bool and not (values.dtype.kind in "iuf" and np.all((values == 0) | (values == 1))):
                raise ValueError(
                    f"`neuron_masks[{l - 1}]` must hold booleans or 0/1; received dtype {values.dtype} with values "
                    f"{np.unique(values)[:5].tolist()}."
                )
    return tuple(masks)


def measure_latency(model, batch_size: int = 1, *, repeats: int = 50, warmup: int = 5, key=None) -> float:
    """Median wall time in seconds of a jitted forward pass on a batch, after warm-up.

    Masks buy no speed without sparse kernels: a pruned-but-same-shape model measures like the
    dense one; a physically smaller (lumped, structurally pruned) model measures faster.

    **Arguments:**

    - `model`: any supported model.
    - `batch_size`: examples per forward pass, an integer >= 1.
    - `repeats`: timed passes, an integer >= 1 (the median is returned).
    - `warmup`: untimed passes before timing, an integer >= 0 (at least one is always run: it compiles).
    - `key`: PRNG key for the random input batch (default `jax.random.key(0)`).

    **Returns:** the median time in seconds, a float.

    **Raises:** `TypeError`/`ValueError` for counts that are not integers in range.

    ```python
    import equinox as eqx, jax.random as jr, jaxlump
    seconds = jaxlump.measure_latency(eqx.nn.MLP(3, 2, 8, 2, key=jr.key(0)), 4, repeats=3)
    assert seconds > 0
    ```
    """
    batch_size = check_positive_int(batch_size, "batch_size")
    repeats = check_positive_int(repeats, "repeats")
    warmup = check_positive_int(warmup, "warmup", minimum=0)
    n_in = to_chain(model).widths[0] if getattr(model, "cost", None) is None else model.in_size
    key = jax.random.key(0) if key is None else key
    x = jax.random.normal(key, (int(batch_size), n_in), dtype=_dtype(model))
    forward = eqx.filter_jit(jax.vmap(lambda m, xi: m(xi), in_axes=(None, 0)))
    for _ in range(max(1, warmup)):
        forward(model, x).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        forward(model, x).block_until_ready()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _dtype(model):
    leaves = [leaf for leaf in jax.tree_util.tree_leaves(model) if eqx.is_inexact_array(leaf)]
    return leaves[0].dtype if leaves else jnp.result_type(float)
