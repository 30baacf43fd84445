"""The info record every compressor returns beside the new model."""

import weakref

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .._criteria.gram import batch_rows_for, fold_batches, row_batches
from .._custom_types import Partitions, WeightMasks
from .._errors import RESULTS, combine, is_traced, messages, spans_processes
from .._model import to_chain
from .._model.activations import numpy_activation
from .._model.network import DenseChain
from .accounting import Cost, chain_cost, cost


class Certificate(eqx.Module):
    """Error figures of a compressed model against its original.

    - `output_max_abs`, `output_rms`: measured `|f̃(x) − f(x)|` over the calibration data (max, RMS).
    - `ode_max_abs`: max deviation of the two simulated ODEs' outputs over the homotopy
      `x(t) = x_ref + t(x − x_ref)`, t ∈ [0, 1] (NaN when the simulation was not requested).
    - `a_priori_bound`: `max_x Σ_l (Π_{j>l} L_{j-1}‖W̃^j‖₂) ‖[ΔW^l ΔB^l]‖_F ‖[a^{l-1}(x); 1]‖₂` over
      the calibration data, a bound on `‖f̃(x) − f(x)‖₂` (see `docs/method.md`, "Guarantee").
    """

    output_max_abs: Float[Array, "*batch"]
    output_rms: Float[Array, "*batch"]
    ode_max_abs: Float[Array, "*batch"]
    a_priori_bound: Float[Array, "*batch"]

    def describe(self) -> str:
        """The certificate in words (numbers for concrete certificates); a figure that is NaN throughout was not
        computed (data-free, or skipped by the method) and is said to be, never printed as a number."""
        if _not_computed(self.output_max_abs):
            measured = "measured error not computed (no calibration data)"
        else:
            measured = f"measured max |f̃ − f| = {_number(self.output_max_abs)} (RMS {_number(self.output_rms)})"
            measured += " on the calibration data"
        ode = _number(self.ode_max_abs)
        ode = "ODE simulation not run" if _not_computed(self.ode_max_abs) else f"simulated ODE max deviation {ode}"
        bound = _number(self.a_priori_bound)
        bound = "a-priori bound not computed" if _not_computed(self.a_priori_bound) else f"a-priori ‖f̃ − f‖₂ ≤ {bound}"
        return f"{measured}; {ode}; {bound}"

    def __repr__(self):
        return f"Certificate({self.describe()})"


