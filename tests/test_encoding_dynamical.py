"""The dynamical ODE view: vector field, polynomial degree, simulate. Truth: forward-mode derivatives of the
forward pass, the forward pass at x(t) = x_ref + t (x − x_ref), degrees counted from σ' by hand."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jaxlump._criteria.encoding import VectorField, dynamical, polynomial_degree, simulate
from jaxlump._errors import RESULTS
from jaxlump._model.activations import ACTIVATIONS
from jaxlump._model.network import DenseChain


def random_chain(key, widths, hidden, output="identity", dtype=jnp.float64) -> DenseChain:
    """Weights N(0, 1/n_in), biases N(0, 0.25)."""
    keys = jr.split(key, 2 * len(widths))
    weights = tuple(
        (jr.normal(keys[2 * l], (n_out, n_in)) / np.sqrt(n_in)).astype(dtype)
        for l, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:], strict=True))
    )
    biases = tuple((0.5 * jr.normal(keys[2 * l + 1], (w.shape[0],))).astype(dtype) for l, w in enumerate(weights))
    activations = (hidden,) * (len(widths) - 2) + (output,)
    return DenseChain(weights, biases, activations, (True,) * len(weights))


# Most simulations share one architecture and one `times` shape, so the compiled solve is reused.
WIDTHS = (3, 8, 8, 2)
TIMES = jnp.array([0.0, 0.25, 0.5, 0.9, 1.0])


def homotopy_states(chain: DenseChain, x, x_ref, t):
    """Per layer the encoding's state, the pre-activations z, at input x_ref + t (x − x_ref), by the forward pass."""
    return tuple(chain.forward(x_ref + t * (x - x_ref))[0])


