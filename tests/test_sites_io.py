"""save / load, cost and measure_latency for models compressed site by site: any Equinox or NNX class comes back
as the same class with its layers' new shapes (from `like`), and is counted and timed through its family."""

import functools
import json

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from flax import nnx
from test_sites import TOKENS, NNXTokenModel, TokenModel

import jaxlump
from jaxlump._errors import RESULTS
from jaxlump._sites.compress import SitesInfo


def _linear(weight, bias):
    """An `eqx.nn.Linear` holding `weight` (out, in) and `bias`, built as a user would."""
    layer = eqx.filter_eval_shape(eqx.nn.Linear, weight.shape[1], weight.shape[0], key=jr.key(9))
    return eqx.tree_at(lambda l: (l.weight, l.bias), layer, (weight, bias))


def _pruned(model: TokenModel, keep: int = 16) -> TokenModel:
    """`model` with its first FFN cut to its first `keep` hidden units, as a structured pruning returns it."""
    up, down = model.ffns[0].up, model.ffns[0].down
    return eqx.tree_at(
        lambda m: (m.ffns[0].up, m.ffns[0].down),
        model,
        (_linear(up.weight[:keep], up.bias[:keep]), _linear(down.weight[:, :keep], down.bias)),
    )


def _nnx_pruned(model: NNXTokenModel, keep: int = 16) -> NNXTokenModel:
    small = nnx.clone(model)
    up, down = model.ffn.up, model.ffn.down

    def linear(kernel, bias):
        return nnx.Linear(*kernel.shape, kernel_init=lambda *_: kernel, bias_init=lambda *_: bias, rngs=nnx.Rngs(5))

    small.ffn.up = linear(up.kernel[...][:, :keep], up.bias[...][:keep])
    small.ffn.down = linear(down.kernel[...][:keep], down.bias[...])
    return small


@functools.cache  # models are immutable; building one per test only repeats JAX compilations
def _small() -> TokenModel:
    return _pruned(TokenModel(jr.key(0)))


_apply = eqx.filter_jit(lambda model, tokens: jax.vmap(model)(tokens))  # one compilation for a class and shapes


def _leaves(model):
    state = nnx.state(model) if isinstance(model, nnx.Module) else model
    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(state) if eqx.is_array(leaf)]


def test_compressed_eqx_model_round_trips_through_like(tmp_path):
    small = _small()
    jaxlump.save(tmp_path / "small.npz", small)
    like = TokenModel(jr.key(3))  # another instance of the class: the weights come from the file
    before = _leaves(like)
    loaded = jaxlump.load(tmp_path / "small.npz", like=like)
    assert type(loaded) is TokenModel
    assert (loaded.ffns[0].up.in_features, loaded.ffns[0].up.out_features) == (8, 16)
    assert (loaded.ffns[0].down.in_features, loaded.ffns[0].down.out_features) == (16, 8)
    assert all(a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(_leaves(loaded), _leaves(small)))
    assert np.array_equal(_apply(loaded, TOKENS), _apply(small, TOKENS))
    assert all(np.array_equal(a, b) for a, b in zip(before, _leaves(like)))  # `like` is not changed
    assert jaxlump.load_info(tmp_path / "small.npz") is None
    with np.load(tmp_path / "small.npz", allow_pickle=False) as data:
        record = json.loads(str(data["__jaxlump__"][()]))["model"]
    assert (record["kind"], record["family"], record["class"]) == ("jaxlump.sites", "Equinox", "TokenModel")
    assert record["layers"][0] == {
        "path": ["ffns", 0, "up"],
        "type": "eqx.nn.Linear",
        "shape": [16, 8],
        "use_bias": True,
    }


