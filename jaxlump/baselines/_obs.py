"""Structured Optimal Brain Surgeon (ZipLM's greedy backward elimination), and the machinery every selection- or
merge-based structured baseline shares: per-layer Gram matrices, the layer loop (parallel or sequential), the
fixed-shape result, the shared reconstruction and the physical shrink.

For a hidden layer with centred calibration activations `A_c` (N × n), `H = A_cᵀA_c + λI` with
`λ = damping · mean(diag A_cᵀA_c)` (ZipLM's, SparseGPT's and OSSCAR's 1 %), and the next layer's weight `W` (m × n),
keeping the set `S` and refitting the next layer by least squares gives (reference §1.2)

    W̃_S = W_S + W_R H_RS H_SS⁻¹,    E(S) = tr(W_R [(H⁻¹)_RR]⁻¹ W_Rᵀ),

so every selector below only chooses `S`; the weights always come from the one shared reconstruction
(`jaxlump._reconstruction.reconstruct.reconstruct_chain`), which solves exactly this least-squares problem layer by
layer through the compressed network.

Failures are checked, not assumed (`info.result`, raised with `throw=True`), in pipeline order: the selection
(`RESULTS.selection_nonfinite` when the Gram matrices or scores that choose the neurons are NaN or inf — the
activations overflowed on the calibration data, so the choice means nothing; `RESULTS.selection_singular`
when OBS's `H⁻¹` does not exist, `damping=0` on rank-deficient activations), the merge or prune itself
(`RESULTS.nonfinite_result`), then the reconstruction (`RESULTS.least_squares_rank_deficient`,
`RESULTS.least_squares_nonfinite`).
"""

from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Float

from .._errors import RESULTS, check_bool, check_nonnegative, combine, finite_result, host_rows, raise_if_failed
from .._methods.base import Fractions, chain_and_data, check_sparsity, is_per_layer, knob_number, layer_knob
from .._methods.channels import ChannelRule
from .._methods.registry import NEURON_SPARSITY, Compressor, register_compressor
from .._methods.select import steps_to_sparsity
from .._model import from_chain
from .._model.network import DenseChain
from .._reconstruction.masked import shrink
from .._reconstruction.quotient import quotient
from .._reconstruction.reconstruct import DEFAULT_RIDGE, reconstruct_chain, result_status
from .._results.info import CompressionInfo, compression_info
from .._sites.compress import over_sites
from ._masks import check_flag

DEFAULT_DAMPING = 0.01

_quotient = eqx.filter_jit(quotient)
_reconstruct = eqx.filter_jit(reconstruct_chain)


@eqx.filter_jit
def _hidden(chain: DenseChain, x):
    return chain.forward(x)[1][1:-1]


def kept_count(n: int, sparsity: float) -> int:
    """Neurons a layer of `n` keeps at `sparsity` (the fraction removed): `n − int(n·s)`, as `structured_prune`."""
    return n - int(n * sparsity)


def centred_gram(a, damping: float = DEFAULT_DAMPING) -> np.ndarray:
    """`A_cᵀA_c + damping · mean(diag) · I` in float64 (`A_c`: the columns of `a` minus their means)."""
    a = host_rows(a).astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported by the callers' finiteness checks
        a = a - a.mean(axis=0)
        h = a.T @ a
        scale = float(np.mean(np.diag(h))) if h.size else 0.0
        return h + damping * (scale if scale > 0 else 1.0) * np.eye(h.shape[0])


def positive_definite(h: np.ndarray) -> bool:
    """Whether `h` is numerically positive definite: Cholesky of `D^{-1/2} h D^{-1/2}` (`D = diag h`) succeeds and the
    condition number it bounds from below, `(max L_ii / min L_ii)²`, times the unit round-off stays below 1/4 (the
    criterion of `jaxlump.reconstruct`)."""
    scale = np.sqrt(np.diag(h))
    if not np.all(scale > 0):
        return False
    try:
        pivots = np.diag(np.linalg.cholesky(h / np.outer(scale, scale)))
    except np.linalg.LinAlgError:
        return False
    return bool(pivots.min() > 0 and (pivots.max() / pivots.min()) ** 2 * np.finfo(np.float64).eps < 0.25)


