"""End-to-end width allocation: how wide each hidden layer stays when the whole model must meet a size.

`merge_or_remove` with one ε stops every layer where *its own* refit error reaches ε, and uniform widths cut every
layer by the same fraction; neither asks what a layer's cut does to the model's output. `allocate` computes each
hidden layer's merge-or-remove path once, cuts it at `levels` evenly spaced widths (the candidate sizes of that
layer) and searches over the layers' levels end to end: from the full widths, it lowers one layer by one level at a
time — the layer whose step adds the least squared output error per dense parameter saved, the error measured on the
calibration rows after the shared least-squares reconstruction (what the user gets) — until the model fits the
target, and then fills what the target still allows one neuron at a time (the neuron that removes the most error per
parameter first). The result is the evaluated allocation within the target with the least output error. Each
evaluation is one reconstruction in the fixed shape (compiled once per network), a model with L hidden layers takes
about `L · L · levels` of them (and L per neuron added back), and only the chosen allocation is built smaller.
"""

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .._errors import RESULTS, UnreachableTargetError, check_positive_int, raise_if_failed
from .._model import is_chain_kind
from .._reconstruction.quotient import quotient
from .._reconstruction.reconstruct import DEFAULT_RIDGE, _reconstruct_and_certify
from .._results.accounting import widths_dense_params
from .._sites.compress import (
    parameter_count,
    rebuild,
    segment_chain,
    segments,
    site_listing,
    site_taps,
    whole_model_budget,
)
from .._sites.layers import family_of
from .._sites.site import capture
from .greedy import AbstractPath
from .select import DEFAULT_CANDIDATES, _prepare, compress_along, labels_after, layer_paths
from .targets import Target, _parse_target, compress_to, realised_size, with_target


