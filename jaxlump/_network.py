"""The canonical dense chain `z^l = W^l a^{l-1} + b^l`, `a^l = σ_l(z^l)`, and the activation table.

Every adapter converts to and from `DenseChain`; every algorithm works on it.
"""

import concurrent.futures
import dataclasses
import functools
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._custom_types import Bias, Weight


@dataclasses.dataclass(frozen=True)
class Activation:
    """One supported activation.

    `state` says which variable the ODE encoding integrates for this layer: `"a"` when σ' is a
    polynomial in the activation itself (`derivative_in_a`, of degree `degree`), `"z"` when it is
    only a function of the pre-activation (`derivative_in_z`; piecewise-linear or non-polynomial).
    """

    name: str
    fn: Callable
    lipschitz: float
    state: str
    derivative_in_a: Callable | None = None
    derivative_in_z: Callable | None = None
    degree: int | None = None


def _silu_derivative(z):
    s = jax.nn.sigmoid(z)
    return s * (1 + z * (1 - s))


LEAKY_RELU_SLOPE = 0.01

ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in (
        Activation("identity", lambda z: z, 1.0, "a", derivative_in_a=jnp.ones_like, degree=0),
        Activation("tanh", jnp.tanh, 1.0, "a", derivative_in_a=lambda a: 1 - a**2, degree=2),
        Activation("sigmoid", jax.nn.sigmoid, 0.25, "a", derivative_in_a=lambda a: a - a**2, degree=2),
        Activation("relu", jax.nn.relu, 1.0, "z", derivative_in_z=lambda z: (z > 0).astype(z.dtype)),
        Activation(
            "leaky_relu",
            lambda z: jax.nn.leaky_relu(z, LEAKY_RELU_SLOPE),
            1.0,
            "z",
            derivative_in_z=lambda z: jnp.where(z > 0, 1.0, LEAKY_RELU_SLOPE).astype(z.dtype),
        ),
        Activation("softplus", jax.nn.softplus, 1.0, "z", derivative_in_z=jax.nn.sigmoid),
        # max |silu'| = 1.099839 (at z ≈ 2.3994); rounded up, the certificate needs an upper bound.
        Activation("silu", jax.nn.silu, 1.09984, "z", derivative_in_z=_silu_derivative),
    )
}

_PROBE = np.linspace(-4.0, 4.0, 33)


def _evaluate_eagerly(fn: Callable) -> np.ndarray:
    """`fn` on the probe grid, computed eagerly even while JAX is tracing (e.g. `lump_masked` called inside a
    user's `jax.jit`): JAX's trace state is thread-local, so a fresh thread evaluates concretely."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: np.asarray(fn(jnp.asarray(_PROBE)), dtype=np.float64)).result()


@functools.cache
def _reference_values() -> dict[str, np.ndarray]:
    return {name: _evaluate_eagerly(act.fn) for name, act in ACTIVATIONS.items()}


def identify_activation(fn: Callable, where: str) -> str:
    """Name the activation computed by `fn`, recognised by its values on a probe grid.

    Probing (rather than comparing function identity) recognises `jnp.tanh`, `jax.nn.tanh`,
    `lambda x: x`, `eqx.nn.Lambda(jax.nn.relu)`, `eqx.nn.Identity()` alike.
    """
    if isinstance(fn, eqx.nn.Lambda):
        fn = fn.fn
    if isinstance(fn, eqx.Module) and not isinstance(fn, eqx.nn.Identity):
        if jax.tree_util.tree_leaves(eqx.filter(fn, eqx.is_array)):
            raise TypeError(
                f"{where}: learnable activation {type(fn).__name__} is not supported; "
                f"supported activations: {', '.join(ACTIVATIONS)}."
            )
    try:
        values = _evaluate_eagerly(fn)
    except Exception as e:  # noqa: BLE001 — anything that cannot run elementwise is unsupported
        raise TypeError(
            f"{where}: could not evaluate activation {fn!r} elementwise ({e}); "
            f"supported activations: {', '.join(ACTIVATIONS)}."
        ) from e
    for name, expected in _reference_values().items():
        if values.shape == expected.shape and np.allclose(values, expected, rtol=1e-5, atol=1e-6):
            return name
    raise TypeError(
        f"{where}: activation {getattr(fn, '__name__', fn)!r} is not supported; "
        f"supported activations: {', '.join(ACTIVATIONS)}."
    )


class DenseChain(eqx.Module):
    """A chain of dense layers in canonical form.

    `weights[l]` has shape `(n_{l+1}, n_l)` (Equinox's `(out, in)`), `activations[l]` names
    `σ_{l+1}` (see `ACTIVATIONS`), `use_bias[l]` records whether layer `l` has a bias at all
    (a layer without one keeps a zero bias that no method may make non-zero).
    """

    weights: tuple[Weight, ...]
    biases: tuple[Bias, ...]
    activations: tuple[str, ...] = eqx.field(static=True)
    use_bias: tuple[bool, ...] = eqx.field(static=True)

    def __check_init__(self):
        n = len(self.weights)
        if n == 0 or not (len(self.biases) == len(self.activations) == len(self.use_bias) == n):
            raise ValueError(
                f"DenseChain needs one weight, bias, activation and use_bias flag per layer; received "
                f"{len(self.weights)}, {len(self.biases)}, {len(self.activations)}, {len(self.use_bias)}."
            )
        for l, (w, b, act) in enumerate(zip(self.weights, self.biases, self.activations)):
            if act not in ACTIVATIONS:
                raise ValueError(f"layer {l}: activation {act!r} not in {list(ACTIVATIONS)}.")
            if w.ndim != 2 or b.shape != (w.shape[0],):
                raise ValueError(f"layer {l}: weight {w.shape} and bias {b.shape} do not match (out, in) / (out,).")
            if l > 0 and w.shape[1] != self.weights[l - 1].shape[0]:
                raise ValueError(
                    f"layer {l} takes {w.shape[1]} inputs but layer {l - 1} has {self.weights[l - 1].shape[0]} outputs."
                )

    @property
    def widths(self) -> tuple[int, ...]:
        """`(n_0, n_1, ..., n_L)`: input width, hidden widths, output width."""
        return (self.weights[0].shape[1],) + tuple(w.shape[0] for w in self.weights)

    @property
    def n_layers(self) -> int:
        return len(self.weights)

    def forward(self, x: jax.Array) -> tuple[list[jax.Array], list[jax.Array]]:
        """Pre-activations `[z^1..z^L]` and activations `[a^0=x, a^1..a^L]` for a batch `x`."""
        zs, acts = [], [x]
        for w, b, act in zip(self.weights, self.biases, self.activations):
            z = acts[-1] @ w.T + b
            zs.append(z)
            acts.append(ACTIVATIONS[act].fn(z))
        return zs, acts

    def __call__(self, x: jax.Array) -> jax.Array:
        """Apply to one example `(n_0,)` or a batch `(batch, n_0)`."""
        return self.forward(x)[1][-1]
