"""The forward quotient against a NumPy reference and planted exact lumpings; the masked form and `shrink`."""

import dataclasses

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jaxlump._errors import RESULTS
from jaxlump._model.network import DenseChain
from jaxlump._reconstruction.masked import shrink
from jaxlump._reconstruction.quotient import quotient
from jaxlump._results.accounting import chain_cost
from jaxlump._results.info import CompressionInfo, live_widths

WIDTHS = (3, 6, 5, 2)  # the shapes of the other test files: eager kernels compile once per shape
# Representative labels (a block sits at its representative's index), -1 removes a neuron.
REPRESENTATIVE = ([0, 0, 2, 3, 2, -1], [4, 1, 1, -1, 4])
COMPACT = ([0, 0, 1, 2, 1, -1], [1, 0, 0, -1, 1])  # the same partitions, blocks ordered by representative


def _random_chain(key, widths=WIDTHS, hidden="tanh") -> DenseChain:
    keys = jr.split(key, 2 * (len(widths) - 1))
    weights = tuple(jr.normal(keys[2 * l], (n_out, n_in)) for l, (n_in, n_out) in enumerate(zip(widths, widths[1:])))
    biases = tuple(0.5 * jr.normal(keys[2 * l + 1], (n,)) for l, n in enumerate(widths[1:]))
    activations = (hidden,) * (len(widths) - 2) + ("identity",)
    return DenseChain(weights, biases, activations, (True,) * len(weights))


def _numpy_chain(weights, biases, activations) -> DenseChain:
    return DenseChain(
        tuple(map(jnp.asarray, weights)), tuple(map(jnp.asarray, biases)), activations, (True,) * len(weights)
    )


def numpy_quotient(chain: DenseChain, labels) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """`Ŵ[H, B] = mean_{m∈H} Σ_{k∈B} W_mk`, `b̂_H = mean_{m∈H} b_m`, blocks `0..k-1`, label -1 dropped."""
    widths = chain.widths
    all_labels = [np.arange(widths[0])] + [np.asarray(p) for p in labels] + [np.arange(widths[-1])]
    weights, biases = [], []
    for l, (w, b) in enumerate(zip(chain.weights, chain.biases)):
        w, b, rows, cols = np.asarray(w), np.asarray(b), all_labels[l + 1], all_labels[l]
        n_rows, n_cols = rows.max() + 1, cols.max() + 1
        reduced = np.zeros((n_rows, n_cols))
        for h in range(n_rows):
            for block in range(n_cols):
                reduced[h, block] = w[np.ix_(rows == h, cols == block)].sum(axis=1).mean()
        weights.append(reduced)
        biases.append(np.array([b[rows == h].mean() for h in range(n_rows)]))
    return weights, biases


def _info(chain: DenseChain, partitions, weight_masks=None) -> CompressionInfo:
    partitions = tuple(jnp.asarray(p, jnp.int32) for p in partitions)
    return CompressionInfo(
        method="test",
        structured=weight_masks is None,
        knob=jnp.asarray(0.0),
        partitions=partitions,
        weight_masks=weight_masks,
        widths_before=chain.widths,
        widths_after=live_widths(chain.widths, partitions),
        cost_before=chain_cost(chain),
        cost_after=chain_cost(chain),
        certificate=None,
        result=RESULTS.successful,
    )


def _assert_chains_equal(got: DenseChain, weights, biases, atol=1e-13):
    assert [w.shape for w in got.weights] == [np.shape(w) for w in weights]
    for w_got, b_got, w, b in zip(got.weights, got.biases, weights, biases):
        np.testing.assert_allclose(w_got, w, rtol=1e-13, atol=atol)
        np.testing.assert_allclose(b_got, b, rtol=1e-13, atol=atol)


@pytest.mark.parametrize(
    "labels", [COMPACT, ([0, 1, 2, 3, 4, 5], [0, 0, 0, 0, 0]), ([1, 0, -1, 0, 1, 2], [-1, 0, 1, 2, -1])]
)
def test_compact_quotient_matches_numpy(labels):
    chain = _random_chain(jr.key(0))
    num_blocks = tuple(int(max(p)) + 1 for p in labels)
    got = quotient(chain, tuple(jnp.asarray(p) for p in labels), num_blocks)
    _assert_chains_equal(got, *numpy_quotient(chain, labels))
    assert got.widths == (WIDTHS[0], *num_blocks, WIDTHS[-1])


