"""Linearity-based merging: lossless at τ = 1 on the calibration set, equal to the partly linearised network in
general, the worth-it rule with the true input width, the fixed-size driver and the refusals."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jaxlump
from jaxlump._model.network import DenseChain
from jaxlump._model.skip_mlp import SkipMLP
from jaxlump.baselines import LinearFractionAbove, MoreLinearThan
from jaxlump.baselines._linearity import activation_rates, linearity_merge, linearity_to_size


@eqx.filter_jit
def _apply(model, x):
    return model(x)


def _normal(key, shape):
    return np.array(jr.normal(key, shape), dtype=np.float64)


def _chain(weights, biases, hidden="relu"):
    n = len(weights)
    acts = (hidden,) * (n - 1) + ("identity",)
    return DenseChain(tuple(map(jnp.asarray, weights)), tuple(map(jnp.asarray, biases)), acts, (True,) * n)


def _numpy_rates(weights, biases, x):
    rates, a = [], x
    for w, b in zip(weights[:-1], biases[:-1], strict=True):
        a = np.maximum(a @ w.T + b, 0)
        rates.append((a > 0).mean(0))
    return rates


def _numpy_partly_linear(weights, biases, linear_masks, x):
    """The original network with the ReLU of the masked neurons replaced by the identity."""
    a = x
    for w, b, lin in zip(weights[:-1], biases[:-1], linear_masks, strict=True):
        z = a @ w.T + b
        a = np.where(lin, z, np.maximum(z, 0))
    return a @ weights[-1].T + biases[-1]


def _planted_net():
    """4 -> 6 -> 5 -> 6 -> 3. Layer 1: neurons 0-2 always on; layer 2: provably linear (weights, bias >= 0), so it
    disappears; layer 3: neurons 0, 1 always on (chained merge through the vanished layer)."""
    k = jr.split(jr.key(0), 8)
    w = [_normal(k[0], (6, 4)), np.abs(_normal(k[1], (5, 6))), _normal(k[2], (6, 5)), _normal(k[3], (3, 6))]
    x = _normal(k[5], (64, 4))
    b = [np.array([20.0, 20, 20, 0, 0, 0]), np.ones(5), None, _normal(k[4], (3,))]
    a2 = np.maximum(np.maximum(x @ w[0].T + b[0], 0) @ w[1].T + b[1], 0)
    b[2] = -(a2 @ w[2].T).mean(0)  # centred: active about half the time
    b[2][:2] = 1e4
    rates = _numpy_rates(w, b, x)
    assert rates[0][:3].tolist() == [1, 1, 1] and rates[0][3:].max() < 1 and (rates[1] == 1).all()
    assert rates[2][:2].tolist() == [1, 1] and rates[2][2:].max() < 1
    return w, b, x


def test_activation_rates_match_numpy():
    w, b, x = _planted_net()
    for ours, ref in zip(activation_rates(_chain(w, b), x), _numpy_rates(w, b, x), strict=True):
        np.testing.assert_array_equal(ours, ref)


def test_tau_one_is_lossless_with_chained_merge_and_vanished_layer():
    w, b, x = _planted_net()
    chain = _chain(w, b)
    merged, info = linearity_merge(chain, x, 1.0, layer_threshold=MoreLinearThan(0))
    assert isinstance(merged, SkipMLP) and merged.widths == (4, 3, 0, 4, 3)
    assert merged.skip_sources == ((), (), (1, 0), (1, 0))  # layer 3's skip reads [a^1; x], current input first
    assert np.abs(np.asarray(_apply(merged, x)) - np.asarray(_apply(chain, x))).max() <= 1e-10
    np.testing.assert_array_equal(info.partitions[0], [-1, -1, -1, 0, 1, 2])
    np.testing.assert_array_equal(info.partitions[1], [-1] * 5)
    np.testing.assert_array_equal(info.partitions[2], [-1, -1, 0, 1, 2, 3])
    assert info.widths_after.tolist() == [4, 3, 0, 4, 3] and float(info.knob) == 1.0
    # W¹ and b¹; nothing of layer 2; b³ and the skip into z³ (4 × (3 + 4)); W⁴, b⁴ and the skip into z⁴ (3 × 7).
    assert int(info.cost_after.dense_params) == (4 * 3 + 3) + (4 + 4 * 7) + (3 * 4 + 3 + 3 * 7)
    # Remaining neurons see the same pre-activations on the calibration set, so their rates are unchanged.
    rates = activation_rates(merged, x)
    np.testing.assert_array_equal(rates[0], _numpy_rates(w, b, x)[0][3:])


@pytest.mark.parametrize("tau", [0.9, 0.6, 0.3])
def test_merged_equals_partly_linearised_network(tau):
    """For any τ the result is the original with the merged neurons' ReLU replaced by the identity — everywhere."""
    k = jr.split(jr.key(1), 8)
    w = [_normal(k[0], (8, 4)), _normal(k[1], (8, 8)), _normal(k[2], (8, 8)), _normal(k[3], (2, 8))]
    b = [_normal(k[4], (8,)) + 1, _normal(k[5], (8,)) + 1, _normal(k[6], (8,)) + 1, np.zeros(2)]
    x, fresh = _normal(k[7], (50, 4)), _normal(jr.key(2), (30, 4))
    merged, info = linearity_merge(_chain(w, b), x, tau, layer_threshold=MoreLinearThan(0))
    linear = [np.asarray(p) < 0 for p in info.partitions]
    assert sum(m.sum() for m in linear) > 0
    expected = _numpy_partly_linear(w, b, linear, fresh)
    np.testing.assert_allclose(_apply(merged, fresh), expected, rtol=1e-10, atol=1e-10)


