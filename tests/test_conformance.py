"""One conformance suite over every compressor: call shape, purity (eqx and mutable NNX models), determinism,
type stability, the info, and a bad-input matrix whose test ids name the class of bad input."""

import functools
import inspect
import re

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from _models import ByteTransformer
from _vision import NnxCNN, SmallCNN
from flax import nnx

import jaxlump
from jaxlump import baselines as B
from jaxlump._model.network import GATED_SUPPORTED

MODEL = eqx.nn.MLP(3, 2, 12, 2, activation=jax.nn.relu, key=jr.key(0))
X = jr.normal(jr.key(1), (96, 3)) + 0.5


def _nnx_model():
    """The NNX twin of `MODEL`'s shapes and dtype (float64), so it reuses the programs the eqx cases compiled."""
    rngs = nnx.Rngs(0)
    return nnx.Sequential(
        nnx.Linear(3, 12, param_dtype=jnp.float64, rngs=rngs),
        jax.nn.relu,
        nnx.Linear(12, 12, param_dtype=jnp.float64, rngs=rngs),
        jax.nn.relu,
        nnx.Linear(12, 2, param_dtype=jnp.float64, rngs=rngs),
    )


# name -> (compress(model, x_calib, knob), a mild knob, a strong knob, whether data is required, jittable)
COMPRESSORS = {
    "lump": (lambda m, x, k: jaxlump.lump(m, x, k, certify_ode=False), 0.1, 1.0, False, False),
    "lump_masked": (lambda m, x, k: jaxlump.lump_masked(m, x, k), 0.1, 1.0, False, True),
    "lump_dynamical": (
        lambda m, x, k: jaxlump.lump(m, x, k, discrepancy=jaxlump.Dynamical(), certify_ode=False),
        0.1,
        1.0,
        True,
        False,
    ),
    "exact_lump": (lambda m, x, k: B.exact_lump(m, x, k), None, 0, False, False),
    "magnitude": (lambda m, x, k: B.magnitude(m, x, k), 0.2, 0.8, False, True),
    "random": (lambda m, x, k: B.random(m, x, k, key=jr.key(2)), 0.2, 0.8, False, True),
    "wanda": (lambda m, x, k: B.wanda(m, x, k), 0.2, 0.8, True, True),
    "elimination_compensation": (lambda m, x, k: B.elimination_compensation(m, x, k), 0.2, 0.8, True, True),
    "structured_prune": (lambda m, x, k: B.structured_prune(m, x, k), 0.2, 0.8, False, False),
    "linearity_merge": (lambda m, x, k: B.linearity_merge(m, x, k), 1.0, 0.5, True, False),
    "proportional_lump": (lambda m, x, k: B.proportional_lump(m, x, k), 0.0, 0.5, False, False),
    "lump_then_prune": (lambda m, x, k: jaxlump.lump_then_prune(m, x, k, eps_grid=(0.0, 0.5)), 180, 100, True, False),
}
KNOB_NAMES = {"exact_lump": "knob", "lump_then_prune": "target", "linearity_merge": "tau", "proportional_lump": "tol"}


def _compress(name, model, x, strong=False):
    compress, mild, strong_knob, _, _ = COMPRESSORS[name]
    return compress(model, x, strong_knob if strong else mild)


@functools.cache
def _jitted(name):
    """`_compress(name, MODEL, x)` under `eqx.filter_jit`: one function per compressor, so the jit test and the
    traced-data refusal share one compiled program."""
    return eqx.filter_jit(lambda x: _compress(name, MODEL, x))


def _leaves(model):
    """Every array of an eqx or NNX model, copied (NNX modules are mutable: their state is read, not the object)."""
    tree = nnx.state(model) if isinstance(model, nnx.Module) else eqx.filter(model, eqx.is_array)
    return [np.array(leaf) for leaf in jax.tree_util.tree_leaves(tree)]


# --- call shape --------------------------------------------------------------------------------------------------

REGISTERED = jaxlump.compressors()
# Compressors of other modules that do not take `throw=` yet (listed for their owners; strict: an xpass fails).
WITHOUT_THROW: set[str] = set()


def _signature_cases():
    cases = {name: entry.function for name, entry in REGISTERED.items()}
    cases["lump_masked"] = jaxlump.lump_masked
    return cases


