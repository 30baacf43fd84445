"""Shared builders of test networks with planted structure, and small helpers to compare results.

Planted networks are built from dyadic numbers (multiples of 2⁻⁸ of modest size), so every sum the
structural criterion forms is exact in float64: planted duplicates are duplicates bit for bit, and ε = 0
must find exactly them.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from jaxlump._adapters import to_chain

IDENTITY = eqx.nn.Identity()
ACTIVATIONS = {"tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid, "relu": jax.nn.relu, "identity": IDENTITY}
_GRID = 2.0**8


def _dyadic(key, shape, scale) -> np.ndarray:
    return np.round(np.asarray(jr.normal(key, shape)) * scale * _GRID) / _GRID


def planted_labels(key, width: int, groups: int) -> np.ndarray:
    """A random assignment of `width` neurons to `groups` non-empty groups (group ids `0..groups-1`)."""
    if not 1 <= groups <= width:
        raise ValueError(f"need 1 <= groups <= width; received groups={groups}, width={width}.")
    k_fill, k_perm = jr.split(key)
    labels = np.concatenate([np.arange(groups), np.asarray(jr.randint(k_fill, (width - groups,), 0, groups))])
    return labels[np.asarray(jr.permutation(k_perm, width))]


def planted_layer(key, group_labels, prev_labels, n_prev_groups: int, *, split: bool):
    """Weights `(n, n_prev)` and bias `(n,)` whose neurons of one group have equal aggregated coefficients.

    `split=True`: every neuron gets its own row, with only the sums over each previous group equal
    (the general exact-lumping condition); `split=False`: members of a group share the whole row.
    """
    k_coef, k_bias, k_rows = jr.split(key, 3)
    n_groups, n, n_prev = int(group_labels.max()) + 1, group_labels.size, prev_labels.size
    scale = 1.5 / np.sqrt(n_prev_groups)
    coefficients = _dyadic(k_coef, (n_groups, n_prev_groups), scale)[group_labels]
    bias = _dyadic(k_bias, (n_groups,), 0.5)[group_labels]
    rows = _dyadic(k_rows, (n if split else n_groups, n_prev), scale / 2)
    rows = rows if split else rows[group_labels]
    one_hot = np.eye(n_prev_groups)[prev_labels]
    deficit = coefficients - rows @ one_hot  # exact: dyadic numbers of modest size
    last_member = np.array([np.flatnonzero(prev_labels == g)[-1] for g in range(n_prev_groups)])
    rows[:, last_member] += deficit
    return rows, bias


def planted_mlp(key, widths, groups, activation="tanh", noise: float = 0.0, *, kind: str = "mlp", split: bool = True):
    """A network whose hidden layers contain planted exact (or, with `noise`, ε-near) duplicate neurons.

    **Arguments:**

    - `widths`: `(n_in, h_1, ..., h_k, n_out)`; `kind="mlp"` needs equal hidden widths.
    - `groups`: `(g_1, ..., g_k)`, the number of distinct neurons planted in each hidden layer.
    - `activation`: a name in `ACTIVATIONS` (the output layer is linear).
    - `noise`: each weight and bias gets `noise · mean|W^l|` Gaussian noise (near-duplicates).
    - `kind`: `"mlp"` (an `eqx.nn.MLP`) or `"sequential"` (`eqx.nn.Sequential` of `Linear` + `Lambda`).
    - `split`: see `planted_layer`.

    **Returns:** `(model, partitions)` with `partitions[l]` the planted group id of every neuron of hidden
    layer `l + 1`.
    """
    widths, groups = tuple(int(w) for w in widths), tuple(int(g) for g in groups)
    if len(groups) != len(widths) - 2:
        raise ValueError(f"one group count per hidden layer: widths {widths}, groups {groups}.")
    keys = jr.split(key, 2 * len(widths))
    prev_labels, n_prev_groups = np.arange(widths[0]), widths[0]
    weights, biases, partitions = [], [], []
    for l, (width, n_groups) in enumerate(zip(widths[1:-1], groups)):
        labels = planted_labels(keys[2 * l], width, n_groups)
        w, b = planted_layer(keys[2 * l + 1], labels, prev_labels, n_prev_groups, split=split)
        weights.append(w)
        biases.append(b)
        partitions.append(labels)
        prev_labels, n_prev_groups = labels, n_groups
    k_out_w, k_out_b = jr.split(keys[-1])
    weights.append(_dyadic(k_out_w, (widths[-1], widths[-2]), 1.0 / np.sqrt(widths[-2])))
    biases.append(_dyadic(k_out_b, (widths[-1],), 0.5))
    if noise:
        noise_keys = jr.split(keys[-2], 2 * len(weights))
        weights = [
            w + noise * np.mean(np.abs(w)) * np.asarray(jr.normal(k, w.shape)) for w, k in zip(weights, noise_keys)
        ]
        biases = [
            b + noise * np.mean(np.abs(w)) * np.asarray(jr.normal(k, b.shape))
            for w, b, k in zip(weights, biases, noise_keys[len(weights) :])
        ]
    return build(widths, weights, biases, activation, kind), tuple(partitions)


def build(widths, weights, biases, activation="tanh", kind: str = "mlp"):
    """An `eqx.nn.MLP` or `eqx.nn.Sequential` (float64) with the given parameters."""
    fn = ACTIVATIONS[activation]
    weights = [jnp.asarray(w, jnp.float64) for w in weights]
    biases = [jnp.asarray(b, jnp.float64) for b in biases]
    if kind == "mlp":
        hidden = set(widths[1:-1])
        if len(hidden) != 1:
            raise ValueError(f"eqx.nn.MLP needs equal hidden widths; received {widths}.")
        model = eqx.nn.MLP(
            widths[0], widths[-1], hidden.pop(), len(widths) - 2, activation=fn, dtype=jnp.float64, key=jr.key(0)
        )
        return eqx.tree_at(
            lambda m: [leaf for layer in m.layers for leaf in (layer.weight, layer.bias)],
            model,
            [leaf for pair in zip(weights, biases) for leaf in pair],
        )
    if kind == "sequential":
        layers = []
        for l, (w, b) in enumerate(zip(weights, biases)):
            linear = eqx.nn.Linear(w.shape[1], w.shape[0], dtype=jnp.float64, key=jr.key(l))
            layers.append(eqx.tree_at(lambda m: (m.weight, m.bias), linear, (w, b)))
            if l < len(weights) - 1:
                layers.append(eqx.nn.Lambda(fn) if activation != "identity" else IDENTITY)
        return eqx.nn.Sequential(layers)
    raise ValueError(f"unknown kind {kind!r}; expected 'mlp' or 'sequential'.")


def random_mlp(key, widths, activation="tanh", kind: str = "sequential"):
    """A network with Gaussian weights (`1/sqrt(fan_in)`) and no planted structure."""
    keys = jr.split(key, 2 * len(widths))
    weights = [
        np.asarray(jr.normal(keys[2 * l], (n_out, n_in))) / np.sqrt(n_in)
        for l, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:]))
    ]
    biases = [0.3 * np.asarray(jr.normal(keys[2 * l + 1], (n,))) for l, n in enumerate(widths[1:])]
    return build(widths, weights, biases, activation, kind)


def set_partition(labels) -> frozenset:
    """The set partition of neuron indices that labels describe (label `-1`: removed, ignored)."""
    labels = np.asarray(labels)
    return frozenset(frozenset(np.flatnonzero(labels == v).tolist()) for v in np.unique(labels[labels >= 0]))


def outputs(model, x) -> np.ndarray:
    return np.asarray(jax.vmap(model)(jnp.asarray(x)))


def parameters(model) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """`(weights, biases)` of any model jaxlump accepts, as NumPy arrays."""
    chain = to_chain(model)
    return [np.asarray(w) for w in chain.weights], [np.asarray(b) for b in chain.biases]


def hidden_widths(model) -> tuple[int, ...]:
    return to_chain(model).widths[1:-1]
