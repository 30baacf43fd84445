"""Sites in models written the way Equinox and NNX users write them: found on the traced program, listed with
what was left out and why, and compressed by every compressor through the one call shape."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from flax import nnx

import jaxlump
from jaxlump._sites.layers import family_of, path_name
from jaxlump._sites.site import capture


class FFN(eqx.Module):
    up: eqx.nn.Linear
    down: eqx.nn.Linear
    activation: object = eqx.field(static=True)

    def __init__(self, d, hidden, activation, key):
        k1, k2 = jr.split(key)
        self.up = eqx.nn.Linear(d, hidden, key=k1)
        self.down = eqx.nn.Linear(hidden, d, key=k2)
        self.activation = activation

    def __call__(self, x):
        return self.down(self.activation(self.up(x)))


class TokenModel(eqx.Module):
    """Token ids `(T,)` → logits `(T, vocab)`: embedding, pre-LN residual FFN blocks, LM head."""

    embed: eqx.nn.Embedding
    norms: list
    ffns: list
    head: eqx.nn.Linear

    def __init__(self, key, widths=(32,), activation=jax.nn.gelu, d=8, vocab=32):
        keys = jr.split(key, len(widths) + 2)
        self.embed = eqx.nn.Embedding(vocab, d, key=keys[0])
        self.norms = [eqx.nn.LayerNorm(d) for _ in widths]
        self.ffns = [FFN(d, w, activation, k) for w, k in zip(widths, keys[1:-1])]
        self.head = eqx.nn.Linear(d, vocab, key=keys[-1])

    def __call__(self, tokens):
        x = jax.vmap(self.embed)(tokens)
        for norm, ffn in zip(self.norms, self.ffns):
            x = x + jax.vmap(ffn)(jax.vmap(norm)(x))
        return jax.vmap(self.head)(x)


TOKENS = jr.randint(jr.key(1), (24, 6), 0, 32)


def plant(model, block: int, copies: int):
    """Make the first `copies` units of FFN `block` duplicates of the next `copies`, output unchanged."""
    ffn = model.ffns[block]
    source = slice(copies, 2 * copies)
    weight = ffn.up.weight.at[:copies].set(ffn.up.weight[source])
    bias = ffn.up.bias.at[:copies].set(ffn.up.bias[source])
    half = ffn.down.weight[:, source] / 2
    down = ffn.down.weight.at[:, :copies].set(half).at[:, source].set(half)
    return eqx.tree_at(
        lambda m: (m.ffns[block].up.weight, m.ffns[block].up.bias, m.ffns[block].down.weight),
        model,
        (weight, bias, down),
    )


def logits(model, tokens=TOKENS):
    return np.asarray(jax.vmap(model)(tokens))


def test_sites_are_listed_with_what_was_left_out():
    listing = jaxlump.sites(TokenModel(jr.key(0), widths=(32, 16)), TOKENS)
    assert [(s.path, s.width, s.activation, s.producers, s.consumer) for s in listing.sites] == [
        ("ffns[0]", 32, "gelu_tanh", ("ffns[0].up",), "ffns[0].down"),
        ("ffns[1]", 16, "gelu_tanh", ("ffns[1].up",), "ffns[1].down"),
    ]
    assert [o.layers for o in listing.left_out] == [("ffns[0].down", "ffns[1].up"), ("ffns[1].down", "head")]
    assert all("residual" in o.reason for o in listing.left_out)
    assert "ffns[0]: 32 units, ffns[0].up → gelu_tanh → ffns[0].down" in str(listing)


class Normed(eqx.Module):
    up: eqx.nn.Linear
    norm: eqx.nn.LayerNorm
    down: eqx.nn.Linear

    def __call__(self, x):
        return self.down(self.norm(jax.nn.relu(self.up(x))))


class ReadTwice(eqx.Module):
    up: eqx.nn.Linear
    down: eqx.nn.Linear

    def __call__(self, x):
        hidden = self.up(x)
        return self.down(jnp.tanh(hidden)) + hidden[:3]


class Shared(eqx.Module):
    up: eqx.nn.Linear
    down: eqx.nn.Linear

    def __call__(self, x):
        return self.down(jnp.tanh(self.up(x))) + self.down(jax.nn.relu(self.up(x)))


def _pair(key, d=3, hidden=6):
    k1, k2 = jr.split(key)
    return eqx.nn.Linear(d, hidden, key=k1), eqx.nn.Linear(hidden, d, key=k2)


@pytest.mark.parametrize(
    "model, reason",
    [
        (Normed(_pair(jr.key(0))[0], eqx.nn.LayerNorm(6), _pair(jr.key(0))[1]), "feed `reduce_sum` (e.g. a norm)"),
        (ReadTwice(*_pair(jr.key(1))), "also read by `slice`"),
        (Shared(*_pair(jr.key(2))), "called more than once"),
    ],
    ids=["feeds_a_norm", "read_twice", "shared_weights"],
)
def test_structures_a_site_cannot_cover_are_left_out_with_a_reason(model, reason):
    listing = jaxlump.sites(model, jnp.ones((2, 3)))
    assert listing.sites == ()
    assert len(listing.left_out) == 1 and reason in listing.left_out[0].reason
    with pytest.raises(ValueError, match="no site jaxlump can compress"):
        jaxlump.merge_or_remove(model, jnp.ones((2, 3)), 0.1)


@pytest.mark.parametrize(
    "activation, name",
    [
        (jax.nn.gelu, "gelu_tanh"),
        (functools.partial(jax.nn.gelu, approximate=False), "gelu"),
        (jax.nn.relu, "relu"),
        (jax.nn.silu, "silu"),
        (jnp.tanh, "tanh"),
        (jax.nn.sigmoid, "sigmoid"),
        (jax.nn.softplus, "softplus"),
        (jax.nn.leaky_relu, "leaky_relu"),
        (jax.nn.elu, "elu"),
        (lambda z: z, "identity"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_the_combine_is_recognised_as_a_program(activation, name):
    (site,) = jaxlump.sites(TokenModel(jr.key(0), activation=activation), TOKENS).sites
    assert site.activation == name


def test_an_unknown_combine_is_left_out_not_guessed():
    model = TokenModel(jr.key(0), activation=lambda z: jnp.clip(z, -1.0, 1.0))
    listing = jaxlump.sites(model, TOKENS)
    assert listing.sites == () and "not a known activation" in listing.left_out[0].reason


def test_capture_gives_the_sites_input_rows():
    model = TokenModel(jr.key(0))
    (rows,) = capture(model, family_of(model), (0,), TOKENS)  # tap 0: ffns[0].up
    expected = jax.vmap(jax.vmap(model.norms[0]))(jax.vmap(jax.vmap(model.embed))(TOKENS))
    np.testing.assert_allclose(rows, expected.reshape(-1, 8), rtol=1e-6, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("method", [jaxlump.merge_or_remove, jaxlump.lump])
def test_planted_duplicates_go_exactly_at_eps_zero(method):
    model = plant(TokenModel(jr.key(0), widths=(32, 16)), block=0, copies=8)
    model = plant(model, block=1, copies=4)
    before = [np.array(leaf) for leaf in jax.tree_util.tree_leaves(model)]
    small, info = method(model, TOKENS, 0.0)
    assert type(small) is TokenModel
    assert info.widths_after == {"ffns[0]": 24, "ffns[1]": 12}
    assert small.ffns[0].up.out_features == 24 and small.ffns[0].down.in_features == 24
    np.testing.assert_allclose(logits(small), logits(model), atol=2e-5)
    assert float(info.output_max_abs) <= 2e-5
    assert info.params_after == info.params_before - 8 * (8 + 1 + 8) - 4 * (8 + 1 + 8)
    assert all(np.array_equal(a, np.array(b)) for a, b in zip(before, jax.tree_util.tree_leaves(model)))
    np.testing.assert_allclose(np.asarray(jax.jit(jax.vmap(small))(TOKENS)), logits(small), atol=1e-6)


@pytest.mark.slow
def test_where_restricts_and_independent_calibrates_on_the_original():
    model = TokenModel(jr.key(0), widths=(32, 16))
    only_second, info = jaxlump.baselines.obs_prune(model, TOKENS, 0.5, where=lambda m: m.ffns[1])
    assert info.widths_after == {"ffns[1]": 8} and only_second.ffns[0].up.weight is model.ffns[0].up.weight
    both, _ = jaxlump.baselines.obs_prune(model, TOKENS, 0.5, independent=True)
    assert np.array_equal(both.ffns[1].down.weight, only_second.ffns[1].down.weight)
    sequential, _ = jaxlump.baselines.obs_prune(model, TOKENS, 0.5)
    assert not np.array_equal(sequential.ffns[1].down.weight, only_second.ffns[1].down.weight)


class NNXFFN(nnx.Module):
    def __init__(self, d, hidden, rngs):
        self.up = nnx.Linear(d, hidden, rngs=rngs)
        self.down = nnx.Linear(hidden, d, rngs=rngs)

    def __call__(self, x):
        return self.down(nnx.gelu(self.up(x)))


class NNXTokenModel(nnx.Module):
    def __init__(self, rngs, d=8, vocab=32, hidden=32):
        self.embed = nnx.Embed(vocab, d, rngs=rngs)
        self.norm = nnx.LayerNorm(d, rngs=rngs)
        self.ffn = NNXFFN(d, hidden, rngs)
        self.head = nnx.Linear(d, vocab, rngs=rngs)

    def __call__(self, tokens):  # a batch (B, T), as NNX users call their models
        x = self.embed(tokens)
        return self.head(x + self.ffn(self.norm(x)))


@pytest.mark.slow
def test_nnx_model_compressed_on_a_copy_with_planted_duplicates_exact():
    model = NNXTokenModel(nnx.Rngs(0))
    up, down = model.ffn.up, model.ffn.down
    up.kernel[...] = up.kernel[...].at[:, :8].set(up.kernel[...][:, 8:16])
    up.bias[...] = up.bias[...].at[:8].set(up.bias[...][8:16])
    half = down.kernel[...][8:16] / 2
    down.kernel[...] = down.kernel[...].at[:8].set(half).at[8:16].set(half)
    before = np.asarray(model(TOKENS))
    small, info = jaxlump.merge_or_remove(model, TOKENS, 0.0)
    assert type(small) is NNXTokenModel and small is not model
    assert small.ffn.up.out_features == 24 and small.ffn.down.in_features == 24
    assert model.ffn.up.kernel.shape == (8, 32)
    np.testing.assert_allclose(np.asarray(small(TOKENS)), before, atol=2e-5)
    np.testing.assert_allclose(np.asarray(nnx.jit(lambda m, t: m(t))(small, TOKENS)), before, atol=2e-5)


def test_bad_site_arguments_are_refused_by_name():
    model = TokenModel(jr.key(0))
    with pytest.raises(ValueError, match="`x_calib` is needed"):
        jaxlump.merge_or_remove(model, None, 0.1)
    with pytest.raises(TypeError, match="`where` must be a function"):
        jaxlump.sites(model, TOKENS, where="ffns")
    with pytest.raises(ValueError, match="`where` selects no site"):
        jaxlump.sites(model, TOKENS, where=lambda m: m.norms[0])
    with pytest.raises(ValueError, match="leading batch axis"):
        jaxlump.sites(model, jnp.zeros((0, 6), jnp.int32))
    with pytest.raises(TypeError, match="Equinox modules"):
        jaxlump.sites({"w": jnp.ones(3)}, TOKENS)
    with pytest.raises(TypeError, match="rank-r factorisation"):
        jaxlump.baselines.lowrank(model, TOKENS, 0.5)
    with pytest.raises(ValueError, match=r"`target` must be a positive count or a fraction in \(0, 1\]; received 1.5"):
        jaxlump.baselines.compress_to(model, "merge_or_remove", 1.5, TOKENS)
    with pytest.raises(TypeError, match="`target` for a model of sites must be .* or a dict of widths by site path"):
        jaxlump.baselines.compress_to(model, "merge_or_remove", "half", TOKENS)
    mlp = eqx.nn.MLP(3, 2, 8, 1, key=jr.key(0))
    with pytest.raises(ValueError, match="compressed as a whole"):
        jaxlump.merge_or_remove(mlp, jnp.ones((4, 3)), 0.1, where=lambda m: m.layers[0])


def _linear_paths(model):
    return [p for p, _ in family_of(model).layers(model)]


def _node(model, path):
    for key in path:
        model = model[key] if isinstance(key, int) else getattr(model, key)
    return model


@pytest.mark.integration  # compiles a model of sites anew: the second test step
def test_unstructured_methods_mask_every_linear_but_the_head():
    """Magnitude and Wanda on a transformer: attention projections and FFN layers alike, each on its own; the head
    (the last layer the model calls) stays dense; Wanda's scores on the first projection recomputed by hand."""
    from _models import ByteTransformer

    model = ByteTransformer(d=16, heads=2, hidden=32, key=jr.key(0))
    pruned, info = jaxlump.baselines.magnitude(model, TOKENS, 0.5)
    assert type(pruned) is ByteTransformer and info.widths_after == info.widths_before
    paths = _linear_paths(model)
    assert info.layers == tuple(path_name(p) for p in paths if p != ("head",))  # program order is the tree's here
    for path in paths:
        before, after = np.asarray(_node(model, path).weight), np.asarray(_node(pruned, path).weight)
        if path == ("head",):
            assert np.array_equal(before, after)
            continue
        zeros = after == 0
        assert zeros.sum() == int(before.size * 0.5), path
        assert np.abs(before[zeros]).max() <= np.abs(before[~zeros]).min(), path  # the smallest |W| went
    assert info.nonzeros_after < info.nonzeros_before and info.params_after == info.params_before
    np.testing.assert_allclose(
        float(info.output_max_abs), np.abs(logits(pruned) - logits(model)).max(), rtol=1e-5, atol=1e-6
    )
    small, _ = jaxlump.shrink(pruned, info)  # nothing to remove: every unit is live
    assert small is pruned

    query = model.blocks[0].attention.query_proj
    wanda, info = jaxlump.baselines.wanda(model, TOKENS, 0.5, independent=True)
    x = jax.vmap(lambda t: model.embedding.weight[t] + model.position.weight[: t.shape[0]])(TOKENS)
    x = jax.vmap(jax.vmap(model.blocks[0].attention_norm))(x).reshape(-1, 16)
    score = np.abs(np.asarray(query.weight)) * np.linalg.norm(np.asarray(x, np.float64), axis=0)[None, :]
    kept = np.asarray(wanda.blocks[0].attention.query_proj.weight) != 0
    assert kept.sum() == query.weight.size - int(query.weight.size * 0.5)
    assert score[~kept].max() <= score[kept].min()
    assert np.array_equal(np.asarray(wanda.head.weight), np.asarray(model.head.weight))
    with pytest.raises(ValueError, match=r"`scope=Global\(\)` ranks the layers of one chain together"):
        jaxlump.baselines.magnitude(model, TOKENS, 0.5, scope=jaxlump.baselines.Global())


