"""MSE training with optax (the main job, benchmarks, notebooks) and `finetune`, which keeps a compressed structure."""

import functools
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from tqdm.auto import tqdm

from ._adapters import to_chain
from ._errors import check_data
from ._training_loop import bind, masked_update, structure_masks


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
):
    """Train a compressed model further while keeping its structure (mean-squared error by default).

    With `info`, the parameters it marks removed stay exactly zero: the dead neurons of a masked lumping result
    (their incoming rows, biases and outgoing columns) and the weights outside an unstructured result's
    `weight_masks`; their gradients, updates and optimizer state are zero, so momentum cannot revive them. A
    physically smaller model (from `jaxlump.lump` or `shrink`) needs no `info`.

    **Arguments:**

    - `model`: the model (any kind `jaxlump.lump` supports); `x`, `y`: training inputs and targets.
    - `steps`: number of mini-batch steps (≥ 1).
    - `optimizer`: an optax transformation; default `optax.adam(1e-3)`.
    - `info`: the `CompressionInfo` of a fixed-shape result, or a `jaxlump.wrap_optax` optimizer state, or `None`.
    - `key`: PRNG key (or int seed) for the mini-batches; default `0`.
    - `batch_size`: examples per step (at most the data size).
    - `loss`: `loss(model, x_batch, y_batch) -> scalar`; default the mean squared error.
    - `progress`: show a progress bar.

    **Returns:** `(model, losses)`: the fine-tuned model (same kind and shapes) and the loss at every step.

    **Raises:** `ValueError`/`TypeError` for `steps < 1`, a non-optax optimizer, an unsupported model, or an `info`
    that does not fit the model.

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
    binding, params = bind(model)
    x = check_data(x, "x", width=to_chain(model).widths[0])
    y = jnp.asarray(y)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"`y` has {y.shape[0]} examples but `x` has {x.shape[0]}.")
    masks = None if info is None else binding.params(structure_masks(model, info))
    key = jr.key(0) if key is None else (jr.key(key) if isinstance(key, (int, np.integer)) else key)
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
    return binding.rebuild(params), losses


def glycolytic_problem(
    *, seed: int = 0, width: int = 64, depth: int = 2, steps: int = 4000, n_calib: int = 512, progress: bool = True
):
    """The embedded default: glycolytic data (float64), a trained tanh MLP and a calibration set.

    Returns `(model, data, x_calib)` with `data` holding float64 `x_train, y_train, x_test, y_test`.
    """
    from .datasets import glycolytic

    data = glycolytic(key=seed)
    data = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64) if eqx.is_inexact_array(a) else a, data)
    init_key, train_key, calib_key = jr.split(jr.key(seed), 3)
    model = eqx.nn.MLP(
        data.x_train.shape[1], data.y_train.shape[1], width, depth, activation=jnp.tanh, dtype=jnp.float64, key=init_key
    )
    model = train_mse(model, data.x_train, data.y_train, key=train_key, steps=steps, progress=progress)
    return model, data, data.calibration(n_calib, calib_key)
