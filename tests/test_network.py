"""The activation table and `DenseChain`: every derivative against automatic differentiation, every Lipschitz
constant an upper bound, names resolved by the registry, and the canonical chain's checks."""

import functools
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from _networks import hidden_widths, outputs, planted_mlp
from flax import nnx

import jaxlump
from jaxlump import Activation
from jaxlump._criteria.encoding.dynamical import default_solver
from jaxlump._model.activations import ACTIVATIONS, identify_activation, numpy_activation
from jaxlump._model.network import DenseChain

GRID = np.linspace(-12.0, 12.0, 2001)
GRID = GRID[np.abs(GRID) > 1e-6]  # derivatives of kinked activations jump at 0
# The GELU / ELU family by name (so that each fails where it is unknown), then every other built-in.
GELU_ELU = ["gelu", "gelu_tanh", "elu", "elu(alpha=0.5)", "elu(alpha=2.5)", "celu", "celu(alpha=0.5)", "selu"]
BUILT_IN = list(
    dict.fromkeys([*GELU_ELU, *ACTIVATIONS, "leaky_relu(negative_slope=0.2)", "leaky_relu(negative_slope=-1.5)"])
)


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


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", GELU_ELU)
def test_the_host_activation_is_finite_and_silent_far_out(name, dtype):
    """Up to |z| = 1e4 (a blown-up pre-activation), in float64 and float32: no overflow warning, the dtype kept,
    and the value JAX computes (to 1e-20 absolute: the host sigmoid's tanh form rounds σ(−60) ≈ 9e-27 to 0)."""
    z = np.array([-1e4, -1e3, -60.0, 60.0, 1e3, 1e4], dtype)
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        host = numpy_activation(name, z)
    want = np.asarray(ACTIVATIONS[name].fn(jnp.asarray(z)))
    assert host.dtype == want.dtype == dtype
    np.testing.assert_allclose(host, want, rtol=1e-6, atol=1e-20)


@pytest.mark.parametrize("name", BUILT_IN)
def test_lipschitz_constant_bounds_the_derivative(name):
    activation = ACTIVATIONS[name]
    fine = jnp.asarray(np.linspace(-12.0, 12.0, 200_001))
    assert float(jnp.max(jnp.abs(activation.derivative(fine)))) <= activation.lipschitz


@pytest.mark.parametrize("name", GELU_ELU)
def test_gelu_and_elu_lipschitz_constants_are_tight(name):
    """The bound is max |σ'| rounded up in the 6th digit, not a loose guess (the certificate multiplies by it)."""
    activation = ACTIVATIONS[name]
    fine = jnp.asarray(np.concatenate([np.linspace(-12.0, 12.0, 200_001), [-1e-12]]))  # elu's max is at 0⁻
    assert activation.lipschitz <= float(jnp.max(jnp.abs(activation.derivative(fine)))) * (1 + 1e-5)


@pytest.mark.parametrize(
    "name, kinked, piecewise_linear",
    [("gelu", False, False), ("gelu_tanh", False, False), ("elu", False, False), ("elu(alpha=0.5)", True, False),
     ("celu(alpha=0.5)", False, False), ("selu", True, False), ("relu", True, True), ("identity", False, True)],
)  # fmt: skip
def test_gelu_and_elu_flags(name, kinked, piecewise_linear):
    """σ' jumps at 0 for elu(alpha ≠ 1) and selu only; none is piecewise linear, and none has σ' polynomial in σ."""
    activation = ACTIVATIONS[name]
    assert (activation.kinked, activation.piecewise_linear) == (kinked, piecewise_linear)
    assert activation.degree is (0 if name == "identity" else None)
    assert identify_activation(activation.model_fn, "here") == name  # a rebuilt model is recognised again


