"""Sites: what they are, how a model's are listed, and how runs of them become the chains the methods compress.

A **site** is one or two producer layers (a `Linear`, or the gate and up projections of a gated unit) → an
elementwise combine → one consumer layer: an FFN inside a residual block, a hidden layer of an MLP; or a
convolution → elementwise → a convolution or a flatten and a `Linear` (its units are channels); or a multi-head
attention module (its units are heads, `jaxlump._sites.heads`). Its units are compressed by changing the producers'
rows and the consumer's columns only; everything else in the model is untouched. Neuron sites that share a layer
(the consumer of one is the producer of the next, as in an MLP) form a **segment**, which the methods compress as one
`DenseChain`; a site of channels or heads is a segment of its own.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from .heads import find_heads
from .layers import LAYER_TYPES, Family, Path, family_of, layer_type_of, node_at, path_name
from .norms import norm_type_of
from .pooling import describe as describe_pooling
from .trace import Found, Program, Tapped, find, tapped_model


@dataclasses.dataclass(frozen=True)
class Site:
    """One site of a model.

    - `path`: its name, the deepest module holding all its layers (`"blocks[1].ffn"`), or its consumer's path
      when that module holds other sites too; `compress_to` takes widths keyed by it.
    - `producers`: the producer layers' paths (`(gate, up)` for a gated unit), `consumer`: the consumer's.
      For a head site: `(query, key, value)` and the output projection.
    - `activation`: the combine's activation (of the gate for a gated unit), a `jaxlump.Activation` name
      (`"identity"` for a head site, whose combine is each head's attention).
    - `gated`: whether the hidden unit is `σ(gate) ⊙ up`.
    - `width`: its number of units.
    - `unit`: what a unit is: `"neuron"` (a row of a `Linear`), `"channel"` (an output channel of a convolution)
      or `"head"` (an attention head; with grouped-query attention, a KV head and the query heads that read it).
    - `group`: the consumer's input columns per unit: 1 for a neuron, `k_h·k_w` for a channel read by a
      convolution, `H·W` for a channel read by a `Linear` after a flatten, `vo_size` for a head (times the query
      heads per KV head with grouped-query attention).
    - `norm`: the path of a normalisation between a convolution and the activation (a BatchNorm in inference
      mode, `jaxlump._sites.norms`), folded into the site's pre-activations and cut with the convolution's rows.
    - `pooling`: for a channel site, the pooling of each channel between the activation and the consumer
      (`jaxlump._sites.pooling` steps; empty without one).
    """

    path: str
    producers: tuple[str, ...]
    consumer: str
    activation: str
    gated: bool
    width: int
    keys: tuple[Path, ...] = dataclasses.field(repr=False, compare=False, default=())
    unit: str = "neuron"
    group: int = 1
    flattened: tuple[int, ...] | None = dataclasses.field(repr=False, compare=False, default=None)
    norm: str | None = None
    norm_key: Path | None = dataclasses.field(repr=False, compare=False, default=None)
    pooling: tuple = dataclasses.field(repr=False, compare=False, default=())

    @property
    def unit_name(self) -> str:
        """What its units are called in listings: `"units"` (neurons), `"channels"` or `"heads"`."""
        return {"channel": "channels", "head": "heads"}.get(self.unit, "units")

    def describe(self) -> str:
        combine = f"{self.activation}(gate) ⊙ up" if self.gated else self.activation
        combine = "attention per head" if self.unit == "head" else combine
        read = " (flattened)" if self.flattened is not None else ""
        norm = f" → {self.norm}" if self.norm is not None else ""
        combine += f" → {describe_pooling(self.pooling)}" if self.pooling else ""
        return (
            f"{self.path}: {self.width} {self.unit_name}, {' + '.join(self.producers)}{norm} → {combine}{read} → "
            f"{self.consumer}"
        )


@dataclasses.dataclass(frozen=True)
class LeftOut:
    """Layers that look like a site but cannot be compressed as one, and why."""

    layers: tuple[str, ...]
    reason: str

    def describe(self) -> str:
        return f"{' + '.join(self.layers)}: {self.reason}"


@dataclasses.dataclass(frozen=True)
class Sites:
    """A model's sites, in program order, and what was left out.

    ```python
    import equinox as eqx, jax, jax.numpy as jnp, jax.random as jr, jaxlump

    class FFN(eqx.Module):
        up: eqx.nn.Linear
        down: eqx.nn.Linear

        def __call__(self, x):
            return x + self.down(jax.nn.gelu(self.up(x)))

    k1, k2 = jr.split(jr.key(0))
    ffn = FFN(eqx.nn.Linear(4, 16, key=k1), eqx.nn.Linear(16, 4, key=k2))
    listing = jaxlump.sites(ffn, jnp.ones((8, 4)))
    assert [s.path for s in listing.sites] == ["<model>"] and listing.sites[0].activation == "gelu_tanh"
    ```
    """

    family: str
    sites: tuple[Site, ...]
    left_out: tuple[LeftOut, ...]

    def __str__(self) -> str:
        lines = [f"{len(self.sites)} site(s) ({self.family}):"] + [f"  {s.describe()}" for s in self.sites]
        if self.left_out:
            lines += [f"left out ({len(self.left_out)}):"] + [f"  {o.describe()}" for o in self.left_out]
        return "\n".join(lines)


def _site_paths(found: list[Found], tapped: Tapped) -> list[str]:
    """Each site's name: the deepest module holding all its layers when no other site's layers are under it,
    else its consumer's path."""
    members = [(*f.producers, f.consumer) for f in found]

    def prefix(taps) -> Path:
        paths = [tapped.paths[t] for t in taps]
        return tuple(os.path.commonprefix(paths))

    names = []
    for i, taps in enumerate(members):
        common = prefix(taps)
        shared = any(
            tapped.paths[t][: len(common)] == common for j, other in enumerate(members) if j != i for t in other
        )
        names.append(path_name(tapped.paths[found[i].consumer] if shared else common))
    return names


def trace_program(model, family: Family, example):
    """The flattened program of `model` applied to `example` (a batch of one), with every layer tapped."""
    tapped, layers = tapped_model(model, family)
    if not layers.paths:
        raise TypeError(
            f"`model` ({type(model).__name__}) holds no layer jaxlump can compress; sites are made of "
            f"{', '.join(t.name for t in LAYER_TYPES)} (add others with `jaxlump.register_layer_type`)."
        )
    try:
        closed = jax.make_jaxpr(lambda x: family.apply(tapped, x))(example)
    except Exception as error:
        shapes = [np.shape(leaf) for leaf in jax.tree_util.tree_leaves(example)]
        norms = [f"{path_name(p)}: {why}" for p, n in family.norms(model) if (why := norm_type_of(n).why_not(n))]
        raise ValueError(
            f"`x_calib`: `model` ({type(model).__name__}) cannot be applied to one example of it (shapes {shapes}, "
            f"{'each example on its own, as Equinox models are called' if family.per_example else 'a batch of one'}"
            f"): {type(error).__name__}: {error}" + "".join(f"\n  {line}" for line in norms)
        ) from error
    return Program(closed), layers


def sites(model, x_calib, *, where=None) -> Sites:
    """List the sites of `model` found on its traced program, and the structures left out with the reason.

    **Arguments:**

    - `model`: an Equinox module or a Flax NNX module (any class; its `Linear` layers are what sites are made of).
    - `x_calib`: a batch of whatever the model takes (token ids `(batch, T)`, images, features): one leading batch
      axis. Only its first example is traced; nothing is computed on the data.
    - `where`: restricts the listing, Equinox-style: a function of the model returning a module or a sequence of
      modules (layers or modules containing them); a site is kept when one of its layers is, or lies inside, one
      of them. `None`: every site.

    **Returns:** a `jaxlump.Sites` (print it for a table).

    **Raises:** `TypeError` for a model that is neither an Equinox nor an NNX module, `ValueError` for a
    `where` that selects nothing or for an `x_calib` without a batch axis.
    """
    family = family_of(model)
    example = example_of(x_calib)
    program, tapped = trace_program(model, family, example)
    position = {tap: i for i, tap in enumerate(program.taps)}  # taps in the order the program first calls them
    found = sorted(find(program, tapped), key=lambda f: min(position[t] for t in (*f.producers, f.consumer)))
    names = dict(
        zip((id(f) for f in found if f.reason is None), _site_paths([f for f in found if f.reason is None], tapped))
    )
    selected = selected_taps(model, family, tapped, where)
    kept, left = [], []
    for f in found:
        name = names.get(id(f))
        layers = (*f.producers, f.consumer)
        if selected is not None and not selected.intersection(layers):
            continue
        if f.reason is not None:
            left.append(LeftOut(tuple(path_name(tapped.paths[t]) for t in layers), f.reason))
            continue
        producers = (f.gate, *(p for p in f.producers if p != f.gate)) if f.gate is not None else f.producers
        up = layer_type_of(tapped.layers[producers[-1]]).read(tapped.layers[producers[-1]])[0]
        channels = layer_type_of(tapped.layers[producers[-1]]).channels
        consumer_weight = layer_type_of(tapped.layers[f.consumer]).read(tapped.layers[f.consumer])[0]
        spatial = f.flattened if f.flattened is not None else consumer_weight.shape[2:]
        kept.append(
            Site(
                name,
                tuple(path_name(tapped.paths[p]) for p in producers),
                path_name(tapped.paths[f.consumer]),
                f.activation,
                f.gate is not None,
                int(up.shape[0]),
                tuple(tapped.paths[t] for t in (*producers, f.consumer)),
                "channel" if channels else "neuron",
                int(np.prod(spatial, dtype=int)) if channels else 1,
                f.flattened,
                None if f.norm is None else path_name(tapped.norm_paths[f.norm]),
                None if f.norm is None else tapped.norm_paths[f.norm],
                f.pooling,
            )
        )
    heads, unusable = find_heads(model, tapped)
    for found_heads in heads:
        called = all(t in position for t in found_heads.taps)
        if not called or (selected is not None and not selected.intersection(found_heads.taps)):
            continue
        paths = tuple(tapped.paths[t] for t in found_heads.taps)
        kept.append(
            Site(
                path_name(found_heads.path),
                tuple(path_name(p) for p in paths[:3]),
                path_name(paths[3]),
                "identity",
                False,
                found_heads.units,
                paths,
                "head",
                found_heads.group,
            )
        )
    left += [LeftOut(layers, reason) for layers, reason in unusable]
    for path, norm in family.norms(model):  # those not tapped: their sites are not found, so say why here
        why = norm_type_of(norm).why_not(norm)
        if why is not None:
            left.append(LeftOut((path_name(path),), f"{why}; the sites around it are not found"))
    order = {path_name(tapped.paths[t]): position[t] for t in position}
    kept.sort(key=lambda site: min(order[name] for name in (*site.producers, site.consumer)))
    if selected is not None and not kept and not left:
        raise ValueError("`where` selects no site: none of the modules it returns holds a site's layer.")
    return Sites(family.name, tuple(kept), tuple(left))


def example_of(x_calib):
    leaves = jax.tree_util.tree_leaves(x_calib)
    if not leaves:
        raise ValueError(
            "`x_calib` must be a batch of the model's inputs (an array or a pytree of arrays); it is empty."
        )
    if any(np.ndim(leaf) == 0 or np.shape(leaf)[0] == 0 for leaf in leaves):
        shapes = [np.shape(leaf) for leaf in leaves]
        raise ValueError(
            f"`x_calib` must have one leading batch axis with at least one example; received shapes {shapes}."
        )
    return jax.tree.map(lambda leaf: leaf[:1], x_calib)


def selected_taps(model, family: Family, tapped: Tapped, where) -> set[int] | None:
    if where is None:
        return None
    if not callable(where):
        raise TypeError(f"`where` must be a function of the model returning modules, or None; received {where!r}.")
    try:
        chosen = where(model)
    except Exception as error:
        raise ValueError(
            f"`where` failed on `model` ({type(model).__name__}): {type(error).__name__}: {error}. It must be a "
            "function of the model returning a module or a sequence of modules (e.g. `lambda m: m.blocks[0].ffn`)."
        ) from error
    chosen = list(chosen) if isinstance(chosen, (list, tuple)) else [chosen]
    chosen_ids = {id(c) for c in chosen}
    selected = set()
    for tap, path in enumerate(tapped.paths):
        node = model
        for key in (None, *path):
            if key is not None:
                node = node_at(node, (key,))
            if id(node) in chosen_ids:
                selected.add(tap)
                break
    return selected


def _evaluated(model, family: Family, x_calib, pick):
    """The values of the variables `pick(program, tap index by path)` chooses when `model` runs on `x_calib`,
    computed by evaluating the traced program, so that values inside the model's own `jax.vmap`s come whole."""
    tapped, layers = tapped_model(model, family)
    program = Program(jax.make_jaxpr(lambda x: family.apply(tapped, x))(x_calib))
    wanted = pick(program, {path: i for i, path in enumerate(layers.paths)})
    return jax.jit(lambda *args: program.values_of(wanted, *args))(*jax.tree_util.tree_leaves(x_calib)), wanted


def capture(model, family: Family, taps: tuple[int, ...], x_calib) -> list[jax.Array]:
    """The inputs of the layers with tap indices `taps` when `model` runs on `x_calib`, as rows `(N, width)`
    (every axis but the last flattened: `(batch·T, d)` for a sequence model)."""
    values, _ = _evaluated(model, family, x_calib, lambda program, _: [program.taps[t][0].ins[-1] for t in taps])
    return [v.reshape(-1, v.shape[-1]) for v in values]


def capture_site(model, family: Family, site: Site, x_calib) -> tuple[jax.Array, tuple, tuple]:
    """For a channel site: its producer's output on `x_calib` as `(batch, channels, *spatial)` whatever the
    producer's layout, and the input shapes of its producer and consumer for one example (batch axis 1)."""

    def pick(program, index):
        producer, consumer = program.taps[index[site.keys[0]]][0], program.taps[index[site.keys[-1]]][0]
        return [producer.outs[0], producer.ins[-1], consumer.ins[-1]]

    (output, *_), wanted = _evaluated(model, family, x_calib, pick)
    one = [(1, *v.aval.shape[1:]) for v in wanted[1:]]
    producer = node_at(model, site.keys[0])
    if layer_type_of(producer).channels_last:
        output = jnp.moveaxis(output, -1, 1)
    return output, one[0], one[1]


def capture_heads(model, family: Family, site: Site, x_calib) -> tuple[jax.Array, list[tuple]]:
    """For a head site: the heads' outputs on `x_calib` (the output projection's input) as rows `(N, heads·vo)`,
    and the input shapes of its four projections for one example (batch axis 1). The rows are the output
    projection's inputs of `width·group` values, whatever its axes (`(B, T, heads·vo)`, or `(B, T, heads, vo)` for a
    projection that reads the heads as an axis, as Flax NNX's does)."""

    def pick(program, index):
        calls = [program.taps[index[key]][0] for key in site.keys]
        return [calls[-1].ins[-1], *(call.ins[-1] for call in calls)]

    (output, *_), wanted = _evaluated(model, family, x_calib, pick)
    return output.reshape(-1, site.width * site.group), [(1, *v.aval.shape[1:]) for v in wanted[1:]]
