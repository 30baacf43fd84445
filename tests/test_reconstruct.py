"""`reconstruct` against NumPy least squares, hand-built infos and exact (planted) results."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from _networks import build, hidden_widths, numpy_outputs, parameters, planted_mlp, random_mlp, rng, set_partition
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxlump
from jaxlump._criteria.gram import row_batches
from jaxlump._model import to_chain
from jaxlump._reconstruction.reconstruct import reconstruct_chain, solve_layer

WIDTHS = (3, 8, 8, 2)
X = np.asarray(jr.normal(jr.key(200), (64, 3)))
X_TEST = np.asarray(jr.normal(jr.key(201), (40, 3)))
SEEDS = st.integers(0, 2**20)


def max_deviation(a, b, x=X_TEST) -> float:
    return float(np.max(np.abs(numpy_outputs(a, x) - numpy_outputs(b, x))))


def with_ones(a):
    return np.concatenate([a, np.ones((a.shape[0], 1))], axis=1)


def lstsq(a, t):
    """`[w | b]` minimising `‖a wᵀ + b − t‖²` (NumPy's SVD solver, intercept included)."""
    solution = np.linalg.lstsq(with_ones(a), t, rcond=None)[0]
    return solution[:-1].T, solution[-1]


def pre_activations(model, x):
    """The original's `[z^1, ..., z^L]` in NumPy."""
    weights, biases = parameters(model)
    zs, a = [], np.asarray(x)
    for l, (w, b) in enumerate(zip(weights, biases)):
        zs.append(a @ w.T + b)
        a = np.tanh(zs[-1]) if l < len(weights) - 1 else zs[-1]
    return zs


@pytest.mark.parametrize("ridge", [0.0, 1e-3])
def test_the_identity_compression_is_left_unchanged(ridge):
    model = random_mlp(jr.key(1), WIDTHS)
    _, info = jaxlump.lump(model, None, 0.0, reconstruct=False)  # no duplicates: every partition is the identity
    assert [set_partition(p) for p in info.partitions] == [set_partition(np.arange(8))] * 2
    rebuilt, rebuilt_info = jaxlump.reconstruct(model, model, X, info, ridge=ridge)
    assert hidden_widths(rebuilt) == WIDTHS[1:-1] and rebuilt_info.method == "lump+reconstruct"
    assert max_deviation(rebuilt, model) <= 1e-10
    for got, want in zip(sum(parameters(rebuilt), []), sum(parameters(model), [])):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)


def test_a_layer_dead_on_the_calibration_data_stays_exact():
    """Every first-layer ReLU is off on the data, so the second layer sees only zero columns; the default
    ridge pulls towards the compressed weights and must keep the exact model exact (finite, same outputs)."""
    weights, biases = parameters(random_mlp(jr.key(8), WIDTHS))
    biases[0] = np.full(WIDTHS[1], -100.0)
    model = build(WIDTHS, weights, biases, "relu", "sequential")
    same, info = jaxlump.lump(model, None, 0.0, reconstruct=False)
    assert hidden_widths(same) == WIDTHS[1:-1]
    rebuilt, rebuilt_info = jaxlump.reconstruct(model, model, X, info)
    assert rebuilt_info.result == jaxlump.RESULTS.successful
    assert max_deviation(rebuilt, model) <= 1e-10


@pytest.mark.parametrize("ridge", [0.0, 1e-3])
@settings(max_examples=5)
@given(groups=st.sampled_from([(3, 5), (8, 2)]), seed=SEEDS)  # few shapes: reconstruct compiles per shape
def test_an_exact_lump_stays_exact(ridge, groups, seed):
    model, _ = planted_mlp(jr.key(seed), WIDTHS, groups, "tanh")
    small, info = jaxlump.lump(model, None, 0.0, reconstruct=False)
    assert hidden_widths(small) == groups
    rebuilt, rebuilt_info = jaxlump.reconstruct(model, small, X, info, ridge=ridge)
    assert max_deviation(rebuilt, model) <= 1e-10
    assert float(rebuilt_info.certificate.output_max_abs) <= 1e-10
    assert rebuilt_info.result == jaxlump.RESULTS.successful


