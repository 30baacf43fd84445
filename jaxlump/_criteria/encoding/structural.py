"""The structural ODE view of a network: the affine system that carries the lumping criterion (DESIGN §2a).

Add one bias unit `⊥_l` per layer (it stands for the constant 1 appended to `a^{l-1}`) and write the
augmented matrix `M` over all units with `M[m, k] = W^l_mk` and `M[m, ⊥_l] = b^l_m`. The degree-1
polynomial ODE

    ẋ = Mᵀ x,   i.e.   ẋ_k = Σ_{m ∈ succ(k)} M[m, k] x_m          ("pull" orientation)

is the reaction-network form that ERODE (Cardelli, Tribastone, Tschaikowski, Vandin) imports as an affine
system. A partition is a forward differential equivalence of this linear ODE iff, for neurons m, m′ of one
block and every block B of the partition, `Σ_{k∈B} M[m, k] = Σ_{k∈B} M[m′, k]`: equal aggregated incoming
weights `c_m(B) = Σ_{k∈B} W_mk` and (the bias unit being a singleton) equal biases — exactly the neuron
groupings that leave the network function unchanged. Time has no physical meaning here.

Units are ordered `L0_N0 .. L0_N{n_0-1}, L1_bias, L1_N0 .. L1_N{n_1-1}, L2_bias, ..., LL_bias, LL_N*`, so the
columns of layer `l`'s augmented matrix `[W^l | b^l]` (the units `L{l-1}_N*` then `L{l}_bias`) are contiguous.
Output neurons have no successor: their derivative is 0 (constant). Inputs and bias units do have successors
in this orientation, so their derivatives are not 0.
"""

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ..._custom_types import Bias, Weight
from ..._errors import is_traced
from ..._model import to_chain
from ..._model.network import (
    refuse_gated,  # Plain assignments (not annotations), so that linters do not parse the shape strings as Python.
)

_Augmented = Float[Array, "_out _in_plus_1"]  # "_": shapes differ between layers
_Labels = Int[Array, " n_prev"]
_Aggregated = Float[Array, "out blocks_plus_1"]
_System = Float[Array, "units units"]


def augmented_matrices(chain) -> tuple[_Augmented, ...]:
    """Per layer the augmented matrix `[W^l | b^l]`, of shape `n_l × (n_{l-1} + 1)`.

    Row `m` holds neuron m's coefficients in the structural ODE: its incoming weights, then its bias
    (the weight of the bias unit `⊥_l`).

    **Arguments:**

    - `chain`: a `DenseChain` or any model `jaxlump` accepts (`eqx.nn.MLP`, `eqx.nn.Sequential`, ...).

    **Returns:**

    A tuple with one `(n_l, n_{l-1} + 1)` array per layer, input side first.

    **Raises:**

    `TypeError` for an unsupported model, `ValueError` for NaN/inf parameters.

    ```python
    import equinox as eqx, jax.random as jr
    from jaxlump._criteria.encoding.structural import augmented_matrices

    mlp = eqx.nn.MLP(3, 2, 4, 2, key=jr.key(0))
    assert [m.shape for m in augmented_matrices(mlp)] == [(4, 4), (4, 5), (2, 5)]
    ```

    From Dhiman, Passarella, Tribastone, Valerio, *Neural Network Compression by Approximate Differential
    Equivalence* (2026), §2 of jaxlump's DESIGN.
    """
    chain = to_chain(chain, "chain")
    refuse_gated(chain, "chain", "the structural (affine) encoding")
    return tuple(
        jnp.concatenate([w, b[:, None].astype(w.dtype)], axis=1)
        for w, b in zip(chain.weights, chain.biases, strict=True)
    )


