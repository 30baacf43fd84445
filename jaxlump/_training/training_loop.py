"""`wrap_optax`: lump inside a jitted optax training loop, keep dead neurons dead, `shrink` once at the end.

Every `every` steps the wrapped update lumps the parameters in the fixed-shape (masked) form; between rounds the
gradients, the updates and every parameter-shaped part of the inner optimizer's state are zero on the dead
neurons, so momentum cannot bring them back. Rounds compose: round k lumps the *population* of original neurons,
each previous block expanded into exact duplicates of its representative (incoming row copied, outgoing column
shared), so a block always moves as a whole, a merged neuron can merge again, and its original members stay mapped
to it. The block then sits at an index that was already live, where its optimizer state is.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optax
from jaxtyping import Array, Int

from .._criteria.discrepancy import AbstractDiscrepancy, Structural
from .._criteria.refinement import AbstractRefinement, Representative
from .._errors import RESULTS, check_bool, check_eps, combine, finite_result
from .._methods.lump import _prepare, check_lump_options, lump_chain, partition
from .._model import is_chain_kind, to_chain
from .._model.network import DenseChain
from .._reconstruction.masked import held_info, neuron_masks
from .._reconstruction.reconstruct import DEFAULT_RIDGE
from .._results.accounting import chain_cost
from .._results.info import Certificate, CompressionInfo, live_masks, live_widths
from .._sites.compress import SitesInfo, compress_sites, segment_chain, segments, site_listing, site_taps
from .._sites.layers import family_of
from .._sites.site import Sites, capture

# Relative tolerances a `TargetSize` round chooses from (0: exact duplicates only; 4: about everything merges).
DEFAULT_GRID = (0.0, *np.geomspace(1e-3, 4.0, 23).round(6).tolist())


def _is_integer(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_schedule(value) -> bool:
    return callable(value) and not isinstance(value, eqx.Module)


def _evaluate(schedule: Callable, name: str, step=0) -> jax.Array:
    try:
        value = jnp.asarray(schedule(jnp.asarray(step, jnp.int32)))
    except Exception as e:  # noqa: BLE001 — any failure means it is not a schedule of the step
        raise TypeError(
            f"`{name}` must be a number or a schedule `step -> value` (an optax schedule); "
            f"calling it on step {step} failed: {e}"
        ) from e
    if value.ndim != 0:
        raise ValueError(f"`{name}` as a schedule must return a scalar; it returned shape {value.shape}.")
    return value


class TargetSize(eqx.Module):
    """Lump each round to a requested size (ε chosen on a grid inside `jax.jit`).

    In every round the partitions of all ε in `grid` are computed at once (discrepancy and refinement only, no
    refit), and the round uses the ε whose result is the largest within the requested number of dense parameters
    (weights + biases of the live neurons; the smallest result when none is small enough). Requested and
    realised sizes are in the wrapper's state (`state.requested`, `state.info.cost_after.dense_params`).

    **Arguments** (give exactly one of `params` and `fraction`):

    - `params`: the requested number of dense parameters, a positive integer or a schedule `step -> params`
      (a target at or above the model's size keeps every neuron).
    - `fraction`: the requested size as a fraction in (0, 1] of the original's dense parameters, or a schedule
      `step -> fraction` (e.g. `optax.linear_schedule(1.0, 0.25, 1000)`, to shrink gradually).
    - `grid`: the relative tolerances ε to choose from, ascending.

    **Raises:** `ValueError`/`TypeError` for a missing or doubled size, a count that is not a positive integer, a
    fraction outside (0, 1], a schedule that does not return a scalar, or a grid that is empty, unsorted, negative
    or not finite. A schedule's values are checked in each round, inside `jax.jit` (`eqx.error_if`): a count below
    1 or a fraction outside (0, 1] (NaN included) raises there.

    ```python
    import jaxlump, optax
    target = jaxlump.TargetSize(fraction=optax.linear_schedule(1.0, 0.3, 500))
    assert target.params is None
    ```
    """

    params: int | Callable | None = eqx.field(static=True, default=None)
    fraction: float | Callable | None = eqx.field(static=True, default=None)
    grid: tuple[float, ...] = eqx.field(static=True, default=DEFAULT_GRID)

    def __check_init__(self):
        if (self.params is None) == (self.fraction is None):
            raise ValueError(
                f"give exactly one of `params` and `fraction`; received params={self.params!r}, "
                f"fraction={self.fraction!r}."
            )
        name, value = ("params", self.params) if self.fraction is None else ("fraction", self.fraction)
        size = _evaluate(value, name) if _is_schedule(value) else value
        if isinstance(size, bool) or not np.issubdtype(np.asarray(size).dtype, np.number):
            raise TypeError(f"`{name}` must be a number or a schedule; received {value!r}.")
        if name == "params" and not _is_schedule(value) and not _is_integer(size):
            raise TypeError(f"`params` must be a positive integer number of parameters; received {size!r}.")
        if name == "params" and not size >= 1:
            raise ValueError(f"`params` must be a positive number of parameters; received {size!r}.")
        if name == "fraction" and not 0 < size <= 1:
            raise ValueError(f"`fraction` must lie in (0, 1]; received {size!r}.")
        grid = np.asarray(self.grid, dtype=float)
        if grid.ndim != 1 or grid.size == 0 or not np.all(np.isfinite(grid)) or np.any(grid < 0):
            raise ValueError(f"`grid` must be a non-empty tuple of finite values >= 0; received {self.grid!r}.")
        if np.any(np.diff(grid) < 0):
            raise ValueError(f"`grid` must be ascending; received {self.grid!r}.")

    def requested(self, step, original: int) -> jax.Array:
        """The number of dense parameters requested at `step` (`original`: the unlumped model's), at most
        `original` (a larger target keeps every neuron). A schedule's value is checked here, where it is traced:
        a count below 1 or a fraction outside (0, 1] (NaN included) raises, as it would at construction."""
        value = self.params if self.fraction is None else self.fraction
        if _is_schedule(value):
            value = jnp.asarray(value(step), jnp.result_type(float))
            if self.fraction is None:
                bad, accepted = ~(value >= 1), "a number of parameters >= 1"
            else:
                bad, accepted = ~((value > 0) & (value <= 1)), "a fraction in (0, 1]"
            value = eqx.error_if(
                value, bad, f"`TargetSize`'s schedule returned a value that is not {accepted} (NaN, or out of range)."
            )
        value = jnp.asarray(value, jnp.result_type(float))
        size = value if self.fraction is None else jnp.floor(value * original)
        # Clipped before the cast: a count above int32's range (or the model's size) must not wrap around.
        return jnp.minimum(size, original).astype(jnp.int32)


class LumpState(eqx.Module):
    """The state of `wrap_optax`'s transformation.

    - `count`: updates done so far.
    - `inner`: the wrapped optimizer's state (zero on dead neurons).
    - `info`: the composed `CompressionInfo` since wrapping: `partitions` map every original neuron to the
      index that represents it now; `knob` is the last round's ε (NaN before the first round), `certificate` the
      last round's measured error on `x_calib` against the parameters just before that round (its a-priori
      bound and ODE deviation are not computed, NaN; without `x_calib` nothing is, and `info.summary()` says
      so), `result` the first failure met (a failed round is skipped). For a model of sites, a `SitesInfo`
      holding one such info per segment, its `output_max_abs`/`output_rms` the last round's measured change of
      the whole model's output.
    - `requested`: the dense parameters the last `TargetSize` round asked for (-1 for a fixed ε or schedule).
    """

    count: Int[Array, ""]
    inner: Any
    info: CompressionInfo | SitesInfo
    requested: Int[Array, ""]


class _Binding:
    """Parameters ↔ the `DenseChain`s of a model's segments (one chain for a chain model; one per segment of sites
    for any other model).

    `chains(params)` reads them through the adapters; `write(params, chains)` puts chains back into the
    parameters' own structure as the transpose of that linear read (each parameter is read at most once, which
    `bind` checks), so the model's own layout (stacked scan layers, NNX's `(in, out)` kernels) is kept whatever
    type the adapters would rebuild; parameters no chain reads (attention, embeddings, norms) keep their values.
    """

    def __init__(self, rebuild: Callable, params, read: Callable, pure: Callable = lambda p: p):
        self.rebuild, self.pure, self.read = rebuild, pure, read
        self.shapes = jtu.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
        self.covered = self._transpose(jtu.tree_map(jnp.ones_like, self.chains(params)))
        self.everything = all(bool(np.all(np.asarray(c) != 0)) for c in jtu.tree_leaves(self.covered))

    def chains(self, params) -> tuple[DenseChain, ...]:
        return self.read(self.rebuild(params))

    def _transpose(self, chains):
        zeros = jtu.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), self.shapes)
        _, transpose = jax.vjp(self.chains, zeros)
        (params,) = transpose(chains)
        return params

    def write(self, params, chains):
        """`params` with the chains' entries replaced by `chains`'."""
        if self.everything:  # a chain model: its parameters are exactly the chain's
            return self._transpose(chains)
        return jtu.tree_map(
            lambda c, new, old: jnp.where(c != 0, new, old), self.covered, self._transpose(chains), params
        )

    def masks(self, chains):
        """Parameter-shaped 1/0 masks: `chains`' (masks as chains) where a chain reads, 1 elsewhere."""
        return self.write(jtu.tree_map(jnp.ones_like, self.covered), chains)


