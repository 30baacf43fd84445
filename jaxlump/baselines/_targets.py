"""`compress_to`: reach a requested size (a count, a fraction or per-layer widths) with any compressor, by name."""

import numbers

import equinox as eqx
import numpy as np

from .._accounting import cost
from .._adapters import to_chain
from .._errors import UnreachableTargetError, check_bool
from .._info import CompressionInfo


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
    - `knob`: the knob value chosen (`None` for methods without a searched knob).
    """

    kind: str = eqx.field(static=True)
    requested: int | float | tuple[int, ...] = eqx.field(static=True)
    unit: str = eqx.field(static=True)
    requested_size: int | None = eqx.field(static=True)
    original_size: int = eqx.field(static=True)
    realised_size: int = eqx.field(static=True)
    realised_widths: tuple[int, ...] = eqx.field(static=True)
    knob: float | None = eqx.field(static=True)

    def describe(self) -> str:
        """The request and the result in words."""
        if self.kind == "widths":
            asked = f"hidden widths at most {self.requested}"
        elif self.kind == "fraction":
            asked = f"{self.requested:.1%} of {self.original_size} {self.unit} (≤ {self.requested_size})"
        else:
            asked = f"≤ {self.requested} {self.unit}"
        knob = "" if self.knob is None else f", knob {self.knob:.4g}"
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
) -> tuple[object, TargetInfo]:
    """Compress `model` with a method given by name or function to a size target, as close to it as the knob allows.

    Targets (never exceeded):

    - an `int`: a number of parameters — dense parameters for structured methods, non-zeros for unstructured ones;
    - a `float` in `(0, 1]`: a fraction of the original size in the same unit, so `0.35` means 35 % of the
      dense parameters for `lump` or `structured_prune` and 35 % of the non-zeros for `magnitude` or `wanda`;
    - a `tuple` of hidden widths (or full widths `(n_0, ..., n_L)`), structured methods only: the knob is chosen
      so that every hidden layer has at most the requested width, as large as possible; `info.target`
      records the widths realised (one knob cannot always set each layer's width independently).

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
    - `knob_range`, `grow_upper`: override the registered search interval and whether its upper end may grow.
    - `max_iter`: the bisection's budget.
    - `**options`: passed to the method (e.g. `refit=False` for `lump`, `key=` for `random`).

    **Returns:** `(new_model, info)`: `info` is a `TargetInfo`, a `CompressionInfo` whose extra field `target`
    (a `Target`) holds the requested and the realised size and widths and the knob chosen.

    **Raises:** `jaxlump.UnreachableTargetError` (a `ValueError`) for a target no knob value in range reaches;
    `ValueError` for an unknown name, a malformed target or a widths target for an unstructured method;
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
    ```
    """
    from .._registry import get_compressor  # the registry imports every compressor, this module included

    compressor = get_compressor(method)
    function = method if compressor is None else compressor.function
    name = _name(method if compressor is None else compressor)
    widths = tuple(int(w) for w in to_chain(model).widths)
    kind, value = _parse_target(target, widths)
    if compressor is not None and kind == "widths" and not compressor.structured:
        raise ValueError(
            f"`{name}` is unstructured (it keeps every width and zeroes weights), so it cannot reach the widths "
            f"target {target!r}; use a parameter count or a fraction, or a structured method "
            f"({', '.join(n for n, c in _structured_names().items() if c)})."
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

    def finish(result, knob):
        new_model, info = result
        if not feasible(info):
            raise UnreachableTargetError(
                f"`{name}` cannot reach the target {target!r}: it reached {realised_size(info)} "
                f"{_unit(info.structured)}, widths {tuple(int(w) for w in info.widths_after)}.",
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
            knob=None if knob is None else float(knob),
        )
        fields = {f: getattr(info, f) for f in info.__dataclass_fields__ if f != "target"}
        return new_model, TargetInfo(**fields, target=record)

    if compressor is not None and compressor.size_knob is not None:
        if kind == "widths":
            raise ValueError(f"`{name}` takes a size budget, not widths; received the widths target {target!r}.")
        structured = compressor.structured
        budget = limit(structured)[0]
        knob = budget if compressor.size_knob == "nonzeros" else budget / limit(structured)[1]
        return finish(function(model, x_calib, knob, **options), knob)
    if _is(compressor, "lump") and kind != "widths" and knob_range is None and grow_upper is None:
        from .._sweep import sweep_to_size  # a few compiled ε grids instead of one compilation per bisection step

        result = sweep_to_size(model, x_calib, limit(True)[0], **options)
        return finish(result, result[1].knob)
    if _is(compressor, "merge_or_remove") and kind != "widths" and knob_range is None and grow_upper is None:
        from .._select import merge_or_remove_to_size  # one greedy path per layer, cut at the target

        result = merge_or_remove_to_size(model, x_calib, limit(True)[0], **options)
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

    def exact(size) -> bool:
        return kind == "count" and size == value

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
            if exact(best[0]) or np.isclose(low, high, rtol=1e-6, atol=1e-12):
                break
    return finish(best[2], best[1])


def _is(compressor, name: str) -> bool:
    """Whether `compressor` is jaxlump's own `lump` or `merge_or_remove` (searched by their own fast paths)."""
    from .._lump import lump
    from .._select import merge_or_remove

    return compressor is not None and compressor.function is {"lump": lump, "merge_or_remove": merge_or_remove}[name]


def _structured_names() -> dict[str, bool]:
    from .._registry import compressors

    return {n: c.structured for n, c in compressors().items()}
