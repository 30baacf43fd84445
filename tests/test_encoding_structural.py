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
from _networks import planted_mlp

from jaxlump._criteria.encoding import affine_system, aggregated_coefficients, augmented_matrices, to_erode
from jaxlump._model.network import DenseChain


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


# A reader of the part of ERODE's grammar (ERODE4.18, ChemicalReactionNetwork.xtext) that an exported network uses:
#   ModelDefinition: 'begin' 'model' ID ICList InitPartition? ODEsList Command* 'end' 'model'
#   ICList: 'begin' 'init' (ID ('=' Number)?)+ 'end' 'init'
#   InitPartition: 'begin' 'partition' (Block (',' Block)*)? 'end' 'partition';  Block: '{' ID (',' ID)* '}'
#   ODEsList: 'begin' 'ODE' ('d' '(' ID ')' '=' Sum)* 'end' 'ODE';  Sum: '-'? Term (('+'|'-') Term)* | '0'
#   Term: Number '*' ID;  Command: 'reduceFE' '(' 'prePartition' '=' ('NO'|'USER'|'IC') ')'
# with its terminals: ID = [A-Za-z_][A-Za-z0-9_]*, NAT = [1-9][0-9]*, ZERO = '0', NONNEGATIVEREAL = INT '.' INT
# (exponent forms are not written), and its keywords: a keyword is never an ID (ERODE's ID has no '^' escape).
# These are some of the grammar's literals, written down from the grammar, independently of jaxlump's list.
KEYWORDS = {"begin", "end", "model", "network", "Network", "Boolean", "init", "partition", "ODE", "d", "N", "IC",
            "NO", "USER", "reduceFE", "prePartition", "reactions", "parameters", "views", "species", "load", "e",
            "true", "false", "abs", "min", "max", "and", "or", "not", "this", "print", "plot"}  # fmt: skip
TOKEN = re.compile(r"\s*(?:(//[^\n]*)|([A-Za-z_][A-Za-z0-9_]*)|([0-9]+\.[0-9]+|[1-9][0-9]*|0)|([-+*=(),{}]))")


def tokens(text: str) -> list[tuple[str, str]]:
    out, position = [], 0
    while text[position:].strip():
        match = TOKEN.match(text, position)
        assert match, f"no ERODE token at {text[position : position + 30]!r}"
        comment, word, number, symbol = match.groups()
        if word is not None:
            out.append(("keyword" if word in KEYWORDS else "id", word))
        elif number is not None:
            out.append(("number", number))
        elif symbol is not None:
            out.append(("symbol", symbol))
        position = match.end()
    return out


class Reader:
    def __init__(self, text):
        self.tokens, self.i = tokens(text), 0

    def take(self, kind, value=None) -> str:
        assert self.i < len(self.tokens), f"expected {value or kind}, found the end"
        found = self.tokens[self.i]
        assert found[0] == kind and value in (None, found[1]), f"expected {value or kind}, found {found}"
        self.i += 1
        return found[1]

    def peek(self, value) -> bool:
        return self.i < len(self.tokens) and self.tokens[self.i][1] == value


def parse_erode(text: str):
    """(name, init, partition blocks, {species: {successor: coefficient}}, commands) of an exported model."""
    r = Reader(text)
    r.take("keyword", "begin"), r.take("keyword", "model")
    name = r.take("id")
    r.take("keyword", "begin"), r.take("keyword", "init")
    init = {}
    while not r.peek("end"):
        species = r.take("id")
        r.take("symbol", "=")
        init[species] = float(r.take("number"))
    r.take("keyword", "end"), r.take("keyword", "init")
    r.take("keyword", "begin")
    blocks = []
    if r.peek("partition"):
        r.take("keyword", "partition")
        while not r.peek("end"):
            r.take("symbol", "{")
            block = [r.take("id")]
            while r.peek(","):
                r.take("symbol", ",")
                block.append(r.take("id"))
            r.take("symbol", "}")
            blocks.append(block)
            if r.peek(","):
                r.take("symbol", ",")
        r.take("keyword", "end"), r.take("keyword", "partition")
        r.take("keyword", "begin")
    r.take("keyword", "ODE")
    derivatives = {}
    while r.peek("d"):
        r.take("keyword", "d"), r.take("symbol", "("), (species := r.take("id")), r.take("symbol", ")")
        r.take("symbol", "=")
        terms, sign = {}, 1.0
        if r.peek("0"):
            r.take("number", "0")
        else:
            if r.peek("-"):
                r.take("symbol", "-")
                sign = -1.0
            while True:
                value = sign * float(r.take("number"))
                r.take("symbol", "*")
                terms[r.take("id")] = value
                if not (r.peek("+") or r.peek("-")):
                    break
                sign = 1.0 if r.take("symbol") == "+" else -1.0
        derivatives[species] = terms
    r.take("keyword", "end"), r.take("keyword", "ODE")
    commands = []
    while r.peek("reduceFE"):
        r.take("keyword", "reduceFE"), r.take("symbol", "("), r.take("keyword", "prePartition"), r.take("symbol", "=")
        commands.append(r.take("keyword"))
        r.take("symbol", ")")
    r.take("keyword", "end"), r.take("keyword", "model")
    assert r.i == len(r.tokens)
    return name, init, blocks, derivatives, commands


