"""Head sites of Flax NNX models (`jaxlump._sites.nnx_attention`): `nnx.MultiHeadAttention` inside transformer blocks
written the way NNX users write them, against independent truth — NumPy multi-head attention from the weights, a
planted duplicate head, NumPy least squares over every choice of heads — and `nnx.LinearGeneral` as a layer type."""

import functools
import itertools

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from _models import NNXByteTransformer
from flax import nnx

import jaxlump
from jaxlump._sites.layers import layer_type_of
from jaxlump.baselines import compress_to, obs_prune, wanda

T, D, HEADS = 6, 16, 4  # head_dim 4


class Block(nnx.Module):
    """A pre-LN transformer block on a batch of float inputs `(B, T, d)`: attention, then a GELU FFN, each in the
    residual stream."""

    def __init__(self, d: int, heads: int, hidden: int, *, rngs: nnx.Rngs, **attention):
        self.attention_norm = nnx.LayerNorm(d, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(heads, d, decode=False, rngs=rngs, **attention)
        self.ffn_norm = nnx.LayerNorm(d, rngs=rngs)
        self.up = nnx.Linear(d, hidden, rngs=rngs)
        self.down = nnx.Linear(hidden, d, rngs=rngs)

    def __call__(self, x):
        x = x + self.attention(self.attention_norm(x))
        return x + self.down(nnx.gelu(self.up(self.ffn_norm(x))))


def _block(**attention) -> Block:
    model = Block(D, HEADS, 32, rngs=nnx.Rngs(0), **attention)
    projections = (model.attention.query, model.attention.key, model.attention.value, model.attention.out)
    for key, layer in zip(jr.split(jr.key(5), 4), projections, strict=True):
        layer.bias[...] = 0.1 * jr.normal(key, layer.bias.shape, jnp.float32)  # biases that matter
    return model


X = jr.normal(jr.key(1), (16, T, D), jnp.float32)


def _numpy_attention(attention, y):
    """`nnx.MultiHeadAttention` (no mask) in NumPy float64 from its weights: the heads' outputs `(B, T, H, D)`, with
    grouped KV heads read by `H / kv` query heads each, and the module's output."""
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    q, k, v = (
        np.einsum("btd,dhk->bthk", f64(y), f64(p.kernel[...])) + f64(p.bias[...])
        for p in (attention.query, attention.key, attention.value)
    )
    k, v = (np.repeat(a, q.shape[2] // a.shape[2], axis=2) for a in (k, v))
    scores = np.einsum("bshd,bthd->bhst", q, k) / np.sqrt(q.shape[-1])
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    heads = np.einsum("bhst,bthd->bshd", weights, v)
    return heads, np.einsum("bshd,hdo->bso", heads, f64(attention.out.kernel[...])) + f64(attention.out.bias[...])


def _arrays(model):
    return [np.array(leaf) for leaf in jax.tree_util.tree_leaves(nnx.state(model))]


def _with_duplicate_head(model: Block, source: int, copy: int) -> Block:
    """A copy of `model` whose head `copy` repeats head `source` (query, key, value kernels and biases), the two
    sharing head `source`'s output columns half and half: it computes the function of `model` without head `copy`."""
    planted = nnx.clone(model)
    attention = planted.attention
    for layer in (attention.query, attention.key, attention.value):
        layer.kernel[...] = layer.kernel[...].at[:, copy].set(layer.kernel[:, source])
        layer.bias[...] = layer.bias[...].at[copy].set(layer.bias[source])
    out = attention.out.kernel[...]
    attention.out.kernel[...] = out.at[copy].set(0.5 * out[source]).at[source].multiply(0.5)
    return planted


def test_nnx_attention_modules_are_listed_as_head_sites():
    listing = jaxlump.sites(_block(), X)
    assert [(s.path, s.unit, s.width, s.group) for s in listing.sites] == [
        ("attention", "head", 4, 4),
        ("<model>", "neuron", 32, 1),
    ]
    assert listing.sites[0].producers == ("attention.query", "attention.key", "attention.value")
    assert listing.sites[0].consumer == "attention.out"
    tokens = jr.randint(jr.key(2), (4, 8), 0, 256)
    lm = NNXByteTransformer(d=D, heads=HEADS, max_length=8, blocks=2, ffn="gelu", hidden=32, rngs=nnx.Rngs(0))
    only = jaxlump.sites(lm, tokens, where=lambda m: m.blocks[1].attention)
    assert [(s.path, s.width) for s in only.sites] == [("blocks[1].attention", 4)]


def test_linear_general_reads_as_the_linear_it_computes_and_rebuilds_with_fewer_heads():
    attention = _block().attention
    y = jr.normal(jr.key(3), (2, T, D), jnp.float32)
    heads = jr.normal(jr.key(4), (2, T, HEADS, 4), jnp.float32)
    for layer, inputs in ((attention.query, y), (attention.out, heads)):
        weight, bias, use_bias = layer_type_of(layer).read(layer)
        rows = inputs.reshape(2, T, -1)
        np.testing.assert_allclose(layer(inputs).reshape(2, T, -1), rows @ weight.T + bias, rtol=1e-5, atol=1e-5)
        assert use_bias and layer_type_of(layer).flops(layer, inputs.shape) == 2 * T * (2 * 16 * 16 + 16)
    weight, bias, _ = layer_type_of(attention.query).read(attention.query)
    kept = np.r_[4:8, 12:16]  # heads 1 and 3
    fewer = layer_type_of(attention.query).rebuild(attention.query, weight[kept], bias[kept])
    assert fewer.kernel.shape == (D, 2, 4) and fewer.out_features == (2, 4)
    np.testing.assert_allclose(fewer(y), attention.query(y)[..., [1, 3], :], rtol=1e-6, atol=1e-6)
    weight, bias, _ = layer_type_of(attention.out).read(attention.out)
    fewer = layer_type_of(attention.out).rebuild(attention.out, weight[:, kept], bias)
    assert fewer.kernel.shape == (2, 4, D) and fewer.in_features == (2, 4) and fewer.axis == (-2, -1)
    np.testing.assert_allclose(fewer(heads[..., [1, 3], :]), attention.out(heads.at[..., [0, 2], :].set(0)), atol=1e-6)


def test_a_linear_general_without_a_canonical_form_is_not_a_layer_and_a_subclass_is_refused():
    batched = nnx.LinearGeneral(D, 8, batch_axis={0: 4}, rngs=nnx.Rngs(0))  # one kernel per batch index
    middle = nnx.LinearGeneral(D, 8, axis=1, rngs=nnx.Rngs(0))  # contracts an axis that is not the last
    assert layer_type_of(batched) is None and layer_type_of(middle) is None

    class Scaled(nnx.LinearGeneral):
        pass

    scaled = Scaled(D, 8, rngs=nnx.Rngs(0))
    assert "subclass (Scaled)" in layer_type_of(scaled).why_not(scaled)


class MultiAxisFFN(nnx.Module):
    """A neuron site between two multi-axis `LinearGeneral`s: `(B, d)` → `(B, 4, 3)` → relu → `(B, d)`."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.up = nnx.LinearGeneral(8, (4, 3), rngs=rngs)
        self.down = nnx.LinearGeneral((4, 3), 8, axis=(-2, -1), rngs=rngs)

    def __call__(self, x):
        return self.down(nnx.relu(self.up(x)))


@pytest.mark.parametrize("width, hidden", [(6, (2, 3)), (5, (5,))])
def test_a_neuron_site_between_linear_generals_keeps_their_axes_or_flattens_both(width, hidden):
    model = MultiAxisFFN(rngs=nnx.Rngs(0))
    x = jr.normal(jr.key(9), (32, 8), jnp.float32)
    (site,) = jaxlump.sites(model, x).sites
    assert (site.unit, site.width) == ("neuron", 12)
    small, _ = compress_to(model, "obs_prune", {"<model>": width}, x)
    assert small.up.out_features == small.down.in_features == hidden and small.down.axis == tuple(
        range(-len(hidden), 0)
    )
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    up, down = f64(small.up.kernel[...]).reshape(8, width), f64(small.down.kernel[...]).reshape(width, 8)
    by_hand = np.maximum(f64(x) @ up + f64(small.up.bias[...]).ravel(), 0) @ down + f64(small.down.bias[...])
    np.testing.assert_allclose(small(x), by_hand, rtol=1e-5, atol=1e-5)


class Own(nnx.MultiHeadAttention):
    """A subclass: it may compute anything."""


def _with_own_class():
    model = _block()
    model.attention = Own(HEADS, D, decode=False, rngs=nnx.Rngs(0))
    return model


def _with_cache():
    model = _block()
    model.attention.init_cache((1, T, D))  # called with decode=False, it keeps a cache shaped for its 4 heads
    return model


@pytest.mark.parametrize(
    "build, reason",
    [
        (lambda: _block(attention_fn=functools.partial(nnx.dot_product_attention)), "its attention_fn (a partial"),
        (_with_own_class, "it is a subclass (Own) whose computation"),
        (_with_cache, "it holds an autoregressive cache"),
    ],
    ids=["attention_fn", "subclass", "cache"],
)
def test_attention_that_cannot_be_cut_is_left_out_with_the_reason(build, reason):
    listing = jaxlump.sites(build(), X)
    assert [s.unit for s in listing.sites] == ["neuron"]
    (left,) = [o for o in listing.left_out if "attention.query" in o.layers]
    assert left.layers == ("attention.query", "attention.key", "attention.value", "attention.out")
    assert left.reason.startswith(reason), left.reason


def test_a_planted_duplicate_head_goes_at_eps_zero_and_the_output_does_not_change():
    model = _with_duplicate_head(_block(), 0, 3)
    before = _arrays(model)
    small, info = jaxlump.merge_or_remove(model, X, 0.0, where=lambda m: m.attention)
    assert type(small) is Block and small.attention.num_heads == 3 and small.attention.qkv_features == 12
    labels = np.asarray(info.segments[0].partitions[0])
    assert labels[3] == labels[0] and sorted(set(labels.tolist())) == [0, 1, 2]
    assert small.attention.query.kernel.shape == (D, 3, 4) and small.attention.out.kernel.shape == (3, 4, D)
    per_head = T * (3 * (2 * D * 4 + 4) + 2 * 4 * D)  # a head's FLOPs per example: its projections' rows and columns
    cost = info.segments[0]
    assert int(cost.cost_before.flops) - int(cost.cost_after.flops) == per_head
    np.testing.assert_allclose(small(X), model(X), rtol=1e-5, atol=1e-5)
    assert all(np.array_equal(a, b) for a, b in zip(before, _arrays(model), strict=True)), "input was modified"


def test_compress_to_k_heads_gives_a_module_that_is_multi_head_attention_of_the_kept_heads():
    model = _block()
    small, info = compress_to(model, "obs_prune", {"attention": 2}, X)
    attention = small.attention
    assert (attention.num_heads, attention.head_dim, attention.qkv_features) == (2, 4, 8)
    kept = np.flatnonzero(np.asarray(info.segments[0].partitions[0]) >= 0)
    for name in ("query", "key", "value"):  # the kept heads' projections, as they were
        np.testing.assert_array_equal(
            getattr(attention, name).kernel[...], getattr(model.attention, name).kernel[...][:, kept]
        )
    y = jr.normal(jr.key(6), (3, T, D), jnp.float32)
    np.testing.assert_allclose(attention(y), _numpy_attention(attention, y)[1], rtol=1e-4, atol=1e-5)
    assert small(X).shape == X.shape and info.widths_after["attention"] == 2


def test_a_model_with_fewer_heads_saves_and_loads_into_the_uncompressed_one(tmp_path):
    model = _block()
    small, _ = compress_to(model, "obs_prune", {"attention": 2}, X)
    jaxlump.save(tmp_path / "small.npz", small)
    again = jaxlump.load(tmp_path / "small.npz", like=model)
    assert type(again) is Block and (again.attention.num_heads, again.attention.qkv_features) == (2, 8)
    assert again.attention.out.in_features == (2, 4) and model.attention.num_heads == 4
    np.testing.assert_array_equal(again(X), small(X))


@pytest.mark.integration  # the whole model compressed: the second test step
def test_merge_or_remove_on_the_whole_model_removes_the_planted_head_only():
    model = _with_duplicate_head(_block(), 0, 3)
    small, info = jaxlump.merge_or_remove(model, X, 0.0)
    assert info.widths_after == {"attention": 3, "<model>": 32} and small.attention.num_heads == 3
    np.testing.assert_allclose(small(X), model(X), rtol=1e-5, atol=1e-5)
    params = sum(a.size for a in jax.tree_util.tree_leaves(nnx.state(small, nnx.Param)))
    assert info.params_after == params == info.params_before - 4 * (3 * (D + 1) + D)
    assert int(info.flops_after) == int(info.flops_before) - T * 4 * (3 * (2 * D + 1) + 2 * D)


@pytest.mark.integration  # a transformer compressed: the second test step
def test_group_obs_drops_the_head_whose_loss_least_squares_compensates_best():
    """One head of four removed by `obs_prune`, the output projection refitted with its bias: the head it drops is
    the one whose removal leaves the smallest least-squares error (NumPy, every choice), and the refit is that
    solution."""
    model = _block()
    heads, target = _numpy_attention(model.attention, model.attention_norm(X))
    rows, target = heads.reshape(-1, HEADS, 4), target.reshape(-1, D)
    errors = []
    for kept in itertools.combinations(range(HEADS), 3):
        a = np.concatenate([rows[:, kept].reshape(len(rows), -1), np.ones((len(rows), 1))], axis=1)
        solution = np.linalg.lstsq(a, target, rcond=None)[0]
        errors.append((np.sum((a @ solution - target) ** 2), kept, solution))
    _, best, solution = min(errors, key=lambda e: e[0])
    small, info = obs_prune(model, X, 0.25, where=lambda m: m.attention, ridge=0.0)
    assert tuple(np.flatnonzero(np.asarray(info.segments[0].partitions[0]) >= 0)) == best
    out = small.attention.out
    np.testing.assert_allclose(np.asarray(out.kernel[...]).reshape(-1, D), solution[:-1], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(out.bias[...], solution[-1], rtol=1e-3, atol=1e-4)


@pytest.mark.integration  # a language model compressed, saved and loaded: the second test step
def test_a_token_model_is_cut_saved_and_loaded(tmp_path):
    tokens = jr.randint(jr.key(7), (12, 8), 0, 256)
    lm = NNXByteTransformer(d=D, heads=HEADS, max_length=8, blocks=2, ffn="gelu", hidden=32, rngs=nnx.Rngs(0))
    before = _arrays(lm)
    small, info = compress_to(lm, "merge_or_remove", {"blocks[0].attention": 2, "blocks[1].attention": 3}, tokens)
    assert [b.attention.num_heads for b in small.blocks] == [2, 3] and type(small) is NNXByteTransformer
    deviation = np.abs(np.asarray(small(tokens)) - np.asarray(lm(tokens))).max()
    np.testing.assert_allclose(float(info.output_max_abs), deviation, rtol=1e-4)
    jaxlump.save(tmp_path / "lm.npz", small)
    again = jaxlump.load(tmp_path / "lm.npz", like=lm)
    assert [b.attention.num_heads for b in again.blocks] == [2, 3]
    np.testing.assert_array_equal(again(tokens), small(tokens))
    assert all(np.array_equal(a, b) for a, b in zip(before, _arrays(lm), strict=True)), "input was modified"
    masked, _ = wanda(lm, tokens, 0.5)  # unstructured methods read the output projection's (T, H, D) input too
    assert masked(tokens).shape == lm(tokens).shape


@pytest.mark.integration  # a grouped-query model compressed: the second test step
def test_grouped_query_attention_is_cut_by_kv_head():
    model = Block(D, 8, 32, rngs=nnx.Rngs(0), num_kv_heads=2, qkv_features=16)  # 8 query heads of 2, 2 KV heads
    (site, _) = jaxlump.sites(model, X).sites
    assert (site.path, site.width, site.group) == ("attention", 2, 8)
    small, info = compress_to(model, "obs_prune", {"attention": 1}, X)
    attention = small.attention
    assert (attention.num_heads, attention.num_kv_heads, attention.head_dim) == (4, 1, 2)
    kept = int(np.flatnonzero(np.asarray(info.segments[0].partitions[0]) >= 0)[0])
    np.testing.assert_array_equal(attention.key.kernel[...], model.attention.key.kernel[...][:, kept : kept + 1])
    np.testing.assert_array_equal(
        attention.query.kernel[...], model.attention.query.kernel[...][:, 4 * kept : 4 * kept + 4]
    )
    y = jr.normal(jr.key(8), (3, T, D), jnp.float32)
    np.testing.assert_allclose(attention(y), _numpy_attention(attention, y)[1], rtol=1e-4, atol=1e-5)
