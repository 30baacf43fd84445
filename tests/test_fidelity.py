"""check_encoding: the simulated encoding reproduces the network at t = 1, within measured, documented bounds.

Networks: random eqx.nn.MLPs (2–3 hidden layers, widths 8–16) and 16 standard-normal inputs. Measured with the
defaults (see `check_encoding`'s docstring): float64 tanh/sigmoid ~1e-11, identity ~1e-14, relu/leaky_relu
~5e-10 (Heun), float32 tanh ~1.4e-6.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jaxlump import Activation
from jaxlump._criteria.encoding import EncodingCheck, check_encoding, simulate
from jaxlump._errors import RESULTS
from jaxlump._model.activations import (
    ACTIVATIONS,  # (activation, input width, hidden width, depth): depth = number of hidden layers.
)

NETWORKS = [("tanh", 4, 16, 2), ("sigmoid", 5, 12, 3), ("identity", 4, 8, 3), ("relu", 4, 16, 2),
            ("leaky_relu", 5, 12, 3)]  # fmt: skip
BOUNDS_FLOAT64 = {"tanh": 1e-8, "sigmoid": 1e-8, "identity": 1e-8, "relu": 1e-8, "leaky_relu": 1e-8}


def mlp(activation: str, in_size: int, width: int, depth: int, key, dtype=jnp.float64) -> eqx.nn.MLP:
    return eqx.nn.MLP(in_size, 3, width, depth, activation=ACTIVATIONS[activation].fn, dtype=dtype, key=key)


@pytest.mark.parametrize(("activation", "in_size", "width", "depth"), NETWORKS)
def test_float64_encoding_reproduces_the_network(activation, in_size, width, depth):
    model = mlp(activation, in_size, width, depth, jr.key(0))
    x = jr.normal(jr.key(1), (16, in_size))
    check = check_encoding(model, x)
    assert isinstance(check, EncodingCheck)
    assert check.result == RESULTS.successful
    assert len(check.per_layer) == depth + 1
    assert float(check.max_deviation) <= BOUNDS_FLOAT64[activation]
    assert float(check.max_deviation) == max(float(d) for d in check.per_layer)
    assert float(check.output_deviation) == float(check.per_layer[-1])
    # Against the model itself rather than the forward pass used inside `check_encoding`.
    ode_output = simulate(model, x).activations[-1][:, -1]
    independent = float(jnp.max(jnp.abs(ode_output - jax.vmap(model)(x))))
    assert independent <= BOUNDS_FLOAT64[activation]
    # `check_encoding` compares with the model itself: the same figure, not a similar one.
    assert float(check.output_deviation) == pytest.approx(independent, rel=1e-9, abs=1e-15)


def test_wide_relu_network_succeeds_with_the_default_step_budget():
    """About 20 steps per kink: 3 × 64 relu neurons need more than 4096 steps (measured 4.7e3)."""
    model = mlp("relu", 8, 64, 3, jr.key(9))
    check = check_encoding(model, jr.normal(jr.key(10), (4, 8)))
    assert check.result == RESULTS.successful
    assert float(check.max_deviation) <= 1e-8


def test_float32_tanh_meets_the_float32_bound():
    model = mlp("tanh", 4, 16, 2, jr.key(2), dtype=jnp.float32)
    check = check_encoding(model, jr.normal(jr.key(3), (16, 4), jnp.float32))
    assert check.result == RESULTS.successful
    assert check.max_deviation.dtype == jnp.float32
    assert float(check.max_deviation) <= 1e-4


def test_deviation_is_measured_not_assumed():
    """A loose tolerance must show up as a larger deviation (the check can fail)."""
    model = mlp("tanh", 4, 16, 2, jr.key(4))
    x = 3.0 * jr.normal(jr.key(5), (16, 4))
    tight = check_encoding(model, x)
    loose = check_encoding(model, x, rtol=1e-2, atol=1e-2)
    assert float(loose.max_deviation) > 100 * float(tight.max_deviation)
    assert float(loose.max_deviation) > 1e-6


def test_x_ref_option_keeps_the_end_point():
    model = mlp("tanh", 4, 16, 2, jr.key(6))
    x = jr.normal(jr.key(7), (16, 4))
    check = check_encoding(model, x, x_ref=jnp.mean(x, axis=0))
    assert check.result == RESULTS.successful
    assert float(check.max_deviation) <= 1e-8


def test_check_encoding_refuses_bad_input():
    model = mlp("tanh", 4, 16, 2, jr.key(8))
    with pytest.raises(ValueError, match="`x`"):
        check_encoding(model, np.ones((3, 5)))
    with pytest.raises(ValueError, match="`x`"):
        check_encoding(model, np.full((3, 4), np.nan))
    with pytest.raises(ValueError, match="`x`"):
        check_encoding(model, np.ones((0, 4)))
    with pytest.raises(TypeError, match="`times`"):
        check_encoding(model, np.ones((3, 4)), times=(0.5, 1.0))


RELU6 = Activation("relu6_for_fidelity", jax.nn.relu6, lambda z: ((z > 0) & (z < 6)).astype(z.dtype), 1.0, kinked=True)


def test_the_check_is_against_the_model_itself():
    """A relu6 network: read as relu (what probing values on [−4, 4] did) the ODE would end up to hundreds away
    from `model(x)`; declared, the encoding reproduces `model(x)` itself, clipping included."""
    model = eqx.nn.MLP(4, 3, 16, 2, activation=RELU6, dtype=jnp.float64, key=jr.key(11))
    x = 8.0 * jr.normal(jr.key(12), (8, 4))
    as_relu = eqx.tree_at(lambda m: m.activation, model, jax.nn.relu)
    assert float(jnp.max(jnp.abs(jax.vmap(as_relu)(x) - jax.vmap(model)(x)))) > 1.0  # clipping is active
    check = check_encoding(model, x)
    assert check.result == RESULTS.successful
    assert float(check.output_deviation) <= 1e-8
    independent = jnp.max(jnp.abs(simulate(model, x).activations[-1][:, -1] - jax.vmap(model)(x)))
    assert float(check.output_deviation) == pytest.approx(float(independent), rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_check_encoding_agrees_with_simulate_on_a_saturated_neuron(dtype):
    """1 → 1 → 1 with the tanh neuron at z = 10 at x_ref (exactly 1 in float32), −10 at x: both succeed, both
    reach the model's −1."""
    seq = eqx.nn.Sequential([eqx.nn.Linear(1, 1, dtype=dtype, key=jr.key(0)), eqx.nn.Lambda(jnp.tanh),
                             eqx.nn.Linear(1, 1, dtype=dtype, key=jr.key(1))])  # fmt: skip
    seq = eqx.tree_at(lambda m: (m.layers[0].weight, m.layers[0].bias, m.layers[2].weight, m.layers[2].bias), seq,
                      (jnp.array([[-10.0]], dtype), jnp.array([10.0], dtype), jnp.array([[1.0]], dtype),
                       jnp.array([0.0], dtype)))  # fmt: skip
    x = jnp.array([[2.0]], dtype)
    assert float(jax.vmap(seq)(x)[0, 0]) == pytest.approx(-1.0, abs=1e-7)
    check, trajectory = check_encoding(seq, x), simulate(seq, x)
    assert check.result == trajectory.result == RESULTS.successful
    assert float(check.max_deviation) <= (1e-4 if dtype == jnp.float32 else 1e-8)


def test_check_encoding_reports_an_endpoint_mismatch_like_simulate():
    lying = Activation("relu_wrong_above_8", jax.nn.relu, lambda z: ((z > 0) & (z < 8)).astype(z.dtype), 1.0,
                       kinked=True)  # fmt: skip
    seq = eqx.nn.Sequential([eqx.nn.Linear(1, 1, use_bias=False, key=jr.key(0)), eqx.nn.Lambda(lying),
                             eqx.nn.Linear(1, 1, use_bias=False, key=jr.key(1))])  # fmt: skip
    seq = eqx.tree_at(lambda m: (m.layers[0].weight, m.layers[2].weight), seq, (jnp.array([[20.0]]), jnp.eye(1)))
    x = jnp.array([[1.0]])
    check = check_encoding(seq, x)
    assert check.result == simulate(seq, x).result == RESULTS.ode_endpoint_mismatch
    assert float(check.output_deviation) == pytest.approx(12.0, abs=1e-6)
