"""ε grids in one compiled call, sharded over devices (DESIGN §4).

`sweep` runs `lump_masked`'s core under `jax.vmap` over the grid, so everything that does not depend on ε
is computed once: the discrepancy's preparation (the Dynamical trajectories), the original network's forward
pass and first-layer Gram matrix, and the first layer's distances — whose exact values are needed only up to the
grid's largest ε. The rest (later layers' distances, refinements, quotients, refits, certificates) is batched.
With several devices the grid is split over a 1-D mesh with `jax.shard_map`; the model and the calibration data
are replicated, so every device runs the same program on its slice and the results equal one device's.
"""

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from ._criteria.discrepancy import AbstractDiscrepancy, Structural, batched_over
from ._criteria.refinement import AbstractRefinement, Representative
from ._errors import RESULTS, UnreachableTargetError, check_bool, is_traced
from ._methods.lump import _prepare, check_lump_options, lump_chain_unjitted
from ._methods.registry import get_compressor, register_compressor
from ._model import from_chain, is_chain_kind
from ._reconstruction.masked import shrink
from ._reconstruction.reconstruct import DEFAULT_RIDGE
from ._results.info import Certificate, CompressionInfo
from ._sites.compress import SitesInfo, compress_sites, site_listing

_AXIS = "eps"
_ERRORS = tuple(Certificate.__dataclass_fields__)


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)  # counts traces (eqx.debug.get_num_traces), limits nothing
def _sweep_core(run, operands, grid, mesh):
    """`run(operands, ε, ε_max) -> (model, info)` at every ε of `grid`, stacked; `operands`' arrays are replicated."""
    n = grid.shape[0]
    size = 1 if mesh is None else mesh.devices.size
    padded = jnp.concatenate([grid, jnp.full(-n % size, grid[-1], grid.dtype)])
    eps_max = jnp.max(grid)
    arrays, others = eqx.partition(operands, eqx.is_array)
    skeleton = []  # the results' non-array parts (activation functions, static fields), the same at every ε

    def local(arrays, eps, eps_max):
        def one(e):
            out, static = eqx.partition(run(eqx.combine(arrays, others), e, eps_max), eqx.is_array)
            skeleton.append(static)
            return out

        with batched_over(_AXIS):
            return jax.vmap(one, axis_name=_AXIS)(eps)

    if mesh is None:
        out = local(arrays, padded, eps_max)
    else:
        replicated = PartitionSpec()
        out = jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(replicated, PartitionSpec(_AXIS), replicated),
            out_specs=PartitionSpec(_AXIS),
            check_vma=False,
        )(arrays, padded, eps_max)
    return eqx.combine(jtu.tree_map(lambda leaf: leaf[:n], out), skeleton[0])


def _lump_chain_model(operands, eps, eps_max):
    model, chain, x, discrepancy, refinement, refit, ridge, certify_ode = operands
    reduced, info = lump_chain_unjitted(chain, x, eps, discrepancy, refinement, refit, ridge, certify_ode, eps_max)
    return from_chain(reduced, like=model), info


def _lump_sites_model(operands, eps, eps_max):
    model, x, listing, independent, discrepancy, refinement, refit, ridge, certify_ode = operands

    def per_segment(segment, chain, rows):
        dtype = chain.weights[0].dtype
        ridge_ = ridge.astype(dtype)
        return lump_chain_unjitted(chain, rows, eps, discrepancy, refinement, refit, ridge_, certify_ode, eps_max)

    return compress_sites(
        per_segment, model, x, method="lump_masked", knob=eps, independent=independent, listing=listing
    )