def _ladder(width: int, levels: int) -> tuple[int, ...]:
    """A layer's candidate widths, widest first: `⌈width · k / levels⌉` for `k = levels … 1` (distinct)."""
    return tuple(sorted({max(1, -(-width * k // levels)) for k in range(1, levels + 1)}, reverse=True))


def _narrowest(ladders, size, budget: int, levels: str, unit: str) -> tuple[int, ...]:
    """The narrowest allocation of `ladders`, or `UnreachableTargetError` when even it exceeds `budget`."""
    narrowest = tuple(ladder[-1] for ladder in ladders)
    if size(narrowest) > budget:
        raise UnreachableTargetError(
            f"`target`: with {levels} the narrowest allocation, widths {narrowest}, has {size(narrowest):,} {unit}; "
            f"the target allows {budget:,}. Raise `levels` or the target.",
            size(narrowest),
        )
    return narrowest


def _search(full: tuple[int, ...], ladders, size, error, budget: int) -> tuple[int, ...]:
    """The end-to-end search over widths (one entry per hidden layer or site): from `full`, down one level of
    `ladders` at a time until `size(widths) <= budget` (the step adding the least `error` per parameter saved
    first), then back up one unit at a time while the budget allows (the most error removed per parameter first);
    the evaluated allocation within the budget with the least error (`error` is cached by the caller)."""
    narrowest = tuple(ladder[-1] for ladder in ladders)
    seen = set()

    def cost(widths) -> float:
        seen.add(widths)
        return error(widths)

    def moved(widths, l: int, width: int) -> tuple[int, ...]:
        return widths[:l] + (width,) + widths[l + 1 :]

    def per_parameter(more, fewer) -> float:
        """Squared output error that the smaller allocation `fewer` adds over `more`, per dense parameter saved
        (`-inf` when `more` failed: nothing is lost by leaving it, `inf` when only `fewer` did)."""
        if not np.isfinite(cost(more)):
            return -np.inf
        added = cost(fewer) - cost(more)
        return added / (size(more) - size(fewer)) if np.isfinite(added) else np.inf

    current = full
    while size(current) > budget:
        lower = [
            moved(current, l, max(w for w in ladder if w < current[l]))
            for l, ladder in enumerate(ladders)
            if current[l] > narrowest[l]
        ]
        current = min(lower, key=lambda option: (per_parameter(current, option), -size(option)))
    while upper := [
        option
        for option in (moved(current, l, w + 1) for l, w in enumerate(current) if w < full[l])
        if size(option) <= budget
    ]:
        current = min(upper, key=lambda option: (-per_parameter(option, current), size(option)))
    cost(current)
    return min((a for a in seen if size(a) <= budget), key=lambda a: (error(a), -size(a)))


def _refitted(chain, x, paths, hidden: tuple[int, ...], ridge: float):
    """`chain` cut along its layers' `paths` to the hidden widths `hidden` and refitted on `x` in the fixed shape
    (one compilation for every allocation): `(solved chain, result, certificate)`."""
    labels = tuple(jnp.asarray(labels_after(p, n - w), jnp.int32) for p, n, w in zip(paths, chain.widths[1:-1], hidden))
    masked = quotient(chain, labels, chain.widths[1:-1])
    return _reconstruct_and_certify(chain, masked, x, labels, None, jnp.asarray(ridge, x.dtype))


def allocate(
    model,
    x_calib,
    target,
    *,
    levels: int = 16,
    merge: bool = True,
    candidates: int | None = DEFAULT_CANDIDATES,
    path: AbstractPath | None = None,
    damping: float = 1e-3,
    ridge: float = DEFAULT_RIDGE,
    throw: bool = True,
    where=None,
):
    """`merge_or_remove` at a size target, with each hidden layer's (or site's) width chosen end to end.

    Every hidden layer's merge-or-remove path (as `jaxlump.merge_or_remove` computes it, once) is cut at `levels`
    evenly spaced widths. Starting from the full widths, the search lowers one layer by one level at a time, the
    layer whose step adds the least squared output error per dense parameter saved (the whole model's RMS output
    error on `x_calib` after the shared least-squares reconstruction), until the model has at most the target's
    dense parameters, and then adds neurons back one at a time (the one removing the most output error per parameter
    first) while the target allows; it returns the evaluated allocation within the target whose output error is
    least.
    `jaxlump.baselines.compress_to(model, "merge_or_remove", info.target.realised_widths, x_calib)` with the same
    options rebuilds the same result.

    Any other Equinox or NNX module is allocated over its sites of neurons (`jaxlump.sites`; sites of channels or
    heads keep their width): each site's path is computed once on the original model's activations, every
    allocation is evaluated as the whole model's output error on `x_calib` with each site refitted in the fixed
    shape on those activations, and the chosen widths are then built by
    `jaxlump.baselines.compress_to(model, "merge_or_remove", widths, x_calib)` with the same options (each site on
    the model compressed so far, as `merge_or_remove` does), which is what is returned: its `jaxlump.SitesInfo`
    holds the widths (`info.widths_after`).

    **Arguments:**

    - `model`: an MLP-like model (a chain of `Linear` layers: `eqx.nn.MLP`, `jaxlump.LumpedMLP`, an NNX chain, a
      `jaxlump.DenseChain`) or any model with sites of neurons; not modified.
    - `x_calib`: calibration inputs: `(batch, n_in)` for a chain, a batch of whatever the model takes otherwise.
    - `target`: dense parameters as an `int`, or a fraction of the original's as a `float` in `(0, 1]` (of the
      whole model's parameters for a model of sites).
    - `levels`: the widths of the downward search per layer (`⌈n · k / levels⌉`, `k = levels … 1`; the narrowest
      bounds how small a layer can get); more levels, finer steps and more evaluations.
    - `merge`, `candidates`, `path`, `damping`, `ridge`, `throw`: as `jaxlump.merge_or_remove`.
    - `where`: for a model of sites, which sites are allocated (as `jaxlump.sites`; the others keep their width).

    **Returns:** `(new_model, info)`, a `jaxlump.TargetInfo` for a chain: `info.target.realised_widths` are the
    chosen widths, `info.target.knob` each layer's relative refit error at its cut, `info.target.options` the
    `levels`; a `jaxlump.SitesInfo` for a model of sites.

    **Raises:** `jaxlump.UnreachableTargetError` (a `ValueError`) when even every layer at its narrowest level
    exceeds the target; `ValueError` for a malformed target or per-layer widths (pass those to
    `jaxlump.baselines.compress_to`), and bad options as `merge_or_remove`; `TypeError` for a model with no site of
    neurons.

    ```python
    import equinox as eqx, jax.random as jr, jaxlump
    mlp = eqx.nn.MLP(3, 2, 16, 2, key=jr.key(0))
    x = jr.normal(jr.key(1), (128, 3))
    small, info = jaxlump.allocate(mlp, x, 0.5, levels=8)
    assert info.target.realised_size <= 0.5 * info.target.original_size
    ```
    """
    options = dict(merge=merge, candidates=candidates, path=path, damping=damping, ridge=ridge, throw=throw)
    if not is_chain_kind(model):
        return _allocate_sites(model, x_calib, target, levels=levels, where=where, **options)
    if where is not None:
        raise ValueError(
            f"`where` applies to models compressed site by site; `model` ({type(model).__name__}) is one chain of "
            "layers, whose every hidden layer is allocated."
        )
    chain, x, damping, candidates, throw = _prepare(model, x_calib, merge, damping, candidates, throw, ridge, path)
    levels = check_positive_int(levels, "levels")
    widths = chain.widths
    kind, value = _parse_target(target, widths)
    if kind == "widths":
        raise ValueError(
            f"`target`: jaxlump.allocate chooses the widths for a size; received the widths {target!r}. Pass them to "
            "jaxlump.baselines.compress_to(model, 'merge_or_remove', widths, x_calib) instead."
        )
    hidden = widths[1:-1]
    original = widths_dense_params(widths, chain.use_bias, chain.gated)
    budget = value if kind == "count" else int(np.floor(value * original + 1e-9))
    ladders = [_ladder(n, levels) for n in hidden]

    def size(hidden_widths) -> int:
        return widths_dense_params((widths[0], *hidden_widths, widths[-1]), chain.use_bias, chain.gated)

    narrowest = _narrowest(ladders, size, budget, f"{levels} levels per layer", "dense parameters")
    paths = layer_paths(
        chain,
        x,
        merge=bool(merge),
        damping=damping,
        candidates=candidates,
        path=path,
        steps=[n - w for n, w in zip(hidden, narrowest)],
    )
    evaluated = {}

    def error(hidden_widths) -> float:
        """Squared RMS output error of the widths' reconstruction on the calibration rows (infinite when the solve
        failed), computed in the fixed shape: one compilation for every allocation."""
        if hidden_widths not in evaluated:
            _, result, certificate = _refitted(chain, x, paths, hidden_widths, ridge)
            rms = float(certificate.output_rms)
            fine = result == RESULTS.successful and np.isfinite(rms)
            evaluated[hidden_widths] = rms**2 if fine else np.inf
        return evaluated[hidden_widths]

    best = _search(tuple(hidden), ladders, size, error, budget)
    new_model, info = compress_along(
        model, x, paths, [n - w for n, w in zip(hidden, best)], "merge_or_remove", np.nan, ridge, False
    )
    record = Target(
        kind=kind,
        requested=value,
        unit="dense parameters",
        requested_size=budget,
        original_size=original,
        realised_size=realised_size(info),
        realised_widths=(widths[0], *best, widths[-1]),
        knob=tuple(float(np.max(p.cumulative[: n - w])) if n > w else 0.0 for p, n, w in zip(paths, hidden, best)),
        options=(("levels", float(levels)),),
    )
    return raise_if_failed(info.result, new_model, throw, "jaxlump.allocate"), with_target(info, record)


def _allocate_sites(model, x_calib, target, *, levels, where, **options):
    """`allocate` for a model of sites (see there): the search over its sites of neurons, then `compress_to`."""
    listing = site_listing(model, x_calib, where, method="allocate")
    levels = check_positive_int(levels, "levels")
    if isinstance(target, dict):
        raise TypeError(
            f"`target`: jaxlump.allocate chooses the widths for a size; received the widths {target!r}. Pass them to "
            "jaxlump.baselines.compress_to(model, 'merge_or_remove', widths, x_calib) instead."
        )
    total = parameter_count(model)
    budget = whole_model_budget(target, total)
    family = family_of(model)
    chosen = segments(listing)
    rows = capture(model, family, site_taps(model, listing), x_calib)
    prepared = []
    for segment, segment_rows in zip(chosen, rows):
        chain = segment_chain(model, segment)
        chain, x, damping, candidates, _ = _prepare(
            chain, segment_rows.astype(chain.weights[0].dtype), options["merge"], options["damping"],
            options["candidates"], options["throw"], options["ridge"], options["path"],
        )  # fmt: skip
        prepared.append((segment, chain, x))
    full = tuple(w for _, chain, _ in prepared for w in chain.widths[1:-1])
    ladders = [_ladder(n, levels) for n in full]
    spans = np.cumsum([0] + [len(chain.widths) - 2 for _, chain, _ in prepared])

    def pieces(widths):
        return [tuple(widths[a:b]) for a, b in zip(spans[:-1], spans[1:])]

    def segment_params(chain, hidden) -> int:
        return widths_dense_params((chain.widths[0], *hidden, chain.widths[-1]), chain.use_bias, chain.gated)

    def size(widths) -> int:
        return total - sum(
            segment_params(chain, chain.widths[1:-1]) - segment_params(chain, hidden)
            for (_, chain, _), hidden in zip(prepared, pieces(widths))
        )

    narrowest = _narrowest(ladders, size, budget, f"{levels} levels per site", "parameters")
    paths = [
        layer_paths(
            chain, x, merge=bool(options["merge"]), damping=damping, candidates=candidates, path=options["path"],
            steps=[n - w for n, w in zip(chain.widths[1:-1], narrow)],
        )
        for (_, chain, x), narrow in zip(prepared, pieces(narrowest))
    ]  # fmt: skip
    ridge = options["ridge"]
    refits, evaluated = {}, {}
    forward = eqx.filter_jit(family.apply)
    reference = np.asarray(forward(model, x_calib), np.float64)

    def refit(index: int, hidden: tuple[int, ...]):
        """Segment `index` at widths `hidden`, refitted in the fixed shape on the original model's activations
        (`None` when the solve failed)."""
        if (index, hidden) not in refits:
            _, chain, x = prepared[index]
            solved, result, _ = _refitted(chain, x, paths[index], hidden, ridge)
            refits[(index, hidden)] = solved if result == RESULTS.successful else None
        return refits[(index, hidden)]

    def error(widths) -> float:
        """Mean squared difference of the whole model's outputs on `x_calib` from the original's."""
        if widths not in evaluated:
            solved = [refit(i, hidden) for i, hidden in enumerate(pieces(widths))]
            if any(chain is None for chain in solved):
                evaluated[widths] = np.inf
            else:
                layers = {}
                for (segment, _, _), chain in zip(prepared, solved):
                    layers.update(rebuild(model, segment, chain))
                output = forward(family.replace(model, layers), x_calib)
                value = float(np.mean((np.asarray(output, np.float64) - reference) ** 2))
                evaluated[widths] = value if np.isfinite(value) else np.inf
        return evaluated[widths]

    best = _search(full, ladders, size, error, budget)
    sites_in_order = [site for segment, _, _ in prepared for site in segment.sites]
    widths = {site.path: int(w) for site, w in zip(sites_in_order, best)}
    return compress_to(model, "merge_or_remove", widths, x_calib, **options)
