"""Structured compressors built on refit-aware costs: `merge_or_remove` and `lump_then_select`.

Both cut greedy paths (`jaxlump._methods.greedy.greedy_path`): per hidden layer, the sequence of cheapest
operations under the next layer's least-squares refit — remove a neuron (structured OBS, ZipLM's rule) or,
when allowed, merge two (mean-in / sum-out) among each neuron's candidate partners — with the costs kept
exact after every step (`jaxlump._methods.greedy`'s rank-one updates). The result is then
built as a quotient (removed neurons dropped, merged ones averaged in / summed out) and reconstructed against
the original by the shared least-squares refit (`jaxlump.reconstruct`), which also computes the certificate.
"""

import dataclasses
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._criteria.discrepancy import AbstractDiscrepancy, Structural
from .._errors import (
    RESULTS,
    UnreachableTargetError,
    check_bool,
    check_data,
    check_eps,
    check_nonnegative,
    combine,
    finite_result,
    raise_if_failed,
)
from .._model import from_chain, to_chain
from .._reconstruction.masked import compact, shrink
from .._reconstruction.quotient import quotient
from .._reconstruction.reconstruct import DEFAULT_RIDGE, reconstruct
from .._results.accounting import widths_dense_params
from .._sites.compress import over_sites
from .base import check_sparsity, fraction_for, knob_number, layer_knob, structured_info
from .channels import ChannelRule
from .greedy import AbstractPath, Greedy, Path, check_candidates
from .lump import lump, widths_at_layer_eps
from .registry import Compressor, register_compressor
from .rounds import OpsPath, Rounds

DEFAULT_CANDIDATES = 16
LayerPath = Path | OpsPath


AUTO_ROUNDS_WIDTH = 512  # wider layers take `Rounds()` by default: the exact greedy takes 46–128 s at 512


def layer_paths(
    chain,
    x,
    *,
    merge: bool,
    damping: float,
    candidates: int | None = DEFAULT_CANDIDATES,
    path: AbstractPath | None = None,
    steps: Sequence[int] | None = None,
):
    """One compression path per hidden layer, on the network's own activations on `x` (parallel mode), by the
    strategy `path` (`None`: `Greedy()` for layers up to `AUTO_ROUNDS_WIDTH` wide, `Rounds()` above); merges
    among each slot's `candidates` most promising partners (`None`: all pairs). `steps[l]`: how many operations
    of layer l are needed at least (default: all, down to one neuron).

    The paths are computed in float64 whatever the model's dtype (the result is only labels and errors): the
    rank-one downdates lose a float32 fit once near-duplicate neurons have merged (a trained float32 network gave
    NaN costs), as lumping computes low-precision models in float32."""
    hidden = chain.widths[1:-1]
    steps = tuple(n - 1 for n in hidden) if steps is None else tuple(steps)
    chosen = [path if path is not None else Greedy() if n <= AUTO_ROUNDS_WIDTH else Rounds() for n in hidden]
    paths = [None] * len(hidden)
    with jax.enable_x64(True):
        chain64 = jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, chain)
        x64 = jnp.asarray(x, jnp.float64)
        for strategy in dict.fromkeys(chosen):
            layers = [l for l, s in enumerate(chosen) if s == strategy]
            found = strategy.paths(
                chain64, x64, layers, merge=merge, damping=damping, candidates=candidates, steps=steps
            )
            for l, p in zip(layers, found):
                paths[l] = p
    return tuple(paths)


def paths_result(paths) -> RESULTS:
    """`RESULTS.selection_nonfinite` when a path's costs are NaN or inf (an overflow), else `successful`."""
    return finite_result([p.cumulative for p in paths], RESULTS.selection_nonfinite)


def steps_within(path: LayerPath, eps) -> int:
    """How many leading steps of `path` keep the next layer's relative refit error ≤ ε."""
    return int(np.sum(np.maximum.accumulate(np.asarray(path.cumulative)) <= float(eps)))


def steps_to_sparsity(path: LayerPath, sparsity: float) -> int:
    """Steps that remove the fraction `sparsity` of the layer's neurons (`int(n · s)`, at least one stays)."""
    return min(int(path.width * sparsity), path.width - 1)


def labels_after(path: LayerPath, steps: int) -> np.ndarray:
    return path.labels_after(steps)