def bind(model, listing: Sites | None = None) -> tuple[_Binding, Any]:
    """The `_Binding` of `model` and its parameters (what the user's loop trains): its one chain, or with a
    `listing` the chains of its segments of sites."""
    if listing is None:
        to_chain(model)  # refuses unsupported models with the adapters' message

        def read(m):
            return (to_chain(m, require_finite=False),)

    else:
        chosen = segments(listing)

        def read(m):
            return tuple(segment_chain(m, segment) for segment in chosen)

    if type(model).__module__.startswith("flax.") or family_of(model).name == "Flax NNX":
        from flax import nnx

        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        params = nnx.as_pure(params)
        # nnx.Optimizer initialises with Param variables, then updates with their values.
        binding = _Binding(lambda p: nnx.merge(graphdef, p, rest), params, read, nnx.as_pure)
    else:
        static = eqx.filter(model, eqx.is_array, inverse=True)
        params = eqx.filter(model, eqx.is_array)
        binding = _Binding(lambda p: eqx.combine(p, static), params, read)
    written = binding._transpose(binding.chains(params))
    read_once = all(
        np.array_equal(np.where(c != 0, w, 0), np.where(c != 0, p, 0))
        for c, w, p in zip(jtu.tree_leaves(binding.covered), jtu.tree_leaves(written), jtu.tree_leaves(params))
    )
    if listing is None and not binding.everything:
        read_once = False  # a chain model's parameters are exactly its layers' weights and biases
    if not read_once:
        raise TypeError(
            f"`model` ({type(model).__name__}) holds arrays that are not its dense layers' weights and biases, or "
            "reads one twice; wrap_optax and finetune train exactly the parameters jaxlump reads from the model."
        )
    return binding, params