def _one_linear_neuron_net():
    """8 -> 8 -> 8 -> 8: hidden layer 1 has exactly one always-active neuron; layer 2 none."""
    k = jr.split(jr.key(3), 6)
    w = [_normal(k[0], (8, 8)), _normal(k[1], (8, 8)), _normal(k[2], (8, 8))]
    b = [np.array([50.0] + [0.0] * 7), np.full(8, -1e3), np.zeros(8)]
    return w, b, _normal(k[3], (64, 8))


def test_worth_it_rule_refuses_a_growing_merge():
    w, b, x = _one_linear_neuron_net()
    chain = _chain(w, b)
    best, info = linearity_merge(chain, x, 1.0)  # (8 + 8 + 1)·1 = 17 < 8·8: not worth it
    assert best.widths == chain.widths and all(s is None for s in best.skips)
    assert int(info.cost_after.dense_params) == int(info.cost_before.dense_params) == 3 * (64 + 8)
    forced, info = linearity_merge(chain, x, 1.0, layer_threshold=MoreLinearThan(0))
    assert forced.widths == (8, 7, 8, 8)
    assert int(info.cost_after.dense_params) == 3 * 72 - (8 + 8 + 1) + 8 * 8
    np.testing.assert_allclose(_apply(forced, x), _apply(chain, x), atol=1e-10)


def test_layer_rules_refuse_bad_values():
    with pytest.raises(ValueError, match="`count` must be an int >= 0"):
        MoreLinearThan(-1)
    with pytest.raises(TypeError, match="`count` must be an int >= 0"):
        MoreLinearThan(0.5)
    with pytest.raises(ValueError, match="fraction"):
        LinearFractionAbove(1.5)


@pytest.mark.parametrize(
    "threshold, merged",
    [
        (MoreLinearThan(0), True),
        (MoreLinearThan(1), False),
        (LinearFractionAbove(0.1), True),
        (LinearFractionAbove(0.2), False),
    ],
)
def test_int_and_float_layer_thresholds(threshold, merged):
    w, b, x = _one_linear_neuron_net()  # |L| = 1 of 8 neurons (12.5 %)
    new, _ = linearity_merge(_chain(w, b), x, 1.0, layer_threshold=threshold)
    assert new.widths[1] == (7 if merged else 8)


def test_worth_it_merge_of_a_whole_layer():
    k = jr.split(jr.key(4), 3)
    w, b = [_normal(k[0], (8, 2)), _normal(k[1], (2, 8))], [np.full(8, 50.0), np.zeros(2)]
    x = _normal(k[2], (32, 2))
    merged, info = linearity_merge(_chain(w, b), x, 1.0)  # (2 + 2 + 1)·8 = 40 > 2·2
    assert merged.widths == (2, 0, 2) and int(info.cost_after.dense_params) == 2 * 2 + 2
    np.testing.assert_allclose(_apply(merged, x), _apply(_chain(w, b), x), atol=1e-10)


