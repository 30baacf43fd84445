"""One conformance suite over every compressor: call shape, purity, determinism, info, the bad-input matrix."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jaxlump
from jaxlump import baselines as B

MODEL = eqx.nn.MLP(3, 2, 12, 2, activation=jax.nn.relu, key=jr.key(0))
X = jr.normal(jr.key(1), (96, 3)) + 0.5

# name -> (compress(model, x_calib) with the common call shape, whether data is required)
COMPRESSORS = {
    "lump": (lambda m, x: jaxlump.lump(m, x, 0.5, certify_ode=False), False),
    "lump_masked": (lambda m, x: jaxlump.lump_masked(m, x, 0.5), False),
    "lump_dynamical": (lambda m, x: jaxlump.lump(m, x, 0.5, discrepancy=jaxlump.Dynamical(), certify_ode=False), True),
    "exact_lump": (lambda m, x: B.exact_lump(m, x), False),
    "magnitude": (lambda m, x: B.magnitude(m, x, 0.5), False),
    "random": (lambda m, x: B.random(m, x, 0.5, key=jr.key(2)), False),
    "wanda": (lambda m, x: B.wanda(m, x, 0.5), True),
    "elimination_compensation": (lambda m, x: B.elimination_compensation(m, x, 0.5), True),
    "structured_prune": (lambda m, x: B.structured_prune(m, x, 0.5), False),
    "linearity_merge": (lambda m, x: B.linearity_merge(m, x, 0.9), True),
    "proportional_lump": (lambda m, x: B.proportional_lump(m, x, 0.1), False),
    "lump_then_prune": (lambda m, x: jaxlump.lump_then_prune(m, x, 150), True),
}


def _leaves(model):
    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array))]


@pytest.mark.parametrize("name", COMPRESSORS)
def test_shape_purity_determinism_and_info(name):
    compress, _ = COMPRESSORS[name]
    before = _leaves(MODEL)
    model, info = compress(MODEL, X)
    again, again_info = compress(MODEL, X)
    assert all(np.array_equal(a, b) for a, b in zip(before, _leaves(MODEL))), "input model was modified"
    assert isinstance(info, jaxlump.CompressionInfo)
    assert all(np.array_equal(a, b) for a, b in zip(_leaves(model), _leaves(again))), "not deterministic"
    outputs = jax.vmap(model)(X)
    assert outputs.shape == (X.shape[0], 2) and bool(jnp.all(jnp.isfinite(outputs)))
    size_after = info.cost_after.dense_params if info.structured else info.cost_after.nonzeros
    assert int(size_after) <= int(info.cost_before.dense_params)
    assert int(jaxlump.cost(model).flops) > 0


@pytest.mark.parametrize("name", COMPRESSORS)
@pytest.mark.parametrize(
    "bad, match",
    [
        (X.at[3, 1].set(jnp.nan), "x_calib"),
        (X.at[0, 0].set(jnp.inf), "x_calib"),
        (X[:, :2], "x_calib"),
        (X[:0], "x_calib"),
        (X[0], "x_calib"),
    ],
    ids=["nan", "inf", "wrong-width", "empty", "1-d"],
)
def test_bad_calibration_data_is_refused_by_name(name, bad, match):
    compress, _ = COMPRESSORS[name]
    with pytest.raises(ValueError, match=match):
        compress(MODEL, bad)


@pytest.mark.parametrize("name", [n for n, (_, needs_data) in COMPRESSORS.items() if needs_data])
def test_missing_data_is_refused(name):
    compress, _ = COMPRESSORS[name]
    with pytest.raises((ValueError, TypeError), match="x_calib"):
        compress(MODEL, None)


@pytest.mark.parametrize("name", COMPRESSORS)
def test_nan_weights_are_refused(name):
    compress, _ = COMPRESSORS[name]
    broken = eqx.tree_at(lambda m: m.layers[1].weight, MODEL, MODEL.layers[1].weight.at[0, 0].set(jnp.nan))
    with pytest.raises(ValueError, match="NaN"):
        compress(broken, X)


@pytest.mark.parametrize("name", COMPRESSORS)
def test_unsupported_module_is_refused(name):
    compress, _ = COMPRESSORS[name]
    model = eqx.nn.Sequential([eqx.nn.Linear(3, 4, key=jr.key(0)), eqx.nn.Dropout(0.1)])
    with pytest.raises(TypeError, match="Dropout"):
        compress(model, X)
