"""Minimal MSE training with optax, for the main job, benchmarks and notebooks."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax
from tqdm.auto import tqdm


def mse(model, x, y) -> jax.Array:
    return jnp.mean((jax.vmap(model)(x) - y) ** 2)


def train_mse(
    model, x, y, *, key, steps: int = 3000, batch_size: int = 256, learning_rate: float = 3e-3, progress: bool = True
):
    """Adam with cosine decay on mini-batches; returns the trained model.

    The loop is a `jax.lax.scan` over chunks of steps so the progress bar costs nothing.
    """
    optimiser = optax.adam(optax.cosine_decay_schedule(learning_rate, steps))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    state = optimiser.init(params)
    n = x.shape[0]
    batch_size = min(batch_size, n)

    def step(carry, step_key):
        params, state = carry
        idx = jr.choice(step_key, n, (batch_size,), replace=False)
        loss, grads = jax.value_and_grad(lambda p: mse(eqx.combine(p, static), x[idx], y[idx]))(params)
        updates, state = optimiser.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), loss

    chunk = 100

    @jax.jit
    def run_chunk(params, state, chunk_key):
        (params, state), losses = jax.lax.scan(step, (params, state), jr.split(chunk_key, chunk))
        return params, state, losses[-1]

    n_chunks = -(-steps // chunk)
    bar = tqdm(total=n_chunks, desc="training", disable=not progress, leave=False)
    for chunk_key in jr.split(key, n_chunks):
        params, state, loss = run_chunk(params, state, chunk_key)
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss):.2e}")
    bar.close()
    return eqx.combine(params, static)


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
