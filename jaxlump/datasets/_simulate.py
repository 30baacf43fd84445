"""The shared diffrax sampler: random initial conditions in a box → trajectories → (state, vector field) pairs.

The regression task of the synthetic data sets is the one of Raissi, Perdikaris & Karniadakis (2018):
learn the vector field `f` of `ẏ = f(t, y)` (or the flow map over one sampling step) from states.
"""

import math
from collections.abc import Callable, Mapping, Sequence

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, PRNGKeyArray, PyTree

from .._errors import check_bool
from ._dataset import Dataset, as_key, check_count, make_dataset, numpy_rng

# Shared default solver instances (no calls in argument defaults).
KVAERNO5 = diffrax.Kvaerno5()
TSIT5 = diffrax.Tsit5()

VectorField = Callable[[Float[Array, ""], Float[Array, " state"], PyTree], Float[Array, " state"]]


def _check_box(lower, upper) -> tuple[np.ndarray, np.ndarray]:
    lower, upper = np.asarray(lower, np.float64), np.asarray(upper, np.float64)
    if lower.ndim != 1 or lower.shape != upper.shape or lower.shape[0] == 0:
        raise ValueError(
            f"`lower` and `upper` must be 1-D arrays of equal length (one bound per state variable); "
            f"received shapes {lower.shape} and {upper.shape}."
        )
    if not np.all(np.isfinite(lower) & np.isfinite(upper) & (lower <= upper)):
        raise ValueError("`lower` and `upper` must be finite with lower <= upper in every coordinate.")
    return lower, upper


def _check_times(save_times, burn_in) -> np.ndarray:
    """The absolute save times `burn_in + save_times`, checked (NumPy: no compilation for a check)."""
    save_times = np.asarray(save_times, np.float64)
    if save_times.ndim != 1 or save_times.shape[0] == 0:
        raise ValueError(f"`save_times` must be a non-empty 1-D array; received shape {save_times.shape}.")
    if not (np.all(np.isfinite(save_times)) and np.all(save_times >= 0) and np.all(np.diff(save_times) >= 0)):
        raise ValueError("`save_times` must be finite, >= 0 and non-decreasing.")
    if not (isinstance(burn_in, (int, float, np.number)) and math.isfinite(burn_in) and burn_in >= 0):
        raise ValueError(f"`burn_in` must be a finite number >= 0; received {burn_in!r}.")
    return burn_in + save_times


@eqx.filter_jit
def _sample(
    vector_field: VectorField,
    key: PRNGKeyArray,
    counts: tuple[int, ...],
    lower: Float[Array, " state"],
    upper: Float[Array, " state"],
    times: Float[Array, " times"],
    args: PyTree,
    solver: diffrax.AbstractSolver,
    rtol: float,
    atol: float,
    max_steps: int,
) -> tuple[Float[Array, "trajectories times state"], Float[Array, "trajectories times state"], Bool[Array, ""]]:
    """Draw `counts[g]` initial conditions per group g (group keys split from `key`), integrate each from
    t = 0, save at `times` and evaluate the field there. One compiled call: vmapped, jitted."""
    dtype = times.dtype
    y0 = jnp.concatenate(
        [
            jr.uniform(group_key, (count, lower.shape[0]), dtype, minval=lower, maxval=upper)
            for group_key, count in zip(jr.split(key, len(counts)), counts)
        ]
    )
    controller = diffrax.PIDController(rtol=rtol, atol=atol)

    def one(y):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(vector_field),
            solver,
            t0=jnp.zeros((), dtype),
            t1=times[-1],
            dt0=None,
            y0=y,
            args=args,
            saveat=diffrax.SaveAt(ts=times),
            stepsize_controller=controller,
            max_steps=max_steps,
            throw=False,
        )
        return sol.ys, sol.result == diffrax.RESULTS.successful

    states, solved = jax.vmap(one)(y0)
    derivatives = jax.vmap(jax.vmap(vector_field, in_axes=(0, 0, None)), in_axes=(None, 0, None))(times, states, args)
    ok = jnp.all(solved) & jnp.all(jnp.isfinite(states)) & jnp.all(jnp.isfinite(derivatives))
    return states, derivatives, ok