def _check_labels(prev_labels, n_prev_blocks: int, n_prev: int) -> jax.Array:
    if not isinstance(n_prev_blocks, (int, np.integer)) or isinstance(n_prev_blocks, bool) or n_prev_blocks < 1:
        raise ValueError(f"`n_prev_blocks` must be a positive Python int (static); received {n_prev_blocks!r}.")
    labels = jnp.asarray(prev_labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer) or labels.shape != (n_prev,):
        raise ValueError(
            f"`prev_labels` must be an integer array of shape ({n_prev},) (one block label per neuron of the "
            f"previous layer); received dtype {labels.dtype} and shape {labels.shape}."
        )
    message = f"`prev_labels` must lie in [0, {n_prev_blocks}) (`n_prev_blocks`)"
    if is_traced(labels):
        return eqx.error_if(labels, jnp.any((labels < 0) | (labels >= n_prev_blocks)), message + ".")
    values = np.asarray(labels)  # NumPy: concrete even inside a `jax.jit` trace
    if values.size and (values.min() < 0 or values.max() >= n_prev_blocks):
        raise ValueError(f"{message}; received labels from {values.min()} to {values.max()}.")
    return labels


def aggregated_coefficients(weight: Weight, bias: Bias, prev_labels: _Labels, n_prev_blocks: int) -> _Aggregated:
    """The ODE coefficients that carry the lumping criterion: `[c_m(B) for each block B, b_m]` per neuron m.

    `c_m(B) = Σ_{k∈B} W_mk` is neuron m's aggregated incoming weight from block B of the previous layer's
    partition. Two neurons of a layer are exactly lumpable (given that partition) iff their rows are equal;
    the structural discrepancy is the L1 distance between rows. Computed as one GEMM with a one-hot matrix
    (deterministic on every backend, at full float precision), jittable with `n_prev_blocks` static.

    **Arguments:**

    - `weight`: `W^l`, shape `(n_l, n_{l-1})`.
    - `bias`: `b^l`, shape `(n_l,)`.
    - `prev_labels`: integer array `(n_{l-1},)`, the block of each previous-layer neuron, in
      `[0, n_prev_blocks)`. A label may be unused: its column is then zero.
    - `n_prev_blocks`: the number of blocks (a static Python int).

    **Returns:**

    An `(n_l, n_prev_blocks + 1)` array: the aggregated weights, then the bias in the last column.

    **Raises:**

    `ValueError` for labels of the wrong shape or dtype, or outside `[0, n_prev_blocks)` (checked with
    `eqx.error_if` when traced).

    ```python
    import jax.numpy as jnp
    from jaxlump._criteria.encoding.structural import aggregated_coefficients

    w = jnp.array([[1.0, 2.0, 3.0], [3.0, 0.0, 3.0]])
    rows = aggregated_coefficients(w, jnp.zeros(2), jnp.array([0, 0, 1]), 2)
    assert jnp.array_equal(rows[0], rows[1])  # both neurons see [3, 3] and bias 0: lumpable
    ```

    From Cardelli et al., forward differential equivalence, as used by Dhiman et al. (2026).
    """
    return block_sums(weight, bias, _check_labels(prev_labels, n_prev_blocks, weight.shape[1]), n_prev_blocks)


def block_sums(weight: Weight, bias: Bias, prev_labels: _Labels, n_prev_blocks: int) -> _Aggregated:
    """`aggregated_coefficients` without its checks of `prev_labels`, for labels that jaxlump computed itself.

    A traced check (`eqx.error_if`) puts a host callback into the compiled program, and JAX keeps no program with a
    host callback in its persistent compilation cache; the lumping pipeline calls this once per layer."""
    one_hot = jax.nn.one_hot(prev_labels, n_prev_blocks, dtype=weight.dtype)
    summed = jnp.matmul(weight, one_hot, precision=jax.lax.Precision.HIGHEST)
    return jnp.concatenate([summed, bias[:, None].astype(summed.dtype)], axis=1)


def unit_names(widths: tuple[int, ...]) -> tuple[str, ...]:
    """Species names in the order of `affine_system`: `L0_N*`, then per layer `L{l}_bias`, `L{l}_N*`."""
    names = [f"L0_N{i}" for i in range(widths[0])]
    for l, width in enumerate(widths[1:], start=1):
        names += [f"L{l}_bias"] + [f"L{l}_N{i}" for i in range(width)]
    return tuple(names)


