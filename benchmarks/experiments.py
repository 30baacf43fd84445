"""Issue 16's experiments: every compressor at matched sizes on eight data sets, several seeds, three tracks.

Tracks: **A** no reconstruction for anyone (the paper's protocol); **B** the same least-squares reconstruction for
everyone (`reconstruct_chain`, the solver behind `jaxlump.reconstruct`, lumping's `reconstruct=True` and the baselines'
`reconstruct=True`); **C** test MSE against measured cost (dense FLOPs, jitted forward latency at batch 1 and 1024).

One command runs it all and resumes: each (data set, width, seed) writes one raw JSON file under
`benchmarks/results/experiments/raw/` when the job is complete (its unfinished record is saved after every method
in a git-ignored `.partial` file); a file that exists is skipped, or completed with the methods it lacks (the
trained network is cached, so it is the same one). `--methods` and `--seeds` give a first, smaller pass.
`--processes N` (default 2) shares the jobs between N processes, a data set and width at a time (claimed with a
`.running` file), so each network shape is compiled once; `runs.json` records each run's elapsed wall time.
Tables and figures are rebuilt from the raw JSON by `benchmarks/experiments_report.py` (run at the end, or alone
with `--report-only`).

    python3 benchmarks/experiments.py                 # full run: 2×256 subset (3 seeds), 8 data sets × 5 seeds of 2×64
    python3 benchmarks/experiments.py --quick         # abalone, 2 seeds, 3 sizes (writes raw-quick/, quick/)
    python3 benchmarks/experiments.py --report-only   # tables/figures from whatever raw JSON exists

Seed `s` fixes the data split (and, for the simulated systems, the sampled trajectories), the network's
initialisation, the validation split, the training mini-batches and the calibration draw. Methods are listed in
`METHODS` (name → `Method`), so a new compressor is one entry.
"""

import argparse
import dataclasses
import functools
import gc
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

import jaxlump  # noqa: E402
from jaxlump import baselines as B  # noqa: E402
from jaxlump import datasets as D  # noqa: E402
from jaxlump._methods.base import structured_info  # noqa: E402
from jaxlump._methods.select import compress_along, labels_after, layer_paths, steps_to_sparsity, steps_within  # noqa: E402
from jaxlump._model import from_chain, to_chain  # noqa: E402
from jaxlump._model.activations import ACTIVATIONS  # noqa: E402
from jaxlump._reconstruction.masked import gather_live, live_neurons  # noqa: E402
from jaxlump._reconstruction.quotient import quotient  # noqa: E402
from jaxlump._reconstruction.reconstruct import DEFAULT_RIDGE, reconstruct_chain  # noqa: E402
from jaxlump._results.accounting import widths_dense_params  # noqa: E402
from jaxlump.baselines._obs import masked_quotient  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import provenance  # noqa: E402 — the sibling module
from perf_common import latency_us  # noqa: E402

ROOT = pathlib.Path(__file__).parent / "results" / "experiments"
DATASETS = (
    "glycolytic", "abalone", "polymerization", "household_power",
    "rlc_network", "metro_traffic", "reaction_network", "protein",
)  # fmt: skip
SIZES = (0.9, 0.75, 0.6, 0.45, 0.35, 0.25, 0.15, 0.1, 0.05)
QUICK_SIZES = (0.6, 0.35, 0.1)
WIDE_SUBSET = ("glycolytic", "abalone", "protein")
WIDE_SEEDS = 3
N_CALIB = 512


# ----------------------------------------------------------------------------------------------------- data, training
def load(name: str, seed: int, cache: pathlib.Path):
    """`(x_train, y_train, x_test, y_test)` float64 NumPy arrays, cached on disk per (name, seed)."""
    path = cache / f"{name}_s{seed}.npz"
    keys = ("x_train", "y_train", "x_test", "y_test")
    if path.exists():
        with np.load(path) as f:
            return tuple(f[k] for k in keys)
    data = getattr(D, name)(key=seed)
    arrays = tuple(np.asarray(getattr(data, k), np.float64) for k in keys)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **dict(zip(keys, arrays)))
    return arrays


def numpy_forward(model, x) -> np.ndarray:
    """The model evaluated in NumPy from its canonical chain (no compilation per result shape)."""
    chain = to_chain(model)
    a = np.asarray(x, np.float64)
    for w, b, act in zip(chain.weights, chain.biases, chain.activations):
        z = a @ np.asarray(w, np.float64).T + np.asarray(b, np.float64)
        a = z if act == "identity" else np.tanh(z) if act == "tanh" else np.asarray(ACTIVATIONS[act].fn(z))
    return a


def mse(model, x, y) -> float:
    return float(np.mean((numpy_forward(model, x) - y) ** 2))


@eqx.filter_jit
def _train_chunk(params, static, state, x, y, key, optimiser, steps: int, batch: int):
    def step(carry, k):
        p, s = carry
        idx = jr.randint(k, (batch,), 0, x.shape[0])  # with replacement: `choice(replace=False)` sorts all rows
        loss, grads = eqx.filter_value_and_grad(
            lambda q: jnp.mean((jax.vmap(eqx.combine(q, static))(x[idx]) - y[idx]) ** 2)
        )(p)
        updates, s = optimiser.update(grads, s, p)
        return (eqx.apply_updates(p, updates), s), loss

    (params, state), _ = jax.lax.scan(step, (params, state), jr.split(key, steps))
    return params, state


