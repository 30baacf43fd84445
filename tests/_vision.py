"""A convolutional network that users write, for the tests of channel sites (issue 30).

- `DigitsCNN`: two 3×3 convolutions with ReLU, a flatten and a linear classifier, as the Equinox CNN example writes
  it: called per example on an image `(1, 8, 8)` (`jax.vmap` it over the batch), returning 10 logits.
- `SmallCNN`: a smaller one for unit tests: images `(1, 6, 6)`, the second convolution with stride 2 and a tanh.
- `NnxCNN`: a Flax NNX one (channels last, BatchNorm, an average pool) on batches of images `(B, 6, 6, 1)`.
- `digits`, `train_cnn`: scikit-learn's digits (shipped inside the package) split 80/20, and optax Adam training.
- `plant_channels`: `k` extra output channels of a convolution that copy existing ones, with the consumer's input
  columns of each pair split between original and copy, so the model's output is unchanged.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from flax import nnx


class DigitsCNN(eqx.Module):
    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    head: eqx.nn.Linear

    def __init__(self, channels: tuple[int, int] = (16, 16), *, key):
        k1, k2, k3 = jr.split(key, 3)
        self.conv1 = eqx.nn.Conv2d(1, channels[0], 3, padding=1, key=k1)
        self.conv2 = eqx.nn.Conv2d(channels[0], channels[1], 3, padding=1, key=k2)
        self.head = eqx.nn.Linear(channels[1] * 8 * 8, 10, key=k3)

    def __call__(self, x):
        x = jax.nn.relu(self.conv1(x))
        x = jax.nn.relu(self.conv2(x))
        return self.head(x.reshape(-1))


class SmallCNN(eqx.Module):
    """Two 3×3 convolutions (the second with stride 2) with ReLU, flatten, a linear head; images `(1, 6, 6)`."""

    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    head: eqx.nn.Linear

    def __init__(self, key, c1=6, c2=5):
        k1, k2, k3 = jr.split(key, 3)
        self.conv1 = eqx.nn.Conv2d(1, c1, 3, padding=1, key=k1)
        self.conv2 = eqx.nn.Conv2d(c1, c2, 3, stride=2, padding=1, key=k2)
        self.head = eqx.nn.Linear(c2 * 9, 3, key=k3)

    def __call__(self, x):
        x = jax.nn.relu(self.conv1(x))
        x = jnp.tanh(self.conv2(x))
        return self.head(x.reshape(-1))


class NnxCNN(nnx.Module):
    """As Flax NNX users write a CNN: channels last, a BatchNorm after each convolution, an average pool, a flatten
    and a linear head, called on a batch of images `(B, 6, 6, 1)`; `model.eval()` before compressing."""

    def __init__(self, rngs: nnx.Rngs, channels: tuple[int, int] = (6, 5)):
        self.conv1 = nnx.Conv(1, channels[0], kernel_size=(3, 3), use_bias=False, rngs=rngs)
        self.bn1 = nnx.BatchNorm(channels[0], rngs=rngs)
        self.conv2 = nnx.Conv(channels[0], channels[1], kernel_size=(3, 3), rngs=rngs)
        self.bn2 = nnx.BatchNorm(channels[1], rngs=rngs)
        self.linear = nnx.Linear(channels[1] * 3 * 3, 3, rngs=rngs)

    def __call__(self, x):
        x = nnx.avg_pool(nnx.relu(self.bn1(self.conv1(x))), window_shape=(2, 2), strides=(2, 2))
        x = nnx.relu(self.bn2(self.conv2(x)))
        return self.linear(x.reshape(x.shape[0], -1))


@functools.cache
def digits() -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """scikit-learn's 1,797 digits as images `(N, 1, 8, 8)` scaled to [0, 1], 80/20: `(x_train, y_train, x_test,
    y_test)`."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images / 16.0)[:, None]
    order = np.random.default_rng(0).permutation(len(images))
    cut = int(0.8 * len(images))
    train, test = order[:cut], order[cut:]
    dtype = jnp.result_type(float)  # the models' parameter dtype (float64 when x64 is on)
    return (
        jnp.asarray(images[train], dtype),
        jnp.asarray(data.target[train]),
        jnp.asarray(images[test], dtype),
        jnp.asarray(data.target[test]),
    )


def accuracy(model, x, y) -> float:
    return float(jnp.mean(jnp.argmax(jax.vmap(model)(x), axis=1) == y))


def train_cnn(model, steps: int, key, *, batch_size: int = 64, learning_rate: float = 3e-3):
    """Train on the digits' training part with Adam (cross-entropy); returns the model."""
    x, y, _, _ = digits()
    optimiser = optax.adam(learning_rate)
    state = optimiser.init(eqx.filter(model, eqx.is_inexact_array))

    def loss(model, xb, yb):
        return optax.softmax_cross_entropy_with_integer_labels(jax.vmap(model)(xb), yb).mean()

    @eqx.filter_jit
    def step(model, state, xb, yb):
        grads = eqx.filter_grad(loss)(model, xb, yb)
        updates, state = optimiser.update(grads, state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), state

    generator = np.random.default_rng(int(jr.randint(key, (), 0, 2**31 - 1)))
    for _ in range(steps):
        batch = generator.choice(x.shape[0], batch_size, replace=False)
        model, state = step(model, state, x[batch], y[batch])
    return model


def _conv(weight, bias):
    """An `eqx.nn.Conv2d` (3×3, padding 1) holding `weight` `(out, in, 3, 3)` and `bias` `(out, 1, 1)`."""
    conv = eqx.filter_eval_shape(eqx.nn.Conv2d, weight.shape[1], weight.shape[0], 3, padding=1, key=jr.key(0))
    return eqx.tree_at(lambda c: (c.weight, c.bias), conv, (jnp.asarray(weight), jnp.asarray(bias)))


def _linear(weight, bias):
    linear = eqx.filter_eval_shape(eqx.nn.Linear, weight.shape[1], weight.shape[0], key=jr.key(0))
    return eqx.tree_at(lambda c: (c.weight, c.bias), linear, (jnp.asarray(weight), jnp.asarray(bias)))


def plant_channels(model: DigitsCNN, producer: str, k: int, key):
    """Widen convolution `producer` (`"conv1"` or `"conv2"`) by `k` output channels that copy `k` distinct existing
    ones (filters and biases), with the consumer's input columns of each pair (the next convolution's input channel,
    or the head's `8·8` columns of the flattened channel) split `α` / `1 − α` (`α` in [0.2, 0.8]), so the output is
    unchanged; the channels are then permuted at random. It checks in NumPy that the pairs' columns add up.

    **Returns:** `(planted_model, copies, sources)`: channel `copies[i]` of the planted convolution copies channel
    `sources[i]` (both sorted by `copies`).
    """
    consumer = {"conv1": "conv2", "conv2": "head"}[producer]
    conv, reader = getattr(model, producer), getattr(model, consumer)
    weight, bias = np.asarray(conv.weight), np.asarray(conv.bias)
    channels = weight.shape[0]
    columns = np.asarray(reader.weight).reshape(reader.weight.shape[0], channels, -1)  # (out, channel, group)
    generator = np.random.default_rng(int(jr.randint(key, (), 0, 2**31 - 1)))
    sources = generator.choice(channels, k, replace=False)
    alpha = generator.uniform(0.2, 0.8, k).astype(weight.dtype)
    permutation = generator.permutation(channels + k)
    inverse = np.argsort(permutation)
    order = np.argsort(inverse[channels + np.arange(k)])
    copies, new_sources = inverse[channels + order], inverse[sources[order]]

    def widen(array):
        return np.concatenate([array, array[sources]])[permutation]

    new_columns = np.concatenate([columns, columns[:, sources] * (1 - alpha)[None, :, None]], axis=1)
    new_columns[:, sources] *= alpha[None, :, None]
    new_columns = new_columns[:, permutation]
    added = new_columns[:, copies] + new_columns[:, new_sources]
    if not np.allclose(added, columns[:, sources[order]], rtol=1e-6, atol=0):
        raise AssertionError("a planted pair's consumer columns do not add up to the source's.")
    new_conv = _conv(widen(weight), widen(bias))
    if consumer == "head":
        new_reader = _linear(new_columns.reshape(new_columns.shape[0], -1), np.asarray(reader.bias))
    else:
        new_reader = _conv(new_columns.reshape(new_columns.shape[:2] + (3, 3)), np.asarray(reader.bias))
    planted = eqx.tree_at(lambda m: (getattr(m, producer), getattr(m, consumer)), model, (new_conv, new_reader))
    return planted, copies, new_sources