class _ThreeWaysOut(eqx.Module):
    """Three structures left out for three reasons (a norm, a producer read twice, an unknown combine)."""

    up: eqx.nn.Linear
    norm: eqx.nn.LayerNorm
    down: eqx.nn.Linear
    up2: eqx.nn.Linear
    down2: eqx.nn.Linear
    up3: eqx.nn.Linear
    down3: eqx.nn.Linear

    def __init__(self, d=8, hidden=32, *, key):
        k = jr.split(key, 6)
        self.up, self.norm = eqx.nn.Linear(d, hidden, key=k[0]), eqx.nn.LayerNorm(hidden)
        self.down = eqx.nn.Linear(hidden, d, key=k[1])
        self.up2, self.down2 = eqx.nn.Linear(d, d, key=k[2]), eqx.nn.Linear(d, d, key=k[3])
        self.up3, self.down3 = eqx.nn.Linear(d, hidden, key=k[4]), eqx.nn.Linear(hidden, d, key=k[5])

    def __call__(self, x):
        x = x + self.down(self.norm(jax.nn.gelu(self.up(x))))
        h = self.up2(x)
        x = x + h + self.down2(jax.nn.gelu(h))
        return x + self.down3(self.up3(x) * jnp.tanh(jax.nn.softplus(self.up3(x))))


