"""save / load: every model kind round-trips with its new widths; corrupted files give path-level errors."""

import functools
import json
import re

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from flax import nnx

from jaxlump._errors import RESULTS
from jaxlump._io.serialisation import FORMAT, load, load_info, save
from jaxlump._model import LumpedMLP, from_chain, to_chain
from jaxlump._model.network import DenseChain
from jaxlump._results.accounting import Cost
from jaxlump._results.info import Certificate, CompressionInfo


def _keep_neurons(chain: DenseChain, keep) -> DenseChain:
    """The chain restricted to the hidden neurons `keep[l]` of each hidden layer (a hand-made 'compression')."""
    rows = [*keep, np.arange(chain.widths[-1])]
    cols = [np.arange(chain.widths[0]), *keep]
    weights = tuple(w[r][:, c] for w, r, c in zip(chain.weights, rows, cols, strict=True))
    biases = tuple(b[r] for b, r in zip(chain.biases, rows, strict=True))
    return DenseChain(weights, biases, chain.activations, chain.use_bias)


@functools.cache  # models are immutable; building one per test only repeats JAX compilations
def _lumped(dtype=jnp.float64) -> LumpedMLP:
    """A LumpedMLP with hidden widths (7, 16), as a compressed 3-20-20-2 MLP would give."""
    mlp = eqx.nn.MLP(3, 2, 20, 2, activation=jnp.tanh, dtype=dtype, key=jr.key(0))
    model = from_chain(_keep_neurons(to_chain(mlp), [np.arange(7), np.arange(2, 18)]), like=mlp)
    assert isinstance(model, LumpedMLP) and model.widths == (3, 7, 16, 2)
    return model


def _assert_same_model(loaded, original, x):
    assert type(loaded) is type(original)
    a, b = to_chain(loaded), to_chain(original)
    assert (a.widths, a.activations, a.use_bias) == (b.widths, b.activations, b.use_bias)
    for new, old in zip(a.weights + a.biases, b.weights + b.biases, strict=True):
        assert new.dtype == old.dtype and np.array_equal(new, old)
    assert np.array_equal(jax.vmap(loaded)(x), jax.vmap(original)(x))


