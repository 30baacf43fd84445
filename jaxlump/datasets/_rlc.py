"""An RLC resonant clock-distribution tree driven by a sinusoidal clock source."""

from collections.abc import Mapping

import diffrax
import equinox as eqx
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._dataset import Dataset, check_count
from ._simulate import TSIT5, simulated_dataset, with_overrides

RLC_PARAMETERS: Mapping[str, float] = {"R": 0.1, "L": 1.0, "C": 1.0, "R_load": 2.0, "omega": 1.0}


class LinearVectorField(eqx.Module):
    """`ẏ = A y` (the field `matrix` is traced under `jax.jit`: new element values do not recompile)."""

    matrix: Float[ArrayLike, "state state"]

    def __call__(self, t, y: Float[Array, " state"], args=None) -> Float[Array, " state"]:
        del t, args
        return self.matrix @ y


def rlc_state_names(depth: int) -> tuple[str, ...]:
    n_segments = 2**depth - 1
    return ("u", "w", *(f"i{k}" for k in range(1, n_segments + 1)), *(f"v{k}" for k in range(1, n_segments + 1)))


def rlc_matrix(depth: int, params: Mapping[str, float]) -> np.ndarray:
    """The state matrix A of the tree (state order `rlc_state_names(depth)`; see `rlc_network`)."""
    n = 2**depth - 1
    resistance, inductance, capacitance = params["R"], params["L"], params["C"]
    load_conductance = 1.0 / params["R_load"]
    a = np.zeros((2 + 2 * n, 2 + 2 * n))
    a[0, 1], a[1, 0] = params["omega"], -params["omega"]
    node = np.arange(1, n + 1)
    current, voltage = 1 + node, 1 + n + node  # rows of i_k and v_k
    parent_voltage = np.where(node == 1, 0, 1 + n + node // 2)  # the source voltage u is state 0
    # L i_k' = v_parent(k) − v_k − R i_k
    a[current, parent_voltage] += 1.0 / inductance
    a[current, voltage] -= 1.0 / inductance
    a[current, current] -= resistance / inductance
    # C v_k' = i_k − Σ_children i_c − G_load v_k (leaves only)
    a[voltage, current] += 1.0 / capacitance
    child = node[node > 1]
    a[1 + n + child // 2, 1 + child] -= 1.0 / capacitance
    leaf = node[node >= 2 ** (depth - 1)]
    a[1 + n + leaf, 1 + n + leaf] -= load_conductance / capacitance
    return a


def rlc_network(
    n_train: int = 3200,
    n_test: int = 800,
    *,
    key: PRNGKeyArray | int = 0,
    depth: int = 3,
    parameters: Mapping[str, float] | None = None,
    n_times: int = 40,
    t_end: float = 12.0,
    burn_in: float = 0.0,
    target: str = "vector_field",
    standardize: bool = True,
    solver: diffrax.AbstractSolver = TSIT5,
    rtol: float = 1e-7,
    atol: float = 1e-9,
) -> Dataset:
    """An RLC clock-distribution tree: regress `ẏ` from the inductor currents and capacitor voltages.

    A clock source drives a binary H-tree of `depth` levels (N = 2^depth − 1 wire segments). Segment k
    (heap order: the root is 1, the children of k are 2k and 2k + 1) is a series resistor R and inductor
    L carrying current `i_k` from its parent node into node k, which has a capacitance C to ground with
    voltage `v_k`; the 2^(depth−1) leaves (the clocked loads) also have a load resistor R_load to ground.
    The source is an ideal sinusoidal voltage `u`, kept in the state as a harmonic oscillator so the
    system is autonomous (its amplitude and phase are part of the initial condition):

        u' = ω w,     w' = −ω u
        L i_k' = v_parent(k) − v_k − R i_k               (v_parent(1) = u)
        C v_k' = i_k − Σ_{c child of k} i_c − [k leaf] v_k / R_load

    State order: u, w, i_1 … i_N, v_1 … v_N (16 for the default depth 3). Defaults (`RLC_PARAMETERS`,
    normalised units): R = 0.1, L = 1, C = 1, R_load = 2, ω = 1 (the source at the LC resonance of a
    segment, as in resonant clocking, where the inductance resonates the clock capacitance). Initial
    conditions are uniform on [−1, 1] for every state; each trajectory is saved at `n_times` equally
    spaced times on `[burn_in, burn_in + t_end]` (t_end = 12 ≈ two clock periods). The energy balance
    `d/dt (L Σ i² + C Σ v²)/2 = u i_1 − R Σ i² − Σ_leaves v² / R_load` holds (Tellegen's theorem).
    Swapping the two subtrees below a node is a symmetry of the equations, so the tree is exactly
    lumpable, the kind of structure differential equivalences detect (Cardelli et al. 2016).

    **Arguments:**

    - `n_train`, `n_test`: number of (state, target) pairs in each set.
    - `key`: a `jax.random` key or integer seed.
    - `depth`: number of levels of the tree, ≥ 1.
    - `parameters`: overrides of `RLC_PARAMETERS` (`R_load=float("inf")` removes the loads).
    - `n_times`, `t_end`, `burn_in`, `target`, `standardize`, `solver`, `rtol`, `atol`: as in `glycolytic`.

    **Returns:** a `Dataset` with 2 + 2N features and as many targets.

    **Raises:** `ValueError`/`TypeError` for malformed arguments.

    **Example:**

    ```python
    from jaxlump.datasets import rlc_network

    data = rlc_network(n_train=400, n_test=100, depth=2)
    assert data.feature_names == ("u", "w", "i1", "i2", "i3", "v1", "v2", "v3")
    ```

    References: S. C. Chan, P. J. Restle, K. L. Shepard, N. K. James, R. L. Franch, *A 4.6 GHz resonant
    global clock distribution network*, ISSCC 2004; L. Cardelli, M. Tribastone, M. Tschaikowski,
    A. Vandin, *Symbolic computation of differential equivalences*, POPL 2016.
    """
    depth = check_count(depth, "depth")
    params = with_overrides(RLC_PARAMETERS, parameters, "parameters")
    for name in ("L", "C", "R_load"):
        if not params[name] > 0:
            raise ValueError(f"`parameters[{name!r}]` must be > 0; received {params[name]!r}.")
    n = 2**depth - 1
    return simulated_dataset(
        "rlc_network",
        LinearVectorField(rlc_matrix(depth, params)),
        [-1.0] * (2 + 2 * n),
        [1.0] * (2 + 2 * n),
        rlc_state_names(depth),
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