@eqx.filter_jit
def _val_loss(params, static, x, y):
    return jnp.mean((jax.vmap(eqx.combine(params, static))(x) - y) ** 2)


def train(x, y, width: int, depth: int, seed: int, *, max_steps: int, chunk: int = 250, patience: int = 6):
    """Adam (lr 3e-3, mini-batches of 256 rows drawn with replacement) with early stopping on a 10 % validation
    split of the training set: every `chunk` steps the validation MSE is measured; training stops after `patience`
    checks without improvement and the best parameters are returned. Compiled once per network shape (module-level
    jitted chunk)."""
    init_key, train_key = jr.split(jr.key(seed))
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = max(1, len(x) // 10)
    val, fit = order[:n_val], order[n_val:]
    xf, yf, xv, yv = (jnp.asarray(a) for a in (x[fit], y[fit], x[val], y[val]))
    model = eqx.nn.MLP(x.shape[1], y.shape[1], width, depth, activation=jnp.tanh, dtype=jnp.float64, key=init_key)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    optimiser = optax.adam(3e-3)
    state = optimiser.init(params)
    best, best_loss, since, steps = params, np.inf, 0, 0
    for key in jr.split(train_key, max_steps // chunk):
        params, state = _train_chunk(params, static, state, xf, yf, key, optimiser, chunk, min(256, len(fit)))
        steps += chunk
        loss = float(_val_loss(params, static, xv, yv))
        if loss < best_loss:
            best, best_loss, since = params, loss, 0
        else:
            since += 1
            if since >= patience:
                break
    return eqx.combine(best, static), {"steps": steps, "val_mse": best_loss, "n_fit": len(fit), "n_val": n_val}


# -------------------------------------------------------------------------------------------------------- methods
@dataclasses.dataclass(frozen=True)
class Method:
    """One compressor in the benchmark.

    - `run(model, x_calib, knob, reconstruct) -> (model, info)`.
    - `search`: `"width"` (uniform per-layer neuron count: the knob is the fraction removed per layer, set
      analytically), `"knob"` (bisection of the knob in `knob_range`), `"sweep"` (`sizes(model, x, knobs)` gives
      the sizes of a whole knob grid at once — one compiled, vmapped call for lumping, the selection rule alone
      for FLAP and low-rank; a first grid `grid`, then 32 points inside each target's bracket; then
      `prepare(model, x, knobs)`, when given, with every chosen knob, before the points are run), `"target"` (`run`
      receives the target size itself), `"fixed"` (one point, no knob).
    - `tracks`: which of A (no reconstruction) / B (reconstruction) the method takes part in; a method that cannot be
      reconstructed (`reconstructable=False`) gives its one result to both.
    - `only_sizes`: restrict the method to these target fractions (`None`: all).
    """

    structured: bool
    run: Callable
    search: str = "knob"
    knob_range: tuple[float, float] = (0.0, 1.0 - 1e-9)
    tracks: tuple[str, ...] = ("A", "B")
    reconstructable: bool = True
    sizes: Callable | None = None
    prepare: Callable | None = None
    grid: np.ndarray | None = None
    only_sizes: tuple[float, ...] | None = None


_reconstruct_chain = eqx.filter_jit(reconstruct_chain)


def _representatives(compact: np.ndarray) -> np.ndarray:
    """Compact labels (new index, −1 removed) → fixed-shape labels (the block's first original index)."""
    first = {c: int(np.flatnonzero(compact == c)[0]) for c in np.unique(compact[compact >= 0])}
    return np.asarray([first[c] if c >= 0 else -1 for c in compact], int)


def shared_reconstruct(model, small, info, x):
    """The shared least-squares reconstruction (`reconstruct_chain`), compiled once per network shape:
    unstructured results keep their shape and masks; structured pruning results are solved in the original's
    fixed-shape form (the kept neurons' rows and columns) and shrunk again."""
    chain = to_chain(model)
    hidden = chain.widths[1:-1]
    if info.structured:
        labels = [_representatives(np.asarray(p)) for p in info.partitions]
        masked, masks = masked_quotient(chain, labels), None
    else:
        labels, masked, masks = [np.arange(n) for n in hidden], to_chain(small), info.weight_masks
    partitions = tuple(jnp.asarray(p) for p in labels)
    out = _reconstruct_chain(chain, masked, x, partitions, masks, ridge=jnp.asarray(DEFAULT_RIDGE))
    new_chain = out[0] if isinstance(out, tuple) else out
    if info.structured:
        live = [np.arange(chain.widths[0]), *(live_neurons(p) for p in labels), np.arange(chain.widths[-1])]
        new_chain = gather_live(new_chain, live)
    new_model = from_chain(new_chain, like=small)
    return new_model, eqx.tree_at(lambda i: i.cost_after, info, jaxlump.cost(new_model))


def _option(fn, **kw):
    return lambda m, x, k, rec: fn(m, x, k, reconstruct=rec, **kw)


def _after(fn, **kw):
    def run(m, x, k, rec):
        small, info = fn(m, x, k, **kw)
        return shared_reconstruct(m, small, info, x) if rec else (small, info)

    return run


class _LumpSweeps:
    """Lumping through `jaxlump.sweep` (one compiled, vmapped call per ε grid): the sizes of a knob grid come from a
    sweep without refit whose results are kept, so a track-A point is that grid's own result, shrunk; `prepare`
    runs one sweep with the refit over every chosen ε (track B). A knob outside the stored sweeps is computed by
    `jaxlump.lump`. Both give the same partitions as `jaxlump.lump` (`sweep`'s contract) with `certify_ode=False`."""

    def __init__(self, discrepancy, refinement):
        self.options = dict(discrepancy=discrepancy, refinement=refinement)
        self.key, self.stored = None, {}  # (refit, ε) → (Sweep, index)

    def _sweep(self, model, x, knobs, refit: bool):
        if self.key is None or self.key[0] is not model or self.key[1] is not x:
            self.key, self.stored = (model, x), {}
        result = jaxlump.sweep(model, x, np.asarray(knobs, float), reconstruct=refit, **self.options)
        self.stored.update({(refit, float(e)): (result, i) for i, e in enumerate(knobs)})
        return result

    def sizes(self, model, x, knobs):
        return np.asarray(self._sweep(model, x, knobs, False).dense_params)

    def prepare(self, model, x, knobs):
        jax.block_until_ready(self._sweep(model, x, knobs, True))

    def __call__(self, model, x, eps, rec):
        if self.key is not None and self.key[0] is model and self.key[1] is x and (rec, float(eps)) in self.stored:
            result, i = self.stored[(rec, float(eps))]
            return jaxlump.shrink(*result.at(i))
        return jaxlump.lump(model, x, eps, reconstruct=rec, certify_ode=False, **self.options)


def _flap_sizes(model, x, knobs):
    """FLAP's sizes from its global cut alone (no model is built): the cut depends only on the scores."""
    from jaxlump.baselines._flap import flap_scores, global_keep

    chain = to_chain(model)
    scores = flap_scores(chain, x)
    n_in, n_out = chain.widths[0], chain.widths[-1]
    return np.asarray(
        [widths_dense_params((n_in, *(int(k.sum()) for k in global_keep(scores, s)), n_out)) for s in knobs]
    )


def _lowrank_sizes(model, x, knobs):
    """`lowrank`'s dense parameters from its rank rule (see its docstring), without factorising."""
    from jaxlump.baselines._lowrank import break_even_rank

    widths = to_chain(model).widths
    sizes = []
    for s in knobs:
        total = 0
        for n, m in zip(widths[:-1], widths[1:]):
            r_star = break_even_rank(m, n)
            total += (m * n if s == 0 or r_star == 0 else max(1, int((1 - s) * r_star)) * (m + n)) + m
        sizes.append(total)
    return np.asarray(sizes)


def _random_neurons(m, x, sparsity, rec):
    """Uniformly random neurons kept per layer (seeded by the knob), optionally with the shared reconstruction."""
    from jaxlump.baselines._obs import finish, kept_count, pruning_labels

    chain = to_chain(m)
    generator = np.random.default_rng(int(1e6 * sparsity))
    labels = []
    for n in chain.widths[1:-1]:
        keep = np.zeros(n, bool)
        keep[generator.permutation(n)[: kept_count(n, sparsity)]] = True
        labels.append(pruning_labels(keep))
    return finish("random_neurons", sparsity, m, chain, jnp.asarray(x), labels, reconstruct=rec, ridge=DEFAULT_RIDGE)


def _lump_then_prune(m, x, target, rec):
    del rec
    return jaxlump.lump_then_prune(m, x, int(target))


def _exact(m, x, knob, rec):
    del knob, rec
    return B.exact_lump(m, x, None)


class _GreedyPaths:
    """`jaxlump.merge_or_remove`'s greedy paths of the last (network, calibration set), shared by both
    merge_or_remove methods, with the library's defaults (`DEFAULT_CANDIDATES` merge partners per neuron), so the
    one-ε method is exactly what `jaxlump.merge_or_remove(m, x, eps)` returns. `seconds` is the paths' wall time,
    compilation included."""

    def __init__(self):
        self.key, self.paths, self.seconds = None, None, None

    def __call__(self, model, x):
        if self.key is None or self.key[0] is not model or self.key[1] is not x:
            start = time.perf_counter()
            chain, data = to_chain(model), jnp.asarray(x)
            self.paths = jax.block_until_ready(layer_paths(chain, data, merge=True, damping=1e-3))
            self.key, self.seconds = (model, x), time.perf_counter() - start
        return self.paths


class _MergeOrRemove:
    """`jaxlump.merge_or_remove`'s greedy paths (`_GreedyPaths`, computed once per network and calibration set) cut
    per knob: `one_eps` cuts every layer where its relative refit error first exceeds ε (the library's knob, so
    `method.run(m, x, eps, True)` is `jaxlump.merge_or_remove(m, x, eps)`), otherwise every layer loses the
    fraction `knob` of its neurons (uniform widths, like the other selectors). Without reconstruction (track A)
    the result is the path's quotient alone (merged neurons averaged in / summed out, removed ones dropped).
    The paths' wall time is recorded with every point as `path_s`; a point's `wall_s` is the cut, quotient and
    reconstruction alone."""

    def __init__(self, one_eps: bool, paths: _GreedyPaths):
        self.one_eps, self.layer_paths = one_eps, paths

    @property
    def path_s(self):
        return self.layer_paths.seconds

    def steps(self, model, x, knob):
        paths = self.layer_paths(model, x)
        cut = steps_within if self.one_eps else steps_to_sparsity
        return [cut(p, knob) for p in paths]

    def sizes(self, model, x, knobs):
        widths = to_chain(model).widths
        hidden = lambda steps: [n - s for n, s in zip(widths[1:-1], steps)]  # noqa: E731
        return np.asarray(
            [widths_dense_params((widths[0], *hidden(self.steps(model, x, k)), widths[-1])) for k in knobs]
        )

    def __call__(self, model, x, knob, rec):
        paths, steps = self.layer_paths(model, x), self.steps(model, x, knob)
        if rec:
            return compress_along(model, x, paths, steps, "merge_or_remove", knob, DEFAULT_RIDGE)
        chain = to_chain(model)
        labels = tuple(jnp.asarray(labels_after(p, s), jnp.int32) for p, s in zip(paths, steps))
        masked = quotient(chain, labels, chain.widths[1:-1])
        info = structured_info("merge_or_remove", knob, model, masked, chain.widths, labels)
        return jaxlump.shrink(masked, info)


_PATHS = _GreedyPaths()


def _merge_or_remove_method(one_eps: bool) -> Method:
    run = _MergeOrRemove(one_eps, _PATHS)
    if one_eps:
        return Method(True, run, search="sweep", sizes=run.sizes)
    return Method(True, run, search="width")


def _lump_method(discrepancy, refinement):
    run = _LumpSweeps(discrepancy, refinement)
    return Method(True, run, search="sweep", sizes=run.sizes, prepare=run.prepare)


UNSTRUCTURED = dict(prune_output=True, scope=B.PerLayer())  # pinned: the first pass ran with these (then) defaults
KNOB_GRID = np.linspace(0.0, 1.0 - 1e-9, 200)
METHODS: dict[str, Method] = {
    "lump structural": _lump_method(jaxlump.Structural(), jaxlump.Representative()),
    "lump structural components": _lump_method(jaxlump.Structural(), jaxlump.Components()),
    "lump dynamical": _lump_method(jaxlump.Dynamical(), jaxlump.Representative()),
    "lump dynamical components": _lump_method(jaxlump.Dynamical(), jaxlump.Components()),
    "exact lump": Method(True, _exact, search="fixed", reconstructable=False),
    "merge_or_remove": _merge_or_remove_method(one_eps=True),
    "merge_or_remove uniform": _merge_or_remove_method(one_eps=False),
    "lump_then_prune": Method(False, _lump_then_prune, search="target", tracks=("B",), only_sizes=(0.35, 0.1)),
    "OBS (ZipLM)": Method(True, _option(B.obs_prune), search="width"),
    "OBS sequential": Method(True, _option(B.obs_prune, sequential=True), search="width"),
    "OSSCAR": Method(True, _option(B.osscar_prune), search="width"),
    "ID": Method(True, _option(B.id_prune), search="width"),
    "ID weighted": Method(True, _option(B.id_prune, weighted=True), search="width"),
    "FLAP": Method(True, _option(B.flap_prune), search="sweep", sizes=_flap_sizes, grid=KNOB_GRID),
    "fold": Method(True, _option(B.fold), search="width"),
    "fold + REPAIR": Method(True, _option(B.fold, repair=True), search="width"),
    "ZipIt + REPAIR": Method(True, _option(B.zipit_merge), search="width"),
    "Neuron Merging": Method(True, _option(B.neuron_merge), search="width"),
    "whitened low-rank": Method(
        True,
        lambda m, x, k, rec: B.lowrank(m, x, k),
        search="sweep",
        sizes=_lowrank_sizes,
        grid=KNOB_GRID,
        reconstructable=False,
    ),
    "structured norm": Method(True, _after(B.structured_prune, score=B.IncomingNorm()), search="width"),
    "structured activation": Method(True, _after(B.structured_prune, score=B.MeanActivation()), search="width"),
    "structured wanda": Method(True, _after(B.structured_prune, score=B.WandaScore()), search="width"),
    "random neurons": Method(True, _random_neurons, search="width"),
    "magnitude": Method(False, _after(B.magnitude, **UNSTRUCTURED)),
    "Wanda": Method(False, _after(B.wanda, **UNSTRUCTURED)),
    "EC": Method(False, _after(B.elimination_compensation, **UNSTRUCTURED)),
    "random": Method(False, _after(lambda m, x, s, **kw: B.random(m, x, s, key=jr.key(0), **kw), **UNSTRUCTURED)),
}


# --------------------------------------------------------------------------------------------------- size search
EPS_GRID = np.concatenate([[0.0], np.geomspace(1e-3, 1e3, 127)])


def sweep_knobs(method: Method, model, x, targets) -> dict[int, float | None]:
    """Per target, the smallest knob with the largest size ≤ target, on the first grid refined by 32 points inside
    each target's bracket (each grid evaluated at once)."""
    grid = EPS_GRID if method.grid is None else method.grid
    sizes = method.sizes(model, x, grid)
    brackets = {}
    for t in targets:
        fitting = np.flatnonzero(sizes <= t)
        if fitting.size == 0:
            brackets[t] = None
            continue
        best = fitting[sizes[fitting] == sizes[fitting].max()].min()
        brackets[t] = (grid[best - 1] if best > 0 else grid[0], grid[best])
    # One fine grid length for every call (unreachable targets repeat the first knob), so a vmapped `sizes`
    # compiles once per network shape, not once per set of reachable targets.
    fine = np.concatenate([np.linspace(*(b or (grid[0], grid[0])), 32) for b in brackets.values()])
    knobs = np.concatenate([grid, fine])
    all_sizes = np.concatenate([sizes, method.sizes(model, x, fine)])
    chosen = {}
    for t in targets:
        fitting = np.flatnonzero(all_sizes <= t)
        if brackets[t] is None or fitting.size == 0:
            chosen[t] = None
            continue
        largest = all_sizes[fitting].max()
        chosen[t] = float(knobs[fitting[all_sizes[fitting] == largest]].min())
    return chosen


def padded(knobs: list[float], like) -> list[float]:
    """`knobs` (not empty) repeated at the end to the length of `like` (one grid length: one compilation)."""
    return knobs + knobs[-1:] * (len(like) - len(knobs))


def uniform_size(widths: tuple[int, ...], k: int) -> int:
    """Dense parameters of the chain `widths` with every hidden layer at width `k` (biases everywhere)."""
    return widths_dense_params((widths[0], *([k] * (len(widths) - 2)), widths[-1]))


def timed_run(method: Method, model, x, knob, reconstruct: bool) -> tuple[tuple, float]:
    """`(method.run(...), wall seconds)`, the result computed to the end (JAX dispatches asynchronously: without
    blocking, the time would show up in whatever reads the result first)."""
    start = time.perf_counter()
    result = jax.block_until_ready(method.run(model, x, knob, reconstruct))
    return result, time.perf_counter() - start


def search(method: Method, model, x, target: int, widths, memo: dict) -> tuple[float | None, tuple | None, float]:
    """The knob whose result (without reconstruction) has the largest size ≤ `target`: `(knob, (model, info),
    wall seconds of that one call)`, or `(None, None, 0)` when no knob reaches the target. `memo` (knob →
    (result, seconds)) is shared across the targets of one method, so a bisection reuses earlier evaluations."""
    size = B.realised_size

    def evaluate(knob):
        if knob not in memo:
            memo[knob] = timed_run(method, model, x, knob, False)
        return size(memo[knob][0][1])

    def answer(knob):
        return knob, *memo[knob]

    if method.search == "fixed":
        evaluate(None)
        return answer(None)
    if method.search == "width":
        n = widths[1]
        k = max((k for k in range(1, n + 1) if uniform_size(widths, k) <= target), default=None)
        if k is None:
            return None, None, 0.0
        knob = (n - k + 0.5) / n
        if evaluate(knob) <= target:
            return answer(knob)
    low, high = method.knob_range
    if evaluate(low) <= target:
        return answer(low)
    fitting = [k for k in memo if k is not None and size(memo[k][0][1]) <= target]
    if fitting:  # tighten the bracket with what earlier targets evaluated
        high = min(fitting)
        low = max([k for k in memo if k is not None and k < high and size(memo[k][0][1]) > target], default=low)
    if evaluate(high) > target:
        return None, None, 0.0
    for _ in range(18):
        middle = (low + high) / 2
        if evaluate(middle) > target:
            low = middle
        else:
            high = middle
        if size(memo[high][0][1]) == target or high - low <= 1e-7 * max(high, 1e-12):
            break
    best = max((k for k in memo if k is not None and size(memo[k][0][1]) <= target), key=lambda k: size(memo[k][0][1]))
    return answer(best)


# ------------------------------------------------------------------------------------------------------ one run
_LATENCY: dict[tuple, tuple[float, float]] = {}


def latency(model, measure: bool) -> tuple[float | None, float | None]:
    """Median jitted forward time (µs) at batch 1 and 1024, cached by architecture (it depends only on shapes);
    `(None, None)` unless `measure` (measured on seed 0's runs only: every new shape compiles)."""
    if not measure:
        return None, None
    chain = to_chain(model)
    shape = (chain.widths, chain.activations)
    if shape not in _LATENCY:
        _LATENCY[shape] = tuple(latency_us(chain, b, repeats=20, warmup=3) for b in (1, 1024))
    return _LATENCY[shape]


def describe(original, small, info, data, x_calib, bounds, measure_latency: bool) -> dict:
    x_test, y_test = data
    chain = to_chain(small)
    cost = info.cost_after
    row = {
        "realised_size": B.realised_size(info),
        "dense_params": int(cost.dense_params),
        "nonzeros": int(cost.nonzeros),
        "flops": int(cost.flops),
        "widths": [int(w) for w in chain.widths],
        "test_mse": mse(small, x_test, y_test),
        "calib_output_mse": float(np.mean((numpy_forward(small, x_calib) - numpy_forward(original, x_calib)) ** 2)),
        "result": str(jaxlump.RESULTS[info.result]),
    }
    if info.structured and chain.n_layers == to_chain(original).n_layers:
        row["layer_errors"] = list(B.layer_errors(original, small, x_calib))
        row["layer_bounds"] = [float(b[int(k)]) for b, k in zip(bounds, chain.widths[1:-1])]
    row["latency_b1_us"], row["latency_b1024_us"] = latency(small, measure_latency)
    return row


def trained_network(name: str, seed: int, width: int, x_train, y_train, args):
    """The trained `eqx.nn.MLP` and its training record, cached (parameters as npz) so that a later pass adding
    methods to an existing raw file compresses exactly the same network."""
    path = pathlib.Path(args.cache) / f"{name}_w{width}_s{seed}_model.eqx"
    like = eqx.nn.MLP(
        x_train.shape[1], y_train.shape[1], width, 2, activation=jnp.tanh, dtype=jnp.float64, key=jr.key(0)
    )
    if path.exists() and path.with_suffix(".json").exists():
        training = json.loads(path.with_suffix(".json").read_text())
        if training.get("max_steps", args.max_steps) == args.max_steps:  # the field's first files were all 6000
            return eqx.tree_deserialise_leaves(path, like), training
    start = time.perf_counter()
    trained, training = train(x_train, y_train, width, 2, seed, max_steps=args.max_steps)
    training["wall_s"], training["max_steps"] = time.perf_counter() - start, args.max_steps
    path.parent.mkdir(parents=True, exist_ok=True)
    eqx.tree_serialise_leaves(path, trained)
    path.with_suffix(".json").write_text(json.dumps(training))
    return trained, training


def run_one(name: str, seed: int, width: int, sizes, methods: dict[str, Method], args, save, record=None) -> dict:
    """One (data set, width, seed): train (or reuse) the network and add every method in `methods` that `record`
    (an existing raw file's content) does not hold yet; `save(record)` is called after each method, so an
    interrupted job resumes at the method it was computing."""
    start = time.perf_counter()
    x_train, y_train, x_test, y_test = load(name, seed, pathlib.Path(args.cache))
    trained, training = trained_network(name, seed, width, x_train, y_train, args)
    # Compressors run on the canonical chain of the trained eqx.nn.MLP: results of any shape come back as chains,
    # without a per-shape model rebuild (the numbers are those of the MLP it was read from).
    model = to_chain(trained)
    rows = np.random.default_rng(seed + 1000).choice(len(x_train), N_CALIB, replace=False)
    x_calib = jnp.asarray(x_train[rows])
    base = int(jaxlump.cost(model).dense_params)
    bounds = B.rank_bounds(model, x_calib)
    if record is not None:
        record.setdefault("provenance", provenance.UNRECORDED)  # its points were computed by unrecorded code
        done = {p["method"] for p in record["points"]}
        methods = {k: v for k, v in methods.items() if k not in done}
        return _add_points(record, model, methods, sizes, base, bounds, x_calib, (x_test, y_test), seed, start, save)
    check = jaxlump.check_encoding(trained, x_calib[:32])
    record = {
        "dataset": name,
        "seed": seed,
        "width": width,
        "depth": 2,
        "activation": "tanh",
        "n_calib": N_CALIB,
        "training": training,
        "encoding_max_deviation": float(check.max_deviation),
        "encoding_output_deviation": float(check.output_deviation),
        "encoding_result": str(jaxlump.RESULTS[check.result]),
        "original": {
            "dense_params": base,
            "nonzeros": int(jaxlump.cost(model).nonzeros),
            "flops": int(jaxlump.cost(model).flops),
            "widths": list(model.widths),
            "test_mse": mse(model, x_test, y_test),
        },
        "points": [],
        "run": args.run_id,
    }
    record["original"]["latency_b1_us"], record["original"]["latency_b1024_us"] = latency(model, True)
    return _add_points(record, model, methods, sizes, base, bounds, x_calib, (x_test, y_test), seed, start, save)


def _add_points(record, model, methods, sizes, base, bounds, x_calib, test, seed, start, save) -> dict:
    name, width = record["dataset"], record["width"]
    before = record.get("wall_s", 0.0)
    x_test, y_test = test
    bar = tqdm(total=len(methods) * len(sizes), desc=f"{name} w{width} s{seed}", leave=False, file=sys.stdout)
    for method_name, method in methods.items():
        memo: dict = {}
        fractions = [f for f in sizes if method.only_sizes is None or f in method.only_sizes]
        bar.update(len(sizes) - len(fractions))
        sweep, sweep_s, prepare_s = {}, 0.0, 0.0
        for fraction in fractions:
            bar.set_postfix_str(f"{method_name} {fraction:.0%}")
            target = int(fraction * base)
            point = {"method": method_name, "structured": method.structured, "target_fraction": fraction}
            point["target_size"] = target
            try:
                t0, evaluated = time.perf_counter(), len(memo)
                if method.search == "sweep":
                    if not sweep:
                        sweep = sweep_knobs(method, model, x_calib, [int(f * base) for f in fractions])
                        sweep_s = (time.perf_counter() - t0) / len(fractions)
                        chosen = [k for k in sweep.values() if k is not None]
                        if method.prepare is not None and chosen:
                            t1 = time.perf_counter()
                            method.prepare(model, x_calib, padded(chosen, fractions))
                            prepare_s = (time.perf_counter() - t1) / len(fractions)
                    t0 = time.perf_counter() - sweep_s  # every point carries an equal share of the sweep
                if method.search == "target":
                    knob, result, seconds = float(target), None, 0.0
                elif method.search == "sweep":
                    knob, result, seconds = sweep[target], None, 0.0
                    if knob is not None:
                        result, seconds = timed_run(method, model, x_calib, knob, False)
                else:
                    knob, result, seconds = search(method, model, x_calib, target, model.widths, memo)
                point["search_s"], point["evaluations"] = time.perf_counter() - t0, len(memo) - evaluated
                if method.search != "target" and result is None:
                    point["error"] = "target not reachable with this method's knob"
                else:
                    point["knob"] = knob
                    for track in method.tracks:
                        if method.search == "target" or (track == "B" and method.reconstructable):
                            (small, info), wall = timed_run(method, model, x_calib, knob, track == "B")
                            wall += prepare_s if track == "B" else 0.0
                        else:
                            (small, info), wall = result, seconds
                        if method.search == "target":
                            point["knob"] = float(info.knob)
                        row = describe(model, small, info, (x_test, y_test), np.asarray(x_calib), bounds, seed == 0)
                        point[track] = {**row, "wall_s": wall, "reconstructed": track == "B" and method.reconstructable}
            except Exception as e:  # noqa: BLE001 — a failing method is recorded, never hidden
                point["error"] = f"{type(e).__name__}: {e}"[:500]
            if getattr(method.run, "path_s", None) is not None:
                point["path_s"] = method.run.path_s
            record["points"].append(point)
            bar.update(1)
            if method.search == "fixed":
                bar.update(len(fractions) - 1)
                break
        record["wall_s"] = before + time.perf_counter() - start
        save(record)
    bar.close()
    return record


def write_json(path: pathlib.Path, record: dict) -> None:
    """Replace `path` atomically (a reader or an interrupted run never sees half a file)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)


def claim(path: pathlib.Path) -> bool:
    """Mark the job of raw file `path` as this process's (`path.running` holds its PID), so that several processes
    started alike share the jobs; a mark whose process has died is taken over."""
    mark = path.with_suffix(".running")
    for _ in range(2):
        try:
            with open(mark, "x") as f:
                f.write(str(os.getpid()))
            return True
        except FileExistsError:
            try:
                os.kill(int(mark.read_text() or 0), 0)
                return False  # its process is alive
            except (ProcessLookupError, ValueError, FileNotFoundError):
                mark.unlink(missing_ok=True)
    return False


def job_groups(args) -> list[list[tuple[str, int, int]]]:
    """The jobs `(data set, seed, width)`, grouped by network shape (data set and width): a process takes a whole
    group, so each shape's programs are compiled by one process and reused across its seeds. The 2×256 groups
    (`WIDE_SUBSET`, `WIDE_SEEDS` seeds) come first: the longest jobs first balances the processes best."""
    if args.quick:
        return [[("abalone", s, 64) for s in range(2)]]
    datasets = args.datasets or DATASETS
    widths = ((256, min(args.seeds, WIDE_SEEDS)),) if not args.no_wide else ()
    groups = [[(d, s, w) for s in range(seeds)] for w, seeds in widths for d in datasets if d in WIDE_SUBSET]
    groups += [[(d, s, 64) for s in range(args.seeds)] for d in datasets]
    groups = [[job for job in g if args.only_seeds is None or job[1] in args.only_seeds] for g in groups]
    return [g for g in groups if g]


QUICK_SKIP = ("lump dynamical components", "lump structural components", "EC", "OBS sequential", "ID weighted")


def pending(path: pathlib.Path, methods, args) -> tuple[bool, dict | None]:
    """Whether the job of raw file `path` still has work, and the record to complete (`None`: compute afresh): its
    unfinished record (`path.partial`) if there is one, else the raw file. Under `--overwrite` a record written by
    another run than `args.run_id` is recomputed; otherwise it is completed with the methods it lacks."""
    for candidate in (path.with_suffix(".partial"), path):
        if candidate.exists():
            record = json.loads(candidate.read_text())
            if args.overwrite and record.get("run") != args.run_id:
                continue
            return not set(methods) <= {p["method"] for p in record["points"]}, record
    return True, None


def save(path: pathlib.Path, methods, record: dict) -> None:
    """Write a job's record: to the raw file `path` once it holds every method in `methods`, to `path.partial`
    (git-ignored) until then, so that a raw file is only ever replaced by a complete job. The record carries the
    provenance of the code that computed its points (`benchmarks/provenance.py`)."""
    record["provenance"] = provenance.stamp(record.get("provenance"))
    if set(methods) <= {p["method"] for p in record["points"]}:
        write_json(path, record)
        path.with_suffix(".partial").unlink(missing_ok=True)
    else:
        write_json(path.with_suffix(".partial"), record)


def run_groups(groups, raw: pathlib.Path, methods, sizes, args) -> None:
    """Compute every job of every group this process claims (a group claimed by a live process is skipped)."""
    bar = tqdm(total=sum(map(len, groups)), desc="experiments", file=sys.stdout)
    for group in groups:
        name, _, width = group[0]
        if not claim(raw / f"{name}_w{width}"):
            bar.update(len(group))  # another process is computing it
            continue
        try:
            for name, seed, width in group:
                path = raw / f"{name}_w{width}_s{seed}.json"
                todo, existing = pending(path, methods, args)
                if todo:
                    with provenance.recording():
                        run_one(
                            name, seed, width, sizes, methods, args, functools.partial(save, path, methods), existing
                        )
                bar.update(1)
        finally:
            (raw / f"{name}_w{width}.running").unlink(missing_ok=True)
            # The group's programs are of its shape only. Freeing them keeps the process's memory mappings (each
            # compiled program holds some) below the kernel's limit: a process that kept ~2 groups' programs hit
            # vm.max_map_count (65530) and XLA aborted ("LLVM compilation error: Cannot allocate memory").
            jax.clear_caches()
            gc.collect()
    bar.close()


def run_id(runs: list[dict], argv: list[str], overwrite: bool, now: str) -> str:
    """The run an invocation belongs to: under `--overwrite`, the latest run if it is unfinished and was started with
    the same parsed arguments but for `--processes` (re-running the command continues it; how many processes share
    the jobs does not change their results), otherwise a new run named by its start time."""
    last = runs[-1] if runs else {}
    unfinished = overwrite and last.get("run") and not last.get("complete", True) and "argv" in last
    if unfinished and _run_arguments(last["argv"]) == _run_arguments(argv):
        return last["run"]
    return now


def _run_arguments(argv: list[str]) -> dict:
    """The parsed arguments that decide a run's results (all but `--processes`)."""
    arguments = vars(_parser().parse_args(argv))
    del arguments["processes"]
    return arguments


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM unwinds like Ctrl-C: claims are released, the run's log is written


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="abalone, 2 seeds, 3 sizes (writes raw-quick/)")
    parser.add_argument("--report-only", action="store_true", help="rebuild tables and figures from the raw JSON")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--only-seeds", type=int, nargs="*", help="of those, only these")
    parser.add_argument("--datasets", nargs="*", choices=DATASETS)
    parser.add_argument("--methods", nargs="*", choices=tuple(METHODS))
    parser.add_argument("--no-wide", action="store_true", help="skip the 2×256 networks")
    parser.add_argument("--max-steps", type=int, default=6000)
    parser.add_argument("--cache", default="/tmp/jaxlump_experiments_cache", help="data sets and trained networks")
    parser.add_argument("--overwrite", action="store_true", help="recompute raw files that exist")
    parser.add_argument("--out", default=str(ROOT))
    parser.add_argument(
        "--processes", type=int, help="processes sharing the jobs, a data set and width each (default 2, --quick 1)"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # started by --processes
    parser.add_argument("--run-id", help=argparse.SUPPRESS)  # the coordinator's run, for its workers
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser()
    args = parser.parse_args(argv)
    processes = args.processes or (1 if args.quick else 2)
    if processes < 1:
        parser.error(f"--processes must be >= 1; received {processes}")
    out = pathlib.Path(args.out)
    raw = out / ("raw-quick" if args.quick else "raw")
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    from experiments_report import report  # the sibling script

    if not args.report_only:
        raw.mkdir(parents=True, exist_ok=True)
        methods = {k: METHODS[k] for k in (args.methods or METHODS)}
        if args.quick:
            methods = {k: v for k, v in methods.items() if k not in QUICK_SKIP}
        sizes = QUICK_SIZES if args.quick else SIZES
        groups = job_groups(args)
        signal.signal(signal.SIGTERM, _interrupt)
        if args.worker:
            return run_groups(groups, raw, methods, sizes, args)
        log = out / ("runs-quick.json" if args.quick else "runs.json")
        runs = json.loads(log.read_text()) if log.exists() else []
        started, start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), time.time()
        args.run_id = run_id(runs, argv, args.overwrite, started)
        workers = []
        try:
            for k in range(1, processes):
                worker_log = open(raw / f"worker-{k}.log", "w")  # noqa: SIM115 — open while the worker runs
                command = [sys.executable, __file__, *argv, "--worker", "--run-id", args.run_id]
                workers.append((subprocess.Popen(command, stdout=worker_log, stderr=worker_log), worker_log))
            run_groups(groups, raw, methods, sizes, args)
            interrupted = False
        except KeyboardInterrupt:
            interrupted = True
            for worker, _ in workers:
                worker.terminate()
        for worker, worker_log in workers:
            if worker.wait() != 0 and not interrupted:
                print(f"a worker process failed (exit {worker.returncode}); its output is in {worker_log.name}")
            worker_log.close()
        paths = [raw / f"{n}_w{w}_s{s}.json" for g in groups for n, s, w in g]
        computed = sum(p.exists() and p.stat().st_mtime >= start for p in paths)
        complete = not any(pending(p, methods, args)[0] for p in paths)
        wall = time.time() - start
        finished = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        runs.append(
            {"run": args.run_id, "started": started, "finished": finished, "wall_s": wall, "processes": processes,
             "computed": computed, "jobs": len(paths), "complete": complete, "argv": argv}
        )  # fmt: skip
        log.write_text(json.dumps(runs, indent=1))
        print(f"{computed} runs computed in {wall:.0f} s by {processes} process(es)")
        if not complete:
            print("the run is not complete: the same command continues it")
        if interrupted:
            sys.exit(130)
    committed = not args.quick and args.out == str(ROOT)  # only the committed results update the docs and README
    repo = pathlib.Path(__file__).parents[1]
    docs, readme = (repo / "docs" / "benchmarks.md", repo / "README.md") if committed else (None, None)
    report(raw, out / ("quick" if args.quick else "."), docs, readme)


if __name__ == "__main__":
    main()
