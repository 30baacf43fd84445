"""The 7-species glycolytic oscillator of Ruoff et al. (2003) — jaxlump's embedded default task."""

from collections.abc import Mapping

import diffrax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._dataset import Dataset
from ._simulate import TSIT5, simulated_dataset, with_overrides

SPECIES = ("S1", "S2", "S3", "S4", "S5", "S6", "S7")

PARAMETERS: Mapping[str, float] = {
    "J0": 2.5,
    "k1": 100.0,
    "k2": 6.0,
    "k3": 16.0,
    "k4": 100.0,
    "k5": 1.28,
    "k6": 12.0,
    "k": 1.8,
    "kappa": 13.0,
    "q": 4.0,
    "K1": 0.52,
    "psi": 0.1,
    "N": 1.0,
    "A": 4.0,
}

# The box the initial conditions are drawn from (Daniels & Nemenman 2015): the ranges of the limit cycle.
INITIAL_LOWER = (0.15, 0.19, 0.04, 0.10, 0.08, 0.14, 0.05)
INITIAL_UPPER = (1.60, 2.16, 0.20, 0.35, 0.30, 2.67, 0.10)


def vector_field(t, s: Float[Array, " 7"], p: Mapping[str, Float[Array, ""]]) -> Float[Array, " 7"]:
    """The right-hand side `ṡ = f(s)` of the 7-species model (autonomous; `t` is unused)."""
    del t
    s1, s2, s3, s4, s5, s6, s7 = s
    v1 = p["k1"] * s1 * s6 / (1.0 + (s6 / p["K1"]) ** p["q"])
    v2 = p["k2"] * s2 * (p["N"] - s5)
    v3 = p["k3"] * s3 * (p["A"] - s6)
    v4 = p["k4"] * s4 * s5
    v6 = p["k6"] * s2 * s5
    flux = p["kappa"] * (s4 - s7)
    return jnp.stack(
        [
            p["J0"] - v1,
            2.0 * v1 - v2 - v6,
            v2 - v3,
            v3 - v4 - flux,
            v2 - v4 - v6,
            -2.0 * v1 + 2.0 * v3 - p["k5"] * s6,
            p["psi"] * flux - p["k"] * s7,
        ]
    )


def glycolytic(
    n_train: int = 3200,
    n_test: int = 800,
    *,
    key: PRNGKeyArray | int = 0,
    n_times: int = 40,
    t_end: float = 5.0,
    burn_in: float = 0.0,
    parameters: Mapping[str, float] | None = None,
    target: str = "vector_field",
    standardize: bool = True,
    solver: diffrax.AbstractSolver = TSIT5,
    rtol: float = 1e-7,
    atol: float = 1e-9,
) -> Dataset:
    """The glycolytic oscillator: regress the 7 reaction rates `ṡ` from the 7 concentrations `s`.

    Ruoff et al.'s model of yeast glycolysis, with `v1 = k1 S1 S6 / (1 + (S6/K1)^q)`:

        S1' = J0 − v1
        S2' = 2 v1 − k2 S2 (N − S5) − k6 S2 S5
        S3' = k2 S2 (N − S5) − k3 S3 (A − S6)
        S4' = k3 S3 (A − S6) − k4 S4 S5 − κ (S4 − S7)
        S5' = k2 S2 (N − S5) − k4 S4 S5 − k6 S2 S5
        S6' = −2 v1 + 2 k3 S3 (A − S6) − k5 S6
        S7' = ψ κ (S4 − S7) − k S7

    with J0 = 2.5, k1 = 100, k2 = 6, k3 = 16, k4 = 100, k5 = 1.28, k6 = 12, k = 1.8, κ = 13, q = 4,
    K1 = 0.52, ψ = 0.1, N = 1, A = 4 (`PARAMETERS`). Initial conditions are drawn uniformly from
    S1 ∈ [0.15, 1.60], S2 ∈ [0.19, 2.16], S3 ∈ [0.04, 0.20], S4 ∈ [0.10, 0.35], S5 ∈ [0.08, 0.30],
    S6 ∈ [0.14, 2.67], S7 ∈ [0.05, 0.10], the ranges of the limit cycle (period ≈ 1.2), as in Daniels &
    Nemenman (2015). Each trajectory is saved at `n_times` equally spaced times on
    `[burn_in, burn_in + t_end]`; the defaults give 100 trajectories × 40 times (80 for training, 20 for
    testing). Inputs: the 7 species; targets: their 7 derivatives (or, with `target="next_state"`, the
    state one sampling step later).

    The default solver is the explicit `Tsit5`: on this box the system is not stiff. Measured at rtol 1e-6,
    atol 1e-8 on 100 trajectories over t ∈ [0, 5]: Tsit5 needs at most 358 accepted steps per trajectory,
    the implicit Kvaerno5 1,735 accepted and 1,906 rejected, and its first call (compilation included)
    took 5.3 s against Tsit5's 2.2 s. Pass `solver=diffrax.Kvaerno5()` to use the implicit method.

    **Arguments:**

    - `n_train`, `n_test`: number of (state, target) pairs in each set.
    - `key`: a `jax.random` key or integer seed; the same key gives the same data set.
    - `n_times`, `t_end`, `burn_in`: sampling of each trajectory (see above).
    - `parameters`: overrides of `PARAMETERS`, e.g. `{"J0": 3.0}`.
    - `target`: `"vector_field"` (default) or `"next_state"`.
    - `standardize`: standardise inputs and targets with the training statistics (default `True`).
    - `solver`, `rtol`, `atol`: the diffrax solver and its `PIDController` tolerances.

    **Returns:** a `Dataset` with 7 features and 7 targets.

    **Raises:** `ValueError`/`TypeError` for malformed arguments (unknown parameter names included).

    **Example:**

    ```python
    from jaxlump.datasets import glycolytic

    data = glycolytic(n_train=400, n_test=100)
    assert data.x_train.shape == (400, 7) and data.y_test.shape == (100, 7)
    ```

    References: P. Ruoff, M. K. Christensen, J. Wolf, R. Heinrich, *Temperature dependency and temperature
    compensation in a model of yeast glycolytic oscillations*, Biophys. Chem. 106 (2003) 179–192;
    B. C. Daniels, I. Nemenman, *Automated adaptive inference of phenomenological dynamical models*,
    Nat. Commun. 6 (2015) 8133, and *Efficient inference of parsimonious phenomenological models of
    cellular dynamics using S-systems and alternating regression*, PLoS ONE 10 (2015) e0119821; M. Raissi,
    P. Perdikaris, G. E. Karniadakis, *Multistep neural networks for data-driven discovery of nonlinear
    dynamical systems*, arXiv:1801.01236 (2018).
    """
    params = with_overrides(PARAMETERS, parameters, "parameters")
    return simulated_dataset(
        "glycolytic",
        vector_field,
        INITIAL_LOWER,
        INITIAL_UPPER,
        SPECIES,
        args={name: float(value) for name, value in params.items()},
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
