"""Numerical check that the dynamical encoding reproduces the network: ODE state at t = 1 vs the model itself."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ..._custom_types import Inputs
from ..._errors import RESULTS
from ..._model import apply_model, param_dtype, to_chain
from ..._model.activations import ACTIVATIONS
from ..._model.network import refuse_gated
from .dynamical import _default_tolerances, simulate

_HIGHEST = jax.lax.Precision.HIGHEST
_Scalar = Float[Array, ""]
_ReferenceInput = Float[ArrayLike, " n_in"]


class EncodingCheck(eqx.Module):
    """How closely the simulated encoding reproduces the network on a batch.

    - `max_deviation`: `max |ODE state at t = 1 − network activation|` over the batch, every neuron and
      every layer (output included).
    - `output_deviation`: the same maximum over the output layer only, against `model(x)` itself (the
      user's model, vmapped over the batch for Equinox models), not against jaxlump's reading of it.
    - `per_layer`: the maximum per layer l = 1..L (hidden layers against the canonical chain's forward pass,
      which `to_chain` verified against the model; the output layer against `model(x)`).
    - `result`: the simulation's `RESULTS`; when the simulation succeeded but the output is further from
      `model(x)` than `sqrt(rtol) (1 + |model(x)|) + sqrt(atol)` (plus the model dtype's rounding),
      `RESULTS.ode_endpoint_mismatch`: a check that reports success always means a match.
    """

    max_deviation: _Scalar
    output_deviation: _Scalar
    per_layer: tuple[_Scalar, ...]
    result: RESULTS


def _forward_activations(chain, x) -> list[Array]:
    # Full-precision matmuls, as in the ODE, so that on GPU/TPU the check is not dominated by TF32/bf16 passes.
    acts, a = [], x
    for weight, bias, name in zip(chain.weights, chain.biases, chain.activations, strict=True):
        a = ACTIVATIONS[name].fn(jnp.matmul(a, weight.T, precision=_HIGHEST) + bias)
        acts.append(a)
    return acts


def check_encoding(model, x: Inputs, *, x_ref: _ReferenceInput | None = None, **simulate_options) -> EncodingCheck:
    """Verify the dynamical encoding: `max |ODE(1; x) − network(x)|` over a batch, per layer.

    Simulates the homotopy `x(t) = x_ref + t (x − x_ref)` to t = 1 with `simulate` and compares the output
    with `model(x)` itself and every hidden layer's state with the forward pass at x (full-precision
    matmuls). Measured with the defaults on CPU (random `eqx.nn.MLP`s and `DenseChain`s with weights
    `N(0, 1/n_in)`, 2–3 hidden layers of width 8–16, 16 inputs `N(0, 1)`, 5 seeds each):

    - float64 tanh / sigmoid: 5e-12 to 3e-11; identity: 3e-15 to 9e-15 (bound used in the tests: 1e-8);
    - float64 relu / leaky_relu, discontinuous field, default solver Heun: 5e-11 to 6e-10 (bound used:
      1e-8; with Tsit5 instead: 1e-8 to 4e-8);
    - float32 tanh: 2e-7 to 1.4e-6 (bound used: 1e-4); float32 relu / leaky_relu: 2e-6 to 5e-6.

    The relu error grows with the number of kinks: 2e-9 (float64) and 3e-5 (float32) on 8→64→64→64→4 nets.

    **Arguments:**

    - `model`: a `DenseChain` or any model `jaxlump` accepts.
    - `x`: inputs `(batch, n_0)`.
    - `x_ref`: the homotopy's start `(n_0,)`, default zeros.
    - `**simulate_options`: `solver`, `rtol`, `atol`, `max_steps`, passed to `simulate`.

    **Returns:**

    An `EncodingCheck`.

    **Raises:**

    As `simulate`; `TypeError` if `times` is passed (the check is at t = 1).

    ```python
    import equinox as eqx, jax, jax.random as jr
    from jaxlump._criteria.encoding.fidelity import check_encoding

    mlp = eqx.nn.MLP(3, 2, 8, 2, activation=jax.nn.tanh, key=jr.key(0))
    check = check_encoding(mlp, jr.normal(jr.key(1), (4, 3)))
    assert float(check.max_deviation) < 1e-4
    ```

    The reviewers of Dhiman et al. (2026) asked for this check; DESIGN §2b.
    """
    if "times" in simulate_options:
        raise TypeError("`check_encoding` compares the state at t = 1 only; do not pass `times`.")
    chain = to_chain(model)
    refuse_gated(chain, "model", "jaxlump.check_encoding (the dynamical ODE encoding)")
    trajectory = simulate(chain, x, x_ref=x_ref, times=(1.0,), **simulate_options)
    dtype = trajectory.times.dtype
    x = jnp.asarray(x).astype(dtype)
    model_dtype = param_dtype(model) or dtype
    expected = _forward_activations(chain, x)[:-1] + [apply_model(model, x.astype(model_dtype)).astype(dtype)]
    per_layer = tuple(
        jnp.max(jnp.abs(simulated[:, -1, :] - exact))
        for simulated, exact in zip(trajectory.activations, expected, strict=True)
    )
    default_rtol, default_atol = _default_tolerances(dtype)
    rtol = simulate_options.get("rtol") or default_rtol
    atol = simulate_options.get("atol") or default_atol
    rounding = jnp.sqrt(jnp.finfo(model_dtype).eps).astype(dtype)
    output = trajectory.activations[-1][:, -1, :]
    tolerance = (jnp.sqrt(rtol) + rounding) * (1 + jnp.abs(expected[-1])) + jnp.sqrt(atol)
    matches = jnp.all(jnp.abs(output - expected[-1]) <= tolerance)
    result = RESULTS.where(
        (trajectory.result == RESULTS.successful) & ~matches, RESULTS.ode_endpoint_mismatch, trajectory.result
    )
    return EncodingCheck(jnp.max(jnp.stack(per_layer)), per_layer[-1], per_layer, result)
