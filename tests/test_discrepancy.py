"""Pairwise discrepancies against NumPy double loops and forward-pass references (float64)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
import pytest

from jaxlump._criteria.discrepancy import Dynamical, Structural, pairwise_l1, pairwise_rms
from jaxlump._model.network import DenseChain

WIDTHS = (3, 6, 5, 2)
# One activation pattern, one batch size and one number of times for every simulation: diffrax compiles once.
ACTIVATION_PATTERN = ("tanh", "sigmoid", "identity")
TIMES = (0.0, 0.3, 0.7, 1.0)
BATCH = 6


def _random_chain(key, widths=WIDTHS, activations=ACTIVATION_PATTERN) -> DenseChain:
    keys = jr.split(key, 2 * (len(widths) - 1))
    weights = tuple(jr.normal(keys[2 * l], (n_out, n_in)) for l, (n_in, n_out) in enumerate(zip(widths, widths[1:])))
    biases = tuple(0.5 * jr.normal(keys[2 * l + 1], (n,)) for l, n in enumerate(widths[1:]))
    return DenseChain(weights, biases, activations, (True,) * len(weights))


def _numpy_forward(chain: DenseChain, x: np.ndarray) -> list[np.ndarray]:
    """Activations `[a^1 .. a^L]` by a NumPy forward pass."""
    numpy_fn = {"tanh": np.tanh, "sigmoid": lambda z: 1 / (1 + np.exp(-z)), "identity": lambda z: z}
    acts, a = [], x
    for w, b, name in zip(chain.weights, chain.biases, chain.activations):
        a = numpy_fn[name](a @ np.asarray(w).T + np.asarray(b))
        acts.append(a)
    return acts


def _loop_l1(features: np.ndarray) -> np.ndarray:
    n = features.shape[0]
    return np.array([[np.sum(np.abs(features[i] - features[j])) for j in range(n)] for i in range(n)])


def _loop_rms(samples: np.ndarray) -> np.ndarray:
    n = samples.shape[1]
    return np.array([[np.sqrt(np.mean((samples[:, i] - samples[:, j]) ** 2)) for j in range(n)] for i in range(n)])


@pytest.mark.parametrize("n, d", [(7, 3), (8, 4), (5, 2), (1, 3), (10, 1), (9, 5), (300, 7)])
def test_pairwise_l1_matches_double_loop(n, d):
    """n = 300 spans several 128-wide tiles, padded at the edge."""
    features = np.asarray(jr.normal(jr.key(n * 100 + d), (n, d)))
    got = pairwise_l1(jnp.asarray(features))
    assert got.shape == (n, n)
    np.testing.assert_allclose(got, _loop_l1(features), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dtype, rtol", [(jnp.float64, 1e-13), (jnp.float32, 1e-6)])
@pytest.mark.parametrize("threshold", [0.0, 2.0, 6.0])
def test_pairwise_l1_is_exact_within_the_threshold_and_a_lower_bound_beyond(dtype, rtol, threshold):
    """Only pairs the refinement may relate need their exact value; the others keep a value > threshold."""
    features = np.array(jr.normal(jr.key(5), (260, 6)))
    features[7] = features[3]  # an exact duplicate: exactly 0 at threshold 0
    got = np.asarray(pairwise_l1(jnp.asarray(features, dtype), threshold), np.float64)
    exact = _loop_l1(features.astype(dtype).astype(np.float64))
    within = exact <= threshold
    np.testing.assert_allclose(got[within], exact[within], rtol=rtol, atol=rtol)
    assert np.all(got[~within] > threshold) and np.all(got[~within] <= exact[~within] * (1 + rtol))
    assert got[3, 7] == got[7, 3] == 0.0 and np.all(np.diag(got) == 0.0)
    if threshold == 2.0:
        assert 0 < within.mean() < 0.5  # the bound skipped most pairs


@pytest.mark.parametrize("samples, n", [(13, 6), (4, 1), (1, 5), (40, 9), (30, 200)])
def test_pairwise_rms_matches_double_loop(samples, n):
    features = np.asarray(jr.normal(jr.key(samples + 7 * n), (samples, n)))
    got = pairwise_rms(jnp.asarray(features))
    assert got.shape == (n, n)
    np.testing.assert_allclose(got, _loop_rms(features), rtol=1e-10, atol=1e-10)


def test_pairwise_rms_of_identical_columns_is_exactly_zero():
    """ε = 0 must merge exact duplicates, so the GEMM form may not leave a cancellation residue."""
    base = np.asarray(jr.normal(jr.key(3), (50, 4)))
    features = base[:, [0, 1, 0, 2, 3, 1]]
    got = np.asarray(pairwise_rms(jnp.asarray(features)))
    assert got[0, 2] == 0.0 and got[1, 5] == 0.0 and np.all(np.diag(got) == 0.0)
    assert np.all(got[~np.eye(6, dtype=bool) & (got != 0)] > 1e-3)


def _numpy_structural(chain: DenseChain, l: int, prev_labels: np.ndarray):
    w, b = np.asarray(chain.weights[l - 1]), np.asarray(chain.biases[l - 1])
    blocks = np.unique(prev_labels)
    coefficients = np.stack([w[:, prev_labels == block].sum(axis=1) for block in blocks] + [b], axis=1)
    scale = np.mean(np.abs(w).sum(axis=1) + np.abs(b))
    importance = np.abs(np.asarray(chain.weights[l])).sum(axis=0)
    return _loop_l1(coefficients) / scale, importance


@pytest.mark.parametrize(
    "l, prev_labels",
    [(1, [0, 1, 2]), (2, [0, 0, 2, 2, 2, 5]), (2, [3, 1, 3, 3, 1, 1]), (2, [0, 1, 2, 3, 4, 5]), (2, [4] * 6)],
)
def test_structural_matches_numpy(l, prev_labels):
    chain = _random_chain(jr.key(0))
    prev_labels = np.asarray(prev_labels, np.int32)
    got = Structural().layer(chain, None, l, jnp.asarray(prev_labels))
    relative, importance = _numpy_structural(chain, l, prev_labels)
    np.testing.assert_allclose(got.relative, relative, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got.importance, importance, rtol=1e-12)


def test_structural_is_zero_exactly_on_planted_lumpable_pairs():
    """Rows that differ but share every block sum (and bias) are exactly lumpable: distance 0."""
    chain = _random_chain(jr.key(1))
    w = np.asarray(chain.weights[1]).copy()
    b = np.asarray(chain.biases[1]).copy()
    prev_labels = np.array([0, 0, 2, 2, 2, 5])
    w[3] = w[0] + np.array([0.25, -0.25, 1.0, -0.5, -0.5, 0.0])  # same sums over {0,1}, {2,3,4}, {5}
    b[3] = b[0]
    chain = DenseChain(
        (chain.weights[0], jnp.asarray(w), chain.weights[2]),
        (chain.biases[0], jnp.asarray(b), chain.biases[2]),
        chain.activations,
        chain.use_bias,
    )
    relative = np.asarray(Structural().layer(chain, None, 2, jnp.asarray(prev_labels)).relative)
    assert relative[0, 3] <= 1e-15 and relative[3, 0] <= 1e-15
    # Without the input partition the rows are far apart.
    assert np.asarray(Structural().layer(chain, None, 2, jnp.arange(6)).relative)[0, 3] > 0.1


def _numpy_dynamical(chain: DenseChain, x: np.ndarray, l: int, times, x_ref: np.ndarray):
    """Trajectories by the forward pass at x(t) = x_ref + t(x − x_ref): independent of the ODE solver."""
    samples = np.concatenate([_numpy_forward(chain, x_ref + t * (x - x_ref))[l - 1] for t in times], axis=0)
    outgoing = np.linalg.norm(np.asarray(chain.weights[l]), axis=0)
    rms = np.sqrt(np.mean(samples**2, axis=0))
    scale = np.mean(rms * outgoing)
    weighted = _loop_rms(samples) * (outgoing[:, None] + outgoing[None, :]) / 2
    return weighted / scale, rms * outgoing


@pytest.mark.parametrize("x_ref", ["zero", "mean"])
def test_dynamical_matches_forward_pass_reference(x_ref):
    """Layer 1 is tanh, layer 2 sigmoid: both polynomial state choices are covered."""
    chain = _random_chain(jr.key(2))
    x = np.asarray(jr.normal(jr.key(3), (BATCH, WIDTHS[0])))
    discrepancy = Dynamical(times=TIMES, x_ref=x_ref)
    prepared = discrepancy.prepare(chain, jnp.asarray(x))
    reference_point = x.mean(axis=0) if x_ref == "mean" else np.zeros(WIDTHS[0])
    for l in (1, 2):
        got = discrepancy.layer(chain, prepared, l, jnp.arange(WIDTHS[l - 1]))
        relative, importance = _numpy_dynamical(chain, x, l, TIMES, reference_point)
        np.testing.assert_allclose(got.relative, relative, rtol=1e-7, atol=1e-7)
        np.testing.assert_allclose(got.importance, importance, rtol=1e-7, atol=1e-9)


def test_dynamical_uses_at_most_max_inputs():
    chain = _random_chain(jr.key(4))
    x = np.asarray(jr.normal(jr.key(5), (BATCH + 3, WIDTHS[0])))
    discrepancy = Dynamical(times=TIMES, max_inputs=BATCH)
    got = discrepancy.layer(chain, discrepancy.prepare(chain, jnp.asarray(x)), 1, jnp.arange(WIDTHS[0]))
    relative, _ = _numpy_dynamical(chain, x[:BATCH], 1, TIMES, np.zeros(WIDTHS[0]))
    np.testing.assert_allclose(got.relative, relative, rtol=1e-7, atol=1e-7)


def test_dynamical_is_zero_on_planted_duplicates():
    chain = _random_chain(jr.key(6))
    w, b = np.asarray(chain.weights[0]).copy(), np.asarray(chain.biases[0]).copy()
    w[4], b[4] = w[1], b[1]
    chain = DenseChain(
        (jnp.asarray(w),) + chain.weights[1:], (jnp.asarray(b),) + chain.biases[1:], chain.activations, chain.use_bias
    )
    x = jr.normal(jr.key(7), (BATCH, WIDTHS[0]))
    discrepancy = Dynamical(times=TIMES)
    relative = discrepancy.layer(chain, discrepancy.prepare(chain, x), 1, jnp.arange(WIDTHS[0])).relative
    assert float(relative[1, 4]) == 0.0 and float(relative[4, 1]) == 0.0


def test_structural_under_jit_and_vmap():
    chains = [_random_chain(jr.key(k)) for k in (10, 11, 12)]
    labels = jnp.asarray([[0, 0, 2, 2, 2, 5], [0, 1, 2, 3, 4, 5], [1, 1, 1, 4, 4, 4]], jnp.int32)
    stacked = jtu.tree_map(lambda *leaves: jnp.stack(leaves), *chains)

    @eqx.filter_jit
    def relative(chain, prev_labels):
        return Structural().layer(chain, None, 2, prev_labels).relative

    batched = eqx.filter_vmap(relative)(stacked, labels)
    for chain, prev_labels, got in zip(chains, np.asarray(labels), batched):
        np.testing.assert_allclose(got, _numpy_structural(chain, 2, prev_labels)[0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(relative(chain, jnp.asarray(prev_labels)), got, rtol=1e-14, atol=1e-14)


def test_dynamical_under_jit_and_vmap():
    chain = _random_chain(jr.key(13))
    xs = jr.normal(jr.key(14), (3, BATCH, WIDTHS[0]))  # three calibration sets
    discrepancy = Dynamical(times=TIMES)

    @eqx.filter_jit
    def relative(x):
        return discrepancy.layer(chain, discrepancy.prepare(chain, x), 2, jnp.arange(WIDTHS[1])).relative

    batched = jax.vmap(relative)(xs)
    for x, got in zip(np.asarray(xs), batched):
        expected, _ = _numpy_dynamical(chain, x, 2, TIMES, np.zeros(WIDTHS[0]))
        np.testing.assert_allclose(got, expected, rtol=1e-7, atol=1e-7)
