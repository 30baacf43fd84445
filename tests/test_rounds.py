"""The scalable merge-or-remove path (`jaxlump._methods.rounds`) against ZipLM's loop and brute-force constrained
least squares (NumPy, float64), and `merge_or_remove(path=...)` end to end."""

import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from _devices import on_host_devices
from _networks import outputs, random_mlp
from _refit_reference import zipLM_order

import jaxlump
from jaxlump._criteria.gram import layer_statistics
from jaxlump._methods import select
from jaxlump._methods.rounds import OpsPath, Rounds, rounds_path
from jaxlump._model import to_chain

ONE_AT_A_TIME = Rounds(fraction=1e-9)  # one operation per round: the greedy on the rounds' costs


def _layer(key, widths=(3, 12, 5), activation="tanh", n=200):
    with jax.enable_x64(True):
        model = random_mlp(key, widths, activation=activation)
        chain = jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, to_chain(model))
        x = jr.normal(jr.fold_in(key, 1), (n, widths[0]), jnp.float64)
        stats = layer_statistics(chain, x, sketch_size=n, candidates=4, batch_rows=64)
        acts = np.asarray(chain.forward(x)[1][1])
    return chain, stats[0], acts


def _path(chain, stats, merge, strategy, damping=1e-3):
    with jax.enable_x64(True):
        return rounds_path(
            stats,
            chain.weights[1],
            chain.activations[0],
            gated=False,
            centre=True,
            damping=damping,
            merge=merge,
            strategy=strategy,
        )


def test_removals_one_at_a_time_are_zipLM_greedy_elimination():
    chain, stats, acts = _layer(jr.key(0))
    path = _path(chain, stats, False, ONE_AT_A_TIME)
    features = acts - acts.mean(0)
    lam = 1e-3 * np.mean(np.sum(features**2, axis=0))
    assert path.keep.tolist() == zipLM_order(features, np.asarray(chain.weights[1]), lam, 11)
    assert not path.merged.any() and np.all(np.diff(path.cumulative) >= 0)


def _constrained_error(features, w0, lam, labels):
    """min ‖Z̃ − F̃ βᵀ‖² over β constant on each block of `labels` and zero on removed neurons, by least squares on
    the blocks' summed columns (`Z = F W₀ᵀ`, augmented by `√λ`)."""
    blocks = [b for b in np.unique(labels) if b >= 0]
    members = np.stack([(labels == b).astype(float) for b in blocks], axis=1)
    design = np.concatenate([features @ members, np.sqrt(lam) * members])
    target = np.concatenate([features @ w0.T, np.sqrt(lam) * w0.T])
    beta, *_ = np.linalg.lstsq(design, target, rcond=None)
    return float(np.sum((target - design @ beta) ** 2))


@pytest.mark.parametrize("strategy", [ONE_AT_A_TIME, Rounds(fraction=0.25)])
def test_costs_of_a_linear_layer_are_the_exact_constrained_refit_errors(strategy):
    """With the identity activation a merged neuron is exactly its members' mean, so the path's cumulative error after
    every step is the damped least-squares error with the path's blocks tied and its removals zeroed — batched rounds
    included (each operation's cost is its exact sequential one)."""
    chain, stats, acts = _layer(jr.key(1), activation="identity")
    path = _path(chain, stats, True, strategy)
    features = acts - acts.mean(0)
    lam = 1e-3 * np.mean(np.sum(features**2, axis=0))
    scale = np.mean(np.sqrt(np.sum(features**2, axis=0) / len(acts)) * np.linalg.norm(chain.weights[1], axis=0))
    assert path.merged.any() and not path.merged.all()
    for t in range(1, 11):
        labels = path.labels_after(t)
        assert len({b for b in labels.tolist() if b >= 0}) == 12 - t
        error = _constrained_error(features, np.asarray(chain.weights[1]), lam, labels)
        np.testing.assert_allclose(path.cumulative[t - 1], np.sqrt(error / len(acts)) / scale, rtol=1e-7, atol=1e-12)


def test_rounds_take_distinct_slots_and_one_width_per_step():
    chain, stats, _ = _layer(jr.key(2), widths=(3, 40, 5))
    path = _path(chain, stats, True, Rounds(fraction=0.2, candidates=4))
    assert isinstance(path, OpsPath) and len(path.keep) == 39
    for t in (0, 5, 17, 39):
        labels = path.labels_after(t)
        slots = {b for b in labels.tolist() if b >= 0}
        assert len(slots) == 40 - t and all(labels[s] == s for s in slots)


def _duplicated(key, widths=(3, 10, 2), copies=((1, 7), (2, 8), (2, 9))):
    model = random_mlp(key, widths, kind="mlp")
    w1, b1 = np.array(model.layers[0].weight), np.array(model.layers[0].bias)
    for source, copy in copies:
        w1[copy], b1[copy] = w1[source], b1[source]
    return eqx.tree_at(lambda m: (m.layers[0].weight, m.layers[0].bias), model, (jnp.asarray(w1), jnp.asarray(b1)))