def test_compressed_nnx_model_round_trips_through_like(tmp_path):
    model = NNXTokenModel(nnx.Rngs(0))
    small = _nnx_pruned(model)
    jaxlump.save(tmp_path / "small.npz", small)
    loaded = jaxlump.load(tmp_path / "small.npz", like=model)
    assert type(loaded) is NNXTokenModel and loaded is not model
    assert (loaded.ffn.up.in_features, loaded.ffn.up.out_features, loaded.ffn.down.in_features) == (8, 16, 16)
    assert loaded.ffn.up.kernel.shape == (8, 16) and model.ffn.up.kernel.shape == (8, 32)
    assert all(np.array_equal(a, b) for a, b in zip(_leaves(loaded), _leaves(small)))
    apply = nnx.jit(lambda m, tokens: m(tokens))
    assert np.array_equal(apply(loaded, TOKENS), apply(small, TOKENS))


class Wrapper(eqx.Module):
    ffn: eqx.Module

    def __call__(self, x):
        return self.ffn(x)


def test_load_refuses_a_bad_like(tmp_path):
    jaxlump.save(tmp_path / "small.npz", _small())
    with pytest.raises(ValueError, match=r"`like`: .*small.npz holds a TokenModel \(Equinox\).*like=<a TokenModel>"):
        jaxlump.load(tmp_path / "small.npz")
    with pytest.raises(ValueError, match=r"`like` must be a TokenModel \(Equinox\).*received a Wrapper \(Equinox\)"):
        jaxlump.load(tmp_path / "small.npz", like=Wrapper(_small().ffns[0]))
    with pytest.raises(ValueError, match=r"`like` \(a TokenModel \(Equinox\)\).*layers: in `like` but not saved: "):
        jaxlump.load(tmp_path / "small.npz", like=TokenModel(jr.key(0), widths=(32, 32)))
    other_embedding = eqx.tree_at(lambda m: m.embed.weight, _small(), jnp.zeros((32, 4)))
    with pytest.raises(ValueError, match=r"(?s)`like` .*arrays.*leaves.embed.weight: saved with shape \(32, 8\)"):
        jaxlump.load(tmp_path / "small.npz", like=other_embedding)
    mlp = eqx.nn.MLP(3, 2, 8, 1, key=jr.key(0))
    jaxlump.save(tmp_path / "mlp.npz", mlp)
    with pytest.raises(ValueError, match=r"`like` applies to files of models saved site by site.*eqx.nn.MLP"):
        jaxlump.load(tmp_path / "mlp.npz", like=TokenModel(jr.key(0)))


def test_save_and_load_reject_invalid_site_files_and_info(tmp_path):
    small = _small()
    info = SitesInfo("obs_prune", 0.5, (), {}, 0, 0, (), (), jnp.zeros(()), jnp.zeros(()), RESULTS.successful)
    with pytest.raises(TypeError, match="`info`: `model` \\(TokenModel\\) is saved site by site.*SitesInfo"):
        jaxlump.save(tmp_path / "a.npz", small, info)
    nan = eqx.tree_at(lambda m: m.norms[0].bias, small, jnp.full(8, jnp.nan))
    with pytest.raises(ValueError, match=r"`model`: .norms\[0\].bias contains NaN"):
        jaxlump.save(tmp_path / "a.npz", nan)
    with pytest.raises(TypeError, match="LayerNorm is not supported.*eqx.nn.Linear"):
        jaxlump.save(tmp_path / "a.npz", eqx.nn.LayerNorm(4))
    assert not (tmp_path / "a.npz").exists()
    jaxlump.save(tmp_path / "small.npz", small)
    with np.load(tmp_path / "small.npz", allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    arrays["leaves.head.bias"] = np.zeros(5, np.float32)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=r"(?s)bad.npz: the stored arrays do not match the stored leaves.*head.bias"):
        jaxlump.load(tmp_path / "bad.npz", like=small)


def test_a_failed_save_leaves_the_previous_file(tmp_path, monkeypatch):
    small = _small()
    jaxlump.save(tmp_path / "model.npz", small)
    saved = (tmp_path / "model.npz").read_bytes()

    def interrupted(file, **arrays):
        file.write(b"PK partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", interrupted)
    for model in (TokenModel(jr.key(1)), eqx.nn.MLP(3, 2, 8, 1, key=jr.key(0))):
        with pytest.raises(OSError, match="disk full"):
            jaxlump.save(tmp_path / "model.npz", model)
        assert (tmp_path / "model.npz").read_bytes() == saved
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]