def test_a_kinked_exponential_field_is_not_given_heun():
    """Heun is for piecewise-constant fields; on elu(alpha=0.5) / selu it did not converge (see `default_solver`)."""
    weights, biases = (jnp.ones((2, 3)), jnp.ones((1, 2))), (jnp.zeros(2), jnp.zeros(1))
    for name, solver in [("elu(alpha=0.5)", "Tsit5"), ("selu", "Tsit5"), ("leaky_relu(negative_slope=0.2)", "Heun")]:
        chain = DenseChain(weights, biases, (name, "identity"), (True, True))
        assert type(default_solver(chain)).__name__ == solver


def test_registry_lists_built_ins_and_resolves_parametrised_names():
    assert set(ACTIVATIONS) >= {"identity", "tanh", "sigmoid", "relu", "leaky_relu", "softplus", "silu"}
    assert ACTIVATIONS["leaky_relu"].fn is jax.nn.leaky_relu
    slope = ACTIVATIONS["leaky_relu(negative_slope=0.2)"]
    assert slope is ACTIVATIONS["leaky_relu(negative_slope=0.2)"] and slope.fn.keywords == {"negative_slope": 0.2}
    assert "leaky_relu(negative_slope=0.2)" in ACTIVATIONS and "mish" not in ACTIVATIONS
    for bad in ("mish", "leaky_relu(negative_slope=nan)", "leaky_relu(negative_slope=x)"):
        with pytest.raises(KeyError):
            ACTIVATIONS[bad]


def test_registry_resolves_the_elu_families_and_rejects_invalid_alphas():
    assert {"gelu", "gelu_tanh", "elu", "celu", "selu"} <= set(ACTIVATIONS)
    assert not any("(" in name for name in ACTIVATIONS)  # parametrised names resolve, but are not listed
    elu = ACTIVATIONS["elu(alpha=0.5)"]
    assert elu is ACTIVATIONS["elu(alpha=0.5)"] and elu.fn.func is jax.nn.elu and elu.fn.keywords == {"alpha": 0.5}
    assert ACTIVATIONS["elu(alpha=1.0)"] is ACTIVATIONS["elu"] and ACTIVATIONS["elu"].fn is jax.nn.elu
    assert ACTIVATIONS["celu(alpha=0.5)"].fn.func is jax.nn.celu
    for bad in ("elu(alpha=0.0)", "elu(alpha=-1.0)", "elu(alpha=nan)", "elu(alpha=inf)", "celu(alpha=-0.5)"):
        with pytest.raises(KeyError):
            ACTIVATIONS[bad]


@pytest.mark.parametrize(
    "fn, name",
    [
        (jax.nn.gelu, "gelu_tanh"),
        (nnx.gelu, "gelu_tanh"),
        (functools.partial(jax.nn.gelu, approximate=True), "gelu_tanh"),
        (functools.partial(jax.nn.gelu, approximate=False), "gelu"),
        (eqx.nn.Lambda(functools.partial(jax.nn.gelu, approximate=False)), "gelu"),
        (jax.nn.elu, "elu"),
        (nnx.elu, "elu"),
        (functools.partial(jax.nn.elu, alpha=1), "elu"),
        (functools.partial(jax.nn.elu, alpha=0.5), "elu(alpha=0.5)"),
        (functools.partial(jax.nn.elu, alpha=np.float32(0.5)), "elu(alpha=0.5)"),
        (jax.nn.celu, "celu"),
        (functools.partial(jax.nn.celu, alpha=2.0), "celu(alpha=2.0)"),
        (jax.nn.selu, "selu"),
        (jax.nn.swish, "silu"),
    ],
)
def test_gelu_and_elu_functions_and_partials_are_recognised(fn, name):
    assert identify_activation(fn, "here") == name


