"""`compress_to`: reach a requested size (a count, a fraction or per-layer widths) with any compressor, by name."""

import numbers

import equinox as eqx
import numpy as np

from .._errors import UnreachableTargetError, check_bool
from .._model import is_chain_kind, to_chain
from .._results.accounting import cost, widths_dense_params
from .._results.info import CompressionInfo
from .._sites.compress import SitesInfo, compress_to_sites
from .base import Global, fraction_for
from .registry import compressors, get_compressor


def realised_size(info: CompressionInfo) -> int:
    """The size a result is compared at: dense parameters if structured, non-zeros otherwise."""
    cost_after = info.cost_after
    return int(cost_after.dense_params if info.structured else cost_after.nonzeros)


def _unit(structured: bool) -> str:
    return "dense parameters" if structured else "non-zeros"


class Target(eqx.Module):
    """What `compress_to` was asked for and what it reached (host values, recorded once the search is over).

    - `kind`: `"count"` (a number of parameters), `"fraction"` (of the original) or `"widths"` (per hidden layer).
    - `requested`: the target as given.
    - `unit`: `"dense parameters"` (structured results) or `"non-zeros"` (same-shape masked results).
    - `requested_size`: the largest allowed size in `unit` (`None` for a widths target).
    - `original_size`, `realised_size`: the original's and the result's size in `unit`.
    - `realised_widths`: the result's widths `(n_0, ..., n_L)` (live neurons).
    - `knob`: the knob value chosen (`None` for methods without a searched knob); for a widths target, one value
      per hidden layer (a tuple: the per-layer sparsities, tolerances or ε that set each layer's width).
    - `options`: options `compress_to` chose besides the knob, as `(name, value)` pairs (`lump_then_select`'s
      lumping ε for a widths target); pass them with the knob to reproduce the result.
    """

    kind: str = eqx.field(static=True)
    requested: int | float | tuple[int, ...] = eqx.field(static=True)
    unit: str = eqx.field(static=True)
    requested_size: int | None = eqx.field(static=True)
    original_size: int = eqx.field(static=True)
    realised_size: int = eqx.field(static=True)
    realised_widths: tuple[int, ...] = eqx.field(static=True)
    knob: float | tuple[float, ...] | None = eqx.field(static=True)
    options: tuple[tuple[str, float], ...] = eqx.field(static=True, default=())

    def describe(self) -> str:
        """The request and the result in words."""
        if self.kind == "widths":
            asked = f"hidden widths at most {self.requested}"
        elif self.kind == "fraction":
            asked = f"{self.requested:.1%} of {self.original_size} {self.unit} (≤ {self.requested_size})"
        else:
            asked = f"≤ {self.requested} {self.unit}"
        if isinstance(self.knob, tuple):
            knob = f", knob per layer ({', '.join(f'{k:.4g}' for k in self.knob)})"
        else:
            knob = "" if self.knob is None else f", knob {self.knob:.4g}"
        knob += "".join(f", {k} {v:.4g}" for k, v in self.options)
        if self.original_size:
            share = f"{self.realised_size / self.original_size:.1%}"
        else:  # an all-zero original has no non-zeros: nothing of nothing is all of it
            share = "100.0%" if self.realised_size == 0 else "inf %"
        return (
            f"requested {asked}; realised {self.realised_size} {self.unit} ({share}), "
            f"widths {'-'.join(map(str, self.realised_widths))}{knob}"
        )


class TargetInfo(CompressionInfo):
    """The `CompressionInfo` of a result of `compress_to`, with the `Target` it was asked to reach: `info.target`."""

    target: Target

    def summary(self) -> str:
        """`CompressionInfo.summary()` plus the requested and the realised size."""
        return f"{super().summary()}\n  target:       {self.target.describe()}"


def with_target(info: CompressionInfo, record: Target) -> TargetInfo:
    """`info` as a `TargetInfo` that records how the target was reached."""
    fields = {f: getattr(info, f) for f in info.__dataclass_fields__ if f != "target"}
    return TargetInfo(**fields, target=record)