def test_what_was_left_out_is_listed_in_the_order_the_model_calls_it():
    listing = jaxlump.sites(_ThreeWaysOut(key=jr.key(2)), jnp.ones((4, 8)))
    assert [o.layers for o in listing.left_out] == [
        ("up", "down"),
        ("down", "up2"),
        ("up2", "down2"),
        ("down2", "up3"),
        ("up3", "down3"),
    ]


def test_site_chains_are_the_segments_with_their_input_rows():
    model = TokenModel(jr.key(0), widths=(32, 16))
    first, second = jaxlump.site_chains(model, TOKENS)
    assert first.sites == ("ffns[0]",) and second.sites == ("ffns[1]",)
    x = jax.vmap(jax.vmap(model.embed))(TOKENS)
    y = jax.vmap(jax.vmap(model.norms[0]))(x)
    np.testing.assert_allclose(first.inputs, y.reshape(-1, 8), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        first.chain(first.inputs), jax.vmap(jax.vmap(model.ffns[0]))(y).reshape(-1, 8), atol=1e-6
    )
    x = x + jax.vmap(jax.vmap(model.ffns[0]))(y)
    np.testing.assert_allclose(second.inputs, jax.vmap(jax.vmap(model.norms[1]))(x).reshape(-1, 8), atol=1e-6)
    assert first.chain.widths == (8, 32, 8) and first.chain.activations == ("gelu_tanh", "identity")