def affine_system(model) -> tuple[_System, tuple[str, ...]]:
    """The structural view as one affine system `ẋ = Mᵀ x` over all neurons and bias units.

    `M[m, k] = W^l_mk` for neuron m of layer l and neuron k of layer l−1, `M[m, ⊥_l] = b^l_m`, all other
    entries 0 (see the module docs for the unit order and the "pull" orientation).

    **Arguments:**

    - `model`: a `DenseChain` or any model `jaxlump` accepts.

    **Returns:**

    `(M, names)`: the `(N, N)` matrix, `N = Σ_l n_l + L`, and the `N` unit names (`"L1_N3"`, `"L1_bias"`).

    **Raises:**

    `TypeError` for an unsupported model, `ValueError` for NaN/inf parameters.

    ```python
    import equinox as eqx, jax.random as jr
    from jaxlump._criteria.encoding.structural import affine_system

    mlp = eqx.nn.MLP(2, 1, 3, 1, key=jr.key(0))
    m, names = affine_system(mlp)
    assert m.shape == (len(names), len(names)) == (2 + 1 + 3 + 1 + 1,) * 2
    assert float(m[names.index("L2_N0"), names.index("L2_bias")]) == float(mlp.layers[1].bias[0])
    ```

    From ERODE's affine-system import (Cardelli et al., TACAS 2017) and DESIGN §2a.
    """
    chain = to_chain(model)
    refuse_gated(chain, "model", "the structural (affine) encoding (affine_system)")
    widths = chain.widths
    dtype = jnp.result_type(*chain.weights)
    n_units = sum(widths) + chain.n_layers
    matrix = jnp.zeros((n_units, n_units), dtype)
    start_prev = 0  # first unit of layer l-1
    for augmented in augmented_matrices(chain):
        n_out, n_in_plus_1 = augmented.shape
        start = start_prev + n_in_plus_1  # layer l's neurons follow layer l-1's neurons and ⊥_l
        matrix = matrix.at[start : start + n_out, start_prev:start].set(augmented.astype(dtype))
        start_prev = start
    return matrix, unit_names(widths)


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# Every identifier-shaped literal of ERODE's grammar (ERODE4.18, `ChemicalReactionNetwork.xtext`): the lexer
# turns them into keywords, and ERODE's ID terminal has no escape, so none can name a model or a species.
_ERODE_KEYWORDS = frozenset(
    (
        "A ALL AND APACHE AX BDE BFile Boolean E EULER Equivalence FDE FEM Hill IC ICFile M0 MAX MIN Multivalued N "
        "NEW NO NONE Network ODE OLD OR Outputs Outputs_singleton PLUS PQ Probabilistic Program Q Qbar "
        "QeqQminusQbar QminusQbar QueryMinusConstraints REAL_SORT RN Reflexivity ReflexivitySymmetry SUNDIALS "
        "Symmetry TIMES Transitivity USER USER_and_IC Uniform VARS VIEWS XOR Z a abs absTol absolute "
        "addReverseEdges addSelfLoops aggregationFunction algebraic alginit alpha and approximateBDE "
        "approximateFDE arbitrary asMatrix attemptDropTauN avoidReflexivePairs avoidUnbalancedPairs backward begin "
        "both campaign cartesianProduct certain closure coefficients compBound compileAndRunVNODELP "
        "computeDifferentialHull computeJacobian constants constraints cora coraLibrary covar csvFile curry d "
        "decompress defaultIC delta deltaPercentage deltat deterministicCorrection do doNotAddDeltaToRawConstants "
        "doNotPreProcessEdges e elif else end epsilon excactCLump exitMatlab exportAffineSystem exportBNG "
        "exportBoolNet exportC2E2 exportCAGEScript exportCERENA exportCRN exportCausalGraph "
        "exportEpsilonBoundsScript exportFlyFast exportGraphStructure exportICOfAlgebraic exportJacobianFunction "
        "exportLBS exportLNA exportMACRN exportMARN exportMRMCCTMCWithSingleUseOfParams exportMatlab "
        "exportModelica exportPontryaginPolygonMethod exportRndPerturbedRN exportSBML exportSBMLQual "
        "exportScriptEpsCLump exportScriptSolveUCTMC exportScriptsEpsCLump exportStochKit exportStoichiometry "
        "exportZ3 expr false fastDegreeOne fileIn fileInSpecies fileOut fileWhereToStorePartition folderIn "
        "folderOut for forceMassAction form format forward from fse fullSpeciesNames functions generateCME "
        "generateLogs guessPrepartition h_K h_R1 h_R2 h_n1 h_n2 halveRatesOfHomeoReactions highMemory if implies "
        "importAffineSystem importAndPolyCNFFolder importBNG importBNet importBNetFolder importBioLayout "
        "importBoolCubeSBML importCNFFolder importCNFFolderAsQuantumOpt importCRN importChemKin importKonect "
        "importLBS importLinearSystemAsCCSVMatrix importLinearSystemWithInputs importMRMC importMatlab importOSU "
        "importSBML importSBMLFolder importSBMLQualFolder importSpaceEx importUMIST in init inits initsID inputs "
        "inputsOneBlock integrationStep intervalBoundsFactors intervalWidth justBEReduction kMax kvalue "
        "labellingFile lambda library limits linesToSkip load loadProbProg logger lower mainComponent matlabScript "
        "max maxPercPerturb maxStep maxTime maximalTimeStep method min minStep minimize model modelWithBigM "
        "modelWithSmallM multivestaSMC n network newline nextReaction not ode15s ode45 odeFunc odes onTheFlyBR "
        "onTheFlyBRRecursive onTheFlyFR oneLabelAtAtTime onlyFEoonCentreBounds or originalNames otherwise outputs "
        "outputsOneBlock parallelism param parameters paramsToCurry paramsToPerturb partition percentage "
        "perturbed_ic perturbed_params phi plot prePartition precision preserveUserPartion print query queryFile "
        "question reactions reagents reduceBB reduceBBE reduceBDE reduceBE reduceBE_AAt reduceCoRNFE reduceDSB "
        "reduceEFL reduceFB reduceFBE reduceFDE reduceFE reduceFME reduceFPE reduceRndFBE reduceRndFME reduceSE "
        "reduceSMB reduceUCTMCFE reduceUFE reduceUSE reduceUncertainFE reducedFile reduction reductionAlgorithm "
        "relsTol repeats resetParameters runMatlab seedOfTheSeeds setIC setParam simplify simulateCTMC simulateDAE "
        "simulateODE simulations singleoutParams slope_max_error slopes smtTimeCSVFile species ssa stateRewards "
        "stateRewardsFile step stepSize steps strict symbolic symbolicJacobian tEnd tHoriz tauLeapingAbs "
        "tauLeapingRelPop tauLeapingRelProp then thermoDynamicFile this timeStep times to true unionModel unique "
        "unsafeSet upTo upd update upper utopic utopicOLD var viewLabels viewPlot views while write "
        "writeInnerScript writeJacobian writeMainScript z z3C z3Metrics "
    ).split()
)