def test_bias_free_layer_gains_the_absorbed_bias():
    k = jr.split(jr.key(10), 3)
    w, b = [_normal(k[0], (8, 2)), _normal(k[1], (2, 8))], [np.full(8, 50.0), np.zeros(2)]
    chain = DenseChain(tuple(map(jnp.asarray, w)), tuple(map(jnp.asarray, b)), ("relu", "identity"), (True, False))
    x = _normal(k[2], (32, 2))
    merged, info = linearity_merge(chain, x, 1.0)
    assert merged.use_bias == (True, True) and int(info.cost_after.dense_params) == 2 * 2 + 2
    np.testing.assert_allclose(_apply(merged, x), _apply(chain, x), atol=1e-10)


def test_chained_rule_uses_true_input_width():
    """1 -> 8 -> 30 -> 4. Layer 1 is all linear and vanishes (skip S¹: 30 × 1). Layer 2 has one linear neuron whose
    true input width is 0 + 1, so (1 + 4 + 1)·1 = 6 > 1·4 merges it; the official code's quirk (adding S¹'s output
    width, 30) would give (30 + 4 + 1)·1 = 35 < 30·4 and refuse."""
    k = jr.split(jr.key(5), 5)
    x = _normal(k[0], (64, 1))
    w = [_normal(k[1], (8, 1)), _normal(k[2], (30, 8)), _normal(k[3], (4, 30))]
    a1 = x @ w[0].T + 50.0
    b2 = -(a1 @ w[1].T).mean(0)  # centres layer 2, so its neurons are active about half the time
    b2[0] = 1e4
    b = [np.full(8, 50.0), b2, np.zeros(4)]
    rates = _numpy_rates(w, b, x)
    assert (rates[0] == 1).all() and rates[1][0] == 1 and rates[1][1:].max() < 1
    chain = _chain(w, b)
    merged, info = linearity_merge(chain, x, 1.0)
    assert merged.widths == (1, 0, 29, 4) and merged.skip_sources == ((), (0,), (0,))
    assert int(info.cost_after.dense_params) == 29 + 29 * 1 + 4 * 29 + 4 + 4 * 1
    np.testing.assert_allclose(_apply(merged, x), _apply(chain, x), atol=1e-9)
    not_chained, _ = linearity_merge(chain, x, 1.0, chained=False)
    assert not_chained.widths == (1, 0, 30, 4)


def test_leaky_relu_is_lossless_at_tau_one():
    w, b, x = _planted_net()
    chain = _chain(w, b, hidden="leaky_relu")
    merged, _ = linearity_merge(chain, x, 1.0, layer_threshold=MoreLinearThan(0))
    assert merged.widths == (4, 3, 0, 4, 3)
    assert np.abs(np.asarray(_apply(merged, x)) - np.asarray(_apply(chain, x))).max() <= 1e-10


def _sizing_net():
    k = jr.split(jr.key(6), 9)
    w = [_normal(k[0], (16, 4)), _normal(k[1], (16, 16)), _normal(k[2], (16, 16)), _normal(k[3], (2, 16))]
    b = [_normal(k[4], (16,)) + 2, _normal(k[5], (16,)) + 2, _normal(k[6], (16,)) + 2, np.zeros(2)]
    return _chain(w, b), _normal(k[7], (100, 4))


@pytest.mark.parametrize("count_first_layer", [True, False])
def test_fixed_size_reaches_target_at_the_largest_tau(count_first_layer):
    chain, x = _sizing_net()
    first = 0 if count_first_layer else 16 * 4 + 16

    def first_layer(model):
        return model.weights[0].size + model.biases[0].size

    original = int(SkipMLP.from_chain(chain).cost().dense_params) - first
    merged, info = linearity_to_size(chain, x, 0.5, count_first_layer=count_first_layer)
    tau = float(info.knob)
    counted = int(merged.cost().dense_params) - (0 if count_first_layer else first_layer(merged))
    assert counted <= 0.5 * original and 0 <= tau < 1
    previous, _ = linearity_merge(chain, x, round(tau + 0.1, 12))
    counted_previous = int(previous.cost().dense_params) - (0 if count_first_layer else first_layer(previous))
    assert counted_previous > 0.5 * original
    same, _ = linearity_merge(chain, x, tau)
    assert same.widths == merged.widths


def test_fixed_size_warns_when_unreachable():
    chain, x = _sizing_net()
    with pytest.warns(UserWarning, match="requested"):
        merged, info = linearity_to_size(chain, x, 0.001)
    assert float(info.knob) == 0.0 and merged.widths == (4, 0, 0, 0, 2)


