"""`jaxlump.allocate`: the end-to-end search over per-layer widths, against planted redundancy and its own rebuild."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from _models import ByteTransformer, NNXByteTransformer
from _networks import outputs, planted_mlp, random_mlp
from _vision import SmallCNN
from flax import nnx

import jaxlump
from jaxlump._results.accounting import widths_dense_params
from jaxlump.baselines import compress_to

WIDTHS = (3, 8, 8, 2)


@pytest.mark.integration  # whole searches (greedy paths, a reconstruction per candidate): step 2, as step 1 is full
@pytest.mark.parametrize("redundant", [0, 1])
def test_the_layer_with_planted_duplicates_is_the_one_cut(redundant):
    """One hidden layer holds 4 pairs of exact duplicates, the other none: at the size of the first layer halved the
    search must cut exactly the redundant layer (merging its duplicates costs no output error, any other cut does),
    whichever layer that is, and the outputs stay exact."""
    groups = (4, 8) if redundant == 0 else (8, 4)
    model, _ = planted_mlp(jr.key(0), WIDTHS, groups)
    x = jr.normal(jr.key(1), (128, 3))
    expected = (3, *groups, 2)
    small, info = jaxlump.allocate(model, x, widths_dense_params(expected), levels=8)
    assert info.target.realised_widths == expected
    assert info.widths_after.tolist() == list(expected)
    np.testing.assert_allclose(outputs(small, x), outputs(model, x), atol=1e-10)
    assert info.target.knob == (0.0, 0.0) and info.result == jaxlump.RESULTS.successful


@pytest.mark.integration
def test_the_result_fits_the_target_and_is_merge_or_remove_at_its_widths():
    model = random_mlp(jr.key(2), WIDTHS, kind="mlp")
    x = jr.normal(jr.key(3), (128, 3))
    small, info = jaxlump.allocate(model, x, 0.75, levels=2)  # levels at widths 8 and 4
    target = info.target
    assert target.kind == "fraction" and target.original_size == widths_dense_params(WIDTHS)
    assert target.realised_size <= target.requested_size == int(0.75 * target.original_size)
    assert target.realised_size == int(jaxlump.cost(small).dense_params)
    hidden = target.realised_widths[1:-1]
    assert any(w not in (8, 4) for w in hidden)  # (4, 8) and (8, 4) fit with room for a neuron: it was added
    for l, w in enumerate(hidden):  # the target is filled: no layer can take one more neuron within it
        grown = (3, *hidden[:l], w + 1, *hidden[l + 1 :], 2)
        assert w == WIDTHS[l + 1] or widths_dense_params(grown) > target.requested_size
    rebuilt, _ = compress_to(model, "merge_or_remove", target.realised_widths, x)
    for got, want in zip(
        jax.tree.leaves(eqx.filter(small, eqx.is_array)), jax.tree.leaves(eqx.filter(rebuilt, eqx.is_array))
    ):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-9, atol=1e-12)


def test_bad_input_is_refused_naming_the_argument():
    model = random_mlp(jr.key(4), WIDTHS, kind="mlp")
    x = jnp.ones((16, 3))
    for levels, error in ((0, ValueError), (True, TypeError), (2.5, TypeError)):
        with pytest.raises(error, match="`levels`"):
            jaxlump.allocate(model, x, 0.5, levels=levels)
    with pytest.raises(ValueError, match="`target`: jaxlump.allocate chooses the widths"):
        jaxlump.allocate(model, x, (4, 4))
    with pytest.raises(jaxlump.UnreachableTargetError, match="narrowest allocation, widths \\(1, 1\\)"):
        jaxlump.allocate(model, x, 9, levels=8)  # (3, 1, 1, 2) has 10
    with pytest.raises(ValueError, match="`target` as a float"):
        jaxlump.allocate(model, x, 1.5)
    with pytest.raises(ValueError, match="`where` applies to models compressed site by site"):
        jaxlump.allocate(model, x, 0.5, where=lambda m: m.layers[0])
    with pytest.raises(ValueError, match=r"`model` \(Conv1d\) has no site jaxlump can compress"):
        jaxlump.allocate(eqx.nn.Conv1d(3, 4, 3, key=jr.key(5)), jnp.ones((16, 3, 8)), 0.5)


def _transformer(quiet: int | None = None):
    """A two-block GELU byte transformer (FFNs 16 → 64 → 16); with `quiet`, that block's FFN output is scaled by
    1e-3, so cutting it barely changes the logits."""
    model = ByteTransformer(d=16, heads=2, max_length=8, blocks=2, ffn="gelu", key=jr.key(6))
    if quiet is not None:
        model = eqx.tree_at(
            lambda m: m.blocks[quiet].ffn.down.weight, model, model.blocks[quiet].ffn.down.weight * 1e-3
        )
    return model


TOKENS = jr.randint(jr.key(7), (16, 8), 0, 256)


@pytest.mark.integration  # whole searches over a transformer's sites: step 2
@pytest.mark.parametrize("quiet", [0, 1])
def test_a_model_of_sites_gives_its_width_to_the_site_that_matters(quiet):
    """Two FFN sites, one of them nearly silent: at half the FFNs' parameters the search cuts the silent one to its
    narrowest level and keeps the other wider than uniform widths would, with a smaller output error than the
    uniform cut; the result is `compress_to` at the chosen widths."""
    model = _transformer(quiet)
    ffn = 2 * (16 * 64 + 64 + 64 * 16 + 16)
    total = jaxlump.cost(model).dense_params
    budget = int(total - ffn // 2)
    small, info = jaxlump.allocate(model, TOKENS, budget, levels=4)
    assert isinstance(info, jaxlump.SitesInfo) and info.params_after <= budget
    loud, silent = f"blocks[{1 - quiet}].ffn", f"blocks[{quiet}].ffn"
    assert info.widths_after[silent] == 16
    _, uniform = compress_to(model, "merge_or_remove", budget, TOKENS)  # one fraction of every site: 31 and 31
    assert uniform.widths_after[silent] == uniform.widths_after[loud] < info.widths_after[loud]
    assert float(info.output_rms) < float(uniform.output_rms)
    rebuilt, _ = compress_to(model, "merge_or_remove", dict(info.widths_after), TOKENS)
    for got, want in zip(
        jax.tree.leaves(eqx.filter(small, eqx.is_array)), jax.tree.leaves(eqx.filter(rebuilt, eqx.is_array))
    ):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_a_model_of_sites_takes_a_size_and_refuses_widths_and_channels():
    model = _transformer()
    with pytest.raises(TypeError, match="jaxlump.allocate chooses the widths for a size; received the widths"):
        jaxlump.allocate(model, TOKENS, {"blocks[0].ffn": 8})
    with pytest.raises(ValueError, match="`target` must be a positive count or a fraction"):
        jaxlump.allocate(model, TOKENS, 1.5)
    with pytest.raises(
        jaxlump.UnreachableTargetError, match=r"narrowest allocation, widths \(32, 32\), has 12,928 parameters"
    ):
        jaxlump.allocate(model, TOKENS, 1000, levels=2)  # embeddings and attention alone hold more
    cnn = SmallCNN(jr.key(8))
    with pytest.raises(TypeError, match="which jaxlump.allocate cannot compress: it works on neurons"):
        jaxlump.allocate(cnn, jnp.ones((4, 1, 6, 6)), 0.5)


@pytest.mark.integration  # a search over an NNX transformer's sites: step 2
def test_an_nnx_model_of_sites_comes_back_as_its_own_class_within_the_target():
    model = NNXByteTransformer(d=16, heads=2, max_length=8, blocks=2, rngs=nnx.Rngs(0))  # a GELU and a SwiGLU FFN
    budget = int(0.9 * jaxlump.cost(model).dense_params)  # within reach of widths 32 and 32
    small, info = jaxlump.allocate(model, TOKENS, budget, levels=2)
    assert type(small) is NNXByteTransformer and info.params_after <= budget
    assert [b.ffn.down.in_features for b in small.blocks] == [info.widths_after[f"blocks[{i}].ffn"] for i in (0, 1)]
    rebuilt, _ = compress_to(model, "merge_or_remove", dict(info.widths_after), TOKENS)
    np.testing.assert_array_equal(np.asarray(small(TOKENS)), np.asarray(rebuilt(TOKENS)))
