"""Save and load models whose shapes changed — widths stored with the weights, no pickle.

A file is one NumPy `.npz` archive (a zip of `.npy` arrays, read with `allow_pickle=False`): the canonical
chain's arrays under `layers[l].weight` (shape `(n_{l+1}, n_l)`, Equinox's `(out, in)`, for every model kind)
and `layers[l].bias` (only for layers with a bias), a `SkipMLP`'s skip matrices under `skips[l]`, the model's
output on a fixed probe batch under `check.probe_output`, the `CompressionInfo` arrays under `info.<field
path>`, and one JSON record under `__jaxlump__` with the structure: format and version, model kind, widths,
activation names, `use_bias` flags, dtype and the kind's own options (MLP `scan`, Sequential layout ...).

Loading checks every array against the stored widths and dtype, rebuilds the model through its kind
(`jaxlump._model.KINDS`), and checks the rebuilt model's output on the probe batch against the stored one,
so a file that loads computes what the saved model computed (an activation declared differently since, for
instance, is refused). Equinox's `tree_serialise_leaves` was considered: it needs a template of the same
shapes, which is exactly what a model whose widths changed does not have, so the widths and kinds are
stored here in the JSON record and the arrays under readable names.

Any other Equinox or Flax NNX module (a model compressed site by site) is stored the Equinox way, in the same
archive: the record (kind `jaxlump.sites`) holds its family, its class name, every registered layer's path,
type, `(out, in)` shape and `use_bias`, and the name, shape and dtype of every array leaf (Equinox: the
module's leaves; NNX: `nnx.state`), stored under `leaves<path>`. jaxlump cannot build a user's class from a
file, so `load(path, like=model)` rebuilds `like` (the model before compression, say) with layers of the
stored shapes through the layer types' `rebuild`, checks class, paths and every leaf's shape and dtype, and
puts the stored leaves into it (Python number leaves are stored too; functions and other leaves come from
`like`). No probe output is stored for such a model (jaxlump does not know its inputs).

Files are written atomically: to a new file beside `path`, renamed over it once complete.
"""

import contextlib
import json
import os
import secrets
import zipfile
import zlib

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from .._errors import RESULTS, is_traced
from .._model import KINDS, apply_model, is_chain_kind, kind_of, param_dtype, probe_batch, to_chain
from .._model.network import DenseChain, refuse_gated
from .._model.skip_mlp import SkipMLP
from .._results.accounting import Cost
from .._results.info import Certificate, CompressionInfo
from .._sites.heads import with_consistent_heads
from .._sites.layers import FAMILIES, LAYER_TYPES, layer_type_of, path_name
from .._sites.norms import norm_type_of
from .file_header import (
    FORMAT,
    HEADER_FIELDS,
    INFO_FIELDS,
    MODEL_FIELDS,
    OPTION_FIELDS,
    PYTHON_LEAVES,
    SITES_FIELDS,
    SITES_KIND,
    SKIP_KIND,
    VERSION,
    check_fields,
    is_int,
)

_HEADER = "__jaxlump__"
_PROBE_KEY = "check.probe_output"
_CORRUPT = (ValueError, EOFError, OSError, KeyError, zipfile.BadZipFile, zlib.error)


def _storable(array) -> np.ndarray:
    """The array as stored: extension float types (bfloat16 ...), which `.npz` cannot describe, as raw bits."""
    array = np.asarray(array)
    if array.dtype.kind == "O":
        raise TypeError(f"cannot store a non-numeric value of type {type(array.flat[0]).__name__} without pickle.")
    return array.view(_stored_dtype(array.dtype))