def finish(model, x, partitions, method: str, knob, ridge: float, result=RESULTS.successful, throw: bool = True):
    """The quotient of `model` under `partitions` (representative labels over its own neurons, `-1`: removed),
    reconstructed against `model`. Up to `AUTO_ROUNDS_WIDTH` wide it is solved in fixed shape (one compilation per
    network shape, however many levels are cut) and then shrunk; wider, physically smaller at once, so the refit's
    systems have the kept width, not the original's. `result`: the earlier stages' outcome; `info.result` is the
    first failure, raised with `throw`."""
    chain = to_chain(model)
    if max(chain.widths[1:-1]) <= AUTO_ROUNDS_WIDTH:
        labels, blocks = tuple(jnp.asarray(p, jnp.int32) for p in partitions), chain.widths[1:-1]
    else:
        labels, blocks = zip(*(compact(p) for p in partitions))
    quotient_model = from_chain(quotient(chain, labels, blocks), like=model)
    info = structured_info(method, knob, model, quotient_model, chain.widths, labels, x)
    info = dataclasses.replace(info, result=combine(result, info.result))
    refit, info = reconstruct(model, quotient_model, x, info, ridge=ridge, throw=False)
    small, info = shrink(refit, dataclasses.replace(info, method=method))
    return raise_if_failed(info.result, small, throw, f"jaxlump.{method}"), info


def compress_along(model, x, paths, steps, method: str, knob, ridge: float, throw: bool = True):
    """Cut every layer's path after `steps[l]` operations, then `finish`."""
    partitions = [labels_after(p, s) for p, s in zip(paths, steps)]
    return finish(model, x, partitions, method, knob, ridge, paths_result(paths), throw)


def representatives(labels: np.ndarray) -> np.ndarray:
    """Compact labels (block ids, `-1`: removed) as representative labels: each block's first member."""
    labels = np.asarray(labels)
    first = {}
    for i, b in enumerate(labels.tolist()):
        first.setdefault(b, i)
    return np.asarray([first[b] if b >= 0 else -1 for b in labels.tolist()])


def _prepare(model, x_calib, merge, damping, candidates, throw, ridge, path=None):
    """The checked inputs, every option before any work (a bad `ridge` is refused before the greedy paths)."""
    check_bool(merge, "merge")
    if path is not None and not isinstance(path, AbstractPath):
        raise TypeError(
            f"`path` must be None (automatic), jaxlump.Greedy() or jaxlump.Rounds(...); received {type(path).__name__}."
        )
    check_nonnegative(ridge, "ridge")
    chain = to_chain(model)
    x = check_data(x_calib, "x_calib", width=chain.widths[0]).astype(chain.weights[0].dtype)
    return (
        chain,
        x,
        check_nonnegative(damping, "damping", positive=True),
        check_candidates(candidates),
        check_bool(throw, "throw"),
    )


def _cut_channels(eps, options: dict) -> ChannelRule:
    """How `merge_or_remove` cuts a channel site: the exact greedy over its channels (merges allowed unless
    `merge=False`) while the consumer's refit error stays within ε."""
    check_eps(eps)
    if options["path"] is not None:
        raise ValueError(f"`path`: channel sites take the exact greedy over channels; received {options['path']!r}.")
    return ChannelRule(
        "merge_or_remove",
        float(eps),
        lambda path, site: steps_within(path, eps),
        check_bool(options["merge"], "merge"),
        float(check_nonnegative(options["damping"], "damping", positive=True)),
        check_candidates(options["candidates"]),
        float(check_nonnegative(options["ridge"], "ridge")),
        throw=check_bool(options["throw"], "throw"),
        limit=lambda site: (None, float(eps)),
    )


