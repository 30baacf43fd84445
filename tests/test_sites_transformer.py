"""Issue 28's acceptance: a pre-LN byte-level transformer language model that no one on the team wrote (causal
multi-head attention, one GELU and one SwiGLU FFN in the residual stream, token ids `(batch, T)`), in Equinox and in
Flax NNX, trained on the Python standard library's own source, compressed through the one call shape."""

import functools

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from _models import (
    ByteTransformer,
    NNXByteTransformer,
    bits_per_byte,
    byte_corpus,
    lm_logits,
    plant_duplicates,
    split_corpus,
    train_lm,
    windows,
)
from flax import nnx

import jaxlump

pytestmark = pytest.mark.integration  # end to end on a trained model: the second test step

CONFIG = dict(d=32, heads=4, max_length=32, blocks=2, ffn=("gelu", "swiglu"), hidden=64)
SITES = ("blocks[0].ffn", "blocks[1].ffn")


@functools.cache
def _corpus():
    return split_corpus(byte_corpus(2**18))


@functools.cache
def trained(family: str):
    """A model trained for 300 steps (about 3.9 bits/byte on held-out text), its calibration and test windows."""
    if family == "eqx":
        model = ByteTransformer(**CONFIG, dtype=jnp.float32, key=jr.key(0))
    else:
        model = NNXByteTransformer(**CONFIG, rngs=nnx.Rngs(0))
    train, test = _corpus()
    model, _ = train_lm(model, 300, jr.key(1), corpus=np.concatenate([train, test]))
    return model, windows(train, 32, 64)[:, :-1], windows(test, 32, 128)


def _arrays(model):
    state = nnx.state(model) if isinstance(model, nnx.Module) else model
    return [np.array(leaf) for leaf in jax.tree_util.tree_leaves(state)]


@pytest.mark.parametrize("family", ["eqx", "nnx"])
@pytest.mark.parametrize("method", [jaxlump.merge_or_remove, jaxlump.lump], ids=["merge_or_remove", "lump"])
def test_sixteen_planted_duplicates_per_ffn_go_exactly_at_eps_zero(family, method):
    model, x_calib, _ = trained(family)
    model, *_ = plant_duplicates(model, lambda m: m.blocks[0].ffn, 16, jr.key(2))
    model, *_ = plant_duplicates(model, lambda m: m.blocks[1].ffn, 16, jr.key(3))
    listing = jaxlump.sites(model, x_calib)
    ffns = [(s.path, s.width, s.gated) for s in listing.sites if s.unit == "neuron"]
    assert ffns == [(SITES[0], 80, False), (SITES[1], 80, True)]
    heads = {s.path: s.width for s in listing.sites if s.unit == "head"}  # eqx's and nnx's multi-head attention
    assert heads == {f"blocks[{b}].attention": 4 for b in (0, 1)}
    before = _arrays(model)
    small, info = method(model, x_calib, 0.0)
    assert type(small) is type(model)
    cut = heads if method is jaxlump.merge_or_remove else {}  # lump keeps sites of heads whole
    assert info.widths_after == {SITES[0]: 64, SITES[1]: 64, **cut}  # no head duplicates another
    assert small.blocks[1].ffn.gate.out_features == small.blocks[1].ffn.up.out_features == 64
    assert small.blocks[1].ffn.down.in_features == 64
    np.testing.assert_allclose(lm_logits(small, x_calib), lm_logits(model, x_calib), atol=2e-5)
    assert all(np.array_equal(a, b) for a, b in zip(before, _arrays(model)))
    if family == "eqx":
        jitted = jax.jit(lambda tokens: jax.vmap(small)(tokens))(x_calib)
    else:
        jitted = nnx.jit(lambda m, tokens: m(tokens))(small, x_calib)
    np.testing.assert_allclose(jitted, lm_logits(small, x_calib), atol=1e-5)


@pytest.mark.parametrize("family", ["eqx", "nnx"])
def test_merge_or_remove_at_half_width_loses_no_more_test_loss_than_structured_obs(family):
    model, x_calib, test = trained(family)
    dense = bits_per_byte(model, test)
    half = {SITES[0]: 32, SITES[1]: 32}
    increase = {}
    for method in ("merge_or_remove", "obs_prune"):  # both refit the down projection by least squares
        small, info = jaxlump.baselines.compress_to(model, method, half, x_calib)
        assert info.widths_after == half and type(small) is type(model)
        increase[method] = bits_per_byte(small, test) - dense
    assert 0 < increase["merge_or_remove"] <= increase["obs_prune"], increase
