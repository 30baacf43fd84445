"""The structural ODE view: augmented matrices, aggregated coefficients (the lumping criterion), affine system,
ERODE export. Truth: NumPy references, planted duplicate neurons, the forward-equivalence condition of a
linear ODE, and a parser for the exported text."""

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jaxlump._encoding import affine_system, aggregated_coefficients, augmented_matrices, to_erode
from jaxlump._network import DenseChain


def planted_chain() -> DenseChain:
    """3 → 5 → 4 → 2 tanh net; hidden-1 neurons 1 and 3 are exact duplicates (same weights and bias), and
    hidden-2 neurons 0 and 2 differ in their weights from neurons 1 and 3 but agree on the sums over {1, 3}."""
    keys = jr.split(jr.key(0), 6)
    w1 = jr.normal(keys[0], (5, 3))
    b1 = jr.normal(keys[1], (5,))
    w1, b1 = w1.at[3].set(w1[1]), b1.at[3].set(b1[1])
    w2 = jr.normal(keys[2], (4, 5))
    b2 = jr.normal(keys[3], (4,))
    w2 = w2.at[2].set(w2[0]).at[2, 1].set(w2[0, 1] + 0.7).at[2, 3].set(w2[0, 3] - 0.7)
    b2 = b2.at[2].set(b2[0])
    w3, b3 = jr.normal(keys[4], (2, 4)), jr.normal(keys[5], (2,))
    return DenseChain((w1, w2, w3), (b1, b2, b3), ("tanh", "tanh", "identity"), (True, True, True))


def test_augmented_matrices_are_weights_then_bias():
    chain = planted_chain()
    for augmented, w, b in zip(augmented_matrices(chain), chain.weights, chain.biases, strict=True):
        assert augmented.shape == (w.shape[0], w.shape[1] + 1)
        np.testing.assert_array_equal(augmented, np.hstack([np.asarray(w), np.asarray(b)[:, None]]))


def test_augmented_matrices_accept_an_mlp():
    mlp = eqx.nn.MLP(3, 2, 4, 2, key=jr.key(1))
    augmented = augmented_matrices(mlp)
    np.testing.assert_array_equal(augmented[1][:, :4], mlp.layers[1].weight)
    np.testing.assert_array_equal(augmented[1][:, 4], mlp.layers[1].bias)


def test_aggregated_coefficients_match_numpy_and_leave_unused_labels_zero():
    weight, bias = jr.normal(jr.key(2), (6, 7)), jr.normal(jr.key(3), (6,))
    labels = np.array([0, 2, 2, 0, 4, 2, 0])  # blocks 1 and 3 unused
    rows = np.asarray(aggregated_coefficients(weight, bias, jnp.asarray(labels), 5))
    w = np.asarray(weight)
    expected = np.stack([w[:, labels == block].sum(axis=1) for block in range(5)] + [np.asarray(bias)], axis=1)
    np.testing.assert_allclose(rows, expected, rtol=0, atol=1e-14)
    assert np.all(rows[:, [1, 3]] == 0)


def test_planted_duplicates_have_identical_aggregated_rows():
    chain = planted_chain()
    singletons = aggregated_coefficients(chain.weights[0], chain.biases[0], jnp.arange(3), 3)
    np.testing.assert_array_equal(singletons[1], singletons[3])
    assert not np.allclose(singletons[0], singletons[1])
    # Layer 2 with layer 1 partitioned as {0}, {1, 3}, {2}, {4}: neurons 0 and 2 become lumpable ...
    merged = aggregated_coefficients(chain.weights[1], chain.biases[1], jnp.array([0, 1, 2, 1, 3]), 4)
    np.testing.assert_allclose(merged[0], merged[2], rtol=0, atol=1e-14)
    assert not np.allclose(merged[0], merged[1])
    # ... but not while neurons 1 and 3 of layer 1 stay apart.
    apart = aggregated_coefficients(chain.weights[1], chain.biases[1], jnp.arange(5), 5)
    assert np.max(np.abs(apart[0] - apart[2])) == pytest.approx(0.7)


def test_aggregated_coefficients_jit_with_static_block_count_and_traced_label_check():
    weight, bias = jr.normal(jr.key(4), (3, 4)), jnp.zeros(3)
    jitted = jax.jit(aggregated_coefficients, static_argnums=3)
    labels = jnp.array([1, 0, 1, 0])
    np.testing.assert_allclose(jitted(weight, bias, labels, 2), aggregated_coefficients(weight, bias, labels, 2))
    with pytest.raises(Exception, match="prev_labels"):
        jax.block_until_ready(jitted(weight, bias, jnp.array([0, 1, 2, 0]), 2))


@pytest.mark.parametrize(
    ("labels", "n_blocks", "argument"),
    [([0, 1, 2, 0], 2, "prev_labels"), ([0, 1, 0], 2, "prev_labels"), ([0.0, 1.0, 0.0, 1.0], 2, "prev_labels"),
     ([0, 1, 0, 1], 0, "n_prev_blocks"), ([0, 1, 0, 1], 2.0, "n_prev_blocks")],
)  # fmt: skip
def test_aggregated_coefficients_refuse_bad_labels(labels, n_blocks, argument):
    with pytest.raises(ValueError, match=argument):
        aggregated_coefficients(jnp.ones((3, 4)), jnp.zeros(3), jnp.asarray(labels), n_blocks)


