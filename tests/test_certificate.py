"""The certificate: `lift` is exact, the a-priori bound holds (a theorem), the simulated deviation is right."""

import functools

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given

import jaxlump
import jaxlump._criteria.gram
import jaxlump._results.certificate
from jaxlump._criteria.encoding.dynamical import simulate
from jaxlump._model.activations import ACTIVATIONS
from jaxlump._model.network import DenseChain
from jaxlump._reconstruction.quotient import quotient
from jaxlump._results.certificate import ODE_TIMES, a_priori_bound, certify, lift


def _chain(weights, biases, activations) -> DenseChain:
    return DenseChain(
        tuple(map(jnp.asarray, weights)), tuple(map(jnp.asarray, biases)), tuple(activations), (True,) * len(weights)
    )


def _random_chain(rng: np.random.Generator, widths, activations) -> DenseChain:
    weights = [rng.normal(size=(n_out, n_in)) for n_in, n_out in zip(widths, widths[1:])]
    return _chain(weights, [0.5 * rng.normal(size=n) for n in widths[1:]], activations)


def _compact(labels) -> np.ndarray:
    """Relabel to `0..k-1` by first appearance of each block (-1 stays -1)."""
    labels = np.asarray(labels)
    live = list(dict.fromkeys(labels[labels >= 0].tolist()))
    return np.array([live.index(p) if p >= 0 else -1 for p in labels])


def _perturb(chain: DenseChain, rng: np.random.Generator, scale: float, live=None) -> DenseChain:
    """Add `scale`·N(0, 1) to the weights and biases of the live neurons (`live[l]`: mask of layer l)."""
    live = live or [np.ones(n, bool) for n in chain.widths]
    weights = [
        w + scale * rng.normal(size=w.shape) * np.outer(live[l + 1], live[l]) for l, w in enumerate(chain.weights)
    ]
    biases = [b + scale * rng.normal(size=b.shape) * live[l + 1] for l, b in enumerate(chain.biases)]
    return _chain(weights, biases, chain.activations)


# Few shapes and activation patterns, so that the jitted evaluation below compiles a handful of times.
HYPOTHESIS_WIDTHS = [(2, 5, 2), (3, 6, 5, 2)]
HIDDEN_OUTPUT = [("tanh", "identity"), ("sigmoid", "sigmoid"), ("relu", "identity"), ("relu", "tanh")]


@st.composite
def compressions(draw):
    """A small random network, an arbitrary grouping per hidden layer (merges and removals, any block
    indices in `[0, n)`) and the quotient under it in fixed-shape form, optionally perturbed on its live
    neurons (as a refit or any other compressor would change them)."""
    widths = draw(st.sampled_from(HYPOTHESIS_WIDTHS))
    hidden, output = draw(st.sampled_from(HIDDEN_OUTPUT))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    original = _random_chain(rng, widths, [hidden] * (len(widths) - 2) + [output])
    partitions = tuple(np.asarray(draw(st.lists(st.integers(-1, n - 1), min_size=n, max_size=n))) for n in widths[1:-1])
    compressed = quotient(original, tuple(map(jnp.asarray, partitions)), widths[1:-1])
    scale = draw(st.sampled_from([0.0, 0.01, 0.3]))
    if scale:
        live = [np.ones(widths[0], bool)] + [np.isin(np.arange(len(p)), p) for p in partitions]
        compressed = _perturb(compressed, rng, scale, live + [np.ones(widths[-1], bool)])
    x = 2 * rng.normal(size=(16, widths[0]))
    return original, compressed, tuple(map(jnp.asarray, partitions)), jnp.asarray(x)


@jax.jit
def _evaluate(original, compressed, partitions, x):
    """Outputs of the lifted and the compressed network, the a-priori bound and the measured ‖f̃(x) − f(x)‖₂."""
    lifted = lift(compressed, partitions, original.widths)
    bound = a_priori_bound(original, lifted, original.forward(x)[1])
    return lifted(x), compressed(x), bound, jnp.linalg.norm(compressed(x) - original(x), axis=1)


@given(compressions())
def test_lift_computes_the_compressed_function(problem):
    lifted_outputs, compressed_outputs, _, _ = _evaluate(*problem)
    np.testing.assert_allclose(lifted_outputs, compressed_outputs, rtol=1e-12, atol=1e-12)


