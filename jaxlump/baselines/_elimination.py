"""Elimination–compensation pruning (Ballini et al., 2026): remove a weight, shift its adjacent bias.

Removing `w = W^l_ij` and adding `δ` to `b^l_i` changes only `z^l_i`, by `δ − w a^{l-1}_j(x)`.
Linearising the output in that pre-activation, with `g^l_i(x) = ∂f(x)/∂b^l_i` and
`γ_{n,i} = ‖g^l_i(x_n)‖²`, the mean squared output deviation over the calibration set is
`E_ij(δ) = (1/N) Σ_n γ_{n,i} (δ − w a_{n,j})²`, minimised by

    δ*_ij = W_ij S1_ij / S0_i,        I_ij = E_ij(δ*) = W_ij² (S2_ij − S1_ij² / S0_i) / N,

with `S0 = Σ_n γ_n`, `S1 = Γᵀ A`, `S2 = Γᵀ (A∘A)` (two GEMMs per layer). `A` is centred by its
plain column mean before the GEMMs: the formulas are shift-invariant and the centred form avoids
the cancellation in `S2 − S1²/S0`. On a linear output layer `γ ≡ 1` and the formulas are exact
(mean replacement: `δ* = w·mean(a_j)`, `I = w²·Var(a_j)`).
"""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Calibration
from .._methods.base import AbstractScope, Global, PerLayer, check_scope
from .._methods.registry import WEIGHT_SPARSITY, Compressor, register_compressor
from .._model.activations import ACTIVATIONS
from .._model.network import DenseChain
from .._results.info import CompressionInfo
from .._sites.compress import over_sites
from ._masks import apply_masks, check_flag, finish, prepare, prunable_layers, select_lowest

# Elements per vectorised chunk (per-sample Jacobians, per-weight non-linear solves): bounds memory.
_CHUNK_ELEMENTS = 2**22


def _with_biases(chain: DenseChain, biases) -> DenseChain:
    return eqx.tree_at(lambda c: c.biases, chain, tuple(biases))