def test_one_hidden_layer_equals_sequential_numpy_lstsq():
    model = random_mlp(jr.key(2), (3, 10, 2))
    small, info = jaxlump.lump(model, None, 0.8, reconstruct=False)
    labels = np.asarray(info.partitions[0])
    assert 1 < labels.max() + 1 < 10  # some neurons merged, not all
    rebuilt, rebuilt_info = jaxlump.reconstruct(model, small, X, info, ridge=0.0)
    z1, _ = pre_activations(model, X)
    block_means = np.stack([z1[:, labels == h].mean(axis=1) for h in range(labels.max() + 1)], axis=1)
    w1, b1 = lstsq(X, block_means)
    w2, b2 = lstsq(np.tanh(X @ w1.T + b1), numpy_outputs(model, X))
    for got, want in zip(sum(parameters(rebuilt), []), [w1, w2, b1, b2]):
        np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10)
    assert rebuilt_info.cost_after.dense_params == info.cost_after.dense_params
    assert max_deviation(rebuilt, model, X) < max_deviation(small, model, X)  # refit fits the data better


@pytest.mark.parametrize("masked", [False, True], ids=["merged", "masked"])
def test_rows_streamed_in_batches_give_the_numpy_solution(masked):
    """64 calibration rows streamed 7 at a time (10 batches, the last padded): every layer's least-squares rows are
    NumPy's on all rows at once (a merged network's shared systems, or a masked one's per-row systems)."""
    model = random_mlp(jr.key(2), (3, 10, 2))
    if masked:
        compressed, info = masked_compression(model, 0.6, jr.key(5))
    else:
        compressed, info = jaxlump.lump(model, None, 0.8, reconstruct=False)
    original_chain, compressed_chain = to_chain(model), to_chain(compressed)
    streamed, result = eqx.filter_jit(reconstruct_chain)(
        original_chain, compressed_chain, jnp.asarray(X), info.partitions, info.weight_masks, ridge=0.0, batch_rows=7
    )
    assert result == jaxlump.RESULTS.successful
    labels = np.asarray(info.partitions[0])
    z1, z2 = pre_activations(model, X)
    targets = np.stack([z1[:, labels == h].mean(axis=1) for h in range(compressed_chain.widths[1])], axis=1)
    inputs = [X, np.tanh(X @ np.asarray(streamed.weights[0]).T + np.asarray(streamed.biases[0]))]
    for l, (a, t) in enumerate(zip(inputs, [targets, z2])):
        live = np.isin(np.arange(compressed_chain.widths[l]), labels) if l else np.ones(3, bool)
        for j in range(t.shape[1]):
            support = live & (np.asarray(info.weight_masks[l][j]) if masked else True)
            if l == 0 and not np.isin(j, labels):
                continue  # a compressed neuron no original neuron maps to: dead, solved to zero
            w_row, b_row = lstsq(a[:, support], t[:, j])
            np.testing.assert_allclose(np.asarray(streamed.weights[l])[j, support], w_row, rtol=1e-8, atol=1e-10)
            np.testing.assert_allclose(float(streamed.biases[l][j]), b_row, rtol=1e-8, atol=1e-10)


def masked_compression(model, keep: float, key, *, empty_first_row: bool = False):
    """A same-shape unstructured result: random weight masks (keep ≈ `keep`, at least one weight per row)
    and identity partitions. `empty_first_row` masks all of hidden neuron 0's incoming weights: it becomes
    a constant neuron, and the next layer's least-squares problem loses full rank."""
    generator = rng(key)
    weights, biases = parameters(model)
    masks = [generator.random(w.shape) < keep for w in weights]
    for mask in masks:
        mask[np.arange(mask.shape[0]), generator.integers(0, mask.shape[1], mask.shape[0])] = True
    masks[0][0] = not empty_first_row
    masks = tuple(jnp.asarray(mask) for mask in masks)
    compressed = eqx.tree_at(
        lambda m: [layer.weight for layer in m.layers if isinstance(layer, eqx.nn.Linear)],
        model,
        [jnp.where(m, jnp.asarray(w), 0.0) for w, m in zip(weights, masks)],
    )
    widths = jnp.asarray((weights[0].shape[1], *(b.size for b in biases)))
    info = jaxlump.CompressionInfo(
        method="hand_mask",
        structured=False,
        knob=jnp.asarray(keep),
        partitions=tuple(jnp.arange(b.size) for b in biases[:-1]),
        weight_masks=masks,
        widths_before=tuple(np.asarray(widths).tolist()),
        widths_after=widths,
        cost_before=jaxlump.cost(model),
        cost_after=jaxlump.cost(compressed),
        certificate=None,
        result=jaxlump.RESULTS.successful,
    )
    return compressed, info


