"""Every compressor by name: what its knob means, whether its result is structured, how to search the knob."""

from collections.abc import Callable

import equinox as eqx

from ._lump import lump
from ._lump_then_prune import lump_then_prune
from ._select import lump_then_select, merge_or_remove
from .baselines import (
    elimination_compensation,
    exact_lump,
    flap_prune,
    fold,
    id_prune,
    linearity_merge,
    linearity_to_size,
    lowrank,
    magnitude,
    neuron_merge,
    obs_prune,
    osscar_prune,
    proportional_lump,
    random,
    structured_prune,
    wanda,
    zipit_merge,
)


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

    def __check_init__(self):
        if self.size_knob not in (None, "nonzeros", "fraction"):
            raise ValueError(f"`size_knob` must be None, 'nonzeros' or 'fraction'; received {self.size_knob!r}.")


_RELU = ("relu", "leaky_relu")
_NEURONS = "fraction s ∈ [0, 1) of each hidden layer's neurons removed (as structured_prune)"
# Why a method cannot reach per-layer widths (`compress_to` refuses a widths target with these reasons).
_NO_KNOB = "it has no knob: it merges exactly equivalent neurons only, so its widths are fixed by the model"
_DEEPER = (
    "it keeps every hidden neuron and replaces each layer by a rank-r factorisation, adding a bottleneck layer, so "
    "its result has no hidden widths to match"
)
_SKIP = (
    "it turns always-active neurons into a linear skip connection that keeps their parameters, so hidden widths do "
    "not bound its size, and whether a layer merges at all is decided by `layer_threshold`"
)
_BUDGET = "it takes a size budget, not widths (its knob is the parameter budget itself, a fraction of the original)"
_SPARSITY = "fraction s ∈ [0, 1) of the prunable weights (hidden layers, not the output layer) set to zero"

# One line per method. A new baseline exported from `jaxlump.baselines` is registered here (a test checks it).
# fmt: off
_REGISTRY: dict[str, Compressor] = {c.name: c for c in (
    Compressor("lump", lump, "eps", "relative tolerance ε ≥ 0 of the neuron discrepancy; ε = 0 merges only exact equivalences, larger ε merges more (the size is not strictly monotone in ε)", structured=True, needs_data=False, knob_range=(0.0, 1.0), unbounded=True),  # noqa: E501
    Compressor("lump_then_prune", lump_then_prune, "target", "the non-zero budget itself (weights + biases): lump at a mild ε, prune to the budget, reconstruct", structured=False, needs_data=True, knob_range=None, size_knob="nonzeros"),  # noqa: E501
    Compressor("lump_then_select", lump_then_select, "sparsity", "fraction s ∈ [0, 1) of each *lumped* hidden layer's neurons removed by structured OBS after lumping at `eps` (default 0.5), then reconstructed against the original", structured=True, needs_data=True, per_layer=True),  # noqa: E501
    Compressor("merge_or_remove", merge_or_remove, "eps", "tolerance ε ≥ 0 on each layer's relative refit error: greedy refit-aware merges or removals stop before it is exceeded; larger ε, smaller model", structured=True, needs_data=True, knob_range=(0.0, 1.0), unbounded=True),  # noqa: E501
    Compressor("exact_lump", exact_lump, None, "no knob: merges exactly equivalent neurons only (ε = 0, no refit)", structured=True, needs_data=False, knob_range=None, no_widths=_NO_KNOB),  # noqa: E501
    Compressor("magnitude", magnitude, "sparsity", _SPARSITY + ", smallest |W| first, per layer by default (biases and the output layer are kept, so magnitude(m, x, 0.5) keeps 55.7 % of the non-zeros of a 7→64→64→7 MLP)", structured=False, needs_data=False),  # noqa: E501
    Compressor("random", random, "sparsity", _SPARSITY + ", uniformly at random (pass `key=`)", structured=False, needs_data=False),  # noqa: E501
    Compressor("wanda", wanda, "sparsity", _SPARSITY + ", smallest |W|·‖X‖ first", structured=False, needs_data=True),  # noqa: E501
    Compressor("elimination_compensation", elimination_compensation, "sparsity", _SPARSITY + ", least output change after bias compensation first", structured=False, needs_data=True),  # noqa: E501
    Compressor("structured_prune", structured_prune, "sparsity", "fraction s ∈ [0, 1) of the hidden *neurons* removed; parameters fall faster than s, since a neuron's row and column go: structured_prune(m, x, 0.5) keeps 30.1 % of the parameters of a 7→64→64→7 MLP", structured=True, needs_data=False, per_layer=True),  # noqa: E501
    Compressor("obs_prune", obs_prune, "sparsity", _NEURONS + ", one at a time by the smallest refit-aware error (structured OBS, ZipLM), then reconstructed", structured=True, needs_data=True, per_layer=True),  # noqa: E501
    Compressor("osscar_prune", osscar_prune, "sparsity", _NEURONS + ", chosen by OSSCAR's swap local search on the refit error, then reconstructed", structured=True, needs_data=True, per_layer=True),  # noqa: E501
    Compressor("id_prune", id_prune, "sparsity", _NEURONS + ", kept by an interpolative decomposition of the activations (pivoted Cholesky), then reconstructed", structured=True, needs_data=True, per_layer=True),  # noqa: E501
    Compressor("flap_prune", flap_prune, "sparsity", "fraction s ∈ [0, 1) of *all* hidden neurons removed by FLAP's fluctuation score (one global ranking), with bias compensation", structured=True, needs_data=True, per_layer=True),  # noqa: E501
    Compressor("fold", fold, "sparsity", _NEURONS.replace("removed", "merged away") + ", by k-means on their weights (model folding)", structured=True, needs_data=False, per_layer=True),  # noqa: E501
    Compressor("zipit_merge", zipit_merge, "sparsity", _NEURONS.replace("removed", "merged away") + ", by activation-correlation matching (ZipIt!) with REPAIR", structured=True, needs_data=True, per_layer=True),  # noqa: E501
    Compressor("neuron_merge", neuron_merge, "sparsity", _NEURONS + " by incoming norm, each folded into its most similar kept neuron (Neuron Merging)", structured=True, needs_data=False, per_layer=True),  # noqa: E501
    Compressor("lowrank", lowrank, "sparsity", "s ∈ [0, 1): how far below its break-even rank each layer's activation-whitened factorisation goes (SVD-LLM); larger s, lower rank", structured=True, needs_data=True, no_widths=_DEEPER),  # noqa: E501
    Compressor("linearity_merge", linearity_merge, "tau", "activation-rate threshold τ ∈ [0, 1]: neurons active on at least a fraction τ of the data become a linear skip; a *smaller* τ merges more", structured=True, needs_data=True, knob_range=(0.0, 1.0), larger_knob_smaller_model=False, activations=_RELU, no_widths=_SKIP),  # noqa: E501
    Compressor("linearity_to_size", linearity_to_size, "target_fraction", "the parameter budget as a fraction of the original: linearity merging with τ stepped down until the budget is met", structured=True, needs_data=True, knob_range=None, size_knob="fraction", activations=_RELU, no_widths=_BUDGET),  # noqa: E501
    Compressor("proportional_lump", proportional_lump, "tol", "distance tol ∈ [0, √2) between normalised incoming rows; tol = 0 merges exactly proportional neurons, larger tol merges more", structured=True, needs_data=False, knob_range=(0.0, 1.414), activations=(*_RELU, "identity"), per_layer=True),  # noqa: E501
)}
# fmt: on


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
