"""Channel sites: a convolution's output channels → an elementwise activation → the next convolution, or a flatten
and a `Linear`. A channel is a *group* of the consumer's input columns: the `k_h·k_w` columns of the next
convolution's unfolded input that read it, or its `H·W` columns of the flattened vector.

A channel site is compressed on its own (the sites around it share its layers: the producer's input channels and
the consumer's outputs belong to the neighbouring sites), on the model compressed so far: the producer's output is
captured on the calibration batch, the greedy group path (`jaxlump._methods.group_greedy`) chooses which channels
go or merge, and the result is built as a quotient — merged channels' filters and biases averaged (mean-in), the
consumer's column groups summed (sum-out) — whose consumer is then refitted against the dense site's output by the
shared least-squares solve (`jaxlump._reconstruction.reconstruct.solve_layer`).
"""

import dataclasses
import inspect
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._criteria.gram import batch_rows_for, fold_batches, row_batches
from .._criteria.merge_cost import unit_activation
from .._errors import RESULTS, check_bool, check_nonnegative, combine, finite_result, raise_if_failed
from .._methods.group_greedy import GroupProblem, group_path
from .._reconstruction.masked import compact
from .._reconstruction.reconstruct import solve_layer
from .._results.accounting import Cost
from .._results.info import Certificate, CompressionInfo
from .layers import Family, layer_type_of
from .site import Site, capture_site


@dataclasses.dataclass(frozen=True)
class ChannelRule:
    """How a compressor cuts a channel site: the path's options and how many of its steps to take
    (`steps(path, site) -> int`), with the method's name and knob for the info."""

    method: str
    knob: object
    steps: Callable
    merge: bool
    damping: float
    candidates: int | None
    ridge: float
    refit: bool = True
    throw: bool = True