@settings(max_examples=5)
@given(seed=SEEDS)
def test_masked_rows_equal_per_row_numpy_lstsq_on_their_support(seed):
    model = random_mlp(jr.key(seed), (3, 8, 8, 2))
    compressed, info = masked_compression(model, 0.4, jr.key(seed + 1))  # keeps ~50 % (one weight per row forced)
    rebuilt, rebuilt_info = jaxlump.reconstruct(model, compressed, X, info, ridge=0.0)
    weights, biases = parameters(rebuilt)
    targets, a = pre_activations(model, X), X
    for l, (w, b, mask) in enumerate(zip(weights, biases, info.weight_masks)):
        mask = np.asarray(mask)
        assert np.all(w[~mask] == 0.0)
        for j in range(w.shape[0]):
            support = np.flatnonzero(mask[j])
            w_row, b_row = lstsq(a[:, support], targets[l][:, j])
            # normal equations (jaxlump) square the condition number that SVD (NumPy) sees: relative tolerance
            np.testing.assert_allclose(w[j, support], w_row, rtol=1e-8, atol=1e-9)
            np.testing.assert_allclose(b[j], b_row, rtol=1e-8, atol=1e-9)
        a = np.tanh(a @ w.T + b)
    assert int(rebuilt_info.cost_after.nonzeros) <= int(info.cost_after.nonzeros)
    assert rebuilt_info.method == "hand_mask+reconstruct" and not rebuilt_info.structured


def test_plain_least_squares_on_a_rank_deficient_design():
    """A constant input neuron makes the next layer's least squares non-unique: with ridge 0 the Cholesky solve
    must be replaced by the minimum-norm solve, which still reaches the least-squares optimum (unique fitted
    values), and the result must say so (never a silent "successful")."""
    model = random_mlp(jr.key(6), (3, 8, 8, 2))
    compressed, info = masked_compression(model, 0.5, jr.key(7), empty_first_row=True)
    with pytest.raises(jaxlump.CompressionError, match="least-squares refit.*minimum-norm"):
        jaxlump.reconstruct(model, compressed, X, info, ridge=0.0)
    rebuilt, rebuilt_info = jaxlump.reconstruct(model, compressed, X, info, ridge=0.0, throw=False)
    assert rebuilt_info.result == jaxlump.RESULTS.least_squares_rank_deficient
    first, second = [layer for layer in rebuilt.layers if isinstance(layer, eqx.nn.Linear)][:2]
    a = np.tanh(X @ np.asarray(first.weight).T + np.asarray(first.bias))
    assert np.ptp(a[:, 0]) == 0.0  # neuron 0 is constant
    target = pre_activations(model, X)[1]
    fitted = a @ np.asarray(second.weight).T + np.asarray(second.bias)
    for j, mask in enumerate(np.asarray(info.weight_masks[1])):
        w_row, b_row = lstsq(a[:, mask], target[:, j])
        np.testing.assert_allclose(fitted[:, j], a[:, mask] @ w_row + b_row, rtol=0, atol=1e-8)
    # the default ridge makes the same problem well-posed: Cholesky succeeds and nothing is reported
    _, ridged_info = jaxlump.reconstruct(model, compressed, X, info)
    assert ridged_info.result == jaxlump.RESULTS.successful


