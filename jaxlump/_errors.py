"""Boundary checks shared by every public function, and the `RESULTS` enumeration.

Concrete values are checked eagerly and raise `ValueError`/`TypeError` naming the argument,
what was received and what is accepted. Traced values (inside `jax.jit`/`jax.vmap`) are
checked with `eqx.error_if`, whose return value must be used so the check is not removed.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


class RESULTS(eqx.Enumeration):
    """Outcome of the numerical steps of a compression (recorded in `info.result`)."""

    successful = ""
    ode_solve_failed = (
        "The ODE solve of the dynamical encoding failed; try looser `rtol`/`atol` "
        "or more `max_steps`, or the structural discrepancy."
    )
    nonfinite_result = (
        "The compressed model contains NaN or inf; the least-squares refit is ill-posed "
        "for this calibration set. Increase `ridge` or pass more calibration data."
    )


def is_traced(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def check_eps(eps, name: str = "eps") -> jax.Array:
    """Return ε as a floating JAX array after checking it is finite and ≥ 0."""
    if isinstance(eps, (bool, np.bool_)) or (
        not is_traced(eps) and not np.issubdtype(np.asarray(eps).dtype, np.number)
    ):
        raise TypeError(f"`{name}` must be a non-negative real number, received {eps!r}.")
    eps = jnp.asarray(eps, dtype=jnp.result_type(float))
    if eps.ndim != 0:
        raise ValueError(
            f"`{name}` must be a scalar; received an array of shape {eps.shape}. "
            "To sweep several values use `jaxlump.sweep` or `jax.vmap`."
        )
    if is_traced(eps):
        return eqx.error_if(
            eps,
            jnp.isnan(eps) | (eps < 0),
            f"`{name}` must be a number >= 0 (received a negative or NaN value).",
        )
    value = float(eps)
    if np.isnan(value) or value < 0:
        raise ValueError(f"`{name}` must be a number >= 0 (inf allowed); received {value!r}.")
    return eps


def check_data(x, name: str, *, width: int | None = None, width_name: str = "the model's input width"):
    """Check a `(batch, features)` data array: 2-D, non-empty, finite, of the right width."""
    if x is None:
        raise ValueError(f"`{name}` is required here; received None.")
    try:
        x = jnp.asarray(x)
    except TypeError as e:
        raise TypeError(f"`{name}` must be an array of shape (batch, features); received {type(x).__name__}.") from e
    if not jnp.issubdtype(x.dtype, jnp.floating):
        if jnp.issubdtype(x.dtype, jnp.integer) or x.dtype == bool:
            x = x.astype(jnp.result_type(float))
        else:
            raise TypeError(f"`{name}` must hold real numbers; received dtype {x.dtype}.")
    if x.ndim != 2:
        raise ValueError(
            f"`{name}` must be 2-D with shape (batch, features); received shape {x.shape}. "
            "For a single example use `x[None, :]`."
        )
    if x.shape[0] == 0:
        raise ValueError(f"`{name}` is empty (shape {x.shape}); at least one example is needed.")
    if width is not None and x.shape[1] != width:
        raise ValueError(f"`{name}` has {x.shape[1]} features per example; {width_name} is {width}.")
    return check_finite(x, name)


def check_finite(x: jax.Array, name: str) -> jax.Array:
    """Refuse NaN/inf, eagerly when concrete and with `eqx.error_if` when traced."""
    if is_traced(x):
        return eqx.error_if(x, ~jnp.all(jnp.isfinite(x)), f"`{name}` contains NaN or inf.")
    n_bad = int(np.sum(~np.isfinite(np.asarray(x))))
    if n_bad:
        raise ValueError(f"`{name}` contains {n_bad} NaN or inf value(s); only finite values are accepted.")
    return x


def check_choice(value, name: str, accepted) -> None:
    if value not in accepted:
        raise ValueError(f"`{name}` must be one of {sorted(accepted)}; received {value!r}.")


def check_fraction(value, name: str, *, upper_inclusive: bool = False) -> float:
    """A fraction in [0, 1) (or [0, 1]): sparsities, keep rates, thresholds."""
    try:
        value = float(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"`{name}` must be a number; received {value!r}.") from e
    ok = 0.0 <= value <= 1.0 if upper_inclusive else 0.0 <= value < 1.0
    if not ok:
        bracket = "[0, 1]" if upper_inclusive else "[0, 1)"
        raise ValueError(f"`{name}` must lie in {bracket}; received {value!r}.")
    return value
