"""jaxlump.compressors(): every compressor registered once, with a knob documented as it behaves."""

import inspect

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import pytest

import jaxlump
import jaxlump.baselines
from jaxlump._methods.registry import get_compressor

# Public callables of jaxlump.baselines that are helpers, not compressors.
HELPERS = {"compress_to", "realised_size", "activation_rates", "best_subset", "layer_errors", "rank_bounds"}


def test_every_baseline_and_lumping_method_is_registered():
    registered = {c.function for c in jaxlump.compressors().values()}
    baselines = {
        obj
        for name, obj in vars(jaxlump.baselines).items()
        if not name.startswith("_") and inspect.isfunction(obj) and name not in HELPERS
    }
    missing = {f.__name__ for f in baselines - registered}
    assert not missing, f"register these in jaxlump/_methods/registry.py: {sorted(missing)}"
    for top_level in (jaxlump.lump, jaxlump.lump_then_prune, jaxlump.lump_then_select, jaxlump.merge_or_remove):
        assert top_level in registered


def test_names_are_the_function_names_and_lookups_agree():
    for name, compressor in jaxlump.compressors().items():
        assert name == compressor.name == compressor.function.__name__
        assert get_compressor(name) is compressor and get_compressor(compressor.function) is compressor
        assert compressor.meaning and (compressor.knob is None) == (compressor.function is jaxlump.baselines.exact_lump)
    assert list(jaxlump.compressors())[:2] == ["lump", "lump_then_prune"]


def test_the_registry_is_a_copy():
    jaxlump.compressors().clear()
    assert "lump" in jaxlump.compressors()


# lump_then_prune (structured=False) is checked in test_targets.py, where its result is needed anyway.
@pytest.mark.parametrize("name", [n for n in jaxlump.compressors() if n != "lump_then_prune"])
def test_structured_flag_matches_the_result(name):
    compressor = jaxlump.compressors()[name]
    relu = name in ("linearity_merge", "linearity_to_size", "proportional_lump")
    mlp = eqx.nn.MLP(3, 2, 8, 2, activation=jax.nn.relu if relu else jnp.tanh, key=jr.key(0))
    x = jr.normal(jr.key(1), (64, 3))
    knob = {"linearity_to_size": 0.9, "exact_lump": None, "linearity_merge": 0.9}.get(name, 0.5)
    options = {"key": jr.key(2)} if name == "random" else {}
    _, info = compressor.function(mlp, x, knob, **options)
    assert info.structured == compressor.structured


def test_documented_knob_effects_hold():
    # the numbers quoted in the registry's `meaning` strings, on the 7→64→64→7 MLP they name
    mlp = eqx.nn.MLP(7, 7, 64, 2, activation=jnp.tanh, key=jr.key(0))
    methods = jaxlump.compressors()
    _, info = methods["magnitude"].function(mlp, None, 0.5)
    assert round(float(info.percent_of_original), 1) == 55.7 and "55.7 %" in methods["magnitude"].meaning
    _, info = methods["structured_prune"].function(mlp, None, 0.5)
    assert round(float(info.percent_of_original), 1) == 30.1 and "30.1 %" in methods["structured_prune"].meaning


def test_bad_registry_entries_are_refused():
    with pytest.raises(ValueError, match="size_knob"):
        jaxlump.Compressor("x", jaxlump.lump, "eps", "m", structured=True, needs_data=False, size_knob="widths")
