"""`finetune`'s refusals of bad input and its report of training that produced NaN or inf (the bad-input run of
2026-12-06: each of these was accepted and returned NaN losses and weights without a word). Its behaviour on good
input is tested with `wrap_optax` in tests/test_training_loop.py."""

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import jaxlump

X = jr.normal(jr.key(1), (64, 3), jnp.float32)
Y = jnp.sin(X[:, :2]) + 0.1 * X[:, 2:3]


def _mlp(dtype=jnp.float32):
    return eqx.nn.MLP(3, 2, 12, 2, activation=jnp.tanh, dtype=dtype, key=jr.key(0))


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"y": Y.at[0, 0].set(jnp.nan)}, ValueError, r"`y` contains 1 NaN or inf"),
        ({"y": Y.at[3, 1].set(jnp.inf)}, ValueError, r"`y` contains 1 NaN or inf"),
        ({"y": Y[:, :1]}, ValueError, r"`y` must have the shape of the model's outputs on `x`, \(64, 2\).*\(64, 1\)"),
        ({"y": Y[:, None, :]}, ValueError, r"`y` must have the shape .*received shape \(64, 1, 2\)"),
        ({"y": None}, ValueError, r"`y` \(the training targets\) is required; received None"),
        ({"y": Y[:10]}, ValueError, r"`y` must have one target per example of `x` \(64\); received shape \(10, 2\)"),
        ({"batch_size": 0}, ValueError, r"`batch_size` must be an integer >= 1; received 0"),
        ({"batch_size": -1}, ValueError, r"`batch_size` must be an integer >= 1; received -1"),
        ({"batch_size": True}, TypeError, r"`batch_size` must be an integer >= 1; received True"),
        ({"key": -1}, ValueError, r"`key` as an int seed must be >= 0; received -1"),
        ({"key": "0"}, TypeError, r"`key` must be a JAX PRNG key"),
        ({"key": jr.split(jr.key(0), 3)}, TypeError, r"`key` must be a JAX PRNG key"),
        ({"progress": "yes"}, TypeError, r"`progress` must be True or False; received 'yes'"),
        ({"throw": "no"}, TypeError, r"`throw` must be True or False"),
        ({"loss": "mse"}, TypeError, r"`loss` must be a function"),
    ],
)
def test_refuses_bad_input(options, error, match):
    options = {"y": Y, "steps": 3, **options}
    with pytest.raises(error, match=match):
        jaxlump.finetune(_mlp(), X, options.pop("y"), **options)


def test_refuses_the_info_of_another_model():
    """The info of `lump_masked` describes the masked model; with the original model its dead neurons carry
    weights that finetune would keep as they are and `shrink` would then drop."""
    model = _mlp()
    masked, info = jaxlump.lump_masked(model, None, 0.9)
    with pytest.raises(ValueError, match=r"`info` marks parameters .* but \d+ of them are non-zero in `model`"):
        jaxlump.finetune(model, X, Y, steps=3, info=info)
    tuned, losses = jaxlump.finetune(masked, X, Y, steps=3, info=info)  # the model it describes is accepted
    assert losses.shape == (3,) and np.all(np.isfinite(losses))


@pytest.mark.parametrize(
    ("model", "options", "match"),
    [
        (_mlp(), {"optimizer": optax.sgd(1e10)}, r"first became non-finite \(inf\) at step 3 of 5.*diverged"),
        (_mlp(), {"loss": lambda m, x, y: jnp.nan * jnp.mean(x)}, r"the loss was nan at the first step"),
        (_mlp(jnp.float16), {}, r"at step 2 of 5.*The model is in float16"),
    ],
    ids=["learning-rate-diverges", "loss-returns-nan", "float16-adam"],
)
def test_nonfinite_training_is_reported(model, options, match):
    with pytest.raises(jaxlump.CompressionError, match=match):
        jaxlump.finetune(model, X, Y, steps=5, **options)


def test_nonfinite_training_is_returned_with_throw_false():
    tuned, losses = jaxlump.finetune(_mlp(), X, Y, steps=5, optimizer=optax.adam(jnp.nan), throw=False)
    assert np.isfinite(losses[0]) and np.all(np.isnan(losses[1:]))
    assert np.all(np.isnan(np.asarray(tuned.layers[0].weight)))
