"""Boundary checks shared by every public function, the `RESULTS` enumeration and the `throw` mechanism.

Concrete values are checked eagerly and raise `ValueError`/`TypeError` naming the argument,
what was received and what is accepted. Traced values (inside `jax.jit`/`jax.vmap`) are
checked with `eqx.error_if`, whose return value must be used so the check is not removed.

Algorithm failures are not exceptions at first: every stage of a compression (ODE solve, refinement,
least squares, the method's own arithmetic, the certificate) yields a `RESULTS` item computed from what
it produced; `combine` keeps the first failure in pipeline order and the compressor stores it in
`info.result`. With `throw=True` (the default of every public compressor) `raise_if_failed` then raises
with that stage's message (eagerly a `CompressionError`, under `jax.jit` through `eqx.error_if`); with
`throw=False` the code is returned, so a vmapped sweep reports per-ε failures.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


class RESULTS(eqx.Enumeration):
    """Outcome of the numerical stages of a compression (recorded in `info.result`).

    Each message names the stage that failed and the remedy. `RESULTS[info.result]` gives the message,
    `info.result == RESULTS.successful` tests for success (elementwise for stacked infos).
    """

    successful = ""
    ode_solve_failed = (
        "The ODE solve of the dynamical encoding failed; try looser `rtol`/`atol` "
        "or more `max_steps`, or the structural discrepancy."
    )
    model_nonfinite = (
        "Stage 'input model': the model's own forward pass overflows (NaN or inf) on the calibration data, although "
        "its weights and the data are finite, so nothing computed from its activations is meaningful. Rescale the "
        "model's weights or the calibration data, or use float64."
    )
    nonfinite_result = (
        "Stage 'compression': the compressed model contains NaN or inf although the model and data were finite "
        "(the method's own arithmetic overflowed: a quotient, merge or bias compensation). Rescale the model or the "
        "calibration data."
    )
    least_squares_nonfinite = (
        "Stage 'least-squares refit': the solve produced NaN or inf (overflow: the calibration data or the "
        "activations are too large for the working precision). Rescale the data, increase `ridge`, or use float64."
    )
    least_squares_rank_deficient = (
        "Stage 'least-squares refit': the regularised normal equations are singular or too ill-conditioned for the "
        "working precision (Cholesky failed), so a truncated minimum-norm solve was used instead. Pass `ridge` > 0 "
        "or more calibration data, enable float64, or pass `throw=False` to accept the minimum-norm solution."
    )
    refinement_nonfinite = (
        "Stage 'discrepancy/refinement': some neuron distances are NaN or inf, so the partition is not meaningful "
        "(an overflow in the discrepancy). Rescale the model or the data."
    )
    selection_nonfinite = (
        "Stage 'selection': the Gram matrices, scores or activations that choose the neurons are NaN or inf (the "
        "activations overflowed on the calibration data), so the choice of neurons is not meaningful. Rescale the "
        "model or the calibration data."
    )
    selection_singular = (
        "Stage 'selection': a layer's damped Gram matrix H is singular (`damping=0` on rank-deficient activations), so "
        "OBS's H⁻¹ does not exist and that layer was selected on the default-damped Gram instead. Pass `damping` > 0 "
        "or more calibration data, or `throw=False` to accept that selection."
    )
    certificate_ode_failed = (
        "Stage 'certificate': the ODE simulation of the certificate failed, so `certificate.ode_max_abs` is not "
        "meaningful; pass `certify_ode=False`, or check the encoding with `jaxlump.check_encoding`."
    )
    output_nonfinite = (
        "Stage 'compressed model': the compressed model's weights are finite but its outputs on the calibration data "
        "are NaN or inf (its forward pass overflows). Rescale the model or the calibration data, or use float64."
    )
    certificate_nonfinite = (
        "Stage 'certificate': the certificate's measured error or a-priori bound is NaN or inf (an overflow while "
        "measuring: the activations are too large for the working precision), so it certifies nothing. Rescale the "
        "model or the calibration data, use float64, or pass `throw=False` to accept the model uncertified."
    )
    ode_endpoint_mismatch = (
        "Stage 'ODE solve': the simulated encoding did not reach the network's forward pass at t = 1 (the "
        "trajectory is wrong although the solver reported success); tighten `rtol`/`atol`."
    )


class CompressionError(RuntimeError):
    """Raised (with `throw=True`) when a stage of a compression failed; the message names the stage."""


class UnreachableTargetError(ValueError):
    """Raised when a size target lies beyond what a method's knob can reach (`compress_to`, `sweep_to_size`,
    `lump_then_prune`); the message gives the smallest size reached, and so does `smallest` (in the target's unit:
    dense parameters or non-zeros; `None` when nothing was reached). A `ValueError`, so code that catches that
    keeps working; catch this one to try another method or a larger target.

    ```python
    import equinox as eqx, jax.random as jr, jaxlump
    from jaxlump.baselines import compress_to
    mlp = eqx.nn.MLP(3, 2, 16, 2, key=jr.key(0))
    try:
        compress_to(mlp, "magnitude", 1)  # magnitude keeps the biases and the output layer's weights
    except jaxlump.UnreachableTargetError as error:
        assert "cannot reach" in str(error) and error.smallest > 1
    else:
        raise AssertionError("a target of one non-zero was reached")
    ```
    """

    def __init__(self, message: str, smallest: int | None):
        super().__init__(message)
        self.smallest = smallest


def messages(result: RESULTS) -> list[str]:
    """The message of every element of a concrete (possibly stacked) result, flattened; `""` for success."""
    return [RESULTS._index_to_message[int(i)] for i in np.ravel(np.asarray(result._value))]


def combine(*results: RESULTS) -> RESULTS:
    """The first unsuccessful result in pipeline order (elementwise for stacked results), else `successful`."""
    combined = RESULTS.successful
    for result in reversed(results):
        combined = RESULTS.where(result == RESULTS.successful, combined, result)
    return combined


def finite_result(arrays, failure: RESULTS) -> RESULTS:
    """`successful` when every array in `arrays` (a pytree) is finite, else `failure`."""
    leaves = [jnp.all(jnp.isfinite(a)) for a in jax.tree_util.tree_leaves(arrays) if eqx.is_inexact_array(a)]
    finite = jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)
    return RESULTS.where(finite, RESULTS.successful, failure)


def raise_if_failed(result: RESULTS, token, throw: bool, where: str):
    """With `throw`, raise the failed stage's message; return `token` (thread it on, as `eqx.error_if`).

    Concrete results raise a `CompressionError` at once; traced ones (inside `jax.jit`) go through
    `eqx.error_if`, so the returned `token` must be used. Stacked (vmapped) results raise when any failed.
    """
    if not throw:
        return token
    failed = result != RESULTS.successful
    if result.is_traced():
        if jnp.ndim(failed) == 0:
            return result.error_if(token, failed)
        return eqx.error_if(token, jnp.any(failed), f"{where}: a stage failed; pass `throw=False` to see which.")
    if bool(np.any(np.asarray(failed))):
        failures = list(dict.fromkeys(m for m in messages(result) if m))  # unique, in order of occurrence
        raise CompressionError(
            f"{where}: {' | '.join(failures)} (Pass `throw=False` to receive the result with `info.result` set.)"
        )
    return token


def is_traced(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def require_concrete(function: str, reason: str, alternative: str = "", **values) -> None:
    """Refuse traced arguments (inside `jax.jit`/`jax.vmap`/`jax.grad`) with one clear message.

    For functions whose result shapes depend on the values (shrinking, selecting neurons by score, choosing
    ε on data): `function` is the public name, `reason` why values must be concrete, `alternative` an
    optional jit-friendly substitute.
    """
    for name, value in values.items():
        if any(is_traced(leaf) for leaf in jax.tree_util.tree_leaves(value)):
            hint = f" {alternative}" if alternative else ""
            raise TypeError(
                f"`{function}` needs concrete values but `{name}` is traced (called inside jax.jit, jax.vmap or "
                f"jax.grad): {reason} Call it outside the transformation.{hint}"
            )


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


def spans_processes(x) -> bool:
    """Whether `x` is a global `jax.Array` whose rows lie in several processes (`jax.distributed`): it cannot be
    read on the host, only reduced by compiled programs."""
    return isinstance(x, jax.Array) and not x.is_fully_addressable


def host_rows(a) -> np.ndarray:
    """`a` as a NumPy array on this host; a global array whose rows lie in several processes is gathered from all of
    them first (every process then holds every row: the methods that read activations on the host)."""
    if spans_processes(a):
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return np.asarray(a)


@jax.jit
def _count_nonfinite(x):
    return jnp.sum(~jnp.isfinite(x))


def check_finite(x: jax.Array, name: str) -> jax.Array:
    """Refuse NaN/inf, eagerly when concrete and with `eqx.error_if` when traced."""
    if is_traced(x):
        return eqx.error_if(x, ~jnp.all(jnp.isfinite(x)), f"`{name}` contains NaN or inf.")
    if spans_processes(x):  # rows in several processes (`jax.distributed`): only a compiled reduction reads them
        n_bad = int(_count_nonfinite(x))
    else:  # on the host, also while an enclosing function is traced (a jitted count would be a tracer there)
        n_bad = int(np.sum(~np.isfinite(np.asarray(x))))
    if n_bad:
        raise ValueError(f"`{name}` contains {n_bad} NaN or inf value(s); only finite values are accepted.")
    return x


def check_choice(value, name: str, accepted) -> None:
    if isinstance(value, (list, dict, set)) or value not in accepted:
        raise ValueError(f"`{name}` must be one of {sorted(accepted)}; received {value!r}.")


def check_fraction(value, name: str, *, upper_inclusive: bool = False) -> float:
    """A fraction in [0, 1) (or [0, 1]): sparsities, keep rates, thresholds. Only real numbers are accepted
    (not strings, booleans or traced values: a fraction decides how many weights or neurons go, a shape)."""
    if is_traced(value):
        raise TypeError(
            f"`{name}` must be a concrete number: it decides how many weights or neurons are removed (a shape), so "
            "it cannot be traced inside jax.jit; pass it as a Python float (a static argument)."
        )
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number, np.ndarray, jax.Array)):
        raise TypeError(f"`{name}` must be a real number; received {value!r} of type {type(value).__name__}.")
    if np.ndim(value) != 0 or not np.issubdtype(np.asarray(value).dtype, np.number):
        raise TypeError(f"`{name}` must be a real scalar; received {value!r}.")
    value = float(value)
    ok = 0.0 <= value <= 1.0 if upper_inclusive else 0.0 <= value < 1.0
    if not ok:
        bracket = "[0, 1]" if upper_inclusive else "[0, 1)"
        raise ValueError(f"`{name}` must lie in {bracket}; received {value!r}.")
    return value


def is_per_layer(value) -> bool:
    """Whether a knob is given per hidden layer: a tuple, a list or an array of at least one dimension."""
    return isinstance(value, (tuple, list)) or (isinstance(value, (np.ndarray, jax.Array)) and value.ndim >= 1)


def check_layer_fractions(value, name: str, n_hidden: int) -> float | tuple[float, ...]:
    """A fraction in [0, 1) for every hidden layer (returned as a float), or one per hidden layer (a tuple, list or
    1-D array of `n_hidden` fractions, returned as a tuple of floats): the per-layer knob of the structured methods,
    with which `compress_to` sets each layer's width."""
    if not is_per_layer(value):
        return check_fraction(value, name)
    if len(value) != n_hidden:
        raise ValueError(
            f"`{name}` as one fraction per hidden layer must hold {n_hidden} numbers (the model has {n_hidden} hidden "
            f"layers); received {value!r}. Pass one number for every layer, or {n_hidden} numbers in [0, 1)."
        )
    return tuple(check_fraction(v, f"{name}[{i}]") for i, v in enumerate(list(value)))


def check_nonnegative(value, name: str, *, positive: bool = False) -> float:
    """A real number ≥ 0 (`positive`: > 0) as a float: `TypeError` for anything but a real number (a string or a
    bool included), `ValueError` for NaN, inf or a value out of range; both name the argument."""
    accepted = f"a finite number {'> 0' if positive else '>= 0'}"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"`{name}` must be {accepted}; received {value!r} of type {type(value).__name__}.")
    number = float(value)
    if not np.isfinite(number) or number < 0 or (positive and number == 0):
        raise ValueError(f"`{name}` must be {accepted}; received {value!r}.")
    return number


def check_bool(value, name: str) -> bool:
    """A flag: only `True`/`False` (NumPy booleans too); `'no'`, `0`, `None` are refused."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be True or False; received {value!r} of type {type(value).__name__}.")
    return bool(value)


def check_positive_int(value, name: str, *, minimum: int = 1) -> int:
    """An integer count `>= minimum` (not a bool, not a float)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an integer >= {minimum}; received {value!r}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}; received {value!r}.")
    return int(value)