def _parse_target(target, widths: tuple[int, ...]):
    """`(kind, value)` with value an int count, a float fraction or a tuple of hidden widths."""
    if isinstance(target, (bool, np.bool_)):
        raise TypeError(f"`target` must be an int, a float or a tuple of widths; received {target!r}.")
    if isinstance(target, numbers.Integral):
        if target <= 0:
            raise ValueError(f"`target` as a parameter count must be a positive integer; received {target!r}.")
        return "count", int(target)
    if isinstance(target, numbers.Real):
        if not 0 < float(target) <= 1:
            raise ValueError(
                f"`target` as a float is a fraction of the original size and must be in (0, 1]; received {target!r}. "
                "For a parameter count pass an int."
            )
        return "fraction", float(target)
    if isinstance(target, (tuple, list)):
        hidden = widths[1:-1]
        values = tuple(target)
        if len(values) == len(widths) and (values[0], values[-1]) == (widths[0], widths[-1]):
            values = values[1:-1]
        ok = all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values)
        if not ok or len(values) != len(hidden) or any(not 1 <= v <= n for v, n in zip(values, hidden)):
            raise ValueError(
                f"`target` as widths must give {len(hidden)} hidden widths, each an int from 1 to the original "
                f"width {hidden} (or the full widths {widths}); received {target!r}."
            )
        return "widths", tuple(int(v) for v in values)
    raise TypeError(
        "`target` must be a parameter count (int), a fraction of the original size (float in (0, 1]) or per-layer "
        f"hidden widths (tuple of ints); received {target!r}."
    )


def _name(method) -> str:
    return getattr(method, "name", None) or getattr(method, "__name__", repr(method))


