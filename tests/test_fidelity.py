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

from jaxlump._encoding import EncodingCheck, check_encoding, simulate
from jaxlump._errors import RESULTS
from jaxlump._network import ACTIVATIONS

# (activation, input width, hidden width, depth): depth = number of hidden layers.
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
    assert float(check.output_deviation) == pytest.approx(independent, rel=0.5, abs=1e-14)


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
