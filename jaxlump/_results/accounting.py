"""Parameter, non-zero, FLOP and latency accounting — the one function every result uses.

Conventions (documented in `docs/accounting.md`):

- `dense_params`: weights + biases that the model stores densely, counting only *live* neurons
  (a masked-but-not-shrunk model is counted as its shrunk self); layers without bias count none.
- `nonzeros`: of those, how many are non-zero (what unstructured pruning reduces).
- `flops`: dense floating-point operations of one forward pass for one example:
  `Σ_l 2·n_{l-1}·n_l` (multiply-adds) `+ n_l` per bias, activations not counted. Unstructured
  masks do not reduce it: dense kernels multiply the zeros too.

Any other Equinox or Flax NNX module (a model compressed site by site) is counted through its family
(`jaxlump._sites.layers`): `dense_params` and `nonzeros` over all its floating-point parameter arrays (the
family's `arrays`: every inexact array leaf of an Equinox module, the `nnx.Param`s of an NNX module, embeddings
and norms included; what `SitesInfo.params_before/after` count); `flops` over its registered layers only
(`eqx.nn.Linear`, `nnx.Linear`, `eqx.nn.Conv1d/2d/3d`): `2·in·out (+ out with a bias)` per call for a linear
layer, `(2·in_channels·out_channels·∏kernel_size (+ out_channels with a bias))` per output position for a
convolution (which needs an example batch `x`: its positions depend on the input's size); each layer called once
without `x`, and with an example batch `x` as often as the traced program calls it per example (`T` times for a
sequence of `T` tokens; a `lax.scan` body times its length; a `cond` branch at its most expensive). Attention's
products, embeddings, norms, pooling and activations are not counted.
"""

import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int

from .._errors import check_positive_int
from .._model import is_chain_kind, to_chain
from .._model.network import DenseChain
from .._sites.layers import family_of, layer_type_of, path_name
from .._sites.trace import TAP_PREFIX, tapped_model


class Cost(eqx.Module):
    """Size and cost of one model (see module docs for the conventions)."""

    dense_params: Int[Array, ""]
    nonzeros: Int[Array, ""]
    flops: Int[Array, ""]

    def __repr__(self):  # concise in tables and notebooks
        return f"Cost(dense_params={self.dense_params}, nonzeros={self.nonzeros}, flops={self.flops})"


def widths_dense_params(widths, use_bias=None, gated=None) -> int:
    """Dense parameters of a chain with layer widths `widths` (`use_bias[l]`: whether layer `l` has a bias; default
    all; `gated[l]`: whether layer `l` is gated, default none), without building it: what
    `chain_cost(...).dense_params` gives for those widths."""
    use_bias = (True,) * (len(widths) - 1) if use_bias is None else use_bias
    gated = (False,) * (len(widths) - 1) if gated is None else gated
    return sum(
        (2 if gate else 1) * (a * b + (b if bias else 0))
        for a, b, bias, gate in zip(widths[:-1], widths[1:], use_bias, gated)
    )


def chain_cost(chain: DenseChain, neuron_masks=None) -> Cost:
    """`Cost` of a canonical chain; `neuron_masks[l]` marks the live neurons of hidden layer `l+1`. A gated layer
    counts twice (its gate weights and bias beside its up weights and bias; the elementwise product, like every
    activation, is not counted)."""
    arrays = [*jax.tree_util.tree_leaves(chain), *(neuron_masks or ())]
    # NumPy for concrete models: eager JAX would compile every reduction anew for each model shape.
    xp = jnp if any(isinstance(a, jax.core.Tracer) for a in arrays) else np
    widths = chain.widths
    hidden = [xp.ones(n, bool) for n in widths[1:-1]] if neuron_masks is None else neuron_masks
    live = [xp.ones(widths[0], bool), *(xp.asarray(m, bool) for m in hidden), xp.ones(widths[-1], bool)]
    dense = nonzero = flops = 0
    for l, (w, b, has_bias) in enumerate(zip(chain.weights, chain.biases, chain.use_bias)):
        n_out, n_in = xp.sum(live[l + 1]), xp.sum(live[l])
        block = live[l + 1][:, None] & live[l][None, :]
        bias_params = n_out if has_bias else 0
        dense = dense + n_out * n_in + bias_params
        nonzero = nonzero + xp.sum(block & (xp.asarray(w) != 0))
        nonzero = nonzero + (xp.sum(live[l + 1] & (xp.asarray(b) != 0)) if has_bias else 0)
        flops = flops + 2 * n_out * n_in + bias_params
        if chain.gated[l]:
            g, gb = chain.gate_weights[l], chain.gate_biases[l]
            dense = dense + n_out * n_in + bias_params
            nonzero = nonzero + xp.sum(block & (xp.asarray(g) != 0))
            nonzero = nonzero + (xp.sum(live[l + 1] & (xp.asarray(gb) != 0)) if has_bias else 0)
            flops = flops + 2 * n_out * n_in + bias_params
    return Cost(jnp.asarray(dense), jnp.asarray(nonzero), jnp.asarray(flops))