def forward_reduction(names, blocks, derivatives) -> list[set[str]]:
    """ERODE's forward reduction of ẋ = Mᵀx from a user partition (species it does not list: one leftover
    block): split blocks until, for every block C, units k of one block agree on Σ_{i∈C} M[k, i], where
    M[k, i] is the coefficient of x_k in d(x_i)."""
    listed = {unit for block in blocks for unit in block}
    partition = [set(b) for b in blocks] + ([set(names) - listed] if set(names) - listed else [])
    while True:
        block_of = {unit: j for j, block in enumerate(partition) for unit in block}

        def signature(k, block_of=block_of):
            sums = [0.0] * (max(block_of.values()) + 1)
            for i, terms in derivatives.items():
                sums[block_of[i]] += terms.get(k, 0.0)
            return tuple(sums)

        refined = []
        for block in partition:
            groups = {}
            for k in sorted(block):
                groups.setdefault(signature(k), set()).add(k)
            refined += list(groups.values())
        if len(refined) == len(partition):
            return partition
        partition = refined


def test_erode_export_parses_back_to_the_same_coefficients_and_partition():
    chain = planted_chain()
    text = to_erode(chain, name="planted")
    name, init, blocks, derivatives, commands = parse_erode(text)
    matrix, names = affine_system(chain)
    matrix = np.asarray(matrix)
    assert name == "planted" and commands == ["USER"]
    assert list(init) == list(derivatives) == list(names)
    assert all(init[unit] == (1.0 if unit.endswith("_bias") else 0.0) for unit in names)
    for k, unit in enumerate(names):
        parsed = np.zeros(len(names))
        for source, value in derivatives[unit].items():
            parsed[names.index(source)] = value
        np.testing.assert_array_equal(parsed, matrix[:, k])  # exact: numbers are written to round-trip
    # Against the network's own coefficients: M[L{l}_N{m}, L{l-1}_N{k}] = W^l_mk, M[L{l}_N{m}, L{l}_bias] = b^l_m.
    for l, (w, b) in enumerate(zip(chain.weights, chain.biases, strict=True), start=1):
        previous = [f"L{l - 1}_N{k}" for k in range(w.shape[1])] + [f"L{l}_bias"]
        for m in range(w.shape[0]):
            row = [derivatives[unit].get(f"L{l}_N{m}", 0.0) for unit in previous]
            assert row == [*np.asarray(w[m]).tolist(), float(b[m])]
    assert derivatives["L3_N0"] == derivatives["L3_N1"] == {}  # outputs are constant
    singletons = [[unit] for unit in names if not re.fullmatch(r"L[12]_N\d+", unit)]
    assert sorted(blocks) == sorted(singletons + [[f"L1_N{i}" for i in range(5)], [f"L2_N{i}" for i in range(4)]])


@pytest.mark.parametrize("seed", range(4))
def test_erode_forward_reduction_from_the_exported_partition_finds_the_planted_lumping(seed):
    """What ERODE computes with `reduceFE(prePartition=USER)` on the export: the planted groups, inputs, bias
    units and outputs untouched. Without the partition (everything in one block, ERODE's default) it is not."""
    model, planted = planted_mlp(jr.key(seed), (3, 6, 6, 2), (3, 2), kind="sequential")
    name, _, blocks, derivatives, _ = parse_erode(to_erode(model))
    names = list(derivatives)
    reduced = forward_reduction(names, blocks, derivatives)
    for l, labels in enumerate(planted, start=1):
        found = sorted(
            sorted(int(u.split("_N")[1]) for u in block) for block in reduced if f"L{l}_N" in next(iter(block))
        )
        expected = sorted(sorted(np.flatnonzero(labels == g).tolist()) for g in np.unique(labels))
        assert found == expected
    assert all(len(block) == 1 for block in reduced if not re.match(r"L[12]_N", next(iter(block))))
    assert forward_reduction(names, [], derivatives) != reduced


def test_erode_default_name_is_not_a_keyword():
    text = to_erode(eqx.nn.MLP(2, 1, 3, 2, key=jr.key(5)))
    assert text.startswith("begin model jaxlump_network\n") and parse_erode(text)[0] == "jaxlump_network"
    with pytest.raises(AssertionError, match="expected id, found \\('keyword', 'network'\\)"):
        parse_erode(text.replace("jaxlump_network", "network"))  # what the export wrote before: the parser stops


@pytest.mark.parametrize("name", ["two words", "1net", "", None, "network", "Network", "model", "init", "ODE", "d"])
def test_erode_export_refuses_a_bad_name(name):
    with pytest.raises(ValueError, match="`name`"):
        to_erode(planted_chain(), name=name)