@over_sites(channels=_cut_channels)
def merge_or_remove(
    model,
    x_calib,
    eps,
    *,
    merge: bool = True,
    candidates: int | None = DEFAULT_CANDIDATES,
    path: AbstractPath | None = None,
    damping: float = 1e-3,
    ridge: float = DEFAULT_RIDGE,
    throw: bool = True,
):
    """Compress by greedy refit-aware merging or removal of neurons, while the refit error stays within ε.

    Per hidden layer l, repeatedly apply the operation — merge two neurons (mean-in / sum-out) or remove one —
    whose refit-aware cost is smallest under the current state (`jaxlump.RefitAware`'s closed form, kept exact
    after every step by rank-one updates of the inverse Gram and the refit), and stop before the first step
    that would make the next layer's
    least-squares refit error exceed ε: `sqrt(E_l / N) ≤ ε · scale_l`, with `scale_l = mean_j rms(a_j)
    ‖W^{l+1}_{:,j}‖₂` (a typical neuron's RMS contribution to the next layer). One ε for every layer, so
    widths go where they cost least. Then the shared least-squares reconstruction against the original.
    With `merge=False` the path is structured OBS (ZipLM's greedy elimination, parallel mode). ε = 0 removes
    or merges only what costs exactly nothing (neurons whose pre-activations coincide on the data).

    **Arguments:**

    - `model`: an `eqx.nn.MLP`, `eqx.nn.Sequential`, `LumpedMLP` or NNX chain; it is not modified.
    - `x_calib`: calibration inputs `(batch, n_in)` (required).
    - `eps`: the tolerance ε ≥ 0 on each layer's relative refit error.
    - `merge`: allow merges (default) — `False` gives pure structured OBS.
    - `candidates`: merges are considered between each neuron and its `candidates` partners of smallest
      initial merge cost (a merged neuron's list is refreshed: its cheapest partners at that step); default 16.
      `None` considers all pairs (the exact greedy; memory `O(n² (N + n + m))`). Exact duplicates cost 0, so
      they are always candidates.
    - `path`: how each layer's path is computed: `jaxlump.Greedy()` (the greedy above; `Greedy(nearest=None)` prices
      a merged neuron's pairs with every neuron, not its 64 nearest) or
      `jaxlump.Rounds(...)` (Gram-only costs on streamed statistics, batched rounds, `O(n³)` for any width: merges
      priced as their members' mean activation plus a bound on the nonlinear error, see `jaxlump.Rounds`); default
      `None`: the greedy for layers up to 512 wide, `Rounds()` for wider ones.
    - `damping`: the Gram damping λ relative to its mean diagonal (ZipLM's; default `1e-3`).
    - `ridge`: the final reconstruction's ridge (see `jaxlump.reconstruct`).
    - `throw`: raise a `jaxlump.CompressionError` naming the failed stage (the selection: non-finite merge
      costs; the least-squares refit); `False` returns the result with `info.result` set instead.

    **Returns:** `(smaller_model, info)`; `info.partitions` maps each original neuron to its compressed neuron
    (`-1`: removed, shared: merged), `info.certificate` is the reconstruction's measured certificate.

    **Raises:** `ValueError` for ε < 0 or NaN, `damping ≤ 0`, `candidates` not an integer ≥ 1 or None,
    missing or malformed `x_calib`; `CompressionError` for a failed stage when `throw=True`.

    Cost per layer of width n (N calibration inputs, m next-layer neurons, k candidates, each neuron's merges
    priced with its p = 64 nearest neurons, see `jaxlump.Greedy`): a first kernel `O(N n p (n + m))`, then per step
    `O(n k (N + n + m))` for the candidates' updates plus `O(N p (n + m) + n²)` for the merged neuron's pairs —
    `O(n (N p (n + m) + n k (N + n + m)))` in all.

    ```python
    import equinox as eqx, jax.numpy as jnp, jax.random as jr, jaxlump
    mlp = eqx.nn.MLP(3, 2, 16, 2, activation=jnp.tanh, key=jr.key(0))
    x = jr.normal(jr.key(1), (256, 3))
    small, info = jaxlump.merge_or_remove(mlp, x, 0.3)
    exact, exact_info = jaxlump.merge_or_remove(mlp, x, 0.3, candidates=None)
    assert info.widths_after.tolist()[1:-1] == exact_info.widths_after.tolist()[1:-1]  # 15 < 16: all pairs
    same, same_info = jaxlump.merge_or_remove(mlp, x, 0.0)
    assert same_info.widths_after.tolist() == [3, 16, 16, 2]
    ```

    Reference: Kurtic, Frantar, Alistarh, *ZipLM*, NeurIPS 2023 (the removal step); Dhiman et al., arXiv
    2606.01402 (2026) (the merge operator and ε).
    """
    chain, x, damping, candidates, throw = _prepare(model, x_calib, merge, damping, candidates, throw, ridge, path)
    eps = float(check_eps(eps))
    paths = layer_paths(chain, x, merge=bool(merge), damping=damping, candidates=candidates, path=path)
    steps = [steps_within(p, eps) for p in paths]
    return compress_along(model, x, paths, steps, "merge_or_remove", eps, ridge, throw)