def cost(model, neuron_masks=None, *, x=None) -> Cost:
    """Dense parameters, non-zeros and dense FLOPs per example of `model`.

    For a model of any other Equinox or NNX class (compressed site by site) the parameters are all its
    floating-point parameter arrays and the FLOPs those of its `Linear` layers (see the module docs): each layer
    once per call without `x`, and as often as the model calls it on one example of `x` with `x`.

    **Arguments:**

    - `model`: any supported model (`eqx.nn.MLP`, `eqx.nn.Sequential`, `LumpedMLP`, NNX, `SkipMLP`), or any
      Equinox / Flax NNX module holding `eqx.nn.Linear` / `nnx.Linear` layers.
    - `neuron_masks`: optional live-neuron masks per hidden layer (for fixed-shape masked results): one boolean
      (or 0/1) vector per hidden layer, of that layer's width. Chain models only; not for a `SkipMLP`, which has
      no masked form.
    - `x`: optional, a batch of the model's inputs (one leading batch axis; only its first example is traced,
      nothing is computed): the FLOPs then count each layer as often as the model calls it per example (a
      sequence model calls its FFN layers once per position). Chain models call each layer once per example
      and do not need it.

    **Returns:** a `Cost`.

    **Raises:** `TypeError`/`ValueError` for `neuron_masks` that do not fit the model, or given with a `SkipMLP`
    or a model of another class; `TypeError` for a model without a registered layer; `ValueError` naming `x`
    for a batch the model cannot be applied to, or one whose program calls a layer inside a `while` loop.

    ```python
    import equinox as eqx, jax.random as jr, jaxlump
    mlp = eqx.nn.MLP(3, 2, 8, 2, key=jr.key(0))
    c = jaxlump.cost(mlp)
    assert int(c.dense_params) == 3 * 8 + 8 + 8 * 8 + 8 + 8 * 2 + 2
    ```
    """
    if not is_chain_kind(model) and not callable(getattr(model, "cost", None)):
        return _model_cost(model, neuron_masks, x)
    if x is not None:
        _example(x)
    own_cost = getattr(model, "cost", None)
    if callable(own_cost) and not isinstance(model, DenseChain):
        if neuron_masks is not None:
            raise ValueError(
                f"`neuron_masks` does not apply to a {type(model).__name__}: it has no masked form (its neurons are "
                "removed physically), so its cost is that of its stored layers; pass `neuron_masks=None`."
            )
        return own_cost()
    chain = to_chain(model)
    return chain_cost(chain, None if neuron_masks is None else _check_neuron_masks(neuron_masks, chain.widths))


def _model_cost(model, neuron_masks, x) -> Cost:
    """`Cost` of a model of any Equinox / NNX class (see the module docs)."""
    family = family_of(model)
    layers = family.layers(model)
    if not layers:
        raise TypeError(
            f"`model` of type {type(model).__name__} is not supported: `cost` counts chain models and Equinox / NNX "
            "modules holding eqx.nn.Linear or nnx.Linear layers (the FLOPs are those layers')."
        )
    if neuron_masks is not None:
        raise ValueError(
            f"`neuron_masks` applies to chain models (one mask per hidden layer); `model` ({type(model).__name__}) "
            "is counted as stored (compressed site by site, its units are removed physically): pass None."
        )
    arrays = [a for a in family.arrays(model) if eqx.is_inexact_array(a)]
    for a in arrays:
        if not jnp.issubdtype(a.dtype, jnp.floating):
            raise TypeError(
                f"`model` holds a parameter array of dtype {a.dtype}; `cost` counts real floating-point parameters "
                "(float16, bfloat16, float32, float64)."
            )
    xp = jnp if any(isinstance(a, jax.core.Tracer) for a in arrays) else np
    dense = sum(int(np.size(a)) for a in arrays)
    nonzero = sum(xp.count_nonzero(xp.asarray(a)) for a in arrays)
    return Cost(jnp.asarray(dense), jnp.asarray(nonzero), jnp.asarray(model_flops(model, x)))


