"""Fixed-shape (masked) results and `shrink`, which turns them into physically smaller models."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import PyTree

from .._errors import RESULTS, require_concrete
from .._model import from_chain, to_chain
from .._model.network import DenseChain
from .._results.accounting import chain_cost
from .._results.info import CompressionInfo, check_partitions, live_masks, live_widths
from .._sites.compress import SitesInfo, nonzero_count, rebuild, segment_chain, segments
from .._sites.layers import family_of


def live_neurons(labels) -> np.ndarray:
    """Indices of the compressed neurons something maps to (concrete labels only)."""
    labels = np.asarray(labels)
    return np.flatnonzero(np.bincount(labels[labels >= 0], minlength=labels.shape[0]) > 0)


def compact(labels) -> tuple[jnp.ndarray, int]:
    """Relabel to `0..k-1` in the order of the live indices (removed neurons stay -1)."""
    labels = np.asarray(labels)
    live = live_neurons(labels)
    position = np.full(max(labels.max(initial=-1) + 1, 1), -1)
    position[live] = np.arange(live.size)
    return jnp.asarray(np.where(labels >= 0, position[np.maximum(labels, 0)], -1)), int(live.size)


def gather_live(chain: DenseChain, live: list[np.ndarray]) -> DenseChain:
    """Keep only the live neurons (`live[l]`: indices for every layer, input and output included)."""
    # NumPy: shapes change here, and eager JAX gathers would compile once per new shape.

    def rows(w, l):
        return None if w is None else jnp.asarray(np.asarray(w)[np.ix_(live[l + 1], live[l])])

    def entries(b, l):
        return None if b is None else jnp.asarray(np.asarray(b)[live[l + 1]])

    weights = tuple(rows(w, l) for l, w in enumerate(chain.weights))
    biases = tuple(entries(b, l) for l, b in enumerate(chain.biases))
    gate_weights = tuple(rows(g, l) for l, g in enumerate(chain.gate_weights))
    gate_biases = tuple(entries(g, l) for l, g in enumerate(chain.gate_biases))
    return DenseChain(weights, biases, chain.activations, chain.use_bias, gate_weights, gate_biases)


def neuron_masks(chain: DenseChain, partitions) -> DenseChain:
    """A chain of 1/0 masks: 1 on the weights and biases of live neurons (inputs and outputs always live; a gated
    layer's gate masked as its up projection)."""
    widths = chain.widths
    live = [jnp.ones(widths[0], bool), *live_masks(widths[1:-1], partitions), jnp.ones(widths[-1], bool)]
    weights = tuple((live[l + 1][:, None] & live[l][None, :]).astype(w.dtype) for l, w in enumerate(chain.weights))
    biases = tuple(live[l + 1].astype(b.dtype) for l, b in enumerate(chain.biases))
    gate_weights = tuple(None if g is None else weights[l] for l, g in enumerate(chain.gate_weights))
    gate_biases = tuple(None if g is None else biases[l] for l, g in enumerate(chain.gate_biases))
    return DenseChain(weights, biases, chain.activations, chain.use_bias, gate_weights, gate_biases)


def held_info(tree) -> CompressionInfo | SitesInfo:
    """The one `CompressionInfo` or `SitesInfo` in `tree`: `tree` itself, or the one a `jaxlump.wrap_optax` state holds
    (in Flax's `nnx.Optimizer` its arrays sit in `OptState` variables: their values are read)."""
    kinds = (CompressionInfo, SitesInfo)
    if isinstance(tree, kinds):
        return tree
    found = [s for s in jtu.tree_leaves(tree, is_leaf=lambda s: isinstance(s, kinds)) if isinstance(s, kinds)]
    if len(found) != 1:
        raise TypeError(
            f"`info` must be a jaxlump.CompressionInfo, a jaxlump.SitesInfo or the state of a jaxlump.wrap_optax "
            f"optimizer; the object given ({type(tree).__name__}) holds {len(found)} such records."
        )
    return jtu.tree_map(
        lambda v: v.get_value() if hasattr(v, "get_value") else v, found[0], is_leaf=lambda v: hasattr(v, "get_value")
    )


def dead_weights(model, info: CompressionInfo) -> str:
    """Where neurons that `info` marks dead carry finite non-zero parameters (`"layer l: count non-zero, max |w| =
    …"`, joined by `; `), or `""`. NaN/inf are not counted: a failed solve leaves them everywhere, the dead
    neurons' weights included, and they say nothing about which model `info` came from."""
    chain = to_chain(model, require_finite=False)
    masks = neuron_masks(chain, tuple(np.asarray(p) for p in info.partitions))
    found = []
    for l, (w, b, mw, mb) in enumerate(zip(chain.weights, chain.biases, masks.weights, masks.biases)):
        dead = [np.asarray(w)[np.asarray(mw) == 0], np.asarray(b)[np.asarray(mb) == 0]]
        if chain.gated[l]:  # a gated unit's gate row and bias die with it
            gate, gate_bias = chain.gate_weights[l], chain.gate_biases[l]
            dead += [np.asarray(gate)[np.asarray(mw) == 0], np.asarray(gate_bias)[np.asarray(mb) == 0]]
        dead = np.concatenate(dead)
        carried = dead[np.isfinite(dead) & (dead != 0)]
        if carried.size:
            found.append(f"layer {l}: {carried.size} non-zero, max |w| = {np.max(np.abs(carried)):.3g}")
    return "; ".join(found)


def shrink(model, info: CompressionInfo | PyTree):  # PyTree: a `wrap_optax` optimizer state
    """Remove the neurons a fixed-shape result no longer uses; outside `jax.jit`.

    Neuron `r` of a hidden layer is live when some original neuron maps to it in
    `info.partitions`; everything else is dropped, so the model is physically smaller and gives the
    same outputs. Unstructured results (every neuron live) come back unchanged in shape.

    **Arguments:**

    - `model`: a fixed-shape result, e.g. from `jaxlump.lump_masked` or one slice of `jaxlump.sweep`.
    - `info`: its `CompressionInfo`, or the optimizer state of `jaxlump.wrap_optax` (which holds the
      composed one; then `shrink` first checks that the dead neurons carry no weight). For a model of sites, its
      `SitesInfo`: every segment of sites is shrunk with its own info and rebuilt smaller in the model's class.

    **Returns:** `(smaller_model, info)` with the partitions relabelled to the new indices.

    **Raises:** `TypeError` when called on traced values (inside `jax.jit`); `ValueError` when `info`
    does not fit `model` (depth, input/output widths, every partition's length, dtype and label range,
    the weight masks' shapes), for a stacked info, when neurons that `info` (or a `wrap_optax` state)
    marks dead carry non-zero weights (the info of another model, e.g. of the original unmasked one), or when the
    model holds NaN/inf although `info.result` reports success.

    ```python
    import equinox as eqx, jax.random as jr, jaxlump
    mlp = eqx.nn.MLP(2, 1, 8, 2, key=jr.key(0))
    masked, info = jaxlump.lump_masked(mlp, None, 0.5)
    small, small_info = jaxlump.shrink(masked, info)
    assert int(jaxlump.cost(small).dense_params) == int(small_info.cost_after.dense_params)
    ```
    """
    from_state = not isinstance(info, (CompressionInfo, SitesInfo))
    info = held_info(info)
    if isinstance(info, SitesInfo):
        return _shrink_sites(model, info, from_state)
    require_concrete(
        "jaxlump.shrink",
        "it removes neurons, so the result's shapes depend on the values.",
        "Inside jit keep the fixed-shape form (e.g. `jaxlump.lump_masked`) and shrink once outside.",
        model=eqx.filter(model, eqx.is_array),
        info=info,
    )
    chain = to_chain(model, require_finite=False)  # a failed refit is reported in info.result, not refused here
    small, new_info = _shrink_chain(chain, info, from_state)
    return from_chain(small, like=model), new_info


def _shrink_sites(model, info: SitesInfo, from_state: bool):
    """`shrink` for a model compressed site by site in the fixed-shape form: every segment's chain shrunk with its
    own `CompressionInfo`, its layers rebuilt smaller in the user's class. An unstructured result (masks on its
    layers, every unit live) comes back as it is."""
    if info.layers:
        return model, info
    require_concrete(
        "jaxlump.shrink",
        "it removes units, so the result's shapes depend on the values.",
        "Inside jit keep the fixed-shape form (e.g. `jaxlump.lump_masked`) and shrink once outside.",
        model=family_of(model).arrays(model),
        info=info,
    )
    chains = []
    for segment in segments(info.sites):  # every segment's layers are looked up before any is shrunk
        try:
            chains.append(segment_chain(model, segment))
        except (AttributeError, IndexError, KeyError, TypeError) as error:
            raise ValueError(
                f"`info` describes sites at {[s.path for s in segment.sites]}, which `model` "
                f"({type(model).__name__}) does not hold ({type(error).__name__}: {error}): is `info` from another "
                "model?"
            ) from error
    replacements, infos = {}, []
    for number, (segment, chain, segment_info) in enumerate(zip(segments(info.sites), chains, info.segments)):
        try:
            small, small_info = _shrink_chain(chain, segment_info, from_state)
        except ValueError as error:
            raise ValueError(f"segment {number} ({', '.join(s.path for s in segment.sites)}): {error}") from error
        replacements.update(rebuild(model, segment, small))
        infos.append(small_info)
    family = family_of(model)
    small_model = family.replace(model, replacements)
    return small_model, dataclasses.replace(info, segments=tuple(infos), nonzeros_after=nonzero_count(small_model))


def _shrink_chain(chain: DenseChain, info: CompressionInfo, from_state: bool) -> tuple[DenseChain, CompressionInfo]:
    """The chain without the neurons `info` marks dead, and `info` relabelled (see `shrink`)."""
    if np.ndim(info.knob) != 0:
        raise ValueError(
            f"`info` is stacked (knob of shape {np.shape(info.knob)}, e.g. from a vmapped sweep); shrink one "
            "result at a time (select it first, e.g. `sweep.at(i)`)."
        )
    widths, before = chain.widths, tuple(info.widths_before)
    if len(widths) != len(before) or widths[0] != before[0] or widths[-1] != before[-1]:
        raise ValueError(
            f"`info` describes a model of widths {before} but `model` has widths {widths}: depth, input and output "
            "widths must match (is `info` from another model?)."
        )
    check_partitions(info.partitions, before, widths, "info.partitions")
    if info.weight_masks is not None:
        shapes = [tuple(np.shape(m)) for m in info.weight_masks]
        if shapes != [tuple(w.shape) for w in chain.weights]:
            raise ValueError(
                f"`info.weight_masks` have shapes {shapes}; `model`'s weights have {[w.shape for w in chain.weights]}."
            )
    where = dead_weights(chain, info)
    if where and from_state:
        raise ValueError(
            f"`model` has non-zero parameters on neurons the optimizer state marks dead ({where}); shrinking would "
            "drop them. Were these parameters updated outside the wrapped optimizer, or paired with another state?"
        )
    if where:
        raise ValueError(
            f"`model` has non-zero parameters on neurons `info` marks dead ({where}), so `info` does not describe "
            "this fixed-shape model: pass the model that came with it (e.g. lump_masked's first output, not the "
            "original model or another one); shrinking would drop those weights and change its outputs."
        )
    successful = bool(np.all(np.asarray(info.result == RESULTS.successful)))
    if successful and not all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree_util.tree_leaves(chain)):
        raise ValueError(
            "`model` holds NaN or inf weights or biases although `info.result` reports success: `info` does not "
            "describe this model, or its weights were changed since (e.g. a diverged training). A failed compression "
            "is shrunk as it is, with `info.result` saying why."
        )
    hidden = [compact(p) for p in info.partitions]
    live = [np.arange(widths[0])] + [live_neurons(p) for p in info.partitions] + [np.arange(widths[-1])]
    small = gather_live(chain, live)
    masks = info.weight_masks
    if masks is not None:
        masks = tuple(jnp.asarray(np.asarray(m)[np.ix_(live[l + 1], live[l])]) for l, m in enumerate(masks))
    new_info = CompressionInfo(
        method=info.method,
        structured=info.structured,
        knob=info.knob,
        partitions=tuple(labels for labels, _ in hidden),
        weight_masks=masks,
        widths_before=info.widths_before,
        widths_after=live_widths(small.widths, tuple(labels for labels, _ in hidden)),
        cost_before=info.cost_before,
        cost_after=chain_cost(small),
        certificate=info.certificate,
        result=info.result,
    )
    return small, new_info