class CompressionInfo(eqx.Module):
    """What a compressor did.

    - `method`: the compressor's name; `structured`: whether the result is physically smaller
      (dense, fewer neurons) rather than a same-shape sparse mask.
    - `knob`: the value of the method's one knob that produced this result (ε, sparsity, τ ...).
    - `partitions`: per hidden layer, for every *original* neuron the index of the compressed
      neuron that represents it (`-1`: removed). Merged neurons share an index.
    - `weight_masks`: per layer, which weights of the compressed model are kept (unstructured
      methods), or `None`.
    - `widths_before`, `widths_after`: `(n_0, ..., n_L)`; `widths_after` counts live neurons.
    - `cost_before`, `cost_after`: `Cost` (dense parameters, non-zeros, FLOPs) of both models.
    - `certificate`: a `Certificate` (lumping computes one; other methods may leave `None`).
    - `result`: `RESULTS.successful` or the first numerical failure met; besides the method's own stages, every
      info checks that the given model's forward pass, the result and the certificate are finite (`checked_result`).
    """

    method: str = eqx.field(static=True)
    structured: bool = eqx.field(static=True)
    knob: Float[Array, "*batch"]
    partitions: Partitions
    weight_masks: WeightMasks | None
    widths_before: tuple[int, ...] = eqx.field(static=True)
    widths_after: Int[Array, "*batch layers"]
    cost_before: Cost
    cost_after: Cost
    certificate: Certificate | None
    result: RESULTS

    @property
    def params_after(self) -> jax.Array:
        """`cost_after.dense_params` (named as `SitesInfo`'s, so that code reading either info reads it alike)."""
        return self.cost_after.dense_params

    @property
    def flops_after(self) -> jax.Array:
        """`cost_after.flops` (named as `SitesInfo`'s)."""
        return self.cost_after.flops

    @property
    def percent_of_original(self) -> jax.Array:
        """Dense parameters after, in % of before (non-zeros for unstructured results); an original with no
        non-zeros (all-zero weights) counts as 100 % when the result has none either, else as `inf`."""
        after = self.cost_after.dense_params if self.structured else self.cost_after.nonzeros
        before = self.cost_before.dense_params if self.structured else self.cost_before.nonzeros
        dtype = jnp.result_type(float)
        after, before = jnp.asarray(after).astype(dtype), jnp.asarray(before).astype(dtype)
        empty = jnp.where(after > 0, jnp.inf, 100.0).astype(dtype)
        return jnp.where(before > 0, 100 * after / jnp.where(before > 0, before, 1), empty)

    @property
    def parameter_reduction(self) -> jax.Array:
        """`100 (1 − params_after / params_before)` (the paper's GRP %)."""
        return 100.0 - self.percent_of_original

    def summary(self) -> str:
        """A readable account: method, knob, widths, parameters, non-zeros, FLOPs, certificate, result.

        Concrete infos show numbers; stacked ones (from a vmapped sweep) show each figure's range; infos
        inside `jax.jit` show what is static and say that the values are traced.
        """
        kind = "structured" if self.structured else "unstructured (same shape, masked)"
        head = f"{self.method} — {kind}"
        if _traced(self):
            return f"{head}\n  widths before {_widths(self.widths_before)}; values are traced (inside jax.jit)"
        before, after = self.cost_before, self.cost_after
        percent = _number(self.percent_of_original, "{:.1f}")
        size_name = "dense parameters" if self.structured else "non-zeros"
        lines = [
            f"{head}, knob = {'not set' if _not_computed(self.knob) else _number(self.knob)}",
            f"  result:       {_result_message(self.result)}",
            f"  widths:       {_widths(self.widths_before)} → {_widths(self.widths_after)}",
            f"  dense params: {_number(before.dense_params)} → {_number(after.dense_params)}",
            f"  non-zeros:    {_number(before.nonzeros)} → {_number(after.nonzeros)}",
            f"  FLOPs:        {_number(before.flops)} → {_number(after.flops)} per example",
            f"  size:         {percent} % of the original ({size_name})",
        ]
        if self.certificate is not None:
            lines.append(f"  certificate:  {self.certificate.describe()}")
        return "\n".join(lines)

    def __repr__(self):
        if _traced(self):
            return f"CompressionInfo(method={self.method!r}, widths_before={self.widths_before}, traced)"
        return (
            f"CompressionInfo(method={self.method!r}, knob={_number(self.knob)}, "
            f"widths {_widths(self.widths_before)} → {_widths(self.widths_after)}, "
            f"params {_number(self.cost_before.dense_params)} → {_number(self.cost_after.dense_params)}, "
            f"nonzeros {_number(self.cost_before.nonzeros)} → {_number(self.cost_after.nonzeros)}, "
            f"flops {_number(self.cost_before.flops)} → {_number(self.cost_after.flops)}, "
            f"result={_result_message(self.result)!r})"
        )


def compression_info(
    method: str,
    knob,
    before,
    after,
    partitions,
    *,
    structured: bool,
    result: RESULTS,
    x,
    weight_masks: WeightMasks | None = None,
    certificate: Certificate | None = None,
    widths_before: tuple[int, ...] | None = None,
    widths_after=None,
) -> CompressionInfo:
    """The `CompressionInfo` of compressing `before` into `after` (each a `DenseChain` or any model `cost` takes).

    `partitions` (one label array per hidden layer) decide the live neurons: `widths_after` counts only the
    compressed neurons that some original neuron maps to, and so does `cost_after` for a chain `after` (a fixed-shape
    masked chain is described as its shrunk form; a model is costed as it is). `widths_before` defaults to
    `before.widths`. A result whose layers are not the original's (a factorised, deeper chain) passes its own
    `widths_after`; its cost then counts every neuron of `after`.

    `x` is the calibration data the compressor was given (`None` for a data-free call): `info.result` is `result`
    combined with the finiteness checks of `checked_result` (the model's own forward pass on `x`, the compressed
    model's parameters, its outputs on `x`, the certificate), so no compressor reports success on non-finite values.
    """
    widths_before = tuple(before.widths if widths_before is None else widths_before)
    partitions = tuple(partitions)
    neuron_masks = None
    if widths_after is None:
        widths_after = live_widths(widths_before, partitions)
        if isinstance(after, DenseChain):
            neuron_masks = live_masks(after.widths[1:-1], partitions)
    return CompressionInfo(
        method=method,
        structured=structured,
        knob=jnp.asarray(knob, dtype=jnp.result_type(float)),
        partitions=partitions,
        weight_masks=weight_masks,
        widths_before=widths_before,
        widths_after=widths_after,
        cost_before=_cost(before),
        cost_after=_cost(after, neuron_masks),
        certificate=certificate,
        result=checked_result(result, before, after, x, certificate),
    )