def model_flops(model, x=None) -> int:
    """The dense FLOPs per example of a model of any Equinox / NNX class: its registered layers', each once, or as
    often as the model calls it on one example of the batch `x` (from shapes only, so also for traced values)."""
    family = family_of(model)
    layers = family.layers(model)
    if x is None:
        return sum(layer_type_of(layer).flops(layer, None) for _, layer in layers)
    return sum(_flops_per_example(model, family, x, [layer for _, layer in layers]))


def _example(x):
    """The first example of the batch `x` (a batch of one), or a refusal naming `x`."""
    leaves = jax.tree_util.tree_leaves(x)
    if not leaves or any(np.ndim(leaf) == 0 or np.shape(leaf)[0] == 0 for leaf in leaves):
        shapes = [np.shape(leaf) for leaf in leaves]
        raise ValueError(
            f"`x` must be a batch of the model's inputs (an array or a pytree of arrays) with one leading batch axis "
            f"and at least one example; received shapes {shapes}."
        )
    return jax.tree.map(lambda leaf: leaf[:1], x)


def _flops_per_example(model, family, x, layers: list) -> list[int]:
    """Each registered layer's FLOPs on one example of `x`: every call the model's program makes, with its input's
    shape (one call on a batch of `k` rows — a `vmap` over positions — counts `k` rows)."""
    example = _example(x)
    tapped, taps = tapped_model(model, family)
    try:
        closed = jax.make_jaxpr(lambda b: family.apply(tapped, b))(example)
    except Exception as error:
        raise ValueError(
            f"`x`: `model` ({type(model).__name__}) cannot be applied to one example of it: "
            f"{type(error).__name__}: {error}"
        ) from error
    flops = [0] * len(layers)
    _count_calls(closed.jaxpr, 1, flops, taps.paths, layers)
    return flops


def _count_calls(jaxpr, times: int, counts: list[int], paths, layers: list) -> None:
    from jax.extend.core import ClosedJaxpr, jaxprs_in_params

    for eqn in jaxpr.eqns:
        name = eqn.params.get("name") if eqn.primitive.name in ("jit", "pjit") else None
        if isinstance(name, str) and name.startswith(TAP_PREFIX):
            tap = int(name[len(TAP_PREFIX) :])
            counts[tap] += times * layer_type_of(layers[tap]).flops(layers[tap], eqn.invars[-1].aval.shape)
            continue
        inner = [j.jaxpr if isinstance(j, ClosedJaxpr) else j for j in jaxprs_in_params(eqn.params)]
        if eqn.primitive.name == "cond":
            branches = []
            for branch in inner:
                branch_counts = [0] * len(counts)
                _count_calls(branch, times, branch_counts, paths, layers)
                branches.append(branch_counts)
            for i in range(len(counts)):
                counts[i] += max(b[i] for b in branches)
            continue
        if eqn.primitive.name == "while":
            before = list(counts)
            for body in inner:
                _count_calls(body, times, counts, paths, layers)
            called = [path_name(paths[i]) for i, (a, b) in enumerate(zip(before, counts)) if a != b]
            if called:
                raise ValueError(
                    f"`x`: `model` calls {called} inside a `while` loop, whose number of steps is not known before "
                    "it runs, so its FLOPs per example cannot be counted; call `cost` without `x` for one call "
                    "of each layer."
                )
            continue
        factor = int(eqn.params["length"]) if eqn.primitive.name == "scan" else 1
        for body in inner:
            _count_calls(body, times * factor, counts, paths, layers)


