"""Equinox adapters: `eqx.nn.MLP`, `eqx.nn.Sequential`, `LumpedMLP` ↔ `DenseChain`, and their refusals."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxlump import Activation
from jaxlump._model import LumpedMLP, from_chain, to_chain
from jaxlump._model.activations import ACTIVATIONS, identify_activation
from jaxlump._model.network import (
    DenseChain,  # One function per supported activation, as a user would write it (not the table's own functions).
)

USER_ACTIVATIONS = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "identity": eqx.nn.Identity(),
    "leaky_relu": jax.nn.leaky_relu,
    "softplus": jax.nn.softplus,
    "silu": jax.nn.silu,
}
activation_names = st.sampled_from(sorted(USER_ACTIVATIONS))


def _outputs(model, x):
    return np.asarray(jax.vmap(model)(x))


def _arrays(model):
    return jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array))


def _assert_same_arrays(a, b):
    leaves_a, leaves_b = _arrays(a), _arrays(b)
    assert len(leaves_a) == len(leaves_b)
    for u, v in zip(leaves_a, leaves_b, strict=True):
        assert u.shape == v.shape and u.dtype == v.dtype and np.array_equal(u, v)


def _keep_neurons(chain: DenseChain, keep) -> DenseChain:
    """The chain restricted to hidden neurons `keep[l]` of each hidden layer."""
    rows = [*keep, np.arange(chain.widths[-1])]
    cols = [np.arange(chain.widths[0]), *keep]
    weights = tuple(w[r][:, c] for w, r, c in zip(chain.weights, rows, cols, strict=True))
    biases = tuple(b[r] for b, r in zip(chain.biases, rows, strict=True))
    return DenseChain(weights, biases, chain.activations, chain.use_bias)


@settings(max_examples=10)
@given(
    sizes=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4)),
    depth=st.integers(0, 3),
    activation=activation_names,
    final_activation=activation_names,
    biases=st.tuples(st.booleans(), st.booleans()),
    scan=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_mlp_round_trip(sizes, depth, activation, final_activation, biases, scan, seed):
    scan = scan and depth != 1  # scan=True with depth=1: see test_scan_mlp_of_depth_one_round_trips
    final_activation = final_activation if depth > 0 else "identity"  # see test_depth_zero_mlp_activation
    in_size, out_size, width = sizes
    mlp = eqx.nn.MLP(
        in_size,
        out_size,
        width,
        depth,
        activation=USER_ACTIVATIONS[activation],
        final_activation=USER_ACTIVATIONS[final_activation],
        use_bias=biases[0],
        use_final_bias=biases[1],
        scan=scan,
        key=jr.key(seed),
    )
    x = jr.normal(jr.key(seed + 1), (5, in_size))
    chain = to_chain(mlp)
    assert chain.widths == (in_size,) + (width,) * depth + (out_size,)
    assert chain.activations == (activation,) * depth + (final_activation,)
    assert chain.use_bias == (biases[0],) * depth + (biases[1],)
    np.testing.assert_allclose(np.asarray(chain(x)), _outputs(mlp, x), rtol=1e-12, atol=1e-12)
    rebuilt = from_chain(chain, like=mlp)
    assert type(rebuilt) is LumpedMLP  # one result type for an eqx.nn.MLP, whatever the widths
    assert (rebuilt.in_size, rebuilt.out_size, rebuilt.width_size, rebuilt.depth) == (
        in_size,
        out_size,
        (width,) * depth,
        depth,
    )
    assert [layer.use_bias for layer in rebuilt.layers] == list(chain.use_bias)
    _assert_same_arrays(to_chain(rebuilt), chain)
    if scan:  # lax.scan may round differently from the unrolled layers
        np.testing.assert_allclose(_outputs(rebuilt, x), _outputs(mlp, x), rtol=1e-13, atol=1e-13)
    else:
        assert np.array_equal(_outputs(rebuilt, x), _outputs(mlp, x))


def test_scan_mlp_of_depth_one_round_trips():
    mlp = eqx.nn.MLP(3, 2, 5, 1, activation=jnp.tanh, scan=True, key=jr.key(0))
    x = jr.normal(jr.key(1), (4, 3))
    chain = to_chain(mlp)
    assert chain.widths == (3, 5, 2)
    assert np.array_equal(_outputs(from_chain(chain, like=mlp), x), _outputs(mlp, x))


def test_depth_zero_mlp_activation():
    mlp = eqx.nn.MLP(2, 1, 3, 0, final_activation=jnp.tanh, key=jr.key(0))
    x = jnp.asarray([[2.0, -1.0], [0.5, 3.0]])
    np.testing.assert_allclose(np.asarray(to_chain(mlp)(x)), _outputs(mlp, x), rtol=1e-12)


layer_spec = st.tuples(st.integers(1, 4), st.sampled_from(["lambda", "identity", "none"]), activation_names)


@settings(max_examples=10)
@given(n_in=st.integers(1, 3), layers=st.lists(layer_spec, min_size=1, max_size=3), seed=st.integers(0, 2**16))
def test_sequential_round_trip(n_in, layers, seed):
    modules, expected, widths = [], [], [n_in]
    for l, (n_out, wrapper, name) in enumerate(layers):
        modules.append(eqx.nn.Linear(widths[-1], n_out, use_bias=l % 2 == 0, key=jr.fold_in(jr.key(seed), l)))
        widths.append(n_out)
        if wrapper == "lambda":
            modules.append(eqx.nn.Lambda(USER_ACTIVATIONS[name]))
        elif wrapper == "identity":
            modules.append(eqx.nn.Identity())
        expected.append(name if wrapper == "lambda" else "identity")
    seq = eqx.nn.Sequential(modules)
    x = jr.normal(jr.key(seed + 1), (5, n_in))
    chain = to_chain(seq)
    assert chain.widths == tuple(widths) and chain.activations == tuple(expected)
    assert chain.use_bias == tuple(l % 2 == 0 for l in range(len(layers)))
    np.testing.assert_allclose(np.asarray(chain(x)), _outputs(seq, x), rtol=1e-12, atol=1e-12)
    rebuilt = from_chain(chain, like=seq)
    assert isinstance(rebuilt, eqx.nn.Sequential)
    assert [type(m) for m in rebuilt.layers] == [type(m) for m in seq.layers]
    _assert_same_arrays(rebuilt, seq)
    assert np.array_equal(_outputs(rebuilt, x), _outputs(seq, x))


def _lumped() -> LumpedMLP:
    keys = jr.split(jr.key(0), 3)
    layers = [eqx.nn.Linear(3, 6, key=keys[0]), eqx.nn.Linear(6, 4, key=keys[1]), eqx.nn.Linear(4, 2, key=keys[2])]
    return LumpedMLP(layers, jax.nn.sigmoid)


def test_lumped_round_trip():
    model = _lumped()
    x = jr.normal(jr.key(1), (5, 3))
    chain = to_chain(model)
    assert chain.widths == (3, 6, 4, 2) == model.widths
    assert chain.activations == ("sigmoid", "sigmoid", "identity")
    # Independent reference: the forward pass written out in NumPy.
    a = np.asarray(x)
    for l, layer in enumerate(model.layers):
        a = a @ np.asarray(layer.weight).T + np.asarray(layer.bias)
        a = 1 / (1 + np.exp(-a)) if l < 2 else a
    np.testing.assert_allclose(np.asarray(chain(x)), a, rtol=1e-12, atol=1e-12)
    rebuilt = from_chain(chain, like=model)
    assert isinstance(rebuilt, LumpedMLP) and rebuilt.widths == model.widths
    _assert_same_arrays(rebuilt, model)
    assert np.array_equal(_outputs(rebuilt, x), _outputs(model, x))


@pytest.mark.parametrize("scan", [False, True])
def test_smaller_equal_widths_give_a_lumped_mlp_too(scan):
    mlp = eqx.nn.MLP(3, 2, 8, 3, activation=jnp.tanh, scan=scan, key=jr.key(2))
    before = [np.array(a) for a in _arrays(mlp)]
    small = _keep_neurons(to_chain(mlp), [np.array([0, 3, 5]), np.array([1, 2, 7]), np.array([0, 4, 6])])
    rebuilt = from_chain(small, like=mlp)
    assert type(rebuilt) is LumpedMLP
    assert (rebuilt.width_size, rebuilt.depth, rebuilt.in_size, rebuilt.out_size) == ((3, 3, 3), 3, 3, 2)
    assert to_chain(rebuilt).widths == (3, 3, 3, 3, 2)
    x = jr.normal(jr.key(3), (6, 3))
    np.testing.assert_allclose(_outputs(rebuilt, x), np.asarray(small(x)), rtol=1e-13, atol=1e-13)
    assert all(np.array_equal(a, b) for a, b in zip(before, _arrays(mlp), strict=True))  # `like` unchanged


def test_unequal_widths_give_a_lumped_mlp():
    mlp = eqx.nn.MLP(3, 2, 8, 2, activation=jax.nn.relu, final_activation=jnp.tanh, key=jr.key(4))
    small = _keep_neurons(to_chain(mlp), [np.array([0, 1, 2, 6, 7]), np.array([3, 4])])
    rebuilt = from_chain(small, like=mlp)
    assert isinstance(rebuilt, LumpedMLP) and rebuilt.widths == (3, 5, 2, 2)
    assert to_chain(rebuilt).activations == ("relu", "relu", "tanh")
    x = jr.normal(jr.key(5), (6, 3))
    np.testing.assert_allclose(_outputs(rebuilt, x), np.asarray(small(x)), rtol=1e-13, atol=1e-13)


def test_layers_without_bias_round_trip():
    mlp = eqx.nn.MLP(3, 2, 4, 2, use_bias=False, use_final_bias=False, key=jr.key(6))
    chain = to_chain(mlp)
    assert chain.use_bias == (False, False, False)
    assert all(b.shape == (w.shape[0],) and not np.any(b) for w, b in zip(chain.weights, chain.biases, strict=True))
    rebuilt = from_chain(chain, like=mlp)
    assert all(layer.bias is None and not layer.use_bias for layer in rebuilt.layers)
    x = jr.normal(jr.key(7), (3, 3))
    assert np.array_equal(_outputs(rebuilt, x), _outputs(mlp, x))


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: eqx.nn.Dropout(0.5), "Dropout"),
        (lambda: eqx.nn.LayerNorm(4), "LayerNorm"),
        (lambda: eqx.nn.Conv1d(4, 4, 1, key=jr.key(0)), "Conv1d"),
        (lambda: eqx.nn.PReLU(), "PReLU"),
    ],
)
def test_unsupported_sequential_layer_named(make, name):
    seq = eqx.nn.Sequential([eqx.nn.Linear(3, 4, key=jr.key(1)), make(), eqx.nn.Linear(4, 2, key=jr.key(2))])
    with pytest.raises(TypeError, match=rf"layers\[1\]: layer type {name} is not supported.*eqx\.nn\.Linear"):
        to_chain(seq)


def test_unsupported_models_and_structure_refused():
    with pytest.raises(TypeError, match="`model` of type Conv1d is not supported; supported: eqx.nn.MLP"):
        to_chain(eqx.nn.Conv1d(1, 1, 3, key=jr.key(0)))
    with pytest.raises(TypeError, match="`like` of type Conv1d is not supported"):
        from_chain(to_chain(_lumped()), like=eqx.nn.Conv1d(1, 1, 3, key=jr.key(0)))
    leading = eqx.nn.Sequential([eqx.nn.Lambda(jnp.tanh), eqx.nn.Linear(3, 2, key=jr.key(0))])
    with pytest.raises(TypeError, match=r"layers\[0\]: an activation must directly follow"):
        to_chain(leading)
    with pytest.raises(TypeError, match="contains no eqx.nn.Linear"):
        to_chain(eqx.nn.Sequential([]))
    with pytest.raises(TypeError, match="'scalar' is not supported"):
        to_chain(eqx.nn.MLP("scalar", 2, 4, 1, key=jr.key(0)))


def test_unsupported_and_learnable_activations_named():
    mish_mlp = eqx.nn.MLP(3, 2, 4, 1, activation=jax.nn.mish, key=jr.key(0))
    with pytest.raises(
        TypeError, match=r"eqx\.nn\.MLP\.activation: activation 'mish' is not supported.*tanh.*Activation"
    ):
        to_chain(mish_mlp)
    mish_seq = eqx.nn.Sequential([eqx.nn.Linear(3, 4, key=jr.key(1)), eqx.nn.Lambda(jax.nn.mish)])
    with pytest.raises(TypeError, match=r"layers\[1\]: activation 'mish' is not supported"):
        to_chain(mish_seq)
    prelu_mlp = eqx.nn.MLP(3, 2, 4, 1, activation=eqx.nn.PReLU(), key=jr.key(2))
    with pytest.raises(TypeError, match=r"eqx\.nn\.MLP\.activation: learnable activation PReLU is not supported"):
        to_chain(prelu_mlp)
    prelu_final = LumpedMLP(_lumped().layers, jnp.tanh, eqx.nn.PReLU())
    with pytest.raises(TypeError, match=r"LumpedMLP\.final_activation: learnable activation PReLU"):
        to_chain(prelu_final)


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf, -jnp.inf])
def test_nonfinite_parameters_named(bad):
    mlp = eqx.nn.MLP(3, 2, 4, 2, key=jr.key(0))
    bad_weight = eqx.tree_at(lambda m: m.layers[1].weight, mlp, mlp.layers[1].weight.at[2, 0].set(bad))
    with pytest.raises(ValueError, match=r"`model layer 1 weight` contains 1 NaN or inf"):
        to_chain(bad_weight)
    bad_bias = eqx.tree_at(lambda m: m.layers[2].bias, mlp, mlp.layers[2].bias.at[0].set(bad))
    with pytest.raises(ValueError, match=r"`model layer 2 bias` contains 1 NaN or inf"):
        to_chain(bad_bias)


# --- Activations are recognised by identity; probing only confirms a declaration -------------------------------


@pytest.mark.parametrize(
    "look_alike",
    [jax.nn.relu6, lambda x: jnp.clip(x, -5, 5), lambda x: x, lambda x: jnp.tanh(x), jax.nn.hard_tanh],
    ids=["relu6", "clip5", "lambda-identity", "lambda-tanh", "hard_tanh"],
)
def test_look_alike_activations_are_refused_with_how_to_declare(look_alike):
    """relu6 equals relu and clip(±5) equals the identity on the old probe grid [−4, 4]: values cannot decide."""
    for model in (
        eqx.nn.MLP(2, 1, 3, 1, activation=look_alike, key=jr.key(0)),
        eqx.nn.Sequential([eqx.nn.Linear(2, 3, key=jr.key(0)), eqx.nn.Lambda(look_alike)]),
    ):
        with pytest.raises(TypeError, match=r"is not supported.*by what they are.*jaxlump\.Activation\("):
            to_chain(model)


@pytest.mark.parametrize(
    ("fn", "name"),
    [
        (jnp.tanh, "tanh"),
        (jax.nn.tanh, "tanh"),
        (jax.lax.tanh, "tanh"),
        (jax.nn.sigmoid, "sigmoid"),
        (jax.lax.logistic, "sigmoid"),
        (jax.nn.swish, "silu"),
        (eqx.nn.Identity(), "identity"),
        (eqx.nn.Lambda(jax.nn.relu), "relu"),
        (functools.partial(jax.nn.softplus), "softplus"),
        (functools.partial(jax.nn.leaky_relu, negative_slope=0.01), "leaky_relu"),
        (functools.partial(jax.nn.leaky_relu, negative_slope=0.2), "leaky_relu(negative_slope=0.2)"),
    ],
)
def test_known_functions_and_wrappers_are_recognised(fn, name):
    assert identify_activation(fn, "here") == name


def test_a_leaky_relu_partial_keeps_its_slope():
    slope = 0.2
    mlp = eqx.nn.MLP(2, 1, 5, 1, activation=functools.partial(jax.nn.leaky_relu, negative_slope=slope),
                     key=jr.key(3))  # fmt: skip
    chain = to_chain(mlp)
    x = 3.0 * jr.normal(jr.key(4), (8, 2))
    z = np.asarray(x) @ np.asarray(mlp.layers[0].weight).T + np.asarray(mlp.layers[0].bias)
    reference = np.where(z > 0, z, slope * z) @ np.asarray(mlp.layers[1].weight).T + np.asarray(mlp.layers[1].bias)
    np.testing.assert_allclose(np.asarray(chain(x)), reference, rtol=1e-12, atol=1e-12)
    assert ACTIVATIONS[chain.activations[0]].lipschitz == 1.0
    with pytest.raises(TypeError, match="negative_slope must be a finite Python number"):
        identify_activation(functools.partial(jax.nn.leaky_relu, negative_slope=jnp.asarray(0.2)), "here")
    with pytest.raises(TypeError, match="only functools.partial"):
        identify_activation(functools.partial(jax.nn.silu, beta=0.5), "here")


def _relu6() -> Activation:
    return Activation("relu6", jax.nn.relu6, lambda z: ((z > 0) & (z < 6)).astype(z.dtype), 1.0, kinked=True)


def test_a_declared_activation_is_used_as_declared():
    relu6 = _relu6()
    mlp = eqx.nn.MLP(2, 1, 6, 2, activation=relu6, key=jr.key(5))
    chain = to_chain(mlp)
    assert chain.activations == ("relu6", "relu6", "identity")
    x = 6.0 * jr.normal(jr.key(6), (16, 2))
    np.testing.assert_allclose(np.asarray(chain(x)), _outputs(mlp, x), rtol=1e-12, atol=1e-12)
    rebuilt = from_chain(chain, like=mlp)
    assert rebuilt.activation is relu6


def test_declarations_are_confirmed_by_probing():
    with pytest.raises(ValueError, match="declared `derivative`.*derivative of `fn`"):
        Activation("bad_derivative", jax.nn.relu6, lambda z: (z > 0).astype(z.dtype), 1.0)
    with pytest.raises(ValueError, match="`lipschitz` = 0.5 is below"):
        Activation("bad_lipschitz", jnp.tanh, lambda z: 1 - jnp.tanh(z) ** 2, 0.5)
    with pytest.raises(ValueError, match="built in"):
        Activation("tanh", jnp.tanh, lambda z: 1 - jnp.tanh(z) ** 2, 1.0)
    with pytest.raises(ValueError, match="identifier"):
        Activation("relu 6", jax.nn.relu6, lambda z: ((z > 0) & (z < 6)).astype(z.dtype), 1.0)


def test_a_stale_declaration_is_refused():
    old = _relu6()
    mlp = eqx.nn.MLP(2, 1, 3, 1, activation=old, key=jr.key(0))
    _relu6()  # declared again: the name now means the new declaration
    with pytest.raises(TypeError, match="declared again since"):
        to_chain(mlp)


# --- Fidelity against the model itself, stable result types, half precision ---------------------------------------


class _ResidualMLP(eqx.nn.MLP):
    """An `eqx.nn.MLP` subclass whose call adds a residual: not the chain its layers describe."""

    def __call__(self, x, *, key=None):
        return super().__call__(x) + jnp.sum(x)


def test_a_model_that_is_not_its_chain_is_refused():
    model = _ResidualMLP(3, 2, 4, 1, key=jr.key(0))
    with pytest.raises(ValueError, match=r"`model` \(eqx.nn.MLP\): jaxlump's reading of it does not reproduce"):
        to_chain(model)


@pytest.mark.integration  # heavy (10–16 s on 2 cores, large compiles): the second test step keeps step 1 near 10 min
def test_result_types_do_not_depend_on_the_widths():
    """`from_chain` returns one type per input kind; so does `lump`, at every ε."""
    import jaxlump

    mlp = eqx.nn.MLP(3, 2, 6, 2, activation=jnp.tanh, key=jr.key(1))
    x = jr.normal(jr.key(2), (32, 3))
    chain = to_chain(mlp)
    small = _keep_neurons(chain, [np.array([0, 1, 2]), np.array([3, 4])])
    assert type(from_chain(chain, like=mlp)) is type(from_chain(small, like=mlp)) is LumpedMLP
    results = [jaxlump.lump(mlp, x, eps, reconstruct=False)[0] for eps in (0.0, 1e9)]  # nothing merges / all merge
    assert {type(r) for r in results} == {LumpedMLP}
    assert results[0].width_size == (6, 6) and results[-1].width_size == (1, 1)
    seq = eqx.nn.Sequential([eqx.nn.Linear(3, 6, key=jr.key(3)), eqx.nn.Lambda(jnp.tanh),
                             eqx.nn.Linear(6, 2, key=jr.key(4))])  # fmt: skip
    assert type(jaxlump.lump(seq, x, 0.0, reconstruct=False)[0]) is eqx.nn.Sequential


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_is_read_in_float32_and_rebuilt_in_its_dtype(dtype):
    mlp = eqx.nn.MLP(3, 2, 8, 2, activation=jnp.tanh, dtype=dtype, key=jr.key(5))
    chain = to_chain(mlp)
    assert {w.dtype for w in chain.weights + chain.biases} == {jnp.dtype(jnp.float32)}
    rebuilt = from_chain(chain, like=mlp)
    assert {a.dtype for a in _arrays(rebuilt)} == {jnp.dtype(dtype)}
    assert all(np.array_equal(a, b) for a, b in zip(_arrays(rebuilt), _arrays(mlp), strict=True))


@pytest.mark.integration  # heavy (10–16 s on 2 cores, large compiles): the second test step keeps step 1 near 10 min
def test_a_bfloat16_model_and_data_are_lumped_and_returned_in_bfloat16():
    """The least-squares refit has no 16-bit LAPACK kernels: it runs on the float32 chain."""
    import jaxlump

    mlp = eqx.nn.MLP(3, 2, 8, 2, activation=jnp.tanh, dtype=jnp.bfloat16, key=jr.key(5))
    x = jr.normal(jr.key(6), (64, 3)).astype(jnp.bfloat16)
    lumped, info = jaxlump.lump(mlp, x, 0.3)
    assert type(lumped) is LumpedMLP and {a.dtype for a in _arrays(lumped)} == {jnp.dtype(jnp.bfloat16)}
    assert info.result == jaxlump.RESULTS.successful
    assert _outputs(lumped, x).dtype == jnp.dtype(jnp.bfloat16)


def test_from_chain_refuses_a_chain_its_template_cannot_hold():
    """A chain whose activations differ from `like`'s: rebuilding would silently compute another function."""
    mlp = eqx.nn.MLP(3, 2, 4, 1, activation=jnp.tanh, key=jr.key(0))
    seq = eqx.nn.Sequential(
        [eqx.nn.Linear(3, 4, key=jr.key(0)), eqx.nn.Lambda(jnp.tanh), eqx.nn.Linear(4, 2, key=jr.key(1))]
    )
    for like in (mlp, seq):
        chain = to_chain(like)
        relu_chain = DenseChain(chain.weights, chain.biases, ("relu", "identity"), chain.use_bias)
        with pytest.raises(ValueError, match=r"`like` \(.*\): the rebuilt model does not reproduce the chain"):
            from_chain(relu_chain, like=like)
