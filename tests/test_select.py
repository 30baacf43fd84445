"""merge_or_remove and lump_then_select: exactness at ε = 0, agreement with structured OBS, purity, bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from _networks import outputs, parameters, planted_mlp, random_mlp, set_partition

import jaxlump
from jaxlump._methods.select import labels_after, layer_paths, steps_to_sparsity
from jaxlump._model import to_chain
from jaxlump.baselines import obs_prune


def _x(key, n=128, width=3):
    return jr.normal(jr.key(key), (n, width))


@pytest.mark.parametrize("candidates", [None, 1])
def test_eps_zero_merges_exactly_the_planted_duplicates(candidates):
    """Also with one candidate per neuron: duplicates cost exactly 0, so they are always each other's first."""
    model, planted = planted_mlp(jr.key(0), (3, 8, 8, 2), (4, 3))
    x = _x(1)
    small, info = jaxlump.merge_or_remove(model, x, 0.0, candidates=candidates)
    for found, truth in zip(info.partitions, planted):
        assert set_partition(found) == set_partition(truth)
        assert np.all(np.asarray(found) >= 0)  # nothing removed: removals cost something
    np.testing.assert_allclose(outputs(small, x), outputs(model, x), atol=1e-10)
    assert float(info.certificate.output_max_abs) <= 1e-10 and info.result == jaxlump.RESULTS.successful


def test_widths_shrink_as_eps_grows_and_the_certificate_is_measured():
    model = random_mlp(jr.key(2), (3, 8, 8, 2), kind="mlp")
    x = _x(3)
    widths = []
    for eps in (0.0, 0.5, 5.0):
        small, info = jaxlump.merge_or_remove(model, x, eps)
        widths.append(info.widths_after.tolist()[1:-1])
        deviation = outputs(small, x) - outputs(model, x)
        np.testing.assert_allclose(float(info.certificate.output_max_abs), np.max(np.abs(deviation)), rtol=1e-8)
    assert all(a >= b for w0, w1 in zip(widths, widths[1:]) for a, b in zip(w0, w1))
    assert widths[0] == [8, 8] and sum(widths[-1]) < 16


def test_removal_only_selection_keeps_what_structured_obs_keeps():
    """With merges off, the path is ZipLM's greedy elimination: the same kept neurons as `obs_prune` at equal
    damping (the weights then differ only by the shared reconstruction)."""
    model = random_mlp(jr.key(4), (3, 8, 8, 2), kind="mlp")
    x = _x(5)
    paths = layer_paths(to_chain(model), x, merge=False, damping=1e-2)
    _, info = obs_prune(model, x, 0.5, damping=1e-2)
    for path, theirs in zip(paths, info.partitions):
        ours = labels_after(path, steps_to_sparsity(path, 0.5))
        np.testing.assert_array_equal(ours >= 0, np.asarray(theirs) >= 0)


def test_lump_then_select_at_eps_zero_is_structured_obs():
    model = random_mlp(jr.key(6), (3, 8, 8, 2), kind="mlp")
    x = _x(7)
    small, info = jaxlump.lump_then_select(model, x, 0.5, eps=0.0)
    paths = layer_paths(to_chain(model), x, merge=False, damping=1e-3)
    for path, labels in zip(paths, info.partitions):
        kept = labels_after(path, steps_to_sparsity(path, 0.5)) >= 0
        np.testing.assert_array_equal(np.asarray(labels) >= 0, kept)
    assert info.widths_after.tolist() == [3, 4, 4, 2] and info.method == "lump_then_select"


def test_lump_then_select_composes_the_partitions_and_leaves_the_input_alone():
    model, planted = planted_mlp(jr.key(8), (3, 8, 8, 2), (4, 4))
    before = parameters(model)
    x = _x(9)
    small, info = jaxlump.lump_then_select(model, x, 0.5, eps=0.0)
    assert info.widths_after.tolist() == [3, 2, 2, 2]
    for labels, truth in zip(info.partitions, planted):
        labels, truth = np.asarray(labels), np.asarray(truth)
        for g in np.unique(truth):  # a planted group is lumped first, so it is kept or removed as a whole
            assert len(set(labels[truth == g].tolist())) == 1
    for a, b in zip(parameters(model)[0], before[0]):
        np.testing.assert_array_equal(a, b)
    assert int(info.cost_before.dense_params) == int(jaxlump.cost(model).dense_params)
    assert int(info.cost_after.dense_params) == int(jaxlump.cost(small).dense_params)