def _counts(labels: jax.Array) -> jax.Array:
    return jax.ops.segment_sum((labels >= 0).astype(jnp.int32), jnp.maximum(labels, 0), labels.shape[0])


def _map_layers(chain: DenseChain, on_weight: Callable, on_bias: Callable) -> DenseChain:
    """`chain` with `on_weight(w, l)` / `on_bias(b, l)` applied to every layer's weight and bias, a gated layer's
    gate weight and bias alike (a gated unit's gate row moves with its up row)."""

    def gates(entries, fn):
        return tuple(None if e is None else fn(e, l) for l, e in enumerate(entries))

    return DenseChain(
        tuple(on_weight(w, l) for l, w in enumerate(chain.weights)),
        tuple(on_bias(b, l) for l, b in enumerate(chain.biases)),
        chain.activations,
        chain.use_bias,
        gates(chain.gate_weights, on_weight),
        gates(chain.gate_biases, on_bias),
    )


def expand(chain: DenseChain, labels: tuple[jax.Array, ...]) -> DenseChain:
    """The same function on every original neuron: neuron j copies the incoming row and bias of `labels[j]` and
    gets an equal share of its outgoing column (exact duplicates, so lumping keeps each block together); a
    removed neuron (label -1) gets zeros."""
    widths = chain.widths
    full = (jnp.arange(widths[0]), *labels, jnp.arange(widths[-1]))
    shares = [jnp.ones(widths[0])] + [1.0 / jnp.maximum(_counts(p), 1) for p in labels] + [jnp.ones(widths[-1])]

    def weight(w, l):
        rows, cols = jnp.maximum(full[l + 1], 0), jnp.maximum(full[l], 0)
        kept = (full[l + 1] >= 0).astype(w.dtype)
        share = (shares[l][cols] * (full[l] >= 0)).astype(w.dtype)
        return w[rows][:, cols] * kept[:, None] * share[None, :]

    def bias(b, l):
        return b[jnp.maximum(full[l + 1], 0)] * (full[l + 1] >= 0).astype(b.dtype)

    return _map_layers(chain, weight, bias)