def compress_to(
    model,
    method,
    target,
    x_calib=None,
    *,
    knob_range: tuple[float, float] | None = None,
    grow_upper: bool | None = None,
    max_iter: int = 30,
    **options,
) -> tuple[object, TargetInfo | SitesInfo]:
    """Compress `model` with a method given by name or function to a size target, as close to it as the knob allows.

    Targets (never exceeded):

    - an `int`: a number of parameters — dense parameters for structured methods, non-zeros for unstructured ones;
    - a `float` in `(0, 1]`: a fraction of the original size in the same unit, so `0.35` means 35 % of the
      dense parameters for `lump` or `structured_prune` and 35 % of the non-zeros for `magnitude` or `wanda`;
    - a `tuple` of hidden widths (or full widths `(n_0, ..., n_L)`), structured methods only: every hidden layer
      gets at most its requested width and as close to it as the method allows, by one knob value per layer
      (`info.target.knob` holds them; `info.knob` is NaN). Methods with a per-layer knob (`Compressor.per_layer`:
      the neuron sparsity of the pruning, merging and selection baselines, `proportional_lump`'s tolerance) set
      each layer's value in turn, input side first — a sparsity exactly (`n − int(n·s)` neurons stay), a tolerance
      by bisection; `lump` bisects one ε per layer on the partitions alone (`info.target.knob[0]` is the ε plain
      `lump` would need for the first layer), then lumps and refits once; `merge_or_remove` and
      `lump_then_select` cut each layer's greedy path at its width (exact; without an `eps` option,
      `lump_then_select`'s lumping ε is lowered from 0.5 until no lumped layer is narrower than its target, and
      recorded in `info.target.options`). Methods that cannot set per-layer widths (`Compressor.no_widths`:
      `exact_lump`, `lowrank`, `linearity_merge`, `linearity_to_size`) and unstructured ones are refused with
      the reason before any computation; an unregistered function, or `scope=Global()`, is searched with its one
      knob and refused when a layer ends more than one neuron below its target.

    For any other Equinox or NNX module (compressed site by site, see `jaxlump.sites`), the target is an `int` or a
    `float` of the *whole model's* parameters — every site's parameters are cut by the one fraction that makes the
    whole model meet it (the parts outside the sites, attention and embeddings, are kept) — or a `dict` of widths
    by site path (`{"blocks[0].ffn": 256}`; sites not named keep their width). Each segment of sites is then
    compressed to its share as above, and `info` is a `jaxlump.SitesInfo` (whole-model and per-site sizes).

    The method's knob (ε, sparsity, τ ...; see `jaxlump.compressors()`) is bisected in its range, assuming the
    size decreases as the knob moves (ε's range grows by doubling until the target is met); the result kept is the
    largest size within the target among those evaluated. For `lump` with a count or a fraction, a coarse ε grid
    and two refinements run as `jaxlump.sweep` calls (one compiled program, `sweep_to_size`) instead; for
    `merge_or_remove` the greedy paths are computed once and cut at the target (`merge_or_remove_to_size`); pass
    `knob_range` or `grow_upper` to bisect instead. (Its certificate then has no ODE figure unless
    `certify_ode=True` is passed.) Methods whose knob is the size itself
    (`lump_then_prune`, `linearity_to_size`) are called with the target directly and their result is checked.

    **Arguments:**

    - `model`: the model to compress; not modified.
    - `method`: a name from `jaxlump.compressors()` (`"lump"`, `"magnitude"` ...), a registered function, a
      `jaxlump.Compressor`, or any function with the call shape `method(model, x_calib, knob, **options)` whose
      knob lies in `knob_range` (then searched in `[0, 1)` by default).
    - `target`: the size target, as above.
    - `x_calib`: calibration data passed to the method (required by methods that need data).
    - `knob_range`, `grow_upper`: override the registered search interval and whether its upper end may grow
      (for a widths target, each layer's; `merge_or_remove` cuts its paths without a knob).
    - `max_iter`: the bisection's budget.
    - `**options`: passed to the method (e.g. `reconstruct=False` for `lump`, `key=` for `random`).

    **Returns:** `(new_model, info)`: `info` is a `TargetInfo`, a `CompressionInfo` whose extra field `target`
    (a `Target`) holds the requested and the realised size and widths and the knob chosen.

    **Raises:** `jaxlump.UnreachableTargetError` (a `ValueError`) for a target no knob value in range reaches, or
    widths one knob for every layer cannot reach within one neuron; `ValueError` for an unknown name, a malformed
    target or a widths target for a method that cannot set per-layer widths (the message says why);
    `TypeError` for a `method` or `target` of the wrong type.

    ```python
    import equinox as eqx, jax.random as jr, jaxlump
    from jaxlump.baselines import compress_to
    mlp = eqx.nn.MLP(3, 2, 16, 2, key=jr.key(0))
    x = jr.normal(jr.key(1), (64, 3))
    pruned, info = compress_to(mlp, "magnitude", 200)
    assert int(info.cost_after.nonzeros) <= 200 and info.target.unit == "non-zeros"
    small, info = compress_to(mlp, "structured_prune", (8, 8), x)
    assert info.target.realised_widths == (3, 8, 8, 2)
    small, info = compress_to(mlp, "obs_prune", (12, 6), x)  # one sparsity per layer
    assert info.target.realised_widths == (3, 12, 6, 2) and len(info.target.knob) == 2
    ```
    """
    compressor = get_compressor(method)
    function = method if compressor is None else compressor.function
    name = _name(method if compressor is None else compressor)
    if not is_chain_kind(model):
        return compress_to_sites(model, method, compress_to, target, x_calib, **options)
    chain = to_chain(model)
    widths = tuple(int(w) for w in chain.widths)
    kind, value = _parse_target(target, widths)
    reason = widths_refusal(compressor) if kind == "widths" else None
    if reason is not None:
        raise ValueError(
            f"`target`: received the widths {target!r}, but `{name}` cannot reach per-layer widths: {reason}. Use a "
            f"parameter count or a fraction instead, or a method that sets each layer's width "
            f"({', '.join(widths_methods())})."
        )
    if max_iter < 1:
        raise ValueError(f"`max_iter` must be a positive integer; received {max_iter!r}.")
    if grow_upper is not None:
        check_bool(grow_upper, "grow_upper")

    before = cost(model)
    originals = {True: int(before.dense_params), False: int(before.nonzeros)}

    def limit(structured: bool):
        """The largest allowed size in the result's unit, and the original's size in that unit."""
        original = originals[bool(structured)]
        if kind == "widths":
            return None, original
        return (value if kind == "count" else int(np.floor(value * original + 1e-9))), original

    def feasible(info) -> bool:
        if kind == "widths":
            return all(int(w) <= v for w, v in zip(np.asarray(info.widths_after)[1:-1], value))
        return realised_size(info) <= limit(info.structured)[0]

    def finish(result, knob, chosen: tuple = ()):
        new_model, info = result
        realised = tuple(int(w) for w in info.widths_after)
        if not feasible(info):
            raise UnreachableTargetError(
                f"`{name}` cannot reach the target {target!r}: it reached {realised_size(info)} "
                f"{_unit(info.structured)}, widths {realised}.",
                realised_size(info),
            )
        if kind == "widths" and not isinstance(knob, tuple) and any(w < v - 1 for w, v in zip(realised[1:-1], value)):
            raise UnreachableTargetError(
                f"`target`: `{name}` cannot reach the widths {target!r} within one neuron per layer with one knob "
                f"for every layer: the closest result within them has widths {realised}. One knob sets every "
                f"layer's width together; use a method with per-layer knobs ({', '.join(widths_methods())}), or a "
                "parameter count or a fraction instead.",
                realised_size(info),
            )
        requested_size, original = limit(info.structured)
        record = Target(
            kind=kind,
            requested=target if kind != "widths" else value,
            unit=_unit(info.structured),
            requested_size=requested_size,
            original_size=original,
            realised_size=realised_size(info),
            realised_widths=tuple(int(w) for w in info.widths_after),
            knob=None if knob is None else tuple(map(float, knob)) if isinstance(knob, tuple) else float(knob),
            options=chosen,
        )
        return new_model, with_target(info, record)

    per_layer_options = not isinstance(
        options.get("scope"), Global
    )  # one global ranking sets every layer's width together
    if kind == "widths" and compressor is not None and per_layer_options:
        if _sets_widths(compressor):
            search = dict(knob_range=knob_range, grow_upper=grow_upper, max_iter=max_iter)
            return finish(*_reach_widths(model, x_calib, compressor, name, target, value, chain, search, options))
    if compressor is not None and compressor.size_knob is not None:
        structured = compressor.structured
        budget = limit(structured)[0]
        knob = budget if compressor.size_knob == "nonzeros" else budget / limit(structured)[1]
        return finish(function(model, x_calib, knob, **options), knob)
    fast = compressor is not None and compressor.to_size is not None
    if fast and kind != "widths" and knob_range is None and grow_upper is None:
        result = compressor.to_size(model, x_calib, limit(True)[0], **options)
        return finish(result, result[1].knob)
    if compressor is not None and compressor.knob_range is None and knob_range is None:
        return finish(function(model, x_calib, None, **options), None)

    low, high = knob_range if knob_range is not None else (compressor.knob_range if compressor else (0.0, 1 - 1e-9))
    low, high = float(low), float(high)
    if not low < high:
        raise ValueError(f"`knob_range` must be (low, high) with low < high; received {knob_range!r}.")
    grow = bool(grow_upper) if grow_upper is not None else bool(compressor and compressor.unbounded)
    forward = compressor is None or compressor.larger_knob_smaller_model
    mirror = low + high  # a knob for which larger means a larger model is searched as `mirror - t`
    best, last = None, None  # best: (size, knob, result) of the largest feasible result; last: the latest info

    def evaluate(t: float) -> bool:
        """Run the method at search position t (larger t: smaller model); keep the best feasible result."""
        nonlocal best, last
        knob = t if forward else mirror - t
        result = function(model, x_calib, knob, **options)
        last = result[1]
        ok = feasible(last)
        if ok and (best is None or realised_size(result[1]) > best[0]):
            best = (realised_size(result[1]), knob, result)
        return ok

    def exact(best) -> bool:
        if kind == "widths":
            return tuple(int(w) for w in np.asarray(best[2][1].widths_after)[1:-1]) == value
        return kind == "count" and best[0] == value

    if not evaluate(low):
        while not evaluate(high):
            if not grow or high > 1e6:
                raise UnreachableTargetError(
                    f"`{name}` cannot reach the target {target!r} with its knob in "
                    f"{(low, high) if not grow else (low, 'unbounded')}: the smallest result has "
                    f"{realised_size(last)} {_unit(last.structured)}, widths "
                    f"{tuple(int(w) for w in last.widths_after)}.",
                    realised_size(last),
                )
            low, high = high, 2 * high
        for _ in range(max_iter):
            middle = (low + high) / 2
            if evaluate(middle):
                high = middle
            else:
                low = middle
            if exact(best) or np.isclose(low, high, rtol=1e-6, atol=1e-12):
                break
    return finish(best[2], best[1])


