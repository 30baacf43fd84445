"""Sites whose units are *groups* of the consumer's input columns, each cut on its own by the greedy group path.

Channel sites: a convolution's output channels → an elementwise activation → the next convolution, or a flatten
and a `Linear`. A channel is the `k_h·k_w` columns of the next convolution's unfolded input that read it, or its
`H·W` columns of the flattened vector.

A channel site is compressed on its own (the sites around it share its layers: the producer's input channels and
the consumer's outputs belong to the neighbouring sites), on the model compressed so far: the producer's output is
captured on the calibration batch, the greedy group path (`jaxlump._methods.group_greedy`) chooses which channels
go or merge, and the result is built as a quotient — merged channels' filters and biases averaged (mean-in), the
consumer's column groups summed (sum-out) — whose consumer is then refitted against the dense site's output by the
shared least-squares solve (`jaxlump._reconstruction.reconstruct.solve_layer`).

Head sites: a multi-head attention module (`jaxlump._sites.heads`); a head is the output projection's `vo_size`
columns that read its output. Heads are removed, or merged only with a head whose output coincides with theirs on
the data (a head's output is not linear in its projections' rows, so no other merge is exact); a merged group keeps
its first head's projections and the sum of its members' output columns; the output projection is then refitted on
the kept heads' outputs, which removing other heads leaves unchanged.
"""

import dataclasses
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._criteria.gram import batch_rows_for, fold_batches, row_batches
from .._criteria.merge_cost import unit_activation
from .._errors import RESULTS, combine, finite_result, raise_if_failed
from .._reconstruction.masked import compact
from .._reconstruction.reconstruct import solve_layer
from .._results.accounting import Cost
from .._results.info import Certificate, CompressionInfo
from .._sites import pooling
from .._sites.heads import attention_type_of
from .._sites.layers import Family, layer_type_of, node_at
from .._sites.norms import norm_type_of
from .._sites.site import Site, capture_heads, capture_site
from .group_greedy import GroupProblem, group_path


@dataclasses.dataclass(frozen=True)
class ChannelRule:
    """How a compressor cuts a site of channels or heads: the path's options, how many of its steps to take
    (`steps(path, site) -> int`) and how far it need be computed (`limit(site) -> (max_steps, stop_above)`, either
    `None`: see `group_path`), with the method's name and knob for the info."""

    method: str
    knob: object
    steps: Callable
    merge: bool
    damping: float
    candidates: int | None
    ridge: float
    refit: bool = True
    throw: bool = True
    limit: Callable = lambda site: (None, None)

    def cut(self, site: Site, model, family: Family, x_calib):
        """`(new model, info)`: `model` with `site` cut (`compress_channel_site`, `compress_head_site`)."""
        return GROUP_CUTS[site.unit](site, model, family, x_calib, self)


@dataclasses.dataclass(frozen=True)
class _Unfold:
    """A convolution's reading of one channel's map `(B, *spatial)`: its unfolded rows `(B·positions, k_h·k_w)`,
    the kernel's positions in the weight's order. Compared by value, so that compiled group paths are reused."""

    kernel_size: tuple
    stride: tuple
    padding: tuple | str
    dilation: tuple
    input_dilation: tuple

    def __call__(self, a):
        patches = jax.lax.conv_general_dilated_patches(
            a[:, None],
            filter_shape=self.kernel_size,
            window_strides=self.stride,
            padding=self.padding,
            lhs_dilation=self.input_dilation,
            rhs_dilation=self.dilation,
        )  # (B, k_h·k_w, *out_spatial)
        return jnp.moveaxis(patches, 1, -1).reshape(-1, patches.shape[1])


def _flatten(a):
    """A `Linear`'s reading of one channel's map after a flatten: `(B, H·W)`."""
    return a.reshape(a.shape[0], -1)


def _as_rows(a):
    """An output projection's reading of one head's output rows `(N, vo_size)`: as they are."""
    return a


