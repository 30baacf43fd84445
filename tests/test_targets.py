"""compress_to and exact_lump."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jaxlump
from jaxlump.baselines import compress_to, exact_lump, magnitude, realised_size, structured_prune


@pytest.fixture(scope="module")
def mlp():
    return eqx.nn.MLP(3, 2, 16, 2, activation=jnp.tanh, key=jr.key(0))


@pytest.fixture(scope="module")
def x():
    return jr.normal(jr.key(1), (128, 3))


@pytest.mark.parametrize("target", [100, 200, 300])
def test_magnitude_reaches_exact_nonzero_targets(mlp, target):
    _, info = compress_to(mlp, magnitude, target)
    # magnitude prunes int(n·s) weights, so every count of pruned weights is reachable: the target is hit exactly
    assert realised_size(info) == target


def test_lump_target_is_never_exceeded_and_close(mlp, x):
    target = 250
    _, info = compress_to(mlp, jaxlump.lump, target, x, grow_upper=True, refit=False)
    assert realised_size(info) <= target
    # one more neuron in the narrowest possible spot would exceed: the result is within one neuron's cost
    assert realised_size(info) > target - (3 + 16 + 2 + 1) - 16


def test_structured_prune_target(mlp, x):
    _, info = compress_to(mlp, structured_prune, 200, x)
    assert realised_size(info) <= 200 and info.structured


def test_unreachable_and_bad_targets(mlp):
    with pytest.raises(ValueError, match="target_params"):
        compress_to(mlp, magnitude, 0)
    with pytest.raises(ValueError, match="cannot reach"):
        compress_to(mlp, magnitude, 1, knob_range=(0.0, 0.1))
    with pytest.raises(ValueError, match="knob_range"):
        compress_to(mlp, magnitude, 10, knob_range=(0.5, 0.5))


def test_exact_lump_changes_no_output():
    # a tanh network with two planted duplicate hidden neurons in layer 1
    mlp = eqx.nn.MLP(3, 2, 6, 2, activation=jnp.tanh, key=jr.key(3))
    w0, b0 = mlp.layers[0].weight, mlp.layers[0].bias
    mlp = eqx.tree_at(lambda m: (m.layers[0].weight, m.layers[0].bias), mlp, (w0.at[1].set(w0[4]), b0.at[1].set(b0[4])))
    x = jr.normal(jr.key(2), (64, 3))
    small, info = exact_lump(mlp, x)
    assert info.method == "exact_lump"
    assert tuple(int(w) for w in info.widths_after) == (3, 5, 6, 2)
    np.testing.assert_allclose(jax.vmap(small)(x), jax.vmap(mlp)(x), atol=1e-10)
