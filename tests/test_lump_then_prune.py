"""lump_then_prune: budget, masks, choice of ε on calibration data, errors."""

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jaxlump
from jaxlump._lump_then_prune import DEFAULT_EPS_GRID


@pytest.fixture(scope="module")
def setting():
    mlp = eqx.nn.MLP(3, 2, 16, 2, activation=jnp.tanh, key=jr.key(0))
    return mlp, jr.normal(jr.key(1), (256, 3))


def test_budget_masks_and_reported_choice(setting):
    mlp, x = setting
    model, info = jaxlump.lump_then_prune(mlp, x, 150)
    assert info.method == "lump_then_prune" and not info.structured
    assert int(info.cost_after.nonzeros) <= 150
    assert float(info.knob) in DEFAULT_EPS_GRID
    for layer, mask in zip(model.layers if hasattr(model, "layers") else (), info.weight_masks):
        assert np.all(np.asarray(layer.weight)[~np.asarray(mask)] == 0)


def test_chosen_eps_is_best_on_calibration_data(setting):
    mlp, x = setting
    _, chosen = jaxlump.lump_then_prune(mlp, x, 150)
    errors = {}
    for eps in DEFAULT_EPS_GRID:
        try:
            model, _ = jaxlump.lump_then_prune(mlp, x, 150, eps_grid=(eps,))
        except ValueError:
            continue
        errors[eps] = float(jnp.mean((jaxlump._adapters.to_chain(model)(x) - jaxlump._adapters.to_chain(mlp)(x)) ** 2))
    assert min(errors, key=errors.get) == float(chosen.knob)


def test_refuses_bad_input(setting):
    mlp, x = setting
    with pytest.raises(ValueError, match="not reachable"):
        jaxlump.lump_then_prune(mlp, x, 10_000)
    with pytest.raises(ValueError, match="x_calib"):
        jaxlump.lump_then_prune(mlp, x[:, :2], 150)
    with pytest.raises(ValueError, match="x_calib"):
        jaxlump.lump_then_prune(mlp, x.at[0, 0].set(jnp.nan), 150)