def _number(value: float) -> str:
    # Positional notation (no exponent) that round-trips exactly: the safest form for ERODE's parser.
    return np.format_float_positional(value, unique=True, trim="-")


def _right_hand_side(coefficients: np.ndarray, names: tuple[str, ...]) -> str:
    terms = []
    for index in np.flatnonzero(coefficients):
        value = float(coefficients[index])
        sign = "-" if value < 0 else "+"
        terms.append(f"{sign} {_number(abs(value))}*{names[index]}")
    if not terms:
        return "0"
    text = " ".join(terms)
    return text[2:] if text.startswith("+ ") else "-" + text[2:]


def _check_erode_name(name) -> str:
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise ValueError(
            f"`name` must be an identifier such as 'jaxlump_network' (letters, digits, _); received {name!r}."
        )
    if name in _ERODE_KEYWORDS:
        raise ValueError(
            f"`name` {name!r} is a keyword of ERODE's grammar, where it cannot name a model (ERODE's parser would "
            "stop there); choose another identifier, e.g. 'jaxlump_network'."
        )
    return name


def _erode_partition(names: tuple[str, ...], widths: tuple[int, ...]) -> list[list[str]]:
    """Inputs, bias units and outputs as singletons, each hidden layer as one block, in unit order."""
    blocks, start = [[unit] for unit in names[: widths[0]]], widths[0]
    for l, width in enumerate(widths[1:], start=1):
        blocks.append([names[start]])  # the bias unit of layer l
        layer = list(names[start + 1 : start + 1 + width])
        blocks += [layer] if l < len(widths) - 1 else [[unit] for unit in layer]
        start += 1 + width
    return blocks