def _stored_dtype(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    return np.dtype(f"u{dtype.itemsize}") if dtype.kind == "V" else dtype


def _restored(array: np.ndarray, dtype) -> jnp.ndarray:
    return jnp.asarray(array.view(jnp.dtype(dtype)) if jnp.dtype(dtype).kind == "V" else array)


def _parts(model) -> tuple[str, DenseChain, dict, tuple]:
    """Kind name, chain (in the model's own dtype), kind options and skip matrices of `model`."""
    if isinstance(model, SkipMLP):
        chain = model.dense_chain()
        return SKIP_KIND, chain, {"skip_sources": [list(s) for s in model.skip_sources]}, model.skips
    kind = kind_of(model)
    chain = to_chain(model)
    refuse_gated(chain, "model", "jaxlump.save")
    dtype = param_dtype(model) or chain.weights[0].dtype
    chain = DenseChain(
        tuple(w.astype(dtype) for w in chain.weights),
        tuple(b.astype(dtype) for b in chain.biases),
        chain.activations,
        chain.use_bias,
    )
    return kind.name, chain, kind.describe(model, chain), (None,) * chain.n_layers


def _model_arrays(chain: DenseChain, skips) -> dict[str, np.ndarray]:
    arrays = {}
    for l, (weight, bias, has_bias, skip) in enumerate(zip(chain.weights, chain.biases, chain.use_bias, skips)):
        arrays[f"layers[{l}].weight"] = _storable(weight)
        if has_bias:
            arrays[f"layers[{l}].bias"] = _storable(bias)
        if skip is not None:
            arrays[f"skips[{l}]"] = _storable(skip)
    return arrays


def _expected_model_arrays(record: dict) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    widths, dtype = record["widths"], _stored_dtype(jnp.dtype(record["dtype"]))
    sources = record["options"].get("skip_sources") if record["kind"] == SKIP_KIND else None
    expected = {}
    for l, has_bias in enumerate(record["use_bias"]):
        expected[f"layers[{l}].weight"] = ((widths[l + 1], widths[l]), dtype)
        if has_bias:
            expected[f"layers[{l}].bias"] = ((widths[l + 1],), dtype)
        if sources and sources[l]:
            expected[f"skips[{l}]"] = ((widths[l + 1], sum(widths[k] for k in sources[l])), dtype)
    return expected


def _check_arrays(arrays: dict, expected: dict, path: str, what: str) -> None:
    """Every expected array present with its stored shape and dtype, nothing else; all problems in one error."""
    problems = []
    for key, (shape, dtype) in expected.items():
        if key not in arrays:
            problems.append(f"{key}: missing (expected shape {tuple(shape)})")
        elif arrays[key].shape != tuple(shape):
            problems.append(f"{key}: expected {tuple(shape)}, found {arrays[key].shape}")
        elif arrays[key].dtype != np.dtype(dtype):
            problems.append(f"{key}: expected dtype {np.dtype(dtype)}, found {arrays[key].dtype}")
    problems += [f"{key}: unexpected array" for key in sorted(set(arrays) - set(expected))]
    if problems:
        raise ValueError(f"`path` {path}: the stored arrays do not match {what}:\n  " + "\n  ".join(problems))


def _info_template(record: dict) -> CompressionInfo:
    """A `CompressionInfo` with the stored tree structure and placeholder leaves of the right kinds."""
    real, integer = jnp.zeros(()), jnp.zeros((), int)
    n_masks = record["n_weight_masks"]
    return CompressionInfo(
        method=str(record["method"]),
        structured=bool(record["structured"]),
        knob=real,
        partitions=(jnp.zeros(0, int),) * int(record["n_partitions"]),
        weight_masks=None if n_masks is None else (jnp.zeros((0, 0), bool),) * int(n_masks),
        widths_before=tuple(int(w) for w in record["widths_before"]),
        widths_after=jnp.zeros(0, int),
        cost_before=Cost(integer, integer, integer),
        cost_after=Cost(integer, integer, integer),
        certificate=Certificate(real, real, real, real) if record["has_certificate"] else None,
        result=RESULTS.successful,
    )


def _info_keys(info: CompressionInfo) -> list[str]:
    return [f"info{jtu.keystr(p)}" for p, _ in jtu.tree_flatten_with_path(info)[0]]


def _check_info_fits(info: CompressionInfo, widths: tuple[int, ...]) -> None:
    """Refuse an `info` that describes another model: widths, partitions and masks checked against `widths`."""

    def refuse(detail: str) -> ValueError:
        return ValueError(f"`info` does not describe `model` (widths {widths}): {detail}.")

    before = tuple(info.widths_before)
    if len(before) != len(widths) or (before[0], before[-1]) != (widths[0], widths[-1]):
        raise refuse(f"its widths_before {before} have another depth, input or output width")
    after = np.asarray(info.widths_after).reshape(-1, len(widths)) if np.size(info.widths_after) else None
    if after is None or not (widths == before or all(tuple(row) == widths for row in after.tolist())):
        found = None if after is None else after.tolist()
        raise refuse(f"its widths_after {found} are not the model's widths (nor is the model the masked form)")
    if len(info.partitions) != len(widths) - 2:
        raise refuse(f"it has {len(info.partitions)} partitions for {len(widths) - 2} hidden layers")
    for l, labels in enumerate(info.partitions):
        labels = np.asarray(labels)
        if labels.shape[-1:] != (before[l + 1],) or (
            labels.size and not -1 <= labels.min() <= labels.max() < widths[l + 1]
        ):
            raise refuse(
                f"partitions[{l}] has shape {labels.shape} and labels in [{labels.min(initial=0)}, "
                f"{labels.max(initial=0)}]; expected {before[l + 1]} labels in [-1, {widths[l + 1]})"
            )
    if info.weight_masks is not None:
        shapes = [np.shape(m)[-2:] for m in info.weight_masks]
        expected = [(n_out, n_in) for n_in, n_out in zip(widths[:-1], widths[1:])]
        if shapes != expected:
            raise refuse(f"its weight masks have shapes {shapes}; the model's weights have {expected}")


def _info_record(info: CompressionInfo) -> tuple[dict[str, np.ndarray], dict]:
    leaves = jtu.tree_leaves(info)
    arrays = {key: _storable(leaf) for key, leaf in zip(_info_keys(info), leaves, strict=True)}
    record = {
        "method": info.method,
        "structured": bool(info.structured),
        "widths_before": [int(w) for w in info.widths_before],
        "n_partitions": len(info.partitions),
        "n_weight_masks": None if info.weight_masks is None else len(info.weight_masks),
        "has_certificate": info.certificate is not None,
        "result_messages": np.asarray(RESULTS[info.result]).tolist(),
        "arrays": {
            key: [list(a.shape), str(np.asarray(leaf).dtype)]
            for (key, a), leaf in zip(arrays.items(), leaves, strict=True)
        },
    }
    return arrays, record


def _load_info(arrays: dict, record, path: str) -> CompressionInfo:
    check_fields(record, INFO_FIELDS, "info", path, prefix="the stored CompressionInfo record is malformed: ")
    template = _info_template(record)
    stored = sorted(record["arrays"])
    keys = _info_keys(template)
    if sorted(keys) != stored:
        raise ValueError(f"`path` {path}: the stored CompressionInfo lists arrays {stored}; expected {keys}.")
    expected = {key: (shape, _stored_dtype(jnp.dtype(dtype))) for key, (shape, dtype) in record["arrays"].items()}
    _check_arrays(arrays, expected, path, "the stored CompressionInfo")
    leaves = [_restored(arrays[key], record["arrays"][key][1]) for key in keys]
    info = jtu.tree_unflatten(jtu.tree_structure(template), leaves)
    messages = np.asarray(RESULTS[info.result]).tolist()
    if messages != record["result_messages"]:
        raise ValueError(
            f"`path` {path}: info.result was saved as {record['result_messages']!r}, which this version of jaxlump "
            f"numbers differently ({messages!r})."
        )
    return info


def _read(path: str) -> tuple[dict[str, np.ndarray], dict]:
    """The archive's arrays and its JSON record, after checking the file kind and format version."""
    not_ours = f"`path` {path} is not a jaxlump model file"
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except _CORRUPT as e:
        raise ValueError(f"{not_ours} (not a readable NumPy .npz archive: {e}).") from e
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{not_ours} (a single NumPy array, not a .npz archive).")
    with data:
        try:
            arrays = {key: data[key] for key in data.files}
        except _CORRUPT as e:  # a damaged member (CRC mismatch, truncation) or an object array needing pickle
            raise ValueError(
                f"`path` {path} is damaged or not a jaxlump model file: an array cannot be read ({e})."
            ) from e
    header = arrays.pop(_HEADER, None)
    if header is None or header.ndim != 0 or header.dtype.kind != "U":
        raise ValueError(f"{not_ours} (no `{_HEADER}` structure record; files are written by `jaxlump.save`).")
    try:
        record = json.loads(str(header[()]))
    except json.JSONDecodeError as e:
        raise ValueError(f"{not_ours} (its structure record is not valid JSON: {e}).") from e
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{not_ours} (format {record.get('format') if isinstance(record, dict) else None!r}).")
    if not is_int(record.get("version")) or record["version"] != VERSION:
        raise ValueError(
            f"`path` {path}: structure field header.version must be the integer {VERSION}; found "
            f"{record.get('version', 'nothing')!r} (format version {record.get('version')!r}; this version of "
            f"jaxlump reads version {VERSION}: load the file with the jaxlump version that wrote it)."
        )
    return arrays, check_fields(record, HEADER_FIELDS, "header", path)


def _check_model_record(record, path: str) -> dict:
    """The model part of the structure record, checked against `MODEL_FIELDS` and its kind's `OPTION_FIELDS`
    (`SITES_FIELDS` for a model saved site by site)."""
    if type(record) is dict and record.get("kind") == SITES_KIND:
        return check_fields(record, SITES_FIELDS, "model", path)
    check_fields(record, MODEL_FIELDS, "model", path)
    options = OPTION_FIELDS.get(record["kind"])
    if options is not None:
        check_fields(record["options"], options, "model.options", path, context=record)
    return record


def _output(model, x) -> np.ndarray:
    with jax.ensure_compile_time_eval():
        outputs = model(x) if isinstance(model, SkipMLP) else apply_model(model, x)
        return np.asarray(outputs)


# Models of any class, saved site by site ------------------------------------------------------------------------


def _family(model, name: str = "model"):
    """The model's family when it holds a registered layer, else a refusal naming what `save`/`load` accept."""
    family = next((f for f in FAMILIES if f.matches(model)), None)
    if family is None or not family.layers(model):
        raise TypeError(
            f"`{name}` of type {type(model).__name__} is not supported: `jaxlump.save` stores chain models "
            "(eqx.nn.MLP, eqx.nn.Sequential of eqx.nn.Linear + activations, jaxlump.LumpedMLP, jaxlump.SkipMLP, "
            "DenseChain, flax.nnx.Sequential / flax.nnx.Linear) and Equinox or Flax NNX modules holding "
            f"{', '.join(t.name for t in LAYER_TYPES)} layers."
        )
    return family


def _leaf_kind(leaf) -> str | None:
    """The stored dtype name of one leaf of a model's state; `None` for a leaf that is not stored (a function or
    another non-numeric leaf, which `load` takes from `like`)."""
    if type(leaf) in (bool, int, float, complex):
        return f"python:{type(leaf).__name__}"
    if isinstance(leaf, (jax.Array, np.ndarray, np.generic)):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return f"key<{jax.random.key_impl(leaf)}>"
        return str(leaf.dtype)
    return None


def _leaf_shape(leaf, kind: str) -> list[int]:
    """The shape of the array stored for `leaf` (a key's data has the key implementation's trailing axes)."""
    if kind.startswith("key<"):
        return list(jax.eval_shape(jax.random.key_data, leaf).shape)
    return list(np.shape(leaf))


def _leaf_array(leaf, kind: str) -> np.ndarray:
    if kind.startswith("key<"):
        return np.asarray(jax.random.key_data(leaf))
    return _storable(leaf)


def _leaf_stored_dtype(kind: str) -> np.dtype:
    if kind.startswith("key<"):
        return np.dtype("uint32")
    if kind in PYTHON_LEAVES:
        return np.asarray(PYTHON_LEAVES[kind]()).dtype
    return _stored_dtype(jnp.dtype(kind))


def _leaf_restored(array: np.ndarray, kind: str, template):
    if kind.startswith("key<"):
        return jax.random.wrap_key_data(jnp.asarray(array), impl=kind[4:-1])
    if kind in PYTHON_LEAVES:
        return PYTHON_LEAVES[kind](array[()].item())
    restored = _restored(array, kind)
    return np.asarray(restored) if isinstance(template, np.ndarray) else restored


def _named_leaves(family, model) -> tuple[list[tuple[str, object]], object]:
    """The leaves of the family's state of `model`, named by their pytree paths, and its tree structure."""
    leaves, treedef = jtu.tree_flatten_with_path(family.state(model))
    return [(f"leaves{jtu.keystr(p)}", leaf) for p, leaf in leaves], treedef


def _sites_record(model, info) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays and the model record of a model saved site by site: its layers' shapes and its leaves."""
    family = _family(model)
    if info is not None:
        raise TypeError(
            f"`info`: `model` ({type(model).__name__}) is saved site by site, and `save` stores no info with such a "
            f"model (a SitesInfo is not stored); received {type(info).__name__}. Pass info=None and keep "
            "`info.describe()` beside the file if you need it."
        )
    layers = []
    for layer_path, layer in family.layers(model):
        layer_type = layer_type_of(layer)
        weight, _, use_bias = layer_type.read(layer)
        shape = [int(n) for n in np.shape(weight)]
        layers.append({"path": list(layer_path), "type": layer_type.name, "shape": shape, "use_bias": bool(use_bias)})
    arrays, specs = {}, []
    for name, leaf in _named_leaves(family, model)[0]:
        kind = _leaf_kind(leaf)
        if kind is None:
            continue
        array = _leaf_array(leaf, kind)
        if jnp.issubdtype(np.asarray(leaf).dtype, jnp.inexact) and not np.all(np.isfinite(np.asarray(leaf))):
            raise ValueError(
                f"`model`: {name[len('leaves') :]} contains NaN or inf; `save` stores models with finite arrays."
            )
        arrays[name] = array
        specs.append([name, list(array.shape), kind])
    norms = [
        {"path": list(norm_path), "width": int(np.size(norm_type_of(norm).affine(norm)[0]))}
        for norm_path, norm in family.norms(model)
    ]
    record = {
        "kind": SITES_KIND,
        "family": family.name,
        "class": type(model).__qualname__,
        "layers": layers,
        "norms": norms,
        "leaves": specs,
    }
    return arrays, record


def _load_sites(arrays: dict, structure: dict, path: str, like):
    """Rebuild `like` with the stored layer shapes and put the stored leaves into it (see `load`)."""
    saved = f"{structure['class']} ({structure['family']})"
    if like is None:
        raise ValueError(
            f"`like`: `path` {path} holds a {saved} saved site by site, which jaxlump cannot build from the file "
            f"alone (it does not know the class's constructor); pass like=<a {structure['class']}>, for instance "
            "the model before compression: `jaxlump.load(path, like=model)`."
        )
    family = next((f for f in FAMILIES if f.matches(like)), None)
    received = f"{type(like).__qualname__}" + (f" ({family.name})" if family is not None else "")
    if family is None or family.name != structure["family"] or type(like).__qualname__ != structure["class"]:
        raise ValueError(f"`like` must be a {saved}, the class of the saved model; received a {received}.")
    present = family.layers(like)
    have, stored = [p for p, _ in present], [tuple(layer["path"]) for layer in structure["layers"]]
    if have != stored:
        missing = [path_name(p) for p in stored if p not in have]
        extra = [path_name(p) for p in have if p not in stored]
        detail = "; ".join(
            [f"saved but not in `like`: {missing}"] * bool(missing)
            + [f"in `like` but not saved: {extra}"] * bool(extra)
        )
        raise ValueError(
            f"`like` (a {received}) does not hold the saved model's layers: {detail or 'they come in another order'}."
        )
    replacements, problems = {}, []
    for (layer_path, layer), spec in zip(present, structure["layers"]):
        layer_type = layer_type_of(layer)
        weight, _, use_bias = layer_type.read(layer)
        name = path_name(layer_path)
        if layer_type.name != spec["type"] or bool(use_bias) != spec["use_bias"]:
            problems.append(
                f"{name}: saved as a {spec['type']} with use_bias={spec['use_bias']}, `like` holds a "
                f"{layer_type.name} with use_bias={bool(use_bias)}"
            )
        elif tuple(np.shape(weight)) != tuple(spec["shape"]):
            shape = tuple(spec["shape"])  # `(out, in)`, or `(out, in, *kernel)` for a convolution
            zeros = jnp.zeros(shape, weight.dtype), jnp.zeros(shape[:1], weight.dtype)
            replacements[layer_path] = layer_type.rebuild(layer, *zeros)
    if problems:
        raise ValueError(f"`like` (a {received}) does not fit the saved model:\n  " + "\n  ".join(problems))
    widths = {tuple(norm["path"]): norm["width"] for norm in structure.get("norms", [])}
    for norm_path, norm in family.norms(like):  # at the saved width; its values are the stored leaves below
        width = widths.get(tuple(norm_path))
        if width is not None and width != np.size(norm_type_of(norm).affine(norm)[0]):
            replacements[norm_path] = norm_type_of(norm).rebuild(norm, np.zeros(width, int), jnp.zeros(width))
    expected = {name: (shape, _leaf_stored_dtype(kind)) for name, shape, kind in structure["leaves"]}
    _check_arrays(arrays, expected, path, "the stored leaves")
    template = with_consistent_heads(family, family.replace(like, replacements))
    named, treedef = _named_leaves(family, template)
    kinds = {name: kind for name, _, kind in structure["leaves"]}
    ours = {name: (_leaf_shape(leaf, kind), kind) for name, leaf in named if (kind := _leaf_kind(leaf)) is not None}
    problems = [f"{n}: saved, not in `like`" for n in kinds if n not in ours]
    problems += [f"{n}: in `like`, not saved" for n in ours if n not in kinds]
    problems += [
        f"{n}: saved with shape {tuple(expected[n][0])} and dtype {kinds[n]}, `like` (with the saved layer shapes) "
        f"has {tuple(shape)} and {kind}"
        for n, (shape, kind) in ours.items()
        if n in kinds and (list(shape) != list(expected[n][0]) or kind != kinds[n])
    ]
    if problems:
        raise ValueError(
            f"`like` (a {received}) does not have the saved model's arrays, even with the saved layer shapes (was it "
            "built with other settings than the saved model?):\n  " + "\n  ".join(problems)
        )
    leaves = []
    for name, leaf in named:
        if name not in kinds:
            leaves.append(leaf)
            continue
        if kinds[name] not in PYTHON_LEAVES and not kinds[name].startswith("key<"):
            values = np.asarray(_restored(arrays[name], kinds[name]))
            if jnp.issubdtype(values.dtype, jnp.inexact) and not np.all(np.isfinite(values)):
                raise ValueError(f"`path` {path}: the stored array {name} contains NaN or inf (the file is damaged).")
        leaves.append(_leaf_restored(arrays[name], kinds[name], leaf))
    return family.with_state(template, jtu.tree_unflatten(treedef, leaves))


def _write(path: str, arrays: dict) -> None:
    """Write the archive atomically: to a new file beside `path`, then renamed over it, so that an interrupted or
    failed write leaves whatever `path` held before."""
    directory, base = os.path.split(os.path.abspath(path))
    temporary = os.path.join(directory, f".{base}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    mode = os.stat(path).st_mode & 0o777 if os.path.isfile(path) else None
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
    try:
        with os.fdopen(descriptor, "wb") as file:
            np.savez(file, **arrays)
        if mode is not None:
            os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def save(path: str | os.PathLike, model, info: CompressionInfo | None = None) -> None:
    """Write `model` (and optionally the `info` of its compression) to one `.npz` file, without pickle.

    The file stores the widths, activation names, bias flags, dtype and the model kind's options beside
    the weights, so a model whose shapes changed (lumped, pruned, linearity-merged) loads back without a
    template, and the model's output on a fixed probe batch, which `load` checks. Any other Equinox or NNX
    module (a model compressed site by site) is stored with its class name, its layers' paths and shapes and
    its array leaves; `load(path, like=...)` reads it back into the user's class. The file is written
    atomically (a failed write leaves what `path` held).

    **Arguments:**

    - `path`: the file to write (exactly this name; no suffix is added).
    - `model`: an `eqx.nn.MLP`, `eqx.nn.Sequential` of `eqx.nn.Linear` + activations, `jaxlump.LumpedMLP`,
        `jaxlump.SkipMLP`, `DenseChain`, a Flax NNX `nnx.Sequential` / `nnx.Linear`, or any other Equinox or
        Flax NNX module holding registered layers (`eqx.nn.Linear`, `nnx.Linear`); concrete (not traced).
    - `info`: the `CompressionInfo` returned beside a chain model, or `None`; it must describe `model`. A
        model of any other class is stored without info (its `SitesInfo` is not stored): pass `None`.

    **Returns:** nothing.

    **Raises:** `TypeError` for an unsupported model or `info` (any info with a model of another class than
    the chain kinds), or traced values (under `jax.jit`); `ValueError` for NaN/inf parameters, a chain
    model's parameters of mixed dtypes, or an `info` whose widths, partitions or masks do not fit `model`.

    ```python
    import os, tempfile
    import equinox as eqx, jax.numpy as jnp, jax.random as jr
    import jaxlump

    mlp = eqx.nn.MLP(3, 2, 8, 2, activation=jnp.tanh, key=jr.key(0))
    path = os.path.join(tempfile.mkdtemp(), "mlp.npz")
    jaxlump.save(path, mlp)
    assert jnp.array_equal(jaxlump.load(path)(jnp.ones(3)), mlp(jnp.ones(3)))
    ```
    """
    traced = [leaf for leaf in jtu.tree_leaves((model, info)) if is_traced(leaf)]
    if traced:
        raise TypeError(
            f"`save` needs concrete values, but `model` or `info` holds {len(traced)} traced array(s) (it was called "
            "inside jax.jit, jax.vmap or jax.grad); return the model from the transformed function and save it outside."
        )
    if not is_chain_kind(model) and any(f.matches(model) for f in FAMILIES):
        arrays, structure = _sites_record(model, info)
        record = {"format": FORMAT, "version": VERSION, "model": structure, "info": None}
        _write(os.fspath(path), {**arrays, _HEADER: np.asarray(json.dumps(record))})
        return
    if info is not None and not isinstance(info, CompressionInfo):
        raise TypeError(f"`info` must be a jaxlump CompressionInfo or None; received {type(info).__name__}.")
    leaves = [leaf for leaf in jtu.tree_leaves(model) if eqx.is_inexact_array(leaf)]
    dtypes = sorted({str(leaf.dtype) for leaf in leaves})
    if len(dtypes) > 1:
        raise ValueError(f"`model` mixes parameter dtypes {dtypes}; `save` stores models with one dtype.")
    kind, chain, options, skips = _parts(model)
    if info is not None:
        _check_info_fits(info, chain.widths)
    arrays = _model_arrays(chain, skips)
    arrays[_PROBE_KEY] = _storable(_output(model, probe_batch(chain.widths[0], chain.weights[0].dtype)))
    record = {
        "format": FORMAT,
        "version": VERSION,
        "model": {
            "kind": kind,
            "widths": list(chain.widths),
            "activations": list(chain.activations),
            "use_bias": list(chain.use_bias),
            "dtype": str(chain.weights[0].dtype),
            "options": options,
        },
        "info": None,
    }
    if info is not None:
        info_arrays, record["info"] = _info_record(info)
        arrays.update(info_arrays)
    _write(os.fspath(path), {**arrays, _HEADER: np.asarray(json.dumps(record))})


def _build(structure: dict, chain: DenseChain, arrays: dict, path: str):
    kind, options = structure["kind"], structure["options"]
    try:
        if kind == SKIP_KIND:
            sources = tuple(tuple(s) for s in options["skip_sources"])
            skips = tuple(
                _restored(arrays[f"skips[{l}]"], structure["dtype"]) if s else None for l, s in enumerate(sources)
            )
            return SkipMLP(chain.weights, chain.biases, chain.activations, chain.use_bias, skips, sources)
        model = next(k for k in KINDS if k.name == kind).build(options, chain)
        rebuilt = to_chain(model)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"`path` {path}: the stored structure of the {kind} cannot be rebuilt ({e}).") from e
    if (rebuilt.widths, rebuilt.activations, rebuilt.use_bias) != (chain.widths, chain.activations, chain.use_bias):
        raise ValueError(
            f"`path` {path}: the stored {kind} options {options} give activations {rebuilt.activations} and use_bias "
            f"{rebuilt.use_bias}; the record has {chain.activations} and {chain.use_bias}."
        )
    return model


def load(path: str | os.PathLike, *, like=None):
    """Read a model written by `save`: the same kind of model, with the stored widths and weights.

    Every array is checked against the stored widths and dtype before anything is built; a mismatch
    names the array, e.g. `layers[1].weight: expected (16, 7), found (12, 7)`. Activations come back
    as the known function objects for the stored names (`jnp.tanh` for `"tanh"`; a `jaxlump.Activation`
    must be declared again before loading); NNX layers come back with Flax's default computation settings.
    The rebuilt model's output on the stored probe batch must match the saved model's.

    A model of any other Equinox or NNX class (saved site by site) needs `like`: an instance of its class with
    the same layer paths, such as the model before compression. `like` is rebuilt with layers of the stored
    shapes (its other settings kept), the stored leaves are put into it, and the result is returned; `like`
    itself is not changed (NNX: a copy).

    **Arguments:**

    - `path`: a file written by `jaxlump.save`.
    - `like`: for a model saved site by site, an instance of its class (same family, class name and layer
        paths; the layers' shapes may differ); `None` for the chain kinds, which are rebuilt from the file.

    **Returns:** the model (`jaxlump.load_info` reads the `CompressionInfo` saved with it).

    **Raises:** `ValueError` naming `path` when the file is damaged (truncated, bit-flipped), not a jaxlump
    file, of another format version, or its arrays do not match its structure or its probe output;
    `ValueError` naming `like` when it is missing for a model saved site by site, given for a chain model, of
    another class or family, with other layer paths, or with arrays that do not match the stored ones once
    its layers have the stored shapes; `FileNotFoundError` when the file does not exist.

    ```python
    import os, tempfile
    import equinox as eqx, jax.numpy as jnp, jax.random as jr
    import jaxlump

    seq = eqx.nn.Sequential([eqx.nn.Linear(3, 5, key=jr.key(0)), eqx.nn.Lambda(jnp.tanh),
                             eqx.nn.Linear(5, 1, key=jr.key(1))])
    path = os.path.join(tempfile.mkdtemp(), "seq.npz")
    jaxlump.save(path, seq)
    model = jaxlump.load(path)
    assert jaxlump.load_info(path) is None and jnp.array_equal(model(jnp.ones(3)), seq(jnp.ones(3)))

    class Block(eqx.Module):  # any class: saved site by site, read back into `like`
        up: eqx.nn.Linear
        down: eqx.nn.Linear

        def __call__(self, x):
            return x + self.down(jnp.tanh(self.up(x)))

    block = Block(eqx.nn.Linear(3, 8, key=jr.key(2)), eqx.nn.Linear(8, 3, key=jr.key(3)))
    small = eqx.tree_at(lambda b: (b.up, b.down), block, (eqx.nn.Linear(3, 4, key=jr.key(4)),
                                                        eqx.nn.Linear(4, 3, key=jr.key(5))))
    jaxlump.save(os.path.join(os.path.dirname(path), "block.npz"), small)
    loaded = jaxlump.load(os.path.join(os.path.dirname(path), "block.npz"), like=block)
    assert type(loaded) is Block and loaded.up.out_features == 4
    assert jnp.array_equal(loaded(jnp.ones(3)), small(jnp.ones(3)))
    ```
    """
    path = os.fspath(path)
    arrays, record = _read(path)
    structure = _check_model_record(record.get("model"), path)
    if structure["kind"] == SITES_KIND:
        _stored_info(arrays, record, structure, path)
        return _load_sites(arrays, structure, path, like)
    if like is not None:
        raise ValueError(
            f"`like` applies to files of models saved site by site (any Equinox or NNX class); `path` {path} holds a "
            f"{structure['kind']}, which `load` rebuilds from the file alone: pass like=None. Received a "
            f"{type(like).__name__}."
        )
    probe_output = arrays.pop(_PROBE_KEY, None)
    model_arrays = {key: a for key, a in arrays.items() if not key.startswith("info.")}
    widths, dtype = tuple(structure["widths"]), structure["dtype"]
    _check_arrays(model_arrays, _expected_model_arrays(structure), path, f"the stored widths {widths} ({dtype})")
    weights = tuple(_restored(model_arrays[f"layers[{l}].weight"], dtype) for l in range(len(widths) - 1))
    biases = tuple(
        _restored(model_arrays[f"layers[{l}].bias"], dtype) if has_bias else jnp.zeros(widths[l + 1], dtype)
        for l, has_bias in enumerate(structure["use_bias"])
    )
    chain = DenseChain(weights, biases, tuple(structure["activations"]), tuple(structure["use_bias"]))
    model = _build(structure, chain, model_arrays, path)
    expected_shape = (probe_batch(widths[0], jnp.float32).shape[0], widths[-1])
    if probe_output is None or probe_output.shape != expected_shape:
        raise ValueError(f"`path` {path}: the probe output `{_PROBE_KEY}` of shape {expected_shape} is missing.")
    stored = np.asarray(_restored(probe_output, dtype), np.float64)
    computed = np.asarray(_output(model, probe_batch(widths[0], jnp.dtype(dtype))), np.float64)
    tolerance = float(np.sqrt(jnp.finfo(dtype).eps))
    atol = tolerance * (1.0 + float(np.max(np.abs(np.nan_to_num(stored)), initial=0.0)))
    if computed.shape != stored.shape or not np.allclose(computed, stored, rtol=tolerance, atol=atol, equal_nan=True):
        raise ValueError(
            f"`path` {path}: the loaded {structure['kind']} computes another function than the saved one (max "
            f"|difference| {np.nanmax(np.abs(computed - stored)):.3g} on the probe batch); was an activation of "
            f"{structure['activations']} declared differently since it was saved?"
        )
    _stored_info(arrays, record, structure, path)
    return model


def load_info(path: str | os.PathLike) -> CompressionInfo | None:
    """The `CompressionInfo` saved with a model by `jaxlump.save(path, model, info)`, or `None` when none was (and
    always for a model saved site by site, which is stored without one).

    **Raises:** as `jaxlump.load` for a damaged, foreign or mismatched file.

    ```python
    import os, tempfile
    import equinox as eqx, jax.random as jr, jaxlump
    mlp = eqx.nn.MLP(2, 1, 8, 1, key=jr.key(0))
    small, info = jaxlump.lump(mlp, None, 0.5)
    path = os.path.join(tempfile.mkdtemp(), "small.npz")
    jaxlump.save(path, small, info)
    stored = jaxlump.load_info(path)
    assert stored.method == "lump" and tuple(stored.widths_after) == tuple(info.widths_after)
    ```
    """
    path = os.fspath(path)
    arrays, record = _read(path)
    return _stored_info(arrays, record, _check_model_record(record.get("model"), path), path)


def _stored_info(arrays: dict, record: dict, structure: dict, path: str) -> CompressionInfo | None:
    if structure["kind"] == SITES_KIND:
        info_arrays = sorted(key for key in arrays if not key.startswith("leaves"))
        if record.get("info") is not None or info_arrays:
            raise ValueError(
                f"`path` {path}: a model saved site by site is stored without info, but the file holds "
                f"{'an info record' if record.get('info') is not None else f'the arrays {info_arrays}'}."
            )
        return None
    info_arrays = {key: a for key, a in arrays.items() if key.startswith("info.")}
    if record.get("info") is None:
        _check_arrays(info_arrays, {}, path, "the record, which holds no CompressionInfo")
        return None
    return _load_info(info_arrays, record["info"], path)
