"""Readable results: CompressionInfo.summary() and repr show numbers, the certificate in words, the result message."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import pytest

import jaxlump
import jaxlump._results.info
from jaxlump._model import to_chain
from jaxlump._results.info import checked_result
from jaxlump.baselines import magnitude

MODEL = eqx.nn.MLP(3, 2, 8, 2, activation=jnp.tanh, key=jr.key(0))
X = jr.normal(jr.key(1), (64, 3))


@pytest.fixture(scope="module")
def lumped():
    return jaxlump.lump(MODEL, X, 0.5, certify_ode=False)


def test_summary_shows_the_numbers(lumped):
    small, info = lumped
    text = info.summary()
    widths_after = "-".join(str(int(w)) for w in info.widths_after)
    before, after = int(info.cost_before.dense_params), int(info.cost_after.dense_params)
    assert before == 3 * 8 + 8 + 8 * 8 + 8 + 8 * 2 + 2 and after == int(jaxlump.cost(small).dense_params)
    assert text.startswith("lump — structured, knob = 0.5")
    assert "result:       successful" in text
    assert f"widths:       3-8-8-2 → {widths_after}" in text
    assert f"dense params: {before} → {after}" in text
    assert f"FLOPs:        {int(info.cost_before.flops)} → {int(info.cost_after.flops)} per example" in text
    assert f"{100 * after / before:.1f} % of the original" in text
    assert f"max |f̃ − f| = {float(info.certificate.output_max_abs):.3g}" in text
    assert "ODE simulation not run" in text  # certify_ode=False: NaN is said in words
    assert "f32[" not in text and "f64[" not in text and "RESULTS<" not in text


def test_repr_shows_numbers_and_the_result_message(lumped):
    _, info = lumped
    text = repr(info)
    assert text.startswith("CompressionInfo(method='lump', knob=0.5, widths 3-8-8-2 → ")
    assert "result='successful'" in text and "f64[" not in text and "RESULTS<" not in text
    assert repr(info.certificate).startswith("Certificate(measured max |f̃ − f| = ")


def test_a_failure_is_shown_by_its_message():
    _, info = magnitude(MODEL, None, 0.5)
    failed = eqx.tree_at(lambda i: i.result, info, jaxlump.RESULTS.least_squares_nonfinite)
    assert "Stage 'least-squares refit'" in failed.summary() and "Stage 'least-squares refit'" in repr(failed)
    assert "unstructured (same shape, masked)" in info.summary() and "non-zeros" in info.summary()


def test_stacked_infos_show_ranges():
    grid = jnp.asarray([0.0, 0.5, 2.0])
    _, stacked = eqx.filter_vmap(lambda e: jaxlump.lump_masked(MODEL, X, e, throw=False))(grid)
    text = stacked.summary()
    assert "knob = 0…2 over 3" in text and "result:       successful" in text
    assert "dense params: " in text and " over 3" in text.split("dense params:")[1].splitlines()[0]


def test_traced_infos_degrade_gracefully():
    seen = {}

    @eqx.filter_jit
    def step(eps):
        _, info = jaxlump.lump_masked(MODEL, X, eps)
        seen["summary"], seen["repr"] = info.summary(), repr(info)
        return info.knob

    step(jnp.asarray(0.3))
    assert "values are traced" in seen["summary"] and "widths before 3-8-8-2" in seen["summary"]
    assert seen["repr"] == "CompressionInfo(method='lump', widths_before=(3, 8, 8, 2), traced)"


# --- the checks every info makes (`checked_result`) -------------------------------------------------------------

CHAIN = to_chain(eqx.nn.MLP(3, 2, 8, 2, activation=jax.nn.relu, key=jr.key(0)))
# Finite weights (every layer scaled by 1e120) whose forward pass overflows (outputs ~1e360).
HUGE = eqx.tree_at(lambda c: c.weights, CHAIN, tuple(w * 1e120 for w in CHAIN.weights))
WITH_NAN = eqx.tree_at(lambda c: c.weights[1], CHAIN, CHAIN.weights[1].at[0, 0].set(jnp.nan))


def _certificate(bound):
    zero = jnp.zeros(())
    return jaxlump.Certificate(zero, zero, jnp.asarray(jnp.nan), jnp.asarray(bound))


CHECKS = {  # name: (before, after, x, certificate, expected)
    "successful": (CHAIN, CHAIN, X, _certificate(0.0), "successful"),
    "model_overflows": (HUGE, CHAIN, X, None, "model_nonfinite"),
    "result_holds_nan": (CHAIN, WITH_NAN, X, None, "nonfinite_result"),
    "outputs_overflow": (CHAIN, HUGE, X, None, "output_nonfinite"),
    "certificate_overflows": (CHAIN, CHAIN, X, _certificate(jnp.inf), "certificate_nonfinite"),
    "data_free_checks_weights_only": (HUGE, HUGE, None, None, "successful"),
    "data_free_result_holds_nan": (CHAIN, WITH_NAN, None, None, "nonfinite_result"),
}


@pytest.mark.parametrize("how", ["host", "jitted", "traced"])
@pytest.mark.parametrize("case", CHECKS)
def test_checked_result_names_the_first_failed_check(case, how, monkeypatch):
    """Concrete passes run on the host when small, jitted when large (forced here); traced ones in the trace."""
    if how == "jitted":
        monkeypatch.setattr(jaxlump._results.info, "_HOST_MAX_MACS", 0)
    before, after, x, certificate, expected = CHECKS[case]
    check = lambda b, a, x, c: checked_result(jaxlump.RESULTS.successful, b, a, x, c)  # noqa: E731
    result = (eqx.filter_jit(check) if how == "traced" else check)(before, after, x, certificate)
    assert result == getattr(jaxlump.RESULTS, expected)


def test_the_given_models_check_is_remembered_per_model_and_data():
    scaled = eqx.tree_at(lambda c: c.weights, CHAIN, tuple(w * 1e80 for w in CHAIN.weights))  # ~1e240 on X
    for data, expected in [(X, "successful"), (X * 1e100, "model_nonfinite"), (X, "successful")]:
        assert checked_result(jaxlump.RESULTS.successful, scaled, CHAIN, data) == getattr(jaxlump.RESULTS, expected)


def test_checked_result_puts_the_model_first_and_keeps_the_methods_own_result():
    method_failed = jaxlump.RESULTS.least_squares_rank_deficient
    assert checked_result(method_failed, CHAIN, CHAIN, X) == method_failed
    assert checked_result(method_failed, HUGE, CHAIN, X) == jaxlump.RESULTS.model_nonfinite