def checked_result(result: RESULTS, before, after, x, certificate: Certificate | None = None) -> RESULTS:
    """`result` (the method's own stages) combined, in pipeline order, with the checks every compressor's result
    must pass; the one place they are made (`compression_info` applies them, and so does every info built without
    it).

    1. `RESULTS.model_nonfinite` when the given model `before`'s own forward pass on the calibration data `x`
       is not finite (its weights and `x` were checked at the boundary, so its arithmetic overflowed);
    2. `result`;
    3. `RESULTS.nonfinite_result` when the compressed model `after` holds NaN or inf;
    4. `RESULTS.output_nonfinite` when `after`'s activations on `x` are not finite;
    5. `RESULTS.certificate_nonfinite` when the `certificate`'s measured errors or a-priori bound are not finite
       (or its ODE deviation is infinite; NaN there means "not simulated").

    With `x=None` (data-free) only check 3 is made. `before`, `after`: `DenseChain`s, `SkipMLP`s or models. Concrete
    forward passes run on the host in NumPy when small (eager JAX would compile every operation anew for each network
    shape), as one jitted pass when large, and the given model's is remembered for the same arrays and data; traced
    ones (inside `jax.jit`/`jax.vmap`) are part of the caller's own trace, so a jitted compressor compiles no more.
    """
    params = [a for a in jax.tree_util.tree_leaves(after) if eqx.is_inexact_array(a)]
    checks = [(_all_finite(params), RESULTS.nonfinite_result)]
    if x is None:
        return combine(result, _status(*checks[0]))
    model_check = _status(_model_finite(_network(before), x), RESULTS.model_nonfinite)
    checks.append((_forward_finite(_network(after), x), RESULTS.output_nonfinite))
    if certificate is not None:
        measured = [certificate.output_max_abs, certificate.output_rms, certificate.a_priori_bound]
        ode = certificate.ode_max_abs
        xp = jnp if _traced(ode) else np
        ok = ~xp.any(xp.isinf(ode))
        if getattr(_network(before), "is_gated", False):  # no a-priori bound for gated layers: NaN, "not computed"
            measured, ok = measured[:2], ok & ~xp.any(xp.isinf(certificate.a_priori_bound))
        checks.append((_all_finite(measured) & ok, RESULTS.certificate_nonfinite))
    return combine(model_check, result, *(_status(ok, failure) for ok, failure in checks))


def _status(ok, failure: RESULTS) -> RESULTS:
    if _traced(ok):
        return RESULTS.where(ok, RESULTS.successful, failure)
    return RESULTS.successful if bool(ok) else failure


def _all_finite(arrays):
    """Whether every array is finite: a NumPy bool for concrete arrays, a traced one otherwise."""
    if _traced(arrays):
        return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in arrays])) if arrays else jnp.asarray(True)
    return np.bool_(all(np.all(np.isfinite(np.asarray(a))) for a in arrays))


def _network(model):
    """`model` as layers with `weights`, `biases`, `activations` (and a `SkipMLP`'s skips), without re-checking."""
    if isinstance(model, DenseChain) or hasattr(model, "skip_sources"):
        return model
    return to_chain(model, require_finite=False)


# Below this many multiply-adds per pass (a few ms), a concrete forward pass runs in NumPy on the host: compiling
# it would cost more. Above, one jitted pass (XLA's threaded GEMM, ~5x NumPy's on 2 cores), compiled once per shape.
_HOST_MAX_MACS = 2**24


