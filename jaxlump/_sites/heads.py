"""Attention modules whose heads are a site: an open registry of attention types, and how their head sites are listed.

A **head site** is a multi-head attention module: its query, key and value projections are the producers, the
per-head attention (softmax of each head's scores, times its values) is the combine, and the output projection is
the consumer. Head h is the group of the output projection's `vo_size` input columns that read its output. Removing a
head drops its rows of the three producers and its columns of the consumer, and leaves every other head's output as
it was (each head attends on its own), so the consumer's least-squares refit on the kept heads' outputs is exact
compensation. With grouped-query attention (fewer key/value heads than query heads, query head `h` reading KV head
`h // (num_heads / kv_heads)`), a unit is one KV head with the query heads that read it: they leave together, and
the module keeps its ratio of query to KV heads. Register another attention class with `register_attention_type`.
"""

import dataclasses
from collections.abc import Callable

import equinox as eqx
import jax.random as jr

from .layers import Path, layer_type_of, node_at, path_name


@dataclasses.dataclass(frozen=True)
class AttentionType:
    """One kind of multi-head attention module whose heads can be compressed.

    - `name`: shown in listings and errors (`"eqx.nn.MultiheadAttention"`).
    - `matches(module)`: whether `module` is of this type.
    - `projections`: the attribute names of its query, key, value and output projections (registered layers, the
      query's output rows in head order, `qk_size` rows per head; the output projection's input columns likewise,
      `vo_size` per head).
    - `heads(module)`: `(num_heads, kv_heads, qk_size, vo_size)`; `kv_heads == num_heads` without grouped queries.
    - `rebuild(module, projections, kv_heads)`: a module of `module`'s class and settings with these four
      projections (`(query, key, value, output)`), `kv_heads` KV heads and as many query heads per KV head as
      before.
    - `put(model, path, module)`: `model` with the module at `path` replaced; `model` itself is not changed
      (default: Equinox's `tree_at`).
    - `why_not(module)`: why its heads cannot be a site (`None` when they can).
    """

    name: str
    matches: Callable
    projections: tuple[str, str, str, str]
    heads: Callable
    rebuild: Callable
    put: Callable = None
    why_not: Callable = lambda module: None

    def __post_init__(self):
        if self.put is None:
            object.__setattr__(self, "put", _eqx_put)


ATTENTION_TYPES: list[AttentionType] = []


def register_attention_type(attention_type: AttentionType) -> AttentionType:
    """Add an attention type (tried in registration order); returns it."""
    if not isinstance(attention_type, AttentionType):
        raise TypeError(f"`attention_type` must be a jaxlump.AttentionType; received {attention_type!r}.")
    ATTENTION_TYPES.append(attention_type)
    return attention_type


def attention_type_of(module) -> AttentionType | None:
    return next((t for t in ATTENTION_TYPES if t.matches(module)), None)


@dataclasses.dataclass(frozen=True)
class FoundHeads:
    """A head site found on the traced program: its module's path, its projections' taps, its units (KV heads) and
    the output projection's columns per unit."""

    path: Path
    taps: tuple[int, int, int, int]
    units: int
    group: int


def find_heads(model, tapped) -> tuple[list[FoundHeads], list[tuple[tuple[str, ...], str]]]:
    """The head sites of `model` whose four projections are tapped layers, and `(layers, reason)` for attention
    modules that cannot be one."""
    children: dict[Path, dict[str, int]] = {}
    for tap, path in enumerate(tapped.paths):
        if path and isinstance(path[-1], str):
            children.setdefault(tuple(path[:-1]), {})[path[-1]] = tap
    found, left = [], []
    for parent, taps in children.items():
        module = node_at(model, parent)
        kind = attention_type_of(module)
        if kind is None or not all(name in taps for name in kind.projections):
            continue
        names = tuple(path_name((*parent, name)) for name in kind.projections)
        reason = kind.why_not(module) or next(
            (f"{n}: {why}" for n, name in zip(names, kind.projections) if (why := _layer_why_not(module, name))), None
        )
        if reason is not None:
            left.append((names, reason))
            continue
        heads, kv_heads, _, vo_size = kind.heads(module)
        group = heads // kv_heads * vo_size
        found.append(FoundHeads(parent, tuple(taps[name] for name in kind.projections), kv_heads, group))
    return found, left


def _layer_why_not(module, name: str) -> str | None:
    layer = getattr(module, name)
    return layer_type_of(layer).why_not(layer)


def _eqx_rebuild(module: eqx.nn.MultiheadAttention, projections, kv_heads: int) -> eqx.nn.MultiheadAttention:
    query, key, value, output = projections
    fresh = eqx.nn.MultiheadAttention(
        kv_heads,
        module.query_size,
        module.key_size,
        module.value_size,
        module.output_size,
        module.qk_size,
        module.vo_size,
        module.use_query_bias,
        module.use_key_bias,
        module.use_value_bias,
        module.use_output_bias,
        module.dropout.p,
        module.dropout.inference,
        dtype=query.weight.dtype,
        key=jr.key(0),  # every parameter is replaced below
    )
    return eqx.tree_at(
        lambda m: (m.query_proj, m.key_proj, m.value_proj, m.output_proj), fresh, (query, key, value, output)
    )


def _eqx_put(model, path: Path, module):
    if not path:
        return module
    return eqx.tree_at(lambda m: node_at(m, path), model, module)


register_attention_type(
    AttentionType(
        "eqx.nn.MultiheadAttention",
        lambda m: isinstance(m, eqx.nn.MultiheadAttention),
        ("query_proj", "key_proj", "value_proj", "output_proj"),
        lambda m: (m.num_heads, m.num_heads, m.qk_size, m.vo_size),
        _eqx_rebuild,
    )
)


def with_consistent_heads(family, model):
    """`model` with every registered attention module's heads set to what its key projection's rows imply (for a
    module whose projections were replaced by layers of other shapes, as `jaxlump.load` does)."""
    parents = {tuple(path[:-1]) for path, _ in family.layers(model)}
    for parent in sorted(parents, key=len):
        module = node_at(model, parent)
        kind = attention_type_of(module)
        if kind is None:
            continue
        _, kv_heads, qk_size, _ = kind.heads(module)
        projections = tuple(getattr(module, name) for name in kind.projections)
        implied = layer_type_of(projections[1]).read(projections[1])[0].shape[0] // qk_size
        if implied != kv_heads:
            model = kind.put(model, parent, kind.rebuild(module, projections, implied))
    return model