def compose(new: jax.Array, previous: jax.Array) -> jax.Array:
    """Labels of the original neurons after a round: `previous[new]`, -1 (removed) where either is -1."""
    composed = previous[jnp.maximum(new, 0)]
    return jnp.where(new >= 0, composed, -1)


def relocate(chain: DenseChain, new: tuple[jax.Array, ...], previous: tuple[jax.Array, ...]) -> DenseChain:
    """Move each block of a masked result from its representative `r` to `previous[r]` (an index live before)."""
    widths = chain.widths
    n_hidden = len(new)
    dest = [jnp.arange(widths[0])]
    for p_new, p_old in zip(new, previous):
        n = p_new.shape[0]
        dest.append(jnp.where(p_new == jnp.arange(n), p_old, n))
    dest.append(jnp.arange(widths[-1]))

    def weight(w, l):
        rows = w if l == 0 else jnp.zeros_like(w).at[:, dest[l]].set(w, mode="drop")
        return rows if l == n_hidden else jnp.zeros_like(w).at[dest[l + 1]].set(rows, mode="drop")

    def bias(b, l):
        return b if l == n_hidden else jnp.zeros_like(b).at[dest[l + 1]].set(b, mode="drop")

    return _map_layers(chain, weight, bias)


def _keep(tree, masks):
    return jtu.tree_map(lambda x, m: jnp.where(m != 0, x, jnp.zeros_like(x)), tree, masks)


def zero_state(optimizer: optax.GradientTransformation, state, masks):
    """Zero every parameter-shaped part of an optax state (moments, traces ...) where `masks` is 0."""
    return optax.tree_utils.tree_map_params(
        optimizer, lambda s, m: jnp.where(m != 0, s, jnp.zeros_like(s)), state, masks
    )


def masked_update(optimizer: optax.GradientTransformation, grads, state, params, masks, **extra_args):
    """`optimizer.update` with gradients, updates and parameter-shaped state exactly zero where `masks` is 0."""
    updates, state = optimizer.update(_keep(grads, masks), state, params, **extra_args)
    return _keep(updates, masks), zero_state(optimizer, state, masks)


def structure_masks(model, info) -> DenseChain:
    """1/0 masks (as a chain) of the parameters a fixed-shape result keeps: live neurons, and within them the
    `weight_masks` of an unstructured result. `info` is a `CompressionInfo` or a `wrap_optax` state."""
    info = held_info(info)
    chain = to_chain(model, require_finite=False)
    widths = chain.widths
    shapes = tuple(int(np.shape(p)[0]) for p in info.partitions)
    if shapes != widths[1:-1]:
        raise ValueError(
            f"`info` has partitions of hidden widths {shapes} but `model` has hidden widths {widths[1:-1]}; "
            "pass the info of this fixed-shape model (not of its shrunk form)."
        )
    masks = neuron_masks(chain, info.partitions)
    if info.weight_masks is None:
        return masks
    weights = tuple(m * jnp.asarray(k, m.dtype) for m, k in zip(masks.weights, info.weight_masks))
    return dataclasses.replace(masks, weights=weights)