@dataclasses.dataclass(frozen=True)
class _Pooled:
    """A reading of one channel's map after the site's pooling of it (`jaxlump._sites.pooling`)."""

    steps: tuple
    reading: Callable

    def __call__(self, a):
        return self.reading(pooling.apply(self.steps, a))


def _consumer_reading(site: Site, consumer, channels_last: bool = False):
    """`(features, weights by unit)`: how the consumer reads one channel's activated map `(B, *spatial)` — its
    rows `(R, g)`, after the site's pooling — and its weight as `(out, channels, g)`. `channels_last`: whether a
    flattened producer output had its channel axis last (a `Linear` then reads channel `c` at every `width`-th
    column)."""
    layer_type = layer_type_of(consumer)
    weight = layer_type.read(consumer)[0]
    if site.flattened is None:
        reading, weights = _Unfold(*layer_type.window(consumer)), weight.reshape(weight.shape[0], weight.shape[1], -1)
    elif channels_last:
        reading, weights = _flatten, jnp.swapaxes(weight.reshape(weight.shape[0], -1, site.width), 1, 2)
    else:
        reading, weights = _flatten, weight.reshape(weight.shape[0], site.width, -1)
    return (_Pooled(site.pooling, reading) if site.pooling else reading), weights


def _consumer_weight(site: Site, w, width: int, kernel: tuple, channels_last: bool):
    """The refitted consumer weight `(out, width·g)` (channel-major) in the consumer's own layout."""
    if site.flattened is None:
        return w.reshape((w.shape[0], width) + kernel)
    if channels_last:
        return jnp.swapaxes(w.reshape(w.shape[0], width, -1), 1, 2).reshape(w.shape[0], -1)
    return w


def _with_channels(shape: tuple, width: int, channels_last: bool) -> tuple:
    """An input shape `(1, C, *spatial)` or `(1, *spatial, C)` with `width` channels."""
    return (*shape[:-1], width) if channels_last else (shape[0], width, *shape[2:])


def _site_cost(pairs) -> Cost:
    """Parameters and FLOPs per example of the site's layers, given as `(layer, its input shape for one example
    with the batch axis first)`."""
    arrays = [a for layer, _ in pairs for a in jax.tree_util.tree_leaves(layer) if eqx.is_inexact_array(a)]
    params = sum(int(np.size(a)) for a in arrays)
    nonzeros = sum(int(np.count_nonzero(np.asarray(a))) for a in arrays)
    flops = sum(layer_type_of(layer).flops(layer, shape) for layer, shape in pairs)
    return Cost(jnp.asarray(params), jnp.asarray(nonzeros), jnp.asarray(flops))


def _better(paths: list, site: Site, rule: ChannelRule):
    """`(path, steps)`: of `paths`, the one that takes the most of the rule's steps, then the one whose refit error
    after them is lowest (the first on a tie)."""

    def rank(path):
        steps = int(rule.steps(path, site))
        return -steps, float(path.cumulative[steps - 1]) if steps else 0.0

    best = min(paths, key=rank)
    return best, -rank(best)[0]


def _path(site: Site, z, features, weights, use_bias: bool, rule: ChannelRule, linear: bool = True) -> np.ndarray:
    """The site's labels after the rule's steps of its group path (computed in float64). With merges, the greedy
    path that may merge and the one that only removes are both computed and the better one is taken: a greedy
    path with more moves to choose from can still end worse, and removals alone cost a fraction of the time.
    `linear`: whether the producer is linear in its rows, so that units other than duplicates may merge (mean-in)."""
    with jax.enable_x64(True):
        problem = GroupProblem(
            jnp.moveaxis(jnp.asarray(z, jnp.float64), 1, 0),
            jnp.asarray(weights, jnp.float64),
            features,
            site.activation,
            use_bias,
            float(jnp.finfo(z.dtype).eps),  # the pre-activations were computed in the model's dtype
            linear,
        )
        max_steps, stop_above = rule.limit(site)
        options = dict(damping=rule.damping, candidates=rule.candidates, max_steps=max_steps, stop_above=stop_above)
        paths = [group_path(problem, merge=merge, **options) for merge in ((True, False) if rule.merge else (False,))]
    path, steps = _better(paths, site, rule)
    return path.labels_after(steps)


