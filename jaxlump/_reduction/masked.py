"""Fixed-shape (masked) results and `shrink`, which turns them into physically smaller models."""

import jax.numpy as jnp
import numpy as np

from .._accounting import chain_cost
from .._adapters import from_chain, to_chain
from .._errors import is_traced
from .._info import CompressionInfo, live_widths
from .._network import DenseChain


def live_neurons(labels) -> np.ndarray:
    """Indices of the compressed neurons something maps to (concrete labels only)."""
    labels = np.asarray(labels)
    return np.flatnonzero(np.bincount(labels[labels >= 0], minlength=labels.shape[0]) > 0)


def compact(labels) -> tuple[jnp.ndarray, int]:
    """Relabel to `0..k-1` in the order of the live indices (removed neurons stay -1)."""
    labels = np.asarray(labels)
    live = live_neurons(labels)
    position = np.full(max(labels.max(initial=-1) + 1, 1), -1)
    position[live] = np.arange(live.size)
    return jnp.asarray(np.where(labels >= 0, position[np.maximum(labels, 0)], -1)), int(live.size)


def gather_live(chain: DenseChain, live: list[np.ndarray]) -> DenseChain:
    """Keep only the live neurons (`live[l]`: indices for every layer, input and output included)."""
    # NumPy: shapes change here, and eager JAX gathers would compile once per new shape.
    weights = tuple(jnp.asarray(np.asarray(w)[np.ix_(live[l + 1], live[l])]) for l, w in enumerate(chain.weights))
    biases = tuple(jnp.asarray(np.asarray(b)[live[l + 1]]) for l, b in enumerate(chain.biases))
    return DenseChain(weights, biases, chain.activations, chain.use_bias)


def shrink(model, info: CompressionInfo):
    """Remove the neurons a fixed-shape result no longer uses; outside `jax.jit`.

    Neuron `r` of a hidden layer is live when some original neuron maps to it in
    `info.partitions`; everything else is dropped, so the model is physically smaller and gives the
    same outputs. Unstructured results (every neuron live) come back unchanged in shape.

    **Arguments:**

    - `model`: a fixed-shape result, e.g. from `jaxlump.lump_masked` or one slice of `jaxlump.sweep`.
    - `info`: its `CompressionInfo`.

    **Returns:** `(smaller_model, info)` with the partitions relabelled to the new indices.

    **Raises:** `ValueError` when called on traced values (inside `jax.jit`), or when `info` does
    not fit `model`.

    ```python
    import equinox as eqx, jax.random as jr, jaxlump
    mlp = eqx.nn.MLP(2, 1, 8, 2, key=jr.key(0))
    masked, info = jaxlump.lump_masked(mlp, None, 0.5)
    small, small_info = jaxlump.shrink(masked, info)
    ```
    """
    chain = to_chain(model, require_finite=False)  # a failed refit is reported in info.result, not refused here
    if any(is_traced(p) for p in info.partitions) or any(is_traced(w) for w in chain.weights):
        raise ValueError("`shrink` changes shapes and must be called outside jax.jit on concrete values.")
    widths = chain.widths
    if len(info.partitions) != len(widths) - 2:
        raise ValueError(
            f"`info` has {len(info.partitions)} hidden partitions but `model` has {len(widths) - 2} hidden layers."
        )
    hidden = [compact(p) for p in info.partitions]
    for l, p in enumerate(info.partitions, start=1):
        if int(np.max(np.asarray(p), initial=-1)) >= widths[l]:
            raise ValueError(
                f"`info.partitions[{l - 1}]` refers to neuron {int(np.max(p))}; layer {l} has {widths[l]}."
            )
    live = [np.arange(widths[0])] + [live_neurons(p) for p in info.partitions] + [np.arange(widths[-1])]
    small = gather_live(chain, live)
    masks = info.weight_masks
    if masks is not None:
        masks = tuple(jnp.asarray(np.asarray(m)[np.ix_(live[l + 1], live[l])]) for l, m in enumerate(masks))
    new_info = CompressionInfo(
        method=info.method,
        structured=info.structured,
        knob=info.knob,
        partitions=tuple(labels for labels, _ in hidden),
        weight_masks=masks,
        widths_before=info.widths_before,
        widths_after=live_widths(small.widths, tuple(labels for labels, _ in hidden)),
        cost_before=info.cost_before,
        cost_after=chain_cost(small),
        certificate=info.certificate,
        result=info.result,
    )
    return from_chain(small, like=model), new_info