def merge_or_remove_to_size(
    model,
    x_calib,
    max_params: int,
    *,
    merge: bool = True,
    candidates: int | None = DEFAULT_CANDIDATES,
    path: AbstractPath | None = None,
    damping: float = 1e-3,
    ridge: float = DEFAULT_RIDGE,
    throw: bool = True,
):
    """`merge_or_remove` at the smallest ε whose result has the most dense parameters within `max_params`.

    The greedy paths are computed once; a layer's width is a step function of ε that changes only where ε
    crosses one of its path's running-maximum errors, so every reachable size is found by evaluating those
    breakpoints (no bisection, one reconstruction). `merge_or_remove(model, x_calib, info.knob, ...)` with the
    same options gives the same result. `jaxlump.baselines.compress_to(model, "merge_or_remove", target, x)`
    uses it for counts and fractions. Raises `jaxlump.UnreachableTargetError` (a `ValueError`) when even the
    smallest result exceeds `max_params`.
    """
    chain, x, damping, candidates, throw = _prepare(model, x_calib, merge, damping, candidates, throw, ridge, path)
    paths = layer_paths(chain, x, merge=bool(merge), damping=damping, candidates=candidates, path=path)
    widths = chain.widths

    def size(eps: float) -> int:
        hidden = [n - steps_within(p, eps) for n, p in zip(widths[1:-1], paths)]
        return widths_dense_params((widths[0], *hidden, widths[-1]), chain.use_bias, chain.gated)

    breakpoints = np.unique(np.concatenate([[0.0], *(np.maximum.accumulate(np.asarray(p.cumulative)) for p in paths)]))
    breakpoints = breakpoints[np.isfinite(breakpoints)]
    sizes = [(size(e), -e) for e in breakpoints.tolist()]
    fitting = [entry for entry in sizes if entry[0] <= max_params]
    if not fitting:
        raise UnreachableTargetError(
            f"`max_params` (the size target): merge_or_remove cannot go below {sizes[-1][0]} "
            f"dense parameters (one neuron per hidden layer); received {max_params}.",
            sizes[-1][0],
        )
    eps = -max(fitting)[1]
    steps = [steps_within(p, eps) for p in paths]
    return compress_along(model, x, paths, steps, "merge_or_remove", eps, ridge, throw)


def merge_or_remove_to_widths(
    model,
    x_calib,
    hidden: tuple[int, ...],
    *,
    merge: bool = True,
    candidates: int | None = DEFAULT_CANDIDATES,
    path: AbstractPath | None = None,
    damping: float = 1e-3,
    ridge: float = DEFAULT_RIDGE,
    throw: bool = True,
):
    """`merge_or_remove` with each hidden layer's greedy path cut where it reaches the width `hidden[l]` (each path
    removes or merges one neuron per step, so every width from 1 to the original is reached exactly); options as
    `merge_or_remove`. `jaxlump.baselines.compress_to` uses it for widths targets. Returns `(model, info)` and the
    per-layer ε: each layer's relative refit error at its cut (the ε that layer alone would need), `info.knob`
    being NaN (no one ε cuts every layer there)."""
    chain, x, damping, candidates, throw = _prepare(model, x_calib, merge, damping, candidates, throw, ridge, path)
    steps = [max(0, min(n - w, n - 1)) for n, w in zip(chain.widths[1:-1], hidden)]
    paths = layer_paths(chain, x, merge=bool(merge), damping=damping, candidates=candidates, path=path, steps=steps)
    errors = tuple(float(np.max(p.cumulative[:s])) if s else 0.0 for p, s in zip(paths, steps))
    return compress_along(model, x, paths, steps, "merge_or_remove", np.nan, ridge, throw), errors


def merge_or_remove_widths(model, x_calib, hidden, search, **options):
    """`Compressor.to_widths` of `merge_or_remove`: every greedy path cut at its width (`search` is not needed)."""
    del search
    return (*merge_or_remove_to_widths(model, x_calib, hidden, **options), ())


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """Labels of the original neurons after `inner` (original → intermediate) then `outer` (intermediate → final)."""
    inner, outer = np.asarray(inner), np.asarray(outer)
    return np.where(inner >= 0, outer[np.maximum(inner, 0)], -1)