def _rewrite(path, **changes):
    """Rewrite the archive at `path` with some entries replaced (`None` deletes one)."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    arrays.update(changes)
    with open(path, "wb") as file:
        np.savez(file, **{key: a for key, a in arrays.items() if a is not None})


def _record(path) -> dict:
    with np.load(path, allow_pickle=False) as data:
        return json.loads(str(data["__jaxlump__"][()]))


def _with_record(path, edit):
    record = _record(path)
    edit(record)
    _rewrite(path, __jaxlump__=np.asarray(json.dumps(record)))


@pytest.fixture
def x():
    return jr.normal(jr.key(42), (6, 3), jnp.float64)


@pytest.mark.parametrize("scan", [False, True])
def test_mlp_round_trip(tmp_path, x, scan):
    mlp = eqx.nn.MLP(3, 2, 8, 3, activation=jax.nn.relu, use_final_bias=False, scan=scan, key=jr.key(1))
    save(tmp_path / "mlp.npz", mlp)
    loaded = load(tmp_path / "mlp.npz")
    _assert_same_model(loaded, mlp, x)
    assert (loaded.scan, loaded.width_size, loaded.depth, loaded.use_final_bias) == (scan, 8, 3, False)


def test_compressed_mlp_keeps_its_new_width(tmp_path, x):
    mlp = eqx.nn.MLP(3, 2, 12, 2, activation=jax.nn.sigmoid, key=jr.key(2))
    small = from_chain(_keep_neurons(to_chain(mlp), [np.arange(5), np.arange(1, 6)]), like=mlp)
    save(tmp_path / "small.npz", small)
    loaded = load(tmp_path / "small.npz")
    assert isinstance(loaded, LumpedMLP) and loaded.width_size == (5, 5)
    assert _record(tmp_path / "small.npz")["model"]["widths"] == [3, 5, 5, 2]
    _assert_same_model(loaded, small, x)


def test_depth_zero_mlp_round_trip(tmp_path, x):
    mlp = eqx.nn.MLP(3, 4, 9, 0, key=jr.key(3))
    save(tmp_path / "linear.npz", mlp)
    loaded = load(tmp_path / "linear.npz")
    _assert_same_model(loaded, mlp, x)
    assert loaded.width_size == 9


def test_lumped_mlp_with_unequal_widths_round_trip(tmp_path, x):
    model = _lumped()
    save(tmp_path / "lumped.npz", model)
    loaded = load(tmp_path / "lumped.npz")
    assert loaded.widths == (3, 7, 16, 2)
    _assert_same_model(loaded, model, x)


def test_sequential_round_trip_without_some_biases(tmp_path, x):
    seq = eqx.nn.Sequential(
        [
            eqx.nn.Linear(3, 6, key=jr.key(4)),
            eqx.nn.Lambda(jnp.tanh),
            eqx.nn.Linear(6, 5, use_bias=False, key=jr.key(5)),
            eqx.nn.Lambda(jax.nn.relu),
            eqx.nn.Linear(5, 4, key=jr.key(6)),
            eqx.nn.Identity(),
            eqx.nn.Linear(4, 2, key=jr.key(7)),
        ]
    )
    save(tmp_path / "seq.npz", seq)
    loaded = load(tmp_path / "seq.npz")
    _assert_same_model(loaded, seq, x)
    assert [type(layer).__name__ for layer in loaded.layers] == [type(layer).__name__ for layer in seq.layers]
    assert loaded.layers[2].bias is None
    with np.load(tmp_path / "seq.npz", allow_pickle=False) as data:
        assert "layers[1].bias" not in data.files and data["layers[1].weight"].shape == (5, 6)


def test_dense_chain_and_nnx_round_trip(tmp_path, x):
    chain = _keep_neurons(to_chain(eqx.nn.MLP(3, 2, 6, 1, activation=jnp.tanh, key=jr.key(8))), [np.arange(4)])
    save(tmp_path / "chain.npz", chain)
    _assert_same_model(load(tmp_path / "chain.npz"), chain, x)
    rngs = nnx.Rngs(0)
    seq = nnx.Sequential(
        nnx.Linear(3, 5, param_dtype=jnp.float64, rngs=rngs),
        nnx.tanh,
        nnx.Linear(5, 2, use_bias=False, param_dtype=jnp.float64, rngs=rngs),
    )
    save(tmp_path / "nnx.npz", seq)
    loaded = load(tmp_path / "nnx.npz")
    assert isinstance(loaded, nnx.Sequential) and np.array_equal(loaded(x), seq(x))
    linear = nnx.Linear(3, 2, param_dtype=jnp.float64, rngs=rngs)
    save(tmp_path / "nnx_linear.npz", linear)
    loaded = load(tmp_path / "nnx_linear.npz")
    assert isinstance(loaded, nnx.Linear) and np.array_equal(loaded(x), linear(x))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64, jnp.bfloat16])
def test_dtype_preserved(tmp_path, dtype):
    model = _lumped(dtype)
    save(tmp_path / "model.npz", model)
    loaded = load(tmp_path / "model.npz")
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(eqx.filter(loaded, eqx.is_array))} == {jnp.dtype(dtype)}
    arrays = [jax.tree_util.tree_leaves(eqx.filter(m, eqx.is_array)) for m in (loaded, model)]
    for new, old in zip(*arrays, strict=True):
        assert np.array_equal(np.asarray(new, np.float64), np.asarray(old, np.float64))


def test_path_is_used_exactly_and_model_untouched(tmp_path, x):
    model = _lumped()
    before = [np.array(leaf) for leaf in jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array))]
    save(str(tmp_path / "model.jaxlump"), model)
    assert [p.name for p in tmp_path.iterdir()] == ["model.jaxlump"]
    after = jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array))
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def _info(batched: bool = False, knob: float = 0.25, result=RESULTS.ode_solve_failed) -> CompressionInfo:
    """What compressing a 3-9-16-2 network into `_lumped()`'s 3-7-16-2 would record; `batched`: two such
    records stacked along a leading axis, as `jax.vmap` over ε gives."""
    if batched:
        pair = (_info(knob=0.25, result=RESULTS.successful), _info(knob=0.5, result=RESULTS.nonfinite_result))
        return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *pair)
    return CompressionInfo(
        method="lump",
        structured=True,
        knob=jnp.asarray(knob),
        partitions=(jnp.asarray([0, 1, 1, -1, 2, 3, 4, 5, 6]), jnp.arange(16)),
        weight_masks=(jnp.ones((7, 3), bool), jnp.ones((16, 7), bool), jnp.ones((2, 16), bool).at[0, 1].set(False)),
        widths_before=(3, 9, 16, 2),
        widths_after=jnp.asarray([3, 7, 16, 2]),
        cost_before=Cost(jnp.asarray(44), jnp.asarray(40), jnp.asarray(82)),
        cost_after=Cost(jnp.asarray(25), jnp.asarray(25), jnp.asarray(45)),
        certificate=Certificate(jnp.asarray(knob / 2), jnp.asarray(0.05), jnp.asarray(jnp.nan), jnp.asarray(1.5)),
        result=result,
    )


@pytest.mark.parametrize("batched", [False, True])
def test_info_round_trip(tmp_path, batched):
    info = _info(batched)
    save(tmp_path / "model.npz", _lumped(), info)
    model, loaded = load(tmp_path / "model.npz"), load_info(tmp_path / "model.npz")
    assert isinstance(model, LumpedMLP) and isinstance(loaded, CompressionInfo)
    assert (loaded.method, loaded.structured, loaded.widths_before) == ("lump", True, (3, 9, 16, 2))
    assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(info)
    for new, old in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(info), strict=True):
        assert np.asarray(new).dtype == np.asarray(old).dtype
        np.testing.assert_array_equal(np.asarray(new), np.asarray(old))
    assert np.asarray(RESULTS[loaded.result]).tolist() == np.asarray(RESULTS[info.result]).tolist()
    np.testing.assert_allclose(loaded.percent_of_original, 100 * 25 / 44)


def test_info_without_optional_parts(tmp_path):
    info = eqx.tree_at(lambda i: (i.weight_masks, i.certificate), _info(), (None, None), is_leaf=lambda v: v is None)
    save(tmp_path / "model.npz", _lumped(), info)
    loaded = load_info(tmp_path / "model.npz")
    assert loaded.weight_masks is None and loaded.certificate is None and len(loaded.partitions) == 2
    save(tmp_path / "plain.npz", _lumped())
    assert load_info(tmp_path / "plain.npz") is None


def test_corrupted_shape_names_the_array(tmp_path):
    save(tmp_path / "model.npz", _lumped())
    _rewrite(tmp_path / "model.npz", **{"layers[1].weight": np.zeros((12, 7))})
    with pytest.raises(ValueError, match=re.escape("layers[1].weight: expected (16, 7), found (12, 7)")):
        load(tmp_path / "model.npz")


def test_missing_extra_and_retyped_arrays_are_all_named(tmp_path):
    save(tmp_path / "model.npz", _lumped(), _info())
    _rewrite(
        tmp_path / "model.npz",
        **{
            "layers[0].bias": None,
            "layers[2].weight": np.zeros((2, 16), np.float32),
            "layers[9].weight": np.zeros(3),
        },
    )
    with pytest.raises(ValueError) as error:
        load(tmp_path / "model.npz")
    message = str(error.value)
    assert "model.npz" in message and "widths (3, 7, 16, 2)" in message
    assert "layers[0].bias: missing (expected shape (7,))" in message
    assert "layers[2].weight: expected dtype float64, found float32" in message
    assert "layers[9].weight: unexpected array" in message
    save(tmp_path / "info.npz", _lumped(), _info())
    _rewrite(tmp_path / "info.npz", **{"info.partitions[0]": np.zeros(4, int)})
    with pytest.raises(ValueError, match=re.escape("info.partitions[0]: expected (9,), found (4,)")):
        load(tmp_path / "info.npz")


def test_not_a_jaxlump_file(tmp_path):
    (tmp_path / "text.npz").write_text("hello")
    np.save(tmp_path / "single.npy", np.zeros(3))
    np.savez(tmp_path / "plain.npz", weight=np.zeros(3))
    for name in ("text.npz", "single.npy", "plain.npz"):
        with pytest.raises(ValueError, match=rf"`path` .*{re.escape(name)} is not a jaxlump model file"):
            load(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "absent.npz")


def test_format_version_and_structure_checked(tmp_path):
    save(tmp_path / "model.npz", _lumped())
    _with_record(tmp_path / "model.npz", lambda r: r.update(version=99))
    with pytest.raises(ValueError, match="format version 99; this version of jaxlump reads version 2"):
        load(tmp_path / "model.npz")
    _with_record(tmp_path / "model.npz", lambda r: r.update(version=2, format="other"))
    with pytest.raises(ValueError, match="not a jaxlump model file"):
        load(tmp_path / "model.npz")
    _with_record(tmp_path / "model.npz", lambda r: r.update(format=FORMAT) or r["model"].update(widths=[3, 0, 16, 2]))
    with pytest.raises(ValueError, match=r"model\.widths must be a list of at least two positive integers"):
        load(tmp_path / "model.npz")
    _with_record(tmp_path / "model.npz", lambda r: r["model"].update(widths=[3, 7, 16, 2], activations=["mish"] * 3))
    with pytest.raises(ValueError, match=r"model\.activations must be a list of 3 names"):
        load(tmp_path / "model.npz")


def test_inconsistent_kind_options_refused(tmp_path):
    save(tmp_path / "model.npz", _lumped())
    _with_record(
        tmp_path / "model.npz",
        lambda r: r["model"].update(kind="eqx.nn.MLP", options={"scan": False, "width_size": 7}),
    )
    with pytest.raises(ValueError, match="structure of the eqx.nn.MLP cannot be rebuilt.*equal hidden widths"):
        load(tmp_path / "model.npz")
    seq = eqx.nn.Sequential([eqx.nn.Linear(3, 4, key=jr.key(0)), eqx.nn.Lambda(jnp.tanh)])
    save(tmp_path / "seq.npz", seq)
    _with_record(tmp_path / "seq.npz", lambda r: r["model"]["options"].update(layout=["linear", "relu"]))
    with pytest.raises(ValueError, match=r"give activations \('relu',\).*the record has \('tanh',\)"):
        load(tmp_path / "seq.npz")
    _with_record(tmp_path / "seq.npz", lambda r: r["model"]["options"].update(layout=["linear", "tanh", "relu"]))
    with pytest.raises(ValueError, match="cannot be rebuilt.*must directly follow"):
        load(tmp_path / "seq.npz")
    mlp = eqx.nn.MLP(3, 2, 4, 1, activation=jnp.tanh, key=jr.key(0))
    save(tmp_path / "mlp.npz", mlp)
    _with_record(tmp_path / "mlp.npz", lambda r: r["model"].update(activations=["sigmoid", "identity"]))
    with pytest.raises(ValueError, match="mlp.npz: the loaded eqx.nn.MLP computes another function than the saved"):
        load(tmp_path / "mlp.npz")


def test_malformed_info_and_nonfinite_weights_in_file_refused(tmp_path):
    save(tmp_path / "model.npz", _lumped(), _info())
    _with_record(tmp_path / "model.npz", lambda r: r["info"].pop("n_partitions"))
    with pytest.raises(ValueError, match="model.npz: the stored CompressionInfo record is malformed.*n_partitions"):
        load_info(tmp_path / "model.npz")
    save(tmp_path / "nan.npz", _lumped())
    _rewrite(tmp_path / "nan.npz", **{"layers[2].weight": np.full((2, 16), np.nan)})
    with pytest.raises(ValueError, match="cannot be rebuilt.*layer 2 weight` contains 32 NaN"):
        load(tmp_path / "nan.npz")


def test_save_refuses_bad_inputs(tmp_path):
    with pytest.raises(TypeError, match="not supported"):
        save(tmp_path / "a.npz", eqx.nn.LayerNorm(4))  # holds no layer jaxlump knows
    with pytest.raises(TypeError, match="`info` must be a jaxlump CompressionInfo"):
        save(tmp_path / "a.npz", _lumped(), {"method": "lump"})
    bad = eqx.tree_at(lambda m: m.layers[1].bias, _lumped(), jnp.full(16, jnp.inf))
    with pytest.raises(ValueError, match="layer 1 bias.*NaN or inf"):
        save(tmp_path / "a.npz", bad)
    mixed = eqx.tree_at(lambda m: m.layers[0].bias, _lumped(), jnp.zeros(7, jnp.float32))
    with pytest.raises(ValueError, match=r"mixes parameter dtypes \['float32', 'float64'\]"):
        save(tmp_path / "a.npz", mixed)
    assert not (tmp_path / "a.npz").exists()


# --- issue 13: pairs, damaged files, traced values, SkipMLP, declared activations ---------------------------------


def test_info_of_another_model_is_refused(tmp_path):
    """The info must describe the model: widths, partitions and masks are checked against it."""
    other = eqx.nn.MLP(3, 2, 5, 2, activation=jnp.tanh, key=jr.key(1))
    with pytest.raises(ValueError, match=r"`info` does not describe `model` \(widths \(3, 5, 5, 2\)\).*widths_after"):
        save(tmp_path / "a.npz", other, _info())
    wrong_labels = eqx.tree_at(lambda i: i.partitions[0], _info(), jnp.asarray([0, 1, 1, -1, 2, 3, 4, 5, 9]))
    with pytest.raises(ValueError, match=r"partitions\[0\].*labels in \[-1, 7\)"):
        save(tmp_path / "a.npz", _lumped(), wrong_labels)
    wrong_masks = eqx.tree_at(lambda i: i.weight_masks, _info(), (jnp.ones((7, 3), bool),) * 3)
    with pytest.raises(ValueError, match="weight masks have shapes"):
        save(tmp_path / "a.npz", _lumped(), wrong_masks)
    assert not (tmp_path / "a.npz").exists()
    masked = eqx.nn.MLP(3, 2, 9, 1, key=jr.key(2))  # the masked (fixed-shape) form keeps the widths before
    info = CompressionInfo("lump", True, jnp.asarray(0.1), (jnp.asarray([0, 0, 1, 2, 3, 4, 5, 6, 6]),), None,
                           (3, 9, 2), jnp.asarray([3, 7, 2]), _info().cost_before, _info().cost_after, None,
                           RESULTS.successful)  # fmt: skip
    save(tmp_path / "masked.npz", masked, info)
    assert load_info(tmp_path / "masked.npz").widths_before == (3, 9, 2)


def test_damaged_files_raise_a_clear_error_naming_the_path(tmp_path):
    """Every single-byte flip and every truncation either loads the same model or raises ValueError naming the
    file — never a raw zipfile/zlib error, never a different model."""
    save(tmp_path / "model.npz", _lumped(), _info())
    data = (tmp_path / "model.npz").read_bytes()
    x = jr.normal(jr.key(3), (4, 3), jnp.float64)
    expected = jax.vmap(_lumped())(x)
    positions = sorted(set(np.linspace(0, len(data) - 1, 60).astype(int).tolist()))
    for k, position in enumerate(positions):
        damaged = tmp_path / f"flip{k}.npz"
        damaged.write_bytes(data[:position] + bytes([data[position] ^ 0x10]) + data[position + 1 :])
        try:
            model = load(damaged)
        except ValueError as e:
            assert str(damaged) in str(e)
        else:  # a flip in unused zip metadata can be harmless, but then the model is the same
            assert np.array_equal(jax.vmap(model)(x), expected)
    for k, length in enumerate((0, 10, len(data) // 2, len(data) - 1)):
        truncated = tmp_path / f"cut{k}.npz"
        truncated.write_bytes(data[:length])
        with pytest.raises(ValueError, match=re.escape(str(truncated))):
            load(truncated)


def test_save_under_jit_says_it_needs_concrete_values(tmp_path):
    @jax.jit
    def step(params):
        save(tmp_path / "traced.npz", eqx.combine(params, static))
        return params

    params, static = eqx.partition(_lumped(), eqx.is_array)
    with pytest.raises(TypeError, match="`save` needs concrete values.*traced"):
        step(params)
    assert not (tmp_path / "traced.npz").exists()


def test_skip_mlp_round_trips_and_costs(tmp_path):
    """Linearity merging's result, with a hidden layer of width 0 carried by a skip, saves, loads and costs."""
    from jaxlump import SkipMLP, cost

    keys = jr.split(jr.key(4), 6)
    model = SkipMLP(
        (jr.normal(keys[0], (4, 3)), jnp.zeros((0, 4)), jnp.zeros((2, 0))),
        (jr.normal(keys[1], (4,)), jnp.zeros(0), jr.normal(keys[2], (2,))),
        ("relu", "relu", "identity"),
        (True, False, True),
        skips=(None, None, jr.normal(keys[3], (2, 7))),
        skip_sources=((), (), (1, 0)),
    )
    save(tmp_path / "skip.npz", model)
    loaded = load(tmp_path / "skip.npz")
    assert type(loaded) is SkipMLP and loaded.widths == (3, 4, 0, 2) and loaded.skip_sources == model.skip_sources
    x = jr.normal(jr.key(5), (6, 3), jnp.float64)
    assert np.array_equal(loaded(x), model(x))
    assert int(cost(loaded).dense_params) == int(cost(model).dense_params) == 12 + 4 + 2 + 14
    with pytest.raises(TypeError, match="SkipMLP.*cannot lump, prune or reconstruct.*saved and loaded"):
        to_chain(model)


