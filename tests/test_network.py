"""The activation table and `DenseChain`: every derivative against automatic differentiation, every Lipschitz
constant an upper bound, names resolved by the registry, and the canonical chain's checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlump import Activation
from jaxlump._network import ACTIVATIONS, DenseChain, numpy_activation

GRID = np.linspace(-12.0, 12.0, 2001)
GRID = GRID[np.abs(GRID) > 1e-6]  # derivatives of kinked activations jump at 0
BUILT_IN = [*ACTIVATIONS, "leaky_relu(negative_slope=0.2)", "leaky_relu(negative_slope=-1.5)"]


@pytest.mark.parametrize("name", BUILT_IN)
def test_derivative_is_the_derivative_of_the_function(name):
    """The ODE encoding integrates with `derivative`: it must be σ' everywhere, saturated regions included."""
    activation = ACTIVATIONS[name]
    z = jnp.asarray(GRID)
    automatic = jax.vmap(jax.grad(lambda s: activation.fn(s)))(z)
    np.testing.assert_allclose(np.asarray(activation.derivative(z)), np.asarray(automatic), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", BUILT_IN)
def test_the_host_activation_equals_the_jax_one(name):
    """`numpy_activation` (the finiteness check's host forward pass) computes what `ACTIVATIONS` computes, and stays
    finite where σ is (sigmoid and softplus far out, where a naive exp overflows)."""
    z = np.concatenate([GRID, [-800.0, 800.0]])
    want = np.asarray(ACTIVATIONS[name].fn(jnp.asarray(z)))
    np.testing.assert_allclose(numpy_activation(name, z), want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", BUILT_IN)
def test_lipschitz_constant_bounds_the_derivative(name):
    activation = ACTIVATIONS[name]
    fine = jnp.asarray(np.linspace(-12.0, 12.0, 200_001))
    assert float(jnp.max(jnp.abs(activation.derivative(fine)))) <= activation.lipschitz


def test_registry_lists_built_ins_and_resolves_parametrised_names():
    assert set(ACTIVATIONS) >= {"identity", "tanh", "sigmoid", "relu", "leaky_relu", "softplus", "silu"}
    assert ACTIVATIONS["leaky_relu"].fn is jax.nn.leaky_relu
    slope = ACTIVATIONS["leaky_relu(negative_slope=0.2)"]
    assert slope is ACTIVATIONS["leaky_relu(negative_slope=0.2)"] and slope.fn.keywords == {"negative_slope": 0.2}
    assert "leaky_relu(negative_slope=0.2)" in ACTIVATIONS and "gelu" not in ACTIVATIONS
    for bad in ("gelu", "leaky_relu(negative_slope=nan)", "leaky_relu(negative_slope=x)"):
        with pytest.raises(KeyError):
            ACTIVATIONS[bad]


def test_a_declaration_is_registered_and_callable():
    capped = Activation("capped_at_two", lambda z: jnp.clip(z, 0.0, 2.0), lambda z: ((z > 0) & (z < 2)).astype(z.dtype),
                        1.0, kinked=True)  # fmt: skip
    assert ACTIVATIONS["capped_at_two"] is capped and capped.model_fn is capped
    np.testing.assert_array_equal(capped(jnp.array([-1.0, 1.0, 3.0])), [0.0, 1.0, 2.0])
    assert ACTIVATIONS["tanh"].model_fn is jnp.tanh


def test_dense_chain_accepts_registered_names_only():
    weights, biases = (jnp.ones((2, 3)), jnp.ones((1, 2))), (jnp.zeros(2), jnp.zeros(1))
    chain = DenseChain(weights, biases, ("leaky_relu(negative_slope=0.2)", "identity"), (True, True))
    x = jnp.array([[-1.0, -1.0, -1.0]])
    np.testing.assert_allclose(chain(x), [[2 * 0.2 * -3.0]])
    with pytest.raises(ValueError, match="activation 'relu6_undeclared' not in"):
        DenseChain(weights, biases, ("relu6_undeclared", "identity"), (True, True))
