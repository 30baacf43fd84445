"""Compressing a model site by site: every compressor, on every segment of sites, with the one call shape.

A model that is itself a chain (`eqx.nn.MLP`, a `Sequential` of `Linear` layers and activations, a `DenseChain`)
is one segment whose input is the calibration batch: the compressor runs on it exactly as it always has. Any other
Equinox or NNX module is compressed segment by segment: the segment's input rows are captured on `x_calib`
(from the model compressed so far, or from the original with `independent=True`), the compressor runs on the
segment's `DenseChain` — so it is refitted against the dense segment's own outputs on those rows — and the
segment's layers are rebuilt smaller in the model.
"""

import dataclasses
import functools
import inspect

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._errors import RESULTS, UnreachableTargetError, check_bool, combine, finite_result, require_concrete
from .._methods.registry import compressors
from .._model import is_chain_kind
from .._model.network import DenseChain
from .._results.accounting import cost, model_flops
from .._results.info import Certificate
from .layers import Path, family_of, layer_type_of, node_at, path_name
from .site import Site, Sites, capture, example_of, selected_taps, sites, trace_program
from .trace import tapped_model


@dataclasses.dataclass(frozen=True)
class Segment:
    """Sites that share layers (the consumer of one is the producer of the next), as one chain.

    `layers[l]` is the path of the chain's layer l (the up projection for a gated unit), `gates[l]` the path of
    its gate projection or `None`, `activations[l]` the combine after it (`"identity"` after the last)."""

    sites: tuple[Site, ...]
    layers: tuple[Path, ...]
    gates: tuple[Path | None, ...]
    activations: tuple[str, ...]

    @property
    def grouped(self) -> bool:
        """Whether this is one site whose units are groups (channels, heads), compressed on its own, not as a
        chain."""
        return self.sites[0].unit != "neuron"


def segments(listed: Sites | tuple[Site, ...]) -> list[Segment]:
    """The sites (of a listing, or as a tuple) grouped into chains, in program order; a site of channels or heads is
    a segment of its own."""
    listed = listed.sites if isinstance(listed, Sites) else listed
    neurons = [s for s in listed if s.unit == "neuron"]
    by_producer = {s.keys[-2]: s for s in neurons if not s.gated}
    consumers = {s.keys[-1] for s in neurons}
    out = []
    for site in listed:
        if site.unit != "neuron":
            out.append(Segment((site,), site.keys, (None, None), (site.activation, "identity")))
            continue
        if not site.gated and site.keys[0] in consumers:
            continue  # continues the segment of the site before it
        chain, current = [site], site
        while current.keys[-1] in by_producer:
            current = by_producer[current.keys[-1]]
            chain.append(current)
        out.append(
            Segment(
                tuple(chain),
                (site.keys[-2], *(s.keys[-1] for s in chain)),
                (site.keys[0] if site.gated else None, *(None for _ in chain)),
                (*(s.activation for s in chain), "identity"),
            )
        )
    return out


def segment_chain(model, segment: Segment) -> DenseChain:
    """The segment's layers of `model` as a `DenseChain` (the gate of a gated unit included); a site of channels or
    heads is refused, as no chain of neurons."""
    if segment.grouped:
        site = segment.sites[0]
        raise TypeError(
            f"`model`'s site {site.path} is a {site.unit} site ({site.describe()}), not a chain of neurons, which "
            f"this function needs. {site.unit.capitalize()} sites are cut by `jaxlump.baselines.compress_to(model, "
            f"'merge_or_remove' or 'obs_prune', {{site path: {site.unit_name}}}, x_calib)`; select the other sites "
            "with `where`."
        )
    params = [_read(model, path) for path in segment.layers]
    gates = [None if g is None else _read(model, g) for g in segment.gates]
    gated = any(g is not None for g in gates)
    return DenseChain(
        tuple(p[0] for p in params),
        tuple(p[1] for p in params),
        segment.activations,
        tuple(p[2] for p in params),
        gate_weights=tuple(None if g is None else g[0] for g in gates) if gated else (),
        gate_biases=tuple(None if g is None else g[1] for g in gates) if gated else (),
    )


def _read(model, path: Path):
    layer = node_at(model, path)
    return layer_type_of(layer).read(layer)