def test_activations_round_trip_as_the_same_function(tmp_path):
    from jaxlump import Activation

    leaky = functools.partial(jax.nn.leaky_relu, negative_slope=0.3)
    mlp = eqx.nn.MLP(3, 2, 4, 1, activation=leaky, final_activation=jax.nn.sigmoid, key=jr.key(6))
    save(tmp_path / "leaky.npz", mlp)
    loaded = load(tmp_path / "leaky.npz")
    assert loaded.activation.func is jax.nn.leaky_relu and loaded.activation.keywords == {"negative_slope": 0.3}
    assert loaded.final_activation is jax.nn.sigmoid
    x = 3.0 * jr.normal(jr.key(7), (8, 3), jnp.float64)
    assert np.array_equal(jax.vmap(loaded)(x), jax.vmap(mlp)(x))

    def declare(cap):
        return Activation("capped_relu", lambda z: jnp.clip(z, 0.0, cap),
                          lambda z: ((z > 0) & (z < cap)).astype(z.dtype), 1.0, kinked=True)  # fmt: skip

    capped = declare(6.0)
    seq = eqx.nn.Sequential(
        [eqx.nn.Linear(3, 4, key=jr.key(8)), eqx.nn.Lambda(capped), eqx.nn.Linear(4, 1, key=jr.key(9))]
    )
    save(tmp_path / "capped.npz", seq)
    assert load(tmp_path / "capped.npz").layers[1].fn is capped
    declare(0.5)  # the name now means another function: the file must not load as if nothing changed
    with pytest.raises(ValueError, match="computes another function than the saved one.*declared differently"):
        load(tmp_path / "capped.npz")


