"""The dynamical ODE view of a network, simulated with diffrax (DESIGN §2b).

Along the homotopy `x(t) = x_ref + t (x − x_ref)`, t ∈ [0, 1], every neuron is a state variable whose value
at time t is its activation at input `x(t)`. Differentiating the forward pass gives

    ż^l = W^l ȧ^{l-1},   ȧ^0 = x − x_ref,   ȧ^l = σ'_l(z^l) ⊙ ż^l.

**State choice: the pre-activations `z^l`, for every activation.** jaxlump integrates `z^l` and evaluates
`σ'_l` from `z^l` (`ACTIVATIONS[σ].derivative`); a neuron's activation along the path is `σ_l(z^l(t))`.

The same dynamics can be written in the activations, `ȧ^l = σ'_l(a^l) ⊙ W^l ȧ^{l-1}` with `σ'` a polynomial
in `a` for tanh (`1 − a²`), sigmoid (`a − a²`) and identity (`1`): a **polynomial ODE** of degree
`Σ_l deg σ'_l` (`polynomial_degree`). jaxlump does *not* integrate that form, because it freezes: a
saturated neuron (`|z| ≳ 9` for tanh in float32) has `a` rounded to exactly ±1, so `σ'(a) = 0` and its state
never moves, even when the path crosses to the other branch — the trajectory ends at +1 where the network
gives −1. In `z` the state moves with `ż^l = W^l ȧ^{l-1}` whatever σ' is, so nothing can freeze; the field is
then smooth but not polynomial for tanh / sigmoid / softplus / silu / gelu / celu, piecewise constant for relu /
leaky_relu (discontinuous where a pre-activation crosses 0; the adaptive step size locates each crossing), and
smooth but for that jump for elu(alpha ≠ 1) / selu.

The initial state is the forward pass at `x_ref`, so the state at t = 1 is the network's forward pass at x.
`simulate` checks this on every solve (it costs one forward pass): when `max |z^l(1) − z^l(x)|` exceeds
`sqrt(rtol) (1 + |z^l(x)|) + sqrt(atol)` the result is `RESULTS.ode_endpoint_mismatch`, never `successful`;
a solve that fails (e.g. runs out of steps) is `RESULTS.ode_solve_failed`.
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ..._custom_types import Inputs
from ..._errors import RESULTS, check_data, check_finite, is_traced
from ..._model import to_chain
from ..._model.activations import ACTIVATIONS
from ..._model.network import DenseChain, refuse_gated

_HIGHEST = jax.lax.Precision.HIGHEST
# Plain assignments (not annotations), so that linters do not parse the shape strings as Python.
_Direction = Float[Array, " n_in"]
_ReferenceInput = Float[ArrayLike, " n_in"]
_Times = Float[Array, " times"]
_LayerTrajectory = Float[Array, "batch times _width"]  # "_": widths differ between layers


class VectorField(eqx.Module):
    """The right-hand side of the dynamical encoding, in diffrax's `(t, y, args)` form.

    `y` is a tuple with one state per layer, the pre-activations `z^l` (see the module docs). Returns the
    tuple of their time derivatives:

        ż^l = W^l ȧ^{l-1},   ȧ^l = σ'_l(z^l) ⊙ ż^l,   ȧ^0 = direction.

    Biases do not appear: they enter through the initial state only.

    **Arguments:**

    - `chain`: the `DenseChain`.
    - `direction`: `x − x_ref`, shape `(n_0,)`.

    ```python
    import jax.numpy as jnp
    from jaxlump._model.network import DenseChain
    from jaxlump._criteria.encoding.dynamical import VectorField

    chain = DenseChain((jnp.array([[2.0]]),), (jnp.array([0.0]),), ("tanh",), (True,))
    (dz,) = VectorField(chain, jnp.array([1.0]))(0.0, (jnp.array([0.5]),), None)
    assert jnp.allclose(dz, 2.0)  # ż = W ȧ⁰, whatever σ'(z) is
    ```

    From DESIGN §2b (jaxlump's formalization of Dhiman et al., 2026).
    """

    chain: DenseChain
    direction: _Direction

    def __call__(self, t, y: tuple[Array, ...], args) -> tuple[Array, ...]:
        del t, args
        rate = self.direction  # ȧ^{l-1}, starting from ȧ^0
        derivatives = []
        for weight, name, z in zip(self.chain.weights, self.chain.activations, y, strict=True):
            z_rate = jnp.matmul(weight, rate.astype(z.dtype), precision=_HIGHEST)
            derivatives.append(z_rate)
            rate = ACTIVATIONS[name].derivative(z) * z_rate
        return tuple(derivatives)


def polynomial_degree(chain) -> int | None:
    """Degree of the polynomial form of the dynamical encoding (in the activations), or `None`.

    In the activation form (see the module docs; jaxlump integrates the equivalent `z` form),
    `ȧ^l = σ'_l(a^l) ⊙ W^l ȧ^{l-1}` where `ȧ^{l-1}` is itself the field of
    layer l−1, so `deg ȧ^l = Σ_{j ≤ l} deg σ'_j` (tanh and sigmoid: 2, identity: 0). The field's degree is
    the largest, `Σ_l deg σ'_l`: `2 (L − 1)` for a tanh/sigmoid MLP with a linear output layer, `2 L` when
    every layer is tanh/sigmoid. This is the generic degree (exact unless weights vanish). `None` when some
    σ' is not a polynomial in σ (relu, leaky_relu: piecewise-linear field; softplus, silu: not polynomial).

    **Arguments:**

    - `chain`: a `DenseChain` or any model `jaxlump` accepts.

    **Returns:**

    The degree, an `int`, or `None`.

    ```python
    import equinox as eqx, jax, jax.random as jr
    from jaxlump._criteria.encoding.dynamical import polynomial_degree

    assert polynomial_degree(eqx.nn.MLP(2, 1, 8, 3, activation=jax.nn.tanh, key=jr.key(0))) == 6
    assert polynomial_degree(eqx.nn.MLP(2, 1, 8, 3, key=jr.key(0))) is None  # relu
    ```

    From DESIGN §2b.
    """
    chain = to_chain(chain, "chain")
    refuse_gated(chain, "chain", "the dynamical ODE encoding (polynomial_degree)")
    table = [ACTIVATIONS[name] for name in chain.activations]
    if any(act.degree is None for act in table):
        return None
    return sum(act.degree for act in table)


def pre_activations(chain: DenseChain, x: Array) -> tuple[Array, ...]:
    """The forward pass's pre-activations `z^l` at one input or a batch (full-precision matmuls, as in the ODE)."""
    states, a = [], x
    for weight, bias, name in zip(chain.weights, chain.biases, chain.activations, strict=True):
        z = jnp.matmul(a, weight.T, precision=_HIGHEST) + bias
        a = ACTIVATIONS[name].fn(z)
        states.append(z)
    return tuple(states)


def states_to_activations(chain: DenseChain, states: tuple[Array, ...]) -> tuple[Array, ...]:
    """Map per-layer ODE states `z^l` to activations `σ_l(z^l)`."""
    return tuple(ACTIVATIONS[name].fn(z) for name, z in zip(chain.activations, states, strict=True))


class Trajectory(eqx.Module):
    """Simulated induced dynamics: the activations along the homotopy `x(t) = x_ref + t (x − x_ref)`.

    - `times`: the sample times, shape `(n_times,)`.
    - `activations`: per layer l = 1..L an array `(batch, n_times, n_l)`, `a^l(x(t_k))` (for `"z"`-state
      layers, `σ(z)` of the integrated pre-activation). The last one is the network output.
    - `result`: `RESULTS.successful`; `RESULTS.ode_solve_failed` if any example's solve failed (e.g. ran out
      of steps; its values are then not meaningful, diffrax fills them with inf); `RESULTS.ode_endpoint_mismatch`
      if a solve ended away from the forward pass at x (see the module docs).
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
    # Traced (inside jax.jit): checked where it runs; the returned value must be used for the check to stay.
    value = jnp.asarray(value, dtype)
    return eqx.error_if(
        value,
        ~(jnp.isfinite(value) & (value > 0)),
        f"`{name}` must be a finite number > 0 (received a traced value that is not: negative, zero, NaN or inf).",
    )


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


def _kinked(name: str) -> bool:
    return ACTIVATIONS[name].kinked


def default_solver(chain: DenseChain) -> diffrax.AbstractAdaptiveSolver:
    """`diffrax.Heun()` when the field is piecewise constant (`Activation.piecewise_linear`: kinked activations
    such as relu / leaky_relu, and identity layers only, at least one kink), else `diffrax.Tsit5()`.

    Between kinks a piecewise-constant field is integrated exactly by any Runge–Kutta method, so accuracy is
    decided by how well each kink is located, i.e. by how well the embedded error estimate of a step that
    straddles a kink tracks its true error: far better for Heun (low order) than for Tsit5, as measured on
    4→16→12→3 relu nets (16 inputs, default tolerances): max error 2e-10–6e-10 with Heun vs 2e-8–3e-8 with
    Tsit5 in float64, 3e-6 vs 2.4e-4 in float32, for about as many steps. A kinked field that is not piecewise
    constant (elu(alpha=0.5), selu: exponential below the kink) is Tsit5's: Heun did not reach the default
    float64 tolerances within 100,000 steps on a 3→8→8→2 elu(alpha=0.5) net, where Tsit5 is within 4e-8.
    """
    table = [ACTIVATIONS[name] for name in chain.activations]
    piecewise_constant = all(act.piecewise_linear for act in table)
    return diffrax.Heun() if piecewise_constant and any(act.kinked for act in table) else diffrax.Tsit5()


def default_max_steps(chain: DenseChain) -> int:
    """4096, plus 64 per neuron whose activation has a kink (relu, leaky_relu): each kink costs ~20 steps."""
    kinked = sum(w.shape[0] for w, name in zip(chain.weights, chain.activations, strict=True) if _kinked(name))
    return 4096 + 64 * kinked


def _endpoint_ok(reached: tuple[Array, ...], exact: tuple[Array, ...], rtol, atol) -> Array:
    """Whether every final state is within `sqrt(rtol) (1 + |z|) + sqrt(atol)` of the forward pass (NaN fails)."""
    ok = [
        jnp.all(jnp.abs(z1 - z) <= jnp.sqrt(rtol) * (1 + jnp.abs(z)) + jnp.sqrt(atol))
        for z1, z in zip(reached, exact, strict=True)
    ]
    return jnp.all(jnp.stack(ok))


def _solve_uncompiled(chain, x, x_ref, times, solver, controller, max_steps):
    y0 = pre_activations(chain, x_ref)
    zero, one = jnp.zeros((), times.dtype), jnp.ones((), times.dtype)

    def solve_one(x_one):
        solution = diffrax.diffeqsolve(
            diffrax.ODETerm(VectorField(chain, x_one - x_ref)),
            solver,
            t0=zero,
            t1=one,
            dt0=None,
            y0=y0,
            saveat=diffrax.SaveAt(ts=times, t1=True),
            stepsize_controller=controller,
            max_steps=max_steps,
            throw=False,
        )
        at_times = tuple(y[:-1] for y in solution.ys)
        at_end = tuple(y[-1] for y in solution.ys)
        reached = _endpoint_ok(at_end, pre_activations(chain, x_one), controller.rtol, controller.atol)
        return at_times, solution.result == diffrax.RESULTS.successful, reached

    states, solved, reached = jax.vmap(solve_one)(x)
    result = RESULTS.where(
        jnp.all(solved),
        RESULTS.where(jnp.all(reached), RESULTS.successful, RESULTS.ode_endpoint_mismatch),
        RESULTS.ode_solve_failed,
    )
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
    from jaxlump._criteria.encoding.dynamical import simulate

    mlp = eqx.nn.MLP(3, 2, 8, 2, activation=jax.nn.tanh, key=jr.key(0))
    x = jr.normal(jr.key(1), (4, 3))
    trajectory = simulate(mlp, x, times=(0.5, 1.0))
    assert trajectory.activations[-1].shape == (4, 2, 2)
    assert jnp.allclose(trajectory.activations[-1][:, -1], jax.vmap(mlp)(x), atol=1e-4)
    ```

    From DESIGN §2b (jaxlump's formalization of Dhiman et al., 2026).
    """
    chain = to_chain(model)
    refuse_gated(chain, "model", "jaxlump.simulate (the dynamical ODE encoding)")
    x = check_data(x, "x", width=chain.widths[0])
    dtype = jnp.result_type(*chain.weights, *chain.biases)
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
