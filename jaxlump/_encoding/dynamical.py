"""The dynamical ODE view of a network, simulated with diffrax (DESIGN §2b).

Along the homotopy `x(t) = x_ref + t (x − x_ref)`, t ∈ [0, 1], every neuron is a state variable whose value
at time t is its activation at input `x(t)`. Differentiating the forward pass gives

    ż^l = W^l ȧ^{l-1},   ȧ^0 = x − x_ref,   ȧ^l = σ'_l ⊙ ż^l.

State choice, per layer, from `ACTIVATIONS[σ_l].state`:

- `"a"` (identity, tanh, sigmoid): the state is `a^l` and `ȧ^l = σ'_l(a^l) ⊙ (W^l ȧ^{l-1})`, with `σ'` a
  polynomial in the state itself (`1`, `1 − a²`, `a − a²`). The vector field is then a polynomial ODE.
- `"z"` (relu, leaky_relu, softplus, silu): the state is `z^l` and `ż^l = W^l ȧ^{l-1}`,
  `ȧ^l = σ'_l(z^l) ⊙ ż^l`. For relu / leaky_relu the field is piecewise constant in the state and
  discontinuous where a pre-activation crosses 0; the adaptive step size locates each crossing.

The initial state is the forward pass at `x_ref`, so the state at t = 1 is the network's forward pass at x
(checked numerically by `jaxlump.check_encoding`).
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._adapters import to_chain
from .._custom_types import Inputs
from .._errors import RESULTS, check_data, check_finite, is_traced
from .._network import ACTIVATIONS, DenseChain

_HIGHEST = jax.lax.Precision.HIGHEST
# Plain assignments (not annotations), so that linters do not parse the shape strings as Python.
_Direction = Float[Array, " n_in"]
_ReferenceInput = Float[ArrayLike, " n_in"]
_Times = Float[Array, " times"]
_LayerTrajectory = Float[Array, "batch times width"]


class VectorField(eqx.Module):
    """The right-hand side of the dynamical encoding, in diffrax's `(t, y, args)` form.

    `y` is a tuple with one state per layer, `a^l` for `"a"`-state layers and `z^l` for `"z"`-state ones
    (see the module docs). Returns the tuple of their time derivatives:

        "a" layers: ȧ^l = σ'_l(a^l) ⊙ (W^l ȧ^{l-1});   "z" layers: ż^l = W^l ȧ^{l-1};   ȧ^0 = direction.

    Biases do not appear: they enter through the initial state only.

    **Arguments:**

    - `chain`: the `DenseChain`.
    - `direction`: `x − x_ref`, shape `(n_0,)`.

    ```python
    import jax.numpy as jnp
    from jaxlump._network import DenseChain
    from jaxlump._encoding.dynamical import VectorField

    chain = DenseChain((jnp.array([[2.0]]),), (jnp.array([0.0]),), ("tanh",), (True,))
    (da,) = VectorField(chain, jnp.array([1.0]))(0.0, (jnp.array([0.5]),), None)
    assert jnp.allclose(da, 2.0 * (1 - 0.5**2))
    ```

    From DESIGN §2b (jaxlump's formalization of Dhiman et al., 2026).
    """

    chain: DenseChain
    direction: _Direction

    def __call__(self, t, y: tuple[Array, ...], args) -> tuple[Array, ...]:
        del t, args
        rate = self.direction  # ȧ^{l-1}, starting from ȧ^0
        derivatives = []
        for weight, name, state in zip(self.chain.weights, self.chain.activations, y, strict=True):
            activation = ACTIVATIONS[name]
            z_rate = jnp.matmul(weight, rate.astype(state.dtype), precision=_HIGHEST)
            if activation.state == "a":
                rate = activation.derivative_in_a(state) * z_rate
                derivatives.append(rate)
            else:
                derivatives.append(z_rate)
                rate = activation.derivative_in_z(state) * z_rate
        return tuple(derivatives)


def polynomial_degree(chain) -> int | None:
    """Degree of the dynamical encoding's vector field as a polynomial in the states, or `None`.

    With every layer `"a"`-state, `ȧ^l = σ'_l(a^l) ⊙ W^l ȧ^{l-1}` where `ȧ^{l-1}` is itself the field of
    layer l−1, so `deg ȧ^l = Σ_{j ≤ l} deg σ'_j` (tanh and sigmoid: 2, identity: 0). The field's degree is
    the largest, `Σ_l deg σ'_l`: `2 (L − 1)` for a tanh/sigmoid MLP with a linear output layer, `2 L` when
    every layer is tanh/sigmoid. This is the generic degree (exact unless weights vanish). `None` when some
    layer is `"z"`-state (relu, leaky_relu: piecewise-linear field; softplus, silu: not polynomial).

    **Arguments:**

    - `chain`: a `DenseChain` or any model `jaxlump` accepts.

    **Returns:**

    The degree, an `int`, or `None`.

    ```python
    import equinox as eqx, jax, jax.random as jr
    from jaxlump._encoding.dynamical import polynomial_degree

    assert polynomial_degree(eqx.nn.MLP(2, 1, 8, 3, activation=jax.nn.tanh, key=jr.key(0))) == 6
    assert polynomial_degree(eqx.nn.MLP(2, 1, 8, 3, key=jr.key(0))) is None  # relu
    ```

    From DESIGN §2b.
    """
    table = [ACTIVATIONS[name] for name in to_chain(chain, "chain").activations]
    if any(act.state != "a" for act in table):
        return None
    return sum(act.degree for act in table)


def initial_state(chain: DenseChain, x_ref: Array) -> tuple[Array, ...]:
    """The ODE state at t = 0: per layer `a^l(x_ref)` or `z^l(x_ref)` according to the state choice."""
    states, a = [], x_ref
    for weight, bias, name in zip(chain.weights, chain.biases, chain.activations, strict=True):
        z = jnp.matmul(weight, a, precision=_HIGHEST) + bias
        a = ACTIVATIONS[name].fn(z)
        states.append(a if ACTIVATIONS[name].state == "a" else z)
    return tuple(states)


def states_to_activations(chain: DenseChain, states: tuple[Array, ...]) -> tuple[Array, ...]:
    """Map per-layer ODE states to activations: `σ(z)` for `"z"`-state layers, unchanged otherwise."""
    pairs = zip(chain.activations, states, strict=True)
    return tuple(ACTIVATIONS[name].fn(s) if ACTIVATIONS[name].state == "z" else s for name, s in pairs)


class Trajectory(eqx.Module):
    """Simulated induced dynamics: the activations along the homotopy `x(t) = x_ref + t (x − x_ref)`.

    - `times`: the sample times, shape `(n_times,)`.
    - `activations`: per layer l = 1..L an array `(batch, n_times, n_l)`, `a^l(x(t_k))` (for `"z"`-state
      layers, `σ(z)` of the integrated pre-activation). The last one is the network output.
    - `result`: `RESULTS.successful`, or `RESULTS.ode_solve_failed` if any example's solve failed (its
      values are then not meaningful, diffrax fills them with inf).
    """

    times: _Times
    activations: tuple[_LayerTrajectory, ...]
    result: RESULTS


def _default_tolerances(dtype) -> tuple[float, float]:
    return (1e-10, 1e-12) if jnp.finfo(dtype).bits >= 64 else (1e-6, 1e-8)


def _check_tolerance(value, name: str, default: float, dtype) -> jax.Array:
    if value is None:
        return jnp.asarray(default, dtype)
    if not is_traced(value):
        try:
            number = float(value)
        except (TypeError, ValueError) as e:
            raise TypeError(f"`{name}` must be a positive number; received {value!r}.") from e
        if not (np.isfinite(number) and number > 0):
            raise ValueError(f"`{name}` must be a finite number > 0; received {value!r}.")
    return jnp.asarray(value, dtype)


def _check_x_ref(x_ref, width: int, dtype) -> jax.Array:
    if x_ref is None:
        return jnp.zeros(width, dtype)
    x_ref = jnp.asarray(x_ref)
    if x_ref.shape != (width,):
        raise ValueError(f"`x_ref` must have shape ({width},) (the model's input width); received shape {x_ref.shape}.")
    return check_finite(x_ref.astype(dtype), "x_ref")


def _check_times(times, dtype) -> jax.Array:
    times = jnp.asarray(times, dtype)
    if times.ndim != 1 or times.shape[0] == 0:
        raise ValueError(f"`times` must be a non-empty 1-D sequence of times in [0, 1]; received shape {times.shape}.")
    message = "`times` must be non-decreasing and lie in [0, 1]"
    if is_traced(times):
        bad = ~jnp.all(jnp.isfinite(times) & (times >= 0) & (times <= 1)) | jnp.any(jnp.diff(times) < 0)
        return eqx.error_if(times, bad, message + ".")
    values = np.asarray(times)  # NumPy: concrete even inside a `jax.jit` trace
    if not (np.all(np.isfinite(values) & (values >= 0) & (values <= 1)) and np.all(np.diff(values) >= 0)):
        raise ValueError(f"{message}; received {values.tolist()}.")
    return times


_KINKED = frozenset({"relu", "leaky_relu"})
_PIECEWISE_LINEAR = _KINKED | {"identity"}


def default_solver(chain: DenseChain) -> diffrax.AbstractAdaptiveSolver:
    """`diffrax.Heun()` when the field is piecewise constant (relu / leaky_relu / identity layers only, at
    least one kink), else `diffrax.Tsit5()`.

    Between kinks a piecewise-constant field is integrated exactly by any Runge–Kutta method, so accuracy is
    decided by how well each kink is located, i.e. by how well the embedded error estimate of a step that
    straddles a kink tracks its true error: far better for Heun (low order) than for Tsit5, as measured on
    4→16→12→3 relu nets (16 inputs, default tolerances): max error 2e-10–6e-10 with Heun vs 2e-8–3e-8 with
    Tsit5 in float64, 3e-6 vs 2.4e-4 in float32, for about as many steps.
    """
    names = set(chain.activations)
    return diffrax.Heun() if names <= _PIECEWISE_LINEAR and names != {"identity"} else diffrax.Tsit5()


def default_max_steps(chain: DenseChain) -> int:
    """4096, plus 64 per neuron whose activation has a kink (relu, leaky_relu): each kink costs ~20 steps."""
    kinked = sum(w.shape[0] for w, name in zip(chain.weights, chain.activations, strict=True) if name in _KINKED)
    return 4096 + 64 * kinked


def _solve_uncompiled(chain, x, x_ref, times, solver, controller, max_steps):
    y0 = initial_state(chain, x_ref)
    zero, one = jnp.zeros((), times.dtype), jnp.ones((), times.dtype)

    def solve_one(x_one):
        solution = diffrax.diffeqsolve(
            diffrax.ODETerm(VectorField(chain, x_one - x_ref)),
            solver,
            t0=zero,
            t1=one,
            dt0=None,
            y0=y0,
            saveat=diffrax.SaveAt(ts=times),
            stepsize_controller=controller,
            max_steps=max_steps,
            throw=False,
        )
        return solution.ys, solution.result == diffrax.RESULTS.successful

    states, ok = jax.vmap(solve_one)(x)
    result = RESULTS.where(jnp.all(ok), RESULTS.successful, RESULTS.ode_solve_failed)
    return Trajectory(times, states_to_activations(chain, states), result)


# Counts its traces (`eqx.debug.get_num_traces`), so tests can prove new weights, inputs or tolerances of the
# same shapes do not recompile.
_solve_counted = eqx.debug.assert_max_traces(_solve_uncompiled, max_traces=None)
_solve = eqx.filter_jit(_solve_counted)


def simulate(
    model,
    x: Inputs,
    *,
    x_ref: _ReferenceInput | None = None,
    times=(1.0,),
    solver: diffrax.AbstractAdaptiveSolver | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int | None = None,
) -> Trajectory:
    """Simulate the dynamical encoding: every neuron's activation along `x(t) = x_ref + t (x − x_ref)`.

    Solves `ż^l = W^l ȧ^{l-1}`, `ȧ^l = σ'_l ⊙ ż^l`, `ȧ^0 = x − x_ref` from the forward pass at `x_ref`
    (see `VectorField` for the state choice) on t ∈ [0, 1], one adaptive diffrax solve per example, batched
    with `jax.vmap` and compiled with `eqx.filter_jit`. Callable inside `jax.jit`/`jax.vmap`, also with a
    traced `DenseChain`. A failed solve does not raise: it is reported in `result`.

    Defaults: a `diffrax.PIDController` with `rtol`/`atol` = 1e-10/1e-12 in float64 and 1e-6/1e-8 in float32
    (and narrower types); solver `diffrax.Tsit5()`, or `diffrax.Heun()` for relu / leaky_relu networks (see
    `default_solver`). The measured accuracy is listed in `check_encoding`.

    Cost: smooth fields take about 20 (float32) to 100 (float64) steps whatever the width. A relu /
    leaky_relu field is discontinuous where a pre-activation crosses 0; each crossing ("kink") is located by
    step rejection and costs about 20 steps in float64 (10 in float32). Measured on 8→W→W→W→4 relu nets in
    float64: at most 1.3e3 steps for W = 16, 4.7e3 for W = 64, 1.4e4 for W = 256, i.e. about 20 steps per
    relu / leaky_relu neuron; hence the default `max_steps` (see below). A solve that runs out of steps is
    reported as `RESULTS.ode_solve_failed`.

    **Arguments:**

    - `model`: a `DenseChain` or any model `jaxlump` accepts.
    - `x`: inputs, shape `(batch, n_0)`, finite.
    - `x_ref`: the homotopy's start, shape `(n_0,)`; default zeros (the calibration mean is a good choice).
    - `times`: non-decreasing sample times in [0, 1]; default `(1.0,)`.
    - `solver`: an adaptive diffrax solver; default from `default_solver`.
    - `rtol`, `atol`: the step-size controller's tolerances; defaults by dtype (above).
    - `max_steps`: the most steps (accepted + rejected) per solve, static. Default: 4096, plus 64 per
      relu / leaky_relu neuron (about 3× the steps measured per kink).

    **Returns:**

    A `Trajectory` with `activations[l]` of shape `(batch, len(times), n_{l+1})`.

    **Raises:**

    `ValueError` naming the argument for bad `x` (wrong width, NaN/inf, empty, not 2-D), `x_ref`, `times`,
    `rtol`, `atol` or `max_steps`; `TypeError` for an unsupported model or a solver without error estimate.

    ```python
    import equinox as eqx, jax, jax.numpy as jnp, jax.random as jr
    from jaxlump._encoding.dynamical import simulate

    mlp = eqx.nn.MLP(3, 2, 8, 2, activation=jax.nn.tanh, key=jr.key(0))
    x = jr.normal(jr.key(1), (4, 3))
    trajectory = simulate(mlp, x, times=(0.5, 1.0))
    assert trajectory.activations[-1].shape == (4, 2, 2)
    assert jnp.allclose(trajectory.activations[-1][:, -1], jax.vmap(mlp)(x), atol=1e-4)
    ```

    From DESIGN §2b (jaxlump's formalization of Dhiman et al., 2026).
    """
    chain = to_chain(model)
    x = check_data(x, "x", width=chain.widths[0])
    dtype = jnp.result_type(*chain.weights, *chain.biases, x)
    x = x.astype(dtype)
    x_ref = _check_x_ref(x_ref, chain.widths[0], dtype)
    times = _check_times(times, dtype)
    default_rtol, default_atol = _default_tolerances(dtype)
    rtol = _check_tolerance(rtol, "rtol", default_rtol, dtype)
    controller = diffrax.PIDController(rtol=rtol, atol=_check_tolerance(atol, "atol", default_atol, dtype))
    if max_steps is None:
        max_steps = default_max_steps(chain)
    elif isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
        raise ValueError(f"`max_steps` must be a positive int or None; received {max_steps!r}.")
    solver = default_solver(chain) if solver is None else solver
    if not isinstance(solver, diffrax.AbstractAdaptiveSolver):
        raise TypeError(
            f"`solver` must be an adaptive diffrax solver (with an error estimate, e.g. diffrax.Tsit5()); "
            f"received {type(solver).__name__}."
        )
    return _solve(chain, x, x_ref, times, solver, controller, int(max_steps))