@over_sites
def lump_then_select(
    model,
    x_calib,
    sparsity: float | Sequence[float],
    *,
    eps: float = 0.5,
    discrepancy: AbstractDiscrepancy = Structural(),
    merge: bool = False,
    candidates: int | None = DEFAULT_CANDIDATES,
    damping: float = 1e-3,
    ridge: float = DEFAULT_RIDGE,
    throw: bool = True,
):
    """Lump mildly (merging near-equivalent neurons), then select with structured OBS, then reconstruct.

    1. `jaxlump.lump(model, x_calib, eps, discrepancy=...)` (with its refit) merges neurons within ε;
    2. structured OBS greedy elimination (`merge=True`: greedy merge-or-remove) on the lumped network's own
       activations removes `int(w_l · sparsity)` of each lumped hidden layer's `w_l` neurons;
    3. the composed partition applied to the *original* network (quotient: merged blocks averaged in / summed
       out, removed neurons dropped) and the shared least-squares reconstruction against it (a lumped block's
       target is its members' mean pre-activation), which also gives the certificate.

    The knob is `sparsity`, the fraction of the *lumped* neurons removed, so `jaxlump.baselines.compress_to`
    reaches a parameter budget with it; `sparsity = 0` is `lump` alone, `eps = 0` structured OBS alone (on a
    network without exact duplicates).

    **Arguments:**

    - `model`: the model to compress (not modified); `x_calib`: calibration inputs `(batch, n_in)` (required).
    - `sparsity`: fraction in `[0, 1)` of each lumped hidden layer's neurons removed (at least one stays), or one
      such fraction per hidden layer.
    - `eps`, `discrepancy`: the lumping's (default ε = 0.5, `Structural()`).
    - `merge`: let the selection also merge (greedy merge-or-remove instead of structured OBS).
    - `candidates`: with `merge=True`, the merge candidates per neuron (see `jaxlump.merge_or_remove`).
    - `damping`: the selection's Gram damping; `ridge`: the reconstruction's ridge.
    - `throw`: raise a `jaxlump.CompressionError` naming the failed stage (the lumping, the selection's costs,
      the least-squares refit); `False` returns the result with `info.result` set instead.

    **Returns:** `(smaller_model, info)` with `info.partitions` mapping every original neuron to its final neuron
    (`-1`: removed), `info.knob` the sparsity (NaN when given per layer). If the lumping itself failed
    (`throw=False`), the lumped model and its info (with `info.result` set) instead: there is nothing sound to select
    on.

    **Raises:** `ValueError` for a sparsity outside `[0, 1)`, ε < 0, `damping ≤ 0`, bad `candidates` or bad
    `x_calib`; `CompressionError` for a failed stage when `throw=True`.

    ```python
    import equinox as eqx, jax.numpy as jnp, jax.random as jr, jaxlump
    mlp = eqx.nn.MLP(3, 2, 16, 2, activation=jnp.tanh, key=jr.key(0))
    x = jr.normal(jr.key(1), (256, 3))
    small, info = jaxlump.lump_then_select(mlp, x, 0.5, eps=0.3)
    assert max(info.widths_after.tolist()[1:-1]) <= 8
    ```
    """
    sparsity = check_sparsity(sparsity, model)
    chain, x, damping, candidates, throw = _prepare(model, x_calib, merge, damping, candidates, throw, ridge)
    lumped, lump_info = lump(model, x, eps, discrepancy=discrepancy, ridge=ridge, certify_ode=False, throw=False)
    if not bool(lump_info.result == RESULTS.successful):  # nothing to select on: report the lumping's failure
        knob = jnp.asarray(knob_number(sparsity), jnp.result_type(float))
        info = dataclasses.replace(lump_info, method="lump_then_select", knob=knob)
        return raise_if_failed(info.result, lumped, throw, "jaxlump.lump_then_select"), info
    paths = layer_paths(to_chain(lumped), x, merge=bool(merge), damping=damping, candidates=candidates)
    return select_lumped(model, x, lump_info, paths, sparsity, ridge, throw)