def _sets_widths(compressor) -> bool:
    """Whether `compressor` reaches per-layer widths: per-layer knobs, or a direct way (`Compressor.to_widths`)."""
    return compressor.per_layer or compressor.to_widths is not None or compressor.layer_search is not None


def widths_refusal(compressor) -> str | None:
    """Why a registered `compressor` cannot reach per-layer widths (`None`: it can, or it is not registered); the
    `jaxlump compress --target` command refuses with the same reason before training."""
    if compressor is None:
        return None
    if not compressor.structured:
        return f"{compressor.name} is unstructured: it keeps every width and zeroes weights"
    return compressor.no_widths


def widths_methods() -> list[str]:
    """The registered methods that set each hidden layer's width (by per-layer knobs or by cutting per layer)."""
    return [n for n, c in compressors().items() if _sets_widths(c)]


def _reach_widths(model, x_calib, compressor, name: str, target, hidden, chain, search: dict, options: dict):
    """`(result, knobs, options)`: `compressor` at one knob value per hidden layer, chosen so that each layer's width
    is the largest reachable one within `hidden` (lump: ε per layer searched on the partitions alone;
    merge_or_remove, lump_then_select: each greedy path cut at its width; the others: their per-layer knob searched
    layer by layer), and the options chosen besides (`Target.options`)."""
    direct = None if compressor.to_widths is None else compressor.to_widths(model, x_calib, hidden, search, **options)
    if direct is not None:
        return direct
    low, high = search["knob_range"] if search["knob_range"] is not None else compressor.knob_range
    low, high = float(low), float(high)
    if not low < high:
        raise ValueError(f"`knob_range` must be (low, high) with low < high; received {search['knob_range']!r}.")
    grow = bool(search["grow_upper"]) if search["grow_upper"] is not None else compressor.unbounded
    guess = None
    if compressor.layer_search is not None:
        widths_at, run = compressor.layer_search(model, x_calib, **options)
    else:
        latest = {}  # the latest result only: the search usually ends on the one it keeps

        def run(knobs):
            if knobs not in latest:
                latest.clear()
                latest[knobs] = compressor.function(model, x_calib, knobs, **options)
            return latest[knobs]

        def widths_at(knobs):
            return tuple(int(w) for w in np.asarray(run(knobs)[1].widths_after)[1:-1])

        if compressor.knob == "sparsity":  # n − int(n·s) neurons stay: exact for every layer the method counts so
            guess = tuple(fraction_for(n, w) for n, w in zip(chain.widths[1:-1], hidden))

    def unreachable(layer: int, widths_there: tuple[int, ...]):
        size = widths_dense_params((chain.widths[0], *widths_there, chain.widths[-1]), chain.use_bias)
        raise UnreachableTargetError(
            f"`target`: `{name}` cannot reach the widths {target!r}: hidden layer {layer + 1} keeps "
            f"{widths_there[layer]} neurons at every {compressor.knob or 'knob'} in "
            f"{(low, high) if not grow else (low, 'unbounded')} (widths {widths_there} at the end of the range). Give "
            f"that layer a width of at least {widths_there[layer]}, or use a method that can remove any neuron.",
            size,
        )

    knobs = _search_layers(
        widths_at, hidden, low, high, grow=grow, forward=compressor.larger_knob_smaller_model,
        max_iter=search["max_iter"], guess=guess, unreachable=unreachable,
    )  # fmt: skip
    return run(knobs), knobs, ()


