"""The canonical dense chain `z^l = W^l a^{l-1} + b^l`, `a^l = σ_l(z^l)` (activations by name: `activations.py`).

Every model kind converts to and from `DenseChain`; every algorithm works on it.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Biases, Weights
from .activations import ACTIVATIONS

# The parameter dtypes every algorithm accepts (half precision is computed in float32, see `jaxlump._model`).
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


class ParameterDtypeError(TypeError):
    """A weight or bias that is not a real floating-point array (complex, integer, boolean)."""


def check_parameter_dtype(array, what: str) -> None:
    """Refuse a parameter array whose dtype is not one of `FLOAT_DTYPES`, naming `what` (`"layer 0 weight"`)."""
    dtype = getattr(array, "dtype", None)
    if dtype is not None and np.dtype(dtype).name not in FLOAT_DTYPES:
        raise ParameterDtypeError(
            f"{what} has dtype {np.dtype(dtype).name}; jaxlump accepts real floating-point parameters only: "
            f"{', '.join(FLOAT_DTYPES)}."
        )


class DenseChain(eqx.Module):
    """A chain of dense layers in canonical form.

    `weights[l]` has shape `(n_{l+1}, n_l)` (Equinox's `(out, in)`), `activations[l]` names
    `σ_{l+1}` (see `ACTIVATIONS`), `use_bias[l]` records whether layer `l` has a bias at all
    (a layer without one keeps a zero bias that no method may make non-zero).

    A hidden layer may be *gated* (a SwiGLU / GeGLU unit): `gate_weights[l]`, `gate_biases[l]` (the shapes of
    `weights[l]`, `biases[l]`) give `z_g = W_g a + b_g` beside `z = W a + b`, and the layer's activation is
    `a^{l+1} = σ_{l+1}(z_g) ⊙ z` (`activations[l]` names the gate's σ; `use_bias[l]` applies to both biases).
    `gate_weights = gate_biases = ()` (the default) means no layer is gated; otherwise both hold one entry per
    layer, `None` for an ungated layer. The output layer cannot be gated. A gated unit's producer is its gate row
    *and* its up row: merging two units averages both, removing one drops both. Methods that do not support gated
    layers refuse them (`GATED_SUPPORTED` lists those that do).
    """

    weights: Weights
    biases: Biases
    activations: tuple[str, ...] = eqx.field(static=True)
    use_bias: tuple[bool, ...] = eqx.field(static=True)
    gate_weights: tuple[jax.Array | None, ...] = ()
    gate_biases: tuple[jax.Array | None, ...] = ()

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
            check_parameter_dtype(w, f"layer {l} weight")
            check_parameter_dtype(b, f"layer {l} bias")
            if w.ndim != 2 or b.shape != (w.shape[0],):
                raise ValueError(f"layer {l}: weight {w.shape} and bias {b.shape} do not match (out, in) / (out,).")
            if l > 0 and w.shape[1] != self.weights[l - 1].shape[0]:
                raise ValueError(
                    f"layer {l} takes {w.shape[1]} inputs but layer {l - 1} has {self.weights[l - 1].shape[0]} outputs."
                )
        self._check_gates()

    def _check_gates(self):
        if not (self.gate_weights or self.gate_biases):
            return
        n = len(self.weights)
        gate_weights, gate_biases = self.gate_weights, self.gate_biases
        if not (isinstance(gate_weights, tuple) and isinstance(gate_biases, tuple)) or not (
            len(gate_weights) == len(gate_biases) == n
        ):
            raise ValueError(
                f"DenseChain `gate_weights` and `gate_biases` must be tuples with one entry per layer ({n}; `None` for "
                f"an ungated layer), or both `()` for no gates; received {type(gate_weights).__name__} of length "
                f"{len(gate_weights)} and {type(gate_biases).__name__} of length {len(gate_biases)}."
            )
        for l, (g, gb) in enumerate(zip(gate_weights, gate_biases)):
            if (g is None) != (gb is None):
                raise ValueError(
                    f"layer {l}: `gate_weights[{l}]` and `gate_biases[{l}]` must both be arrays or both None."
                )
            if g is None:
                continue
            if l == n - 1:
                raise ValueError(
                    f"layer {l} is the output layer, which cannot be gated (a gated layer's units are hidden units "
                    "consumed by a next layer); received a gate for it."
                )
            check_parameter_dtype(g, f"layer {l} gate weight")
            check_parameter_dtype(gb, f"layer {l} gate bias")
            if getattr(g, "shape", None) != self.weights[l].shape or getattr(gb, "shape", None) != self.biases[l].shape:
                raise ValueError(
                    f"layer {l}: gate weight {getattr(g, 'shape', None)} and gate bias {getattr(gb, 'shape', None)} "
                    f"must have the shapes of the layer's weight {self.weights[l].shape} and bias "
                    f"{self.biases[l].shape}."
                )

    @property
    def gated(self) -> tuple[bool, ...]:
        """Per layer, whether it is gated (`a = σ(z_g) ⊙ z`)."""
        if not self.gate_weights:
            return (False,) * len(self.weights)
        return tuple(g is not None for g in self.gate_weights)

    @property
    def is_gated(self) -> bool:
        """Whether any layer is gated."""
        return any(self.gated)

    @property
    def widths(self) -> tuple[int, ...]:
        """`(n_0, n_1, ..., n_L)`: input width, hidden widths, output width."""
        return (self.weights[0].shape[1],) + tuple(w.shape[0] for w in self.weights)

    @property
    def n_layers(self) -> int:
        return len(self.weights)

    def forward(self, x: jax.Array) -> tuple[list, list[jax.Array]]:
        """Pre-activations `[z^1..z^L]` and activations `[a^0=x, a^1..a^L]` for a batch `x`.

        For a gated layer the pre-activation entry is the pair `(z_g, z)` (gate, up) and the activation
        `σ(z_g) ⊙ z`."""
        zs, acts = [], [x]
        gates = self.gate_weights or (None,) * len(self.weights)
        gate_biases = self.gate_biases or (None,) * len(self.weights)
        for w, b, act, g, gb in zip(self.weights, self.biases, self.activations, gates, gate_biases):
            z = affine(acts[-1], w, b)
            if g is None:
                zs.append(z)
                acts.append(ACTIVATIONS[act].fn(z))
            else:
                z_gate = affine(acts[-1], g, gb)
                zs.append((z_gate, z))
                acts.append(ACTIVATIONS[act].fn(z_gate) * z)
        return zs, acts

    def __call__(self, x: jax.Array) -> jax.Array:
        """Apply to one example `(n_0,)` or a batch `(batch, n_0)`."""
        return self.forward(x)[1][-1]


def affine(a: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """`a @ wᵀ + b` for one example or a batch, the bias broadcast explicitly (clean under
    `jax_numpy_rank_promotion="raise"`)."""
    z = a @ w.T
    return z + jnp.reshape(b, (1,) * (z.ndim - 1) + b.shape)


GATED_SUPPORTED = (
    "jaxlump.lump, jaxlump.lump_masked and jaxlump.sweep (with the Structural or RefitAware discrepancy), "
    "jaxlump.merge_or_remove, jaxlump.lump_then_select, jaxlump.reconstruct, jaxlump.shrink, jaxlump.cost and "
    "jaxlump.baselines.obs_prune, osscar_prune, id_prune and exact_lump"
)


def refuse_gated(chain: DenseChain, name: str, method: str) -> None:
    """Refuse a chain with gated layers for a `method` that does not support them, naming the argument `name`."""
    if any(chain.gated):
        layers = [l for l, gated in enumerate(chain.gated) if gated]
        raise TypeError(
            f"`{name}` has gated layers (layer {', '.join(map(str, layers))}: σ(W_g a + b_g) ⊙ (W a + b), e.g. "
            f"SwiGLU); {method} does not support gated layers. Gated layers are supported by {GATED_SUPPORTED}."
        )