def test_bad_input_is_refused():
    model = random_mlp(jr.key(10), (3, 8, 8, 2), kind="mlp")
    x = _x(11)
    with pytest.raises(ValueError, match="sparsity"):
        jaxlump.lump_then_select(model, x, 1.0)
    with pytest.raises(ValueError, match="eps"):
        jaxlump.merge_or_remove(model, x, -0.1)
    with pytest.raises(ValueError, match="damping"):
        jaxlump.merge_or_remove(model, x, 0.1, damping=0.0)
    with pytest.raises(ValueError, match="x_calib"):
        jaxlump.merge_or_remove(model, None, 0.1)
    with pytest.raises(ValueError, match="x_calib"):
        jaxlump.merge_or_remove(model, jnp.ones((4, 5)), 0.1)
    for bad in (0, 2.0, True, "8"):
        with pytest.raises(ValueError, match="candidates"):
            jaxlump.merge_or_remove(model, x, 0.1, candidates=bad)
        with pytest.raises(ValueError, match="candidates"):
            jaxlump.lump_then_select(model, x, 0.5, merge=True, candidates=bad)
    with pytest.raises(TypeError, match="throw"):
        jaxlump.merge_or_remove(model, x, 0.1, throw="no")


@pytest.mark.parametrize(
    "name, activation, stage, result, scale, x64",
    [
        # the path (computed in float64) overflows only on float64 data this large
        ("merge_or_remove", jax.nn.relu, "selection", "selection_nonfinite", 1e160, True),
        ("merge_or_remove", jax.nn.relu, "least-squares refit", "least_squares_nonfinite", 1e20, False),  # float32
        ("lump_then_select", jax.nn.relu, "least-squares refit", "least_squares_nonfinite", 1e20, False),
        pytest.param(  # tanh saturates, so the path is fine and the refit overflows
            "merge_or_remove",
            jnp.tanh,
            "least-squares refit",
            "least_squares_nonfinite",
            1e20,
            False,
            marks=pytest.mark.slow,
        ),
    ],
)
def test_a_failed_stage_is_reported_and_raised_with_throw(name, activation, stage, result, scale, x64):
    """Finite but huge data overflow a stage: `throw=True` raises naming it, `throw=False` returns the result with
    `info.result` set (never a silent success)."""
    compress = getattr(jaxlump, name)
    with jax.enable_x64(x64):
        dtype = jnp.float64 if x64 else jnp.float32
        model = eqx.nn.MLP(3, 2, 8, 1, activation=activation, dtype=dtype, key=jr.key(12))
        x = jnp.asarray(_x(13), dtype) * scale
        with pytest.raises(jaxlump.CompressionError, match=f"jaxlump.{name}: Stage '{stage}'"):
            compress(model, x, 0.5)
        _, info = compress(model, x, 0.5, throw=False)
        assert info.result == getattr(jaxlump.RESULTS, result)


@pytest.mark.integration  # a size target against every ε it implies (~19 s): the second test step
def test_a_size_target_is_cut_from_one_path_and_equals_the_chosen_eps():
    """`compress_to(..., "merge_or_remove", ...)` cuts the greedy paths at the target (no bisection): the result is
    within the target, no breakpoint ε gives a larger result within it, and `merge_or_remove` at the recorded ε
    gives the same network."""
    model = random_mlp(jr.key(4), (3, 10, 10, 2), kind="mlp")
    x = _x(5)
    full = int(jaxlump.cost(model).dense_params)
    small, info = jaxlump.baselines.compress_to(model, "merge_or_remove", 0.5, x)
    size = int(info.cost_after.dense_params)
    assert size <= 0.5 * full and info.target.realised_size == size
    again, again_info = jaxlump.merge_or_remove(model, x, float(info.knob))
    assert again_info.widths_after.tolist() == info.widths_after.tolist()
    np.testing.assert_allclose(outputs(again, x), outputs(small, x), atol=1e-12)
    larger = [
        int(i.cost_after.dense_params)
        for i in (jaxlump.merge_or_remove(model, x, e)[1] for e in np.linspace(0.0, float(info.knob), 6)[:-1])
    ]
    assert all(s > 0.5 * full or s <= size for s in larger)  # no smaller ε fits the target with more parameters
    with pytest.raises(ValueError, match="max_params"):
        jaxlump.baselines.compress_to(model, "merge_or_remove", 9, x)  # widths (3, 1, 1, 2) have 10


def test_float32_models_get_float64_paths_and_stay_float32():
    """The greedy path's rank-one updates run in float64 even with x64 off (a trained float32 network gave NaN
    costs in float32 — notebook 04); the compressed model keeps the model's dtype."""
    with jax.enable_x64(False):
        model = random_mlp(jr.key(6), (3, 8, 8, 2), kind="mlp")
        model = jax.tree.map(lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a) else a, model)
        x = jr.normal(jr.key(7), (64, 3), jnp.float32)
        paths = layer_paths(to_chain(model), x, merge=True, damping=1e-3)
        assert all(p.cumulative.dtype == np.float64 and np.all(np.isfinite(p.cumulative)) for p in paths)
        small, info = jaxlump.merge_or_remove(model, x, 0.5)
        assert info.result == jaxlump.RESULTS.successful
        assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(eqx.filter(small, eqx.is_inexact_array)))