def obs_removal_order(h: np.ndarray, w: np.ndarray, n_remove: int) -> np.ndarray:
    """ZipLM's greedy backward elimination: the indices removed, in order (DarwinLM `FastOBCStruct.step`).

    Each step removes `j* = argmin_j ‖W[:, j]‖² / (H⁻¹)_jj` over the survivors, then applies the OBS compensation
    `W ← W − W[:, j*] (H⁻¹)_{j*,:} / (H⁻¹)_{j*j*}` and the rank-1 downdate
    `H⁻¹ ← H⁻¹ − (H⁻¹)_{:,j*}(H⁻¹)_{j*,:} / (H⁻¹)_{j*j*}` (the inverse Gram of the survivors, padded with zeros);
    after every step `W` is the damped least-squares refit on the survivors. Ties go to the lower index. Raises
    `np.linalg.LinAlgError` when `h` is not numerically positive definite (`H⁻¹` does not exist).
    """
    h = np.asarray(h, np.float64)
    if not positive_definite(h):
        raise np.linalg.LinAlgError("the Gram matrix H is singular or too ill-conditioned for OBS's inverse")
    hinv = np.linalg.inv(h)
    w = np.array(w, np.float64)
    alive = np.ones(h.shape[0], bool)
    order = []
    for _ in range(n_remove):
        d = np.diag(hinv)
        score = np.where(alive, np.sum(w**2, axis=0) / np.where(alive, d, 1.0), np.inf)
        j = int(np.argmin(score))
        w -= np.outer(w[:, j] / hinv[j, j], hinv[j, :])
        w[:, j] = 0.0
        hinv -= np.outer(hinv[:, j], hinv[j, :]) / hinv[j, j]
        alive[j] = False
        order.append(j)
    return np.asarray(order, int)