def test_float32_solve_does_not_lose_the_digits_of_the_squared_condition_number():
    """κ(A) ≈ 1e3, so κ(AᵀA) ≈ 1e6: float32 normal equations lose ~4e-2 of the solution (measured), the refined
    Cholesky solve keeps ~3e-5 — checked against float64 NumPy least squares on the same float32 data."""
    generator = np.random.default_rng(0)
    n, n_examples = 6, 400
    u, _, vt = np.linalg.svd(generator.standard_normal((n, n)))
    a = (generator.standard_normal((n_examples, n)) @ (u * np.logspace(0, -3, n)) @ vt).astype(np.float32)
    t = (a @ generator.standard_normal((n, 2)) + 0.3).astype(np.float32)
    reference = np.linalg.lstsq(with_ones(a.astype(np.float64)), t.astype(np.float64), rcond=None)[0][:-1].T
    with jax.enable_x64(False):
        w, b, result = solve_layer(
            lambda rows: rows, (jnp.asarray(a)[None], jnp.asarray(t)[None]), jnp.ones((1, n_examples), bool),
            jnp.zeros((2, n), jnp.float32), jnp.zeros(2, jnp.float32), jnp.ones((2, n), bool), jnp.ones(2, bool), True,
            jnp.float32(0.0), per_row=False,
        )  # fmt: skip
    assert w.dtype == jnp.float32 and result == jaxlump.RESULTS.successful
    assert np.abs(np.asarray(w) - reference).max() / np.abs(reference).max() < 1e-3


@pytest.mark.integration  # heavy (10–16 s on 2 cores, large compiles): the second test step keeps step 1 near 10 min
def test_an_overflowing_refit_is_reported_as_the_refit_stage():
    """Finite but huge calibration data overflow the float32 Gram matrix: the refit stage must say so (before,
    the result claimed success or the next call blamed the user's finite model)."""
    with jax.enable_x64(False):
        model = eqx.nn.MLP(3, 2, 8, 1, activation=jnp.tanh, key=jr.key(0))
        x = jnp.asarray(X, jnp.float32) * 1e20
        with pytest.raises(jaxlump.CompressionError, match="jaxlump.lump: Stage 'least-squares refit'"):
            jaxlump.lump(model, x, 0.5, certify_ode=False)
        _, info = jaxlump.lump(model, x, 0.5, certify_ode=False, throw=False)
        assert info.result == jaxlump.RESULTS.least_squares_nonfinite
        masked, masked_info = eqx.filter_jit(lambda m: jaxlump.lump_masked(m, x, 0.5, throw=False))(model)
        assert masked_info.result == jaxlump.RESULTS.least_squares_nonfinite
        with pytest.raises(Exception, match="least-squares refit"):
            jax.block_until_ready(eqx.filter_jit(lambda m: jaxlump.lump_masked(m, x, 0.5)[0])(model))


def test_eps_zero_leaves_an_unmerged_float32_network_bit_for_bit():
    """No two neurons merge at ε = 0 here, so the default refit must not touch a single weight (it used to move
    them by up to 6e-5 in float32)."""
    with jax.enable_x64(False):
        mlp = eqx.nn.MLP(4, 2, 16, 2, activation=jnp.tanh, key=jr.key(0))
        x = jr.normal(jr.key(1), (128, 4))
        small, info = jaxlump.lump(mlp, x, 0.0, certify_ode=False)
        assert info.widths_after.tolist() == [4, 16, 16, 2]
        before, after = (jax.tree_util.tree_leaves(eqx.filter(m, eqx.is_array)) for m in (mlp, small))
        assert all(u.dtype == v.dtype == jnp.float32 and np.array_equal(u, v) for u, v in zip(before, after))


def test_layers_before_the_first_merge_are_kept_and_later_ones_refit():
    """Identity partition in layer 1, a real merge in layer 2: layer 1 stays bit for bit, layers 2 and 3 change."""
    model, _ = planted_mlp(jr.key(3), WIDTHS, (8, 3), "tanh", noise=1e-3)
    small, info = jaxlump.lump(model, X, 0.05, certify_ode=False)
    assert np.asarray(info.partitions[0]).tolist() == list(range(8)) and int(info.widths_after[2]) < 8
    (w1, w2, w3), (b1, _, _) = parameters(small)
    (v1, _, _), (c1, _, _) = parameters(model)
    assert np.array_equal(w1, v1) and np.array_equal(b1, c1)
    (_, q2, q3), _ = parameters(jaxlump.lump(model, X, 0.05, reconstruct=False, certify_ode=False)[0])
    assert w2.shape == q2.shape and not np.array_equal(w2, q2) and not np.array_equal(w3, q3)