def to_erode(model, name: str = "jaxlump_network", *, reduce: bool = True) -> str:
    """Export the structural view to ERODE's `.ode` text format, to cross-check lumpings with ERODE.

    The file holds the affine system of `affine_system` with numeric coefficients inlined, and the initial
    partition that makes ERODE's forward reduction compute the network's lumping:

        begin model NAME
         begin init
          L0_N0 = 0            (neurons start at 0, bias units at 1; initial values play no part in FDE)
          L1_bias = 1
          ...
         end init
         begin partition
          {L0_N0}, {L0_N1}, {L1_bias}, {L1_N0, L1_N1, L1_N2}, {L2_bias}, {L2_N0}
         end partition
         begin ODE
          d(L0_N0) = 0.5*L1_N0 - 1.25*L1_N1      (ẋ_k = Σ_m M[m, k] x_m, one line per unit)
          ...
          d(L2_N0) = 0                           (outputs: no successor, constant)
         end ODE
         reduceFE(prePartition=USER)
        end model

    The partition lists every input, bias unit and output as its own block and each hidden layer as one
    block: ERODE puts every species a partition does not list into one leftover block, and with its default
    `prePartition=NO` (everything in one block) its reduction merges inputs and bias units and returns a
    partition that is not the network's. Numbers are written in positional notation, exactly (they parse
    back to the same floats, as ERODE's `NAT`, `ZERO` and `INT '.' INT` terminals); a zero coefficient is
    omitted. ERODE's ε-FDE counts a degree-1 difference three times: its ε is 3× jaxlump's structural ε.

    **Arguments:**

    - `model`: a `DenseChain` or any model `jaxlump` accepts (concrete parameters, not traced).
    - `name`: the model name written after `begin model`: an identifier that is not a keyword of ERODE's
        grammar (`network`, `model`, `init`, `ODE`, `partition`, ... are refused).
    - `reduce`: append the command `reduceFE(prePartition=USER)`, ERODE's forward reduction from the
        written partition (default `True`).

    **Returns:**

    The `.ode` text.

    **Raises:**

    `ValueError` for a `name` that is not an identifier or is an ERODE keyword, or NaN/inf parameters;
    `TypeError` for an unsupported model or traced parameters.

    ```python
    import equinox as eqx, jax.random as jr
    from jaxlump import to_erode

    text = to_erode(eqx.nn.MLP(2, 1, 3, 1, key=jr.key(0)), name="tiny")
    assert text.splitlines()[0] == "begin model tiny" and "d(L2_N0) = 0" in text
    assert "  {L0_N0}, {L0_N1}, {L1_bias}, {L1_N0, L1_N1, L1_N2}, {L2_bias}, {L2_N0}" in text
    ```

    ERODE: Cardelli, Tribastone, Tschaikowski, Vandin, TACAS 2017.
    """
    name = _check_erode_name(name)
    chain = to_chain(model)
    refuse_gated(chain, "model", "jaxlump.to_erode (the structural affine encoding)")
    if any(is_traced(w) for w in chain.weights + chain.biases):
        raise TypeError("`model` has traced parameters; call `to_erode` outside `jax.jit`/`jax.vmap`.")
    matrix, names = affine_system(chain)
    matrix = np.asarray(matrix, dtype=np.float64)
    blocks = _erode_partition(names, chain.widths)
    lines = [f"begin model {name}", " begin init"]
    lines += [f"  {unit} = {1 if unit.endswith('_bias') else 0}" for unit in names]
    lines += [" end init", " begin partition", "  " + ", ".join("{" + ", ".join(b) + "}" for b in blocks)]
    lines += [" end partition", " begin ODE"]
    lines += [f"  d({unit}) = {_right_hand_side(matrix[:, k], names)}" for k, unit in enumerate(names)]
    lines += [" end ODE"] + ([" reduceFE(prePartition=USER)"] if reduce else []) + ["end model"]
    return "\n".join(lines) + "\n"
