"""The fixed-shape form on models of sites: `lump_masked` (under `jax.jit` too), `shrink` and `sweep`, against the
physically compressed `lump` on the same model and against single calls."""

import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from _devices import on_host_devices
from flax import nnx
from test_sites import TOKENS, NNXTokenModel, TokenModel, logits, plant

import jaxlump
from jaxlump._sweep import _sweep_core

GRID = (0.0, 0.3, 1.0, 3.0)


@pytest.fixture(scope="module")
def planted():
    """Two FFN blocks (32 and 16 units) with 8 and 4 planted duplicate units."""
    return plant(plant(TokenModel(jr.key(0), widths=(32, 16)), 0, 8), 1, 4)


def _arrays(model):
    return [np.asarray(a) for a in jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_inexact_array))]


@pytest.mark.integration  # heavy (10–16 s on 2 cores, large compiles): the second test step keeps step 1 near 10 min
def test_masked_keeps_shapes_and_shrinks_to_what_lump_returns(planted):
    before = _arrays(planted)
    masked, info = jaxlump.lump_masked(planted, TOKENS, 0.0)
    assert type(masked) is TokenModel and all(a.shape == b.shape for a, b in zip(_arrays(masked), before))
    assert all(np.array_equal(a, b) for a, b in zip(before, _arrays(planted))), "input model was modified"
    assert info.widths_after == {"ffns[0]": 24, "ffns[1]": 12}  # exactly the planted duplicates go
    np.testing.assert_allclose(logits(masked), logits(planted), atol=2e-6)
    small, small_info = jaxlump.shrink(masked, info)
    reference, reference_info = jaxlump.lump(planted, TOKENS, 0.0, certify_ode=False)
    assert type(small) is TokenModel and small.ffns[0].up.out_features == small.ffns[0].down.in_features == 24
    assert small_info.widths_after == reference_info.widths_after == info.widths_after
    assert small_info.params_after == info.params_after == sum(a.size for a in _arrays(small))
    assert small_info.flops_after == int(jaxlump.cost(small, x=TOKENS).flops) < info.flops_before
    np.testing.assert_allclose(logits(small), logits(reference), atol=2e-6)


@pytest.mark.parametrize("independent", [False, True])
def test_masked_then_shrunk_equals_lump_where_units_merge(planted, independent):
    masked, info = jaxlump.lump_masked(planted, TOKENS, 1.0, independent=independent)
    small, small_info = jaxlump.shrink(masked, info)
    reference, reference_info = jaxlump.lump(planted, TOKENS, 1.0, independent=independent, certify_ode=False)
    assert small_info.widths_after == reference_info.widths_after
    assert all(small_info.widths_after[p] < info.widths_before[p] - 4 for p in info.widths_before)  # beyond planted
    np.testing.assert_allclose(logits(small), logits(reference), atol=1e-5)
    np.testing.assert_allclose(logits(small), logits(masked), atol=1e-5)
    np.testing.assert_allclose(float(info.output_max_abs), np.abs(logits(masked) - logits(planted)).max(), rtol=1e-5)


@pytest.mark.integration  # compiles the whole pipeline again, traced: the second test step
def test_masked_runs_under_jit_with_a_traced_eps(planted):
    step = eqx.filter_jit(eqx.debug.assert_max_traces(lambda m, e: jaxlump.lump_masked(m, TOKENS, e), max_traces=1))
    for eps in (0.0, 1.0):  # one compilation for both ε
        masked, info = step(planted, jnp.asarray(eps))
        eager, eager_info = jaxlump.lump_masked(planted, TOKENS, eps)
        assert info.widths_after == eager_info.widths_after and float(info.knob) == eps
        np.testing.assert_allclose(logits(masked), logits(eager), atol=1e-5)
    small, _ = jaxlump.shrink(masked, info)
    assert sum(a.size for a in _arrays(small)) == info.params_after


@pytest.mark.integration  # compiles a model of sites anew: the second test step
def test_nnx_masked_on_a_copy_and_shrunk_to_its_class():
    model = NNXTokenModel(nnx.Rngs(0))
    before = [np.asarray(a) for a in jax.tree_util.tree_leaves(nnx.state(model))]
    masked, info = jaxlump.lump_masked(model, TOKENS, 1.0)
    assert type(masked) is NNXTokenModel and masked is not model and masked.ffn.up.out_features == 32
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(before, jax.tree_util.tree_leaves(nnx.state(model))))
    small, small_info = jaxlump.shrink(masked, info)
    width = small_info.widths_after["ffn"]
    assert type(small) is NNXTokenModel and small.ffn.up.out_features == small.ffn.down.in_features == width < 32
    np.testing.assert_allclose(np.asarray(small(TOKENS)), np.asarray(masked(TOKENS)), atol=1e-5)