@pytest.mark.parametrize("strategy", [ONE_AT_A_TIME, Rounds()])
def test_eps_zero_merges_exactly_the_planted_duplicates(strategy):
    model = _duplicated(jr.key(3))
    x = jr.normal(jr.key(4), (300, 3))
    small, info = jaxlump.merge_or_remove(model, x, 0.0, path=strategy)
    labels = np.asarray(info.partitions[0])
    assert info.widths_after.tolist() == [3, 7, 2]
    assert labels[7] == labels[1] and labels[8] == labels[2] == labels[9]
    np.testing.assert_allclose(outputs(small, x), outputs(model, x), rtol=1e-5, atol=1e-5)


@pytest.mark.integration  # heavy (10–16 s on 2 cores, large compiles): the second test step keeps step 1 near 10 min
def test_widths_targets_are_met_exactly_with_rounds():
    model = random_mlp(jr.key(5), (4, 30, 20, 2))
    x = jr.normal(jr.key(6), (256, 4))
    small, info = jaxlump.baselines.compress_to(model, "merge_or_remove", (11, 7), x, path=Rounds(fraction=0.1))
    assert info.widths_after.tolist() == [4, 11, 7, 2]
    assert np.all(np.isfinite(outputs(small, x)))


@pytest.mark.integration  # heavy (10–16 s on 2 cores, large compiles): the second test step keeps step 1 near 10 min
def test_wide_layers_take_the_rounds_by_default(monkeypatch):
    monkeypatch.setattr(select, "AUTO_ROUNDS_WIDTH", 16)
    chain = to_chain(random_mlp(jr.key(7), (3, 8, 24, 2)))
    paths = select.layer_paths(chain, jr.normal(jr.key(8), (64, 3)), merge=True, damping=1e-3)
    assert not isinstance(paths[0], OpsPath) and isinstance(paths[1], OpsPath)


@pytest.mark.integration  # two whole compressions: step 2, as step 1 is full
def test_wide_layers_are_refit_in_the_kept_shape_with_the_same_result(monkeypatch):
    """Above `AUTO_ROUNDS_WIDTH` the quotient is built and refit physically smaller instead of in fixed shape and
    then shrunk: the same partitions, weights and certificate (float tolerance)."""
    model = random_mlp(jr.key(10), (3, 8, 8, 2))  # the shapes of test_select's and test_allocation's calls
    x = jr.normal(jr.key(11), (128, 3))
    results = []
    for threshold in (512, 4):
        monkeypatch.setattr(select, "AUTO_ROUNDS_WIDTH", threshold)
        results.append(jaxlump.merge_or_remove(model, x, 0.05, path=jaxlump.Greedy()))
    (fixed, fixed_info), (kept, kept_info) = results
    assert 2 < sum(kept_info.widths_after.tolist()[1:-1]) < 8 + 8  # some neurons went, not all
    for a, b in zip(fixed_info.partitions, kept_info.partitions):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(eqx.filter(fixed, eqx.is_array)), jax.tree.leaves(eqx.filter(kept, eqx.is_array))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(kept_info.certificate.output_rms, fixed_info.certificate.output_rms, rtol=1e-9)


def test_bad_strategies_are_refused_naming_the_argument():
    model = random_mlp(jr.key(9), (3, 6, 2), kind="mlp")
    with pytest.raises(TypeError, match="`path` must be None"):
        jaxlump.merge_or_remove(model, jnp.ones((8, 3)), 0.1, path="rounds")
    for bad in (
        dict(fraction=0.0),
        dict(fraction=1.5),
        dict(candidates=0),
        dict(sketch_rows=2.5),
        dict(batch_rows=True),
    ):
        with pytest.raises(ValueError, match="Rounds"):
            Rounds(**bad)


_SHARDED = textwrap.dedent(
    """
    import json, jax, jax.numpy as jnp, jax.random as jr, numpy as np, equinox as eqx, jaxlump
    from jaxlump.baselines import compress_to
    jax.config.update("jax_enable_x64", True)
    assert len(jax.devices()) == 8
    model = eqx.nn.MLP(5, 3, 48, 2, activation=jnp.tanh, dtype=jnp.float64, key=jr.key(0))
    x = jr.normal(jr.key(1), (999, 5), jnp.float64)  # 999 rows: batches padded to a multiple of 8
    out = {}
    for name, devices in (("one", None), ("sharded", jax.devices())):
        small, info = compress_to(
            model, "merge_or_remove", (20, 11), x, path=jaxlump.Rounds(batch_rows=100, fraction=0.1, devices=devices)
        )
        out[name] = {
            "partitions": [np.asarray(p).tolist() for p in info.partitions],
            "weights": [np.asarray(l.weight).tolist() for l in small.layers],
        }
    print(json.dumps(out))
    """
)


@pytest.mark.integration  # a fresh process compiling the statistics and two paths twice (~50 s)
def test_rounds_over_eight_host_devices_equal_one_device():
    out = on_host_devices(_SHARDED)
    assert out["sharded"]["partitions"] == out["one"]["partitions"]
    for got, want in zip(out["sharded"]["weights"], out["one"]["weights"], strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)
    assert [len({b for b in p if b >= 0}) for p in out["one"]["partitions"]] == [20, 11]
