"""compress_to (names, counts, fractions, widths, requested vs realised) and exact_lump."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jaxlump
from jaxlump.baselines import Global, PerLayer, compress_to, exact_lump, magnitude, realised_size, structured_prune


@pytest.fixture(scope="module")
def mlp():
    return eqx.nn.MLP(3, 2, 16, 2, activation=jnp.tanh, key=jr.key(0))


@pytest.fixture(scope="module")
def x():
    return jr.normal(jr.key(1), (128, 3))


@pytest.mark.parametrize("target", [100, 200, 300])
def test_magnitude_reaches_exact_nonzero_targets(mlp, target):
    _, info = compress_to(mlp, magnitude, target, scope=Global())
    # one global ranking prunes int(n·s) weights, so every count of pruned weights is reachable: hit exactly
    assert realised_size(info) == target


def test_lump_target_is_never_exceeded_and_close(mlp, x):
    target = 250
    _, info = compress_to(mlp, jaxlump.lump, target, x, reconstruct=False)
    assert realised_size(info) <= target
    # one more neuron in the narrowest possible spot would exceed: the result is within one neuron's cost
    assert realised_size(info) > target - (3 + 16 + 2 + 1) - 16


@pytest.mark.parametrize("target", [250, 0.3])
def test_lump_target_by_sweep_matches_lump_at_the_chosen_eps(mlp, x, target):
    small, info = compress_to(mlp, "lump", target, x)
    limit = target if isinstance(target, int) else int(target * 370)
    assert info.target.requested_size == limit and realised_size(info) <= limit
    # independent check: plain lump at the recorded ε gives the same widths and outputs
    again, again_info = jaxlump.lump(mlp, x, info.target.knob, certify_ode=False)
    assert tuple(int(w) for w in again_info.widths_after) == info.target.realised_widths
    np.testing.assert_allclose(jax.vmap(small)(x), jax.vmap(again)(x), atol=1e-8)


def test_structured_prune_target(mlp, x):
    _, info = compress_to(mlp, structured_prune, 200, x)
    assert realised_size(info) <= 200 and info.structured


def test_unreachable_and_bad_targets(mlp):
    with pytest.raises(ValueError, match="positive integer"):
        compress_to(mlp, magnitude, 0)
    with pytest.raises(ValueError, match="cannot reach"):
        compress_to(mlp, magnitude, 1, knob_range=(0.0, 0.1))
    with pytest.raises(ValueError, match="knob_range"):
        compress_to(mlp, magnitude, 10, knob_range=(0.5, 0.5))


def test_exact_lump_changes_no_output():
    # a tanh network with two planted duplicate hidden neurons in layer 1
    mlp = eqx.nn.MLP(3, 2, 6, 2, activation=jnp.tanh, key=jr.key(3))
    w0, b0 = mlp.layers[0].weight, mlp.layers[0].bias
    mlp = eqx.tree_at(lambda m: (m.layers[0].weight, m.layers[0].bias), mlp, (w0.at[1].set(w0[4]), b0.at[1].set(b0[4])))
    x = jr.normal(jr.key(2), (64, 3))
    small, info = exact_lump(mlp, x, None)
    assert info.method == "exact_lump"
    assert tuple(int(w) for w in info.widths_after) == (3, 5, 6, 2)
    np.testing.assert_allclose(jax.vmap(small)(x), jax.vmap(mlp)(x), atol=1e-10)


def test_names_and_functions_give_the_same_result(mlp):
    by_name, info_name = compress_to(mlp, "magnitude", 150)
    by_function, info_function = compress_to(mlp, magnitude, 150)
    assert info_name.target == info_function.target
    for a, b in zip(jax.tree_util.tree_leaves(by_name), jax.tree_util.tree_leaves(by_function)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "structured_prune", "lump"])
def test_a_fraction_means_the_same_for_every_method(mlp, x, method):
    _, info = compress_to(
        mlp, method, 0.5, x, **({"reconstruct": False, "certify_ode": False} if method == "lump" else {})
    )
    before = info.cost_before.dense_params if info.structured else info.cost_before.nonzeros
    # the fraction is of the unit the method is compared in, computed independently here from the info's costs
    assert info.target.kind == "fraction" and info.target.requested == 0.5
    assert info.target.original_size == int(before) == 3 * 16 + 16 + 16 * 16 + 16 + 16 * 2 + 2
    assert info.target.requested_size == int(0.5 * int(before))
    assert info.target.realised_size == realised_size(info) <= 0.5 * int(before)
    assert info.target.unit == ("dense parameters" if info.structured else "non-zeros")


def test_count_target_records_requested_and_realised(mlp, x):
    _, info = compress_to(mlp, "structured_prune", 200, x)
    assert isinstance(info, jaxlump.TargetInfo) and isinstance(info, jaxlump.CompressionInfo)
    t = info.target
    assert (t.kind, t.requested, t.requested_size, t.unit) == ("count", 200, 200, "dense parameters")
    assert t.realised_size == int(info.cost_after.dense_params) <= 200
    assert t.realised_widths == tuple(int(w) for w in info.widths_after)
    # the recorded knob reproduces the result
    _, again = structured_prune(mlp, x, t.knob)
    assert int(again.cost_after.dense_params) == t.realised_size


@pytest.mark.parametrize("widths", [(8, 8), (3, 8, 8, 2), (5, 5)])
def test_widths_target_structured_prune_is_exact_for_equal_widths(mlp, x, widths):
    small, info = compress_to(mlp, "structured_prune", widths, x)
    hidden = widths[1:-1] if len(widths) == 4 else widths
    assert info.target.realised_widths == tuple(int(w) for w in info.widths_after) == (3, *hidden, 2)
    assert tuple(layer.out_features for layer in small.layers[:-1]) == hidden
    assert info.target.requested == hidden and info.target.requested_size is None


def test_widths_target_sets_each_layer_for_structured_prune(mlp, x):
    # one fraction per layer: (8, 12) is met exactly, and the recorded fractions reproduce it
    _, info = compress_to(mlp, "structured_prune", (8, 12), x)
    assert info.target.realised_widths == (3, 8, 12, 2)
    _, again = structured_prune(mlp, x, info.target.knob)
    assert tuple(int(w) for w in again.widths_after) == (3, 8, 12, 2)


def test_widths_are_refused_for_unstructured_and_malformed(mlp, x):
    with pytest.raises(ValueError, match="unstructured"):
        compress_to(mlp, "magnitude", (8, 8))
    with pytest.raises(ValueError, match="unstructured"):
        compress_to(mlp, "lump_then_prune", (8, 8), x)
    with pytest.raises(ValueError, match="budget, not widths"):
        compress_to(mlp, "linearity_to_size", (8, 8), x)
    for bad in [(8,), (0, 8), (8, 17), (4, 8, 8, 2), (8.0, 8)]:
        with pytest.raises(ValueError, match="hidden widths"):
            compress_to(mlp, "structured_prune", bad, x)


@pytest.mark.parametrize("bad", [0.0, 1.5, -0.2, 200.0])
def test_bad_fractions(mlp, bad):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        compress_to(mlp, "magnitude", bad)


def test_bad_methods_and_target_types(mlp):
    with pytest.raises(ValueError, match="registered compressor.*lump"):
        compress_to(mlp, "magnitud", 100)
    with pytest.raises(TypeError, match="method"):
        compress_to(mlp, 3, 100)
    for bad in (True, "100", None):
        with pytest.raises(TypeError, match="target"):
            compress_to(mlp, "magnitude", bad)


def test_unreachable_structured_target_reports_the_smallest(mlp, x):
    with pytest.raises(ValueError, match=r"cannot reach.*smallest result has \d+ dense parameters"):
        compress_to(mlp, "structured_prune", 1, x)


def test_knob_that_grows_the_model_is_searched_backwards():
    # linearity_merge: a smaller τ merges more. A ReLU net with biases pushing neurons to be always active.
    relu = eqx.nn.MLP(3, 1, 12, 2, activation=jax.nn.relu, key=jr.key(5))
    relu = eqx.tree_at(lambda m: m.layers[0].bias, relu, relu.layers[0].bias + 2.0)
    xr = jr.normal(jr.key(6), (200, 3))
    _, full = jaxlump.baselines.linearity_merge(relu, xr, 1.0)
    target = int(full.cost_after.dense_params) - 1
    _, info = compress_to(relu, "linearity_merge", target, xr)
    assert info.target.realised_size <= target and info.target.knob < 1.0


def test_size_knob_methods_get_the_target_directly(mlp, x):
    _, info = compress_to(mlp, "lump_then_prune", 0.4, x, eps_grid=(0.0,))
    assert info.target.requested_size == int(0.4 * 370) and info.target.realised_size <= int(0.4 * 370)
    assert info.target.knob == int(0.4 * 370)
    assert not info.structured and info.target.unit == "non-zeros"


def test_unregistered_function_is_searched_as_a_sparsity(mlp):
    def my_pruner(model, x_calib, sparsity):
        return magnitude(model, x_calib, sparsity, scope=PerLayer())

    _, info = compress_to(mlp, my_pruner, 100)
    assert info.target.realised_size <= 100


# Widths targets: every structured method either reaches each hidden layer's width within one unit, or refuses
# before any computation with the reason. ReLU-only methods get a ReLU net of the same shape.
WIDTHS_REFUSED = ("exact_lump", "lowrank", "linearity_merge", "linearity_to_size")
WIDTHS_REACHED = (
    "lump", "lump_then_select", "merge_or_remove", "structured_prune", "obs_prune", "osscar_prune", "id_prune",
    "flap_prune", "fold", "zipit_merge", "neuron_merge", "proportional_lump",
)  # fmt: skip
PER_LAYER_SPARSITY = ("structured_prune", "obs_prune", "osscar_prune", "id_prune", "flap_prune", "fold",
                      "zipit_merge", "neuron_merge")  # fmt: skip


def _net_for(name, mlp):
    accepted = jaxlump.compressors()[name].activations
    if accepted is None and name != "proportional_lump":
        return mlp
    return eqx.nn.MLP(3, 2, 16, 2, activation=jax.nn.relu, key=jr.key(0))


def test_every_structured_method_is_classified_for_widths_targets():
    structured = {n for n, c in jaxlump.compressors().items() if c.structured}
    assert structured == set(WIDTHS_REACHED) | set(WIDTHS_REFUSED)


# the options skip work that does not change the widths (a refit after the selection), to keep the test cheap
_CHEAP = {"lump": {"reconstruct": False, "certify_ode": False}} | dict.fromkeys(
    ("obs_prune", "osscar_prune", "id_prune"), {"reconstruct": False}
)
_HEAVY = ("lump_then_select", "merge_or_remove", "proportional_lump")  # compile-bound: ~10–20 s each on 2 cores


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in _HEAVY else n for n in WIDTHS_REACHED]
)
def test_widths_target_is_met_within_one_unit_in_every_layer(mlp, x, name):
    options = _CHEAP.get(name, {})
    target = (12, 6)
    _, info = compress_to(_net_for(name, mlp), name, target, x, **options)
    hidden = tuple(int(w) for w in info.widths_after)[1:-1]
    assert all(t - 1 <= h <= t for h, t in zip(hidden, target)), hidden
    assert info.target.realised_widths[1:-1] == hidden and info.target.requested == target
    # one knob value per hidden layer was chosen, and the record says so
    assert isinstance(info.target.knob, tuple) and len(info.target.knob) == 2
    if name == "lump":  # layer 1 depends on its own ε only: plain lump at that ε gives the same first layer
        _, at_first = jaxlump.lump(mlp, x, info.target.knob[0], **options)
        assert int(at_first.widths_after[1]) == hidden[0]


@pytest.mark.slow
def test_lump_then_select_widths_lower_its_lumping_eps_or_refuse(mlp, x):
    # at its default ε = 0.5 the lumping leaves layer 1 with 14 of 16 neurons: (16, 8) needs a milder lumping
    small, info = compress_to(mlp, "lump_then_select", (16, 8), x)
    assert info.target.realised_widths == (3, 16, 8, 2)
    ((name, eps),) = info.target.options
    assert name == "eps" and eps < 0.5
    again, _ = jaxlump.lump_then_select(mlp, x, info.target.knob, eps=eps)  # the record reproduces the result
    np.testing.assert_array_equal(jax.vmap(small)(x), jax.vmap(again)(x))
    with pytest.raises(jaxlump.UnreachableTargetError, match=r"`target`.*eps=0.5.*layer 1 with 14"):
        compress_to(mlp, "lump_then_select", (16, 8), x, eps=0.5)  # a given ε is the user's: refused, not lowered


@pytest.mark.slow
def test_widths_beyond_a_methods_reach_are_refused_with_the_layer(x):
    # proportional lumping merges only rows with a positive cosine (tol < √2): the second layer keeps at least 3
    relu = eqx.nn.MLP(3, 2, 16, 2, activation=jax.nn.relu, key=jr.key(0))
    with pytest.raises(jaxlump.UnreachableTargetError, match=r"`target`.*\(2, 2\).*hidden layer 2 keeps 3") as error:
        compress_to(relu, "proportional_lump", (2, 2), x)
    assert error.value.smallest > 0


@pytest.mark.parametrize("name", WIDTHS_REFUSED)
def test_widths_target_is_refused_with_the_reason(mlp, x, name):
    with pytest.raises(ValueError, match=r"`target`.*\(12, 6\).*" + name) as error:
        compress_to(_net_for(name, mlp), name, (12, 6), x)
    assert "instead" in str(error.value) or "use" in str(error.value)


def test_one_knob_function_refuses_widths_it_cannot_reach(mlp, x):
    def my_pruner(model, x_calib, sparsity):  # one fraction for every layer: (12, 6) is out of its reach
        return structured_prune(model, x_calib, sparsity)

    with pytest.raises(jaxlump.UnreachableTargetError, match=r"`target`.*\(12, 6\).*one knob") as error:
        compress_to(mlp, my_pruner, (12, 6), x, max_iter=8)  # 1/256 resolves every fraction of a 16-wide layer
    assert "per-layer" in str(error.value)
    _, info = compress_to(mlp, my_pruner, (8, 8), x)  # equal fractions: reachable by one knob
    assert info.target.realised_widths == (3, 8, 8, 2)


@pytest.mark.parametrize("name", PER_LAYER_SPARSITY)
def test_per_layer_sparsity_sets_each_layers_width(mlp, x, name):
    _, info = getattr(jaxlump.baselines, name)(_net_for(name, mlp), x, (0.25, 0.5))
    # n − int(n·s) per layer: 16 − 4 and 16 − 8
    assert tuple(int(w) for w in info.widths_after) == (3, 12, 8, 2)
    assert np.isnan(float(info.knob))  # no single knob produced it


@pytest.mark.parametrize("bad", [(0.25,), (0.25, 1.0), (0.25, -0.1), ("a", 0.5), ((0.1, 0.2), 0.5)])
def test_bad_per_layer_sparsity_is_refused(mlp, x, bad):
    with pytest.raises((ValueError, TypeError), match=r"`sparsity\[\d\]`|hidden layers"):
        structured_prune(mlp, x, bad)


def test_a_method_that_adds_layers_is_refused_on_a_model_of_sites_with_the_reason():
    from _models import ByteTransformer

    model = ByteTransformer(vocab=32, d=16, heads=4, hidden=16, blocks=1, ffn="gelu", max_length=6, key=jr.key(9))
    tokens = jr.randint(jr.key(10), (8, 6), 0, 32)
    refused = r"\(ByteTransformer\) is compressed site by site, which jaxlump.lowrank cannot do: it replaces a layer"
    with pytest.raises(TypeError, match=refused):  # declared by the method: refused before anything is computed
        compress_to(model, "lowrank", 0.9, tokens)

    def deeper(model, x_calib, sparsity):  # a user's function that declares nothing: refused once it returns
        return jaxlump.baselines.lowrank(model, x_calib, sparsity)

    with pytest.raises(TypeError, match=r"`deeper` cannot compress `model` \(ByteTransformer\) site by site: on a"):
        compress_to(model, deeper, 0.9, tokens)
    listed = r"no site at \['blocks\[0\].fnn'\]; the sites are \['blocks\[0\].attention', "
    with pytest.raises(ValueError, match=listed):
        compress_to(model, "obs_prune", {"blocks[0].fnn": 8}, tokens)