def test_shrink_refuses_an_info_that_does_not_describe_the_model(planted):
    masked, info = jaxlump.lump_masked(planted, TOKENS, 1.0)
    with pytest.raises(ValueError, match=r"segment 0 \(ffns\[0\]\).*non-zero parameters on neurons `info` marks dead"):
        jaxlump.shrink(planted, info)  # the original, whose dead units still carry weights
    other = TokenModel(jr.key(1), widths=(32,))
    with pytest.raises(ValueError, match=r"describes sites at \['ffns\[1\]'\], which `model` \(TokenModel\) does"):
        jaxlump.shrink(other, info)
    with pytest.raises(TypeError, match="jaxlump.shrink"):
        eqx.filter_jit(lambda m: jaxlump.shrink(m, info))(masked)


@pytest.fixture(scope="module")
def site_sweep(planted):
    return jaxlump.sweep(planted, TOKENS, GRID)


@pytest.mark.integration  # compiles the whole pipeline again, traced: the second test step
def test_each_sweep_slice_equals_lump_masked(planted, site_sweep):
    assert set(site_sweep.widths) == {"ffns[0]", "ffns[1]"} and site_sweep.widths["ffns[0]"].shape == (len(GRID),)
    for i, eps in enumerate(GRID):
        masked, info = site_sweep.at(i)
        single, single_info = jaxlump.lump_masked(planted, TOKENS, eps)
        assert info.widths_after == single_info.widths_after and float(info.knob) == eps
        for got, want in zip(info.segments, single_info.segments):
            for p, q in zip(got.partitions, want.partitions):
                np.testing.assert_array_equal(p, q)
        np.testing.assert_allclose(logits(masked), logits(single), atol=1e-5)
        assert int(site_sweep.dense_params[i]) == single_info.params_after
        assert int(site_sweep.flops[i]) == single_info.flops_after
        np.testing.assert_allclose(site_sweep.errors()[i], float(single_info.output_max_abs), rtol=1e-5, atol=1e-6)
    assert len(set(np.asarray(site_sweep.dense_params).tolist())) >= 3  # the grid really compresses


@pytest.mark.integration  # compiles the whole pipeline again, traced: the second test step
def test_sweep_pickers_shrink_to_the_users_class(planted, site_sweep):
    small, info = site_sweep.smallest_within(0.2)
    assert type(small) is TokenModel and info.params_after == sum(a.size for a in _arrays(small))
    assert np.abs(logits(small) - logits(planted)).max() <= 0.2 + 1e-6
    small, info = site_sweep.closest_to(params=int(site_sweep.dense_params[-1]))
    assert small.ffns[1].up.out_features == int(site_sweep.widths["ffns[1]"][-1])


@pytest.mark.integration  # compiles the whole pipeline again, traced: the second test step
def test_a_second_grid_of_the_same_length_does_not_retrace(planted, site_sweep):
    traces = eqx.debug.get_num_traces(_sweep_core)
    again = jaxlump.sweep(planted, TOKENS, [0.1, 0.5, 2.0, 4.0])
    assert eqx.debug.get_num_traces(_sweep_core) == traces and len(again) == 4


def test_sweep_of_a_site_model_refuses_bad_arguments(planted):
    with pytest.raises(ValueError, match="`x_calib` is needed to sweep a TokenModel"):
        jaxlump.sweep(planted, None, GRID)
    with pytest.raises(TypeError, match="`ridge`"):
        jaxlump.sweep(planted, TOKENS, GRID, ridge="0.1")
    with pytest.raises(ValueError, match="`where` and `independent` apply to models compressed site by site"):
        jaxlump.sweep(eqx.nn.MLP(2, 1, 4, 1, key=jr.key(0)), jnp.ones((4, 2)), GRID, independent=True)


_SHARDED = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, "tests")
    import jax.random as jr
    from test_sites import TOKENS, TokenModel, plant
    import jaxlump
    assert len(jax.devices()) == 8
    model = plant(TokenModel(jr.key(0), widths=(32, 16)), 0, 8)
    grid = [0.0, 0.3, 1.0, 3.0, 0.5, 2.0]  # 6: padded to 8
    out = {}
    for name, devices in (("sharded", None), ("one", jax.devices()[:1])):
        result = jaxlump.sweep(model, TOKENS, grid, devices=devices)
        out[name] = {
            "widths": {k: np.asarray(v).tolist() for k, v in result.widths.items()},
            "weights": [np.asarray(w).tolist() for w in jax.tree_util.tree_leaves(result.models)
                        if hasattr(w, "shape")],
            "error": np.asarray(result.errors()).tolist(),
        }
    print(json.dumps(out))
    """
)


@pytest.mark.slow  # a fresh process compiling two programs
def test_site_sweep_sharded_over_eight_host_devices_equals_one_device():
    out = on_host_devices(_SHARDED)
    assert out["sharded"]["widths"] == out["one"]["widths"]
    for got, want in zip(out["sharded"]["weights"], out["one"]["weights"], strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(out["sharded"]["error"], out["one"]["error"], rtol=0, atol=1e-5)
    assert len(set(out["one"]["widths"]["ffns[0]"])) >= 3