def _forward_finite(network, x):
    """Whether every activation of `network` (a `DenseChain` or `SkipMLP`) on the batch `x` is finite."""
    if _traced((network, x)):
        return _activations_finite(network, x)
    skips = [s for s in getattr(network, "skips", ()) if s is not None]
    if np.shape(x)[0] * sum(np.size(a) for a in (*network.weights, *skips)) > _HOST_MAX_MACS or spans_processes(x):
        return np.bool_(_jitted_activations_finite(network, x))
    skips = getattr(network, "skips", (None,) * len(network.weights))
    sources = getattr(network, "skip_sources", ((),) * len(network.weights))
    gates = getattr(network, "gate_weights", ()) or (None,) * len(network.weights)
    gate_biases = getattr(network, "gate_biases", ()) or (None,) * len(network.weights)
    acts = [np.asarray(x)]
    with np.errstate(all="ignore"):  # overflow is what is being checked
        layers = zip(network.weights, network.biases, network.activations, skips, sources, gates, gate_biases)
        for w, b, act, s, source, g, gb in layers:
            z = acts[-1] @ np.asarray(w).T + np.asarray(b)
            if s is not None:
                z = z + np.concatenate([acts[k] for k in source], axis=-1) @ np.asarray(s).T
            if g is None:
                acts.append(numpy_activation(act, z))
            else:  # gated: σ(z_g) ⊙ z
                acts.append(numpy_activation(act, acts[-1] @ np.asarray(g).T + np.asarray(gb)) * z)
    return _all_finite(acts[1:])


# `_forward_finite` of a given model on a calibration set, by the identity of their (immutable) JAX arrays:
# `compress_to`'s search and a sweep over a knob call a compressor many times on one model and one data set.
_MODEL_FINITE: dict[tuple, tuple[tuple[weakref.ref, ...], bool]] = {}


def _model_finite(network, x):
    arrays = (*network.weights, *network.biases, *jax.tree_util.tree_leaves(getattr(network, "gate_weights", ())), x)
    arrays += tuple(jax.tree_util.tree_leaves(getattr(network, "gate_biases", ())))
    if not isinstance(network, DenseChain) or not all(isinstance(a, jax.Array) for a in arrays) or _traced(arrays):
        return _forward_finite(network, x)
    key = (network.activations, *map(id, arrays))
    known = _MODEL_FINITE.get(key)
    if known is not None and all(ref() is a for ref, a in zip(known[0], arrays)):
        return known[1]
    finite = bool(_forward_finite(network, x))
    if len(_MODEL_FINITE) >= 64:  # forget the entries whose arrays are gone
        for stale in [k for k, (refs, _) in _MODEL_FINITE.items() if any(ref() is None for ref in refs)]:
            del _MODEL_FINITE[stale]
        while len(_MODEL_FINITE) >= 64:  # and the oldest of the live ones
            del _MODEL_FINITE[next(iter(_MODEL_FINITE))]
    _MODEL_FINITE[key] = (tuple(weakref.ref(a) for a in arrays), finite)
    return finite


def _activations_finite(network, x):
    """Whether every activation of `network` on `x` is finite, checked a batch of rows at a time."""
    batches, valid = row_batches(x, batch_rows_for(x.shape[0], max(network.widths)))

    def add(finite, batch, ok):
        return finite & _all_finite([jnp.where(ok[:, None], a, 0) for a in network.forward(batch)[1][1:]])

    return fold_batches(add, jnp.asarray(True), batches, valid)


_jitted_activations_finite = eqx.filter_jit(_activations_finite)


def _cost(model, neuron_masks=None) -> Cost:
    # A chain is costed directly (`cost` would first re-validate it as a model), a model without refusing its
    # NaN/inf: a result that overflowed is reported in `info.result`, not refused as if it were the input.
    if isinstance(model, DenseChain):
        return chain_cost(model, neuron_masks)
    if callable(getattr(model, "cost", None)):  # a SkipMLP costs itself
        return cost(model, neuron_masks)
    return chain_cost(to_chain(model, require_finite=False), neuron_masks)


def _traced(tree) -> bool:
    return any(is_traced(leaf) for leaf in jax.tree_util.tree_leaves(tree))