def _sample_checked(vector_field, key, counts, lower, upper, times, args, solver, rtol, atol, max_steps):
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if not (isinstance(tol, (int, float, np.number)) and math.isfinite(tol) and tol > 0):
            raise ValueError(f"`{name}` must be a finite number > 0; received {tol!r}.")
    dtype = jnp.result_type(float)
    lower, upper, times = (jnp.asarray(a, dtype) for a in (lower, upper, times))
    states, derivatives, ok = _sample(
        vector_field, key, counts, lower, upper, times, args, solver, float(rtol), float(atol), max_steps
    )
    if not bool(ok):
        raise RuntimeError(
            f"The ODE solve with {type(solver).__name__} failed or produced NaN/inf for some initial conditions. "
            "Try a stiff solver (diffrax.Kvaerno5()), a larger `max_steps`, or a smaller box of initial conditions."
        )
    return states, derivatives


def simulate_system(
    vector_field: VectorField,
    lower: Float[ArrayLike, " state"] | Sequence[float],
    upper: Float[ArrayLike, " state"] | Sequence[float],
    *,
    n_trajectories: int,
    save_times: Float[ArrayLike, " times"],
    key: PRNGKeyArray | int,
    args: PyTree = None,
    burn_in: float = 0.0,
    solver: diffrax.AbstractSolver = KVAERNO5,
    rtol: float = 1e-6,
    atol: float = 1e-8,
    max_steps: int = 2**16,
) -> tuple[Float[Array, "trajectories times state"], Float[Array, "trajectories times state"]]:
    """Sample states of `ẏ = f(t, y, args)` and the vector field at them.

    `y_n(0) ~ Uniform([lower, upper])` (seeded by `key`), `y_n(t)` is integrated with diffrax and saved
    at `t = burn_in + save_times`; the result is `(y_n(t_k), f(t_k, y_n(t_k), args))` for every
    trajectory n and time k. A burn-in lets transients die out so the samples lie near the attractor.
    The solves are vmapped over trajectories and jit-compiled, once per vector field, shape, solver and
    tolerances: array leaves of `args`, and the array fields of a vector field that is an `eqx.Module`,
    are traced, so new parameter values do not recompile (Python floats in `args` do). The precision is
    the ambient one: call under `jax.enable_x64(True)` for float64.

    **Arguments:**

    - `vector_field`: `f(t, y, args) -> ẏ` on a 1-D state (diffrax's `ODETerm` convention).
    - `lower`, `upper`: the box of initial conditions, one bound per state variable.
    - `n_trajectories`: how many initial conditions.
    - `save_times`: non-decreasing times ≥ 0, counted from the end of the burn-in.
    - `key`: a `jax.random` key (or an integer seed) for the initial conditions.
    - `args`: passed to `f`.
    - `burn_in`: time integrated before the first saved time.
    - `solver`: a diffrax solver; the default `Kvaerno5` (an implicit ESDIRK method) copes with stiff
      systems, an explicit `diffrax.Tsit5()` is faster on non-stiff ones.
    - `rtol`, `atol`: tolerances of the `PIDController` adaptive step size.
    - `max_steps`: step budget per trajectory.

    **Returns:** `(states, derivatives)`, both `(n_trajectories, len(save_times), n_state)`.

    **Raises:** `ValueError`/`TypeError` for malformed arguments; `RuntimeError` when a solve fails.

    **Example:**

    ```python
    import diffrax
    import jax.numpy as jnp
    from jaxlump.datasets import simulate_system

    def decay(t, y, args):
        return -args * y

    states, derivatives = simulate_system(
        decay, jnp.zeros(2), jnp.ones(2), n_trajectories=8, save_times=jnp.linspace(0, 1, 5), key=0,
        args=jnp.asarray(2.0), solver=diffrax.Tsit5(),  # non-stiff: the explicit solver is faster
    )
    assert states.shape == derivatives.shape == (8, 5, 2)
    ```

    Reference: M. Raissi, P. Perdikaris, G. E. Karniadakis, *Multistep neural networks for data-driven
    discovery of nonlinear dynamical systems*, arXiv:1801.01236 (2018).
    """
    if not callable(vector_field):
        raise TypeError(f"`vector_field` must be callable as f(t, y, args); received {type(vector_field).__name__}.")
    if not isinstance(solver, diffrax.AbstractSolver):
        raise TypeError(f"`solver` must be a diffrax solver such as diffrax.Kvaerno5(); received {solver!r}.")
    lower, upper = _check_box(lower, upper)
    times = _check_times(save_times, burn_in)
    counts = (check_count(n_trajectories, "n_trajectories"),)
    max_steps = check_count(max_steps, "max_steps")
    return _sample_checked(vector_field, as_key(key), counts, lower, upper, times, args, solver, rtol, atol, max_steps)


TARGETS = ("vector_field", "next_state")


