"""`SkipMLP` against a NumPy forward pass with skips; its cost counts the skip matrices."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jaxlump
import jaxlump.baselines
from jaxlump._model.network import DenseChain
from jaxlump._model.skip_mlp import SkipMLP
from jaxlump._results.accounting import chain_cost, cost, measure_latency

NUMPY_ACTS = {"relu": lambda z: np.maximum(z, 0), "tanh": np.tanh, "identity": lambda z: z}


def _random(key, shape):
    return np.array(jr.normal(key, shape), dtype=np.float64)


def _numpy_forward(weights, biases, activations, skips, sources, x):
    acts = [x]
    for w, b, act, s, src in zip(weights, biases, activations, skips, sources, strict=True):
        z = acts[-1] @ w.T + b
        if s is not None:
            z = z + np.concatenate([acts[k] for k in src], axis=-1) @ s.T
        acts.append(NUMPY_ACTS[act](z))
    return acts[-1]


def _skip_net(widths, skip_sources, activations, key, *, zero_skip_entries=0):
    keys = jr.split(key, 3 * len(widths))
    n = len(widths) - 1
    weights = [_random(keys[j], (widths[j + 1], widths[j])) for j in range(n)]
    biases = [_random(keys[n + j], (widths[j + 1],)) for j in range(n)]
    skips = []
    for j, src in enumerate(skip_sources):
        if not src:
            skips.append(None)
            continue
        s = _random(keys[2 * n + j], (widths[j + 1], sum(widths[k] for k in src)))
        s.flat[:zero_skip_entries] = 0.0
        skips.append(s)
    return weights, biases, list(activations), skips, [tuple(s) for s in skip_sources]


def test_forward_equals_numpy_with_chained_skips():
    # 3 -> 4 -> 5 -> 6 -> 2; layer 2 reads [x] by skip, layer 3 reads [a^1; x] (current input first, then older).
    parts = _skip_net((3, 4, 5, 6, 2), [(), (), (0,), (1, 0)], ("relu", "tanh", "relu", "identity"), jr.key(0))
    model = SkipMLP(*parts[:3], (True,) * 4, skips=parts[3], skip_sources=parts[4])
    x = _random(jr.key(1), (7, 3))
    expected = _numpy_forward(*parts, x)
    np.testing.assert_allclose(model(jnp.asarray(x)), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(jax.vmap(model)(jnp.asarray(x)), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(model(jnp.asarray(x[0])), expected[0], rtol=1e-12, atol=1e-12)
    # The skips matter: dropping them changes the output.
    assert not np.allclose(_numpy_forward(*parts[:3], [None] * 4, [()] * 4, x), expected)


def test_zero_width_layer_carried_by_skip():
    # The hidden layer of width 0 has disappeared: z^2 = S [x] + b.
    parts = _skip_net((3, 0, 4, 2), [(), (0,), ()], ("relu", "relu", "identity"), jr.key(2))
    model = SkipMLP(*parts[:3], (True,) * 3, skips=parts[3], skip_sources=parts[4])
    x = _random(jr.key(3), (5, 3))
    expected = _numpy_forward(*parts, x)
    np.testing.assert_allclose(model(jnp.asarray(x)), expected, rtol=1e-12, atol=1e-12)
    assert model.widths == (3, 0, 4, 2)
    assert int(model.cost().dense_params) == 0 + 0 + 4 * 0 + 4 + 4 * 3 + 2 * 4 + 2


def test_cost_counts_skips_and_nonzeros():
    parts = _skip_net((3, 4, 5, 2), [(), (0,), (1, 0)], ("relu", "relu", "identity"), jr.key(4), zero_skip_entries=3)
    model = SkipMLP(*parts[:3], (True, False, True), skips=parts[3], skip_sources=parts[4])
    chain_params = 3 * 4 + 4 + 4 * 5 + 5 * 2 + 2  # layer 1 has no bias
    skip_sizes = 5 * 3 + 2 * (4 + 3)
    c = model.cost()
    assert int(c.dense_params) == chain_params + skip_sizes
    # Biases of a bias-free layer are not counted even if (wrongly) non-zero; three skip entries of each skip are 0.
    biases_nonzero = 4 + 2
    weights_nonzero = 3 * 4 + 4 * 5 + 5 * 2
    assert int(c.nonzeros) == weights_nonzero + biases_nonzero + skip_sizes - 2 * 3
    assert int(c.flops) == 2 * (3 * 4 + 4 * 5 + 5 * 2) + 4 + 2 + 2 * skip_sizes
    assert cost(model) == c  # jaxlump's accounting dispatches to SkipMLP.cost
    assert model.in_size == 3 and model.out_size == 2


def test_from_chain_equals_chain():
    mlp = eqx.nn.MLP(3, 2, 6, 2, activation=jax.nn.relu, key=jr.key(5))
    model = SkipMLP.from_chain(mlp)
    x = jr.normal(jr.key(6), (9, 3))
    np.testing.assert_allclose(jax.vmap(model)(x), jax.vmap(mlp)(x), rtol=1e-12, atol=1e-12)
    assert model.cost() == cost(mlp)
    chain = DenseChain(model.weights, model.biases, model.activations, model.use_bias)
    assert SkipMLP.from_chain(chain).cost() == chain_cost(chain)
    assert all(s is None for s in model.skips)


def test_jit_and_latency():
    parts = _skip_net((3, 4, 5, 2), [(), (0,), (1, 0)], ("relu", "relu", "identity"), jr.key(7))
    model = SkipMLP(*parts[:3], (True,) * 3, skips=parts[3], skip_sources=parts[4])
    x = jr.normal(jr.key(8), (4, 3))
    np.testing.assert_allclose(eqx.filter_jit(jax.vmap(model))(x), model(x), rtol=1e-12)
    assert measure_latency(model, 2, repeats=2, warmup=1) > 0


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(skip_sources=[(), (0,), (2,)]), "earlier"),
        (dict(skip_sources=[(), (0,), ()]), "skip matrix"),
        (dict(activations=("relu", "swish", "identity")), "swish"),
        (dict(skips_shape=(5, 2)), "does not map"),
    ],
)
def test_inconsistent_construction_refused(change, match):
    weights, biases, activations, skips, sources = _skip_net(
        (3, 4, 5, 2), [(), (0,), (1, 0)], ("relu", "relu", "identity"), jr.key(9)
    )
    if "skips_shape" in change:
        skips[1] = np.zeros(change.pop("skips_shape"))
    kwargs = dict(skips=skips, skip_sources=sources)
    kwargs.update({k: v for k, v in change.items() if k != "activations"})
    with pytest.raises(ValueError, match=match):
        SkipMLP(weights, biases, change.get("activations", activations), (True,) * 3, **kwargs)


@pytest.mark.parametrize(
    "call",
    [
        lambda m, x: jaxlump.lump(m, x, 0.1),
        lambda m, x: jaxlump.lump_masked(m, x, 0.1),
        lambda m, x: jaxlump.baselines.magnitude(m, x, 0.5),
        lambda m, x: jaxlump.baselines.structured_prune(m, x, 0.5),
        lambda m, x: jaxlump.simulate(m, x),
        lambda m, x: jaxlump.check_encoding(m, x),
        lambda m, x: jaxlump.to_erode(m),
    ],
    ids=["lump", "lump_masked", "magnitude", "structured_prune", "simulate", "check_encoding", "to_erode"],
)
def test_chain_methods_refuse_a_skip_mlp_with_the_reason(call):
    """A SkipMLP is supported where its skips can be honoured (call, cost, save, load) and refused, with the
    reason, where an algorithm needs the dense chain — never treated as the chain without its skips."""
    parts = _skip_net((3, 4, 5, 2), [(), (0,), (1, 0)], ("relu", "relu", "identity"), jr.key(10))
    model = SkipMLP(*parts[:3], (True,) * 3, skips=parts[3], skip_sources=parts[4])
    with pytest.raises(TypeError, match="SkipMLP.*skip connections have no dense-chain form.*costed.*saved and loaded"):
        call(model, jr.normal(jr.key(11), (8, 3)))