@pytest.mark.parametrize("hidden", list(ACTIVATIONS))
def test_vector_field_is_the_time_derivative_of_the_forward_pass(hidden):
    chain = random_chain(jr.key(0), (3, 6, 5, 2), hidden, output="sigmoid")
    x, x_ref = jr.normal(jr.key(1), (3,)), jr.normal(jr.key(2), (3,))
    for t in (0.0, 0.37, 0.81):
        state = homotopy_states(chain, x, x_ref, t)
        _, expected = jax.jvp(lambda s: homotopy_states(chain, x, x_ref, s), (t,), (1.0,))
        field = VectorField(chain, x - x_ref)(t, state, None)
        for got, want in zip(field, expected, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_polynomial_degree_sums_the_degrees_of_the_derivatives():
    def chain(*activations):
        weights = tuple(jnp.eye(2) for _ in activations)
        return DenseChain(weights, tuple(jnp.zeros(2) for _ in activations), activations, (True,) * len(activations))

    assert polynomial_degree(chain("tanh", "tanh", "identity")) == 4
    assert polynomial_degree(chain("sigmoid", "tanh", "sigmoid")) == 6
    assert polynomial_degree(chain("identity", "identity")) == 0
    assert polynomial_degree(chain("tanh", "relu", "identity")) is None
    assert polynomial_degree(chain("softplus", "identity")) is None
    mlp = eqx.nn.MLP(2, 1, 4, 3, activation=jax.nn.sigmoid, final_activation=jax.nn.tanh, key=jr.key(3))
    assert polynomial_degree(mlp) == 8


# σ' as a polynomial in a = σ(z), written out by hand: the polynomial (activation) form of the encoding.
POLYNOMIAL_DERIVATIVES = {"tanh": lambda a: 1 - a**2, "sigmoid": lambda a: a - a**2, "identity": jnp.ones_like}


def activation_form_field(chain, direction, activations):
    """ȧ^l = σ'_l(a^l) ⊙ W^l ȧ^{l-1}, ȧ^0 = direction: the polynomial form the module docs describe."""
    rate, rates = direction, []
    for weight, name, a in zip(chain.weights, chain.activations, activations, strict=True):
        rate = POLYNOMIAL_DERIVATIVES[name](a) * (weight @ rate)
        rates.append(rate)
    return tuple(rates)


def test_polynomial_degree_is_the_degree_of_the_activation_form():
    """The activation form is the time derivative of the activations along the homotopy, and along a ray
    y0 + s v of states its (degree + 1)-th difference vanishes while its degree-th does not."""
    chain = random_chain(jr.key(4), (2, 3, 3, 1), "tanh")
    degree = polynomial_degree(chain)
    direction, x = jnp.array([0.3, -0.7]), jnp.array([0.3, -0.7])
    acts = lambda t: tuple(chain.forward(t * x)[1][1:])  # noqa: E731
    _, expected = jax.jvp(acts, (0.4,), (1.0,))
    for got, want in zip(activation_form_field(chain, direction, acts(0.4)), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    y0 = tuple(jr.normal(jr.key(5 + l), (w.shape[0],)) for l, w in enumerate(chain.weights))
    v = tuple(jr.normal(jr.key(9 + l), (w.shape[0],)) for l, w in enumerate(chain.weights))

    def along(s):
        return jnp.concatenate(activation_form_field(chain, direction, tuple(a + s * b for a, b in zip(y0, v))))

    samples = jnp.stack([along(float(s)) for s in range(degree + 2)])
    np.testing.assert_allclose(np.diff(np.asarray(samples), n=degree + 1, axis=0), 0.0, atol=1e-9)
    assert np.max(np.abs(np.diff(np.asarray(samples[:-1]), n=degree, axis=0))) > 1e-3  # degree is not lower


@pytest.mark.parametrize(("hidden", "tolerance"), [("tanh", 1e-9), ("relu", 1e-8)])
def test_trajectory_at_intermediate_times_is_the_forward_pass_along_the_homotopy(hidden, tolerance):
    chain = random_chain(jr.key(6), WIDTHS, hidden)
    x = jr.normal(jr.key(7), (5, 3))
    trajectory = simulate(chain, x, times=TIMES)
    assert trajectory.result == RESULTS.successful
    np.testing.assert_array_equal(trajectory.times, TIMES)
    for k, t in enumerate(TIMES):
        expected = chain.forward(t * x)[1][1:]
        for layer, want in zip(trajectory.activations, expected, strict=True):
            assert layer.shape == (5, len(TIMES), want.shape[1])
            np.testing.assert_allclose(layer[:, k], want, rtol=0, atol=tolerance)


def test_x_ref_starts_the_homotopy_there():
    chain = random_chain(jr.key(8), WIDTHS, "tanh")
    x, x_ref = jr.normal(jr.key(9), (5, 3)), jnp.array([1.0, -2.0, 0.5])
    outputs = simulate(chain, x, x_ref=x_ref, times=TIMES).activations[-1]
    np.testing.assert_allclose(outputs[:, 0], np.broadcast_to(chain(x_ref), (5, 2)), atol=1e-12)
    np.testing.assert_allclose(outputs[:, 2], chain(0.5 * (x + x_ref)), atol=1e-9)
    np.testing.assert_allclose(outputs[:, -1], chain(x), atol=1e-9)
    # Another reference changes the path but not its end point.
    default = simulate(chain, x, times=TIMES).activations[-1]
    assert np.max(np.abs(default[:, 2] - outputs[:, 2])) > 1e-2
    np.testing.assert_allclose(default[:, -1], outputs[:, -1], atol=1e-9)


def test_simulate_under_vmap_over_inputs():
    chain = random_chain(jr.key(10), WIDTHS, "tanh")
    x = jr.normal(jr.key(11), (4, 3))
    per_example = jax.vmap(lambda xi: simulate(chain, xi[None], times=TIMES))(x)
    assert bool(jnp.all(per_example.result == RESULTS.successful))
    np.testing.assert_allclose(per_example.activations[-1][:, 0, -1], chain(x), atol=1e-9)


def test_simulate_inside_jit_with_a_traced_and_vmapped_chain():
    """What a sweep does: one compiled call over a batch of chains (here: biases scaled by 0 and 1)."""
    chain = random_chain(jr.key(12), WIDTHS, "tanh")
    x = jr.normal(jr.key(13), (4, 3))

    @jax.jit
    def outputs(scales):
        def one(scale):
            scaled = eqx.tree_at(lambda c: c.biases, chain, tuple(scale * b for b in chain.biases))
            return simulate(scaled, x, times=TIMES).activations[-1][:, -1]

        return jax.vmap(one)(scales)

    both = outputs(jnp.array([0.0, 1.0]))
    np.testing.assert_allclose(both[1], chain(x), atol=1e-9)
    unbiased = DenseChain(chain.weights, tuple(0 * b for b in chain.biases), chain.activations, chain.use_bias)
    np.testing.assert_allclose(both[0], unbiased(x), atol=1e-9)


def test_simulate_does_not_recompile_for_new_weights_inputs_or_tolerances():
    chain = random_chain(jr.key(12), WIDTHS, "tanh")
    x = jr.normal(jr.key(13), (5, 3))
    simulate(chain, x, times=TIMES)
    before = eqx.debug.get_num_traces(dynamical._solve_counted)
    other = random_chain(jr.key(14), WIDTHS, "tanh")
    simulate(other, x + 1.0, rtol=1e-9, atol=1e-11, x_ref=jnp.ones(3), times=TIMES / 2)
    assert eqx.debug.get_num_traces(dynamical._solve_counted) == before


def test_simulate_accepts_mlp_and_sequential_models():
    mlp = eqx.nn.MLP(3, 2, 8, 2, activation=jax.nn.tanh, key=jr.key(15))
    x = jr.normal(jr.key(16), (5, 3))
    np.testing.assert_allclose(simulate(mlp, x, times=TIMES).activations[-1][:, -1], jax.vmap(mlp)(x), atol=1e-9)
    sequential = eqx.nn.Sequential(
        [eqx.nn.Linear(3, 8, key=jr.key(17)), eqx.nn.Lambda(jax.nn.relu)]
        + [eqx.nn.Linear(8, 8, key=jr.key(18)), eqx.nn.Lambda(jax.nn.relu), eqx.nn.Linear(8, 2, key=jr.key(19))]
    )
    trajectory = simulate(sequential, x, times=TIMES)
    hidden = jax.nn.relu(jax.vmap(sequential.layers[0])(0.5 * x))
    np.testing.assert_allclose(trajectory.activations[0][:, 2], hidden, atol=1e-8)
    np.testing.assert_allclose(trajectory.activations[-1][:, -1], jax.vmap(sequential)(x), atol=1e-8)


def test_float32_stays_float32():
    chain = random_chain(jr.key(19), (3, 8, 2), "tanh", dtype=jnp.float32)
    trajectory = simulate(chain, jr.normal(jr.key(20), (4, 3), jnp.float32))
    assert trajectory.times.dtype == jnp.float32
    assert all(layer.dtype == jnp.float32 for layer in trajectory.activations)


def test_a_failed_solve_is_reported_not_raised_even_under_vmap():
    chain = random_chain(jr.key(21), WIDTHS, "tanh")
    x = 3.0 * jr.normal(jr.key(22), (3, 3))
    results = jax.vmap(lambda xi: simulate(chain, xi[None], times=TIMES, max_steps=2).result)(x)
    assert bool(jnp.all(results == RESULTS.ode_solve_failed))


def test_default_solver_is_heun_for_piecewise_constant_fields_only():
    assert isinstance(dynamical.default_solver(random_chain(jr.key(0), (2, 3, 1), "relu")), diffrax.Heun)
    assert isinstance(dynamical.default_solver(random_chain(jr.key(0), (2, 3, 1), "leaky_relu")), diffrax.Heun)
    assert isinstance(dynamical.default_solver(random_chain(jr.key(0), (2, 3, 1), "identity")), diffrax.Tsit5)
    assert isinstance(dynamical.default_solver(random_chain(jr.key(0), (2, 3, 1), "softplus")), diffrax.Tsit5)


@pytest.mark.parametrize(
    ("kwargs", "error", "argument"),
    [
        ({"x": np.zeros((4, 5))}, ValueError, "`x`"),
        ({"x": np.array([[0.0, np.nan, 1.0]])}, ValueError, "`x`"),
        ({"x": np.zeros((0, 3))}, ValueError, "`x`"),
        ({"x": np.zeros(3)}, ValueError, "`x`"),
        ({"x_ref": np.zeros(4)}, ValueError, "`x_ref`"),
        ({"x_ref": np.array([0.0, np.inf, 0.0])}, ValueError, "`x_ref`"),
        ({"times": (0.5, 0.2)}, ValueError, "`times`"),
        ({"times": (1.5,)}, ValueError, "`times`"),
        ({"times": ()}, ValueError, "`times`"),
        ({"rtol": -1e-3}, ValueError, "`rtol`"),
        ({"atol": "tight"}, TypeError, "`atol`"),
        ({"max_steps": 0}, ValueError, "`max_steps`"),
        ({"solver": diffrax.Euler()}, TypeError, "`solver`"),
    ],
)
def test_simulate_refuses_bad_input_naming_the_argument(kwargs, error, argument):
    chain = random_chain(jr.key(23), (3, 4, 1), "tanh")
    arguments = {"x": np.ones((2, 3))} | kwargs
    with pytest.raises(error, match=argument):
        simulate(chain, arguments.pop("x"), **arguments)


def test_simulate_refuses_an_unsupported_model():
    with pytest.raises(TypeError, match="`model`"):
        simulate(eqx.nn.Conv1d(1, 1, 3, key=jr.key(0)), np.ones((2, 3)))


def saturated_chain(dtype) -> DenseChain:
    """1 → 1 → 1: the tanh neuron has z = 10 at x_ref = 0 (tanh rounds to exactly 1 in float32) and z = −10 at
    x = 2, so its activation must travel from +1 to −1 along the homotopy."""
    weights = (jnp.array([[-10.0]], dtype), jnp.array([[1.0]], dtype))
    return DenseChain(weights, (jnp.array([10.0], dtype), jnp.array([0.0], dtype)), ("tanh", "identity"), (True, True))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_a_saturated_neuron_does_not_freeze(dtype):
    """In the activation form, σ'(a = 1) = 1 − 1² = 0 freezes this neuron at +1 (the network gives −1) while the
    solve reports success; in the z form the state moves whatever σ' is."""
    chain = saturated_chain(dtype)
    assert float(jnp.tanh(jnp.asarray(10.0, jnp.float32))) == 1.0  # the premise: saturated in float32
    x = jnp.array([[2.0], [1.0], [0.5]], dtype)
    trajectory = simulate(chain, x, times=TIMES.astype(dtype))
    assert trajectory.result == RESULTS.successful
    expected = np.tanh(10.0 - 10.0 * np.asarray(x, np.float64))  # −1, tanh(0) = 0, tanh(5)
    np.testing.assert_allclose(np.asarray(trajectory.activations[-1][:, -1, 0]), expected[:, 0], atol=1e-5)
    for k, t in enumerate(np.asarray(TIMES)):  # the whole path, not only its end
        np.testing.assert_allclose(
            np.asarray(trajectory.activations[0][:, k, 0]), np.tanh(10.0 - 10.0 * t * np.asarray(x[:, 0])), atol=1e-5
        )


def test_an_endpoint_away_from_the_forward_pass_is_reported():
    """A declared derivative that is wrong outside the declaration's probe range ([−7.9, 7.9]) makes the ODE end
    away from the network although the solver succeeds: `simulate` must say so, not report success."""
    from jaxlump import Activation

    lying = Activation("relu_lying_above_8", jax.nn.relu, lambda z: ((z > 0) & (z < 8)).astype(z.dtype), 1.0,
                       kinked=True)  # fmt: skip
    chain = DenseChain((jnp.array([[20.0]]), jnp.array([[1.0]])), (jnp.zeros(1), jnp.zeros(1)),
                       (lying.name, "identity"), (True, True))  # fmt: skip
    trajectory = simulate(chain, jnp.array([[1.0]]))
    assert float(trajectory.activations[-1][0, -1, 0]) == pytest.approx(8.0, abs=1e-6)  # the forward pass gives 20
    assert trajectory.result == RESULTS.ode_endpoint_mismatch
    assert simulate(chain, jnp.array([[0.3]])).result == RESULTS.successful  # below 8 the declaration is right


def test_dynamical_lumping_inherits_the_unfrozen_encoding():
    """Neuron A (z = 10 − 10x) flips from +1 to −1 along the path to x = 2; neuron B (z = 10) stays at +1. In
    float32 the activation form froze A at +1, so the dynamical discrepancy saw two equal neurons and merged
    them (output 2 instead of 0). The z form keeps them apart."""
    import jaxlump

    seq = eqx.nn.Sequential([eqx.nn.Linear(1, 2, dtype=jnp.float32, key=jr.key(0)), eqx.nn.Lambda(jnp.tanh),
                             eqx.nn.Linear(2, 1, dtype=jnp.float32, key=jr.key(1))])  # fmt: skip
    seq = eqx.tree_at(
        lambda m: (m.layers[0].weight, m.layers[0].bias, m.layers[2].weight, m.layers[2].bias),
        seq,
        (jnp.array([[-10.0], [0.0]], jnp.float32), jnp.array([10.0, 10.0], jnp.float32),
         jnp.array([[1.0, 1.0]], jnp.float32), jnp.array([0.0], jnp.float32)),
    )  # fmt: skip
    x = jnp.array([[2.0], [1.8], [2.2]], jnp.float32)
    lumped, info = jaxlump.lump(seq, x, 0.2, discrepancy=jaxlump.Dynamical(), reconstruct=False)
    assert tuple(info.widths_after.tolist()) == (1, 2, 1)
    np.testing.assert_allclose(jax.vmap(lumped)(x), jax.vmap(seq)(x), atol=1e-6)


def test_simulate_refuses_a_bad_traced_tolerance():
    chain = random_chain(jr.key(23), (3, 4, 1), "tanh")
    run = jax.jit(lambda rtol: simulate(chain, np.ones((2, 3)), rtol=rtol).activations[-1])
    with pytest.raises(Exception, match="`rtol` must be a finite number > 0"):
        jax.block_until_ready(run(-1.0))
