"""Nothing reports success that it did not check (issue 27, section 3): finite in, finite out for every compressor,
real floating-point parameters only, no zero-width layer from an all-zero model, flags that are booleans.

`OVERFLOWING` has finite float64 weights whose forward pass overflows (every parameter scaled by 1e120: the outputs
are ~1e360); `X * 1e200` is a calibration set on which the model is finite but the certificate's squared norms
overflow. The checks themselves (`jaxlump._results.info.checked_result`) are tested in `test_info.py`.
"""

import os
import tempfile

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jaxlump
from jaxlump import baselines as B

MODEL = eqx.nn.MLP(3, 2, 8, 2, activation=jax.nn.relu, key=jr.key(0))
X = jr.normal(jr.key(1), (64, 3))


def _scaled(model, factor):
    return jax.tree_util.tree_map(lambda a: a * factor if eqx.is_inexact_array(a) else a, model)


def _cast(model, dtype):
    return jax.tree_util.tree_map(lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, model)


OVERFLOWING = _scaled(MODEL, 1e120)
ZERO = _scaled(MODEL, 0.0)

# A mild knob of each compressor (the registered ones, and the public ones that are not registered).
KNOBS = {"lump_then_prune": 100, "exact_lump": None, "linearity_merge": 0.5, "linearity_to_size": 0.5}
OPTIONS = {"random": {"key": jr.key(2)}, "lump": {"certify_ode": False}}


def _reconstruct(model, x, knob, **options):
    pruned, info = B.magnitude(MODEL, None, 0.5)
    return jaxlump.reconstruct(model, pruned, x, info, **options)


def _compressors():
    cases = {name: entry.function for name, entry in jaxlump.compressors().items()}
    return cases | {"lump_masked": jaxlump.lump_masked, "reconstruct": _reconstruct}


COMPRESSORS = _compressors()
# Compiling a least-squares reconstruction or a lumping with an ODE certificate takes 5-30 s on 2 cores: these run
# with `-m slow` (`lump` and `lump_masked` cover lumping; the others share the checks of `compression_info`).
_SLOW = {"lump_then_prune", "lump_then_select", "merge_or_remove", "exact_lump", "reconstruct"}
_SLOW |= {"obs_prune", "osscar_prune", "id_prune", "flap_prune", "fold", "zipit_merge", "neuron_merge"}


def _compress(name, model, x, **options):
    return COMPRESSORS[name](model, x, KNOBS.get(name, 0.3), **OPTIONS.get(name, {}), **options)


# --- finite in, finite out ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] if n in _SLOW else []) for n in COMPRESSORS])
def test_an_overflowing_model_is_reported_by_every_compressor(name):
    """The model's own forward pass overflows on the calibration data: the stage is named, nothing succeeds."""
    with pytest.raises(jaxlump.CompressionError, match="Stage 'input model'"):
        _compress(name, OVERFLOWING, X)


@pytest.mark.parametrize("name", ["lump_masked", pytest.param("exact_lump", marks=pytest.mark.slow)])
def test_an_overflowing_certificate_is_reported(name):
    """The model is finite on `X * 1e200`, but the certificate's squared norms overflow: it certifies nothing."""
    _, info = _compress(name, MODEL, X * 1e200, throw=False)
    assert info.result == jaxlump.RESULTS.certificate_nonfinite
    assert jaxlump.RESULTS[info.result].startswith("Stage 'certificate'")


@pytest.mark.slow
def test_a_sweep_reports_an_overflowing_model_at_every_eps():
    """`jaxlump.sweep` lumps inside its own vmap: the checks are traced there, one result per ε."""
    result = jaxlump.sweep(OVERFLOWING, X, [0.0, 0.5])
    assert not result.successful.any() and all(m.startswith("Stage 'input model'") for m in result.results)


def test_the_checks_are_traced_inside_jit():
    """Inside `jax.jit` the checks are part of the trace (lumping's are always: its core is jitted)."""
    result = eqx.filter_jit(lambda model: B.magnitude(model, X, 0.3, throw=False)[1].result)
    assert result(OVERFLOWING) == jaxlump.RESULTS.model_nonfinite
    assert result(MODEL) == jaxlump.RESULTS.successful


def test_data_free_calls_check_the_weights_only():
    _, info = B.magnitude(OVERFLOWING, None, 0.3)  # the weights are finite; no data, no forward pass to check
    assert info.result == jaxlump.RESULTS.successful
    _, info = B.magnitude(OVERFLOWING, X, 0.3, throw=False)
    assert info.result == jaxlump.RESULTS.model_nonfinite


# --- parameters that are not real floating-point numbers ---------------------------------------------------------


def _masked():
    return B.magnitude(MODEL, None, 0.5)


