"""Head sites (`jaxlump._sites.heads`, cut by `jaxlump._methods.channels`): `eqx.nn.MultiheadAttention` inside a
transformer written the usual way, against independent truth — the module's own forward pass, a planted duplicate
head, NumPy least squares over every choice of heads."""

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from _models import ByteTransformer, GroupedQueryAttention

import jaxlump
from jaxlump.baselines import compress_to, obs_prune, structured_prune

T = 8
MODEL = ByteTransformer(d=16, heads=4, hidden=32, blocks=2, ffn="gelu", max_length=T, key=jr.key(0))
TOKENS = jr.randint(jr.key(1), (24, T), 0, 256)


def _logits(model, tokens=TOKENS):
    return np.asarray(jax.vmap(model)(tokens), np.float64)


def _with_duplicate_head(attention: eqx.nn.MultiheadAttention, source: int, share: float):
    """`attention` with one more head, a copy of head `source`; the copy's output columns take `share` of the
    source's and the source keeps the rest, so the module computes the same function."""
    heads, qk, vo = attention.num_heads, attention.qk_size, attention.vo_size

    def copied(weight, size):
        blocks = weight.reshape(heads, size, -1)
        return jnp.concatenate([blocks, blocks[source : source + 1]]).reshape(-1, weight.shape[-1])

    out = attention.output_proj.weight.reshape(-1, heads, vo)
    out = jnp.concatenate([out.at[:, source].multiply(1 - share), share * out[:, source : source + 1]], axis=1)
    wide = eqx.nn.MultiheadAttention(
        heads + 1, attention.query_size, qk_size=qk, vo_size=vo, output_size=attention.output_size, key=jr.key(9)
    )
    return eqx.tree_at(
        lambda m: (m.query_proj.weight, m.key_proj.weight, m.value_proj.weight, m.output_proj.weight),
        wide,
        (
            copied(attention.query_proj.weight, qk),
            copied(attention.key_proj.weight, qk),
            copied(attention.value_proj.weight, vo),
            out.reshape(out.shape[0], -1),
        ),
    )


def test_attention_modules_are_listed_as_head_sites_in_program_order():
    listing = jaxlump.sites(MODEL, TOKENS)
    assert [(s.path, s.unit, s.width, s.group) for s in listing.sites] == [
        ("blocks[0].attention", "head", 4, 4),
        ("blocks[0].ffn", "neuron", 32, 1),
        ("blocks[1].attention", "head", 4, 4),
        ("blocks[1].ffn", "neuron", 32, 1),
    ]
    first = listing.sites[0]
    assert first.producers == tuple(f"blocks[0].attention.{p}_proj" for p in ("query", "key", "value"))
    assert first.consumer == "blocks[0].attention.output_proj"
    assert "blocks[0].attention: 4 heads, " in str(listing) and "→ attention per head →" in str(listing)
    only = jaxlump.sites(MODEL, TOKENS, where=lambda m: m.blocks[1].attention)
    assert [s.path for s in only.sites] == ["blocks[1].attention"]


@pytest.mark.integration  # the whole transformer compressed: the second test step
def test_a_planted_duplicate_head_merges_at_eps_zero_and_the_logits_do_not_change():
    wide = eqx.tree_at(lambda m: m.blocks[0].attention, MODEL, _with_duplicate_head(MODEL.blocks[0].attention, 2, 0.3))
    np.testing.assert_allclose(_logits(wide), _logits(MODEL), atol=1e-5)  # the plant keeps the function
    before = [np.array(leaf) for leaf in jax.tree_util.tree_leaves(eqx.filter(wide, eqx.is_array))]
    small, info = jaxlump.merge_or_remove(wide, TOKENS, 0.0)
    assert type(small) is ByteTransformer and small.blocks[0].attention.num_heads == 4
    labels = np.asarray(info.segments[0].partitions[0])
    assert labels[4] == labels[2] and sorted(set(labels.tolist())) == [0, 1, 2, 3]
    assert info.widths_before["blocks[0].attention"] == 5 and info.widths_after["blocks[0].attention"] == 4
    assert small.blocks[0].attention.query_proj.weight.shape == (16, 16)
    assert small.blocks[0].attention.output_proj.weight.shape == (16, 16)
    assert info.widths_after == {**info.widths_before, "blocks[0].attention": 4}  # nothing else costs 0
    scale = np.abs(_logits(MODEL)).max()
    np.testing.assert_allclose(_logits(small), _logits(MODEL), rtol=1e-4, atol=1e-4 * scale)
    after = [np.array(leaf) for leaf in jax.tree_util.tree_leaves(eqx.filter(wide, eqx.is_array))]
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True)), "input was modified"