def _not_computed(value) -> bool:
    """Whether a concrete figure is NaN throughout: jaxlump's mark for "not computed"."""
    return not is_traced(value) and bool(np.all(np.isnan(np.asarray(value, dtype=float))))


def _number(value, fmt: str = "{:.3g}") -> str:
    """A scalar as text; a stacked array as its range; a traced one as "traced"."""
    if is_traced(value):
        return "traced"
    values = np.asarray(value)
    if values.ndim == 0:
        number = values.item()
        return str(number) if isinstance(number, (int, np.integer)) else fmt.format(number)
    low, high = values.min(), values.max()
    return f"{fmt.format(low)}…{fmt.format(high)} over {values.size}"


def _widths(widths) -> str:
    values = np.asarray(widths)
    if values.ndim == 1:
        return "-".join(str(int(w)) for w in values)
    low, high = values.min(axis=tuple(range(values.ndim - 1))), values.max(axis=tuple(range(values.ndim - 1)))
    return "-".join(str(int(lo)) if lo == hi else f"[{int(lo)}…{int(hi)}]" for lo, hi in zip(low, high))


def _result_message(result: RESULTS) -> str:
    all_messages = messages(result)
    failed = list(dict.fromkeys(m for m in all_messages if m))
    if not failed:
        return "successful"
    counted = f"{sum(1 for m in all_messages if m)} of {len(all_messages)} failed: " if len(all_messages) > 1 else ""
    return counted + " | ".join(failed)


def check_partitions(partitions, widths_before, widths_after, name: str = "info.partitions") -> None:
    """Refuse partitions that cannot map a model of `widths_before` onto one of `widths_after`.

    One integer array per hidden layer, of shape `(widths_before[l],)`, with labels in `[-1, widths_after[l])`
    (the range is checked only for concrete labels; traced ones are checked for shape and dtype).
    """
    if not isinstance(partitions, (tuple, list)):
        raise TypeError(f"`{name}` must be a tuple of integer arrays (one per hidden layer); received {partitions!r}.")
    hidden = len(widths_before) - 2
    if len(partitions) != hidden:
        raise ValueError(f"`{name}` has {len(partitions)} entries; the network has {hidden} hidden layers.")
    for l, p in enumerate(partitions, start=1):
        where = f"`{name}[{l - 1}]`"
        dtype = getattr(p, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.integer):
            raise TypeError(f"{where} must be an integer array of neuron labels; received dtype {dtype}.")
        if jnp.shape(p) != (widths_before[l],):
            raise ValueError(
                f"{where} has shape {jnp.shape(p)}; hidden layer {l} of the original has {widths_before[l]} neurons."
            )
        if is_traced(p) or widths_before[l] == 0:
            continue
        labels = np.asarray(p)
        low, high = int(labels.min()), int(labels.max())
        if low < -1 or high >= widths_after[l]:
            raise ValueError(
                f"{where} holds labels in [{low}, {high}]; hidden layer {l} of the compressed model has "
                f"{widths_after[l]} neurons, so labels must lie in [-1, {widths_after[l] - 1}] (-1: removed)."
            )


def live_masks(hidden_widths, partitions) -> list[jax.Array]:
    """Per hidden layer, which compressed neurons are live (something maps to them)."""
    if not any(is_traced(p) for p in partitions):
        # NumPy for concrete labels: eager JAX scatters would compile anew for every result shape.
        masks = []
        for n, p in zip(hidden_widths, partitions):
            labels, mask = np.asarray(p), np.zeros(n, bool)
            mask[labels[labels >= 0]] = True
            masks.append(jnp.asarray(mask))
        return masks
    # -1 (removed) must be sent out of range explicitly: JAX would wrap it to the last neuron.
    return [
        jnp.zeros(n, bool).at[jnp.where(p >= 0, p, n)].set(True, mode="drop") for n, p in zip(hidden_widths, partitions)
    ]


def live_widths(widths: tuple[int, ...], partitions) -> jax.Array:
    """`(n_0, live hidden widths..., n_L)` of a compressed model with hidden widths `widths[1:-1]`."""
    hidden = [jnp.sum(mask) for mask in live_masks(widths[1:-1], partitions)]
    return jnp.asarray([widths[0], *hidden, widths[-1]])