def _reference_affine_matrix(chain: DenseChain) -> tuple[np.ndarray, list[str]]:
    """Built by name lookup, independently of the implementation's index arithmetic."""
    names = [f"L0_N{i}" for i in range(chain.widths[0])]
    for l, width in enumerate(chain.widths[1:], start=1):
        names += [f"L{l}_bias"] + [f"L{l}_N{i}" for i in range(width)]
    index = {name: i for i, name in enumerate(names)}
    matrix = np.zeros((len(names), len(names)))
    for l, (w, b) in enumerate(zip(chain.weights, chain.biases, strict=True), start=1):
        for m in range(w.shape[0]):
            matrix[index[f"L{l}_N{m}"], index[f"L{l}_bias"]] = b[m]
            for k in range(w.shape[1]):
                matrix[index[f"L{l}_N{m}"], index[f"L{l - 1}_N{k}"]] = w[m, k]
    return matrix, names


def test_affine_system_places_weights_and_biases_in_their_blocks():
    chain = planted_chain()
    matrix, names = affine_system(chain)
    expected, expected_names = _reference_affine_matrix(chain)
    assert list(names) == expected_names
    np.testing.assert_array_equal(matrix, expected)


def test_affine_system_forward_equivalence_is_the_lumping_criterion():
    """For ẋ = Mᵀx and an aggregation L (blocks × units), d(Lx)/dt closes over Lx iff the columns of L Mᵀ are
    constant within blocks. Merging the planted duplicates (and then the hidden-2 pair) passes; merging two
    unrelated neurons fails."""
    matrix, names = affine_system(planted_chain())
    pull = np.asarray(matrix).T

    def closes(groups: list[list[str]]) -> bool:
        grouped = {name for group in groups for name in group}
        blocks = groups + [[name] for name in names if name not in grouped]
        aggregation = np.zeros((len(blocks), len(names)))
        for row, block in enumerate(blocks):
            aggregation[row, [names.index(name) for name in block]] = 1.0
        lumped = aggregation @ pull
        reduced = lumped @ np.linalg.pinv(aggregation)
        return np.allclose(reduced @ aggregation, lumped, rtol=0, atol=1e-12)

    assert closes([["L1_N1", "L1_N3"]])
    assert closes([["L1_N1", "L1_N3"], ["L2_N0", "L2_N2"]])
    assert not closes([["L2_N0", "L2_N2"]])  # needs L1_N1 ~ L1_N3 first
    assert not closes([["L1_N0", "L1_N1"]])


def parse_erode(text: str) -> tuple[str, dict[str, float], dict[str, dict[str, float]]]:
    """A minimal reader of the `.ode` subset `to_erode` writes: model name, inits, linear ODE right-hand sides."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("//")]
    assert lines[-1] == "end model"
    name = re.fullmatch(r"begin model (\w+)", lines[0]).group(1)
    inits = lines[lines.index("begin init") + 1 : lines.index("end init")]
    odes = lines[lines.index("begin ODE") + 1 : lines.index("end ODE")]
    init = {lhs.strip(): float(rhs) for lhs, rhs in (line.split("=") for line in inits)}
    derivatives = {}
    for line in odes:
        species, rhs = re.fullmatch(r"d\((\w+)\) = (.+)", line).groups()
        terms = re.findall(r"([+-]?)\s*([0-9.]+)\*(\w+)", rhs)
        assert rhs == "0" or re.sub(r"\s", "", rhs) == "".join(f"{s}{v}*{x}" for s, v, x in terms)
        derivatives[species] = {x: float(s + v) for s, v, x in terms}
    return name, init, derivatives


def test_erode_export_parses_back_to_the_same_coefficients():
    chain = planted_chain()
    text = to_erode(chain, name="planted")
    name, init, derivatives = parse_erode(text)
    matrix, names = affine_system(chain)
    matrix = np.asarray(matrix)
    assert name == "planted"
    assert list(init) == list(derivatives) == list(names)
    assert all(init[unit] == (1.0 if unit.endswith("_bias") else 0.0) for unit in names)
    for k, unit in enumerate(names):
        parsed = np.zeros(len(names))
        for source, value in derivatives[unit].items():
            parsed[names.index(source)] = value
        np.testing.assert_array_equal(parsed, matrix[:, k])  # exact: numbers are written to round-trip
    assert derivatives["L3_N0"] == derivatives["L3_N1"] == {}  # outputs are constant
    assert "d(L3_N0) = 0" in text


def test_erode_export_of_an_mlp_lists_the_hidden_layer_blocks():
    text = to_erode(eqx.nn.MLP(2, 1, 3, 2, key=jr.key(5)))
    assert text.startswith("//") and "begin model network" in text
    assert "// initial block, hidden layer 2: {L2_N0, L2_N1, L2_N2}" in text


@pytest.mark.parametrize("name", ["two words", "1net", "", None])
def test_erode_export_refuses_a_bad_name(name):
    with pytest.raises(ValueError, match="`name`"):
        to_erode(planted_chain(), name=name)