@given(compressions())
def test_a_priori_bound_holds(problem):
    _, _, bound, measured = _evaluate(*problem)
    assert bound.shape == measured.shape == (problem[-1].shape[0],)
    assert bool(jnp.all(bound >= measured * (1 - 1e-12) - 1e-12)), np.asarray(bound - measured).min()


def test_lift_of_structured_and_masked_results():
    """Compact quotients, removed neurons (-1), the masked form (dead neurons with sigmoid(0) ≠ 0)."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(20, 3)))
    original = _random_chain(rng, (3, 6, 5, 2), ("sigmoid", "sigmoid", "identity"))
    grouping = (jnp.asarray(_compact([4, 1, 4, -1, 0, 1])), jnp.asarray(_compact([2, 2, 2, 0, -1])))
    compact = quotient(original, grouping, (3, 2))
    np.testing.assert_allclose(lift(compact, grouping, original.widths)(x), compact(x), rtol=1e-12, atol=1e-12)
    pruned = _random_chain(rng, (3, 4, 2, 2), ("sigmoid", "sigmoid", "identity"))
    partitions = (jnp.asarray([0, -1, 1, 2, -1, 3]), jnp.asarray([-1, 1, 0, -1, -1]))
    np.testing.assert_allclose(lift(pruned, partitions, (3, 6, 5, 2))(x), pruned(x), rtol=1e-12, atol=1e-12)
    representative = (jnp.asarray([0, 0, 2, 3, 2, -1]), jnp.asarray([4, 1, 1, -1, 4]))
    masked = quotient(original, representative, (6, 5))
    np.testing.assert_allclose(lift(masked, representative, original.widths)(x), masked(x), rtol=1e-12, atol=1e-12)


def test_bound_is_zero_for_the_identity_compression():
    rng = np.random.default_rng(1)
    original = _random_chain(rng, (3, 6, 5, 2), ("tanh", "relu", "identity"))
    identity = (jnp.arange(6), jnp.arange(5))
    same = quotient(original, identity, (6, 5))
    x = jnp.asarray(rng.normal(size=(8, 3)))
    bound = a_priori_bound(original, lift(same, identity, original.widths), original.forward(x)[1])
    assert np.all(np.asarray(bound) == 0.0)


def test_bound_matches_the_recursion_on_one_hidden_layer():
    """By hand: e_1 = ‖ΔM¹‖_F ‖[x; 1]‖, e_2 = ‖ΔM²‖_F ‖[a¹; 1]‖ + ‖W̃²‖₂ L e_1, bound = L_out e_2."""
    rng = np.random.default_rng(2)
    original = _random_chain(rng, (2, 3, 1), ("sigmoid", "identity"))
    lifted = _perturb(original, rng, 0.1)
    x = rng.normal(size=(5, 2))
    a1 = 1 / (1 + np.exp(-(x @ np.asarray(original.weights[0]).T + np.asarray(original.biases[0]))))
    delta = [
        np.sqrt(np.sum((np.asarray(wt) - np.asarray(w)) ** 2) + np.sum((np.asarray(bt) - np.asarray(b)) ** 2))
        for w, b, wt, bt in zip(original.weights, original.biases, lifted.weights, lifted.biases)
    ]
    e1 = delta[0] * np.sqrt(np.sum(x**2, axis=1) + 1)
    e2 = delta[1] * np.sqrt(np.sum(a1**2, axis=1) + 1) + np.linalg.norm(np.asarray(lifted.weights[1]), 2) * 0.25 * e1
    got = a_priori_bound(original, lifted, original.forward(jnp.asarray(x))[1])
    np.testing.assert_allclose(got, e2, rtol=1e-12)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_bound_holds_at_the_steepest_point_of_each_activation(name):
    """One neuron at argmax |σ'|, its bias moved by δ: the error is ≈ max|σ'|·δ and the bound is L_σ·δ (tight),
    so the theorem needs every tabulated Lipschitz constant L_σ ≥ sup |σ'|."""
    grid = jnp.linspace(-8.0, 8.0, 16001)
    steepest = float(grid[jnp.argmax(jnp.abs(jax.vmap(jax.grad(ACTIVATIONS[name].fn))(grid)))])
    original = _chain([np.zeros((1, 1))], [np.array([steepest])], [name])
    moved = _chain([np.zeros((1, 1))], [np.array([steepest + 1e-4])], [name])
    x = jnp.zeros((1, 1))
    bound = float(a_priori_bound(original, moved, original.forward(x)[1])[0])
    measured = float(jnp.abs(moved(x) - original(x))[0, 0])
    assert bound >= measured * (1 - 1e-9), f"{name} at z = {steepest}: bound {bound!r} < measured {measured!r}"


