"""Mass-action chemical reaction networks, and the multisite phosphorylation cycle data set."""

from collections.abc import Mapping, Sequence

import diffrax
import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from ._dataset import Dataset, check_count
from ._simulate import TSIT5, simulated_dataset, with_overrides

# Elementary reactions are at most bimolecular: a species enters a rate with order 0, 1 or 2.
_MAX_ORDER = 2

Reaction = tuple[Mapping[str, int], Mapping[str, int], float]


class MassActionNetwork(eqx.Module):
    """The mass-action vector field of a reaction network, `ẋ = Nᵀ (k ⊙ Π_s x_s^{R_rs})`.

    Reaction r fires at rate `k_r Π_s x_s^{R_rs}` (`R`: reactant orders, ≤ 2) and changes the state by
    row r of the net stoichiometry `N` (products − reactants). A reaction `2A → B` has rate `k A²` and
    consumes two A (no factor ½). The arrays are fields (NumPy float64 from `from_reactions`; traced under
    `jax.jit`), so simulating with other rate constants does not recompile. Called as a diffrax vector
    field `f(t, x, args)`.
    """

    reactant_orders: Int[ArrayLike, "reactions species"]
    net_stoichiometry: Float[ArrayLike, "reactions species"]
    rate_constants: Float[ArrayLike, " reactions"]
    species: tuple[str, ...] = eqx.field(static=True)

    @classmethod
    def from_reactions(cls, species: Sequence[str], reactions: Sequence[Reaction]) -> "MassActionNetwork":
        """Build from `(reactants, products, rate constant)` triples, e.g. `({"A": 1, "B": 1}, {"C": 1}, 0.5)`."""
        index = {name: i for i, name in enumerate(species)}
        orders = np.zeros((len(reactions), len(species)), np.int32)
        products = np.zeros_like(orders)
        for r, (reactants, made, _) in enumerate(reactions):
            for side, counts in ((orders, reactants), (products, made)):
                for name, count in counts.items():
                    if name not in index:
                        raise ValueError(f"reaction {r} names species {name!r}, not in {list(species)}.")
                    side[r, index[name]] += count
        if orders.max(initial=0) > _MAX_ORDER:
            raise ValueError(f"mass-action reactions here are at most bimolecular; reaction orders {orders.max()}.")
        rates = np.asarray([rate for _, _, rate in reactions], np.float64)
        return cls(orders, (products - orders).astype(np.float64), rates, tuple(species))

    def rates(self, x: Float[Array, " species"]) -> Float[Array, " reactions"]:
        """The reaction rates `k_r Π_s x_s^{R_rs}` (powers gathered from `[1, x, x²]`: smooth at x = 0)."""
        powers = jnp.stack([jnp.ones_like(x), x, x * x])
        factors = powers[self.reactant_orders, jnp.arange(x.shape[0])]
        return self.rate_constants * jnp.prod(factors, axis=1)

    def __call__(self, t, x: Float[Array, " species"], args=None) -> Float[Array, " species"]:
        del t, args
        return self.rates(x) @ self.net_stoichiometry


PHOSPHORYLATION_RATES: Mapping[str, float] = {
    "kon_kinase": 5.0,
    "koff_kinase": 1.0,
    "kcat_kinase": 2.0,
    "kon_phosphatase": 4.0,
    "koff_phosphatase": 1.0,
    "kcat_phosphatase": 1.5,
}


def phosphorylation_network(n_sites: int = 2, rates: Mapping[str, float] = PHOSPHORYLATION_RATES):
    """The sequential, distributive n-site phosphorylation cycle as a `MassActionNetwork` (see `reaction_network`)."""
    s = [f"S{i}" for i in range(n_sites + 1)]
    es = [f"ES{i}" for i in range(n_sites)]
    fs = [f"FS{i}" for i in range(1, n_sites + 1)]
    reactions: list[Reaction] = []
    for i in range(n_sites):
        kinase_complex, phosphatase_complex = es[i], fs[i]
        reactions += [
            ({s[i]: 1, "E": 1}, {kinase_complex: 1}, rates["kon_kinase"]),
            ({kinase_complex: 1}, {s[i]: 1, "E": 1}, rates["koff_kinase"]),
            ({kinase_complex: 1}, {s[i + 1]: 1, "E": 1}, rates["kcat_kinase"]),
            ({s[i + 1]: 1, "F": 1}, {phosphatase_complex: 1}, rates["kon_phosphatase"]),
            ({phosphatase_complex: 1}, {s[i + 1]: 1, "F": 1}, rates["koff_phosphatase"]),
            ({phosphatase_complex: 1}, {s[i]: 1, "F": 1}, rates["kcat_phosphatase"]),
        ]
    return MassActionNetwork.from_reactions([*s, "E", "F", *es, *fs], reactions)