def _heads_and_target(model, tokens):
    """The first block's heads' outputs `(N, heads, vo)` and its output projection's output, computed in NumPy
    float64 from the model's weights: embeddings, layer norm, causal softmax attention per head."""
    block = model.blocks[0]
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    x = f64(model.embedding.weight)[np.asarray(tokens)] + f64(model.position.weight)[: tokens.shape[1]]
    norm = block.attention_norm
    y = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + norm.eps)
    y = y * f64(norm.weight) + f64(norm.bias)
    attention = block.attention
    q, k, v = (
        (y @ f64(layer.weight).T).reshape(*y.shape[:2], 4, 4)
        for layer in (attention.query_proj, attention.key_proj, attention.value_proj)
    )
    scores = np.einsum("bshd,bthd->bhst", q, k) / 2.0
    scores = np.where(np.tril(np.ones((T, T), bool)), scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    rows = np.einsum("bhst,bthd->bshd", weights, v).reshape(-1, 4, 4)
    return rows, rows.reshape(len(rows), -1) @ f64(attention.output_proj.weight).T


@pytest.mark.integration  # a transformer compressed: the second test step
def test_group_obs_drops_the_head_whose_loss_least_squares_compensates_best():
    """One head of four removed by `obs_prune`, with the output projection refitted: the head it drops is the one
    whose removal leaves the smallest least-squares error (NumPy, every choice), and the refit is that solution."""
    rows, target = _heads_and_target(MODEL, TOKENS)
    errors = []
    for kept in itertools.combinations(range(4), 3):
        x = rows[:, kept].reshape(len(rows), -1)
        solution = np.linalg.lstsq(x, target, rcond=None)[0]
        errors.append((np.sum((x @ solution - target) ** 2), kept, solution))
    best = min(errors, key=lambda e: e[0])
    small, info = obs_prune(MODEL, TOKENS, 0.25, where=lambda m: m.blocks[0].attention, ridge=0.0)
    labels = np.asarray(info.segments[0].partitions[0])
    assert tuple(np.flatnonzero(labels >= 0)) == best[1]
    np.testing.assert_allclose(
        np.asarray(small.blocks[0].attention.output_proj.weight, np.float64), best[2].T, rtol=1e-3, atol=1e-4
    )
    assert small.blocks[0].attention.num_heads == 3 and small.blocks[1].attention.num_heads == 4


@pytest.mark.integration  # a transformer compressed: the second test step
def test_the_compressed_module_is_a_valid_attention_module_against_its_own_forward_pass():
    small, _ = compress_to(MODEL, "obs_prune", {"blocks[0].attention": 2, "blocks[1].attention": 3}, TOKENS)
    for block, heads in zip(small.blocks, (2, 3), strict=True):
        attention = block.attention
        assert attention.num_heads == heads and attention.qk_size == attention.vo_size == 4  # head_dim kept
        assert attention.query_proj.weight.shape == attention.value_proj.weight.shape == (4 * heads, 16)
        x = jr.normal(jr.key(3), (T, 16))
        q = (x @ attention.query_proj.weight.T).reshape(T, heads, 4)
        k = (x @ attention.key_proj.weight.T).reshape(T, heads, 4)
        v = (x @ attention.value_proj.weight.T).reshape(T, heads, 4)
        weights = jax.nn.softmax(jnp.einsum("shd,thd->hst", q, k) / 2.0, axis=-1)
        by_hand = jnp.einsum("hst,thd->shd", weights, v).reshape(T, -1) @ attention.output_proj.weight.T
        np.testing.assert_allclose(attention(x, x, x), by_hand, rtol=1e-5, atol=1e-5)
    assert _logits(small).shape == _logits(MODEL).shape


@pytest.mark.integration  # the whole transformer compressed: the second test step
def test_a_fraction_target_keeps_heads_whole_and_methods_without_a_head_rule_leave_them():
    total = sum(a.size for a in jax.tree_util.tree_leaves(eqx.filter(MODEL, eqx.is_inexact_array)))
    small, info = compress_to(MODEL, "obs_prune", total - 600, TOKENS)  # the FFNs hold 2,144 parameters
    assert [s.path for s in info.sites] == ["blocks[0].ffn", "blocks[1].ffn"] and info.params_after <= total - 600
    assert [b.attention.num_heads for b in small.blocks] == [4, 4]
    _, info = structured_prune(MODEL, TOKENS, 0.5)
    assert all(s.unit == "neuron" for s in info.sites)
    with pytest.raises(TypeError, match=r"head sites \(blocks\[0\]\.attention\), which jaxlump.structured_prune"):
        structured_prune(MODEL, TOKENS, 0.5, where=lambda m: m.blocks[0].attention)
    with pytest.raises(ValueError, match=r"`target\['blocks\[0\]\.attention'\]` must be a number of heads from 1"):
        compress_to(MODEL, "obs_prune", {"blocks[0].attention": 5}, TOKENS)


@pytest.mark.integration  # the whole transformer compressed: the second test step
def test_heads_are_cut_on_the_model_compressed_so_far_and_counted():
    small, info = jaxlump.merge_or_remove(MODEL, TOKENS, 0.5)
    widths = info.widths_after
    assert [b.attention.num_heads for b in small.blocks] == [
        widths["blocks[0].attention"],
        widths["blocks[1].attention"],
    ]
    assert info.params_after == sum(a.size for a in jax.tree_util.tree_leaves(eqx.filter(small, eqx.is_inexact_array)))
    assert info.params_after < info.params_before and info.result == jaxlump.RESULTS.successful
    deviation = np.abs(_logits(small) - _logits(MODEL))
    np.testing.assert_allclose(float(info.output_max_abs), deviation.max(), rtol=1e-4)


@pytest.mark.integration  # a transformer compressed: the second test step
def test_a_model_with_fewer_heads_saves_and_loads_into_the_uncompressed_class(tmp_path):
    small, _ = compress_to(MODEL, "obs_prune", {"blocks[0].attention": 2}, TOKENS)
    jaxlump.save(tmp_path / "small.npz", small)
    again = jaxlump.load(tmp_path / "small.npz", like=MODEL)
    assert [b.attention.num_heads for b in again.blocks] == [2, 4]
    np.testing.assert_array_equal(_logits(again), _logits(small))


class GQAModel(eqx.Module):
    embedding: eqx.nn.Embedding
    attention: GroupedQueryAttention
    head: eqx.nn.Linear

    def __call__(self, tokens):
        x = jax.vmap(self.embedding)(tokens)
        return jax.vmap(self.head)(x + self.attention(x))


def _gqa_model(key, *, duplicate: bool = False):
    keys = jr.split(key, 6)
    d, hd = 32, 4
    linear = lambda i, o, k: eqx.nn.Linear(i, o, use_bias=False, key=k)  # noqa: E731
    q, k, v, o = (
        linear(d, 8 * hd, keys[0]),
        linear(d, 2 * hd, keys[1]),
        linear(d, 2 * hd, keys[2]),
        linear(8 * hd, d, keys[3]),
    )
    if duplicate:  # KV head 1 and its query heads 4–7 copy KV head 0 and query heads 0–3; output columns split
        q = eqx.tree_at(lambda l: l.weight, q, q.weight.at[16:].set(q.weight[:16]))
        k = eqx.tree_at(lambda l: l.weight, k, k.weight.at[4:].set(k.weight[:4]))
        v = eqx.tree_at(lambda l: l.weight, v, v.weight.at[4:].set(v.weight[:4]))
        o = eqx.tree_at(
            lambda l: l.weight, o, o.weight.at[:, 16:].set(0.25 * o.weight[:, :16]).at[:, :16].multiply(0.75)
        )
    return GQAModel(
        eqx.nn.Embedding(64, d, key=keys[4]),
        GroupedQueryAttention(q, k, v, o, 8, 2, 4),
        eqx.nn.Linear(d, 64, key=keys[5]),
    )


GQA_TOKENS = jr.randint(jr.key(12), (16, 8), 0, 64)


@pytest.mark.integration  # a transformer compressed: the second test step
def test_grouped_query_attention_is_cut_by_kv_head_and_stays_a_valid_gqa_module():
    model = _gqa_model(jr.key(11))
    (site,) = jaxlump.sites(model, GQA_TOKENS).sites
    assert (site.path, site.unit, site.width, site.group) == ("attention", "head", 2, 16)
    small, info = compress_to(model, "obs_prune", {"attention": 1}, GQA_TOKENS)
    attention = small.attention
    assert (attention.heads, attention.kv_heads, attention.head_dim) == (4, 1, 4)
    assert attention.q.weight.shape == (16, 32) and attention.k.weight.shape == attention.v.weight.shape == (4, 32)
    kept = int(np.flatnonzero(np.asarray(info.segments[0].partitions[0]) >= 0)[0])
    np.testing.assert_array_equal(attention.q.weight, model.attention.q.weight[16 * kept : 16 * (kept + 1)])
    np.testing.assert_array_equal(attention.k.weight, model.attention.k.weight[4 * kept : 4 * (kept + 1)])
    x = jr.normal(
        jr.key(13), (8, 32)
    )  # its own forward pass against the same attention with the other KV group's output columns zeroed
    wide = eqx.tree_at(
        lambda a: a.o.weight,
        model.attention,
        jnp.zeros_like(model.attention.o.weight).at[:, 16 * kept : 16 * (kept + 1)].set(attention.o.weight),
    )
    np.testing.assert_allclose(attention(x), wide(x), rtol=1e-5, atol=1e-6)


@pytest.mark.integration  # merge_or_remove's group paths compiled for one more shape: the second test step
def test_a_duplicate_kv_head_and_its_query_heads_merge_at_eps_zero():
    model = _gqa_model(jr.key(11), duplicate=True)
    small, info = jaxlump.merge_or_remove(model, GQA_TOKENS, 0.0)
    assert np.asarray(info.segments[0].partitions[0]).tolist() == [0, 0]
    assert (small.attention.heads, small.attention.kv_heads) == (4, 1)
    reference = np.asarray(jax.vmap(model)(GQA_TOKENS))
    np.testing.assert_allclose(
        np.asarray(jax.vmap(small)(GQA_TOKENS)), reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max()
    )