def with_overrides(defaults: Mapping[str, float], overrides: Mapping[str, float] | None, name: str) -> dict:
    """`defaults` updated by `overrides`, refusing names that `defaults` does not have."""
    if overrides is not None and not isinstance(overrides, Mapping):
        raise TypeError(f"`{name}` must be a dict of name -> value or None; received {overrides!r}.")
    unknown = set(overrides or ()) - set(defaults)
    if unknown:
        raise ValueError(f"`{name}` has unknown names {sorted(unknown)}; accepted: {sorted(defaults)}.")
    for key, value in (overrides or {}).items():
        number = isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_))
        if not (number and math.isfinite(value) and value > 0):
            raise ValueError(
                f"`{name}[{key!r}]` must be a finite number > 0 (rates, resistances, capacitances, inductances and "
                f"frequencies are positive); received {value!r}."
            )
    return {**defaults, **(overrides or {})}


def simulated_dataset(
    name: str,
    vector_field: VectorField,
    lower: Sequence[float],
    upper: Sequence[float],
    state_names: Sequence[str],
    *,
    args: PyTree,
    n_train: int,
    n_test: int,
    n_times: int,
    t_end: float,
    burn_in: float,
    key: PRNGKeyArray | int,
    solver: diffrax.AbstractSolver,
    rtol: float,
    atol: float,
    standardize: bool,
    target: str,
) -> Dataset:
    """The data set of a simulated system, shared by every synthetic loader.

    Train and test trajectories start from initial conditions drawn with independent keys (split from
    `key`), so no trajectory contributes to both sets and the test set does not depend on `n_train`.
    Each trajectory is saved at `n_times` equally spaced times on `[burn_in, burn_in + t_end]`; the
    training rows are shuffled. `target="vector_field"` pairs each state with `f(t, y)`;
    `target="next_state"` pairs it with the state one sampling step `t_end / (n_times − 1)` later.
    Simulation runs in float64 whatever `jax_enable_x64` says, so a seed gives the same data everywhere.
    """
    if target not in TARGETS:
        raise ValueError(f"`target` must be one of {list(TARGETS)}; received {target!r}.")
    if not isinstance(solver, diffrax.AbstractSolver):
        raise TypeError(
            f"`solver` must be a diffrax solver instance such as diffrax.Tsit5() or diffrax.Kvaerno5() (not a name); "
            f"received {solver!r}."
        )
    for tolerance_name, tolerance in (("rtol", rtol), ("atol", atol)):
        number = isinstance(tolerance, (int, float, np.number)) and not isinstance(tolerance, (bool, np.bool_))
        if not (number and math.isfinite(tolerance) and tolerance > 0):
            raise ValueError(f"`{tolerance_name}` must be a finite number > 0; received {tolerance!r}.")
    standardize = check_bool(standardize, "standardize")
    n_train, n_test = check_count(n_train, "n_train"), check_count(n_test, "n_test")
    n_times = check_count(n_times, "n_times", lower=2)
    if not (isinstance(t_end, (int, float, np.number)) and math.isfinite(t_end) and t_end > 0):
        raise ValueError(f"`t_end` must be a finite number > 0; received {t_end!r}.")
    per_trajectory = n_times - 1 if target == "next_state" else n_times
    n_traj_train, n_traj_test = -(-n_train // per_trajectory), -(-n_test // per_trajectory)
    key = as_key(key)
    lower, upper = _check_box(lower, upper)
    times = _check_times(np.linspace(0.0, t_end, n_times), burn_in)
    args = jax.tree.map(lambda leaf: np.asarray(leaf, np.float64), args)
    with jax.enable_x64(True):
        counts = (n_traj_train, n_traj_test)
        states, derivatives = _sample_checked(
            vector_field, key, counts, lower, upper, times, args, solver, rtol, atol, 2**16
        )
        states, derivatives = np.asarray(states), np.asarray(derivatives)
    train_order = numpy_rng(key).permutation(n_traj_train * per_trajectory)[:n_train]
    if target == "next_state":
        inputs, targets = states[:, :-1], states[:, 1:]
        target_names = [f"{s}(t+dt)" for s in state_names]
    else:
        inputs, targets = states, derivatives
        target_names = [f"d{s}/dt" for s in state_names]
    n_state = states.shape[-1]
    inputs, targets = inputs.reshape(-1, n_state), targets.reshape(-1, n_state)
    split = n_traj_train * per_trajectory
    return make_dataset(
        name,
        (inputs[:split][train_order], targets[:split][train_order]),
        (inputs[split : split + n_test], targets[split : split + n_test]),
        feature_names=state_names,
        target_names=target_names,
        standardize=standardize,
    )
