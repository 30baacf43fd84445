"""The JSON structure record of a `jaxlump.save` file, field by field: the one place that says what a file may hold.

`check_fields` applies a table of `Field`s to a JSON object: every field present, no other field, each value one
its field accepts; a refusal names the file, the field, what was found and what is accepted. `jaxlump.load` checks
the header (`HEADER_FIELDS`), the model (`MODEL_FIELDS`, then its kind's `OPTION_FIELDS`; `SITES_FIELDS` for a model
saved site by site) and the stored `CompressionInfo` (`INFO_FIELDS`) before it reads an array.
"""

import json
from collections.abc import Callable
from typing import Any, NamedTuple

import jax.numpy as jnp

from .._model import KINDS
from .._model.activations import ACTIVATIONS

FORMAT = "jaxlump-model"
VERSION = 2
SKIP_KIND = "jaxlump.SkipMLP"
SITES_KIND = "jaxlump.sites"  # any Equinox / NNX module: its layers' shapes and its array leaves (`like` rebuilds it)
KIND_NAMES = tuple(kind.name for kind in KINDS) + (SKIP_KIND,)


class Field(NamedTuple):
    """One field of the JSON structure record: a test of its value (given the object that holds it, for fields
    whose form depends on another, such as one activation per layer) and what is accepted, in words; `optional`:
    files written before the field existed lack it."""

    accepts: Callable[[Any, dict], bool]
    accepted: str | Callable[[dict], str]
    optional: bool = False


_MISSING = object()


def is_int(value, minimum: int = 0) -> bool:
    return type(value) is int and value >= minimum  # JSON true/false load as bool, which is an int in Python


def _is_bool(value, context=None) -> bool:
    return type(value) is bool


def _is_str(value, context=None) -> bool:
    return type(value) is str


def _n_layers(model: dict) -> int:
    return len(model["widths"]) - 1


def _widths_ok(widths, model: dict) -> bool:
    hidden_may_vanish = model["kind"] == SKIP_KIND  # linearity merging can remove a whole hidden layer
    return (
        type(widths) is list
        and len(widths) >= 2
        and all(
            is_int(w, 1) or (hidden_may_vanish and 0 < i < len(widths) - 1 and is_int(w, 0))
            for i, w in enumerate(widths)
        )
    )


def _floating_name(name, context=None) -> bool:
    try:
        return type(name) is str and jnp.issubdtype(jnp.dtype(name), jnp.floating)
    except TypeError:
        return False


def _layout_ok(layout, model: dict) -> bool:
    return (
        type(layout) is list
        and all(type(e) is str and (e == "linear" or e in ACTIVATIONS) for e in layout)  # parametrised names too
        and layout.count("linear") == _n_layers(model)
    )


def _skip_sources_ok(sources, model: dict) -> bool:
    return (
        type(sources) is list
        and len(sources) == _n_layers(model)
        and all(type(s) is list and all(is_int(k) and k < l for k in s) for l, s in enumerate(sources))
    )


def _messages_ok(messages, context=None) -> bool:
    """A result message, or nested lists of them (a stacked `info.result`)."""
    return type(messages) is str or (type(messages) is list and all(_messages_ok(m) for m in messages))


def _array_specs_ok(arrays, context=None) -> bool:
    return type(arrays) is dict and all(
        type(spec) is list
        and len(spec) == 2
        and type(spec[0]) is list
        and all(is_int(n) for n in spec[0])
        and type(spec[1]) is str
        and _dtype_name(spec[1])
        for spec in arrays.values()
    )


def _dtype_name(name: str) -> bool:
    try:
        jnp.dtype(name)
    except TypeError:
        return False
    return True


def _leaf_dtype_name(name, context=None) -> bool:
    """A NumPy/JAX dtype name, `key<impl>` for a typed PRNG key, or `python:<type>` for a Python number leaf."""
    if type(name) is not str:
        return False
    if name.startswith("key<") and name.endswith(">"):
        return len(name) > 5
    return name in PYTHON_LEAVES or _dtype_name(name)


PYTHON_LEAVES = {"python:bool": bool, "python:int": int, "python:float": float, "python:complex": complex}


def _path_ok(path) -> bool:
    return type(path) is list and all(type(k) is str or is_int(k) for k in path)


_LAYER_KEYS = ("path", "type", "shape", "use_bias")


def _layers_ok(layers, context=None) -> bool:
    return (
        type(layers) is list
        and len(layers) >= 1
        and all(
            type(layer) is dict
            and tuple(layer) == _LAYER_KEYS
            and _path_ok(layer["path"])
            and _is_str(layer["type"])
            and type(layer["shape"]) is list
            and len(layer["shape"]) >= 2
            and all(is_int(n) for n in layer["shape"])
            and _is_bool(layer["use_bias"])
            for layer in layers
        )
        and len({json.dumps(layer["path"]) for layer in layers}) == len(layers)
    )


def _leaf_specs_ok(leaves, context=None) -> bool:
    return (
        type(leaves) is list
        and all(
            type(spec) is list
            and len(spec) == 3
            and _is_str(spec[0])
            and type(spec[1]) is list
            and all(is_int(n) for n in spec[1])
            and _leaf_dtype_name(spec[2])
            for spec in leaves
        )
        and len({spec[0] for spec in leaves}) == len(leaves)
    )