# FLOPs of one call of each Linear: 2·in·out + out (bias); the token model calls each once per position (T = 6).
_EMBED, _NORM, _HEAD = 32 * 8, 8 + 8, 8 * 32 + 32


def _ffn(hidden: int) -> tuple[int, int]:
    """(parameters, FLOPs per call) of an FFN 8 → hidden → 8 with biases."""
    return (8 * hidden + hidden) + (hidden * 8 + 8), (2 * 8 * hidden + hidden) + (2 * hidden * 8 + 8)


@pytest.mark.parametrize("family", ["eqx", "nnx"])
def test_cost_of_a_model_of_sites_against_a_hand_count(family):
    if family == "eqx":
        model = TokenModel(jr.key(0))
        model = eqx.tree_at(lambda m: m.embed.weight, model, model.embed.weight.at[0].set(0.0))
        small = _pruned(model)
    else:
        model = NNXTokenModel(nnx.Rngs(0))
        model.embed.embedding[...] = model.embed.embedding[...].at[0].set(0.0)
        small = _nnx_pruned(model)
    zero_biases = 8 if family == "eqx" else 8 + 8 + 32  # eqx.nn.LayerNorm's bias; NNX: every bias starts at 0
    for network, hidden in ((model, 32), (small, 16)):
        params, ffn_flops = _ffn(hidden)
        per_call = ffn_flops + 2 * 8 * 32 + 32
        c = jaxlump.cost(network)
        assert int(c.dense_params) == _EMBED + _NORM + params + _HEAD
        assert int(c.nonzeros) == int(c.dense_params) - 8 - zero_biases - (hidden if family == "nnx" else 0)
        assert int(c.flops) == per_call
        assert int(jaxlump.cost(network, x=TOKENS).flops) == 6 * per_call
    assert int(jaxlump.cost(small).dense_params) == 840  # what SitesInfo.params_after reports for ffn → 16 units


def test_cost_and_latency_refuse_bad_arguments_for_a_model_of_sites():
    small = _small()
    with pytest.raises(ValueError, match=r"`neuron_masks` applies to chain models.*TokenModel"):
        jaxlump.cost(small, [jnp.ones(16, bool)])
    with pytest.raises(ValueError, match=r"`x` must be a batch .*leading batch axis.*received shapes \[\(\)\]"):
        jaxlump.cost(small, x=jnp.asarray(3))
    with pytest.raises(ValueError, match=r"`x`: `model` \(TokenModel\) cannot be applied"):
        jaxlump.cost(small, x=jnp.zeros((2, 6, 5)))
    with pytest.raises(TypeError, match=r"`model` of type LayerNorm is not supported"):
        jaxlump.cost(eqx.nn.LayerNorm(4))
    with pytest.raises(TypeError, match=r"`x`: a batch size \(4\) is only for chain models.*TokenModel"):
        jaxlump.measure_latency(small, 4)
    with pytest.raises(ValueError, match="`key` draws the random batch"):
        jaxlump.measure_latency(small, TOKENS, key=jr.key(0))


def test_latency_of_models_of_sites_on_their_inputs():
    assert jaxlump.measure_latency(_small(), TOKENS, repeats=2, warmup=0) > 0
    assert jaxlump.measure_latency(_nnx_pruned(NNXTokenModel(nnx.Rngs(0))), TOKENS, repeats=2, warmup=0) > 0


@pytest.mark.slow
def test_a_model_compressed_by_a_compressor_round_trips_and_costs_what_info_says(tmp_path):
    model = TokenModel(jr.key(0))
    small, info = jaxlump.baselines.obs_prune(model, TOKENS, 0.5)
    assert int(jaxlump.cost(small).dense_params) == info.params_after
    assert int(jaxlump.cost(model).dense_params) == info.params_before
    jaxlump.save(tmp_path / "small.npz", small)
    loaded = jaxlump.load(tmp_path / "small.npz", like=model)
    assert type(loaded) is TokenModel and loaded.ffns[0].up.out_features == info.widths_after["ffns[0]"]
    assert np.array_equal(_apply(loaded, TOKENS), _apply(small, TOKENS))