def obs_select(h: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    """Keep mask of the `k` neurons greedy backward elimination leaves."""
    keep = np.ones(h.shape[0], bool)
    keep[obs_removal_order(h, w, h.shape[0] - k)] = False
    return keep


def pruning_labels(keep: np.ndarray) -> np.ndarray:
    """Representative labels of a pruning in the fixed-shape form: a kept neuron maps to itself, a removed to −1."""
    return np.where(np.asarray(keep, bool), np.arange(len(keep)), -1)


def identity_labels(chain: DenseChain) -> list[np.ndarray]:
    return [np.arange(n) for n in chain.widths[1:-1]]


def masked_quotient(chain: DenseChain, labels) -> DenseChain:
    """The fixed-shape merge/prune of `chain` (mean-in / sum-out; removed neurons zero), compiled once per shape."""
    return _quotient(chain, tuple(jnp.asarray(p) for p in labels), chain.widths[1:-1])


def masked_reconstruct(original: DenseChain, masked: DenseChain, x, labels, ridge: float):
    """The shared least-squares reconstruction of a fixed-shape result, compiled once per network shape.

    Returns `(chain, result)`: the solver's `RESULTS`, then the finiteness check of the result.
    """
    partitions = tuple(jnp.asarray(p) for p in labels)
    chain, result = _reconstruct(original, masked, x, partitions, ridge=jnp.asarray(ridge, original.weights[0].dtype))
    return chain, combine(result, result_status(chain))


def hidden_activations(chain: DenseChain, x) -> list[np.ndarray]:
    return [host_rows(a) for a in _hidden(chain, x)]


def selection_status(*arrays) -> RESULTS:
    """`RESULTS.selection_nonfinite` when the arrays that choose the neurons (Gram matrices, scores, activations)
    hold NaN or inf, else `successful`."""
    return finite_result(arrays, RESULTS.selection_nonfinite)


def select_layers(
    chain: DenseChain,
    x,
    selector: Callable[[np.ndarray, np.ndarray, int], np.ndarray],
    sparsity: Fractions,
    *,
    damping: float,
    sequential: bool,
    reconstruct: bool,
    ridge: float,
) -> tuple[list[np.ndarray], RESULTS]:
    """Per hidden layer, pruning labels from the keep mask `selector(H, W_next, k)` with `k = kept_count(n, s)`,
    and the selection's `RESULTS`.

    `sequential=False` (parallel): `H` from the original network's activations. `sequential=True`: layer `l`'s `H`
    comes from the network with layers `< l` already pruned (and, with `reconstruct`, refit against the original),
    as in ZipLM's and SparseGPT's sequential mode. A layer whose `H` is not finite keeps its first `k` neurons and
    the result is `RESULTS.selection_nonfinite`; one whose `H` the selector finds singular (`damping=0` on
    rank-deficient activations: it raises `LinAlgError`) is selected on `H` damped by `DEFAULT_DAMPING` instead and
    the result is `RESULTS.selection_singular`. A failed intermediate refit of the sequential mode (a rank-deficient
    or non-finite solve) is reported too: the later layers were selected on its activations.
    """
    labels, results = identity_labels(chain), []
    acts = hidden_activations(chain, x)
    for l in range(1, chain.n_layers):
        if sequential and l > 1:
            student = masked_quotient(chain, labels)
            if reconstruct:
                student, refit = masked_reconstruct(chain, student, x, labels, ridge)
                results.append(refit)  # a failed refit here would skew every later layer's selection
            acts = hidden_activations(student, x)
        n = chain.widths[l]
        k = kept_count(n, layer_knob(sparsity, l - 1))
        if k == n:
            continue
        h, w = centred_gram(acts[l - 1], damping), np.asarray(chain.weights[l])
        results.append(selection_status(h))
        if not np.all(np.isfinite(h)):
            keep = np.arange(n) < k
        else:
            try:
                keep = selector(h, w, k)
            except np.linalg.LinAlgError:
                keep = selector(centred_gram(acts[l - 1], DEFAULT_DAMPING), w, k)
                results.append(RESULTS.selection_singular)
        labels[l - 1] = pruning_labels(keep)
    return labels, combine(*results)


def finish(
    method: str,
    knob: Fractions,
    model,
    chain: DenseChain,
    x,
    labels,
    *,
    reconstruct: bool,
    ridge: float,
    masked: DenseChain | None = None,
    info_labels=None,
    selection: RESULTS = RESULTS.successful,
    throw: bool = False,
):
    """Reconstruct (optionally) and shrink a fixed-shape result into a physically smaller model and its info.

    `labels`: per hidden layer, every original neuron's representative (its own index when kept, −1 when removed,
    the block representative when merged) — the reconstruction's targets. `masked`: the fixed-shape chain (default:
    the mean-in / sum-out quotient under `labels`). `info_labels`: the partitions recorded in `info` (default
    `labels`). Keeping every neuron returns the model's parameters unchanged. `info.result` combines `selection`
    (the stage that chose `labels`), the finiteness of `masked` and the reconstruction's; with `throw` a failure
    raises a `CompressionError` naming its stage.
    """
    throw = check_bool(throw, "throw")
    labels = [np.asarray(p, int) for p in labels]
    unchanged = all(np.array_equal(p, np.arange(p.size)) for p in labels) and masked is None
    results = [selection]
    if unchanged:
        masked = chain
    else:
        masked = masked_quotient(chain, labels) if masked is None else masked
        results.append(result_status(masked))
        if reconstruct:
            masked, refit = masked_reconstruct(chain, masked, x, labels, ridge)
            results.append(refit)
    partitions = tuple(jnp.asarray(p) for p in (labels if info_labels is None else info_labels))
    method += "+reconstruct" if reconstruct and not unchanged else ""
    info = compression_info(
        method, knob_number(knob), chain, masked, partitions, structured=True, result=combine(*results), x=x
    )
    raise_if_failed(info.result, None, throw, f"jaxlump.baselines ({method})")
    if unchanged:  # immutable pytrees: the model itself is the unchanged result
        return model, info
    return shrink(from_chain(masked, like=model), info)


def prepare(model, x_calib, sparsity, damping, ridge, reconstruct, *, required: bool = True, why: str = ""):
    """Validate the shared arguments; returns `(chain, x, sparsity, damping, ridge)`."""
    sparsity = check_sparsity(sparsity, model)
    check_flag(reconstruct, "reconstruct")
    chain, x = chain_and_data(model, x_calib, required=required or reconstruct, why=why or "by this method")
    return chain, x, sparsity, check_nonnegative(damping, "damping"), check_nonnegative(ridge, "ridge")


def prune_by_selector(
    method: str, selector, model, x_calib, sparsity, *, sequential, damping, reconstruct, ridge, throw
):
    """A selection baseline once its own options are checked: `prepare`, `select_layers`, `finish`."""
    chain, x, sparsity, damping, ridge = prepare(model, x_calib, sparsity, damping, ridge, reconstruct)
    check_flag(sequential, "sequential")
    check_flag(throw, "throw")
    labels, selection = select_layers(
        chain, x, selector, sparsity, damping=damping, sequential=sequential, reconstruct=reconstruct, ridge=ridge
    )
    method += "_sequential" if sequential else ""
    options = dict(reconstruct=reconstruct, ridge=ridge, selection=selection, throw=throw)
    return finish(method, sparsity, model, chain, x, labels, **options)


def _cut_channels(sparsity, options: dict) -> ChannelRule:
    """How `obs_prune` cuts a channel site: group OBS (removals only), `int(n·s)` channels, the consumer refitted
    unless `reconstruct=False`; every channel site is cut on the model compressed so far (ZipLM's sequential mode)."""
    if is_per_layer(sparsity):
        raise ValueError(
            f"`sparsity` for a model with channel sites must be one fraction for every site; received {sparsity!r}."
        )
    fraction = float(check_sparsity(sparsity, None))
    check_bool(options["sequential"], "sequential")
    return ChannelRule(
        "obs_prune",
        fraction,
        lambda path, site: steps_to_sparsity(path, fraction),
        False,
        float(check_nonnegative(options["damping"], "damping", positive=True)),
        None,
        float(check_nonnegative(options["ridge"], "ridge")),
        refit=check_bool(options["reconstruct"], "reconstruct"),
        throw=check_bool(options["throw"], "throw"),
        limit=lambda site: (min(int(site.width * fraction), site.width - 1), None),
    )


@over_sites(channels=_cut_channels)
def obs_prune(
    model: Any,
    x_calib: Float[ArrayLike, "batch in"],
    sparsity: float | Sequence[float],
    *,
    sequential: bool = False,
    damping: float = DEFAULT_DAMPING,
    reconstruct: bool = True,
    ridge: float = DEFAULT_RIDGE,
    throw: bool = True,
) -> tuple[Any, CompressionInfo]:
    """Structured OBS: remove hidden neurons one at a time by the smallest refit-aware error (ZipLM).

    Per hidden layer `l`, with `H` the damped centred Gram of its calibration activations and `W` the next layer's
    weight, greedy backward elimination removes `j* = argmin_j ‖W[:, j]‖² / (H⁻¹)_jj`, updates `W` by the OBS
    compensation and `H⁻¹` by its closed-form rank-1 downdate, until `n_l − int(n_l·s)` neurons remain (module docs).

    **Arguments:**

    - `model`: an `eqx.nn.MLP`, `eqx.nn.Sequential`, `LumpedMLP` or NNX chain; not modified.
    - `x_calib`: calibration inputs `(batch, n_0)`.
    - `sparsity`: the fraction of each hidden layer's neurons removed, in `[0, 1)`, or one per hidden layer (as
      `structured_prune`).
    - `sequential`: compute each layer's `H` through the already-compressed network (ZipLM's sequential mode);
      default `False` (every layer from the original network's activations).
    - `damping`: the Gram damping relative to its mean diagonal (default 0.01, ZipLM's).
    - `reconstruct`: refit every layer with the shared least-squares reconstruction (default `True`: OBS's update
      *is* this refit); `False` keeps the surviving weights unchanged (selection alone).
    - `ridge`: the reconstruction's ridge (see `jaxlump.reconstruct`).
    - `throw`: raise a `jaxlump.CompressionError` naming the failed stage (default); `False` returns the result with
      `info.result` set instead (module docs: NaN/inf or singular Gram matrices, a non-finite result, a
      failed refit).

    **Returns:** `(new_model, info)`, physically smaller; `info.partitions` maps kept neurons to their new index and
    removed ones to −1, `info.knob` is `sparsity` (NaN when given per layer).

    **Raises:** `ValueError` for a sparsity outside `[0, 1)`, a negative `damping`/`ridge`, or missing, non-finite or
    wrongly sized `x_calib`; `TypeError` for an unsupported model; `CompressionError` for a failed stage when
    `throw=True`.

    ```python
    import equinox as eqx, jax.numpy as jnp, jax.random as jr
    from jaxlump.baselines import obs_prune

    mlp = eqx.nn.MLP(3, 2, 8, 2, activation=jnp.tanh, key=jr.key(0))
    x = jr.normal(jr.key(1), (64, 3))
    small, info = obs_prune(mlp, x, 0.5)
    assert info.widths_after.tolist() == [3, 4, 4, 2]
    ```

    Kurtic, Frantar, Alistarh, *ZipLM: Inference-Aware Structured Pruning of Language Models*, NeurIPS 2023;
    Frantar & Alistarh, *Optimal Brain Compression*, NeurIPS 2022.
    """
    options = dict(sequential=sequential, damping=damping, reconstruct=reconstruct, ridge=ridge, throw=throw)
    return prune_by_selector("obs_prune", obs_select, model, x_calib, sparsity, **options)


# fmt: off
register_compressor(Compressor("obs_prune", obs_prune, "sparsity", NEURON_SPARSITY + ", one at a time by the smallest refit-aware error (structured OBS, ZipLM), then reconstructed", structured=True, needs_data=True, per_layer=True))  # noqa: E501
# fmt: on