def _options(name: str, options: dict) -> dict:
    """The compressor's keyword options with `options` applied (its own defaults otherwise); unknown ones refused."""
    from .._methods.registry import compressors

    parameters = inspect.signature(compressors()[name].function).parameters
    accepted = {k: p.default for k, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(
            f"jaxlump.{name} has no option {', '.join(map(repr, unknown))}; its options: {sorted(accepted)}."
        )
    return accepted | options


def _merge_or_remove_rule(options: dict) -> dict:
    """`merge_or_remove` on channels: the exact greedy over channels (merges allowed unless `merge=False`)."""
    from .._methods.greedy import check_candidates

    o = _options("merge_or_remove", options)
    if o["path"] is not None:
        raise ValueError(f"`path`: channel sites take the exact greedy over channels; received {o['path']!r}.")
    return dict(
        merge=check_bool(o["merge"], "merge"),
        damping=float(check_nonnegative(o["damping"], "damping", positive=True)),
        candidates=check_candidates(o["candidates"]),
        ridge=float(check_nonnegative(o["ridge"], "ridge")),
        throw=check_bool(o["throw"], "throw"),
    )


def _obs_prune_rule(options: dict) -> dict:
    """`obs_prune` on channels: group OBS, removals only, the consumer refitted unless `reconstruct=False`."""
    o = _options("obs_prune", options)
    check_bool(o["sequential"], "sequential")  # a channel site is always cut on the model compressed so far
    return dict(
        merge=False,
        damping=float(check_nonnegative(o["damping"], "damping", positive=True)),
        candidates=None,
        ridge=float(check_nonnegative(o["ridge"], "ridge")),
        refit=check_bool(o["reconstruct"], "reconstruct"),
        throw=check_bool(o["throw"], "throw"),
    )


CHANNEL_RULES: dict[str, Callable[[dict], dict]] = {
    "merge_or_remove": _merge_or_remove_rule,
    "obs_prune": _obs_prune_rule,
}


def register_channel_rule(name: str, rule: Callable[[dict], dict]) -> None:
    """Let the registered compressor `name` cut channel sites: `rule(options)` checks its options and returns the
    `ChannelRule` fields `merge`, `damping`, `candidates`, `ridge` (and optionally `refit`, `throw`)."""
    CHANNEL_RULES[name] = rule


def channel_rule(method, options: dict, steps: Callable) -> ChannelRule | None:
    """The `ChannelRule` of the compressor `method` (a name or the function) with `options`, cutting each site
    after `steps(path, site)` operations; `None` when the method cannot cut channel sites."""
    name = method if isinstance(method, str) else getattr(method, "__name__", str(method))
    if name not in CHANNEL_RULES:
        return None
    return ChannelRule(name, float("nan"), steps, **CHANNEL_RULES[name](options))


def _layer(model, path):
    node = model
    for key in path:
        node = node[key] if isinstance(key, int) else getattr(node, key)
    return node


def _consumer_reading(site: Site, consumer):
    """`(features, weights by unit)`: how the consumer reads one channel's map `(B, *spatial)` — its rows `(R, g)`
    — and its weight as `(out, channels, g)`."""
    weight = layer_type_of(consumer).read(consumer)[0]
    if site.flattened is not None:
        return (lambda a: a.reshape(a.shape[0], -1)), weight.reshape(weight.shape[0], site.width, -1)

    def unfold(a):
        patches = jax.lax.conv_general_dilated_patches(
            a[:, None],
            filter_shape=consumer.kernel_size,
            window_strides=consumer.stride,
            padding=consumer.padding,
            rhs_dilation=consumer.dilation,
        )  # (B, k_h·k_w, *out_spatial), the kernel's positions in the weight's order
        return jnp.moveaxis(patches, 1, -1).reshape(-1, patches.shape[1])

    return unfold, weight.reshape(weight.shape[0], weight.shape[1], -1)


def _site_cost(producer, consumer, producer_shape, consumer_shape) -> Cost:
    """Parameters and FLOPs per example of the site's two layers (inputs of one example, batch axis first)."""
    arrays = [a for layer in (producer, consumer) for a in jax.tree_util.tree_leaves(layer) if eqx.is_inexact_array(a)]
    params = sum(int(np.size(a)) for a in arrays)
    nonzeros = sum(int(np.count_nonzero(np.asarray(a))) for a in arrays)
    pairs = ((producer, producer_shape), (consumer, consumer_shape))
    flops = sum(layer_type_of(layer).flops(layer, shape) for layer, shape in pairs)
    return Cost(jnp.asarray(params), jnp.asarray(nonzeros), jnp.asarray(flops))


def compress_channel_site(site: Site, model, family: Family, x_calib, rule: ChannelRule):
    """`(replacements, info)`: new producer and consumer layers by path for `site` of `model`, and a
    `CompressionInfo` whose widths are `(producer inputs, channels, consumer outputs)`."""
    producer_path, consumer_path = site.keys[0], site.keys[-1]
    producer, consumer = _layer(model, producer_path), _layer(model, consumer_path)
    z, producer_in, consumer_in = capture_site(model, family, site, x_calib)
    features, weights = _consumer_reading(site, consumer)
    use_bias = layer_type_of(consumer).read(consumer)[2]
    with jax.enable_x64(True):
        pre64 = jnp.moveaxis(jnp.asarray(z, jnp.float64), 1, 0)
        problem = GroupProblem(
            pre64,
            jnp.asarray(weights, jnp.float64),
            features,
            site.activation,
            use_bias,
            float(jnp.finfo(z.dtype).eps),  # the pre-activations were computed in the model's dtype
        )
        path = group_path(problem, merge=rule.merge, damping=rule.damping, candidates=rule.candidates)
    steps = int(rule.steps(path, site))
    labels, width = compact(path.labels_after(steps))
    labels = np.asarray(labels)
    members = np.zeros((width, site.width))
    members[labels[labels >= 0], np.flatnonzero(labels >= 0)] = 1.0
    mean_in = jnp.asarray(members / members.sum(axis=1, keepdims=True), z.dtype)

    p_weight, p_bias, _ = layer_type_of(producer).read(producer)
    c_weight, c_bias, _ = layer_type_of(consumer).read(consumer)
    new_producer = layer_type_of(producer).rebuild(
        producer, jnp.tensordot(mean_in, p_weight, 1).astype(p_weight.dtype), (mean_in @ p_bias).astype(p_bias.dtype)
    )
    prior = jnp.einsum("ocg,kc->okg", weights, jnp.asarray(members, weights.dtype))  # sum-out
    merged_pre = jnp.tensordot(mean_in, jnp.moveaxis(z, 1, 0), 1)  # the quotient producer's output, (k, B, ...)

    def rows(batch):
        """The quotient's consumer inputs and the dense site's consumer outputs on a batch of examples."""
        merged, original = batch
        act = unit_activation(site.activation, False, merged, 1)
        a = jnp.concatenate([features(act[:, u]) for u in range(width)], axis=1)
        full = unit_activation(site.activation, False, original, 1)
        t = sum(features(full[:, u]) @ weights[:, u].T for u in range(site.width)) + c_bias
        return a, t

    examples = z.shape[0]
    rows_per_example = features(z[:1, 0]).shape[0]
    per_batch = batch_rows_for(examples, rows_per_example * (width + site.width) * site.group)
    merged_examples = jnp.moveaxis(merged_pre, 0, 1)
    batches, valid = row_batches(jnp.arange(examples)[:, None], per_batch)
    batches = (merged_examples[batches[..., 0]], z[batches[..., 0]])  # padded rows repeat example 0; `valid` drops them
    valid = jnp.repeat(valid, rows_per_example, axis=1)
    w, b, solved = (
        (prior.reshape(prior.shape[0], -1), c_bias, RESULTS.successful)
        if not rule.refit
        else solve_layer(
            rows,
            batches,
            valid,
            prior.reshape(prior.shape[0], -1),
            c_bias,
            jnp.ones((prior.shape[0], prior.shape[1] * prior.shape[2]), bool),
            jnp.ones(prior.shape[0], bool),
            use_bias,
            rule.ridge,
            per_row=False,
        )
    )

    def deviation(total, batch, ok):
        a, t = rows(batch)
        error = jnp.where(ok[:, None], jnp.abs(a @ w.T + b - t), 0.0)
        return jnp.maximum(total[0], jnp.max(error)), total[1] + jnp.sum(error**2)

    worst, squares = fold_batches(deviation, (jnp.zeros(()), jnp.zeros(())), batches, valid)
    new_weight = w.reshape((w.shape[0], width) + c_weight.shape[2:]) if site.flattened is None else w
    new_consumer = layer_type_of(consumer).rebuild(consumer, new_weight.astype(c_weight.dtype), b.astype(c_bias.dtype))

    rms = jnp.sqrt(squares / (jnp.sum(valid) * w.shape[0]))
    result = combine(solved, finite_result((worst, rms), RESULTS.output_nonfinite))
    widths_before = (int(p_weight.shape[1]), site.width, int(c_weight.shape[0]))
    shrunk_in = (1, width) + tuple(consumer_in[2:]) if site.flattened is None else (1, width * site.group)
    info = CompressionInfo(
        rule.method,
        True,
        jnp.asarray(rule.knob, jnp.float32) if np.ndim(rule.knob) == 0 else jnp.asarray(np.nan, jnp.float32),
        (jnp.asarray(labels, jnp.int32),),
        None,
        widths_before,
        jnp.asarray([widths_before[0], width, widths_before[2]]),
        _site_cost(producer, consumer, producer_in, consumer_in),
        _site_cost(new_producer, new_consumer, producer_in, shrunk_in),
        Certificate(worst, rms, jnp.full_like(rms, jnp.nan), jnp.full_like(rms, jnp.nan)),
        result,
    )
    raise_if_failed(result, None, rule.throw, f"jaxlump.{rule.method}")
    return {producer_path: new_producer, consumer_path: new_consumer}, info
