"""Save and load models whose shapes changed — widths stored with the weights, no pickle.

A file is one NumPy `.npz` archive (a zip of `.npy` arrays, read with `allow_pickle=False`): the canonical
chain's arrays under `layers[l].weight` (shape `(n_{l+1}, n_l)`, Equinox's `(out, in)`, for every model kind)
and `layers[l].bias` (only for layers with a bias), a `SkipMLP`'s skip matrices under `skips[l]`, the model's
output on a fixed probe batch under `check.probe_output`, the `CompressionInfo` arrays under `info.<field
path>`, and one JSON record under `__jaxlump__` with the structure: format and version, model kind, widths,
activation names, `use_bias` flags, dtype and the kind's own options (MLP `scan`, Sequential layout ...).

Loading checks every array against the stored widths and dtype, rebuilds the model through its kind
(`jaxlump._adapters.KINDS`), and checks the rebuilt model's output on the probe batch against the stored one,
so a file that loads computes what the saved model computed (an activation declared differently since, for
instance, is refused). Equinox's `tree_serialise_leaves` was considered: it needs a template of the same
shapes, which is exactly what a model whose widths changed does not have, so the widths and kinds are
stored here in the JSON record and the arrays under readable names.
"""

import json
import os
import zipfile
import zlib

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from ._accounting import Cost
from ._adapters import KINDS, apply_model, kind_of, param_dtype, probe_batch, to_chain
from ._errors import RESULTS, check_bool, is_traced
from ._file_header import (
    FORMAT,
    HEADER_FIELDS,
    INFO_FIELDS,
    MODEL_FIELDS,
    OPTION_FIELDS,
    SKIP_KIND,
    VERSION,
    check_fields,
    is_int,
)
from ._info import Certificate, CompressionInfo
from ._network import DenseChain, refuse_gated
from ._skip_mlp import SkipMLP

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
    """The model part of the structure record, checked against `MODEL_FIELDS` and its kind's `OPTION_FIELDS`."""
    check_fields(record, MODEL_FIELDS, "model", path)
    options = OPTION_FIELDS.get(record["kind"])
    if options is not None:
        check_fields(record["options"], options, "model.options", path, context=record)
    return record


def _output(model, x) -> np.ndarray:
    with jax.ensure_compile_time_eval():
        outputs = model(x) if isinstance(model, SkipMLP) else apply_model(model, x)
        return np.asarray(outputs)


def save(path: str | os.PathLike, model, info: CompressionInfo | None = None) -> None:
    """Write `model` (and optionally the `info` of its compression) to one `.npz` file, without pickle.

    The file stores the widths, activation names, bias flags, dtype and the model kind's options beside
    the weights, so a model whose shapes changed (lumped, pruned, linearity-merged) loads back without a
    template, and the model's output on a fixed probe batch, which `load` checks.

    **Arguments:**

    - `path`: the file to write (exactly this name; no suffix is added).
    - `model`: an `eqx.nn.MLP`, `eqx.nn.Sequential` of `eqx.nn.Linear` + activations, `jaxlump.LumpedMLP`,
        `jaxlump.SkipMLP`, `DenseChain`, or a Flax NNX `nnx.Sequential` / `nnx.Linear`; concrete (not traced).
    - `info`: the `CompressionInfo` returned beside the model, or `None`; it must describe `model`.

    **Returns:** nothing.

    **Raises:** `TypeError` for an unsupported model or `info`, or traced values (under `jax.jit`);
    `ValueError` for NaN/inf parameters, parameters of mixed dtypes, or an `info` whose widths, partitions
    or masks do not fit `model`.

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
    with open(path, "wb") as file:
        np.savez(file, **arrays, **{_HEADER: np.asarray(json.dumps(record))})


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


def load(path: str | os.PathLike, *, with_info: bool = False):
    """Read a model written by `save`: the same kind of model, with the stored widths and weights.

    Every array is checked against the stored widths and dtype before anything is built; a mismatch
    names the array, e.g. `layers[1].weight: expected (16, 7), found (12, 7)`. Activations come back
    as the known function objects for the stored names (`jnp.tanh` for `"tanh"`; a `jaxlump.Activation`
    must be declared again before loading); NNX layers come back with Flax's default computation settings.
    The rebuilt model's output on the stored probe batch must match the saved model's.

    **Arguments:**

    - `path`: a file written by `jaxlump.save`.
    - `with_info`: also return the stored `CompressionInfo` (`None` when none was saved).

    **Returns:** the model, or `(model, info)` when `with_info=True`.

    **Raises:** `ValueError` naming `path` when the file is damaged (truncated, bit-flipped), not a jaxlump
    file, of another format version, or its arrays do not match its structure or its probe output;
    `FileNotFoundError` when it does not exist.

    ```python
    import os, tempfile
    import equinox as eqx, jax.numpy as jnp, jax.random as jr
    import jaxlump

    seq = eqx.nn.Sequential([eqx.nn.Linear(3, 5, key=jr.key(0)), eqx.nn.Lambda(jnp.tanh),
                             eqx.nn.Linear(5, 1, key=jr.key(1))])
    path = os.path.join(tempfile.mkdtemp(), "seq.npz")
    jaxlump.save(path, seq)
    model, info = jaxlump.load(path, with_info=True)
    assert info is None and jnp.array_equal(model(jnp.ones(3)), seq(jnp.ones(3)))
    ```
    """
    path = os.fspath(path)
    with_info = check_bool(with_info, "with_info")
    arrays, record = _read(path)
    structure = _check_model_record(record.get("model"), path)
    probe_output = arrays.pop(_PROBE_KEY, None)
    model_arrays = {key: a for key, a in arrays.items() if not key.startswith("info.")}
    info_arrays = {key: a for key, a in arrays.items() if key.startswith("info.")}
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
    if record.get("info") is None:
        _check_arrays(info_arrays, {}, path, "the record, which holds no CompressionInfo")
        info = None
    else:
        info = _load_info(info_arrays, record["info"], path)
    return (model, info) if with_info else model
