"""Save and load models whose shapes changed — widths stored with the weights, no pickle.

A file is one NumPy `.npz` archive: the canonical chain's arrays under `layers[l].weight` (shape
`(n_{l+1}, n_l)`, Equinox's `(out, in)`, for every model kind) and `layers[l].bias` (only for layers
with a bias), the `CompressionInfo` arrays under `info.<field path>`, and one JSON record under
`__jaxlump__` with the structure: format and version, model kind, widths, activation names,
`use_bias` flags, dtype and the kind's own options (MLP `scan`, Sequential layout ...). Loading
rebuilds a template of that structure and fills it through `from_chain`, after checking every array
against the stored widths.
"""

import json
import os
import zipfile

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np

from ._accounting import Cost
from ._adapters import from_chain, to_chain
from ._adapters.eqx_nn import LumpedMLP
from ._errors import RESULTS
from ._info import Certificate, CompressionInfo
from ._network import ACTIVATIONS, DenseChain, identify_activation

FORMAT = "jaxlump-model"
VERSION = 1
_HEADER = "__jaxlump__"
_EQX_KINDS = ("eqx.nn.MLP", "eqx.nn.Sequential", "jaxlump.LumpedMLP", "jaxlump.DenseChain")
_KINDS = _EQX_KINDS + ("flax.nnx.Sequential", "flax.nnx.Linear")


def _describe(model, chain: DenseChain) -> tuple[str, dict]:
    """The model's kind and the options (beyond the chain) needed to rebuild it."""
    if isinstance(model, DenseChain):
        return "jaxlump.DenseChain", {}
    if isinstance(model, eqx.nn.MLP):
        return "eqx.nn.MLP", {
            "scan": model.scan,
            "width_size": model.width_size,
            "activation": identify_activation(model.activation, "eqx.nn.MLP.activation"),
            "final_activation": identify_activation(model.final_activation, "eqx.nn.MLP.final_activation"),
        }
    if isinstance(model, eqx.nn.Sequential):
        names, layout, current = iter(chain.activations), [], None
        for layer in model.layers:  # `to_chain` checked that each activation directly follows its Linear
            current = next(names) if isinstance(layer, eqx.nn.Linear) else current
            layout.append("linear" if isinstance(layer, eqx.nn.Linear) else current)
        return "eqx.nn.Sequential", {"layout": layout}
    if isinstance(model, LumpedMLP):
        return "jaxlump.LumpedMLP", {
            "activation": identify_activation(model.activation, "LumpedMLP.activation"),
            "final_activation": identify_activation(model.final_activation, "LumpedMLP.final_activation"),
        }
    from ._adapters.flax_nnx import nnx_layout  # flax is imported lazily

    layout = nnx_layout(model)
    return ("flax.nnx.Linear" if layout is None else "flax.nnx.Sequential"), {"layout": layout}


def _fn(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"activation {name!r} is not one of {list(ACTIVATIONS)}.")
    return ACTIVATIONS[name].fn


def _eqx_linears(chain: DenseChain) -> list[eqx.nn.Linear]:
    dtype = chain.weights[0].dtype
    return [
        eqx.nn.Linear(w.shape[1], w.shape[0], use_bias=u, dtype=dtype, key=jr.key(l))
        for l, (w, u) in enumerate(zip(chain.weights, chain.use_bias, strict=True))
    ]


def _template(kind: str, options: dict, chain: DenseChain):
    """A model of the stored kind and structure, for `from_chain(chain, like=...)`."""
    if kind == "jaxlump.DenseChain":
        return chain
    if kind in _EQX_KINDS:
        # Only the structure is needed: trace the constructors instead of running their random initialisation.
        return eqx.filter_eval_shape(_eqx_template, kind, options, chain)
    from ._adapters.flax_nnx import nnx_template  # flax is imported lazily

    return nnx_template(options["layout"], chain.widths, chain.use_bias, chain.weights[0].dtype)


def _eqx_template(kind: str, options: dict, chain: DenseChain):
    hidden_widths, hidden_bias = set(chain.widths[1:-1]), set(chain.use_bias[:-1])
    if kind == "eqx.nn.MLP":
        if len(hidden_widths) > 1 or len(hidden_bias) > 1:
            raise ValueError(f"an eqx.nn.MLP has equal hidden widths and bias flags; the record has {chain.widths}.")
        return eqx.nn.MLP(
            chain.widths[0],
            chain.widths[-1],
            hidden_widths.pop() if hidden_widths else int(options["width_size"]),
            chain.n_layers - 1,
            activation=_fn(options["activation"]),
            final_activation=_fn(options["final_activation"]),
            use_bias=hidden_bias.pop() if hidden_bias else True,
            use_final_bias=chain.use_bias[-1],
            dtype=chain.weights[0].dtype,
            scan=bool(options["scan"]),
            key=jr.key(0),
        )
    if kind == "jaxlump.LumpedMLP":
        return LumpedMLP(_eqx_linears(chain), _fn(options["activation"]), _fn(options["final_activation"]))
    linears = iter(_eqx_linears(chain))
    return eqx.nn.Sequential(
        [
            next(linears)
            if entry == "linear"
            else (eqx.nn.Identity() if entry == "identity" else eqx.nn.Lambda(_fn(entry)))
            for entry in options["layout"]
        ]
    )


