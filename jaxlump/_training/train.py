"""MSE training with optax (the main job, benchmarks, notebooks) and `finetune`, which keeps a compressed structure."""

import functools
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

from .._errors import CompressionError, check_bool, check_data, check_finite, check_positive_int, is_traced
from .._model import to_chain
from ..datasets import glycolytic
from .training_loop import bind, masked_update, structure_masks


def mse(model, x, y) -> jax.Array:
    return jnp.mean((jax.vmap(model)(x) - y) ** 2)


def _fit(params, rebuild, optimiser, x, y, *, key, steps: int, batch_size: int, masks, loss, progress: bool):
    """`steps` mini-batch steps of `optimiser` on `loss(rebuild(params), x_batch, y_batch)`; returns the final
    parameters and every step's loss. With `masks` (a tree like `params` of 1/0), gradients, updates and the
    optimiser's parameter-shaped state are exactly zero where the mask is 0, so masked parameters stay as they are.

    The loop is a `jax.lax.scan` over chunks of steps so the progress bar costs nothing."""
    state = optimiser.init(params)
    n = x.shape[0]
    batch_size = min(batch_size, n)

    def step(carry, step_key):
        params, state = carry
        idx = jr.choice(step_key, n, (batch_size,), replace=False)
        value, grads = jax.value_and_grad(lambda p: loss(rebuild(p), x[idx], y[idx]))(params)
        if masks is None:
            updates, state = optimiser.update(grads, state, params)
        else:
            updates, state = masked_update(optimiser, grads, state, params, masks)
        return (optax.apply_updates(params, updates), state), value

    @functools.partial(jax.jit, static_argnums=3)
    def run_chunk(params, state, chunk_key, length):
        return jax.lax.scan(step, (params, state), jr.split(chunk_key, length))

    chunk = 100
    n_chunks = -(-steps // chunk)
    lengths = [chunk] * (steps // chunk) + ([steps % chunk] if steps % chunk else [])
    losses = []
    if progress:
        # Imported only when asked for: tqdm.auto, imported in a Jupyter kernel without ipywidgets, warns (with the
        # path of its own file), so a module-level import printed that warning in every notebook importing jaxlump.
        from tqdm.auto import tqdm
    else:
        from tqdm.std import tqdm
    bar = tqdm(total=n_chunks, desc="training", disable=not progress, leave=False)
    for chunk_key, length in zip(jr.split(key, n_chunks), lengths):
        (params, state), chunk_losses = run_chunk(params, state, chunk_key, length)
        losses.append(chunk_losses)
        bar.update(1)
        bar.set_postfix(loss=f"{float(chunk_losses[-1]):.2e}")
    bar.close()
    return params, jnp.concatenate(losses)


def train_mse(
    model, x, y, *, key, steps: int = 3000, batch_size: int = 256, learning_rate: float = 3e-3, progress: bool = True
):
    """Adam with cosine decay on mini-batches; returns the trained model."""
    optimiser = optax.adam(optax.cosine_decay_schedule(learning_rate, steps))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    params, _ = _fit(
        params,
        lambda p: eqx.combine(p, static),
        optimiser,
        x,
        y,
        key=key,
        steps=steps,
        batch_size=batch_size,
        masks=None,
        loss=mse,
        progress=progress,
    )
    return eqx.combine(params, static)


def finetune(
    model,
    x,
    y,
    *,
    steps: int,
    optimizer: optax.GradientTransformation | None = None,
    info=None,
    key=None,
    batch_size: int = 256,
    loss: Callable = mse,
    progress: bool = False,
    throw: bool = True,
):
    """Train a compressed model further while keeping its structure (mean-squared error by default).

    With `info`, the parameters it marks removed stay exactly zero: the dead neurons of a masked lumping result
    (their incoming rows, biases and outgoing columns) and the weights outside an unstructured result's
    `weight_masks`; their gradients, updates and optimizer state are zero, so momentum cannot revive them. A
    physically smaller model (from `jaxlump.lump` or `shrink`) needs no `info`.

    Training is checked afterwards: a loss that is NaN or inf at any step, or parameters that end NaN or inf
    (a learning rate that diverges, a model or targets so large that the loss overflows, float16 arithmetic, a
    `loss` that returns NaN), raise a `jaxlump.CompressionError` naming the first step whose loss was not finite
    and the likely cause; with `throw=False` the trained model and the losses are returned as they are.

    **Arguments:**

    - `model`: the model (any kind `jaxlump.lump` supports); `x`: training inputs `(batch, n_in)`, finite.
    - `y`: training targets, finite: with the default `loss`, exactly the shape of the model's outputs on `x`
      (`(batch, n_out)`; no broadcasting); with another `loss`, an array with one entry per example.
    - `steps`: number of mini-batch steps (≥ 1).
    - `optimizer`: an optax transformation; default `optax.adam(1e-3)`.
    - `info`: the `CompressionInfo` of a fixed-shape result, or a `jaxlump.wrap_optax` optimizer state, or `None`.
      It must describe `model`: every parameter it marks removed must be zero in `model`.
    - `key`: a JAX PRNG key or a non-negative int seed for the mini-batches; default `0`.
    - `batch_size`: examples per step, a positive int (a larger one uses all the data at every step).
    - `loss`: `loss(model, x_batch, y_batch) -> scalar`; default the mean squared error.
    - `progress`: show a progress bar (`True`/`False`).
    - `throw`: raise when training produced a non-finite loss or parameters (default); `False` returns them.

    **Returns:** `(model, losses)`: the fine-tuned model (same kind and shapes) and the loss at every step.

    **Raises:** `ValueError`/`TypeError` for `steps < 1`, a non-optax optimizer, an unsupported model, `x` or `y`
    that are not finite or of the wrong shape, a bad `batch_size`, `key`, `loss` or `progress`, or an `info` that
    does not describe the model; `jaxlump.CompressionError` (with `throw=True`) when the loss or the trained
    parameters are NaN or inf.

    ```python
    import equinox as eqx, jax, jax.numpy as jnp, jax.random as jr, jaxlump
    mlp = eqx.nn.MLP(2, 1, 16, 2, activation=jnp.tanh, key=jr.key(0))
    x = jr.normal(jr.key(1), (128, 2)); y = jnp.sin(x[:, :1])
    masked, info = jaxlump.lump_masked(mlp, x, 0.5)
    tuned, losses = jaxlump.finetune(masked, x, y, steps=50, info=info)
    assert losses[-1] < losses[0]
    small, _ = jaxlump.shrink(tuned, info)  # dead neurons stayed exactly zero: nothing trained is dropped
    assert jnp.allclose(jax.vmap(small)(x), jax.vmap(tuned)(x), atol=1e-5)
    ```
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"`steps` must be an integer >= 1; received {steps!r}.")
    optimizer = optax.adam(1e-3) if optimizer is None else optimizer
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"`optimizer` must be an optax.GradientTransformation; received {type(optimizer).__name__}.")
    batch_size = check_positive_int(batch_size, "batch_size")
    progress = check_bool(progress, "progress")
    throw = check_bool(throw, "throw")
    if not callable(loss):
        raise TypeError(f"`loss` must be a function `loss(model, x_batch, y_batch) -> scalar`; received {loss!r}.")
    binding, params = bind(model)
    x = check_data(x, "x", width=to_chain(model).widths[0])
    y = _check_targets(model, x, y, default_loss=loss is mse)
    masks = None if info is None else binding.masks((structure_masks(model, info),))
    if masks is not None:
        _check_removed_are_zero(params, masks)
    key = _check_key(key)
    params, losses = _fit(
        params,
        binding.rebuild,
        optimizer,
        x,
        y,
        key=key,
        steps=int(steps),
        batch_size=batch_size,
        masks=masks,
        loss=loss,
        progress=progress,
    )
    if throw:
        _raise_if_not_finite(params, losses)
    return binding.rebuild(params), losses


def _check_targets(model, x, y, *, default_loss: bool):
    """`y` as an array: finite, one entry per example, and with the default loss exactly the model's output shape."""
    if y is None:
        raise ValueError("`y` (the training targets) is required; received None.")
    try:
        y = jnp.asarray(y)
    except TypeError as e:
        raise TypeError(f"`y` must be an array of training targets; received {type(y).__name__}.") from e
    if y.dtype == bool or not (jnp.issubdtype(y.dtype, jnp.floating) or jnp.issubdtype(y.dtype, jnp.integer)):
        raise TypeError(f"`y` must hold real numbers; received dtype {y.dtype}.")
    if y.ndim == 0 or y.shape[0] != x.shape[0]:
        raise ValueError(f"`y` must have one target per example of `x` ({x.shape[0]}); received shape {y.shape}.")
    if default_loss:
        out = jax.eval_shape(jax.vmap(model), x).shape
        if y.shape != out:
            raise ValueError(
                f"`y` must have the shape of the model's outputs on `x`, {out}, for the default mean squared error "
                f"(no broadcasting); received shape {y.shape}."
            )
    return check_finite(y, "y") if jnp.issubdtype(y.dtype, jnp.floating) else y


def _check_key(key):
    """A JAX PRNG key (typed, or a raw `uint32[2]`) from `key`, or from a non-negative int seed; default seed 0."""
    if key is None:
        return jr.key(0)
    if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
        if key < 0:
            raise ValueError(f"`key` as an int seed must be >= 0; received {key!r}.")
        return jr.key(int(key))
    if isinstance(key, jax.Array) and not is_traced(key):
        typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
        if (typed and key.shape == ()) or (not typed and key.dtype == jnp.uint32 and key.shape == (2,)):
            return key
    raise TypeError(
        f"`key` must be a JAX PRNG key (`jax.random.key(seed)`), a non-negative int seed or None; received {key!r}."
    )


def _check_removed_are_zero(params, masks) -> None:
    """Refuse an `info` that does not describe `params`: what it marks removed must already be zero (finetune keeps
    those parameters as they are, so a non-zero one would stay and `shrink` would then drop it)."""
    count, largest = 0, 0.0
    for p, m in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(masks)):
        stray = np.abs(np.asarray(p, dtype=np.float64)[np.asarray(m) == 0])
        stray = stray[stray != 0]
        count, largest = count + stray.size, max(largest, float(stray.max(initial=0.0)))
    if count:
        raise ValueError(
            f"`info` marks parameters of `model` removed (dead neurons or pruned weights) but {count} of them are "
            f"non-zero in `model` (largest magnitude {largest:.3g}): `info` describes another model. Pass the "
            "fixed-shape model the compressor returned with this `info` (not the original), or `info=None`."
        )


def _raise_if_not_finite(params, losses) -> None:
    """Raise a `CompressionError` naming the first step whose loss is NaN or inf, or the non-finite parameters."""
    losses = np.asarray(losses)
    bad = np.flatnonzero(~np.isfinite(losses))
    leaves = [np.asarray(p) for p in jax.tree_util.tree_leaves(params) if eqx.is_inexact_array(p)]
    params_finite = all(np.all(np.isfinite(p)) for p in leaves)
    if not bad.size and params_finite:
        return
    if bad.size and bad[0] == 0:
        what = (
            f"the loss was {losses[0]} at the first step, before any update: the model's outputs or the loss "
            "overflow on the data (weights or targets too large for the precision), or `loss` returns NaN"
        )
    elif bad.size:
        what = (
            f"the loss first became non-finite ({losses[bad[0]]}) at step {bad[0] + 1} of {losses.size}, after "
            f"finite losses (last {losses[bad[0] - 1]:.3g}): training diverged (a learning rate too large or not a "
            "finite number, or arithmetic that overflowed the precision)"
        )
    else:
        what = "the losses stayed finite but the trained parameters hold NaN or inf (the last update diverged)"
    low = sorted({str(p.dtype) for p in leaves if jnp.finfo(p.dtype).bits < 32})
    hint = (
        f" The model is in {', '.join(low)}: optimizers such as Adam underflow or overflow in low precision "
        "(Adam's eps=1e-8 is 0 in float16); train in float32."
        if low
        else ""
    )
    raise CompressionError(
        f"jaxlump.finetune: {what}.{hint} (Pass `throw=False` to receive the model and the losses as they are.)"
    )


def glycolytic_problem(
    *, seed: int = 0, width: int = 64, depth: int = 2, steps: int = 4000, n_calib: int = 512, progress: bool = True
):
    """The embedded default: glycolytic data (float64), a trained tanh MLP and a calibration set.

    Returns `(model, data, x_calib)` with `data` holding float64 `x_train, y_train, x_test, y_test`.
    """
    data = glycolytic(key=seed)
    data = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64) if eqx.is_inexact_array(a) else a, data)
    init_key, train_key, calib_key = jr.split(jr.key(seed), 3)
    model = eqx.nn.MLP(
        data.x_train.shape[1], data.y_train.shape[1], width, depth, activation=jnp.tanh, dtype=jnp.float64, key=init_key
    )
    model = train_mse(model, data.x_train, data.y_train, key=train_key, steps=steps, progress=progress)
    return model, data, data.calibration(n_calib, calib_key)