def _refit(site: Site, z, merged_pre, features, weights, prior, bias, use_bias: bool, rule: ChannelRule):
    """The consumer refitted on the quotient's channels against the dense site's output, streamed over batches of
    examples (`solve_layer`, the shared reconstruction); with `rule.refit=False` the summed columns as they are.
    Returns `(weight (out, k·g), bias, result, max |Δ|, RMS Δ)` on the calibration rows.

    The solve has the site's full width whatever `k` (the missing channels are zero, off the refit's support, and
    their weights come out exactly zero): one compilation per site for every width it is cut to."""
    width = merged_pre.shape[0]
    examples = z.shape[0]
    rows_per_example = features(z[:1, 0]).shape[0]
    per_batch = batch_rows_for(examples, rows_per_example * 2 * site.width * site.group)
    index, valid = row_batches(jnp.arange(examples)[:, None], per_batch)  # padding repeats example 0, not valid
    missing = site.width - width
    merged_pre = jnp.concatenate([merged_pre, jnp.zeros((missing, *merged_pre.shape[1:]), merged_pre.dtype)])
    prior = jnp.concatenate([prior, jnp.zeros((prior.shape[0], missing, *prior.shape[2:]), prior.dtype)], axis=1)
    batches = (jnp.moveaxis(merged_pre, 0, 1)[index[..., 0]], z[index[..., 0]])
    valid = jnp.repeat(valid, rows_per_example, axis=1)
    flat_prior = prior.reshape(prior.shape[0], -1)
    live = jnp.arange(flat_prior.shape[1]) < width * (flat_prior.shape[1] // site.width)
    reading = _Reading(site.activation, features, use_bias, rule.refit, rule.ridge)
    w, b, solved, worst, rms = _solve(reading, batches, valid, weights, flat_prior, bias, live)
    return w[:, : width * (flat_prior.shape[1] // site.width)], b, solved, worst, rms


@dataclasses.dataclass(frozen=True)
class _Reading:
    """What `_solve` compiles for (compared by value, so that a compiled solve is reused)."""

    activation: str
    features: Callable
    use_bias: bool
    refit: bool
    ridge: float


@eqx.filter_jit
def _solve(reading: _Reading, batches, valid, weights, prior, bias, live_columns):
    def rows(batch):
        merged, original = batch
        act = unit_activation(reading.activation, False, merged, 1)
        a = jnp.concatenate([reading.features(act[:, u]) for u in range(merged.shape[1])], axis=1)
        full = unit_activation(reading.activation, False, original, 1)
        t = sum(reading.features(full[:, u]) @ weights[:, u].T for u in range(original.shape[1])) + bias
        return a, t

    if reading.refit:
        support = jnp.broadcast_to(live_columns, prior.shape)
        live = jnp.ones(prior.shape[0], bool)
        w, b, solved = solve_layer(
            rows, batches, valid, prior, bias, support, live, reading.use_bias, reading.ridge, False
        )
    else:
        w, b, solved = prior, bias, RESULTS.successful

    def deviation(total, batch, ok):
        a, t = rows(batch)
        error = jnp.where(ok[:, None], jnp.abs(a @ w.T + b - t), 0.0)
        return jnp.maximum(total[0], jnp.max(error)), total[1] + jnp.sum(error**2)

    worst, squares = fold_batches(deviation, (jnp.zeros(()), jnp.zeros(())), batches, valid)
    return w, b, solved, worst, jnp.sqrt(squares / (jnp.sum(valid) * w.shape[0]))


def compress_channel_site(site: Site, model, family: Family, x_calib, rule: ChannelRule):
    """`(new model, info)`: `model` with the producer and consumer of channel site `site` rebuilt (and its
    normalisation, when it has one) with the channels the rule's path keeps, and a `CompressionInfo` whose widths
    are `(producer inputs, channels, consumer outputs)`."""
    producer_path, consumer_path = site.keys[0], site.keys[-1]
    producer, consumer = node_at(model, producer_path), node_at(model, consumer_path)
    z, producer_in, consumer_in = capture_site(model, family, site, x_calib)
    norm = None if site.norm_key is None else node_at(model, site.norm_key)
    if norm is not None:  # the path sees the normalised pre-activations
        affine = s, t = norm_type_of(norm).affine(norm)
        per_channel = (1, -1) + (1,) * (z.ndim - 2)
        z = z * s.reshape(per_channel).astype(z.dtype) + t.reshape(per_channel).astype(z.dtype)
    channels_last = layer_type_of(producer).channels_last
    features, weights = _consumer_reading(site, consumer, channels_last)
    p_weight, p_bias, _ = layer_type_of(producer).read(producer)
    c_weight, c_bias, use_bias = layer_type_of(consumer).read(consumer)
    labels, width = compact(_path(site, z, features, weights, use_bias, rule))
    labels = np.asarray(labels)
    members = np.zeros((width, site.width))
    members[labels[labels >= 0], np.flatnonzero(labels >= 0)] = 1.0
    mean_in = jnp.asarray(members / members.sum(axis=1, keepdims=True), z.dtype)  # merged filters: their mean
    prior = jnp.einsum("ocg,kc->okg", weights, jnp.asarray(members, weights.dtype))  # their columns: the sum
    merged_pre = jnp.tensordot(mean_in, jnp.moveaxis(z, 1, 0), 1)  # the quotient producer's output, (k, B, ...)
    w, b, solved, worst, rms = _refit(site, z, merged_pre, features, weights, prior, c_bias, use_bias, rule)

    replacements = {}
    rows = mean_in
    if norm is not None:
        rows, replacements[site.norm_key] = _folded(norm, affine, members, mean_in)
    new_producer = layer_type_of(producer).rebuild(
        producer, jnp.tensordot(rows, p_weight, 1).astype(p_weight.dtype), (rows @ p_bias).astype(p_bias.dtype)
    )
    new_weight = _consumer_weight(site, w, width, c_weight.shape[2:], channels_last)
    new_consumer = layer_type_of(consumer).rebuild(consumer, new_weight.astype(c_weight.dtype), b.astype(c_bias.dtype))
    widths_before = (int(p_weight.shape[1]), site.width, int(c_weight.shape[0]))
    if site.flattened is None:
        shrunk_in = _with_channels(consumer_in, width, layer_type_of(consumer).channels_last)
    else:
        shrunk_in = (*consumer_in[:-1], width * site.group)
    costs = (
        _site_cost(((producer, producer_in), (consumer, consumer_in))),
        _site_cost(((new_producer, producer_in), (new_consumer, shrunk_in))),
    )
    info = _info(rule, labels, widths_before, width, costs, solved, worst, rms)
    replacements |= {producer_path: new_producer, consumer_path: new_consumer}
    return family.replace(model, replacements), info


def _folded(norm, affine: tuple, members: np.ndarray, mean_in):
    """`(producer rows (k, C), new norm)`: a normalisation with the per-channel affine map `affine = (s, t)` after a
    producer whose channels are merged by `mean_in` (`jaxlump._sites.norms`): each group keeps the statistics of its
    member with the largest `|s|`; its producer row is `Σ_c m_c (s_c / s_f) row_c` and its shift `Σ_c m_c t_c`, so
    that its output is the mean of the members' normalised outputs, and a channel alone is kept exactly as it was."""
    s, t = affine
    keep = np.argmax(members * np.abs(np.asarray(s))[None, :], axis=1)
    s_keep = s[keep][:, None]
    ratio = jnp.where(s_keep != 0, s[None, :] / jnp.where(s_keep != 0, s_keep, 1), 0)
    ratio = ratio.at[np.arange(len(keep)), keep].set(1)  # exactly: XLA's division need not give s / s = 1
    rows = mean_in * ratio.astype(mean_in.dtype)
    return rows, norm_type_of(norm).rebuild(norm, keep, (mean_in @ t.astype(mean_in.dtype) - t[keep]).astype(t.dtype))


def _info(rule: ChannelRule, labels, widths_before: tuple, width: int, costs: tuple, solved, worst, rms):
    """The site's `CompressionInfo` (widths `(producer inputs, units, consumer outputs)`), raising a failure when
    the rule throws."""
    result = combine(solved, finite_result((worst, rms), RESULTS.output_nonfinite))
    info = CompressionInfo(
        rule.method,
        True,
        jnp.asarray(rule.knob, jnp.float32) if np.ndim(rule.knob) == 0 else jnp.asarray(np.nan, jnp.float32),
        (jnp.asarray(labels, jnp.int32),),
        None,
        widths_before,
        jnp.asarray([widths_before[0], width, widths_before[2]]),
        *costs,
        Certificate(worst, rms, jnp.full_like(rms, jnp.nan), jnp.full_like(rms, jnp.nan)),
        result,
    )
    raise_if_failed(result, None, rule.throw, f"jaxlump.{rule.method}")
    return info


def _kept_rows(layer, heads: int, keep):
    """`layer` (a projection whose output is `heads` blocks of rows) with only the blocks `keep`."""
    weight, bias, _ = layer_type_of(layer).read(layer)
    size = weight.shape[0] // heads
    rows = (np.asarray(keep)[:, None] * size + np.arange(size)).ravel()
    return layer_type_of(layer).rebuild(layer, weight[rows], bias[rows])


def compress_head_site(site: Site, model, family: Family, x_calib, rule: ChannelRule):
    """`(new model, info)`: `model` with the attention module of head site `site` rebuilt with the heads the rule's
    path keeps, and a `CompressionInfo` whose widths are `(query size, heads, output size)` (KV heads with grouped
    queries: each keeps or loses its query heads with it)."""
    module_path = site.keys[-1][:-1]
    module = node_at(model, module_path)
    kind = attention_type_of(module)
    query, key, value, output = (getattr(module, name) for name in kind.projections)
    rows, shapes = capture_heads(model, family, site, x_calib)
    z = rows.reshape(rows.shape[0], site.width, site.group)  # (N, units, query heads per unit · vo_size)
    o_weight, o_bias, use_bias = layer_type_of(output).read(output)
    weights = o_weight.reshape(o_weight.shape[0], site.width, site.group)

    labels, width = compact(_path(site, z, _as_rows, weights, use_bias, rule, linear=False))
    labels = np.asarray(labels)
    members = np.zeros((width, site.width))
    members[labels[labels >= 0], np.flatnonzero(labels >= 0)] = 1.0
    first = members.argmax(axis=1)  # each merged group keeps its first head
    prior = jnp.einsum("ohg,kh->okg", weights, jnp.asarray(members, weights.dtype))
    kept = jnp.moveaxis(z[:, first], 1, 0)
    w, b, solved, worst, rms = _refit(site, z, kept, _as_rows, weights, prior, o_bias, use_bias, rule)
    projections = (
        *(_kept_rows(layer, site.width, first) for layer in (query, key, value)),
        layer_type_of(output).rebuild(output, w.astype(o_weight.dtype), b.astype(o_bias.dtype)),
    )
    shrunk = kind.rebuild(module, projections, width)
    widths_before = (int(shapes[0][-1]), site.width, int(o_weight.shape[0]))
    layers = zip((query, key, value, output), shapes)
    small = zip(projections, (*shapes[:3], (*shapes[3][:-1], width * site.group)))
    info = _info(
        rule, labels, widths_before, width, (_site_cost(tuple(layers)), _site_cost(tuple(small))), solved, worst, rms
    )
    return kind.put(model, module_path, shrunk), info


GROUP_CUTS = {"channel": compress_channel_site, "head": compress_head_site}  # how each kind of grouped site is cut