class Sweep(eqx.Module):
    """The results of `jaxlump.sweep`: one fixed-shape lumped model and info per ε, stacked.

    Every array leaf of `models` and `infos` has the grid as its leading axis. Per-ε figures are exposed
    as arrays over the grid (`widths`, `dense_params`, `flops`, `errors(...)`, `results`); `at(i)` gives one
    slice exactly as `jaxlump.lump_masked(model, x_calib, eps_grid[i], ...)` would, and `smallest_within`,
    `closest_to` pick one and shrink it.
    """

    eps_grid: jax.Array
    models: object
    infos: CompressionInfo | SitesInfo

    def __len__(self) -> int:
        return int(self.eps_grid.shape[0])

    @property
    def widths(self) -> jax.Array | dict:
        """`(grid, layers + 1)`: the live widths after lumping at each ε; for a model of sites, `{site path:
        (grid,)}`."""
        return self.infos.widths_after

    @property
    def dense_params(self) -> jax.Array:
        """Dense parameters of each shrunk result."""
        return self.infos.params_after

    @property
    def flops(self) -> jax.Array:
        """Dense FLOPs per example of each shrunk result."""
        return self.infos.flops_after

    @property
    def certificate(self) -> Certificate:
        """The stacked `Certificate`s (calibration error, ODE deviation, a-priori bound) per ε."""
        return self.infos.certificate

    @property
    def successful(self) -> np.ndarray:
        """Per ε, whether every stage succeeded (`info.result == RESULTS.successful`)."""
        return np.asarray(self.infos.result._value) == np.asarray(RESULTS.successful._value)

    @property
    def results(self) -> list[str]:
        """Per ε, the message of its `RESULTS` code (`""` for success)."""
        messages = RESULTS._index_to_message  # noqa: SLF001 - equinox's own table of messages
        return [messages[int(v)] for v in np.asarray(self.infos.result._value)]

    def errors(self, error: str = "output_max_abs") -> np.ndarray:
        """Per ε, one field of the certificate (`output_max_abs`, `output_rms`, `ode_max_abs`, `a_priori_bound`)."""
        if error not in _ERRORS:
            raise ValueError(f"`error` must be one of {list(_ERRORS)}; received {error!r}.")
        return np.asarray(getattr(self.certificate, error))

    def at(self, i: int):
        """`(masked_model, info)` at `eps_grid[i]`, as `lump_masked` returns them (shrink with `jaxlump.shrink`)."""
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"`i` must be an integer index into the grid; received {i!r}.")
        if not -len(self) <= i < len(self):
            raise IndexError(f"`i` = {i} is out of range for a grid of {len(self)} values.")
        return jtu.tree_map(lambda leaf: leaf[i] if eqx.is_array(leaf) else leaf, (self.models, self.infos))

    def _pick(self, keep: np.ndarray, key, what: str):
        keep = keep & self.successful
        if not keep.any():
            raise ValueError(f"no ε of the grid {np.asarray(self.eps_grid).tolist()} gives {what}.")
        candidates = np.flatnonzero(keep)
        return shrink(*self.at(int(candidates[np.lexsort(key(candidates)[::-1])][0])))

    def smallest_within(self, max_error: float, *, error: str = "output_max_abs"):
        """The shrunk `(model, info)` with the fewest dense parameters whose `error` is `≤ max_error`.

        Ties go to the smaller error, then the smaller ε. Only successful results are considered.
        """
        values, size = self.errors(error), np.asarray(self.dense_params)
        if np.all(np.isnan(values)):
            raise ValueError(
                f"`{error}` was not computed for this sweep (NaN at every ε: a data-free sweep, x_calib=None, measures "
                "nothing; the ODE deviation needs certify_ode=True), so no result can be chosen by it. Sweep with "
                "calibration data, or choose by size with `closest_to(params=...)`."
            )
        return self._pick(
            values <= float(max_error), lambda c: (size[c], values[c], c), f"{error} <= {max_error} successfully"
        )

    def closest_to(self, *, params: int):
        """The shrunk `(model, info)` whose dense parameter count is closest to `params` (ties: the smaller)."""
        if isinstance(params, (bool, np.bool_)) or not isinstance(params, (int, np.integer)):
            raise TypeError(f"`params` must be a positive integer number of dense parameters; received {params!r}.")
        if params < 1:
            raise ValueError(f"`params` must be a positive integer number of dense parameters; received {params!r}.")
        size = np.asarray(self.dense_params)
        return self._pick(
            np.ones(len(self), bool), lambda c: (np.abs(size[c] - int(params)), size[c], c), "a successful result"
        )

    def plot(self, ax=None, *, error: str = "output_max_abs"):
        """Size (dense parameters) against `error` on log axes, with a readable subset of the ε labelled.

        Consecutive ε with the same point share one label (`ε=a…b`); both ends of the curve are always labelled,
        the other points only where their label overlaps no label already placed nor a point (at most 12 labels,
        spread along the curve). Results with zero error (exact ε) cannot sit on a log axis and are counted in the
        legend instead. Returns the Axes.
        """
        import matplotlib.pyplot as plt

        from ._results.plotting import eps_labels, keep_readable

        ax = plt.subplots()[1] if ax is None else ax
        values, size, grid = self.errors(error), np.asarray(self.dense_params), np.asarray(self.eps_grid)
        shown = (values > 0) & self.successful
        zero = int(np.sum((values == 0) & self.successful))
        label = "lump (ε sweep)" + (f"\n{zero} ε with zero error not shown" if zero else "")
        ax.plot(size[shown], values[shown], "o-", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("dense parameters")
        ax.set_ylabel(error.replace("_", " ") + " (calibration)")
        ax.legend()
        keep_readable(ax, eps_labels(ax, size[shown], values[shown], grid[shown]))
        return ax


def _check_grid(eps_grid) -> jax.Array:
    dtype = getattr(eps_grid, "dtype", None)
    if dtype is None and not is_traced(eps_grid):
        try:
            dtype = np.asarray(eps_grid).dtype
        except (TypeError, ValueError):
            dtype = None
    if dtype is not None and (np.dtype(dtype) == np.bool_ or np.issubdtype(dtype, np.complexfloating)):
        raise TypeError(f"`eps_grid` must hold real numbers >= 0; received dtype {np.dtype(dtype).name}: {eps_grid!r}.")
    if is_traced(eps_grid):
        grid = jnp.asarray(eps_grid, jnp.result_type(float))
        if grid.ndim != 1 or grid.shape[0] == 0:
            raise ValueError(f"`eps_grid` must be a non-empty 1-D array; received shape {grid.shape}.")
        return eqx.error_if(grid, jnp.any(jnp.isnan(grid) | (grid < 0)), "`eps_grid` must hold numbers >= 0.")
    try:
        values = np.asarray(eps_grid, dtype=float)
    except (TypeError, ValueError) as e:
        raise TypeError(f"`eps_grid` must be a 1-D sequence of numbers >= 0; received {eps_grid!r}.") from e
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"`eps_grid` must be a non-empty 1-D sequence; received shape {values.shape}.")
    if np.any(np.isnan(values) | (values < 0)):
        raise ValueError(f"`eps_grid` must hold numbers >= 0 (inf allowed); received {values.tolist()}.")
    return jnp.asarray(values, jnp.result_type(float))


