"""lump_then_prune: budget, masks, the choice of ε against the pipeline built from public parts, errors."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jaxlump
from jaxlump._lump_then_prune import DEFAULT_EPS_GRID
from jaxlump.baselines import compress_to, magnitude, realised_size

TARGET = 150


@pytest.fixture(scope="module")
def setting():
    mlp = eqx.nn.MLP(3, 2, 16, 2, activation=jnp.tanh, key=jr.key(0))
    return mlp, jr.normal(jr.key(1), (256, 3))


def _outputs(model, x):
    return np.asarray(jax.vmap(model)(x))


def test_budget_masks_and_reported_choice(setting):
    mlp, x = setting
    model, info = jaxlump.lump_then_prune(mlp, x, TARGET)
    assert info.method == "lump_then_prune" and not info.structured
    assert int(info.cost_after.nonzeros) <= TARGET
    assert int(jaxlump.cost(model).nonzeros) == int(info.cost_after.nonzeros)
    assert float(info.knob) in DEFAULT_EPS_GRID
    layers = [layer for layer in model.layers if isinstance(layer, eqx.nn.Linear)]
    assert len(layers) == len(info.weight_masks) == 3
    for layer, mask in zip(layers, info.weight_masks, strict=True):
        assert np.all(np.asarray(layer.weight)[~np.asarray(mask)] == 0)


def test_chosen_eps_is_the_best_pipeline_built_from_public_parts(setting):
    """Independent of `lump_then_prune`: for every ε, lump → prune to the budget → masked reconstruction against
    the original, by hand with the public functions; the chosen ε is the one of least calibration error, and the
    returned model is that pipeline's model."""
    mlp, x = setting
    model, chosen = jaxlump.lump_then_prune(mlp, x, TARGET)
    reference = _outputs(mlp, x)
    errors, outputs = {}, {}
    for eps in DEFAULT_EPS_GRID:
        lumped, lump_info = jaxlump.lump(mlp, x, eps, certify_ode=False)
        if realised_size(lump_info) <= TARGET:
            continue
        pruned, prune_info = compress_to(lumped, magnitude, TARGET, x)
        info = dataclasses.replace(prune_info, partitions=lump_info.partitions)
        rebuilt, _ = jaxlump.reconstruct(mlp, pruned, x, info)
        outputs[eps] = _outputs(rebuilt, x)
        errors[eps] = float(np.mean((outputs[eps] - reference) ** 2))
    assert len(errors) >= 2  # a real choice was made
    best = min(errors, key=errors.get)
    assert float(chosen.knob) == best
    np.testing.assert_allclose(_outputs(model, x), outputs[best], rtol=0, atol=1e-12)


def test_an_eps_whose_pruning_cannot_reach_the_target_is_skipped(setting):
    """Magnitude keeps the output layer's weights and the biases: from the 16-wide lumps (ε = 0, 0.5) no sparsity
    reaches 40 non-zeros, from ε = 1's (6, 3) lump it does. The unreachable ε are skipped, not fatal."""
    mlp, x = setting
    for eps in (0.0, 0.5):
        lumped, _ = jaxlump.lump(mlp, x, eps, certify_ode=False)
        with pytest.raises(jaxlump.UnreachableTargetError):
            compress_to(lumped, magnitude, 40, x)
    model, info = jaxlump.lump_then_prune(mlp, x, 40, eps_grid=(0.0, 0.5, 1.0))
    assert float(info.knob) == 1.0 and int(jaxlump.cost(model).nonzeros) <= 40
    with pytest.raises(jaxlump.UnreachableTargetError, match=r"ε = 0.0: `magnitude` cannot reach.*ε = 0.5: `magn"):
        jaxlump.lump_then_prune(mlp, x, 40, eps_grid=(0.0, 0.5))  # a grid given is not extended


def test_the_default_grid_searches_on_until_the_pruning_can_reach_the_target(setting):
    """No ε of the default grid can be pruned to 40 non-zeros, and ε = 1.4 lumps below 40 by itself: the search
    goes on between 0.7 and 1.4 and uses the budget."""
    mlp, x = setting
    lumped, _ = jaxlump.lump(mlp, x, DEFAULT_EPS_GRID[-1], certify_ode=False)
    with pytest.raises(jaxlump.UnreachableTargetError):
        compress_to(lumped, magnitude, 40, x)
    assert int(jaxlump.cost(jaxlump.lump(mlp, x, 1.4, certify_ode=False)[0]).nonzeros) <= 40
    model, info = jaxlump.lump_then_prune(mlp, x, 40)
    assert DEFAULT_EPS_GRID[-1] < float(info.knob) < 1.4
    assert 15 < int(jaxlump.cost(model).nonzeros) <= 40


@pytest.mark.parametrize(
    "options, error, match",
    [
        ({"target": 10_000, "eps_grid": (0.0,)}, ValueError, "not reachable"),
        ({"target": 0}, ValueError, r"`target` must be an integer >= 1; received 0"),
        ({"target": -5}, ValueError, r"`target` must be an integer >= 1"),
        ({"target": 150.5}, TypeError, r"`target` must be an integer"),
        ({"prune": None}, TypeError, r"`prune` must be an unstructured compressor"),
        ({"eps_grid": ()}, ValueError, r"`eps_grid` must be a non-empty sequence"),
        ({"eps_grid": (0.3, -1.0)}, ValueError, r"`eps_grid\[1\]` must be a number >= 0"),
        ({"prune_options": "scope"}, TypeError, r"`prune_options` must be a dict"),
        ({"throw": "no"}, TypeError, r"`throw` must be True or False"),
        ({"x_calib": "wrong_width"}, ValueError, "x_calib"),
        ({"x_calib": "nan"}, ValueError, "x_calib"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_refuses_bad_input(setting, options, error, match):
    mlp, x = setting
    options = dict(options)
    x_calib = {"wrong_width": x[:, :2], "nan": x.at[0, 0].set(jnp.nan), None: x}[options.pop("x_calib", None)]
    target = options.pop("target", TARGET)
    with pytest.raises(error, match=match):
        jaxlump.lump_then_prune(mlp, x_calib, target, **options)


def test_prune_options_reach_the_pruner(setting):
    mlp, x = setting
    _, by_layer = jaxlump.lump_then_prune(mlp, x, TARGET, eps_grid=(0.0,), prune_options={"scope": "row"})
    kept_per_row = [np.asarray(m).sum(axis=1) for m in by_layer.weight_masks[:2]]
    assert all(np.ptp(k) == 0 for k in kept_per_row)  # scope="row": every row keeps the same number of inputs


def test_pruned_biases_stay_pruned_so_the_budget_holds(setting):
    """The refit re-solves every bias; a bias the pruning removed must not come back (a zero-bias model went from
    204 to 205 non-zeros at a target of 180 before)."""
    mlp, x = setting
    zero_bias = eqx.tree_at(lambda m: [layer.bias for layer in m.layers], mlp, replace_fn=jnp.zeros_like)
    small, info = jaxlump.lump_then_prune(zero_bias, x, TARGET, eps_grid=(0.0, 0.5))
    assert int(jaxlump.cost(small).nonzeros) == int(info.cost_after.nonzeros) <= TARGET