# The structure record, field by field (the one place that says what a file may hold; `check_fields` applies it).
# `format` and `version` are checked first, by `_read`, to tell another file or another version apart.
HEADER_FIELDS = {
    "format": Field(lambda v, r: v == FORMAT, repr(FORMAT)),
    "version": Field(lambda v, r: is_int(v) and v == VERSION, f"the integer {VERSION}"),
    "model": Field(lambda v, r: type(v) is dict, "a JSON object"),
    "info": Field(lambda v, r: v is None or type(v) is dict, "a JSON object or null"),
}
MODEL_FIELDS = {
    "kind": Field(lambda v, r: _is_str(v) and v in KIND_NAMES, f"one of {list(KIND_NAMES)}"),
    "widths": Field(_widths_ok, "a list of at least two positive integers"),
    "activations": Field(
        lambda v, r: type(v) is list and len(v) == _n_layers(r) and all(_is_str(a) and a in ACTIVATIONS for a in v),
        lambda r: (
            f"a list of {_n_layers(r)} names from {list(ACTIVATIONS)} (declare a custom one with "
            "jaxlump.Activation before loading)"
        ),
    ),
    "use_bias": Field(
        lambda v, r: type(v) is list and len(v) == _n_layers(r) and all(map(_is_bool, v)),
        lambda r: f"a list of {_n_layers(r)} booleans",
    ),
    "dtype": Field(_floating_name, "a floating dtype name such as 'float32'"),
    "options": Field(lambda v, r: type(v) is dict, "a JSON object"),
}
# A model saved site by site (any Equinox / NNX class): rebuilt from `load(..., like=...)`, checked against these.
SITES_FIELDS = {
    "kind": Field(lambda v, r: v == SITES_KIND, repr(SITES_KIND)),
    "family": Field(_is_str, "a model family's name (e.g. 'Equinox', 'Flax NNX')"),
    "class": Field(_is_str, "the saved model's class name (a string)"),
    "layers": Field(
        _layers_ok,
        "a non-empty list of objects {path: [keys], type: layer type name, shape: [out, in, *kernel], "
        "use_bias: bool} with distinct paths",
    ),
    "norms": Field(
        lambda v, r: (
            type(v) is list
            and all(
                type(n) is dict and tuple(n) == ("path", "width") and _path_ok(n["path"]) and is_int(n["width"])
                for n in v
            )
        ),
        "a list of objects {path: [keys], width: int}, one per normalisation folded into a channel site",
        optional=True,
    ),
    "leaves": Field(
        _leaf_specs_ok,
        "a list of [name, shape (list of ints), dtype name] with distinct names (dtype: a NumPy name, key<impl> or "
        f"one of {list(PYTHON_LEAVES)})",
    ),
}
LAYOUT = Field(
    _layout_ok, lambda r: f"a list of 'linear' ({_n_layers(r)} times) and activation names from {list(ACTIVATIONS)}"
)
# The options of each kind `save` writes (`ModelKind.describe`); a kind not listed here may store any JSON object.
OPTION_FIELDS = {
    "jaxlump.DenseChain": {},
    "jaxlump.LumpedMLP": {},
    "eqx.nn.MLP": {
        "scan": Field(_is_bool, "true or false"),
        "width_size": Field(lambda v, r: is_int(v), "a non-negative integer"),
    },
    "eqx.nn.Sequential": {"layout": LAYOUT},
    "flax.nnx.Sequential": {"layout": LAYOUT},
    "flax.nnx.Linear": {"layout": Field(lambda v, r: v is None, "null (a single nnx.Linear)")},
    SKIP_KIND: {
        "skip_sources": Field(
            _skip_sources_ok, lambda r: f"a list of {_n_layers(r)} lists of earlier layer indices (k < l for layer l)"
        )
    },
}
INFO_FIELDS = {
    "method": Field(_is_str, "a string"),
    "structured": Field(_is_bool, "true or false"),
    "widths_before": Field(lambda v, r: type(v) is list and all(is_int(w) for w in v), "a list of integers"),
    "n_partitions": Field(lambda v, r: is_int(v), "a non-negative integer"),
    "n_weight_masks": Field(lambda v, r: v is None or is_int(v), "a non-negative integer or null"),
    "has_certificate": Field(_is_bool, "true or false"),
    "result_messages": Field(_messages_ok, "a result message (a string) or nested lists of them"),
    "arrays": Field(_array_specs_ok, "a JSON object mapping each array name to [shape (list of ints), dtype name]"),
}


def check_fields(record, fields: dict, where: str, path: str, context: dict | None = None, prefix: str = ""):
    """Refuse a `record` (a JSON object) that lacks one of `fields`, holds another field, or a value a field does
    not accept; the message names `path`, the field, what was found and what is accepted. `context`: the object
    the fields' tests see (default `record`)."""

    def refuse(field: str, accepted: str, found: str) -> ValueError:
        return ValueError(f"`path` {path}: {prefix}structure field {field} must be {accepted}; found {found}.")

    if type(record) is not dict:
        raise refuse(where, "a JSON object", repr(record))
    unknown = sorted(set(record) - set(fields))
    if unknown:
        raise refuse(where, f"a JSON object with the fields {list(fields)}", f"the unknown field(s) {unknown}")
    context = record if context is None else context
    for name, field in fields.items():
        value = record.get(name, _MISSING)
        if value is _MISSING and field.optional:
            continue
        if value is _MISSING or not field.accepts(value, context):
            accepted = field.accepted(context) if callable(field.accepted) else field.accepted
            raise refuse(
                f"{where}.{name}", accepted, "nothing (the field is missing)" if value is _MISSING else repr(value)
            )
    return record