def _mesh(devices) -> Mesh | None:
    devices = jax.devices() if devices is None else devices
    if isinstance(devices, jax.Device):
        devices = [devices]
    try:
        devices = list(devices)
    except TypeError as e:
        raise TypeError(f"`devices` must be a sequence of jax devices or None; received {devices!r}.") from e
    if not devices or not all(isinstance(d, jax.Device) for d in devices):
        raise TypeError(f"`devices` must be a non-empty sequence of jax devices (jax.devices()); received {devices!r}.")
    if len({d.id for d in devices}) != len(devices):
        raise ValueError(f"`devices` lists a device twice: {devices}.")
    return None if len(devices) == 1 else Mesh(np.asarray(devices), (_AXIS,))


def sweep(
    model,
    x_calib,
    eps_grid,
    *,
    devices=None,
    discrepancy: AbstractDiscrepancy = Structural(),
    refinement: AbstractRefinement = Representative(),
    reconstruct: bool = True,
    ridge: float = DEFAULT_RIDGE,
    certify_ode: bool = False,
    where=None,
    independent: bool = False,
) -> Sweep:
    """Lump `model` at every ε of a grid in one compiled call, sharded over devices.

    Equivalent to `[jaxlump.lump_masked(model, x_calib, e, ...) for e in eps_grid]` (identical partitions), but
    the work independent of ε is done once and the rest is batched with `vmap`; a second grid of the same
    length reuses the compiled program. Failures are not raised: each ε's `RESULTS` code is in `infos.result`.

    **Arguments:**

    - `model`, `x_calib`: as `jaxlump.lump`: a chain model, or any Equinox / NNX module with sites (then each slice
      is the user's class at its original shapes with a `SitesInfo`, and `widths` is `{site path: (grid,)}`).
    - `eps_grid`: a non-empty 1-D sequence of real ε ≥ 0, any length (padded to a multiple of the device count).
    - `devices`: the devices to shard the grid over (default `jax.devices()`); the model and data are replicated.
    - `discrepancy`, `refinement`, `reconstruct`, `ridge`, `certify_ode`: as `jaxlump.lump_masked`.
    - `where`, `independent`: which sites, and whether each is calibrated on the original model (models of sites
      only; see `jaxlump.sites`).

    **Returns:** a `Sweep`. Without calibration data (`x_calib=None`) the measured errors and the a-priori bound
    are not computed (NaN, shown as "not computed" by `summary()`), and `smallest_within` refuses to choose by them.

    **Raises:** as `jaxlump.lump_masked` for a bad model, data or option; `ValueError`/`TypeError` for an empty,
    non-1-D, negative, NaN, boolean or complex grid and for `devices` that are not jax devices.

    ```python
    import equinox as eqx, jax.numpy as jnp, jax.random as jr, jaxlump
    mlp = eqx.nn.MLP(3, 2, 16, 2, activation=jnp.tanh, key=jr.key(0))
    x = jr.normal(jr.key(1), (256, 3))
    result = jaxlump.sweep(mlp, x, [0.0, 0.2, 0.5, 1.0])
    masked, info = result.at(2)
    small, small_info = result.smallest_within(0.5)
    assert int(small_info.cost_after.dense_params) <= int(result.dense_params[0])
    ```

    Reference: Dhiman, Passarella, Tribastone, Valerio, *Neural Network Compression by Approximate
    Differential Equivalence*, arXiv 2606.01402 (2026).
    """
    grid = _check_grid(eps_grid)
    if is_chain_kind(model):
        if where is not None or independent:
            raise ValueError(
                f"`where` and `independent` apply to models compressed site by site; `model` "
                f"({type(model).__name__}) is one chain of layers, swept as a whole."
            )
        chain, x, _, ridge = _prepare(model, x_calib, 0.0, discrepancy, refinement, ridge)
        refit, certify_ode = check_bool(reconstruct, "reconstruct"), check_bool(certify_ode, "certify_ode")
        mesh = _mesh(devices)
        operands = (model, chain, x, discrepancy, refinement, refit, ridge, certify_ode)
        models, infos = _sweep_core(_lump_chain_model, operands, grid, mesh)
    else:
        ridge = check_lump_options(discrepancy, refinement, ridge)
        if x_calib is None:
            raise ValueError(
                f"`x_calib` is needed to sweep a {type(model).__name__}: its sites are found and calibrated on it; "
                "pass a batch of the model's inputs."
            )
        refit, certify_ode = check_bool(reconstruct, "reconstruct"), check_bool(certify_ode, "certify_ode")
        mesh = _mesh(devices)
        listing = site_listing(model, x_calib, where)
        operands = (model, x_calib, listing, check_bool(independent, "independent"), discrepancy, refinement, refit)
        operands = (*operands, jnp.asarray(ridge), certify_ode)
        models, infos = _sweep_core(_lump_sites_model, operands, grid, mesh)
    return Sweep(grid, models, infos)


