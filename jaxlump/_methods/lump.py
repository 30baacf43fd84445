"""`lump` and `lump_masked`: wire discrepancy → refinement → quotient → refit → certificate."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._criteria.discrepancy import AbstractDiscrepancy, Structural
from .._criteria.refinement import AbstractRefinement, Representative, check_refinement
from .._errors import (
    RESULTS,
    check_bool,
    check_data,
    check_eps,
    check_nonnegative,
    combine,
    finite_result,
    raise_if_failed,
)
from .._model import from_chain, to_chain
from .._model.network import DenseChain
from .._reconstruction.masked import shrink
from .._reconstruction.quotient import quotient
from .._reconstruction.reconstruct import DEFAULT_RIDGE, reconstruct_chain
from .._results.certificate import certify
from .._results.info import Certificate, compression_info
from .._sites.compress import over_sites
from .registry import Compressor, register_compressor


def live_neurons(chain: DenseChain) -> list[jax.Array]:
    """Per hidden layer, the neurons whose output reaches the network's output.

    A neuron whose outgoing column is exactly zero (on the next layer's live neurons) contributes nothing, so it
    can be removed exactly at any ε; swept from the output side, so whole dead chains go (but for one block per
    layer: see `partition_with_result`).
    """
    live, alive = [], jnp.ones(chain.widths[-1], bool)
    for w in reversed(chain.weights[1:]):
        alive = jnp.any((w != 0) & alive[:, None], axis=0)
        live.append(alive)
    return live[::-1]


def partition_with_result(
    chain: DenseChain, x, eps, discrepancy: AbstractDiscrepancy, refinement: AbstractRefinement, eps_max=None
):
    """Representative labels per hidden layer (`-1`: removed), swept from the input side, and the stages'
    `RESULTS`: the discrepancy's preparation (a failed ODE solve leaves inf in the trajectories) and the distances.

    `eps_max ≥ eps` (default `eps`) bounds the ε the distances must answer for: a sweep passes its largest ε,
    so the work that does not depend on ε (the first layer's distances) is shared by the whole grid.
    `eps` (and `eps_max`) may also hold one ε per hidden layer (shape `(L − 1,)`; `compress_to`'s widths targets).
    """
    eps_max = eps if eps_max is None else eps_max
    # ∞ marks pairs never related; ε is capped so that even ε = ∞ does not relate them.
    eps = jnp.minimum(eps, jnp.finfo(chain.weights[0].dtype).max)
    prepared = discrepancy.prepare(chain, x)
    labels, previous, distance_results = [], jnp.arange(chain.widths[0], dtype=jnp.int32), []
    for l, live in enumerate(live_neurons(chain), start=1):
        eps_l, eps_max_l = (e[l - 1] if jnp.ndim(e) else e for e in (eps, eps_max))
        # A removed neuron's outgoing weights to live neurons are zero, so any block may hold it.
        distances = discrepancy.layer_within(chain, prepared, l, jnp.maximum(previous, 0), eps_max_l)
        distance_results.append(finite_result(distances.relative, RESULTS.refinement_nonfinite))
        relative = jnp.where(live[:, None] & live[None, :], distances.relative, jnp.inf)
        previous = jnp.where(live, refinement(relative, eps_l, distances.importance), -1)
        # A layer none of whose neurons reaches the output (all-zero weights) is kept as one block, neuron 0 its
        # representative, rather than emptied: it contributes nothing either way, and no layer has zero width.
        previous = jnp.where(jnp.any(live), previous, 0)
        labels.append(previous)
    return tuple(labels), combine(finite_result(prepared, RESULTS.ode_solve_failed), *distance_results)


@eqx.filter_jit
def partition(
    chain: DenseChain, x, eps, discrepancy: AbstractDiscrepancy, refinement: AbstractRefinement, eps_max=None
):
    """The labels of `partition_with_result`."""
    return partition_with_result(chain, x, eps, discrepancy, refinement, eps_max)[0]


def lump_chain_unjitted(
    original: DenseChain,
    x,
    eps,
    discrepancy,
    refinement: AbstractRefinement,
    refit: bool,
    ridge,
    certify_ode: bool,
    eps_max=None,
    knob=None,
):
    """The fixed-shape core on canonical chains, ε traced (`eps_max`: see `partition_with_result`; `knob`: the
    `info.knob` recorded, default `eps`, which must then be one ε for every layer)."""
    partitions, partition_result = partition_with_result(original, x, eps, discrepancy, refinement, eps_max)
    reduced = quotient(original, partitions, original.widths[1:-1])
    results = [partition_result, finite_result(reduced, RESULTS.nonfinite_result)]
    if refit and x is not None:
        reduced, refit_result = reconstruct_chain(original, reduced, x, partitions, ridge=ridge)
        results.append(refit_result)
    if x is None:
        nan = jnp.asarray(jnp.nan, original.weights[0].dtype)
        certificate = Certificate(nan, nan, nan, nan)
    else:
        certificate, certificate_result = certify(original, reduced, partitions, x, simulate_ode=certify_ode)
        results.append(certificate_result)
    knob = eps if knob is None else knob
    info = compression_info(
        "lump", knob, original, reduced, partitions, structured=True, result=combine(*results), x=x,
        certificate=certificate,
    )  # fmt: skip
    return reduced, info


# Compiled once per network shape. `jaxlump.sweep` traces the unjitted core itself, inside its own vmap.
lump_chain = eqx.filter_jit(lump_chain_unjitted)


def check_lump_options(discrepancy, refinement, ridge) -> float:
    """Refuse a discrepancy or refinement that is not a jaxlump strategy object and a bad ridge; the ridge."""
    if not isinstance(discrepancy, AbstractDiscrepancy):
        raise TypeError(
            f"`discrepancy` must be a jaxlump discrepancy (jaxlump.Structural() or jaxlump.Dynamical()); "
            f"received {type(discrepancy).__name__}."
        )
    check_refinement(refinement)
    return check_nonnegative(ridge, "ridge")


def _prepare(model, x_calib, eps, discrepancy, refinement, ridge):
    chain = to_chain(model)
    ridge = check_lump_options(discrepancy, refinement, ridge)
    x = None if x_calib is None else check_data(x_calib, "x_calib", width=chain.widths[0])
    if x is None and discrepancy.needs_data:
        raise ValueError(f"`x_calib` is required by the {type(discrepancy).__name__} discrepancy; received None.")
    return chain, x, check_eps(eps), jnp.asarray(ridge, chain.weights[0].dtype)


@over_sites
def lump(
    model,
    x_calib,
    eps,
    *,
    discrepancy: AbstractDiscrepancy = Structural(),
    refinement: AbstractRefinement = Representative(),
    reconstruct: bool = True,
    ridge: float = DEFAULT_RIDGE,
    certify_ode: bool = True,
    throw: bool = True,
):
    """Compress `model` by lumping neurons whose dynamics coincide up to ε (AFDE).

    Neurons m, m′ of one hidden layer are related when `d(m, m′) ≤ ε · scale_l` (see `Structural`,
    `Dynamical`); a refinement groups them, the forward quotient merges each group into one neuron
    (incoming weights: the members' mean; outgoing: their sum), and the optional refit re-solves every
    layer by least squares on the calibration data. ε = 0 is exact.

    **Arguments:**

    - `model`: an `eqx.nn.MLP`, `eqx.nn.Sequential` of `Linear` + activations, `LumpedMLP` or
      `flax.nnx.Sequential` (tanh, sigmoid, identity, ReLU, leaky ReLU, softplus, SiLU, GELU, ELU, CELU, SELU).
    - `x_calib`: calibration inputs `(batch, n_in)`, or `None` for the data-free structural criterion
      (then the result is the pure quotient and the certificate is NaN).
    - `eps`: the tolerance ε ≥ 0, relative to each layer's scale.
    - `discrepancy`: `Structural()` (default, data-free) or `Dynamical(...)` (simulated trajectories).
    - `refinement`: how a layer's neurons are grouped at ε: `jaxlump.Representative()` (default, smooth in ε) or
      `jaxlump.Components()` (ERODE's, monotone).
    - `reconstruct`: re-solve the reduced layers by least squares (`jaxlump.reconstruct`); default `True`.
    - `ridge`: the refit's ridge, relative to the Gram diagonal, pulling towards the quotient.
    - `certify_ode`: also simulate both ODE encodings for the certificate (32 inputs, 11 times).
    - `throw`: raise a `jaxlump.CompressionError` naming the failed stage (the model's own forward pass on
      `x_calib`, ODE solve, refinement, quotient, least-squares refit, the result's outputs, certificate); `False`
      returns the result with `info.result` set instead.

    **Returns:** `(smaller_model, info)`: a model of the same kind (an `eqx.nn.MLP` whose hidden widths
    become unequal comes back as a `LumpedMLP`) and a `CompressionInfo` with per-layer partitions and
    widths, costs before/after and the `Certificate`. The input model is not modified.

    **Raises:** `ValueError`/`TypeError` for ε < 0 or NaN, NaN/inf weights or data, a calibration set
    of the wrong width or empty, an unsupported module or activation.

    ```python
    import equinox as eqx, jax.numpy as jnp, jax.random as jr, jaxlump
    mlp = eqx.nn.MLP(3, 2, 16, 2, activation=jnp.tanh, key=jr.key(0))
    x = jr.normal(jr.key(1), (256, 3))
    small, info = jaxlump.lump(mlp, x, 0.5)
    print(info.widths_after, float(info.certificate.output_max_abs))
    assert info.widths_after.tolist()[1] < 16  # neurons were merged
    assert float(info.certificate.output_max_abs) <= float(info.certificate.a_priori_bound)
    ```

    Reference: Dhiman, Passarella, Tribastone, Valerio, *Neural Network Compression by Approximate
    Differential Equivalence*, arXiv 2606.01402 (2026).
    """
    masked, info = lump_masked(
        model,
        x_calib,
        eps,
        discrepancy=discrepancy,
        refinement=refinement,
        reconstruct=reconstruct,
        ridge=ridge,
        certify_ode=certify_ode,
        throw=False,
    )
    small, info = shrink(masked, info)
    raise_if_failed(info.result, None, check_bool(throw, "throw"), "jaxlump.lump")
    return small, info


@over_sites(fixed_shape=True)
def lump_masked(
    model,
    x_calib,
    eps,
    *,
    discrepancy: AbstractDiscrepancy = Structural(),
    refinement: AbstractRefinement = Representative(),
    reconstruct: bool = True,
    ridge: float = DEFAULT_RIDGE,
    certify_ode: bool = False,
    throw: bool = True,
):
    """`lump` with fixed shapes: works under `jax.jit` and `eqx.filter_vmap` (plain `jax.vmap` cannot return a
    model that holds its activation functions); for a grid of ε, `jaxlump.sweep` does it in one compiled call.

    Each block sits at its representative's index: the merged neuron's incoming row and bias are
    stored there, its members' outgoing columns are folded into the representative's column, and every
    other neuron's row, bias and outgoing column are zero. `info.partitions` holds the representative
    labels; `jaxlump.shrink(model, info)` (outside jit) removes the dead neurons and gives the same
    outputs as `lump`. Arguments as `lump`; `certify_ode` defaults to `False` (simulation is costly
    inside a training step). A model of sites comes back as its own class at its original shapes, with a
    `jaxlump.SitesInfo` (one fixed-shape `CompressionInfo` per segment); it also runs under `jax.jit`.

    ```python
    import equinox as eqx, jax, jax.numpy as jnp, jax.random as jr, jaxlump
    mlp = eqx.nn.MLP(3, 2, 16, 2, activation=jnp.tanh, key=jr.key(0))
    x = jr.normal(jr.key(1), (256, 3))
    step = eqx.filter_jit(lambda m, e: jaxlump.lump_masked(m, x, e))
    masked, info = step(mlp, jnp.asarray(0.3))
    small, small_info = jaxlump.shrink(masked, info)
    assert small_info.widths_after.tolist() == info.widths_after.tolist()  # the live neurons, now physically
    ```
    """
    chain, x, eps, ridge = _prepare(model, x_calib, eps, discrepancy, refinement, ridge)
    refit, certify_ode = check_bool(reconstruct, "reconstruct"), check_bool(certify_ode, "certify_ode")
    reduced, info = lump_chain(chain, x, eps, discrepancy, refinement, refit, ridge, certify_ode)
    reduced = raise_if_failed(info.result, reduced, check_bool(throw, "throw"), "jaxlump.lump_masked")
    return from_chain(reduced, like=model), info


def lump_per_layer(
    model,
    x_calib,
    layer_eps,
    *,
    discrepancy: AbstractDiscrepancy = Structural(),
    refinement: AbstractRefinement = Representative(),
    reconstruct: bool = True,
    ridge: float = DEFAULT_RIDGE,
    certify_ode: bool = True,
    throw: bool = True,
):
    """`lump` with one ε per hidden layer (`layer_eps`, each ≥ 0), options as `lump`: how
    `jaxlump.baselines.compress_to` reaches a widths target. Layer l's partition depends on ε_1 … ε_l only (the
    layers are refined from the input side). `info.knob` is NaN: no one ε produced the result."""
    chain, x, _, ridge = _prepare(model, x_calib, 0.0, discrepancy, refinement, ridge)
    eps = _layer_eps(layer_eps, chain)
    refit, certify_ode = check_bool(reconstruct, "reconstruct"), check_bool(certify_ode, "certify_ode")
    nan = jnp.full((), jnp.nan, eps.dtype)
    reduced, info = lump_chain(chain, x, eps, discrepancy, refinement, refit, ridge, certify_ode, None, nan)
    small, info = shrink(from_chain(reduced, like=model), info)
    raise_if_failed(info.result, None, check_bool(throw, "throw"), "jaxlump.lump")
    return small, info


def widths_at_layer_eps(
    model,
    x_calib,
    *,
    discrepancy: AbstractDiscrepancy = Structural(),
    refinement: AbstractRefinement = Representative(),
    **_,
):
    """A function from one ε per hidden layer to the hidden widths `lump_per_layer` gives there, from the partitions
    alone (one compilation, no refit): the search of `compress_to`'s widths targets. Other options are ignored."""
    chain, x, _, _ = _prepare(model, x_calib, 0.0, discrepancy, refinement, 0.0)

    def widths(layer_eps) -> tuple[int, ...]:
        labels = partition(chain, x, _layer_eps(layer_eps, chain), discrepancy, refinement)
        return tuple(int(np.unique(p[p >= 0]).size) for p in map(np.asarray, labels))

    return widths


def layer_search(model, x_calib, **options):
    """`Compressor.layer_search` of `lump`: the widths at per-layer ε from the partitions alone, and
    `lump_per_layer` at the ε chosen."""
    return widths_at_layer_eps(model, x_calib, **options), functools.partial(lump_per_layer, model, x_calib, **options)


def _layer_eps(layer_eps, chain: DenseChain) -> jax.Array:
    if np.ndim(layer_eps) != 1 or len(layer_eps) != chain.n_layers - 1:
        raise ValueError(
            f"`layer_eps` must hold one ε per hidden layer ({chain.n_layers - 1}); received {layer_eps!r}."
        )
    eps = [check_eps(e, f"layer_eps[{i}]") for i, e in enumerate(layer_eps)]
    return jnp.stack(eps).astype(chain.weights[0].dtype)


# fmt: off
register_compressor(Compressor("lump", lump, "eps", "relative tolerance ε ≥ 0 of the neuron discrepancy; ε = 0 merges only exact equivalences, larger ε merges more (the size is not strictly monotone in ε)", structured=True, needs_data=False, knob_range=(0.0, 1.0), unbounded=True, layer_search=layer_search))  # noqa: E501
# fmt: on
