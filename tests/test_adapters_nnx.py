"""Flax NNX adapter: `nnx.Sequential` / `nnx.Linear` ↔ `DenseChain`, checked against NumPy forward passes."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from flax import nnx

from jaxlump._model import from_chain, to_chain
from jaxlump._model.flax_nnx import chain_to_nnx, nnx_build, nnx_describe
from jaxlump._model.network import DenseChain

NUMPY_ACTIVATIONS = {
    "tanh": np.tanh,
    "relu": lambda z: np.maximum(z, 0.0),
    "sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z)),
    "identity": lambda z: z,
}
NNX_ACTIVATIONS = {"tanh": nnx.tanh, "relu": jax.nn.relu, "sigmoid": nnx.sigmoid}


def _sequential(widths, activation, *, dtype=jnp.float64, use_bias=None, seed=0):
    use_bias = use_bias or [True] * (len(widths) - 1)
    layers = []
    for l, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nnx.Linear(n_in, n_out, use_bias=use_bias[l], param_dtype=dtype, rngs=nnx.Rngs(seed + l)))
        if l < len(widths) - 2:
            layers.append(activation)
    model = nnx.Sequential(*layers)
    # Non-zero biases, so a transposed or dropped bias cannot go unnoticed.
    for l, layer in enumerate(model.layers[::2]):
        if layer.use_bias:
            layer.bias[...] = jr.normal(jr.key(100 + l), layer.bias[...].shape, dtype)
    return model


def _numpy_forward(model, x, activation):
    a = np.asarray(x, np.float64)
    linears = [layer for layer in model.layers if isinstance(layer, nnx.Linear)]
    for l, layer in enumerate(linears):
        a = a @ np.asarray(layer.kernel[...], np.float64)
        a = a + (np.asarray(layer.bias[...], np.float64) if layer.use_bias else 0.0)
        a = NUMPY_ACTIVATIONS[activation](a) if l < len(linears) - 1 else a
    return a


def _params(model):
    return [np.array(leaf) for leaf in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param))]


@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid"])
def test_round_trip_is_exact(activation):
    model = _sequential([3, 8, 6, 2], NNX_ACTIVATIONS[activation])
    x = jr.normal(jr.key(1), (11, 3), jnp.float64)
    chain = to_chain(model)
    assert chain.widths == (3, 8, 6, 2)
    assert chain.activations == (activation, activation, "identity")
    np.testing.assert_allclose(np.asarray(chain(x)), _numpy_forward(model, x, activation), rtol=1e-12, atol=1e-12)
    rebuilt = from_chain(chain, like=model)
    assert isinstance(rebuilt, nnx.Sequential) and rebuilt is not model
    assert float(jnp.max(jnp.abs(rebuilt(x) - model(x)))) == 0.0
    for old, new in zip(_params(model), _params(rebuilt), strict=True):
        assert old.dtype == new.dtype and np.array_equal(old, new)


def test_kernel_is_transposed_weight():
    model = _sequential([4, 5, 3], nnx.tanh)
    chain = to_chain(model)
    for layer, weight, bias in zip(model.layers[::2], chain.weights, chain.biases, strict=True):
        assert weight.shape == (layer.out_features, layer.in_features)
        assert np.array_equal(weight, layer.kernel[...].T) and np.array_equal(bias, layer.bias[...])


def test_linear_alone_round_trips():
    linear = nnx.Linear(4, 3, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    chain = to_chain(linear)
    assert chain.widths == (4, 3) and chain.activations == ("identity",)
    rebuilt = from_chain(chain, like=linear)
    x = jr.normal(jr.key(2), (5, 4), jnp.float64)
    assert isinstance(rebuilt, nnx.Linear) and rebuilt is not linear
    assert np.array_equal(rebuilt(x), linear(x))
    np.testing.assert_allclose(np.asarray(chain(x)), np.asarray(x) @ np.asarray(linear.kernel[...]), atol=1e-12)


def test_use_bias_false_round_trips():
    model = _sequential([3, 5, 2], nnx.tanh, use_bias=[False, True])
    chain = to_chain(model)
    assert chain.use_bias == (False, True) and not np.any(chain.biases[0])
    rebuilt = from_chain(chain, like=model)
    assert rebuilt.layers[0].bias is None and not rebuilt.layers[0].use_bias and rebuilt.layers[2].use_bias
    x = jr.normal(jr.key(3), (4, 3), jnp.float64)
    assert np.array_equal(rebuilt(x), model(x))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_dtype_preserved(dtype):
    model = _sequential([3, 4, 2], nnx.relu, dtype=dtype)
    rebuilt = from_chain(to_chain(model), like=model)
    assert {leaf.dtype for leaf in _params(rebuilt)} == {np.dtype(dtype)}


def test_rebuilt_layers_keep_their_computation_settings():
    model = nnx.Sequential(
        nnx.Linear(3, 4, precision=jax.lax.Precision.HIGHEST, dtype=jnp.float32, rngs=nnx.Rngs(0)),
        nnx.tanh,
        nnx.Linear(4, 2, precision=jax.lax.Precision.HIGH, rngs=nnx.Rngs(1)),
    )
    rebuilt = from_chain(to_chain(model), like=model)
    assert [layer.precision for layer in rebuilt.layers[::2]] == [jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGH]
    assert rebuilt.layers[0].dtype == jnp.float32


def test_smaller_chain_rebuilds_with_new_widths_and_like_unchanged():
    model = _sequential([3, 8, 6, 2], nnx.tanh, use_bias=[True, False, True])
    before = _params(model)
    chain = to_chain(model)
    keep = (np.array([0, 2, 5]), np.array([1, 4]))  # surviving neurons of the two hidden layers
    weights = (
        chain.weights[0][keep[0]],
        chain.weights[1][keep[1]][:, keep[0]],
        chain.weights[2][:, keep[1]],
    )
    biases = (chain.biases[0][keep[0]], chain.biases[1][keep[1]], chain.biases[2])
    small = DenseChain(weights, biases, chain.activations, chain.use_bias)
    rebuilt = from_chain(small, like=model)
    assert [(layer.in_features, layer.out_features) for layer in rebuilt.layers[::2]] == [(3, 3), (3, 2), (2, 2)]
    assert [layer.kernel[...].shape for layer in rebuilt.layers[::2]] == [(3, 3), (3, 2), (2, 2)]
    assert rebuilt.layers[2].bias is None
    x = jr.normal(jr.key(4), (9, 3), jnp.float64)
    np.testing.assert_allclose(np.asarray(rebuilt(x)), np.asarray(small(x)), rtol=1e-13, atol=1e-13)
    assert rebuilt.layers[1] is model.layers[1]  # the user's own activation function is kept
    # `like` is untouched: same widths, same values.
    assert [(layer.in_features, layer.out_features) for layer in model.layers[::2]] == [(3, 8), (8, 6), (6, 2)]
    for old, now in zip(before, _params(model), strict=True):
        assert np.array_equal(old, now)


def test_rebuilt_model_is_a_working_nnx_module():
    model = _sequential([3, 6, 2], nnx.tanh)
    rebuilt = from_chain(to_chain(model), like=model)
    x = jr.normal(jr.key(5), (7, 3), jnp.float64)

    @nnx.jit
    def loss(m):
        return jnp.sum(m(x) ** 2)

    grads = nnx.grad(loss)(rebuilt)
    assert grads.layers[0].kernel[...].shape == (3, 6)
    assert np.isclose(float(loss(rebuilt)), float(jnp.sum(model(x) ** 2)), rtol=1e-14)


@pytest.mark.parametrize(
    "bad_layer, name",
    [
        (lambda: nnx.Dropout(0.1, rngs=nnx.Rngs(0)), "Dropout"),
        (lambda: nnx.LayerNorm(4, rngs=nnx.Rngs(0)), "LayerNorm"),
        # A learnable activation: PReLU's default slope would otherwise pass for leaky_relu.
        (lambda: nnx.PReLU(), "PReLU"),
    ],
)
def test_unsupported_layer_refused(bad_layer, name):
    model = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), bad_layer(), nnx.Linear(4, 2, rngs=nnx.Rngs(1)))
    with pytest.raises(TypeError, match=rf"layers\[1\]: layer type {name} is not supported.*flax\.nnx\.Linear"):
        to_chain(model)


def test_unsupported_activation_and_misplaced_activation_refused():
    mish = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), jax.nn.mish, nnx.Linear(4, 2, rngs=nnx.Rngs(1)))
    with pytest.raises(TypeError, match=r"layers\[1\].*not supported.*tanh"):
        to_chain(mish)
    leading = nnx.Sequential(nnx.tanh, nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
    with pytest.raises(TypeError, match=r"layers\[0\].*must directly follow"):
        to_chain(leading)
    with pytest.raises(TypeError, match="BatchNorm is not supported"):
        to_chain(nnx.BatchNorm(3, rngs=nnx.Rngs(0)))


def test_nonfinite_weights_refused():
    model = _sequential([3, 4, 2], nnx.tanh)
    model.layers[2].kernel[...] = model.layers[2].kernel[...].at[0, 1].set(jnp.nan)
    with pytest.raises(ValueError, match="layer 1 weight.*NaN"):
        to_chain(model)


def test_chain_that_does_not_fit_like_refused():
    model = _sequential([3, 4, 2], nnx.tanh)
    chain = to_chain(model)
    with pytest.raises(ValueError, match="2 flax.nnx.Linear layers"):
        chain_to_nnx(DenseChain(chain.weights[:1], chain.biases[:1], ("identity",), (True,)), like=model)
    relu_chain = DenseChain(chain.weights, chain.biases, ("relu", "identity"), chain.use_bias)
    with pytest.raises(ValueError, match="activations"):
        chain_to_nnx(relu_chain, like=model)


def test_describe_and_build_invert_each_other():
    model = _sequential([3, 5, 4, 2], jax.nn.relu, use_bias=[True, False, True])
    options = nnx_describe(model)
    assert options == {"layout": ["linear", "relu", "linear", "relu", "linear"]}
    chain = to_chain(model)
    rebuilt = nnx_build(options, chain)
    rebuilt_chain = to_chain(rebuilt)
    assert (rebuilt_chain.widths, rebuilt_chain.activations, rebuilt_chain.use_bias) == (
        chain.widths,
        chain.activations,
        chain.use_bias,
    )
    x = jr.normal(jr.key(6), (4, 3), jnp.float64)
    assert isinstance(rebuilt, nnx.Sequential) and np.array_equal(rebuilt(x), model(x))
    linear = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    assert nnx_describe(linear) == {"layout": None}
    assert isinstance(nnx_build({"layout": None}, to_chain(linear)), nnx.Linear)


def test_nnx_activations_are_recognised_by_identity():
    import functools

    from jaxlump import Activation

    leaky = functools.partial(nnx.leaky_relu, negative_slope=0.2)
    model = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), leaky, nnx.Linear(4, 2, rngs=nnx.Rngs(1)))
    assert to_chain(model).activations == ("leaky_relu(negative_slope=0.2)", "identity")
    for look_alike in (nnx.relu6, lambda x: jnp.clip(x, -5, 5), nnx.hard_tanh):
        bad = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), look_alike, nnx.Linear(4, 2, rngs=nnx.Rngs(1)))
        with pytest.raises(TypeError, match=r"layers\[1\].*not supported.*jaxlump\.Activation"):
            to_chain(bad)
    relu6 = Activation("relu6_nnx", nnx.relu6, lambda z: ((z > 0) & (z < 6)).astype(z.dtype), 1.0, kinked=True)
    declared = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), relu6, nnx.Linear(4, 2, rngs=nnx.Rngs(1)))
    x = 5.0 * jr.normal(jr.key(0), (8, 3))
    chain = to_chain(declared)
    assert chain.activations == ("relu6_nnx", "identity")
    np.testing.assert_allclose(np.asarray(chain(x)), np.asarray(declared(x)), rtol=1e-6, atol=1e-6)


def test_nnx_half_precision_round_trips_in_its_dtype():
    model = _sequential([3, 6, 2], nnx.tanh, dtype=jnp.bfloat16)
    chain = to_chain(model)
    assert {w.dtype for w in chain.weights} == {jnp.dtype(jnp.float32)}
    rebuilt = from_chain(chain, like=model)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(nnx.state(rebuilt, nnx.Param))} == {
        jnp.dtype(jnp.bfloat16)
    }
    x = jr.normal(jr.key(1), (4, 3)).astype(jnp.bfloat16)
    assert np.array_equal(np.asarray(rebuilt(x), np.float32), np.asarray(model(x), np.float32))