def rebuild(model, segment: Segment, chain: DenseChain) -> dict[Path, object]:
    """New layers for `segment` holding `chain`'s parameters, by path."""
    new = {}
    for l, path in enumerate(segment.layers):
        layer = node_at(model, path)
        new[path] = layer_type_of(layer).rebuild(layer, chain.weights[l], chain.biases[l])
        if segment.gates[l] is not None:
            gate = node_at(model, segment.gates[l])
            new[segment.gates[l]] = layer_type_of(gate).rebuild(gate, chain.gate_weights[l], chain.gate_biases[l])
    return new


@dataclasses.dataclass(frozen=True)
class SiteChain:
    """One segment of a model's sites in canonical form: `sites` (their paths), `chain` (a `DenseChain` of the
    segment's layers) and `inputs` (its input rows on the calibration batch, `(N, width)`)."""

    sites: tuple[str, ...]
    chain: DenseChain
    inputs: jax.Array


def site_chains(model, x_calib, *, where=None) -> list[SiteChain]:
    """Every segment of `model`'s sites as the `DenseChain` the methods compress, with its input rows captured on
    the original model: what the chain-level tools take (`jaxlump.check_encoding`, `jaxlump.to_erode`,
    `jaxlump.simulate`), since a model of sites as a whole has no ODE encoding but each segment does.

    **Raises:** as `jaxlump.sites`; `ValueError` for a model without a site.

    ```python
    import equinox as eqx, jax, jax.numpy as jnp, jax.random as jr, jaxlump

    class FFN(eqx.Module):
        up: eqx.nn.Linear
        down: eqx.nn.Linear

        def __call__(self, x):
            return x + self.down(jnp.tanh(self.up(x)))

    k1, k2 = jr.split(jr.key(0))
    ffn = FFN(eqx.nn.Linear(4, 16, key=k1), eqx.nn.Linear(16, 4, key=k2))
    (segment,) = jaxlump.site_chains(ffn, jr.normal(jr.key(1), (8, 4)))
    check = jaxlump.check_encoding(segment.chain, segment.inputs)
    assert segment.sites == ("<model>",) and float(check.max_deviation) < 1e-4
    ```
    """
    listing = site_listing(model, x_calib, where, method="site_chains")
    chosen = segments(listing)
    rows = capture(model, family_of(model), site_taps(model, listing), x_calib)
    chains = [segment_chain(model, segment) for segment in chosen]
    return [
        SiteChain(tuple(site.path for site in segment.sites), chain, r.astype(chain.weights[0].dtype))
        for segment, chain, r in zip(chosen, chains, rows)
    ]


