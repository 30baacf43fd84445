"""Whitened low-rank factorisation: the Eckart–Young loss identity and the parameter count."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from _networks import overflowing, parameters, random_mlp

import jaxlump
from jaxlump import baselines as B
from jaxlump.baselines._lowrank import break_even_rank


def test_first_layer_loss_equals_discarded_whitened_singular_values():
    model = random_mlp(jr.key(0), (6, 12, 3), "tanh")
    x = jr.normal(jr.key(1), (100, 6))
    small, _ = B.lowrank(model, x, 0.5, damping=0.0)
    weights, biases = parameters(model)
    new_w, new_b = parameters(small)  # [V (r, 6), U (12, r), ...]
    r = new_w[0].shape[0]
    assert r == int(0.5 * break_even_rank(12, 6)) and new_w[1].shape == (12, r)
    xs = np.asarray(x)
    z = xs @ weights[0].T + biases[0]
    z_small = (xs @ new_w[0].T + new_b[0]) @ new_w[1].T + new_b[1]
    np.testing.assert_allclose(z_small.mean(axis=0), z.mean(axis=0), atol=1e-10)
    xc = xs - xs.mean(axis=0)
    sigma = np.linalg.svd(weights[0] @ np.linalg.cholesky(xc.T @ xc), compute_uv=False)
    loss = np.sum(((z - z.mean(axis=0)) - (z_small - z_small.mean(axis=0))) ** 2)
    np.testing.assert_allclose(loss, np.sum(sigma[r:] ** 2), rtol=1e-8)


def test_parameter_count_of_the_factorised_chain():
    model = random_mlp(jr.key(2), (5, 16, 16, 2), "tanh")
    x = jr.normal(jr.key(3), (64, 5))
    small, info = B.lowrank(model, x, 0.3)
    expected = 0
    for m, n in ((16, 5), (16, 16), (2, 16)):
        r_star = break_even_rank(m, n)
        expected += (max(1, int(0.7 * r_star)) * (m + n) if r_star else m * n) + m
    assert int(jaxlump.cost(small).dense_params) == int(info.cost_after.dense_params) == expected


def test_break_even_rank():
    assert break_even_rank(16, 16) == 7 and break_even_rank(2, 16) == 1 and break_even_rank(1, 1) == 0
    for m, n in ((16, 16), (2, 16), (64, 7)):
        r = break_even_rank(m, n)
        assert r * (m + n) < m * n <= (r + 1) * (m + n)


def test_a_singular_gram_is_whitened_on_its_range_and_reported():
    """`damping=0` and two examples: the Gram of the centred inputs has rank 1, Cholesky fails. The minimum-norm
    factorisation on the Gram's range still reproduces the first layer's pre-activations on those examples exactly
    (a rank-1 map suffices on rank-1 data), and the result says the solve was rank-deficient."""
    model, x = random_mlp(jr.key(0), (3, 6, 6, 2), "tanh"), jr.normal(jr.key(1), (2, 3))
    with pytest.raises(jaxlump.CompressionError, match="least-squares refit"):
        B.lowrank(model, x, 0.5, damping=0.0)
    small, info = B.lowrank(model, x, 0.5, damping=0.0, throw=False)
    assert info.result == jaxlump.RESULTS.least_squares_rank_deficient
    weights, biases = parameters(model)
    new_w, new_b = parameters(small)  # [V (1, 3), U (6, 1), ...]
    xs = np.asarray(x)
    z_small = (xs @ new_w[0].T + new_b[0]) @ new_w[1].T + new_b[1]
    np.testing.assert_allclose(z_small, xs @ weights[0].T + biases[0], rtol=1e-10, atol=1e-12)
    _, info = B.lowrank(model, jr.normal(jr.key(1), (64, 3)), 0.5, damping=0.0)  # enough data: Cholesky succeeds
    assert info.result == jaxlump.RESULTS.successful


def test_an_overflowing_gram_keeps_the_layer_dense_and_is_reported():
    model = overflowing()
    x = jr.normal(jr.key(1), (32, 3))
    small, info = B.lowrank(model, x, 0.5, throw=False)
    assert info.result == jaxlump.RESULTS.least_squares_nonfinite
    # the first layer (finite inputs) is factorised; the two whose inputs overflow stay dense
    assert info.widths_after.tolist() == [3, 1, 6, 6, 2]
    with pytest.raises(jaxlump.CompressionError, match="lowrank"):
        B.lowrank(model, x, 0.5)


@pytest.mark.parametrize("family", ["equinox", "nnx"])
def test_the_result_type_depends_on_the_input_family_only(family):
    """An NNX model comes back as an `nnx.Sequential`, an Equinox one as an `eqx.nn.Sequential`, also at s = 0 where
    nothing is factorised (then the same function)."""
    from flax import nnx

    x = jr.normal(jr.key(1), (64, 3))
    if family == "nnx":
        model = nnx.Sequential(nnx.Linear(3, 16, rngs=nnx.Rngs(0)), nnx.tanh, nnx.Linear(16, 2, rngs=nnx.Rngs(1)))
        expected, outputs = nnx.Sequential, model
    else:
        model = eqx.nn.MLP(3, 2, 16, 1, activation=jnp.tanh, key=jr.key(0))
        expected, outputs = eqx.nn.Sequential, jax.vmap(model)
    dense, _ = B.lowrank(model, x, 0.0)
    small, info = B.lowrank(model, x, 0.5)
    assert type(dense) is expected and type(small) is expected
    apply = (lambda m: m(x)) if family == "nnx" else (lambda m: jax.vmap(m)(x))
    np.testing.assert_allclose(apply(dense), outputs(x), atol=1e-6)
    assert tuple(info.widths_after) == (3, 1, 16, 1, 2) and int(jaxlump.cost(small).dense_params) == 55