def _storable(array) -> np.ndarray:
    """The array as stored: extension float types (bfloat16 ...), which `.npz` cannot describe, as raw bits."""
    array = np.asarray(array)
    if array.dtype.kind == "O":
        raise TypeError(f"cannot store a non-numeric value of type {type(array.flat[0]).__name__} without pickle.")
    return array.view(_stored_dtype(array.dtype))


def _stored_dtype(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    return np.dtype(f"u{dtype.itemsize}") if dtype.kind == "V" else dtype


def _model_arrays(chain: DenseChain) -> dict[str, np.ndarray]:
    arrays = {}
    for l, (weight, bias, has_bias) in enumerate(zip(chain.weights, chain.biases, chain.use_bias, strict=True)):
        arrays[f"layers[{l}].weight"] = _storable(weight)
        if has_bias:
            arrays[f"layers[{l}].bias"] = _storable(bias)
    return arrays


def _expected_model_arrays(record: dict) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    widths, dtype = record["widths"], _stored_dtype(jnp.dtype(record["dtype"]))
    expected = {}
    for l, has_bias in enumerate(record["use_bias"]):
        expected[f"layers[{l}].weight"] = ((widths[l + 1], widths[l]), dtype)
        if has_bias:
            expected[f"layers[{l}].bias"] = ((widths[l + 1],), dtype)
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


def _info_record(info: CompressionInfo) -> tuple[dict[str, np.ndarray], dict]:
    if not isinstance(info, CompressionInfo):
        raise TypeError(f"`info` must be a jaxlump CompressionInfo or None; received {type(info).__name__}.")
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
    try:
        template = _info_template(record)
        stored = sorted(record["arrays"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"`path` {path}: the stored CompressionInfo record is malformed ({e!r}).") from e
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


def _restored(array: np.ndarray, dtype) -> jnp.ndarray:
    return jnp.asarray(array.view(jnp.dtype(dtype)) if jnp.dtype(dtype).kind == "V" else array)


def _read(path: str) -> tuple[dict[str, np.ndarray], dict]:
    """The archive's arrays and its JSON record, after checking the file kind and format version."""
    not_ours = f"`path` {path} is not a jaxlump model file"
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{not_ours} (not a NumPy .npz archive: {e}).") from e
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{not_ours} (a single NumPy array, not a .npz archive).")
    with data:
        try:
            arrays = {key: data[key] for key in data.files}
        except ValueError as e:  # object arrays would need pickle
            raise ValueError(f"{not_ours} ({e}).") from e
    header = arrays.pop(_HEADER, None)
    if header is None or header.ndim != 0 or header.dtype.kind != "U":
        raise ValueError(f"{not_ours} (no `{_HEADER}` structure record; files are written by `jaxlump.save`).")
    try:
        record = json.loads(str(header[()]))
    except json.JSONDecodeError as e:
        raise ValueError(f"{not_ours} (its structure record is not valid JSON: {e}).") from e
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{not_ours} (format {record.get('format') if isinstance(record, dict) else None!r}).")
    if record.get("version") != VERSION:
        raise ValueError(
            f"`path` {path} has jaxlump format version {record.get('version')!r}; this version of jaxlump reads "
            f"version {VERSION}. Load it with the jaxlump version that wrote it."
        )
    return arrays, record


def _check_model_record(record, path: str) -> dict:
    def bad(field: str, expected: str, found) -> ValueError:
        return ValueError(f"`path` {path}: structure field model.{field} must be {expected}; found {found!r}.")

    if not isinstance(record, dict):
        raise bad("", "a JSON object", record)
    if record.get("kind") not in _KINDS:
        raise bad("kind", f"one of {list(_KINDS)}", record.get("kind"))
    widths = record.get("widths")
    if not isinstance(widths, list) or len(widths) < 2 or not all(type(w) is int and w >= 1 for w in widths):
        raise bad("widths", "a list of at least two positive integers", widths)
    n_layers = len(widths) - 1
    activations = record.get("activations")
    if not isinstance(activations, list) or len(activations) != n_layers or not set(activations) <= set(ACTIVATIONS):
        raise bad("activations", f"a list of {n_layers} names from {list(ACTIVATIONS)}", activations)
    use_bias = record.get("use_bias")
    if not isinstance(use_bias, list) or len(use_bias) != n_layers or not all(type(u) is bool for u in use_bias):
        raise bad("use_bias", f"a list of {n_layers} booleans", use_bias)
    try:
        floating = isinstance(record.get("dtype"), str) and jnp.issubdtype(jnp.dtype(record["dtype"]), jnp.floating)
    except TypeError:
        floating = False
    if not floating:
        raise bad("dtype", "a floating dtype name such as 'float32'", record.get("dtype"))
    if not isinstance(record.get("options"), dict):
        raise bad("options", "a JSON object", record.get("options"))
    return record


def save(path: str | os.PathLike, model, info: CompressionInfo | None = None) -> None:
    """Write `model` (and optionally the `info` of its compression) to one `.npz` file, without pickle.

    The file stores the widths, activation names, bias flags, dtype and the model kind's options beside
    the weights, so a model whose shapes changed (lumped, pruned) loads back without a template.

    **Arguments:**

    - `path`: the file to write (exactly this name; no suffix is added).
    - `model`: an `eqx.nn.MLP`, `eqx.nn.Sequential` of `eqx.nn.Linear` + activations, `jaxlump.LumpedMLP`,
        `DenseChain`, or a Flax NNX `nnx.Sequential` / `nnx.Linear`.
    - `info`: the `CompressionInfo` returned beside the model, or `None`.

    **Returns:** nothing.

    **Raises:** `TypeError` for an unsupported model or `info`; `ValueError` for NaN/inf parameters or
    parameters of mixed dtypes.

    ```python
    import os, tempfile
    import equinox as eqx, jax.numpy as jnp, jax.random as jr
    from jaxlump._serialisation import load, save

    mlp = eqx.nn.MLP(3, 2, 8, 2, activation=jnp.tanh, key=jr.key(0))
    path = os.path.join(tempfile.mkdtemp(), "mlp.npz")
    save(path, mlp)
    assert jnp.array_equal(load(path)(jnp.ones(3)), mlp(jnp.ones(3)))
    ```
    """
    chain = to_chain(model)
    dtypes = sorted({str(a.dtype) for a in chain.weights + chain.biases})
    if len(dtypes) > 1:
        raise ValueError(f"`model` mixes parameter dtypes {dtypes}; `save` stores models with one dtype.")
    kind, options = _describe(model, chain)
    arrays = _model_arrays(chain)
    record = {
        "format": FORMAT,
        "version": VERSION,
        "model": {
            "kind": kind,
            "widths": list(chain.widths),
            "activations": list(chain.activations),
            "use_bias": list(chain.use_bias),
            "dtype": dtypes[0],
            "options": options,
        },
        "info": None,
    }
    if info is not None:
        info_arrays, record["info"] = _info_record(info)
        arrays.update(info_arrays)
    with open(path, "wb") as file:
        np.savez(file, **arrays, **{_HEADER: np.asarray(json.dumps(record))})


def load(path: str | os.PathLike, *, with_info: bool = False):
    """Read a model written by `save`: the same kind of model, with the stored widths and weights.

    Every array is checked against the stored widths and dtype before anything is built; a mismatch
    names the array, e.g. `layers[1].weight: expected (16, 7), found (12, 7)`. Activations come back
    as jaxlump's own functions for the stored names (the same values as the originals'); NNX layers
    come back with Flax's default computation settings.

    **Arguments:**

    - `path`: a file written by `jaxlump.save`.
    - `with_info`: also return the stored `CompressionInfo` (`None` when none was saved).

    **Returns:** the model, or `(model, info)` when `with_info=True`.

    **Raises:** `ValueError` naming `path` when the file is not a jaxlump file, has another format
    version, or its arrays do not match its structure; `FileNotFoundError` when it does not exist.

    ```python
    import os, tempfile
    import equinox as eqx, jax.numpy as jnp, jax.random as jr
    from jaxlump._serialisation import load, save

    seq = eqx.nn.Sequential([eqx.nn.Linear(3, 5, key=jr.key(0)), eqx.nn.Lambda(jnp.tanh),
                             eqx.nn.Linear(5, 1, key=jr.key(1))])
    path = os.path.join(tempfile.mkdtemp(), "seq.npz")
    save(path, seq)
    model, info = load(path, with_info=True)
    assert info is None and jnp.array_equal(model(jnp.ones(3)), seq(jnp.ones(3)))
    ```
    """
    path = os.fspath(path)
    arrays, record = _read(path)
    structure = _check_model_record(record.get("model"), path)
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
    try:
        model = from_chain(chain, like=_template(structure["kind"], structure["options"], chain))
        rebuilt = to_chain(model)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(
            f"`path` {path}: the stored structure of the {structure['kind']} cannot be rebuilt ({e})."
        ) from e
    if (rebuilt.widths, rebuilt.activations, rebuilt.use_bias) != (chain.widths, chain.activations, chain.use_bias):
        raise ValueError(
            f"`path` {path}: the stored {structure['kind']} options {structure['options']} give activations "
            f"{rebuilt.activations} and use_bias {rebuilt.use_bias}; the record has {chain.activations} and "
            f"{chain.use_bias}."
        )
    if record.get("info") is None:
        _check_arrays(info_arrays, {}, path, "the record, which holds no CompressionInfo")
        info = None
    else:
        info = _load_info(info_arrays, record["info"], path)
    return (model, info) if with_info else model