def test_without_info_the_support_is_read_from_the_zeros():
    """A model pruned elsewhere (no info): structured-pruned neurons (zero row and column) are removed, weights
    that are zero stay zero, and the result equals reconstruct with the equivalent hand-made info."""
    model = random_mlp(jr.key(9), WIDTHS)
    compressed, info = masked_compression(model, 0.5, jr.key(10))
    weights, biases = ([np.array(p) for p in group] for group in parameters(compressed))
    weights[0][2, :], biases[0][2], weights[1][:, 2] = 0.0, 0.0, 0.0  # neuron 2 of layer 1 pruned away
    compressed = build(WIDTHS, weights, biases, "tanh", "mlp")
    rebuilt, inferred = jaxlump.reconstruct(model, compressed, X)
    assert inferred.method == "reconstruct" and not inferred.structured
    assert np.asarray(inferred.partitions[0]).tolist() == [0, 1, -1, 3, 4, 5, 6, 7]
    assert inferred.widths_after.tolist() == [3, 7, 8, 2]
    hand = dataclasses.replace(
        info,
        partitions=inferred.partitions,
        weight_masks=tuple(jnp.asarray(w != 0) for w in weights),
    )
    expected, _ = jaxlump.reconstruct(model, compressed, X, hand)
    for got, want, w in zip(parameters(rebuilt)[0], parameters(expected)[0], weights):
        np.testing.assert_array_equal(got, want)
        assert np.all(got[w == 0] == 0)
    with pytest.raises(ValueError, match="without `info`.*widths"):
        jaxlump.reconstruct(model, random_mlp(jr.key(5), (3, 4, 4, 2)), X)


def test_small_calibration_set_and_the_ridge_pull():
    model = random_mlp(jr.key(3), WIDTHS)
    small, info = jaxlump.lump(model, None, 0.6, reconstruct=False)
    assert max(hidden_widths(small)) > 5
    x_small = X[:5]  # fewer examples than neurons feeding the next layer
    rebuilt, rebuilt_info = jaxlump.reconstruct(model, small, x_small, info)
    assert rebuilt_info.result == jaxlump.RESULTS.successful
    assert all(np.all(np.isfinite(p)) for p in sum(parameters(rebuilt), []))
    assert np.all(np.isfinite(numpy_outputs(rebuilt, X_TEST)))
    # λ → ∞ pins every row to the compressed one; the (unpenalised) bias then is the least-squares intercept
    pinned, _ = jaxlump.reconstruct(model, small, x_small, info, ridge=1e10)
    small_w, small_b = parameters(small)
    pinned_w, pinned_b = parameters(pinned)
    targets = pre_activations(model, x_small)
    labels = [*(np.asarray(p) for p in info.partitions), np.arange(WIDTHS[-1])]
    a = x_small
    for l, (w, w0, b) in enumerate(zip(pinned_w, small_w, pinned_b)):
        np.testing.assert_allclose(w, w0, rtol=0, atol=1e-7)
        block_targets = np.stack([targets[l][:, labels[l] == h].mean(axis=1) for h in range(w.shape[0])], axis=1)
        np.testing.assert_allclose(b, block_targets.mean(0) - w @ a.mean(0), rtol=0, atol=1e-7)
        a = np.tanh(a @ w.T + b)
    moderate, _ = jaxlump.reconstruct(model, small, x_small, info, ridge=1.0)
    distance = [np.abs(w - w0).max() for w, w0 in zip(parameters(moderate)[0], small_w)]
    assert max(distance) > 1e-5  # a moderate ridge does move the weights


def _replace_partitions(info, partitions):
    return eqx.tree_at(lambda i: i.partitions, info, partitions)