def _dense_params(partitions, chain: DenseChain) -> jax.Array:
    """The dense parameters of `chain` lumped to `partitions` (a gated layer counts its gate too)."""
    hidden = [jnp.sum(p == jnp.arange(p.shape[-1]), axis=-1) for p in partitions]
    n = [chain.widths[0], *hidden, chain.widths[-1]]
    return sum(
        n[l + 1] * (n[l] + int(b)) * (2 if gated else 1)
        for l, (b, gated) in enumerate(zip(chain.use_bias, chain.gated))
    )


def _initial_info(chain: DenseChain) -> CompressionInfo:
    widths = chain.widths
    partitions = tuple(jnp.arange(n, dtype=jnp.int32) for n in widths[1:-1])
    nan = jnp.asarray(jnp.nan, chain.weights[0].dtype)
    cost = chain_cost(chain)
    return CompressionInfo(
        method="lump",
        structured=True,
        knob=nan,  # no round yet
        partitions=partitions,
        weight_masks=None,
        widths_before=widths,
        widths_after=live_widths(widths, partitions),
        cost_before=cost,
        cost_after=cost,
        certificate=Certificate(nan, nan, nan, nan),
        result=RESULTS.successful,
    )


def _measured_certificate(before: DenseChain, after: DenseChain, x) -> tuple[Certificate, RESULTS]:
    """The measured error of `after` against `before` on the data `x` (max and RMS), with
    `RESULTS.nonfinite_result` when it is NaN or inf; the a-priori bound and the ODE deviation are not computed
    (NaN, which `Certificate.describe` reports as such)."""
    deviation = after(x) - before(x)
    nan = jnp.asarray(jnp.nan, deviation.dtype)
    measured = Certificate(jnp.max(jnp.abs(deviation)), jnp.sqrt(jnp.mean(deviation**2)), nan, nan)
    return measured, finite_result((measured.output_max_abs, measured.output_rms), RESULTS.nonfinite_result)


def _like(new, old):
    return jtu.tree_map(lambda a, b: jnp.asarray(a, b.dtype), new, old)


