"""cost (dense parameters, non-zeros, FLOPs) against hand counts; measure_latency."""

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import pytest

import jaxlump
from jaxlump._model import to_chain
from jaxlump._results.accounting import chain_cost, widths_dense_params


def test_hand_counts_with_zeros_and_bias_free_layers():
    model = eqx.nn.MLP(3, 2, 4, 1, use_final_bias=False, key=jr.key(0))
    model = eqx.tree_at(lambda m: m.layers[0].weight, model, model.layers[0].weight.at[0, :].set(0.0))
    c = jaxlump.cost(model)
    assert int(c.dense_params) == 3 * 4 + 4 + 4 * 2  # no bias on the output layer
    assert int(c.nonzeros) == int(c.dense_params) - 3
    assert int(c.flops) == 2 * 3 * 4 + 4 + 2 * 4 * 2  # zeros still cost FLOPs in dense kernels


def test_neuron_masks_count_the_shrunk_model():
    chain = to_chain(eqx.nn.MLP(3, 2, 5, 2, key=jr.key(1)))
    masks = [jnp.asarray([True, False, True, False, True]), jnp.asarray([True] * 4 + [False])]
    c = chain_cost(chain, masks)
    assert int(c.dense_params) == (3 * 3 + 3) + (3 * 4 + 4) + (4 * 2 + 2)
    assert int(c.flops) == 2 * (3 * 3 + 3 * 4 + 4 * 2) + 3 + 4 + 2


def test_dense_params_from_widths_alone_equal_the_built_chains():
    chain = to_chain(eqx.nn.MLP(3, 2, 4, 1, use_final_bias=False, key=jr.key(0)))
    assert widths_dense_params(chain.widths, chain.use_bias) == int(chain_cost(chain).dense_params) == 3 * 4 + 4 + 8
    assert widths_dense_params((3, 5, 4, 2)) == (3 * 5 + 5) + (5 * 4 + 4) + (4 * 2 + 2)  # biases everywhere


def test_latency_is_measured_and_bad_batch_refused():
    model = eqx.nn.MLP(3, 2, 8, 2, key=jr.key(2))
    assert 0.0 < jaxlump.measure_latency(model, 4, repeats=5) < 10.0
    with pytest.raises(ValueError, match="`x` must be an integer >= 1"):
        jaxlump.measure_latency(model, 0)


@pytest.mark.parametrize(
    "options, error, match",
    [
        ({"repeats": 0}, ValueError, r"`repeats` must be an integer >= 1; received 0"),
        ({"repeats": 2.5}, TypeError, r"`repeats` must be an integer"),
        ({"warmup": -1}, ValueError, r"`warmup` must be an integer >= 0"),
        ({"x": 0}, ValueError, r"`x` must be an integer >= 1"),
        ({"x": True}, TypeError, r"`x`"),
    ],
    ids=["zero_repeats", "float_repeats", "negative_warmup", "zero_batch", "bool_batch"],
)
def test_measure_latency_refuses_bad_counts(options, error, match):
    """`repeats=0` returned NaN (the median of nothing); counts are now checked."""
    model = eqx.nn.MLP(3, 2, 4, 1, key=jr.key(0))
    with pytest.raises(error, match=match):
        jaxlump.measure_latency(model, **options)


def test_neuron_masks_refused_for_a_skip_mlp_and_when_they_do_not_fit():
    """A SkipMLP costs its stored layers; masks given with one were ignored without a word."""
    skip = jaxlump.SkipMLP(
        (jnp.ones((2, 3)), jnp.ones((1, 2))), (jnp.zeros(2), jnp.zeros(1)), ("relu", "identity"), (True, True)
    )
    with pytest.raises(ValueError, match="`neuron_masks` does not apply to a SkipMLP"):
        jaxlump.cost(skip, neuron_masks=[jnp.ones(2, bool)])
    model = eqx.nn.MLP(3, 2, 5, 2, key=jr.key(1))
    with pytest.raises(TypeError, match=r"`neuron_masks` must be a sequence of 2 live-neuron masks.*length 1"):
        jaxlump.cost(model, neuron_masks=[jnp.ones(5, bool)])
    with pytest.raises(ValueError, match=r"`neuron_masks\[1\]` must have shape \(5,\) \(hidden layer 2\); received"):
        jaxlump.cost(model, neuron_masks=[jnp.ones(5, bool), jnp.ones(4, bool)])
    with pytest.raises(ValueError, match=r"`neuron_masks\[0\]` must hold booleans or 0/1"):
        jaxlump.cost(model, neuron_masks=[jnp.full(5, 0.5), jnp.ones(5, bool)])
    masks = [jnp.asarray([1, 0, 1, 0, 1]), jnp.asarray([True] * 4 + [False])]  # 0/1 accepted, as booleans
    assert int(jaxlump.cost(model, neuron_masks=masks).dense_params) == (3 * 3 + 3) + (3 * 4 + 4) + (4 * 2 + 2)