def test_masked_quotient_has_blocks_at_representatives_and_shrinks_to_compact():
    chain = _random_chain(jr.key(1))
    masked = quotient(chain, tuple(jnp.asarray(p) for p in REPRESENTATIVE), WIDTHS[1:-1])
    assert masked.widths == WIDTHS
    compact_weights, compact_biases = numpy_quotient(chain, COMPACT)
    for l, (rep, w, b) in enumerate(zip(REPRESENTATIVE, masked.weights, masked.biases)):
        live = np.unique([r for r in rep if r >= 0])
        dead = np.setdiff1d(np.arange(len(rep)), live)
        np.testing.assert_allclose(b[live], compact_biases[l], rtol=1e-13)
        assert np.all(np.asarray(w)[dead] == 0) and np.all(np.asarray(b)[dead] == 0)
        assert np.all(np.asarray(masked.weights[l + 1])[:, dead] == 0)
    small, info = shrink(masked, _info(chain, REPRESENTATIVE))
    _assert_chains_equal(small, compact_weights, compact_biases)
    assert [p.tolist() for p in info.partitions] == [list(p) for p in COMPACT]
    assert info.widths_after.tolist() == [3, 3, 2, 2] and small.widths == (3, 3, 2, 2)
    assert int(info.cost_after.dense_params) == 3 * 3 + 3 + 2 * 3 + 2 + 2 * 2 + 2
    x = jr.normal(jr.key(2), (20, WIDTHS[0]))
    np.testing.assert_allclose(masked(x), small(x), rtol=1e-13, atol=1e-13)


def _planted_chain(key, hidden: str, groups) -> DenseChain:
    """A network whose hidden layers are exactly lumpable along `groups` (compact labels per hidden layer).

    Layer 1: members of a group have identical rows and biases. Layer 2: members only share their sums over
    each layer-1 group (rows differ), which is the forward-equivalence condition, not mere duplication."""
    rng = np.random.default_rng(key)
    g1, g2 = (np.asarray(g) for g in groups)
    w1 = rng.normal(size=(g1.max() + 1, WIDTHS[0]))[g1]
    b1 = rng.normal(size=g1.max() + 1)[g1]
    aggregated = rng.normal(size=(g2.max() + 1, g1.max() + 1))
    w2 = np.zeros((len(g2), len(g1)))
    for block in range(g1.max() + 1):
        members = np.flatnonzero(g1 == block)
        noise = rng.normal(size=(len(g2), len(members)))
        w2[:, members] = aggregated[g2, block][:, None] / len(members) + noise - noise.mean(axis=1, keepdims=True)
    b2 = rng.normal(size=g2.max() + 1)[g2]
    w3, b3 = rng.normal(size=(WIDTHS[-1], len(g2))), rng.normal(size=WIDTHS[-1])
    return _numpy_chain((w1, w2, w3), (b1, b2, b3), (hidden, hidden, "identity"))


@pytest.mark.parametrize("hidden", ["tanh", "sigmoid", "relu", "identity"])
def test_quotient_of_planted_lumping_is_exact(hidden):
    groups = ([2, 0, 1, 0, 2, 1], [1, 0, 1, 2, 0])
    chain = _planted_chain(3, hidden, groups)
    reduced = quotient(chain, tuple(jnp.asarray(g) for g in groups), (3, 3))
    x = 2 * jr.normal(jr.key(4), (64, WIDTHS[0]))
    assert reduced.widths == (3, 3, 3, 2)
    error = float(jnp.max(jnp.abs(reduced(x) - chain(x))))
    assert error <= 1e-12, error
    # A grouping that is not planted changes the function (the check above can fail).
    wrong = quotient(chain, (jnp.asarray([0, 0, 1, 1, 2, 2]), jnp.asarray(groups[1])), (3, 3))
    assert float(jnp.max(jnp.abs(wrong(x) - chain(x)))) > 1e-3


def test_minus_one_drops_a_neuron_that_feeds_nothing():
    chain = _planted_chain(5, "sigmoid", ([0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4]))
    w2 = np.asarray(chain.weights[1]).copy()
    w2[:, 3] = 0.0  # neuron 3 of layer 1 feeds nothing (sigmoid(z) ≠ 0, so only its outgoing weights matter)
    chain = DenseChain(
        (chain.weights[0], jnp.asarray(w2), chain.weights[2]), chain.biases, chain.activations, chain.use_bias
    )
    labels = (jnp.asarray([0, 1, 2, -1, 3, 4]), jnp.arange(5))
    reduced = quotient(chain, labels, (5, 5))
    x = jr.normal(jr.key(6), (32, WIDTHS[0]))
    assert reduced.widths == (3, 5, 5, 2)
    np.testing.assert_allclose(reduced(x), chain(x), rtol=1e-13, atol=1e-13)


def test_shrink_refuses_traced_values():
    chain = _random_chain(jr.key(7))
    info = _info(chain, REPRESENTATIVE)
    with pytest.raises(TypeError, match=r"jaxlump.shrink.*`model` is traced.*outside the transformation"):
        jax.jit(lambda c: shrink(c, info)[0])(chain)
    with pytest.raises(TypeError, match=r"jaxlump.shrink.*`info` is traced"):
        jax.jit(lambda i: shrink(chain, i)[1].partitions)(info)


def _with_partitions(info, partitions):
    return dataclasses.replace(info, partitions=tuple(partitions))