def wrap_optax(
    optimizer: optax.GradientTransformation,
    model,
    x_calib,
    eps,
    *,
    every: int,
    until: int | None = None,
    discrepancy: AbstractDiscrepancy = Structural(),
    refinement: AbstractRefinement = Representative(),
    reconstruct: bool = False,
    ridge: float = DEFAULT_RIDGE,
    where=None,
) -> optax.GradientTransformationExtraArgs:
    """Wrap an optax optimizer so that it lumps the network every `every` steps, inside `jax.jit`.

    On update `t` (counting from 1) with `t % every == 0` (and `t ≤ until`), the inner step is applied and the
    result lumped in the fixed-shape form (`jaxlump.lump_masked`): the update is `lumped − params`. On every update
    the gradients, the updates and each parameter-shaped part of the inner state (Adam's moments ...) are set to
    exactly zero on dead neurons (their incoming row, bias and outgoing column). Partitions compose across
    rounds; `jaxlump.shrink(model, state)` then gives the physically smaller model. Nothing recompiles: the round
    is a `lax.cond` on the step count and ε is traced.

    **Arguments:**

    - `optimizer`: the optax transformation to wrap (`optax.adam(1e-3)`, a chain ...).
    - `model`: the model to be trained (any kind `jaxlump.lump` supports: a chain model, or any Equinox / NNX
      module with sites, whose sites are lumped and whose other parameters train as the inner optimizer says; the
      parameters are `eqx.filter(model, eqx.is_array)` for Equinox, `nnx.state(model, nnx.Param)` for Flax NNX).
    - `x_calib`: calibration inputs for the refit and the measured error: `(batch, n_in)` for a chain model (or
      `None`: data-free, no refit); for a model of sites a batch of its inputs (required: its sites are found on it).
    - `eps`: a tolerance ε ≥ 0, a schedule `step -> ε` (an optax schedule), or a `jaxlump.TargetSize`.
    - `every`: steps between lumping rounds (≥ 1); `until`: no round after this step (default: no end).
    - `discrepancy`, `refinement`, `ridge`: as in `jaxlump.lump`.
    - `reconstruct`: re-solve each round's layers by least squares on `x_calib` (`jaxlump.reconstruct`). Off by
      default: in a loop the steps that follow adapt the weights, and a refit costs far more than the round
      (see `docs/training.md` for the measured cost).
    - `where`: which sites of a model of sites (see `jaxlump.sites`); the sites are lumped in program order, each
      on the inputs of the model lumped so far when the round needs data (a refit, the Dynamical discrepancy), and
      a `TargetSize` counts the whole model's parameters.

    **Returns:** an `optax.GradientTransformationExtraArgs` whose state is a `LumpState`.

    **Raises:** `TypeError`/`ValueError` at construction for an optimizer that is not an optax transformation,
    `every < 1`, an unsupported model, a bad ε, schedule or target, or bad lumping options.

    ```python
    import equinox as eqx, jax, jax.numpy as jnp, jax.random as jr, optax, jaxlump
    model = eqx.nn.MLP(2, 1, 16, 2, activation=jnp.tanh, key=jr.key(0))
    x = jr.normal(jr.key(1), (64, 2)); y = jnp.sin(x[:, :1])
    tx = jaxlump.wrap_optax(optax.adam(1e-2), model, x, 0.3, every=10)
    params, static = eqx.partition(model, eqx.is_array)
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        loss = lambda p: jnp.mean((jax.vmap(eqx.combine(p, static))(x) - y) ** 2)
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        return eqx.apply_updates(params, updates), state

    for _ in range(30):
        params, state = step(params, state)
    small, info = jaxlump.shrink(eqx.combine(params, static), state)
    assert jnp.allclose(jax.vmap(small)(x), jax.vmap(eqx.combine(params, static))(x), atol=1e-6)
    ```

    Reference: Dhiman, Passarella, Tribastone, Valerio, arXiv 2606.01402 (2026); the optimizer-wrapping
    interface follows jaxpruner (Lee et al., arXiv 2304.14082, 2023).
    """
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            f"`optimizer` must be an optax.GradientTransformation (e.g. optax.adam(1e-3)); received "
            f"{type(optimizer).__name__}."
        )
    for name, value, minimum in (("every", every, 1), ("until", until, 0)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
            raise TypeError(f"`{name}` must be an integer; received {value!r}.")
        if value is not None and value < minimum:
            raise ValueError(f"`{name}` must be an integer >= {minimum}; received {value!r}.")
    refit = check_bool(reconstruct, "reconstruct")
    if is_chain_kind(model):
        if where is not None:
            raise ValueError(
                f"`where` applies to models compressed site by site; `model` ({type(model).__name__}) is one chain "
                "of layers, lumped as a whole."
            )
        binding, _ = bind(model)
        chain, x, _, ridge = _prepare(model, x_calib, 0.0, discrepancy, refinement, ridge)
        chains, rows_of = (chain,), lambda params, s: x
        info0 = _initial_info(chain)
    else:
        ridge = check_lump_options(discrepancy, refinement, ridge)
        if x_calib is None:
            raise ValueError(
                f"`x_calib` is needed to wrap the training of a {type(model).__name__}: its sites are found on it; "
                "pass a batch of the model's inputs."
            )
        listing = site_listing(model, x_calib, where)
        binding, params0 = bind(model, listing)
        chains, x, family = binding.chains(params0), x_calib, family_of(model)
        taps = site_taps(model, listing)

        def rows_of(params, s):
            (rows,) = capture(binding.rebuild(params), family, (taps[s],), x)
            return rows.astype(chains[s].weights[0].dtype)

        info0 = _initial_sites_info(model, x, listing)
    if refit and x is None:
        raise ValueError("`reconstruct=True` re-solves the layers on `x_calib`; received x_calib=None.")
    if isinstance(eps, TargetSize):
        pass
    elif _is_schedule(eps):
        check_eps(_evaluate(eps, "eps"))
    else:
        eps = check_eps(eps)
    inner = optax.with_extra_args_support(optimizer)
    info0 = jtu.tree_map(jnp.asarray, info0)  # device arrays: the same avals as after a step
    ridges = tuple(jnp.asarray(ridge, c.weights[0].dtype) for c in chains)
    original_params = int(info0.params_after)
    needs_rows = refit or discrepancy.needs_data

    def masks_for(info):
        return binding.masks(tuple(neuron_masks(c, i.partitions) for c, i in zip(chains, _segment_infos(info))))

    def init(params):
        params = binding.pure(params)
        if jtu.tree_structure(params) != jtu.tree_structure(masks_for(info0)):
            raise ValueError(
                "`params` do not have the structure of the wrapped model's parameters: pass "
                "eqx.filter(model, eqx.is_array) (Equinox) or nnx.state(model, nnx.Param) (Flax NNX)."
            )
        return LumpState(jnp.asarray(0, jnp.int32), inner.init(params), info0, jnp.asarray(-1, jnp.int32))

    def sizes(expanded, rows, values, eps_max):
        """The whole model's dense parameters at each ε of `values` (every segment lumped on `rows`)."""
        saved = 0
        for c, r in zip(expanded, rows):
            labels = jax.vmap(lambda e, c=c, r=r: partition(c, r, e, discrepancy, refinement, eps_max))(values)
            saved = saved + _dense_params(tuple(jnp.arange(n) for n in c.widths[1:-1]), c) - _dense_params(labels, c)
        return original_params - saved

    def _search(target, expanded, rows, requested):
        """The ε of the largest result within `requested`: the grid, then 16 points between the grid's last
        infeasible and first feasible ε."""
        grid = jnp.asarray(target.grid, expanded[0].weights[0].dtype)
        coarse = sizes(expanded, rows, grid, grid[-1])
        first = jnp.argmax(coarse <= requested)
        low, high = grid[jnp.maximum(first - 1, 0)], grid[first]
        fine_grid = low + (high - low) * jnp.linspace(0.0, 1.0, 16, dtype=grid.dtype)
        values = jnp.concatenate([grid, fine_grid])
        found = jnp.concatenate([coarse, sizes(expanded, rows, fine_grid, high)])
        feasible = found <= requested
        best = jnp.where(jnp.any(feasible), jnp.argmax(jnp.where(feasible, found, -1)), jnp.argmin(found))
        return values[best]

    def lump_round(params, count, info):
        segment_infos = _segment_infos(info)
        expanded = [expand(c, i.partitions) for c, i in zip(binding.chains(params), segment_infos)]
        requested = jnp.asarray(-1, jnp.int32)
        if isinstance(eps, TargetSize):
            requested = eps.requested(count, original_params)
            # The search calibrates every segment on the model before the round.
            rows = [rows_of(params, s) if needs_rows else None for s in range(len(chains))]
            value = _search(eps, expanded, rows, requested)
        elif _is_schedule(eps):
            value = check_eps(jnp.asarray(eps(count), expanded[0].weights[0].dtype))
        else:
            value = eps
        # Without refit (and a data-free discrepancy) no data is passed to the lumping: its full certificate (the
        # a-priori bound's spectral norms) would cost more than the round. The measured error on `x_calib` is
        # computed here instead (two forward passes); the rest of the certificate is left as not computed (NaN).
        current, new_chains, composed, results = params, list(expanded), [], []
        for s, segment_info in enumerate(segment_infos):
            data = rows_of(current, s) if needs_rows else None
            reduced, round_info = lump_chain(expanded[s], data, value, discrepancy, refinement, refit, ridges[s], False)
            previous = segment_info.partitions
            partitions = tuple(compose(p_new, p_old) for p_new, p_old in zip(round_info.partitions, previous))
            new_chains[s] = relocate(reduced, round_info.partitions, previous)
            widths = chains[s].widths
            composed.append(
                CompressionInfo(
                    method=segment_info.method,
                    structured=True,
                    knob=value,
                    partitions=partitions,
                    weight_masks=None,
                    widths_before=segment_info.widths_before,
                    widths_after=live_widths(widths, partitions),
                    cost_before=segment_info.cost_before,
                    cost_after=chain_cost(new_chains[s], live_masks(widths[1:-1], partitions)),
                    certificate=round_info.certificate,
                    result=RESULTS.where(
                        segment_info.result == RESULTS.successful, round_info.result, segment_info.result
                    ),
                )
            )
            results.append(round_info.result)
            if needs_rows:
                current = binding.write(params, tuple(new_chains))
        new_params = binding.write(params, tuple(new_chains))
        new_info, measured = _round_info(info, composed, value, expanded, new_chains, params, new_params)
        ok = measured == RESULTS.successful
        for result in results:
            ok = ok & (result == RESULTS.successful)
        partitions = tuple(i.partitions for i in composed)
        previous = tuple(i.partitions for i in segment_infos)
        chosen = jtu.tree_map(lambda a, b: jnp.where(ok, a, b), (new_params, partitions), (params, previous))
        new_info = _with_partitions(new_info, chosen[1])
        return chosen[0], _like(new_info, info), requested

    def _round_info(info, composed, value, expanded, new_chains, params, new_params):
        """The state's info after a round, the certificate measured on `x_calib` unless the round computed it, and
        the measurement's `RESULTS`."""
        if isinstance(info, CompressionInfo):
            (only,) = composed
            certificate, measured = only.certificate, RESULTS.successful
            if not needs_rows and x is not None:
                certificate, measured = _measured_certificate(expanded[0], new_chains[0], x)
            only = eqx.tree_at(lambda i: i.certificate, only, certificate)
            only = eqx.tree_at(
                lambda i: i.result, only, RESULTS.where(only.result == RESULTS.successful, measured, only.result)
            )
            return only, measured
        before = family.apply(binding.rebuild(params), x)
        after = family.apply(binding.rebuild(new_params), x)
        deviation = jnp.abs(jnp.asarray(after, jnp.float32) - jnp.asarray(before, jnp.float32))
        measured = finite_result(after, RESULTS.output_nonfinite)
        result = combine(*(i.result for i in composed))
        result = RESULTS.where(info.result == RESULTS.successful, result, info.result)
        new = dataclasses.replace(
            info,
            knob=value,
            segments=tuple(composed),
            output_max_abs=jnp.max(deviation),
            output_rms=jnp.sqrt(jnp.mean(deviation**2)),
            result=RESULTS.where(result == RESULTS.successful, measured, result),
        )
        return new, measured

    def update(grads, state, params=None, **extra_args):
        if params is None:
            raise ValueError("the update of `wrap_optax` needs the current `params`: tx.update(grads, state, params).")
        updates, inner_state = masked_update(inner, grads, state.inner, params, masks_for(state.info), **extra_args)
        step = state.count + 1
        due = step % every == 0
        if until is not None:
            due = due & (step <= until)

        def with_round(operands):
            updates, inner_state = operands
            lumped, info, requested = lump_round(optax.apply_updates(params, updates), step, state.info)
            updates = jtu.tree_map(lambda a, b: a - b, lumped, params)  # exact zeros where `lumped` is zero
            return updates, zero_state(inner, inner_state, masks_for(info)), info, requested

        def without(operands):
            return (*operands, state.info, state.requested)

        if until == 0:  # no round can happen: no conditional in the compiled step
            updates, inner_state, info, requested = without((updates, inner_state))
        else:
            updates, inner_state, info, requested = jax.lax.cond(due, with_round, without, (updates, inner_state))
        return updates, LumpState(step, inner_state, info, requested)

    return optax.GradientTransformationExtraArgs(init, update)


def _segment_infos(info) -> tuple[CompressionInfo, ...]:
    """The `CompressionInfo` of each segment: the info itself for a chain model."""
    return (info,) if isinstance(info, CompressionInfo) else info.segments


def _with_partitions(info, partitions):
    if isinstance(info, CompressionInfo):
        return eqx.tree_at(lambda i: i.partitions, info, partitions[0])
    segments = tuple(eqx.tree_at(lambda i: i.partitions, s, p) for s, p in zip(info.segments, partitions))
    return dataclasses.replace(info, segments=segments)


def _initial_sites_info(model, x_calib, listing: Sites) -> SitesInfo:
    """The `SitesInfo` before any round: every unit its own block, the measured error not computed (NaN)."""
    _, info = compress_sites(
        lambda segment, chain, rows: (chain, _initial_info(chain)),
        model,
        x_calib,
        method="lump",
        knob=jnp.nan,
        listing=listing,
    )
    nan = jnp.full_like(info.output_max_abs, jnp.nan)  # no round yet; nonzeros are counted when shrunk
    return dataclasses.replace(info, knob=nan, output_max_abs=nan, output_rms=nan, nonzeros_after=None)
