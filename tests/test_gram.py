"""Streamed calibration statistics (`jaxlump._criteria.gram`) against one-shot NumPy moments (float64)."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from _networks import random_mlp

from jaxlump._criteria.gram import layer_statistics, nearest_partners, sketch_rows
from jaxlump._model import to_chain
from jaxlump._model.network import DenseChain


def _chain64(chain):
    return jax.tree.map(
        lambda a: a.astype(jnp.float64) if isinstance(a, jax.Array) and a.dtype == jnp.float32 else a, chain
    )


@pytest.mark.parametrize("batch_rows", [1000, 37])  # one batch; batches that do not divide N (the last padded)
def test_streamed_moments_equal_numpy_on_all_rows(batch_rows):
    with jax.enable_x64(True):
        chain = _chain64(to_chain(random_mlp(jr.key(0), (3, 12, 9, 2))))
        x = jr.normal(jr.key(1), (300, 3), jnp.float64)
        stats = layer_statistics(chain, x, sketch_size=50, candidates=4, batch_rows=batch_rows)
        zs, acts = chain.forward(x)
    for l, s in enumerate(stats):
        a, z = np.asarray(acts[l + 1]), np.asarray(zs[l])
        centred = a - a.mean(axis=0)
        np.testing.assert_allclose(np.asarray(s.gram), centred.T @ centred, rtol=1e-11, atol=1e-11)
        assert float(s.count) == 300
        np.testing.assert_allclose(float(s.pre_square), np.sum(z**2), rtol=1e-12)
        partners = np.asarray(s.partners)
        gap = np.sum((z[:, :, None] - z[:, partners]) ** 2, axis=0)
        np.testing.assert_allclose(np.asarray(s.gap), gap, rtol=1e-11, atol=1e-11)
        np.testing.assert_array_equal(np.asarray(s.sketch), z[sketch_rows(300, 50)])


def test_uncentred_gram_when_the_next_layer_has_no_bias():
    model = random_mlp(jr.key(2), (3, 6, 2))
    chain = to_chain(model)
    chain = DenseChain(chain.weights, chain.biases, chain.activations, use_bias=(True, False))
    x = jr.normal(jr.key(3), (40, 3))
    stats = layer_statistics(chain, x, sketch_size=40, candidates=2)
    a = np.asarray(chain.forward(x)[1][1])
    np.testing.assert_allclose(np.asarray(stats[0].gram), a.T @ a, rtol=1e-5)


def test_gated_layer_stacks_gate_above_up():
    generator = np.random.default_rng(4)
    weights = (generator.standard_normal((8, 3)), generator.standard_normal((2, 8)))
    biases = (generator.standard_normal(8), generator.standard_normal(2))
    gates, gate_biases = (generator.standard_normal((8, 3)), None), (generator.standard_normal(8), None)
    with jax.enable_x64(True):
        chain = DenseChain(
            tuple(map(jnp.asarray, weights)),
            tuple(map(jnp.asarray, biases)),
            ("silu", "identity"),
            (True, True),
            gate_weights=(jnp.asarray(gates[0]), None),
            gate_biases=(jnp.asarray(gate_biases[0]), None),
        )
        x = jnp.asarray(generator.standard_normal((64, 3)))
        stats = layer_statistics(chain, x, sketch_size=16, candidates=3, batch_rows=24)
        ((z_gate, z_up),) = chain.forward(x)[0][:1]
    stacked = np.concatenate([np.asarray(z_gate), np.asarray(z_up)], axis=0)
    assert stats[0].sketch.shape == (32, 8)
    partners = np.asarray(stats[0].partners)
    np.testing.assert_allclose(
        np.asarray(stats[0].gap), np.sum((stacked[:, :, None] - stacked[:, partners]) ** 2, 0), rtol=1e-11
    )


def test_partners_are_the_nearest_columns_by_brute_force():
    generator = np.random.default_rng(5)
    pre = generator.standard_normal((30, 25))
    with jax.enable_x64(True):
        partners = np.asarray(nearest_partners(jnp.asarray(pre), 5))
    distance = np.sum((pre[:, :, None] - pre[:, None, :]) ** 2, axis=0)
    np.fill_diagonal(distance, np.inf)
    np.testing.assert_array_equal(np.sort(partners, axis=1), np.sort(np.argsort(distance, axis=1)[:, :5], axis=1))


def test_sketch_rows_are_evenly_spaced_and_all_rows_when_few():
    np.testing.assert_array_equal(sketch_rows(5, 10), np.arange(5))
    rows = sketch_rows(1000, 10)
    assert len(rows) == 10 and rows[0] == 0 and rows[-1] == 999
    assert np.ptp(np.diff(rows)) <= 1