def sweep_to_size(
    model,
    x_calib,
    target_params: int,
    *,
    grid_size: int = 16,
    rounds: int = 2,
    devices=None,
    throw: bool = True,
    **lump_options,
):
    """The lumped `(model, info)` with the most dense parameters `≤ target_params`, from a few sweeps.

    A coarse grid (0, then geometric from 10⁻³ to 10, extended ×8 while even its largest ε is too big) is
    evaluated in one call; then `rounds` grids of the same length (no recompilation) between the bracketing ε
    of the best result. The size is not monotone in ε for the representative refinement, so every evaluated
    successful result counts. Used by `jaxlump.baselines.compress_to` for `lump`; `lump_options` as `sweep`.

    **Raises:** `ValueError` for a non-positive target; `jaxlump.UnreachableTargetError` (a `ValueError`) when no
    successful result is small enough (with `throw=False` the best-fitting failed result is returned instead, its
    `info.result` saying why).
    """
    target = int(target_params)
    if target <= 0:
        raise ValueError(f"`target_params` must be a positive integer; received {target_params!r}.")
    if int(grid_size) < 2 or int(rounds) < 0:
        raise ValueError(f"`grid_size` must be >= 2 and `rounds` >= 0; received {grid_size!r}, {rounds!r}.")
    throw = check_bool(throw, "throw")
    grid = np.concatenate([[0.0], np.geomspace(1e-3, 10.0, int(grid_size) - 1)])
    evaluated = []  # (ε, size, successful, sweep, index)

    def run(grid):
        result = sweep(model, x_calib, grid, devices=devices, **lump_options)
        sizes, ok = np.asarray(result.dense_params), result.successful
        evaluated.extend((float(e), int(s), bool(k), result, i) for i, (e, s, k) in enumerate(zip(grid, sizes, ok)))
        return sizes, ok

    def fitting(successful=True):
        return [r for r in evaluated if r[1] <= target and (r[2] or not successful)]

    sizes, ok = run(grid)
    for _ in range(6):
        if np.any(ok & (sizes <= target)):
            break
        grid = grid * 8.0
        sizes, ok = run(grid)
    for _ in range(int(rounds) if fitting() else 0):
        best = max(fitting(), key=lambda r: (r[1], -r[0]))
        low = max((r[0] for r in evaluated if r[0] < best[0] and r[1] > target), default=0.0)
        if best[1] == target or math.isclose(low, best[0], rel_tol=1e-9, abs_tol=0.0):
            break
        run(np.linspace(low, best[0], int(grid_size)))
    fits = fitting() or ([] if throw else fitting(successful=False))
    if not fits:
        smallest = min((r[1] for r in evaluated if r[2]), default=None)
        raise UnreachableTargetError(
            f"`lump` cannot reach {target} dense parameters (the smallest successful result has {smallest}; "
            f"ε up to {grid[-1]}).",
            smallest,
        )
    best = max(fits, key=lambda r: (r[1], -r[0]))
    return shrink(*best[3].at(best[4]))


# `compress_to` reaches a parameter count with `lump` by a few compiled ε grids, not one compilation per bisection step.
register_compressor(dataclasses.replace(get_compressor("lump"), to_size=sweep_to_size), replace=True)