@pytest.mark.parametrize(
    "case, error, match",
    [
        ("too_few_layers", ValueError, r"has 1 entries; the network has 2 hidden layers"),
        ("too_short", ValueError, r"partitions\[0\]` has shape \(5,\); hidden layer 1 of the original has 6"),
        ("too_long", ValueError, r"partitions\[1\]` has shape \(6,\)"),
        ("two_dimensional", ValueError, r"partitions\[0\]` has shape \(1, 6\)"),
        ("out_of_range", ValueError, r"labels in \[-1, 6\].*must lie in \[-1, 5\]"),
        ("below_minus_one", ValueError, r"labels in \[-2, 3\]"),
        ("float_labels", TypeError, r"integer array.*float"),
        ("not_a_tuple", TypeError, r"tuple of integer arrays"),
        ("other_depth", ValueError, r"widths \(3, 6, 5, 2\) but `model` has widths \(3, 6, 2\)"),
        ("wrong_masks", ValueError, r"weight_masks` have shapes"),
    ],
)
def test_shrink_refuses_partitions_that_do_not_fit_the_model(case, error, match):
    """Partitions that do not fit the model (today: silently a model of the wrong widths) are refused."""
    chain = _random_chain(jr.key(8))
    info = _info(chain, REPRESENTATIVE)
    p0, p1 = info.partitions
    model = chain
    bad = {
        "too_few_layers": lambda: _with_partitions(info, [p0]),
        "too_short": lambda: _with_partitions(info, [p0[:5], p1]),
        "too_long": lambda: _with_partitions(info, [p0, jnp.concatenate([p1, p1[:1]])]),
        "two_dimensional": lambda: _with_partitions(info, [p0[None], p1]),
        "out_of_range": lambda: _with_partitions(info, [p0.at[1].set(6), p1]),
        "below_minus_one": lambda: _with_partitions(info, [p0.at[1].set(-2), p1]),
        "float_labels": lambda: _with_partitions(info, [p0.astype(float), p1]),
        "not_a_tuple": lambda: dataclasses.replace(info, partitions=p0),
        "other_depth": lambda: info,
        "wrong_masks": lambda: dataclasses.replace(info, weight_masks=tuple(jnp.ones((2, 2), bool) for _ in range(3))),
    }[case]()
    if case == "other_depth":
        model = _random_chain(jr.key(9), widths=(3, 6, 2))
    with pytest.raises(error, match=match):
        shrink(model, bad)


def test_shrink_refuses_info_of_another_model():
    small = _random_chain(jr.key(9), widths=(3, 3, 5, 2))
    chain = _random_chain(jr.key(8))
    with pytest.raises(ValueError, match=r"partitions\[0\]"):  # representative 3 in a 3-wide layer
        shrink(small, _info(chain, REPRESENTATIVE))


def test_shrink_of_unstructured_result_keeps_shapes():
    chain = _random_chain(jr.key(10))
    masks = tuple(jr.bernoulli(jr.key(11 + l), 0.5, w.shape) for l, w in enumerate(chain.weights))
    pruned = DenseChain(
        tuple(jnp.where(m, w, 0.0) for w, m in zip(chain.weights, masks)),
        chain.biases,
        chain.activations,
        chain.use_bias,
    )
    identity = tuple(np.arange(n) for n in WIDTHS[1:-1])
    small, info = shrink(pruned, _info(pruned, identity, weight_masks=masks))
    _assert_chains_equal(small, pruned.weights, pruned.biases, atol=0)
    assert all(np.array_equal(a, b) for a, b in zip(info.weight_masks, masks))
    assert [p.tolist() for p in info.partitions] == [p.tolist() for p in identity]
    assert info.widths_after.tolist() == list(WIDTHS) and not info.structured


def test_shrink_refuses_an_info_whose_dead_neurons_carry_weight():
    # The info of a masked result, paired with the original (unmasked) model or with another model of the same
    # architecture: neurons the info marks dead carry weight there, so shrinking would silently change the outputs.
    chain = _random_chain(jr.key(12))
    info = _info(chain, REPRESENTATIVE)
    masked = quotient(chain, info.partitions, chain.widths[1:-1])
    shrink(masked, info)  # its own model is accepted
    for model in (chain, _random_chain(jr.key(13))):
        with pytest.raises(ValueError, match="non-zero parameters on neurons `info` marks dead"):
            shrink(model, info)


def test_shrink_refuses_nonfinite_weights_under_a_successful_info():
    chain = _random_chain(jr.key(14))
    info = _info(chain, REPRESENTATIVE)
    masked = quotient(chain, info.partitions, chain.widths[1:-1])
    for layer, where, live in ((0, "weights", 0), (1, "biases", 1)):  # on live neurons (representatives)
        values = list(getattr(masked, where))
        values[layer] = values[layer].at[live].set(jnp.nan)
        broken = dataclasses.replace(masked, **{where: tuple(values)})
        with pytest.raises(ValueError, match="NaN or inf weights or biases although `info.result` reports success"):
            shrink(broken, info)
    # A failed compression (the failure recorded in info.result) is shrunk as it is.
    failed = dataclasses.replace(info, result=RESULTS.nonfinite_result)
    small, small_info = shrink(broken, failed)
    assert small_info.result == RESULTS.nonfinite_result