def lump_then_select_to_widths(
    model,
    x_calib,
    hidden: tuple[int, ...],
    *,
    eps: float | None = None,
    discrepancy: AbstractDiscrepancy = Structural(),
    merge: bool = False,
    candidates: int | None = DEFAULT_CANDIDATES,
    damping: float = 1e-3,
    ridge: float = DEFAULT_RIDGE,
    throw: bool = True,
):
    """`lump_then_select` with each lumped layer's selection path cut where it reaches the width `hidden[l]` (one
    lumping, one path per layer); options as `lump_then_select`. With `eps` unset, the lumping's ε is its default
    0.5 lowered (bisected on the partitions alone) until no lumped layer is narrower than its target, so every layer
    is met exactly; a given `eps` that leaves a layer more than one neuron below its target is refused
    (`UnreachableTargetError`). Returns `(model, info)`, the per-layer sparsities and the ε used:
    `lump_then_select(model, x_calib, sparsities, eps=eps, ...)` gives the same result."""
    chain, x, damping, candidates, throw = _prepare(model, x_calib, merge, damping, candidates, throw, ridge)
    lower, eps = eps is None, 0.5 if eps is None else eps

    def lumping(eps):
        lumped, info = lump(model, x, eps, discrepancy=discrepancy, ridge=ridge, certify_ode=False, throw=False)
        return lumped, info, [int(w) for w in info.widths_after[1:-1]]

    lumped, lump_info, lumped_widths = lumping(eps)
    if lower and any(m < w for m, w in zip(lumped_widths, hidden)):
        widths_at = widths_at_layer_eps(model, x, discrepancy=discrepancy)
        low, high = 0.0, eps  # ε = 0 merges exact equivalences only: as wide as lumping leaves any layer
        for _ in range(30):
            middle = (low + high) / 2
            wide = all(m >= w for m, w in zip(widths_at((middle,) * len(hidden)), hidden))
            low, high = (middle, high) if wide else (low, middle)
        eps = low
        lumped, lump_info, lumped_widths = lumping(eps)
    for l, (m, w) in enumerate(zip(lumped_widths, hidden)):
        if m < w - 1:
            raise UnreachableTargetError(
                f"`target`: lump_then_select lumps at eps={eps:g} first, which leaves hidden layer {l + 1} with {m} "
                f"neurons, below its target width {w}; pass a smaller `eps`, or none (the lumping's ε is then lowered "
                "until every layer is at least as wide as its target).",
                widths_dense_params((chain.widths[0], *lumped_widths, chain.widths[-1]), chain.use_bias),
            )
    sparsities = tuple(fraction_for(m, min(w, m)) for m, w in zip(lumped_widths, hidden))
    if not bool(lump_info.result == RESULTS.successful):  # nothing to select on: report the lumping's failure
        knob = jnp.asarray(jnp.nan, jnp.result_type(float))
        info = dataclasses.replace(lump_info, method="lump_then_select", knob=knob)
        return (raise_if_failed(info.result, lumped, throw, "jaxlump.lump_then_select"), info), sparsities, eps
    paths = layer_paths(to_chain(lumped), x, merge=bool(merge), damping=damping, candidates=candidates)
    return select_lumped(model, x, lump_info, paths, sparsities, ridge, throw), sparsities, float(eps)


def lump_then_select_widths(model, x_calib, hidden, search, **options):
    """`Compressor.to_widths` of `lump_then_select`: the lumped layers' paths cut at the widths, unless `search`
    asks for the knob search (a `knob_range` or `grow_upper`)."""
    if search["knob_range"] is not None or search["grow_upper"] is not None:
        return None
    result, sparsities, eps = lump_then_select_to_widths(model, x_calib, hidden, **options)
    return result, sparsities, (("eps", eps),)


def select_lumped(model, x, lump_info, paths, sparsity, ridge: float, throw: bool = True):
    """Steps 2–3 of `lump_then_select`, given the lumping's info and the lumped network's greedy paths.

    The composed partition (original → lumped → selected) is applied to the *original* network (merged blocks
    averaged in / summed out, removed neurons dropped) and reconstructed against it.
    """
    selection = [labels_after(p, steps_to_sparsity(p, layer_knob(sparsity, i))) for i, p in enumerate(paths)]
    partitions = [representatives(compose(s, np.asarray(p))) for s, p in zip(selection, lump_info.partitions)]
    result = combine(lump_info.result, paths_result(paths))
    return finish(model, x, partitions, "lump_then_select", sparsity, ridge, result, throw)


# fmt: off
register_compressor(Compressor("lump_then_select", lump_then_select, "sparsity", "fraction s ∈ [0, 1) of each *lumped* hidden layer's neurons removed by structured OBS after lumping at `eps` (default 0.5), then reconstructed against the original", structured=True, needs_data=True, per_layer=True, to_widths=lump_then_select_widths))  # noqa: E501
register_compressor(Compressor("merge_or_remove", merge_or_remove, "eps", "tolerance ε ≥ 0 on each layer's relative refit error: greedy refit-aware merges or removals stop before it is exceeded; larger ε, smaller model", structured=True, needs_data=True, knob_range=(0.0, 1.0), unbounded=True, to_size=merge_or_remove_to_size, to_widths=merge_or_remove_widths))  # noqa: E501
# fmt: on
