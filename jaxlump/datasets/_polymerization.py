"""Reversible chain-growth polymerization (Becker–Döring kinetics) in a flow reactor."""

from collections.abc import Mapping

import diffrax
from jaxtyping import PRNGKeyArray

from ._dataset import Dataset, check_count
from ._reaction_network import MassActionNetwork, Reaction
from ._simulate import TSIT5, simulated_dataset, with_overrides

POLYMERIZATION_RATES: Mapping[str, float] = {"inflow": 1.0, "k_grow": 1.0, "k_shrink": 0.5, "k_out": 0.2}


def polymerization_network(max_length: int = 7, rates: Mapping[str, float] = POLYMERIZATION_RATES) -> MassActionNetwork:
    """The chain-growth network of `polymerization` as a `MassActionNetwork`."""
    x = [f"X{i}" for i in range(1, max_length + 1)]
    reactions: list[Reaction] = [({}, {x[0]: 1}, rates["inflow"])]
    for i in range(max_length - 1):
        # X1 + X_{i+1} ⇌ X_{i+2} (0-based names: x[0] + x[i] ⇌ x[i+1]); for i = 0 this is 2 X1 ⇌ X2.
        reactants = {x[0]: 2} if i == 0 else {x[0]: 1, x[i]: 1}
        reactions += [(reactants, {x[i + 1]: 1}, rates["k_grow"]), ({x[i + 1]: 1}, reactants, rates["k_shrink"])]
    reactions += [({name: 1}, {}, rates["k_out"]) for name in x]
    return MassActionNetwork.from_reactions(x, reactions)


def polymerization(
    n_train: int = 3200,
    n_test: int = 800,
    *,
    key: PRNGKeyArray | int = 0,
    max_length: int = 7,
    rates: Mapping[str, float] | None = None,
    n_times: int = 40,
    t_end: float = 10.0,
    burn_in: float = 0.0,
    target: str = "vector_field",
    standardize: bool = True,
    solver: diffrax.AbstractSolver = TSIT5,
    rtol: float = 1e-7,
    atol: float = 1e-9,
) -> Dataset:
    """Chain-growth polymerization: regress `ẋ` from the concentrations of chains of length 1 … m.

    `X_i` is a chain of i monomers (X1: the monomer). Monomers flow in, chains grow and shrink by one
    monomer at a time (Becker–Döring kinetics) and everything is diluted by the outflow, by mass action:

        ∅ → X1                 (inflow)
        X1 + X_i ⇌ X_{i+1}     (k_grow, k_shrink), i = 1 … m − 1   (i = 1: 2 X1 ⇌ X2)
        X_i → ∅                (k_out),  i = 1 … m

    so, with `g_i = k_grow X1 X_i − k_shrink X_{i+1}` the net growth flux from length i to i + 1,
    `Ẋ1 = inflow − 2 g_1 − Σ_{i=2}^{m−1} g_i − k_out X1` and `Ẋ_i = g_{i−1} − g_i − k_out X_i`
    (`g_m = 0`). Without inflow and outflow the monomer mass `Σ_i i X_i` is conserved. Defaults
    (`POLYMERIZATION_RATES`): inflow = 1, k_grow = 1, k_shrink = 0.5, k_out = 0.2, m = 7. Initial
    conditions are uniform on X1 ∈ [0, 2], X_i ∈ [0, 0.5] (i ≥ 2); each trajectory is saved at `n_times`
    equally spaced times on `[burn_in, burn_in + t_end]`.

    Chain-growth networks of identical steps are a typical case for reduction by lumping of
    reaction networks (Cardelli et al. 2016, 2017): the model is written as an ERODE-style mass-action
    network, here with unequal chain lengths kept distinct.

    **Arguments:**

    - `n_train`, `n_test`: number of (state, target) pairs in each set.
    - `key`: a `jax.random` key or integer seed.
    - `max_length`: the longest chain m ≥ 2 (the number of species).
    - `rates`: overrides of `POLYMERIZATION_RATES`.
    - `n_times`, `t_end`, `burn_in`, `target`, `standardize`, `solver`, `rtol`, `atol`: as in `glycolytic`.

    **Returns:** a `Dataset` with m features and m targets.

    **Raises:** `ValueError`/`TypeError` for malformed arguments.

    **Example:**

    ```python
    from jaxlump.datasets import polymerization

    data = polymerization(n_train=400, n_test=100, max_length=5)
    assert data.feature_names == ("X1", "X2", "X3", "X4", "X5")
    ```

    References: R. Becker, W. Döring, *Kinetische Behandlung der Keimbildung in übersättigten Dämpfen*,
    Ann. Phys. 416 (1935) 719–752; J. M. Ball, J. Carr, O. Penrose, *The Becker–Döring cluster equations*,
    Commun. Math. Phys. 104 (1986) 657–692; L. Cardelli, M. Tribastone, M. Tschaikowski, A. Vandin,
    *Symbolic computation of differential equivalences*, POPL 2016, and *Maximal aggregation of
    polynomial dynamical systems*, PNAS 114 (2017) 10029–10034.
    """
    max_length = check_count(max_length, "max_length", lower=2)
    all_rates = with_overrides(POLYMERIZATION_RATES, rates, "rates")
    network = polymerization_network(max_length, all_rates)
    return simulated_dataset(
        "polymerization",
        network,
        [0.0] * max_length,
        [2.0] + [0.5] * (max_length - 1),
        network.species,
        args=None,
        n_train=n_train,
        n_test=n_test,
        n_times=n_times,
        t_end=t_end,
        burn_in=burn_in,
        key=key,
        solver=solver,
        rtol=rtol,
        atol=atol,
        standardize=standardize,
        target=target,
    )
