"""The shared boundary checks, the RESULTS combination and the throw mechanism (jaxlump._errors)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jaxlump
from jaxlump._errors import (
    RESULTS,
    CompressionError,
    check_bool,
    check_fraction,
    check_positive_int,
    combine,
    finite_result,
    messages,
    raise_if_failed,
    require_concrete,
)
from jaxlump.baselines import magnitude, structured_prune

MODEL = eqx.nn.MLP(3, 2, 8, 2, activation=jnp.tanh, key=jr.key(0))
X = jr.normal(jr.key(1), (32, 3))


def test_combine_keeps_the_first_failure_in_pipeline_order():
    ok, ode, ls = RESULTS.successful, RESULTS.ode_solve_failed, RESULTS.least_squares_nonfinite
    assert combine(ok, ok, ok) == ok
    assert combine(ok, ls, ode) == ls
    assert combine(ode, ls) == ode
    stacked = jax.vmap(lambda p, q: combine(RESULTS.where(p, ok, ode), RESULTS.where(q, ok, ls)))(
        jnp.asarray([True, False, True]), jnp.asarray([True, True, False])
    )
    assert messages(stacked) == ["", RESULTS[ode], RESULTS[ls]]
    with pytest.raises(CompressionError, match="ODE solve.*least-squares refit"):
        raise_if_failed(stacked, None, True, "sweep")


def test_finite_result_looks_at_every_inexact_leaf():
    assert finite_result((jnp.ones(3), jnp.arange(3)), RESULTS.nonfinite_result) == RESULTS.successful
    bad = (jnp.ones(3), jnp.asarray([1.0, jnp.inf]))
    assert finite_result(bad, RESULTS.nonfinite_result) == RESULTS.nonfinite_result


def test_raise_if_failed_eagerly_under_jit_and_not_at_all():
    failed = RESULTS.least_squares_nonfinite
    with pytest.raises(CompressionError, match=r"^where: Stage 'least-squares refit'.*throw=False"):
        raise_if_failed(failed, jnp.ones(2), True, "where")
    assert raise_if_failed(failed, 5, False, "where") == 5
    assert raise_if_failed(RESULTS.successful, 5, True, "where") == 5

    @jax.jit
    def traced(ok):
        result = RESULTS.where(ok, RESULTS.successful, failed)
        return raise_if_failed(result, jnp.ones(2), True, "where")

    assert bool(jnp.all(traced(True) == 1))
    with pytest.raises(Exception, match="least-squares refit"):
        jax.block_until_ready(traced(False))


@pytest.mark.parametrize(
    "value", ["0.5", True, None, [0.5], np.ones(2)], ids=["string", "bool", "none", "list", "array"]
)
def test_check_fraction_refuses_non_numbers(value):
    """`'0.5'` used to be accepted as a sparsity (float('0.5'))."""
    with pytest.raises(TypeError, match="`sparsity` must be a real"):
        check_fraction(value, "sparsity")


def test_check_fraction_accepts_numbers_and_checks_the_range():
    assert check_fraction(np.float32(0.25), "s") == 0.25 and check_fraction(jnp.asarray(0.5), "s") == 0.5
    assert check_fraction(1, "s", upper_inclusive=True) == 1.0
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        check_fraction(1.0, "s")
    with pytest.raises(TypeError, match="concrete number"):
        jax.jit(lambda s: check_fraction(s, "s"))(0.5)


@pytest.mark.parametrize("value", ["no", "False", 0, 1, None, np.float64(1.0)])
def test_check_bool_refuses_look_alikes(value):
    """`reconstruct='no'` used to mean True."""
    with pytest.raises(TypeError, match="`reconstruct` must be True or False"):
        check_bool(value, "reconstruct")


def test_check_bool_and_positive_int_accept_the_real_thing():
    assert check_bool(np.bool_(True), "f") is True and check_bool(False, "f") is False
    assert check_positive_int(np.int64(3), "n") == 3
    for bad, error in [(0, ValueError), (2.0, TypeError), (True, TypeError)]:
        with pytest.raises(error, match="`n` must be an integer >= 1"):
            check_positive_int(bad, "n")


def test_require_concrete_names_the_function_and_the_argument():
    require_concrete("f", "why.", a=jnp.ones(2), b=None)  # concrete: nothing happens
    with pytest.raises(TypeError, match=r"`f` needs concrete values but `b` is traced .*why\. Call it outside"):
        jax.jit(lambda v: require_concrete("f", "why.", a=1.0, b=v))(jnp.ones(2))


@pytest.mark.parametrize(
    "call",
    [
        lambda: jaxlump.lump(MODEL, X, 0.5, reconstruct="no"),
        lambda: jaxlump.lump(MODEL, X, 0.5, certify_ode=1),
        lambda: jaxlump.lump(MODEL, X, 0.5, throw="yes"),
        lambda: magnitude(MODEL, X, 0.5, throw=None),
        lambda: jaxlump.reconstruct(MODEL, MODEL, X, throw=0),
    ],
    ids=["lump_refit", "lump_certify_ode", "lump_throw", "magnitude_throw", "reconstruct_throw"],
)
def test_public_flags_refuse_non_bools(call):
    with pytest.raises(TypeError, match="must be True or False"):
        call()


@pytest.mark.parametrize(
    "call",
    [lambda: magnitude(MODEL, X, "0.5"), lambda: structured_prune(MODEL, X, "0.5")],
    ids=["magnitude", "structured_prune"],
)
def test_public_sparsities_refuse_strings(call):
    with pytest.raises(TypeError, match="`sparsity` must be a real number; received '0.5'"):
        call()