def _bad_inputs():
    model = random_mlp(jr.key(4), WIDTHS)
    small, info = jaxlump.lump(model, None, 0.6, reconstruct=False)
    k = hidden_widths(small)
    arguments = {"original": model, "compressed": small, "x_calib": X, "info": info}
    too_far = (jnp.asarray(np.where(np.asarray(info.partitions[0]) == 0, k[0], info.partitions[0])), info.partitions[1])
    return arguments, [
        ({"compressed": random_mlp(jr.key(5), (4, *k, 2))}, "compressed"),
        ({"compressed": random_mlp(jr.key(5), (3, k[0], 2))}, "compressed"),
        ({"compressed": random_mlp(jr.key(5), (3, *k, 2), activation="relu")}, "compressed"),
        ({"info": _replace_partitions(info, too_far)}, "info.partitions"),
        ({"info": _replace_partitions(info, info.partitions[:1])}, "info.partitions"),
        ({"info": _replace_partitions(info, (info.partitions[0][:-1], info.partitions[1]))}, "info.partitions"),
        ({"x_calib": X[:, :2]}, "x_calib"),
        ({"x_calib": np.where(np.arange(3) == 0, np.nan, X)}, "x_calib"),
        ({"x_calib": np.where(np.arange(3) == 2, np.inf, X)}, "x_calib"),
        ({"x_calib": np.zeros((0, 3))}, "x_calib"),
        ({"x_calib": X[0]}, "x_calib"),
        ({"ridge": -1e-3}, "ridge"),
        ({"ridge": float("nan")}, "ridge"),
    ]


def test_bad_input_is_refused_naming_the_argument():
    arguments, cases = _bad_inputs()
    accepted = []
    for index, (bad, name) in enumerate(cases):
        call = arguments | bad
        try:
            jaxlump.reconstruct(
                call.pop("original"), call.pop("compressed"), call.pop("x_calib"), call.pop("info"), **call
            )
        except ValueError as error:
            if name not in str(error):
                accepted.append(f"case {index}: message does not name {name!r}: {error}")
        else:
            accepted.append(f"case {index} ({name}) was accepted")
    assert not accepted, accepted


def test_inputs_are_not_modified():
    arguments, _ = _bad_inputs()
    before = [np.array(leaf) for leaf in jax.tree_util.tree_leaves(eqx.filter(arguments, eqx.is_array))]
    jaxlump.reconstruct(arguments["original"], arguments["compressed"], X, arguments["info"])
    after = jax.tree_util.tree_leaves(eqx.filter(arguments, eqx.is_array))
    assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(after, before))


@pytest.mark.parametrize("use_bias", [False, True], ids=["no bias", "bias"])
def test_solve_layer_streamed_is_numpy_lstsq_with_or_without_an_intercept(use_bias):
    """Inputs far from zero mean, 50 rows streamed 8 at a time: without a bias the solution is NumPy's uncentred
    least squares (a layer without a bias reads as zeros, which stay), with one the centred solution and its
    intercept."""
    generator = np.random.default_rng(3)
    a = generator.normal(2.0, 1.0, (50, 4))
    t = a @ generator.normal(size=(4, 3)) + 1.5 + 0.1 * generator.normal(size=(50, 3))
    index, valid = row_batches(jnp.arange(50)[:, None], 8)
    b0 = jnp.zeros(3)
    w, b, result = solve_layer(
        lambda i: (jnp.asarray(a)[i[:, 0]], jnp.asarray(t)[i[:, 0]]),
        index,
        valid,
        jnp.zeros((3, 4)),
        b0,
        jnp.ones((3, 4), bool),
        jnp.ones(3, bool),
        use_bias,
        0.0,
        False,
    )
    assert result == jaxlump.RESULTS.successful
    design = np.concatenate([a, np.ones((50, 1))], axis=1) if use_bias else a
    solution = np.linalg.lstsq(design, t, rcond=None)[0]
    np.testing.assert_allclose(np.asarray(w), solution[:4].T, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(np.asarray(b), solution[4] if use_bias else b0, rtol=1e-8, atol=1e-10)