def reaction_network(
    n_train: int = 3200,
    n_test: int = 800,
    *,
    key: PRNGKeyArray | int = 0,
    n_sites: int = 2,
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
    """A multisite phosphorylation cycle (mass action): regress `ẋ` from the 3n + 3 concentrations `x`.

    A substrate with `n` sites is phosphorylated sequentially and distributively by a kinase E and
    dephosphorylated by a phosphatase F, each step through an enzyme–substrate complex (the "multiple
    futile cycle"), for i = 0 … n − 1:

        S_i + E  ⇌  ES_i  → S_{i+1} + E        (kon_kinase, koff_kinase; kcat_kinase)
        S_{i+1} + F  ⇌  FS_{i+1}  → S_i + F    (kon_phosphatase, koff_phosphatase; kcat_phosphatase)

    so, e.g., `Ṡ_0 = −kon_E S_0 E + koff_E ES_0 + kcat_F FS_1`. Species, in this order: S_0 … S_n, E, F,
    ES_0 … ES_{n−1}, FS_1 … FS_n (9 for the default n = 2, the dual phosphorylation of a MAPK). Rate
    constants (`PHOSPHORYLATION_RATES`): kon_kinase = 5, koff_kinase = 1, kcat_kinase = 2,
    kon_phosphatase = 4, koff_phosphatase = 1, kcat_phosphatase = 1.5. Initial conditions are uniform on
    S_i ∈ [0, 1], E, F ∈ [0.1, 0.5], complexes ∈ [0, 0.1]; trajectories are saved at `n_times` equally
    spaced times on `[burn_in, burn_in + t_end]` (t_end = 10: several binding/catalysis time scales).
    Total kinase, total phosphatase and total substrate are conserved. Multisite phosphorylation is a
    standard benchmark of reaction-network reduction by lumping (Feret et al. 2009; Cardelli et al. 2016).

    **Arguments:**

    - `n_train`, `n_test`: number of (state, target) pairs in each set.
    - `key`: a `jax.random` key or integer seed.
    - `n_sites`: number of phosphorylation sites n ≥ 1.
    - `rates`: overrides of `PHOSPHORYLATION_RATES`.
    - `n_times`, `t_end`, `burn_in`, `target`, `standardize`, `solver`, `rtol`, `atol`: as in `glycolytic`
      (Tsit5 by default: with these rate constants the system is not stiff).

    **Returns:** a `Dataset` with 3n + 3 features and as many targets.

    **Raises:** `ValueError`/`TypeError` for malformed arguments.

    **Example:**

    ```python
    from jaxlump.datasets import reaction_network

    data = reaction_network(n_train=400, n_test=100)
    assert data.feature_names[:3] == ("S0", "S1", "S2") and data.n_features == 9
    ```

    References: L. Wang, E. D. Sontag, *On the number of steady states in a multiple futile cycle*,
    J. Math. Biol. 57 (2008) 29–52; N. I. Markevich, J. B. Hoek, B. N. Kholodenko, *Signaling switches
    and bistability arising from multisite phosphorylation in protein kinase cascades*, J. Cell Biol. 164
    (2004) 353–359; J. Feret, V. Danos, J. Krivine, R. Harmer, W. Fontana, *Internal coarse-graining of
    molecular systems*, PNAS 106 (2009) 6453–6458; L. Cardelli, M. Tribastone, M. Tschaikowski,
    A. Vandin, *Symbolic computation of differential equivalences*, POPL 2016.
    """
    n_sites = check_count(n_sites, "n_sites")
    all_rates = with_overrides(PHOSPHORYLATION_RATES, rates, "rates")
    network = phosphorylation_network(n_sites, all_rates)
    lower = [0.0] * (n_sites + 1) + [0.1, 0.1] + [0.0] * (2 * n_sites)
    upper = [1.0] * (n_sites + 1) + [0.5, 0.5] + [0.1] * (2 * n_sites)
    return simulated_dataset(
        "reaction_network",
        network,
        lower,
        upper,
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
