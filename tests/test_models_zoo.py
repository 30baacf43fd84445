"""Checks of the test models and helpers in `_models.py` (not of jaxlump): shapes, causality, planted duplicates that
leave the output unchanged, the corpus and batches, and that training lowers the loss."""

import _models as models
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from flax import nnx

T = 8


def _eqx_model(**kwargs):
    return models.ByteTransformer(d=64, heads=4, max_length=T, dtype=jnp.float32, key=jr.key(0), **kwargs)


def _nnx_model(**kwargs):
    return models.NNXByteTransformer(d=64, heads=4, max_length=T, rngs=nnx.Rngs(0), **kwargs)


def _tokens(key, batch=3, length=T):
    return jr.randint(key, (batch, length), 0, models.VOCAB, dtype=jnp.int32)


def _shape(function, *args):
    return eqx.filter_eval_shape(function, *args).shape  # no compilation


@pytest.fixture(scope="module")
def eqx_model():
    return _eqx_model()


@pytest.fixture(scope="module")
def nnx_model():
    return _nnx_model()


@pytest.mark.integration  # the acceptance models' helpers, checked beside them in the second step
def test_shapes(eqx_model, nnx_model):
    tokens = _tokens(jr.key(1))
    assert _shape(eqx_model, tokens[0]) == (T, models.VOCAB)
    assert _shape(models.lm_logits, eqx_model, tokens) == (3, T, models.VOCAB)
    assert _shape(models.lm_logits, nnx_model, tokens) == (3, T, models.VOCAB)
    assert [type(block.ffn) for block in eqx_model.blocks] == [models.GeluFFN, models.SwiGLUFFN]
    assert [type(block.ffn) for block in nnx_model.blocks] == [models.NNXGeluFFN, models.NNXSwiGLUFFN]
    # The other models are built and called abstractly: nothing is compiled.
    key = jr.key(0)
    assert _shape(lambda x: models.FrozenFeatureClassifier(key=key)(x), jnp.ones((1, 8, 8))) == (10,)
    assert _shape(lambda x: models.gelu_sequential(key=key)(x), jnp.ones(8)) == (4,)
    assert _shape(lambda x: models.NegativeModel(key=key)(x), jnp.ones(8)) == (8,)
    with pytest.raises(ValueError, match="3 feed-forward networks for 2 blocks"):
        models.ByteTransformer(ffn=("gelu", "gelu", "swiglu"), key=jr.key(0))


@pytest.mark.integration  # the acceptance models' helpers, checked beside them in the second step
@pytest.mark.parametrize("framework", ["eqx", "nnx"])
def test_causal(framework, request):
    model = request.getfixturevalue(f"{framework}_model")
    tokens = _tokens(jr.key(2), batch=1)
    t = 3
    changed = tokens.at[:, t + 1 :].set((tokens[:, t + 1 :] + 1) % models.VOCAB)
    before, after = models.lm_logits(model, tokens), models.lm_logits(model, changed)
    np.testing.assert_allclose(after[:, : t + 1], before[:, : t + 1], rtol=0, atol=1e-6)
    assert np.all(np.max(np.abs(after[:, t + 1 :] - before[:, t + 1 :]), axis=-1) > 1e-3)


@pytest.mark.integration  # the acceptance models' helpers, checked beside them in the second step
@pytest.mark.parametrize("framework", ["eqx", "nnx"])
@pytest.mark.parametrize("block", [0, 1], ids=["gelu", "swiglu"])
def test_plant_duplicates(framework, block, request):
    model = request.getfixturevalue(f"{framework}_model")
    tokens = _tokens(jr.key(3))
    hidden, k = 256, 16
    planted, copies, sources = models.plant_duplicates(model, lambda m: m.blocks[block].ffn, k, jr.key(4))
    ffn, old_ffn = planted.blocks[block].ffn, model.blocks[block].ffn
    assert copies.shape == sources.shape == (k,)
    assert len(set(copies.tolist()) | set(sources.tolist())) == 2 * k
    assert np.all(copies < hidden + k) and not np.all(copies >= hidden)  # copies lie among the originals
    producers = ["gate", "up"] if block == 1 else ["up"]
    for name in producers:
        layer = getattr(ffn, name)
        if isinstance(model, nnx.Module):
            rows, bias, out_features = layer.kernel[...].T, layer.bias[...], layer.out_features
        else:
            rows, bias, out_features = layer.weight, layer.bias, layer.out_features
        assert out_features == hidden + k and rows.shape[0] == hidden + k
        np.testing.assert_array_equal(rows[copies], rows[sources])
        np.testing.assert_array_equal(bias[copies], bias[sources])
    assert ffn.down.in_features == hidden + k
    assert old_ffn.up.out_features == hidden  # the input model is unchanged
    before, after = models.lm_logits(model, tokens), models.lm_logits(planted, tokens)
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(models.lm_logits(model, tokens), before)


@pytest.mark.integration  # the acceptance models' helpers, checked beside them in the second step
def test_corpus_and_batches():
    corpus = models.byte_corpus(4096, seed=1)
    assert corpus.dtype == np.uint8 and corpus.shape == (4096,)
    np.testing.assert_array_equal(corpus, models.byte_corpus(4096, seed=1))
    assert not np.array_equal(corpus, models.byte_corpus(4096, seed=2))
    assert np.mean(corpus < 128) > 0.99  # Python source is (nearly all) ASCII text
    inputs, targets = next(models.batches(corpus, T, 5, jr.key(0)))
    assert inputs.shape == targets.shape == (5, T) and inputs.dtype == jnp.int32
    np.testing.assert_array_equal(inputs[:, 1:], targets[:, :-1])
    windows = models.windows(corpus, T, 4)
    np.testing.assert_array_equal(windows[1], corpus[T : 2 * T + 1])


@pytest.mark.slow
@pytest.mark.parametrize("make", [_eqx_model, _nnx_model], ids=["eqx", "nnx"])
def test_training_lowers_the_loss(make):
    model = make()
    corpus = models.byte_corpus(2**16)
    before = models.bits_per_byte(model, models.windows(models.split_corpus(corpus)[1], T, 64))
    trained, after = models.train_lm(model, 100, jr.key(0), corpus=corpus, length=T, test_windows=64)
    assert before > 7.0 and after < 6.0
    assert isinstance(trained, type(model))
    if not isinstance(model, nnx.Module):
        assert not eqx.tree_equal(trained, model)
        jax.block_until_ready(trained)