@pytest.mark.parametrize("hidden", ["tanh", pytest.param("relu", marks=pytest.mark.slow)])
def test_certify_figures(hidden):
    """On the fixed-shape form `lump_masked` certifies (one simulation shape for both networks)."""
    rng = np.random.default_rng(3)
    original = _random_chain(rng, (3, 6, 5, 2), (hidden, hidden, "identity"))
    partitions = (jnp.asarray([0, 1, 0, 3, 1, 5]), jnp.asarray([0, 0, 2, 3, -1]))
    live = [np.ones(3, bool), np.isin(np.arange(6), partitions[0]), np.isin(np.arange(5), partitions[1])]
    compressed = _perturb(quotient(original, partitions, (6, 5)), rng, 0.05, live + [np.ones(2, bool)])
    x = jnp.asarray(rng.normal(size=(12, 3)))
    certificate, result = certify(original, compressed, partitions, x, simulate_ode=True)
    assert result == jaxlump.RESULTS.successful
    deviation = np.asarray(compressed(x) - original(x))
    np.testing.assert_allclose(certificate.output_max_abs, np.abs(deviation).max(), rtol=1e-12)
    np.testing.assert_allclose(certificate.output_rms, np.sqrt(np.mean(deviation**2)), rtol=1e-12)
    # The ODE state is the forward pass along x(t) = t x (x_ref = 0); t = 1 is among the sample times.
    along = [np.asarray(compressed(t * x) - original(t * x)) for t in ODE_TIMES]
    np.testing.assert_allclose(certificate.ode_max_abs, np.abs(along).max(), rtol=1e-6, atol=1e-7)
    assert float(certificate.ode_max_abs) >= float(certificate.output_max_abs) - 1e-8
    assert float(certificate.a_priori_bound) >= np.linalg.norm(deviation, axis=1).max()
    skipped, skipped_result = certify(original, compressed, partitions, x, simulate_ode=False)
    assert skipped_result == jaxlump.RESULTS.successful
    assert np.isnan(skipped.ode_max_abs) and float(skipped.output_max_abs) == float(certificate.output_max_abs)


def test_a_failed_certificate_simulation_is_reported(monkeypatch):
    """The certificate's ODE solves report failure (here: out of steps) instead of a meaningless figure."""
    rng = np.random.default_rng(4)
    original = _random_chain(rng, (3, 6, 2), ("tanh", "identity"))
    partitions = (jnp.arange(6),)
    x = jnp.asarray(rng.normal(size=(8, 3)))
    monkeypatch.setattr(jaxlump._results.certificate, "simulate", functools.partial(simulate, max_steps=2))
    _, result = certify(original, original, partitions, x, simulate_ode=True)
    assert result == jaxlump.RESULTS.certificate_ode_failed


def test_streamed_certificate_equals_numpy_on_all_rows(monkeypatch):
    """The certificate folds its figures over batches of rows (here 7 at a time, 50 rows: the last batch padded):
    the same maximum, RMS and a-priori bound as NumPy on all rows at once."""
    rng = np.random.default_rng(3)
    original = _random_chain(rng, (3, 6, 5, 2), ["tanh", "tanh", "identity"])
    partitions = (jnp.asarray([0, 0, 2, -1, 4, 5]), jnp.asarray([0, 1, 1, 3, -1]))
    compressed = _perturb(quotient(original, partitions, (6, 5)), rng, 0.05)
    x = jnp.asarray(rng.normal(size=(50, 3)))
    monkeypatch.setattr(jaxlump._criteria.gram, "_BATCH_ELEMENTS", 7 * 6)
    monkeypatch.setattr(jaxlump._criteria.gram, "_MIN_BATCH_ROWS", 1)
    certificate, _ = certify(original, compressed, partitions, x, simulate_ode=False)
    deviation = np.asarray(compressed(x)) - np.asarray(original(x))
    bound = np.asarray(a_priori_bound(original, lift(compressed, partitions, original.widths), original.forward(x)[1]))
    np.testing.assert_allclose(float(certificate.output_max_abs), np.abs(deviation).max(), rtol=1e-12)
    np.testing.assert_allclose(float(certificate.output_rms), np.sqrt(np.mean(deviation**2)), rtol=1e-12)
    np.testing.assert_allclose(float(certificate.a_priori_bound), bound.max(), rtol=1e-12)