class SitesInfo(eqx.Module):
    """What a compressor did to a model compressed site by site.

    - `method`: the compressor's name; `knob`: its knob as given.
    - `sites`: the sites compressed (as found in the original model); `widths_before` and `widths_after`: their
      hidden widths, keyed by site path (`widths_after` counts live units: for a fixed-shape result, those that
      `jaxlump.shrink` keeps).
    - `params_before`, `params_after`: the whole model's parameter counts (every floating-point array;
      `params_after` after `jaxlump.shrink` for a fixed-shape result).
    - `flops_before`, `flops_after`: the whole model's dense FLOPs per example (its registered layers, each as often
      as the model calls it on one example of `x_calib`; see `jaxlump.cost`).
    - `nonzeros_before`, `nonzeros_after`: the non-zero entries of those arrays, counted on the models themselves:
      what an unstructured method (`magnitude`, `wanda`, ...) reduces, since it keeps every array's shape.
    - `segments`: the `CompressionInfo` of each segment of sites, in order (its certificate is the segment's own);
      for an unstructured method, of each `Linear` layer it masked, named in `layers` (paths, in program order).
    - `output_max_abs`, `output_rms`: the measured deviation of the whole model's output on `x_calib`.
    - `result`: the first failure of any segment, or of the whole model's output (NaN/inf), else `successful`.
    """

    method: str = eqx.field(static=True)
    knob: object
    sites: tuple[Site, ...] = eqx.field(static=True)
    widths_before: dict = eqx.field(static=True)
    params_before: int = eqx.field(static=True)
    flops_before: int = eqx.field(static=True)
    calls: tuple[int, ...] = eqx.field(static=True)  # per segment: its layers' calls per example
    segments: tuple
    output_max_abs: jax.Array
    output_rms: jax.Array
    result: RESULTS
    nonzeros_before: int | None = eqx.field(static=True, default=None)
    nonzeros_after: int | None = eqx.field(static=True, default=None)
    layers: tuple[str, ...] = eqx.field(static=True, default=())

    @property
    def widths_after(self) -> dict:
        """`{site path: live width}` (integers for a concrete result, arrays for a traced or stacked one)."""
        if self.layers:  # an unstructured result: every width kept
            return dict(self.widths_before)
        out = {}
        for segment, info in zip(segments(self.sites), self.segments):
            for i, site in enumerate(segment.sites, start=1):
                width = info.widths_after[..., i]
                out[site.path] = int(width) if _is_concrete_scalar(width) else width
        return out

    def _after(self, before: int, field: str, calls) -> int | jax.Array:
        saved = sum(
            n * (getattr(info.cost_before, field) - getattr(info.cost_after, field))
            for n, info in zip(calls, self.segments)
        )
        after = before - saved
        return int(after) if _is_concrete_scalar(after) else after

    @property
    def params_after(self):
        """The whole model's parameters after compression (after `jaxlump.shrink` for a fixed-shape result)."""
        return self._after(self.params_before, "dense_params", [1] * len(self.segments))

    @property
    def flops_after(self):
        """The whole model's dense FLOPs per example after compression (after `jaxlump.shrink` for a fixed-shape
        result)."""
        return self._after(self.flops_before, "flops", self.calls)

    @property
    def certificate(self) -> Certificate:
        """The measured deviation of the whole model's output as a `Certificate` (the ODE deviation and the
        a-priori bound are per segment, in `segments`: NaN here)."""
        nan = jnp.full_like(self.output_max_abs, jnp.nan)
        return Certificate(self.output_max_abs, self.output_rms, nan, nan)

    def describe(self) -> str:
        params_after = int(self.params_after)
        nonzeros = (
            f", {self.nonzeros_after:,} of {self.nonzeros_before:,} non-zero"
            if self.nonzeros_after is not None and params_after == self.params_before  # shapes kept
            else ""
        )
        lines = [
            f"{self.method}: {params_after:,} of {self.params_before:,} parameters "
            f"({params_after / max(self.params_before, 1):.1%}{nonzeros}); output max |Δ| "
            f"{float(self.output_max_abs):.3g} "
            f"(RMS {float(self.output_rms):.3g}) on the calibration data"
        ]
        after = self.widths_after
        units = {site.path: site.unit_name for site in self.sites}
        lines += [f"  {p}: {self.widths_before[p]} → {int(after[p])} {units[p]}" for p in self.widths_before]
        return "\n".join(lines)


def _is_concrete_scalar(value) -> bool:
    return not isinstance(value, jax.core.Tracer) and np.ndim(value) == 0


def parameter_count(model) -> int:
    return sum(int(np.size(a)) for a in family_of(model).arrays(model))


def nonzero_count(model) -> int | None:
    """The non-zero entries of the model's parameter arrays (`None` when they are traced)."""
    arrays = family_of(model).arrays(model)
    if any(isinstance(a, jax.core.Tracer) for a in arrays):
        return None
    return sum(int(np.count_nonzero(np.asarray(a))) for a in arrays)


def check_inputs(model, x_calib) -> None:
    """Refuse NaN/inf in `model`'s parameters (naming the array's path) and complex or non-finite `x_calib`
    leaves: they would reach the sites' rows, where the messages could only name the segment's chain."""
    family = family_of(model)
    for path, leaf in jax.tree_util.tree_flatten_with_path(family.state(model))[0]:
        if eqx.is_inexact_array(leaf) and not isinstance(leaf, jax.core.Tracer):
            bad = int(np.sum(~np.isfinite(np.asarray(leaf))))
            if bad:
                raise ValueError(
                    f"`model`'s array at `{jax.tree_util.keystr(path)}` contains {bad} NaN or inf value(s); only "
                    "finite parameters can be compressed."
                )
    for path, leaf in jax.tree_util.tree_flatten_with_path(x_calib)[0]:
        where = f" (at `{jax.tree_util.keystr(path)}`)" if path else ""
        if jnp.iscomplexobj(leaf):
            raise TypeError(
                f"`x_calib`{where} has complex dtype {jnp.result_type(leaf)}; the sites' activations must be real "
                "(their imaginary parts would be dropped), so pass real inputs."
            )
        if isinstance(leaf, jax.core.Tracer) or not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            continue
        bad = int(np.sum(~np.isfinite(np.asarray(leaf))))
        if bad:
            raise ValueError(
                f"`x_calib`{where} contains {bad} NaN or inf value(s); only finite calibration data is accepted."
            )


