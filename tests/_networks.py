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

from jaxlump import baselines as B
from jaxlump._model import to_chain

IDENTITY = eqx.nn.Identity()
ACTIVATIONS = {"tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid, "relu": jax.nn.relu, "identity": IDENTITY}
_GRID = 2.0**8


def rng(key) -> np.random.Generator:
    """A NumPy generator determined by a JAX key."""
    return np.random.default_rng(np.asarray(jr.key_data(key)).ravel().tolist())


def _dyadic(generator, shape, scale) -> np.ndarray:
    return np.round(generator.standard_normal(shape) * scale * _GRID) / _GRID


def planted_labels(generator, width: int, groups: int) -> np.ndarray:
    """A random assignment of `width` neurons to `groups` non-empty groups (group ids `0..groups-1`)."""
    if not 1 <= groups <= width:
        raise ValueError(f"need 1 <= groups <= width; received groups={groups}, width={width}.")
    return generator.permutation(np.concatenate([np.arange(groups), generator.integers(0, groups, width - groups)]))


def planted_layer(generator, group_labels, prev_labels, n_prev_groups: int, *, split: bool):
    """Weights `(n, n_prev)` and bias `(n,)` whose neurons of one group have equal aggregated coefficients.

    `split=True`: every neuron gets its own row, with only the sums over each previous group equal
    (the general exact-lumping condition); `split=False`: members of a group share the whole row.
    """
    n_groups, n, n_prev = int(group_labels.max()) + 1, group_labels.size, prev_labels.size
    scale = 1.5 / np.sqrt(n_prev_groups)
    coefficients = _dyadic(generator, (n_groups, n_prev_groups), scale)[group_labels]
    bias = _dyadic(generator, (n_groups,), 0.5)[group_labels]
    rows = _dyadic(generator, (n if split else n_groups, n_prev), scale / 2)
    rows = rows if split else rows[group_labels]
    one_hot = np.eye(n_prev_groups)[prev_labels]
    deficit = coefficients - rows @ one_hot  # exact: dyadic numbers of modest size
    last_member = np.array([np.flatnonzero(prev_labels == g)[-1] for g in range(n_prev_groups)])
    rows[:, last_member] += deficit
    return rows, bias


def planted_mlp(key, widths, groups, activation="tanh", noise: float = 0.0, *, kind: str = "mlp", split: bool = True):
    """A network whose hidden layers contain planted exact (or, with `noise`, ε-near) duplicate neurons.

    **Arguments:**

    - `key`: a JAX PRNG key.
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
    generator = rng(key)
    prev_labels, n_prev_groups = np.arange(widths[0]), widths[0]
    weights, biases, partitions = [], [], []
    for width, n_groups in zip(widths[1:-1], groups):
        labels = planted_labels(generator, width, n_groups)
        w, b = planted_layer(generator, labels, prev_labels, n_prev_groups, split=split)
        weights.append(w)
        biases.append(b)
        partitions.append(labels)
        prev_labels, n_prev_groups = labels, n_groups
    weights.append(_dyadic(generator, (widths[-1], widths[-2]), 1.0 / np.sqrt(widths[-2])))
    biases.append(_dyadic(generator, (widths[-1],), 0.5))
    if noise:
        scales = [noise * np.mean(np.abs(w)) for w in weights]
        weights = [w + s * generator.standard_normal(w.shape) for w, s in zip(weights, scales)]
        biases = [b + s * generator.standard_normal(b.shape) for b, s in zip(biases, scales)]
    return build(widths, weights, biases, activation, kind), tuple(partitions)


def _linear(weight: np.ndarray, bias: np.ndarray) -> eqx.nn.Linear:
    linear = eqx.filter_eval_shape(eqx.nn.Linear, weight.shape[1], weight.shape[0], dtype=jnp.float64, key=jr.key(0))
    return eqx.tree_at(lambda m: (m.weight, m.bias), linear, (jnp.asarray(weight), jnp.asarray(bias)))


def build(widths, weights, biases, activation="tanh", kind: str = "mlp"):
    """An `eqx.nn.MLP` or `eqx.nn.Sequential` (float64) with the given parameters."""
    fn = ACTIVATIONS[activation]
    linears = [_linear(np.asarray(w, np.float64), np.asarray(b, np.float64)) for w, b in zip(weights, biases)]
    if kind == "mlp":
        hidden = set(widths[1:-1])
        if len(hidden) != 1:
            raise ValueError(f"eqx.nn.MLP needs equal hidden widths; received {widths}.")
        mlp = eqx.filter_eval_shape(
            eqx.nn.MLP, widths[0], widths[-1], hidden.pop(), len(widths) - 2, fn, dtype=jnp.float64, key=jr.key(0)
        )
        return eqx.tree_at(lambda m: m.layers, mlp, tuple(linears))
    if kind == "sequential":
        activation_layer = IDENTITY if activation == "identity" else eqx.nn.Lambda(fn)
        layers = [layer for linear in linears[:-1] for layer in (linear, activation_layer)]
        return eqx.nn.Sequential([*layers, linears[-1]])
    raise ValueError(f"unknown kind {kind!r}; expected 'mlp' or 'sequential'.")


def random_mlp(key, widths, activation="tanh", kind: str = "sequential"):
    """A network with Gaussian weights (`1/sqrt(fan_in)`) and biases (0.3) and no planted structure."""
    generator = rng(key)
    weights = [generator.standard_normal((n_out, n_in)) / np.sqrt(n_in) for n_in, n_out in zip(widths[:-1], widths[1:])]
    biases = [0.3 * generator.standard_normal(n) for n in widths[1:]]
    return build(widths, weights, biases, activation, kind)


def set_partition(labels) -> frozenset:
    """The set partition of neuron indices that labels describe (label `-1`: removed, ignored)."""
    labels = np.asarray(labels)
    return frozenset(frozenset(np.flatnonzero(labels == v).tolist()) for v in np.unique(labels[labels >= 0]))


def outputs(model, x) -> np.ndarray:
    """The model called on every example (JAX)."""
    return np.asarray(jax.vmap(model)(jnp.asarray(x)))


_NUMPY_ACTIVATIONS = {
    "tanh": np.tanh,
    "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
    "relu": lambda z: np.maximum(z, 0),
    "identity": lambda z: z,
}


def numpy_outputs(model, x) -> np.ndarray:
    """The model's function evaluated in NumPy from its parameters (no compilation per new shape)."""
    chain = to_chain(model)
    a = np.asarray(x)
    for w, b, act in zip(chain.weights, chain.biases, chain.activations):
        a = _NUMPY_ACTIVATIONS[act](a @ np.asarray(w).T + np.asarray(b))
    return a


def parameters(model) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """`(weights, biases)` of any model jaxlump accepts, as NumPy arrays."""
    chain = to_chain(model)
    return [np.asarray(w) for w in chain.weights], [np.asarray(b) for b in chain.biases]


def hidden_widths(model) -> tuple[int, ...]:
    return to_chain(model).widths[1:-1]


def overflowing(widths=(3, 6, 6, 2)):
    """Finite weights and data whose hidden activations (~1e200) have Gram matrices that overflow to inf."""
    weights, biases = parameters(random_mlp(jr.key(0), widths, "relu"))
    weights[0] = weights[0] * 1e200
    return build(widths, weights, biases, "relu", "sequential")


# The baselines' scope and score strategies by the names the NumPy references in the tests use.
SCOPES = {"global": B.Global(), "layer": B.PerLayer(), "row": B.PerRow()}
SCORES = {
    "norm": B.IncomingNorm(),
    "activation": B.MeanActivation(),
    "rate": B.ActivationRate(),
    "wanda": B.WandaScore(),
}