@eqx.filter_jit
def bias_sensitivities(chain: DenseChain, x: jax.Array, layers: tuple[int, ...]) -> tuple[jax.Array, ...]:
    """For each layer `l` in `layers`, `γ_{n,i} = ‖∂f(x_n)/∂b^l_i‖²`, shape `(N, n_l)`, from per-sample Jacobians.

    Reverse mode costs `n_out` backward passes per sample and forward mode one tangent per bias of
    `layers`, so the cheaper one is used; samples are processed in vectorised chunks.
    """
    n_out, n_biases = chain.widths[-1], sum(chain.widths[l + 1] for l in layers)
    jacobian = jax.jacrev if n_out <= n_biases else jax.jacfwd

    def output(selected, xi):
        biases = list(chain.biases)
        for l, b in zip(layers, selected, strict=True):
            biases[l] = b
        return _with_biases(chain, biases)(xi)

    def per_sample(xi):
        jac = jacobian(output)(tuple(chain.biases[l] for l in layers), xi)
        return tuple(jnp.sum(j**2, axis=0) for j in jac)

    chunk = max(1, min(x.shape[0], _CHUNK_ELEMENTS // (n_out * n_biases)))
    return jax.lax.map(per_sample, x, batch_size=chunk)


@eqx.filter_jit
def linearised_scores(chain: DenseChain, x: jax.Array, layers: tuple[int, ...], compensate: bool = True):
    """Per layer the importance `I` and optimal bias shift `δ*` of every weight, each `(out, in)`, for the
    layers in `layers` (`None` for the others).

    Without compensation (or on a layer built without bias) `δ = 0` and `I⁰ = W² S2 / N`.
    """
    gammas = bias_sensitivities(chain, x, layers)
    inputs = chain.forward(x)[1]
    importances, deltas = [None] * chain.n_layers, [None] * chain.n_layers
    for l, gamma in zip(layers, gammas, strict=True):
        w, a = chain.weights[l], inputs[l]
        if compensate and chain.use_bias[l]:
            mean = jnp.mean(a, axis=0)
            centred = a - mean[None]
            s0 = jnp.sum(gamma, axis=0)[:, None]
            s1, s2 = gamma.T @ centred, gamma.T @ centred**2
            # γ-weighted mean minus plain mean; a neuron the output ignores (S0 = 0) gets plain mean replacement.
            offset = jnp.where(s0 > 0, s1 / jnp.where(s0 > 0, s0, 1), 0)
            deltas[l] = w * (mean[None] + offset)
            importances[l] = w**2 * jnp.maximum(s2 - s1 * offset, 0) / x.shape[0]
        else:
            deltas[l] = jnp.zeros_like(w)
            importances[l] = w**2 * (gamma.T @ a**2) / x.shape[0]
    return importances, deltas


def _apply_from(chain: DenseChain, l: int, a: jax.Array) -> jax.Array:
    """Run layers `l, l+1, ...` on activations `a` (the input of layer `l`)."""
    for w, b, act in zip(chain.weights[l:], chain.biases[l:], chain.activations[l:], strict=True):
        a = ACTIVATIONS[act].fn(a @ w.T + b)
    return a


@eqx.filter_jit
def nonlinear_scores(chain: DenseChain, x: jax.Array, l: int, delta0: jax.Array, steps: int):
    """NL-A for every weight of layer `l`: the true mean squared output deviation of the network with only
    that weight removed and its bias shifted by `δ`, minimised over `δ` by `steps` Gauss–Newton iterations
    from `delta0`.

    Returns `(deviation, delta)`, each `(out, in)`: the smallest deviation over the iterates (so never
    above the deviation at `delta0`) and the `δ` attaining it. `steps=0` evaluates `delta0` only.
    """
    zs, acts = chain.forward(x)
    target, z, a_in = acts[-1], zs[l], acts[l]
    sigma = ACTIVATIONS[chain.activations[l]].fn
    last = l == chain.n_layers - 1

    def output(i, z_i):
        if last:
            return sigma(z.at[:, i].set(z_i))
        # Only neuron i of layer l changes, so the next pre-activation moves by a rank-one update.
        change = sigma(z_i) - acts[l + 1][:, i]
        z_next = zs[l + 1] + change[:, None] * chain.weights[l + 1][:, i][None, :]
        return _apply_from(chain, l + 2, ACTIVATIONS[chain.activations[l + 1]].fn(z_next))

    def solve(args):
        i, j, delta = args
        base = z[:, i] - chain.weights[l][i, j] * a_in[:, j]

        def residual(d):
            return output(i, base + d) - target

        def step(carry, _):
            d, best_d, best_e = carry
            r, dr = jax.jvp(residual, (d,), (jnp.ones_like(d),))
            e = jnp.mean(jnp.sum(r**2, axis=-1))
            best_d, best_e = jnp.where(e < best_e, d, best_d), jnp.minimum(e, best_e)
            curvature = jnp.sum(dr**2)
            d = d - jnp.where(curvature > 0, jnp.sum(dr * r) / jnp.where(curvature > 0, curvature, 1), 0)
            return (d, best_d, best_e), None

        start = (delta, delta, jnp.asarray(jnp.inf, delta.dtype))
        (_, best_d, best_e), _ = jax.lax.scan(step, start, None, length=steps + 1)
        return best_e, best_d

    shape = chain.weights[l].shape
    rows, cols = (idx.ravel() for idx in jnp.indices(shape))
    chunk = max(1, min(rows.size, _CHUNK_ELEMENTS // (4 * x.shape[0] * max(chain.widths))))
    deviation, delta = jax.lax.map(solve, (rows, cols, delta0.ravel()), batch_size=chunk)
    return deviation.reshape(shape), delta.reshape(shape)


@over_sites
def elimination_compensation(
    model: Any,
    x_calib: Calibration,
    sparsity: float,
    *,
    scope: AbstractScope = PerLayer(),
    compensate: bool = True,
    prune_output: bool = False,
    nonlinear: bool = False,
    nonlinear_steps: int = 5,
    throw: bool = True,
) -> tuple[Any, CompressionInfo]:
    """Prune the weights whose removal, compensated by a shift of their adjacent bias, least changes the output.

    Linearised (default): `I_ij = W_ij² (S2_ij − S1_ij²/S0_i)/N` and `δ*_ij = W_ij S1_ij/S0_i` with
    `γ = ‖∂f/∂b^l_i‖²` from per-sample bias Jacobians (module docs); exactly `int(n·s)` lowest `I` per
    group are zeroed, all scored once on the dense network, and each bias absorbs the sum of its
    pruned weights' shifts, `b^l_i ← b^l_i + Σ_{j pruned} δ*_ij`. The deviation is measured on the
    model's output (after any final activation).

    **Arguments:**

    - `model`: an `eqx.nn.MLP`, `eqx.nn.Sequential`, `jaxlump.LumpedMLP` or `flax.nnx` model.
    - `x_calib`: calibration inputs, shape `(N, in)`; required.
    - `sparsity`: the fraction `s ∈ [0, 1)` of prunable weights to zero.
    - `scope`: `PerLayer()` (default, the same for every jaxlump pruning baseline: each prunable layer to `s`)
      or `Global()` (one ranking; `I` is in output units², comparable across layers).
    - `compensate`: `True` (default) scores with and applies the bias shifts; `False` is the
      elimination-only ablation, score `I⁰ = W² S2/N` and no bias change. Layers built without a
      bias are always scored and pruned this way.
    - `prune_output`: whether the output layer is pruned (default `False`, as every jaxlump baseline).
    - `nonlinear`: the expensive non-linear baseline (NL-A): per weight, the *true* mean squared output
      deviation with only that weight removed and its bias shifted by `δ`, minimised by a 1-D
      Gauss–Newton solve started at `δ*`; score = the attained deviation (never above the true
      deviation at `δ*`), compensation = the minimising `δ`. With `compensate=False` it is
      leave-one-out removal (NL-B). Costs `#weights × (nonlinear_steps + 1)` forward passes over the
      calibration set; meant for small networks.
    - `nonlinear_steps`: Gauss–Newton iterations of NL-A (default 5).
    - `throw`: raise a `jaxlump.CompressionError` if the result is not finite (default); `False` reports it in
      `info.result` instead.

    **Returns:** `(new_model, info)`: a same-type, same-shape model with exact zeros and shifted biases,
    and a `CompressionInfo` whose `weight_masks` are the keep masks.

    **Raises:** `ValueError` for missing, empty, non-finite or wrong-width `x_calib`, a sparsity outside
    `[0, 1)`, a negative `nonlinear_steps`, or no prunable layer; `TypeError` for an unsupported model,
    non-boolean flags, or a `scope` other than `PerLayer()` or `Global()`.

    ```python
    import equinox as eqx, jax.numpy as jnp, jax.random as jr
    from jaxlump.baselines import elimination_compensation

    mlp = eqx.nn.MLP(3, 2, 8, 2, activation=jnp.tanh, key=jr.key(0))
    x = jr.normal(jr.key(1), (128, 3))
    pruned, info = elimination_compensation(mlp, x, 0.3)
    assert sum(int(jnp.sum(~keep)) for keep in info.weight_masks) == 26   # int(88 · 0.3), head kept
    ```

    Ballini, Muscarnera, Fumagalli, Scotti, Regazzoni, *Elimination-compensation pruning for
    fully-connected neural networks* (arXiv 2602.20467, 2026); the formulas are jaxlump's
    reconstruction from the abstract (`reference/baselines.md` §A.3).
    """
    check_scope(scope, (PerLayer, Global))
    compensate, nonlinear = check_flag(compensate, "compensate"), check_flag(nonlinear, "nonlinear")
    throw = check_flag(throw, "throw")
    if isinstance(nonlinear_steps, bool) or not isinstance(nonlinear_steps, int):
        raise TypeError(f"`nonlinear_steps` must be an integer >= 0; received {nonlinear_steps!r}.")
    if nonlinear_steps < 0:
        raise ValueError(f"`nonlinear_steps` must be an integer >= 0; received {nonlinear_steps!r}.")
    chain, x, sparsity = prepare(model, x_calib, sparsity, needs_data=True)
    prunable = prunable_layers(chain, prune_output)
    layers = tuple(l for l, p in enumerate(prunable) if p)
    importances, deltas = linearised_scores(chain, x, layers, compensate)
    if nonlinear:
        for l in layers:
            steps = nonlinear_steps if compensate and chain.use_bias[l] else 0
            importances[l], deltas[l] = nonlinear_scores(chain, x, l, deltas[l], steps)
    keep = select_lowest(importances, sparsity, scope)
    updates = [
        None if k is None or not compensate else jnp.sum(jnp.where(k, 0, d), axis=1)
        for k, d in zip(keep, deltas, strict=True)
    ]
    new_chain = apply_masks(chain, keep, updates)
    method = "elimination_compensation_nonlinear" if nonlinear else "elimination_compensation"
    return finish(method, model, chain, new_chain, keep, sparsity, x, throw)


# fmt: off
register_compressor(Compressor("elimination_compensation", elimination_compensation, "sparsity", WEIGHT_SPARSITY + ", least output change after bias compensation first", structured=False, needs_data=True))  # noqa: E501
# fmt: on