@pytest.mark.parametrize("name, function", list(_signature_cases().items()), ids=list(_signature_cases()))
def test_signature_is_model_data_knob_then_keyword_only(name, function):
    parameters = list(inspect.signature(function).parameters.values())
    positional = [p for p in parameters if p.kind == p.POSITIONAL_OR_KEYWORD]
    assert [p.name for p in positional[:2]] == ["model", "x_calib"] and len(positional) == 3, positional
    assert all(p.default is inspect.Parameter.empty for p in positional)  # data and the knob are not optional
    rest = parameters[3:]
    assert all(p.kind == p.KEYWORD_ONLY for p in rest), [(p.name, p.kind) for p in rest]


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(strict=True, reason="no throw= yet (other module)"))
        if n in WITHOUT_THROW
        else n
        for n in [*REGISTERED, "lump_masked"]
    ],
)
def test_every_compressor_takes_throw(name):
    function = _signature_cases()[name]
    parameter = inspect.signature(function).parameters["throw"]
    assert parameter.kind == parameter.KEYWORD_ONLY and parameter.default is True


def test_reconstruct_is_the_documented_exception():
    """`reconstruct(original, compressed, x_calib, info=None, *, ...)`: two models, then data, then the optional
    info of the compressor that made `compressed`."""
    parameters = list(inspect.signature(jaxlump.reconstruct).parameters.values())
    assert [p.name for p in parameters[:4]] == ["original", "compressed", "x_calib", "info"]
    assert parameters[3].default is None and all(p.kind == p.KEYWORD_ONLY for p in parameters[4:])


# --- behaviour ---------------------------------------------------------------------------------------------------


# NNX models are mutable, so purity is checked on them too (for one compressor of each family; every compressor
# reads an NNX model through the same adapter). The slowest pairs run with `-m slow`.
_SLOW = {("lump_dynamical", "eqx"), ("lump_dynamical", "nnx"), ("lump_then_prune", "nnx"), ("exact_lump", "nnx")}
_NNX = ("lump", "lump_dynamical", "exact_lump", "magnitude", "wanda", "structured_prune", "linearity_merge")
_PURITY_CASES = [
    pytest.param(name, kind, marks=[pytest.mark.slow] if (name, kind) in _SLOW else [], id=f"{name}-{kind}")
    for name in COMPRESSORS
    for kind in ("eqx", "nnx")
    if kind == "eqx" or name in _NNX or name == "lump_then_prune"
]


@pytest.mark.parametrize("name, kind", _PURITY_CASES)
def test_purity_determinism_type_stability_and_info(name, kind):
    model = MODEL if kind == "eqx" else _nnx_model()
    before = _leaves(model)
    new, info = _compress(name, model, X)
    again, _ = _compress(name, model, X)
    assert all(np.array_equal(a, b) for a, b in zip(before, _leaves(model), strict=True)), "input model was modified"
    assert new is not model
    assert all(np.array_equal(a, b) for a, b in zip(_leaves(new), _leaves(again), strict=True)), "not deterministic"
    assert isinstance(info, jaxlump.CompressionInfo) and info.result == jaxlump.RESULTS.successful
    strong, strong_info = _compress(name, model, X, strong=True)
    assert type(strong) is type(new), "the output type depends on the knob"
    outputs = np.asarray(jax.vmap(new)(X)) if kind == "eqx" else np.asarray(new(X))
    assert outputs.shape == (X.shape[0], 2) and np.all(np.isfinite(outputs))
    # The info's sizes are those of the returned model (recounted independently), and never grow.
    recount = jaxlump.cost(new)
    if info.structured:
        assert int(recount.dense_params) == int(info.cost_after.dense_params)
        assert int(info.cost_after.dense_params) <= int(info.cost_before.dense_params)
    else:
        assert int(recount.nonzeros) == int(info.cost_after.nonzeros)
        assert int(info.cost_after.nonzeros) <= int(info.cost_before.nonzeros)
    assert int(recount.flops) > 0