# --- bad-input run of 2026-12-06: every field of the structure record is checked against one schema --------------


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda r: r.update(version=2.0), r"format version 2\.0; this version of jaxlump reads version 2"),
        (lambda r: r.update(comment="hand-edited"), r"field header must be a JSON object with the fields .*'comment'"),
        (lambda r: r.update(info=[]), r"field header\.info must be a JSON object or null; found \[\]"),
        (lambda r: r["model"]["options"].clear(), r"model\.options\.scan must be true or false; found nothing \(the"),
        (
            lambda r: r["model"]["options"].update(scan="yes"),
            r"model\.options\.scan must be true or false; found 'yes'",
        ),
        (lambda r: r["model"]["options"].update(width_size=-3), r"model\.options\.width_size must be a non-negative"),
        (
            lambda r: r["model"]["options"].update(depth=1),
            r"field model\.options must be .*unknown field\(s\) \['depth'",
        ),
        (lambda r: r["model"].pop("use_bias"), r"model\.use_bias must be a list of 2 booleans; found nothing"),
        (lambda r: r["model"].update(use_bias=[1, 1]), r"model\.use_bias must be a list of 2 booleans; found \[1, 1\]"),
        (lambda r: r["model"].update(widths=[3, True, 2]), r"model\.widths must be a list of at least two positive"),
        (lambda r: r["model"].update(activations=[["tanh"], "identity"]), r"model\.activations must be a list of 2"),
    ],
)
def test_bad_structure_record_refused(tmp_path, edit, match):
    """Each refusal names the file, the field, what was found and what is accepted (the run found `options: {}` and
    `scan: 'yes'` accepted, the first by luck of the rebuild, the second read as True)."""
    save(tmp_path / "mlp.npz", eqx.nn.MLP(3, 2, 4, 1, activation=jnp.tanh, key=jr.key(0)))
    _with_record(tmp_path / "mlp.npz", edit)
    with pytest.raises(ValueError, match=r"`path` .*mlp\.npz: .*" + match):
        load(tmp_path / "mlp.npz")


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda r: r.update(method=12), r"info\.method must be a string; found 12"),
        (lambda r: r.update(structured="yes"), r"info\.structured must be true or false; found 'yes'"),
        (lambda r: r.update(n_partitions=True), r"info\.n_partitions must be a non-negative integer; found True"),
        (lambda r: r.update(n_weight_masks=-1), r"info\.n_weight_masks must be a non-negative integer or null"),
        (lambda r: r.update(result_messages=[0]), r"info\.result_messages must be a result message"),
        (lambda r: r["arrays"].update({"info.knob": [[], 5]}), r"info\.arrays must be a JSON object mapping each"),
        (
            lambda r: r.update(extra=1),
            r"field info must be a JSON object with the fields .*unknown field\(s\) \['extra'",
        ),
    ],
)
def test_bad_info_record_refused(tmp_path, edit, match):
    save(tmp_path / "model.npz", _lumped(), _info())
    _with_record(tmp_path / "model.npz", lambda r: edit(r["info"]))
    with pytest.raises(ValueError, match=r"model\.npz: the stored CompressionInfo record is malformed: .*" + match):
        load_info(tmp_path / "model.npz")