def _check_neuron_masks(masks, widths) -> tuple:
    """One 1-D boolean or 0/1 mask per hidden layer, of that layer's width (traced masks: shapes only)."""
    hidden = tuple(widths[1:-1])
    if isinstance(masks, (str, bytes)) or not isinstance(masks, (tuple, list)) or len(masks) != len(hidden):
        length = f" of length {len(masks)}" if hasattr(masks, "__len__") else ""
        raise TypeError(
            f"`neuron_masks` must be a sequence of {len(hidden)} live-neuron masks, one per hidden layer of widths "
            f"{hidden}; received {type(masks).__name__}{length}."
        )
    for l, (mask, n) in enumerate(zip(masks, hidden), start=1):
        shape = np.shape(mask)
        if shape != (n,):
            raise ValueError(f"`neuron_masks[{l - 1}]` must have shape ({n},) (hidden layer {l}); received {shape}.")
        if not isinstance(mask, jax.core.Tracer):
            values = np.asarray(mask)
            if values.dtype != bool and not (values.dtype.kind in "iuf" and np.all((values == 0) | (values == 1))):
                raise ValueError(
                    f"`neuron_masks[{l - 1}]` must hold booleans or 0/1; received dtype {values.dtype} with values "
                    f"{np.unique(values)[:5].tolist()}."
                )
    return tuple(masks)


def measure_latency(model, x=1, *, repeats: int = 50, warmup: int = 5, key=None) -> float:
    """Median wall time in seconds of a jitted forward pass on a batch, after warm-up.

    Masks buy no speed without sparse kernels: a pruned-but-same-shape model measures like the
    dense one; a physically smaller (lumped, structurally pruned) model measures faster. The model is
    applied as its family's users call it (`jax.vmap` over the batch for Equinox, the batch itself for NNX).

    **Arguments:**

    - `model`: any supported model, or any Equinox / Flax NNX module.
    - `x`: the batch to time (an array or a pytree of arrays with one leading batch axis: token ids, images,
      features), or, for chain models, an integer batch size (a random standard-normal batch of the model's
      input width is drawn with `key`). A model of any other class needs a batch of its inputs.
    - `repeats`: timed passes, an integer >= 1 (the median is returned).
    - `warmup`: untimed passes before timing, an integer >= 0 (at least one is always run: it compiles).
    - `key`: PRNG key for the random input batch of an integer `x` (default `jax.random.key(0)`).

    **Returns:** the median time in seconds, a float.

    **Raises:** `TypeError`/`ValueError` for counts that are not integers in range, an integer `x` for a model
    of another class than the chain kinds, a `key` with a given batch, or a batch without a leading axis.

    ```python
    import equinox as eqx, jax.numpy as jnp, jax.random as jr, jaxlump
    seconds = jaxlump.measure_latency(eqx.nn.MLP(3, 2, 8, 2, key=jr.key(0)), 4, repeats=3)
    assert seconds > 0
    assert jaxlump.measure_latency(eqx.nn.MLP(3, 2, 8, 2, key=jr.key(0)), jnp.ones((4, 3)), repeats=3) > 0
    ```
    """
    repeats = check_positive_int(repeats, "repeats")
    warmup = check_positive_int(warmup, "warmup", minimum=0)
    if isinstance(x, (int, np.integer)):  # a batch size (bool included, refused as not an integer)
        batch_size = check_positive_int(x, "x")
        if not is_chain_kind(model) and not callable(getattr(model, "cost", None)):
            family_of(model)
            raise TypeError(
                f"`x`: a batch size ({x!r}) is only for chain models, whose inputs are feature vectors; `model` "
                f"({type(model).__name__}) takes inputs jaxlump cannot make up: pass a batch of them as `x` (one "
                "leading batch axis)."
            )
        n_in = to_chain(model).widths[0] if getattr(model, "cost", None) is None else model.in_size
        key = jax.random.key(0) if key is None else key
        batch = jax.random.normal(key, (int(batch_size), n_in), dtype=_dtype(model))
        forward = eqx.filter_jit(jax.vmap(lambda m, xi: m(xi), in_axes=(None, 0)))
    else:
        if key is not None:
            raise ValueError("`key` draws the random batch of an integer `x`; with a batch `x` given, pass key=None.")
        family = family_of(model)
        _example(x)
        batch = x
        forward = eqx.filter_jit(lambda m, b: family.apply(m, b))
    for _ in range(max(1, warmup)):
        jax.block_until_ready(forward(model, batch))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(forward(model, batch))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _dtype(model):
    leaves = [leaf for leaf in jax.tree_util.tree_leaves(model) if eqx.is_inexact_array(leaf)]
    return leaves[0].dtype if leaves else jnp.result_type(float)