_CALLS = {
    "lump": lambda m: jaxlump.lump(m, X, 0.3),
    "lump_masked": lambda m: jaxlump.lump_masked(m, X, 0.3),
    "exact_lump": lambda m: B.exact_lump(m, X, None),
    "magnitude": lambda m: B.magnitude(m, None, 0.5),
    "wanda": lambda m: B.wanda(m, X, 0.5),
    "structured_prune": lambda m: B.structured_prune(m, X, 0.5),
    "obs_prune": lambda m: B.obs_prune(m, X, 0.5),
    "linearity_merge": lambda m: B.linearity_merge(m, X, 0.5),
    "merge_or_remove": lambda m: jaxlump.merge_or_remove(m, X, 0.1),
    "compress_to": lambda m: B.compress_to(m, "magnitude", 0.5),
    "sweep": lambda m: jaxlump.sweep(m, X, [0.1]),
    "reconstruct(original)": lambda m: jaxlump.reconstruct(m, MODEL, X),
    "reconstruct(compressed)": lambda m: jaxlump.reconstruct(MODEL, m, X),
    "shrink": lambda m: jaxlump.shrink(m, _masked()[1]),
    "cost": jaxlump.cost,
    "measure_latency": lambda m: jaxlump.measure_latency(m, repeats=1, warmup=0),
    "save": lambda m: jaxlump.save(os.path.join(tempfile.mkdtemp(), "model.npz"), m),
    "to_erode": jaxlump.to_erode,
    "simulate": lambda m: jaxlump.simulate(m, X),
    "activation_rates": lambda m: B.activation_rates(m, X),
    "rank_bounds": lambda m: B.rank_bounds(m, X),
    "best_subset": lambda m: B.best_subset(m, X, 1, 4),
    "layer_errors": lambda m: B.layer_errors(m, MODEL, X),
    "finetune": lambda m: jaxlump.finetune(m, X, X[:, :2], steps=1),
}


@pytest.mark.parametrize("dtype", ["complex64", "int32", "bool"])
@pytest.mark.parametrize("call", _CALLS)
def test_non_real_weights_are_refused(call, dtype):
    """Refused at the one boundary every function passes (the adapters' `to_chain`), before any compilation."""
    model = _cast(MODEL, jnp.dtype(dtype))
    name = "compressed" if call == "reconstruct(compressed)" else "original" if "reconstruct" in call else "model"
    accepted = "float16, bfloat16, float32, float64"
    with pytest.raises(TypeError, match=rf"`{name}` .*layer 0 weight has dtype {dtype}; .*{accepted}"):
        _CALLS[call](model)


# --- all-zero models ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda m: jaxlump.lump(m, X, 0.3, certify_ode=False)[1],
        lambda m: jaxlump.lump_masked(m, X, 0.3)[1],
        pytest.param(lambda m: jaxlump.lump(m, None, 0.3)[1], marks=pytest.mark.slow),
        pytest.param(lambda m: B.exact_lump(m, X, None)[1], marks=pytest.mark.slow),
        pytest.param(lambda m: jaxlump.sweep(m, X, [0.0, 1.0]).infos, marks=pytest.mark.slow),
    ],
    ids=["lump", "lump_masked", "lump_data_free", "exact_lump", "sweep"],
)
def test_an_all_zero_model_keeps_one_neuron_per_layer(call):
    """Every neuron of an all-zero model is dead; each layer keeps them as one block instead of none."""
    widths = np.asarray(call(ZERO).widths_after)
    assert (widths[..., 1:-1] == 1).all(), widths


def test_an_all_zero_model_shrinks_to_the_one_block():
    masked, info = jaxlump.lump_masked(ZERO, X, 0.3)
    small, small_info = jaxlump.shrink(masked, info)
    assert small.width_size == (1, 1) and small_info.widths_after.tolist() == [3, 1, 1, 2]
    np.testing.assert_array_equal(jax.vmap(small)(X), 0.0)


def test_the_summary_of_an_all_zero_model_divides_by_nothing():
    _, info = B.compress_to(ZERO, "magnitude", 0.5)  # no non-zeros before, none after
    assert float(info.percent_of_original) == 100.0
    text = info.summary()
    assert "100.0 % of the original" in text and "realised 0 non-zeros (100.0%)" in text


# --- flags -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: B.compress_to(MODEL, "lump", 0.5, X, grow_upper="yes"), "grow_upper"),
        (lambda: jaxlump.lump_then_select(MODEL, X, 0.5, merge="yes"), "merge"),
        (lambda: jaxlump.merge_or_remove(MODEL, X, 0.1, merge="yes"), "merge"),
    ],
    ids=["compress_to-grow_upper", "lump_then_select-merge", "merge_or_remove-merge"],
)
def test_non_bool_flags_are_refused(call, name):
    with pytest.raises(TypeError, match=f"`{name}` must be True or False; received 'yes'"):
        call()