def site_listing(model, x_calib, where, *, groups: bool = False, method: str | None = None) -> Sites:
    """The sites to compress, or an error that says why there are none. Sites whose units are groups (channels,
    heads) are kept whole unless `groups`: only methods with a rule for them (`over_sites`'s `channels`) cut them;
    a model that has no other site is refused, naming `method`."""
    check_inputs(model, x_calib)
    listing = sites(model, x_calib, where=where)
    grouped = [s for s in listing.sites if s.unit != "neuron"]
    if grouped and not groups:
        listing = Sites(listing.family, tuple(s for s in listing.sites if s.unit == "neuron"), listing.left_out)
        if not listing.sites:
            _refuse_group_sites(grouped, method)
    if not listing.sites:
        reasons = (
            "; ".join(o.describe() for o in listing.left_out)
            or "no Linear feeds another through elementwise operations"
        )
        raise ValueError(
            f"`model` ({type(model).__name__}) has no site jaxlump can compress ({reasons}). See `jaxlump.sites`."
        )
    return listing


def compress_sites(
    per_segment,
    model,
    x_calib,
    *,
    method: str,
    knob,
    where=None,
    independent: bool = False,
    listing: Sites | None = None,
    channels=None,
):
    """`per_segment(segment, chain, rows) -> (chain, info)` applied to every segment of `model`'s sites in order
    (see the module docs); channel sites are cut by `channels` (`None`: the method cannot, and they are refused);
    `method` and `knob` are recorded in the `SitesInfo`."""
    family = family_of(model)
    listing = listing or site_listing(model, x_calib, where, groups=channels is not None, method=method)
    _check_channel_sites(listing, method, channels, independent)
    batch = jax.tree_util.tree_leaves(x_calib)[0].shape[0]
    current, infos, calls = model, [], []
    for segment, tap in zip(segments(listing), site_taps(model, listing)):
        if segment.grouped:
            current, info = channels.cut(segment.sites[0], current, family, x_calib)
            infos.append(info)
            calls.append(1)  # a grouped site's FLOPs are already per example
            continue
        source = model if independent else current
        (rows,) = capture(source, family, (tap,), x_calib)
        chain = segment_chain(model, segment)
        small, info = per_segment(segment, chain, rows.astype(chain.weights[0].dtype))
        current = family.replace(current, rebuild(model, segment, small))
        infos.append(info)
        calls.append(rows.shape[0] // batch)
    info = _sites_info(model, current, x_calib, listing, infos, calls, method, knob)
    return current, info


def channel_methods() -> list[str]:
    """The registered compressors that cut sites of channels and heads."""
    return [name for name, entry in compressors().items() if getattr(entry.function, "channel_rule", None)]


def _kinds(grouped: list[Site]) -> str:
    """`"channel sites"`, `"head sites"` or `"channel and head sites"`."""
    return " and ".join(dict.fromkeys(s.unit for s in grouped)) + " sites"


def _refuse_group_sites(grouped: list[Site], method: str | None) -> None:
    who = f"jaxlump.{method}" if method else "this"
    raise TypeError(
        f"`model` has {_kinds(grouped)} ({', '.join(s.path for s in grouped)}), which {who} cannot compress: it "
        f"works on neurons. Channel and head sites are cut by {', '.join(channel_methods())} (and by "
        "`jaxlump.baselines.compress_to` with their widths); to compress only the other sites, select them with "
        "`where`."
    )


def _check_channel_sites(listing: Sites, method: str, channels, independent: bool) -> None:
    """Refuse, before any work, sites of channels or heads that the method cannot cut or that `independent` asks
    for."""
    found = [s for s in listing.sites if s.unit != "neuron"]
    if not found:
        return
    if channels is None:
        _refuse_group_sites(found, method)
    if independent:
        raise ValueError(
            f"`independent=True`: {_kinds(found)} ({', '.join(s.path for s in found)}) are compressed on the model "
            "compressed so far (a channel site shares layers with its neighbours); pass independent=False."
        )


def compress_layers(per_layer, model, x_calib, *, method: str, knob, where=None, independent=False, head=False):
    """`per_layer(first, chain, rows) -> (chain, info)` applied to every `Linear` layer of `model` as a one-layer
    chain, in program order (`first`: whether it is the model's first layer), each on its input rows captured on
    the model masked so far (on the original with `independent`); the last layer the model calls (its head) only
    with `head`. How the unstructured methods mask every `Linear` of a model of sites."""
    family = family_of(model)
    check_inputs(model, x_calib)
    listing = sites(model, x_calib)  # reported in the info; a model without sites can still have its layers masked
    program, tapped = trace_program(model, family, example_of(x_calib))
    order = list(program.taps)  # taps in the order the program first calls them
    chosen = selected_taps(model, family, tapped, where)
    if chosen is not None and not chosen:
        raise ValueError("`where` selects no site and no `Linear` layer: none of the modules it returns holds one.")
    current, infos, names, calls = model, [], [], []
    batch = jax.tree_util.tree_leaves(x_calib)[0].shape[0]
    for tap in order:
        if (tap == order[-1] and not head) or (chosen is not None and tap not in chosen):
            continue
        path = tapped.paths[tap]
        layer = node_at(model, path)
        if layer_type_of(layer).channels:  # masks are for `Linear` layers; a convolution keeps its weights
            continue
        weight, bias, use_bias = layer_type_of(layer).read(layer)
        (rows,) = capture(model if independent else current, family, (tap,), x_calib)
        rows = rows.reshape(-1, weight.shape[1])  # a layer that reads several trailing axes reads their product
        chain = DenseChain((weight,), (bias,), ("identity",), (use_bias,))
        small, info = per_layer(tap == order[0], chain, rows.astype(weight.dtype))
        current = family.replace(
            current, {path: layer_type_of(layer).rebuild(layer, small.weights[0], small.biases[0])}
        )
        infos.append(info)
        names.append(path_name(path))
        calls.append(rows.shape[0] // batch)
    if not infos:
        raise ValueError(
            f"`model` ({type(model).__name__}) has no `Linear` layer to prune but its head; pass "
            "`prune_output=True` to prune the head too."
        )
    return current, _sites_info(model, current, x_calib, listing, infos, calls, method, knob, tuple(names))


def _sites_info(model, current, x_calib, listing, infos, calls, method, knob, layers=()) -> "SitesInfo":
    reference = family_of(model).apply(model, x_calib)
    output = family_of(model).apply(current, x_calib)
    deviation = jnp.abs(jnp.asarray(output, jnp.float32) - jnp.asarray(reference, jnp.float32))
    result = combine(*(i.result for i in infos), finite_result(output, RESULTS.output_nonfinite))
    return SitesInfo(
        method,
        knob,
        listing.sites,
        {s.path: s.width for s in listing.sites},
        parameter_count(model),
        model_flops(model, x_calib),
        tuple(calls),
        tuple(infos),
        jnp.max(deviation),
        jnp.sqrt(jnp.mean(deviation**2)),
        result,
        nonzero_count(model),
        nonzero_count(current),
        layers,
    )


def whole_model_budget(target, total: int, also: str = "") -> int:
    """The parameter budget that `target` sets a model of `total` parameters: a count (int) or a fraction of the
    whole model's parameters (float in (0, 1]); `also` names the other kinds of target the caller accepts."""
    if isinstance(target, bool) or not isinstance(target, (int, float)):
        raise TypeError(
            "`target` for a model of sites must be a parameter count (int) or a fraction of the whole model's "
            f"parameters (float in (0, 1]){' ' + also if also else ''}; received {target!r}."
        )
    if not (target > 0 and (isinstance(target, int) or target <= 1)):
        raise ValueError(f"`target` must be a positive count or a fraction in (0, 1]; received {target!r}.")
    return int(target) if isinstance(target, int) else int(np.floor(float(target) * total + 1e-9))


def compress_to_sites(
    model, name: str, chain_compress_to, target, x_calib, *, where=None, independent=False, **options
):
    """`compress_to` for a model of sites: `target` is a count or a fraction of the whole model's parameters (the
    neuron sites' parameters are cut by one fraction, so that the whole model meets it; sites of channels or heads
    are kept whole) or `{site path: width}` (any site)."""
    function = compressors()[name].function if isinstance(name, str) and name in compressors() else name
    if getattr(function, "site_refusal", None) is not None:  # before anything is computed
        _refuse_site_by_site(model, _name(function), function.site_refusal)
    every = site_listing(model, x_calib, where, groups=True)
    if isinstance(target, dict):  # sites of channels or heads that the dict does not name are kept whole
        known = {s.path for s in every.sites}
        unknown = sorted(set(target) - known)
        if unknown:
            raise ValueError(f"`target`: no site at {unknown}; the sites are {sorted(known)} (see `jaxlump.sites`).")
        named = tuple(s for s in every.sites if s.unit == "neuron" or s.path in target)
        every = Sites(every.family, named, every.left_out) if named else every
    rule = _channel_widths_rule(name, every, target, options)
    listing = every if rule is not None else site_listing(model, x_calib, where, method=_name(name))
    chains = [s for s in segments(listing) if not s.grouped]
    total = parameter_count(model)
    in_sites = sum(_chain_params(segment_chain(model, s)) for s in chains)
    if isinstance(target, dict):

        def chain_target(segment):
            return tuple(int(target.get(site.path, site.width)) for site in segment.sites)

    else:
        budget = whole_model_budget(target, total, "or a dict of widths by site path")
        fraction = (budget - (total - in_sites)) / in_sites
        if fraction <= 0:
            raise UnreachableTargetError(
                f"`target` {target!r} asks for {budget:,} parameters, but the parts of the model outside its sites "
                f"alone hold {total - in_sites:,} (of {total:,}).",
                total - in_sites,
            )

        def chain_target(segment):
            return min(fraction, 1.0)

    def per_segment(segment, chain, rows):
        small, info = chain_compress_to(chain, name, chain_target(segment), rows, **options)
        if small.n_layers != chain.n_layers:
            raise TypeError(
                f"`{_name(name)}` cannot compress `model` ({type(model).__name__}) site by site: on a chain of "
                f"{chain.n_layers} layers it returns {small.n_layers}, adding layers the model's class has no place "
                "for (use a method that keeps the layers, e.g. 'obs_prune')."
            )
        return small, info

    small, info = compress_sites(
        per_segment,
        model,
        x_calib,
        method=_name(name),
        knob=target,
        independent=independent,
        listing=listing,
        channels=rule,
    )
    if not isinstance(target, dict) and info.params_after > budget:
        raise UnreachableTargetError(
            f"`{name}` cannot reach the target {target!r}: it reached {info.params_after:,} parameters.",
            info.params_after,
        )
    return small, info


def _channel_widths_rule(name, listing: Sites, target, options: dict):
    """The rule that cuts each site of channels or heads to its width in `target`; `None` when there are none, when
    `target` is not a dict and other sites take it (they are then kept whole), or for a method that cannot cut
    them (which `site_listing` refuses when nothing else is left)."""
    found = [s for s in listing.sites if s.unit != "neuron"]
    if not found:
        return None
    if not isinstance(target, dict):
        if len(found) < len(listing.sites):
            return None
        raise TypeError(
            f"`target`: `model` has only {_kinds(found)} ({', '.join(s.path for s in found)}); give their widths as "
            f"a dict {{site path: {found[0].unit_name}}}; received {target!r}."
        )
    for site in found:
        width = target.get(site.path, site.width)
        if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or not 1 <= width <= site.width:
            raise ValueError(
                f"`target[{site.path!r}]` must be a number of {site.unit_name} from 1 to {site.width}; received "
                f"{width!r}."
            )
    function = compressors()[name].function if isinstance(name, str) and name in compressors() else name
    factory = getattr(function, "channel_rule", None)
    if factory is None:
        cut = [s for s in found if target.get(s.path, s.width) != s.width]
        if cut:
            _refuse_group_sites(cut, _name(name))
        return None
    parameters = inspect.signature(function).parameters
    defaults = {k: p.default for k, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise TypeError(f"`{name}` has no option {', '.join(map(repr, unknown))}; its options: {sorted(defaults)}.")
    rule = factory(0.0, defaults | options)  # the knob is replaced: each site is cut at its width

    def cut(site):
        return site.width - int(target.get(site.path, site.width))

    return dataclasses.replace(
        rule, knob=float("nan"), steps=lambda path, site: cut(site), limit=lambda site: (cut(site), None)
    )


def _name(method) -> str:
    return getattr(method, "__name__", str(method))


def _chain_params(chain: DenseChain) -> int:
    return int(cost(chain).dense_params)


def site_taps(model, listing: Sites) -> tuple[int, ...]:
    """Per segment of `listing`, the tap index of its first layer (what `capture` takes)."""
    _, tapped = tapped_model(model, family_of(model))
    index = {path: i for i, path in enumerate(tapped.paths)}
    return tuple(index[segment.layers[0]] for segment in segments(listing))


def over_sites(compressor=None, *, refusal: str | None = None, fixed_shape: bool = False, allocate=None, channels=None):
    """Make `compressor` (call shape `(model, x_calib, knob, **options)` on chain models) work on any model.

    Adds two keyword options: `where` (which sites, see `jaxlump.sites`) and `independent` (capture every
    segment's input on the original model instead of the one compressed so far). Chain models are passed
    through unchanged, so their results are exactly the compressor's own. `refusal`: why the compressor cannot
    work site by site (used as `@over_sites(refusal=...)`); other models are then refused with it. `fixed_shape`:
    the compressor keeps every array's shape (its result is masked), so it can run on traced values. `allocate`:
    a method whose knob is shared out over the whole model (FLAP's one global threshold) gives
    `allocate(chains, rows, knob, **options) -> per-segment knobs`, called on every segment of the original model
    and its input rows; each segment is then compressed with its own knob. `channels(knob, options)`: how the
    method cuts the sites whose units are groups of columns (a convolution's channels, attention heads), a rule
    with `cut(site, model, family, x_calib)` built from its knob and every option (defaults filled in); `None`: it
    cannot cut them (`compress_sites` says what becomes of them). Kept as the wrapper's `channel_rule`, so that
    `compress_to` cuts them at given widths with the same rule. Everything but a chain model is handled by
    `_compress_model_of_sites`."""
    if compressor is None:
        return functools.partial(
            over_sites, refusal=refusal, fixed_shape=fixed_shape, allocate=allocate, channels=channels
        )
    signature = inspect.signature(compressor)

    @functools.wraps(compressor)
    def compress(model, *args, where=None, independent: bool = False, **kwargs):
        if is_chain_kind(model):
            if where is not None or independent:
                raise ValueError(
                    f"`where` and `independent` apply to models compressed site by site; `model` "
                    f"({type(model).__name__}) is one chain of layers, compressed as a whole."
                )
            return compressor(model, *args, **kwargs)
        how = _HowOverSites(compressor, signature, refusal, fixed_shape, allocate, channels)
        return _compress_model_of_sites(how, model, args, kwargs, where, independent)

    compress.channel_rule = channels
    compress.site_refusal = refusal
    extra = [
        inspect.Parameter("where", inspect.Parameter.KEYWORD_ONLY, default=None),
        inspect.Parameter("independent", inspect.Parameter.KEYWORD_ONLY, default=False),
    ]
    params = list(signature.parameters.values())
    cut = next((i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD), len(params))
    compress.__signature__ = signature.replace(parameters=params[:cut] + extra + params[cut:])
    return compress


def _refuse_site_by_site(model, method: str, refusal: str):
    raise TypeError(
        f"`model` ({type(model).__name__}) is compressed site by site, which jaxlump.{method} cannot do: {refusal}."
    )


@dataclasses.dataclass(frozen=True)
class _HowOverSites:
    """`over_sites`'s compressor and its settings (see there)."""

    compressor: object
    signature: inspect.Signature
    refusal: str | None
    fixed_shape: bool
    allocate: object
    channels: object


def _compress_model_of_sites(how: _HowOverSites, model, args, kwargs, where, independent: bool):
    """`over_sites`'s compressor applied to a model that is no chain: site by site, or every `Linear` masked."""
    family_of(model)  # a model that is no module at all is refused as such, before anything else is asked of it
    if how.refusal is not None:
        _refuse_site_by_site(model, how.compressor.__name__, how.refusal)
    check_bool(independent, "independent")
    bound = how.signature.bind_partial(model, *args, **kwargs)
    x_calib = bound.arguments.get("x_calib")
    if x_calib is None:
        raise ValueError(
            f"`x_calib` is needed to compress a {type(model).__name__}: its sites are found and calibrated on "
            "it; pass a batch of the model's inputs."
        )
    if not how.fixed_shape and _changes_widths(how.compressor.__name__):
        require_concrete(
            f"jaxlump.{how.compressor.__name__}",
            "it changes the widths of the model's sites, so the result's shapes depend on the values.",
            x_calib=x_calib,
            model=model,
        )
    positional, rest = _split(how.signature, bound.arguments)
    if not how.fixed_shape and not _changes_widths(how.compressor.__name__):
        return _mask_every_layer(how.compressor, how.signature, model, x_calib, positional, rest, where, independent)
    method = how.compressor.__name__
    listing = site_listing(model, x_calib, where, groups=how.channels is not None and bool(positional), method=method)
    knobs = {}
    if how.allocate is not None and positional:
        chained = [segment for segment in segments(listing) if not segment.grouped]
        chains = [segment_chain(model, segment) for segment in chained]
        taps = [t for t, segment in zip(site_taps(model, listing), segments(listing)) if not segment.grouped]
        rows = capture(model, family_of(model), tuple(taps), x_calib)
        rows = [r.astype(c.weights[0].dtype) for r, c in zip(rows, chains)]
        shares = how.allocate(chains, rows, positional[0], **rest)
        knobs = {segment.layers: knob for segment, knob in zip(chained, shares)}

    def per_segment(segment, chain, rows):
        knob = [knobs[segment.layers]] if segment.layers in knobs else positional[:1]
        return how.compressor(chain, rows, *knob, *positional[1:], **rest)

    rule = None
    if how.channels is not None and positional and any(site.unit != "neuron" for site in listing.sites):
        given = how.signature.bind_partial(model, *args, **kwargs)
        given.apply_defaults()
        rule = how.channels(positional[0], _split(how.signature, given.arguments)[1])
    return compress_sites(
        per_segment,
        model,
        x_calib,
        method=how.compressor.__name__,
        knob=positional[0] if positional else None,
        independent=independent,
        listing=listing,
        channels=rule,
    )


def _mask_every_layer(compressor, signature, model, x_calib, positional, rest, where, independent):
    """An unstructured method on a model of sites: every `Linear` masked on its own (`compress_layers`), the head
    only with `prune_output=True`; a scope that ranks several layers together is refused."""
    scope = rest.get("scope", _default(signature, "scope"))
    if getattr(scope, "spans_layers", False):
        raise ValueError(
            f"`scope={type(scope).__name__}()` ranks the layers of one chain together; on `model` "
            f"({type(model).__name__}), compressed site by site, jaxlump.{compressor.__name__} masks each `Linear` "
            "on its own: pass `scope=PerLayer()` or `scope=PerRow()`."
        )
    head = rest.get("prune_output", _default(signature, "prune_output"))
    check_bool(head, "prune_output")

    def per_layer(first, chain, rows):
        options = {**rest, "prune_output": True}
        if "first_layer" in signature.parameters and not first:  # only the model's own first layer is special
            options["first_layer"] = scope
        return compressor(chain, rows, *positional, **options)

    return compress_layers(
        per_layer,
        model,
        x_calib,
        method=compressor.__name__,
        knob=positional[0] if positional else None,
        where=where,
        # A method's own `sequential=False` (scores on the dense network's activations) is `independent` here.
        independent=independent or rest.get("sequential", True) is False,
        head=bool(head),
    )


def _default(signature: inspect.Signature, name: str):
    parameter = signature.parameters.get(name)
    return None if parameter is None else parameter.default


def _changes_widths(name: str) -> bool:
    """Whether the registered compressor `name` is structured (unknown names count as structured)."""
    entry = compressors().get(name)
    return entry is None or entry.structured


def _split(signature: inspect.Signature, arguments: dict) -> tuple[list, dict]:
    """The bound arguments after `model` and `x_calib`, as positional values and keywords."""
    positional, keywords = [], {}
    for name, value in arguments.items():
        kind = signature.parameters[name].kind
        if name in ("model", "x_calib"):
            continue
        if kind is inspect.Parameter.VAR_KEYWORD:
            keywords.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            positional.extend(value)
        elif kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            positional.append(value)
        else:
            keywords[name] = value
    return positional, keywords


__all__ = ["SiteChain", "SitesInfo", "compress_sites", "over_sites", "path_name", "segments", "site_chains"]