@pytest.mark.parametrize(
    "fn, message",
    [
        (functools.partial(jax.nn.gelu, approximate="yes"), "approximate must be True or False; received 'yes'"),
        (functools.partial(jax.nn.gelu, approximate=1), "approximate must be True or False; received 1"),
        (functools.partial(jax.nn.elu, alpha=-1), "alpha must be a finite Python number > 0; received -1"),
        (functools.partial(jax.nn.elu, alpha=0.0), "alpha must be a finite Python number > 0; received 0.0"),
        (functools.partial(jax.nn.elu, alpha=float("nan")), "alpha must be a finite Python number > 0; received nan"),
        (functools.partial(jax.nn.celu, alpha=float("inf")), "alpha must be a finite Python number > 0"),
        (functools.partial(jax.nn.elu, alpha=jnp.asarray(0.5)), "alpha must be a finite Python number > 0"),
        (functools.partial(jax.nn.elu, beta=0.5), r"only functools\.partial\(jax\.nn\.leaky_relu.*jax\.nn\.gelu"),
        (functools.partial(jax.nn.gelu, False), r"only functools\.partial"),
        (jax.nn.relu6, "it is not one of the known functions"),
        (jax.nn.hard_tanh, "it is not one of the known functions"),
    ],
)
def test_bad_activation_partials_are_refused(fn, message):
    supported = r"gelu_tanh \(jax\.nn\.gelu\)"
    with pytest.raises(TypeError, match=rf"here: activation .* is not supported: {message}.*{supported}"):
        identify_activation(fn, "here")


GELU_ELU_MODELS = [
    jax.nn.gelu,
    functools.partial(jax.nn.gelu, approximate=False),
    functools.partial(jax.nn.elu, alpha=0.5),
]


def _planted(fn):
    model, _ = planted_mlp(jr.key(0), (3, 8, 8, 2), (5, 4), "tanh")
    return eqx.tree_at(lambda m: m.activation, model, fn), np.asarray(jr.normal(jr.key(1), (32, 3)))


def test_a_gelu_mlp_is_saved_and_loaded_with_its_activation(tmp_path):
    fn = GELU_ELU_MODELS[1]  # a partial: the loaded model holds jaxlump's own, recognised by its keyword
    model, x = _planted(fn)
    jaxlump.save(tmp_path / "model.eqx", model)
    loaded = jaxlump.load(tmp_path / "model.eqx")
    assert identify_activation(loaded.activation, "here") == identify_activation(fn, "here")
    np.testing.assert_array_equal(outputs(loaded, x), outputs(model, x))


@pytest.mark.parametrize(
    "fn, kind",
    [
        (functools.partial(jax.nn.elu, alpha=0.5), "eqx"),
        pytest.param(functools.partial(jax.nn.leaky_relu, negative_slope=0.2), "nnx", marks=pytest.mark.slow),
    ],
)
def test_a_sequential_with_a_parametrised_activation_is_saved_and_loaded(fn, kind, tmp_path):
    """The file's layout lists `elu(alpha=0.5)` / `leaky_relu(negative_slope=0.2)`; loading must accept them."""
    if kind == "eqx":
        model = eqx.nn.Sequential(
            [eqx.nn.Linear(3, 4, key=jr.key(1)), eqx.nn.Lambda(fn), eqx.nn.Linear(4, 2, key=jr.key(2))]
        )
    else:
        model = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), fn, nnx.Linear(4, 2, rngs=nnx.Rngs(1)))
    jaxlump.save(tmp_path / "model", model)
    loaded = jaxlump.load(tmp_path / "model")
    x = np.asarray(jr.normal(jr.key(3), (5, 3)), np.float32)
    assert identify_activation(loaded.layers[1], "here") == identify_activation(fn, "here")
    np.testing.assert_array_equal(np.asarray(jax.vmap(loaded)(x) if kind == "eqx" else loaded(x)),
                                  np.asarray(jax.vmap(model)(x) if kind == "eqx" else model(x)))  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("fn", GELU_ELU_MODELS[::2], ids=["gelu_tanh", "elu"])
def test_gelu_and_elu_mlps_lump_a_planted_duplicate(fn):
    """ε = 0 merges the planted exact duplicates of an `eqx.nn.MLP(activation=...)` and keeps its outputs."""
    model, x = _planted(fn)
    small, _ = jaxlump.lump(model, x, 0.0, certify_ode=False)
    assert hidden_widths(small) == (5, 4)
    assert identify_activation(small.activation, "here") == identify_activation(fn, "here")
    np.testing.assert_allclose(outputs(small, x), outputs(model, x), rtol=0, atol=1e-12)


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
