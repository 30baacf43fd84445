"""Every compressor by name: what its knob means, whether its result is structured, how to search the knob."""

from collections.abc import Callable

import equinox as eqx


class Compressor(eqx.Module):
    """One registered compressor: a function with the call shape `(model, x_calib, knob, **options)`.

    - `name`: the name `compress_to` and the CLI accept.
    - `function`: the compressor itself.
    - `knob`: the name of its one knob (`"eps"`, `"sparsity"`, `"tau"` ...), `None` when it has none.
    - `meaning`: what the knob means and what a value does to the size, in one sentence.
    - `structured`: `True` if the result is a physically smaller dense network (sizes are counted in dense
      parameters), `False` for a same-shape model with zeros (sizes are counted in non-zeros).
    - `needs_data`: whether `x_calib` is required.
    - `knob_range`: the interval `compress_to` searches, `None` when it does not search (no knob, or a knob that
      is the size itself).
    - `larger_knob_smaller_model`: the direction of the search (`False` for τ of `linearity_merge`).
    - `unbounded`: the knob has no upper end (ε): the search doubles the upper end until the target is reached.
    - `size_knob`: `"nonzeros"` when the knob *is* a non-zero budget, `"fraction"` when it is a fraction of the
      original parameters; `compress_to` then passes the target directly instead of searching.
    - `activations`: the hidden activations the method accepts, `None` for every supported one.
    - `per_layer`: the knob also takes one value per hidden layer (a tuple), layer l's width depending only on the
      values of layers ≤ l; `compress_to` then reaches a widths target by choosing them layer by layer.
    - `no_widths`: why the method cannot reach per-layer widths (`compress_to` refuses a widths target with it),
      `None` when it can or when one knob is searched (then a result more than one neuron below a layer's target
      is refused).
    - `to_size`: a faster way to a parameter count than bisecting the knob, `(model, x_calib, size, **options) ->
      (model, info)` with `info.knob` the knob it chose (`lump`: a few compiled ε grids; `merge_or_remove`: one
      greedy path per layer, cut at the size), or `None`.
    - `to_widths`: a direct way to per-layer widths, `(model, x_calib, hidden_widths, search, **options) ->
      ((model, info), knobs, chosen_options)` or `None` when `search` (compress_to's `knob_range`, `grow_upper`,
      `max_iter`) asks for the knob search instead; `None` for none.
    - `layer_search`: for a per-layer knob searched layer by layer, `(model, x_calib, **options) -> (widths_at,
      run)`: the hidden widths at per-layer knobs, cheaply, and the compressor at them (`lump`: the partitions
      alone); `None` to run the compressor itself.
    """

    name: str = eqx.field(static=True)
    function: Callable = eqx.field(static=True)
    knob: str | None = eqx.field(static=True)
    meaning: str = eqx.field(static=True)
    structured: bool = eqx.field(static=True)
    needs_data: bool = eqx.field(static=True)
    knob_range: tuple[float, float] | None = eqx.field(static=True, default=(0.0, 1.0 - 1e-9))
    larger_knob_smaller_model: bool = eqx.field(static=True, default=True)
    unbounded: bool = eqx.field(static=True, default=False)
    size_knob: str | None = eqx.field(static=True, default=None)
    activations: tuple[str, ...] | None = eqx.field(static=True, default=None)
    per_layer: bool = eqx.field(static=True, default=False)
    no_widths: str | None = eqx.field(static=True, default=None)
    to_size: Callable | None = eqx.field(static=True, default=None)
    to_widths: Callable | None = eqx.field(static=True, default=None)
    layer_search: Callable | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if self.size_knob not in (None, "nonzeros", "fraction"):
            raise ValueError(f"`size_knob` must be None, 'nonzeros' or 'fraction'; received {self.size_knob!r}.")


RELU_FAMILY = ("relu", "leaky_relu")
NEURON_SPARSITY = "fraction s ∈ [0, 1) of each hidden layer's neurons removed (as structured_prune)"
WEIGHT_SPARSITY = "fraction s ∈ [0, 1) of the prunable weights (hidden layers, not the output layer) set to zero"

_REGISTRY: dict[str, Compressor] = {}


def register_compressor(compressor: Compressor, *, replace: bool = False) -> Compressor:
    """Add `compressor` to the registry under its name (`replace=True` to update a registered one, e.g. to give it
    a fast path); every compressor's module registers its own at import, so `compressors()`, `compress_to` and
    the CLI know it. Returns it.

    **Raises:** `TypeError` for anything but a `jaxlump.Compressor`; `ValueError` when the name is taken (and not
    `replace`) or, with `replace`, not registered.

    ```python
    import jaxlump
    record = jaxlump.compressors()["magnitude"]
    assert jaxlump.register_compressor(record, replace=True) is record
    ```
    """
    if not isinstance(compressor, Compressor):
        raise TypeError(f"`compressor` must be a jaxlump.Compressor; received {type(compressor).__name__}.")
    if replace != (compressor.name in _REGISTRY):
        taken = "is already registered (pass replace=True to update it)" if not replace else "is not registered"
        raise ValueError(f"`compressor`: the name {compressor.name!r} {taken}.")
    _REGISTRY[compressor.name] = compressor
    return compressor


def compressors() -> dict[str, Compressor]:
    """Every compressor jaxlump knows, by name: its function, its knob's meaning, whether it is structured.

    The names are those `jaxlump.baselines.compress_to` and the `jaxlump compress --method` command accept.
    Knobs mean different things per method (ε, a weight sparsity, a neuron sparsity, τ ...); to compare methods at
    one size, give `compress_to` a target instead of a knob: a fraction then means the same for every method
    (of the dense parameters for structured methods, of the non-zeros for unstructured ones).

    **Returns:** a new `dict` from name to `Compressor`, lumping first, then the baselines.

    ```python
    import jaxlump
    methods = jaxlump.compressors()
    assert methods["lump"].structured and not methods["magnitude"].structured
    assert methods["magnitude"].knob == "sparsity"
    ```
    """
    return dict(_REGISTRY)


def get_compressor(method) -> Compressor | None:
    """The registered `Compressor` for a name or a registered function; a `Compressor` is returned as is.

    Returns `None` for a callable that is not registered (`compress_to` then searches its third argument as a
    sparsity-like knob). Raises `ValueError` for an unknown name and `TypeError` for anything else.
    """
    if isinstance(method, Compressor):
        return method
    if isinstance(method, str):
        try:
            return _REGISTRY[method]
        except KeyError:
            raise ValueError(
                f"`method` must be the name of a registered compressor; received {method!r}. "
                f"Registered: {', '.join(_REGISTRY)} (see `jaxlump.compressors()`)."
            ) from None
    if callable(method):
        return next((c for c in _REGISTRY.values() if c.function is method), None)
    raise TypeError(
        f"`method` must be a compressor name, a compressor function or a `jaxlump.Compressor`; received {method!r}."
    )