def test_input_model_not_modified():
    w, b, x = _planted_net()
    mlp = eqx.nn.MLP(4, 3, 6, 2, activation=jax.nn.relu, key=jr.key(7))
    before = [np.array(leaf) for leaf in jax.tree_util.tree_leaves(mlp)]
    linearity_merge(mlp, x, 0.5, layer_threshold=MoreLinearThan(0))
    linearity_to_size(mlp, x, 0.5)
    for old, new in zip(before, jax.tree_util.tree_leaves(mlp), strict=True):
        np.testing.assert_array_equal(old, new)


def test_non_relu_refused():
    mlp = eqx.nn.MLP(4, 3, 6, 2, activation=jax.nn.tanh, key=jr.key(8))
    x = np.ones((5, 4))
    with pytest.raises(TypeError, match="hidden layer 1.*tanh"):
        linearity_merge(mlp, x, 1.0)
    with pytest.raises(TypeError, match="tanh"):
        linearity_to_size(mlp, x, 0.5)


@pytest.mark.parametrize(
    "x, tau, options, error, match",
    [
        (np.full((5, 4), np.inf), 1.0, {}, ValueError, "x_calib"),
        (np.ones((5, 3)), 1.0, {}, ValueError, "x_calib"),
        (np.ones((0, 4)), 1.0, {}, ValueError, "x_calib"),
        (None, 1.0, {}, ValueError, "x_calib"),
        (np.ones((5, 4)), 1.5, {}, ValueError, "tau"),
        (np.ones((5, 4)), -0.1, {}, ValueError, "tau"),
        (np.ones((5, 4)), float("nan"), {}, ValueError, "tau"),
        (np.ones((5, 4)), "all", {}, TypeError, "tau"),
        (np.ones((5, 4)), 1.0, {"layer_threshold": "best"}, TypeError, "layer_threshold"),
        (np.ones((5, 4)), 1.0, {"layer_threshold": 0}, TypeError, "layer_threshold"),
        (np.ones((5, 4)), 1.0, {"layer_threshold": True}, TypeError, "layer_threshold"),
    ],
)
def test_bad_input(x, tau, options, error, match):
    w, b, _ = _planted_net()
    with pytest.raises(error, match=match):
        linearity_merge(_chain(w, b), x, tau, **options)


@pytest.mark.parametrize(
    "target, step, match",
    [
        (0.0, 0.1, "target_fraction"),
        (1.2, 0.1, "target_fraction"),
        (0.5, 0.0, "step"),
        (0.5, 1e-9, r"`step` must lie in \[0.0001, 1\].*at most 10000 values"),  # looped for days before
    ],
)
def test_bad_fixed_size_knobs(target, step, match):
    chain, x = _sizing_net()
    with pytest.raises(ValueError, match=match):
        linearity_to_size(chain, x, target, step=step)
    with pytest.raises(ValueError, match="`x`"):
        activation_rates(chain, np.ones((3, 5)))


def test_finite_input_that_overflows_is_reported_not_called_successful():
    """Huge but finite float32 weights: the skip product W^{l+1}[:, L] W^l[L] overflows, and so does the model's own
    forward pass. The result code names the first failure, the input model (it was hard-coded `successful`), and
    `throw=True` raises naming that stage."""
    w, b, x = _planted_net()
    big = DenseChain(
        tuple(jnp.asarray(m * 1e30, jnp.float32) for m in w),
        tuple(jnp.asarray(v, jnp.float32) for v in b),
        ("relu", "relu", "relu", "identity"),
        (True,) * 4,
    )
    assert all(bool(jnp.all(jnp.isfinite(m))) for m in big.weights)
    x = jnp.asarray(x, jnp.float32)
    with np.errstate(over="ignore"):
        _, info = linearity_merge(big, x, 1.0, layer_threshold=MoreLinearThan(0), throw=False)
    assert info.result == jaxlump.RESULTS.model_nonfinite
    with (
        pytest.raises(jaxlump.CompressionError, match="linearity_merge: Stage 'input model'"),
        np.errstate(over="ignore"),
    ):
        linearity_merge(big, x, 1.0, layer_threshold=MoreLinearThan(0))
    _, fine = linearity_merge(_chain(w, b), x, 1.0, layer_threshold=MoreLinearThan(0))
    assert fine.result == jaxlump.RESULTS.successful


def test_under_jit_the_need_for_concrete_values_is_said_once():
    w, b, x = _planted_net()
    with pytest.raises(TypeError, match=r"`jaxlump.baselines.linearity_merge` needs concrete values but `model`"):
        jax.jit(lambda c: linearity_merge(c, x, 1.0)[0].weights[0])(_chain(w, b))