@pytest.mark.parametrize("name", [n for n, entry in COMPRESSORS.items() if entry[4]])
def test_jittable_compressors_give_the_eager_result_under_jit(name):
    eager, eager_info = _compress(name, MODEL, X)
    jitted, jitted_info = _jitted(name)(X)
    for a, b in zip(_leaves(eager), _leaves(jitted), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    assert np.asarray(jitted_info.widths_after).tolist() == np.asarray(eager_info.widths_after).tolist()


# --- the bad-input matrix ----------------------------------------------------------------------------------------


def _traced(name):
    """Traced calibration data: jittable compressors must check it with error_if (a NaN raises at run time);
    the others refuse at once with the shared "needs concrete values" message."""
    jittable = COMPRESSORS[name][4]
    if jittable:
        with pytest.raises(Exception, match="x_calib"):
            jax.block_until_ready(_jitted(name)(X.at[0, 0].set(jnp.nan)))
    else:
        with pytest.raises(TypeError, match="needs concrete values but `(x_calib|model)` is traced"):
            _jitted(name)(X)


def _negative_knob(name):
    compress, *_ = COMPRESSORS[name]
    knob_name = KNOB_NAMES.get(name, "eps" if "lump" in name else "sparsity")
    with pytest.raises(ValueError, match=f"`{knob_name}`"):
        compress(MODEL, X, -0.5 if name != "lump_then_prune" else -5)


def _string_knob(name):
    compress, *_ = COMPRESSORS[name]
    with pytest.raises((TypeError, ValueError), match=KNOB_NAMES.get(name, "eps" if "lump" in name else "sparsity")):
        compress(MODEL, X, "0.5")


def _nan_weights(name):
    broken = eqx.tree_at(lambda m: m.layers[1].weight, MODEL, MODEL.layers[1].weight.at[0, 0].set(jnp.nan))
    with pytest.raises(ValueError, match="NaN"):
        _compress(name, broken, X)


def _unsupported_module(name):
    model = eqx.nn.Sequential([eqx.nn.Linear(3, 4, key=jr.key(0)), eqx.nn.Dropout(0.1)])
    with pytest.raises(TypeError, match="Dropout"):
        _compress(name, model, X)


def _bad_data(bad, error=ValueError):
    def check(name):
        with pytest.raises(error, match="x_calib"):
            _compress(name, MODEL, bad)

    return check


BAD_INPUTS = {
    "nan": _bad_data(X.at[3, 1].set(jnp.nan)),
    "inf": _bad_data(X.at[0, 0].set(jnp.inf)),
    "wrong_width": _bad_data(X[:, :2]),
    "empty": _bad_data(X[:0]),
    "one_dimensional": _bad_data(X[0]),
    "wrong_dtype": _bad_data(X.astype(jnp.complex64), TypeError),
    "not_an_array": _bad_data({"x": 1}, TypeError),
    "negative_knob": _negative_knob,
    "string_knob": _string_knob,
    "nan_weights": _nan_weights,
    "unsupported_module": _unsupported_module,
    "traced_under_jit": _traced,
}


@pytest.mark.parametrize("bad", BAD_INPUTS)
@pytest.mark.parametrize("name", COMPRESSORS)
def test_bad_input_is_refused_by_name(name, bad):
    if bad in ("negative_knob", "string_knob") and name == "exact_lump":
        pytest.skip("exact_lump has no knob; its refusal of any non-zero knob is tested in test_exact_knob_refused")
    BAD_INPUTS[bad](name)


_NUMBER_OPTIONS = ("ridge", "damping")
_NUMBER_CASES = [
    (name, option)
    for name, entry in REGISTERED.items()
    for option in _NUMBER_OPTIONS
    if option in inspect.signature(entry.function).parameters
]


@pytest.mark.parametrize("name, option", _NUMBER_CASES, ids=[f"{n}-{o}" for n, o in _NUMBER_CASES])
@pytest.mark.parametrize("value, error", [("0.1", TypeError), (True, TypeError), (-1.0, ValueError)])
def test_one_validator_per_numeric_option(name, option, value, error):
    """`ridge` and `damping` are checked alike by every compressor: a string or a bool is a TypeError, a negative
    number a ValueError, both naming the option (in the tests the run-time type checker may refuse a string or a
    bool first, also naming it)."""
    knob = {"lump_then_prune": 200, "exact_lump": None}.get(name, 0.3)
    with pytest.raises(error, match=f"`{option}` must be a finite number|typechecking parameter '{option}'"):
        REGISTERED[name].function(MODEL, X, knob, **{option: value})


@pytest.mark.parametrize("name", list(REGISTERED))
def test_a_model_that_is_no_module_is_refused_naming_model(name):
    """With or without data, before anything else is asked of it (a missing `x_calib` was reported first)."""
    knob = {"lump_then_prune": 200, "exact_lump": None}.get(name, 0.3)
    for x in (None, X):
        with pytest.raises(TypeError, match="`model` of type object is not supported"):
            REGISTERED[name].function(object(), x, knob)


def test_exact_knob_refused():
    with pytest.raises(ValueError, match="`knob` must be None or 0"):
        B.exact_lump(MODEL, X, 0.3)


@pytest.mark.parametrize("name", [n for n, entry in COMPRESSORS.items() if entry[3]])
def test_missing_data_is_refused(name):
    with pytest.raises((ValueError, TypeError), match="x_calib"):
        _compress(name, MODEL, None)


RECONSTRUCT_BAD = {
    "nan": ({"x_calib": X.at[3, 1].set(jnp.nan)}, ValueError, "x_calib"),
    "wrong_width": ({"x_calib": X[:, :2]}, ValueError, "x_calib"),
    "empty": ({"x_calib": X[:0]}, ValueError, "x_calib"),
    "negative_ridge": ({"ridge": -1.0}, ValueError, "ridge"),
    "string_ridge": ({"ridge": "0.1"}, TypeError, "ridge"),
    "wrong_info": ({"info": "info"}, TypeError, "info"),
    "other_model": ({"compressed": eqx.nn.MLP(4, 2, 12, 2, key=jr.key(5))}, ValueError, "compressed"),
    "non_bool_throw": ({"throw": "no"}, TypeError, "throw"),
}


@pytest.mark.parametrize("bad", RECONSTRUCT_BAD)
def test_reconstruct_bad_input_matrix(bad):
    pruned, info = B.magnitude(MODEL, X, 0.5)
    call = {"original": MODEL, "compressed": pruned, "x_calib": X, "info": info}
    options, error, match = RECONSTRUCT_BAD[bad]
    call |= options
    with pytest.raises(error, match=match):
        jaxlump.reconstruct(call.pop("original"), call.pop("compressed"), call.pop("x_calib"), call.pop("info"), **call)


SHRINK_BAD = {
    "traced_under_jit": TypeError,
    "wrong_partition_length": ValueError,
    "float_partition": TypeError,
    "stacked_info": ValueError,
    "other_model": ValueError,
}


@pytest.mark.parametrize("bad", SHRINK_BAD)
def test_shrink_bad_input_matrix(bad):
    masked, info = jaxlump.lump_masked(MODEL, X, 0.5)
    if bad == "traced_under_jit":
        call = lambda: eqx.filter_jit(lambda m: jaxlump.shrink(m, info)[1].cost_after)(masked)  # noqa: E731
    else:
        p = info.partitions
        bad_info = {
            "wrong_partition_length": lambda: eqx.tree_at(lambda i: i.partitions, info, (p[0][:-1], p[1])),
            "float_partition": lambda: eqx.tree_at(lambda i: i.partitions, info, (p[0].astype(float), p[1])),
            "stacked_info": lambda: jax.tree_util.tree_map(lambda a: jnp.stack([a, a]), info),
            "other_model": lambda: B.magnitude(eqx.nn.MLP(3, 2, 12, 3, key=jr.key(4)), None, 0.5)[1],
        }[bad]()
        call = lambda: jaxlump.shrink(masked, bad_info)  # noqa: E731
    with pytest.raises(SHRINK_BAD[bad]):
        call()


# --- models of sites: every registered compressor on a residual GELU FFN and a gated (SwiGLU) FFN ---------------
#
# Written as users write them (an Equinox module called per example, `jax.vmap`ped over tokens), tiny so that the
# programs compile quickly, and run with `jax_numpy_rank_promotion="raise"` (as equinox and diffrax test themselves).


class _GeluFFN(eqx.Module):
    up: eqx.nn.Linear
    down: eqx.nn.Linear

    def __call__(self, x):
        return self.down(jax.nn.gelu(self.up(x)))


class _SwiGLU(eqx.Module):
    gate: eqx.nn.Linear
    up: eqx.nn.Linear
    down: eqx.nn.Linear

    def __call__(self, x):
        return self.down(jax.nn.silu(self.gate(x)) * self.up(x))


class _TokenFFNModel(eqx.Module):
    """Token ids `(T,)` → logits `(T, vocab)`: embedding, one pre-LN residual GELU FFN, LM head."""

    embed: eqx.nn.Embedding
    norm: eqx.nn.LayerNorm
    ffn: _GeluFFN
    head: eqx.nn.Linear

    def __init__(self, key, d=6, hidden=12, vocab=16):
        keys = jr.split(key, 4)
        self.embed = eqx.nn.Embedding(vocab, d, key=keys[0])
        self.norm = eqx.nn.LayerNorm(d)
        self.ffn = _GeluFFN(eqx.nn.Linear(d, hidden, key=keys[1]), eqx.nn.Linear(hidden, d, key=keys[2]))
        self.head = eqx.nn.Linear(d, vocab, key=keys[3])

    def __call__(self, tokens):
        x = jax.vmap(self.embed)(tokens)
        x = x + jax.vmap(self.ffn)(jax.vmap(self.norm)(x))
        return jax.vmap(self.head)(x)


class _GatedModel(eqx.Module):
    """Features `(T, d)` → `(T, 2)`: one pre-LN residual SwiGLU FFN, then a linear head."""

    norm: eqx.nn.LayerNorm
    ffn: _SwiGLU
    head: eqx.nn.Linear

    def __init__(self, key, d=6, hidden=12):
        keys = jr.split(key, 4)
        self.norm = eqx.nn.LayerNorm(d)
        self.ffn = _SwiGLU(*(eqx.nn.Linear(d, hidden, key=k) for k in keys[:2]), eqx.nn.Linear(hidden, d, key=keys[2]))
        self.head = eqx.nn.Linear(d, 2, key=keys[3])

    def __call__(self, x):
        x = x + jax.vmap(self.ffn)(jax.vmap(self.norm)(x))
        return jax.vmap(self.head)(x)


TOKENS = jr.randint(jr.key(3), (12, 4), 0, 16)
FEATURES = jr.normal(jr.key(4), (12, 4, 6))
SITE_MODELS = {"gelu_ffn": (_TokenFFNModel(jr.key(5)), TOKENS), "swiglu": (_GatedModel(jr.key(6)), FEATURES)}
SITE_KNOBS = {"lump": 0.1, "merge_or_remove": 0.1, "exact_lump": None, "proportional_lump": 0.1}
SITE_OPTIONS = {"random": {"key": jr.key(2)}, "lump": {"certify_ode": False}}
# Compressors that cannot work site by site by design (they add a layer or take a budget for one chain).
REFUSE_SITES = {"lowrank", "linearity_merge", "linearity_to_size", "lump_then_prune"}


@pytest.fixture
def rank_promotion_raise():
    with jax.numpy_rank_promotion("raise"):
        yield


def _site_compress(name, model, x, knob=None, **options):
    knob = SITE_KNOBS.get(name, 0.3) if knob is None else knob
    return REGISTERED[name].function(model, x, knob, **SITE_OPTIONS.get(name, {}), **options)


def _outcome(name, kind):
    """What `name` does on the site model `kind`: compress it, or refuse it (and why)."""
    if name in REFUSE_SITES:
        return "refuses sites"
    # An unstructured method masks every `Linear` on its own (no gated chain), so it takes the gated model too.
    if kind == "swiglu" and REGISTERED[name].structured and not re.search(rf"\b{name}\b", GATED_SUPPORTED):
        return "refuses gated"
    activations = getattr(REGISTERED[name], "activations", None)
    if kind == "gelu_ffn" and activations is not None and "gelu_tanh" not in activations:
        return "refuses activation"
    return "compresses"


_SITE_CASES = [(name, kind) for name in REGISTERED for kind in SITE_MODELS]
_SITE_SLOW = {("lump_then_select", "gelu_ffn")}  # ~6 s; its gated case runs by default
_COMPRESSING = [
    pytest.param(*case, marks=[pytest.mark.slow] if case in _SITE_SLOW else [], id="-".join(case))
    for case in _SITE_CASES
    if _outcome(*case) == "compresses"
]
_REFUSING = [case for case in _SITE_CASES if _outcome(*case) != "compresses"]


def _ids(cases):
    return [f"{name}-{kind}" for name, kind in cases]


def _node(model, path):
    for key in path:
        model = model[key] if isinstance(key, int) else getattr(model, key)
    return model


def test_every_compressor_takes_where_and_independent():
    """`over_sites` adds `where` and `independent`, keyword-only, to every registered compressor."""
    for name, entry in REGISTERED.items():
        parameters = inspect.signature(entry.function).parameters
        assert parameters["where"].kind == inspect.Parameter.KEYWORD_ONLY and parameters["where"].default is None, name
        independent = parameters["independent"]
        assert independent.kind == inspect.Parameter.KEYWORD_ONLY and independent.default is False, name


@pytest.mark.usefixtures("rank_promotion_raise")
@pytest.mark.integration  # every compressor compiled on two new model kinds: the second test step
@pytest.mark.parametrize("name, kind", _COMPRESSING)
def test_site_model_purity_type_and_info(name, kind):
    model, x = SITE_MODELS[kind]
    before = _leaves(model)
    new, info = _site_compress(name, model, x)
    assert all(np.array_equal(a, b) for a, b in zip(before, _leaves(model), strict=True)), "input model was modified"
    assert type(new) is type(model) and new is not model
    assert isinstance(info, jaxlump.SitesInfo) and info.method == name
    assert info.result == jaxlump.RESULTS.successful
    # The widths are those of the returned model's layers (producers' rows, the consumer's columns).
    assert set(info.widths_after) == set(info.widths_before) == {s.path for s in info.sites}
    for site in info.sites:
        width = info.widths_after[site.path]
        assert 1 <= width <= info.widths_before[site.path]
        for producer in site.keys[:-1]:
            layer = _node(new, producer)
            assert layer.out_features == width and layer.weight.shape[0] == width, (site.path, producer)
        consumer = _node(new, site.keys[-1])
        assert consumer.in_features == width and consumer.weight.shape[1] == width
    # Sizes recounted on the models themselves; an unstructured method keeps shapes and reports its zeros.
    arrays = lambda m: jax.tree_util.tree_leaves(eqx.filter(m, eqx.is_inexact_array))  # noqa: E731
    assert info.params_before == sum(a.size for a in arrays(model))
    assert info.params_after == sum(a.size for a in arrays(new)) <= info.params_before
    assert info.nonzeros_before == sum(int(np.count_nonzero(a)) for a in arrays(model))
    assert info.nonzeros_after == sum(int(np.count_nonzero(a)) for a in arrays(new)) <= info.nonzeros_before
    if REGISTERED[name].structured:
        narrower = any(info.widths_after[p] < info.widths_before[p] for p in info.widths_before)
        assert (info.params_after < info.params_before) == narrower
    else:
        assert info.params_after == info.params_before and info.nonzeros_after < info.nonzeros_before
    # The reported deviation is the measured one.
    reference, output = np.asarray(jax.vmap(model)(x)), np.asarray(jax.vmap(new)(x))
    assert output.shape == reference.shape and np.all(np.isfinite(output))
    assert np.isfinite(float(info.output_max_abs))
    np.testing.assert_allclose(float(info.output_max_abs), np.max(np.abs(output - reference)), rtol=1e-5, atol=1e-6)


@pytest.mark.usefixtures("rank_promotion_raise")
@pytest.mark.parametrize("name, kind", _REFUSING, ids=_ids(_REFUSING))
def test_site_model_refused_by_design_says_why(name, kind):
    model, x = SITE_MODELS[kind]
    match = {
        "refuses sites": rf"`model` \({type(model).__name__}\) is compressed site by site, which jaxlump.{name} cannot",
        "refuses gated": "`model` has gated layers .* does not support gated layers",
        "refuses activation": "`model`.*activation 'gelu_tanh'",
    }[_outcome(name, kind)]
    with pytest.raises(TypeError, match=match):
        _site_compress(name, model, x)


def _nnx_cnn():
    model = NnxCNN(nnx.Rngs(7))
    model.eval()
    return model


# Each CNN with its images and how to read its widths: `(channels of conv1, in of conv2, out of conv2, in of head)`.
CNNS = {
    "Equinox": (
        SmallCNN(jr.key(7)),
        jr.normal(jr.key(8), (8, 1, 6, 6)),
        "head",
        lambda m: (m.conv1.out_channels, m.conv2.in_channels, m.conv2.out_channels, m.head.in_features),
    ),
    "Flax NNX": (
        _nnx_cnn(),
        jr.normal(jr.key(8), (8, 6, 6, 1)),
        "linear",
        lambda m: (m.bn1.num_features, m.conv2.in_features, m.bn2.mean.shape[0], m.linear.in_features),
    ),
}


def _cnn_outcome(name, head: str):
    """What `name` does to a CNN (channel sites only, a Linear head): `None` when it cuts its channels, else the
    error and message it refuses it with."""
    if name in REFUSE_SITES:
        return TypeError, "is compressed site by site"
    if not REGISTERED[name].structured:
        return ValueError, "no `Linear` layer to prune but its head"
    if name in ("merge_or_remove", "obs_prune"):
        return None
    return TypeError, rf"channel sites \(conv2, {head}\), which jaxlump.{name} cannot compress"


@pytest.mark.integration  # every compressor on a CNN: the second test step
@pytest.mark.parametrize("family", list(CNNS))
@pytest.mark.parametrize("name", list(REGISTERED))
def test_every_compressor_cuts_channel_sites_or_refuses_them_by_name(name, family):
    cnn, images, head, widths = CNNS[family]
    outcome = _cnn_outcome(name, head)
    if outcome is None:
        before = _leaves(cnn)
        new, info = _site_compress(name, cnn, images, 0.5)
        assert all(np.array_equal(a, b) for a, b in zip(before, _leaves(cnn), strict=True)), "input was modified"
        assert type(new) is type(cnn) and info.method == name and info.result == jaxlump.RESULTS.successful
        first, second, third, read = widths(new)
        assert first == second == info.widths_after["conv2"] < 6
        assert read == 9 * third == 9 * info.widths_after[head]
        return
    error, match = outcome
    with pytest.raises(error, match=match):
        _site_compress(name, cnn, images)


ATTENTION = ByteTransformer(vocab=32, d=16, heads=4, hidden=16, blocks=1, ffn="gelu", max_length=6, key=jr.key(9))
SEQUENCES = jr.randint(jr.key(10), (8, 6), 0, 32)


@pytest.mark.integration  # every compressor on a transformer block: the second test step
@pytest.mark.parametrize("name", list(REGISTERED))
def test_every_compressor_cuts_attention_heads_or_keeps_them_whole(name):
    """merge_or_remove and obs_prune cut the heads of `eqx.nn.MultiheadAttention` (a valid module of fewer heads,
    head_dim kept); the other structured methods compress the feed-forward site and keep the heads whole; the
    unstructured ones mask every `Linear`, heads included, keeping every shape."""
    if name in REFUSE_SITES or _outcome(name, "gelu_ffn") == "refuses activation":
        with pytest.raises(TypeError, match="is compressed site by site|activation 'gelu_tanh'"):
            _site_compress(name, ATTENTION, SEQUENCES)
        return
    new, info = _site_compress(name, ATTENTION, SEQUENCES, 0.5 if name == "merge_or_remove" else None)
    assert type(new) is ByteTransformer and info.result == jaxlump.RESULTS.successful
    attention = new.blocks[0].attention
    cut = "blocks[0].attention" in info.widths_after and REGISTERED[name].structured
    assert cut == (name in ("merge_or_remove", "obs_prune"))
    heads = info.widths_after["blocks[0].attention"] if cut else 4
    assert attention.num_heads == heads and attention.qk_size == attention.vo_size == 4
    assert attention.query_proj.weight.shape == attention.value_proj.weight.shape == (4 * heads, 16)
    assert attention.output_proj.weight.shape == (16, 4 * heads)
    reference, output = np.asarray(jax.vmap(ATTENTION)(SEQUENCES)), np.asarray(jax.vmap(new)(SEQUENCES))
    assert output.shape == reference.shape and np.all(np.isfinite(output))
    np.testing.assert_allclose(float(info.output_max_abs), np.max(np.abs(output - reference)), rtol=1e-5, atol=1e-6)


class _NNXTokenFFNModel(nnx.Module):
    def __init__(self, rngs, d=6, hidden=12, vocab=16):
        self.embed = nnx.Embed(vocab, d, rngs=rngs)
        self.norm = nnx.LayerNorm(d, rngs=rngs)
        self.up = nnx.Linear(d, hidden, rngs=rngs)
        self.down = nnx.Linear(hidden, d, rngs=rngs)
        self.head = nnx.Linear(d, vocab, rngs=rngs)

    def __call__(self, tokens):  # the batch (B, T), as NNX users call their models
        x = self.embed(tokens)
        return self.head(x + self.down(nnx.gelu(self.up(self.norm(x)))))


@pytest.mark.usefixtures("rank_promotion_raise")
@pytest.mark.parametrize(
    "name",
    [pytest.param("merge_or_remove", marks=pytest.mark.slow), pytest.param("magnitude", marks=pytest.mark.integration)],
)
def test_nnx_site_model_is_compressed_on_a_copy(name):
    model = _NNXTokenFFNModel(nnx.Rngs(0))
    before, reference = _leaves(model), np.asarray(model(TOKENS))
    new, info = _site_compress(name, model, TOKENS)
    assert type(new) is _NNXTokenFFNModel and new is not model and new.up is not model.up
    assert all(np.array_equal(a, b) for a, b in zip(before, _leaves(model), strict=True)), "input model was modified"
    assert new.up.out_features == new.down.in_features == info.widths_after["<model>"]
    state = jax.tree_util.tree_leaves(nnx.state(new))
    assert info.params_after == sum(a.size for a in state) and np.isfinite(float(info.output_max_abs))
    assert info.nonzeros_after == sum(int(np.count_nonzero(a)) for a in state)
    np.testing.assert_allclose(
        float(info.output_max_abs), np.max(np.abs(np.asarray(new(TOKENS)) - reference)), rtol=1e-5, atol=1e-6
    )


def _site_bad_data(kind, x, error, match):
    def check(name):
        model, _ = SITE_MODELS[kind]
        with pytest.raises(error, match=match):
            _site_compress(name, model, x)

    return check


def _site_bad_option(error, match, knob=None, **options):
    def check(name):
        model, x = SITE_MODELS["gelu_ffn"]
        with pytest.raises(error, match=match.format(knob=REGISTERED[name].knob)):
            _site_compress(name, model, x, knob, **options)

    return check


def _site_nan_weights(name):
    model, x = SITE_MODELS["gelu_ffn"]
    broken = eqx.tree_at(lambda m: m.ffn.up.weight, model, model.ffn.up.weight.at[0, 0].set(jnp.nan))
    with pytest.raises(ValueError, match=r"`model`'s array at `\.ffn\.up\.weight` contains 1 NaN"):
        _site_compress(name, broken, x)


def _site_traced(name):
    """Structured compressors change the sites' widths, so they refuse traced data; unstructured ones run under
    jit and check the data there."""
    if REGISTERED[name].structured:
        model, x = SITE_MODELS["swiglu" if _outcome(name, "swiglu") == "compresses" else "gelu_ffn"]
        with pytest.raises(TypeError, match="needs concrete values but `x_calib` is traced"):
            eqx.filter_jit(lambda x: _site_compress(name, model, x))(x)
    else:  # the token model, whose two maskable layers compile quickly (its ids cannot be NaN)
        model, x = SITE_MODELS["gelu_ffn"]
        jitted = eqx.filter_jit(lambda x: _site_compress(name, model, x)[1].output_max_abs)
        assert np.isfinite(float(jitted(x)))


SITE_BAD_INPUTS = {
    "nan": _site_bad_data("swiglu", FEATURES.at[0, 1, 2].set(jnp.nan), ValueError, "`x_calib` contains 1 NaN or inf"),
    "inf": _site_bad_data("swiglu", FEATURES.at[3, 0, 0].set(jnp.inf), ValueError, "`x_calib` contains 1 NaN or inf"),
    "complex": _site_bad_data("swiglu", FEATURES.astype(jnp.complex128), TypeError, "`x_calib` has complex dtype"),
    "float_token_ids": _site_bad_data("gelu_ffn", TOKENS + 0.5, ValueError, "`x_calib`: .* cannot be applied"),
    "empty": _site_bad_data("gelu_ffn", TOKENS[:0], ValueError, "`x_calib` must have one leading batch axis"),
    "no_batch_axis": _site_bad_data("gelu_ffn", TOKENS[0], ValueError, "`x_calib`: .* cannot be applied"),
    "scalar": _site_bad_data("gelu_ffn", TOKENS[0, 0], ValueError, "`x_calib` must have one leading batch axis"),
    "missing": _site_bad_data("gelu_ffn", None, ValueError, "`x_calib` is needed"),
    "negative_knob": _site_bad_option(ValueError, "`{knob}`", knob=-0.5),
    "string_knob": _site_bad_option((TypeError, ValueError), "`{knob}`", knob="0.5"),
    "where_not_callable": _site_bad_option(TypeError, "`where` must be a function", where="ffn"),
    "where_fails": _site_bad_option(ValueError, "`where` failed on `model`", where=lambda m: m.blocks),
    "where_selects_nothing": _site_bad_option(ValueError, "`where` selects no site", where=lambda m: m.norm),
    "independent_not_bool": _site_bad_option(TypeError, "`independent`", independent="yes"),
    "nan_weights": _site_nan_weights,
    "traced_under_jit": _site_traced,
}
_SITE_NAMES = [name for name in REGISTERED if _outcome(name, "gelu_ffn") == "compresses"]


@pytest.mark.usefixtures("rank_promotion_raise")
@pytest.mark.parametrize("bad", SITE_BAD_INPUTS)
@pytest.mark.parametrize("name", _SITE_NAMES)
def test_site_model_bad_input_is_refused_by_name(name, bad):
    if bad in ("negative_knob", "string_knob") and REGISTERED[name].knob is None:
        pytest.skip("exact_lump has no knob; its refusal of any non-zero knob is tested in test_exact_knob_refused")
    SITE_BAD_INPUTS[bad](name)