def _search_layers(widths_at, hidden, low, high, *, grow, forward, max_iter, guess, unreachable) -> tuple[float, ...]:
    """One knob value per hidden layer, input side first: layer l's is the one in `[low, high]` whose width
    `widths_at(knobs)[l]` is the largest within `hidden[l]` (bisection, stopping early at the width itself), with
    the earlier layers' values fixed (layer l's width depends on the values of layers ≤ l only). `guess`: values to
    try first (kept for each layer where they give the target width exactly)."""
    mirror = low + high  # a knob for which larger means a larger model is searched as `mirror - t`

    def knobs(positions) -> tuple[float, ...]:
        return tuple(p if forward else mirror - p for p in positions)

    def layer(positions: list[float], l: int) -> float:
        """The position of layer l's knob (larger: smaller layer), the others fixed at `positions`."""
        best = None  # (width, position) of the widest layer l within its target so far

        def fits(t: float) -> bool:
            nonlocal best
            width = widths_at(knobs([*positions[:l], t, *positions[l + 1 :]]))[l]
            if width <= hidden[l] and (best is None or width > best[0]):
                best = (width, t)
            return width <= hidden[l]

        if guess is not None and fits(positions[l]) and best[0] == hidden[l]:
            return positions[l]
        lower, upper = low, high
        if fits(lower):
            return best[1]
        while not fits(upper):
            if not grow or upper > 1e6:
                unreachable(l, widths_at(knobs([*positions[:l], upper, *positions[l + 1 :]])))
            lower, upper = upper, 2 * upper
        for _ in range(max_iter):
            if best[0] == hidden[l] or np.isclose(lower, upper, rtol=1e-6, atol=1e-12):
                break
            middle = (lower + upper) / 2
            if fits(middle):
                upper = middle
            else:
                lower = middle
        return best[1]

    positions = [low] * len(hidden) if guess is None else list(knobs(guess))  # knobs() is its own inverse
    for l in range(len(hidden)):
        positions[l] = layer(positions, l)
    return knobs(positions)
