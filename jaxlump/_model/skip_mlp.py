"""`SkipMLP`: a dense chain whose pre-activations also receive linear skip terms from earlier layers.

What linearity-based merging (Dobler & Lemmerich 2025) produces: hidden neurons that behave linearly are removed
and their path `W^{l+1}[:, L] W^l[L, :]` becomes a dense skip matrix from the earlier activations into `z^{l+1}`.
"""

import equinox as eqx
import jax
import jax.numpy as jnp

from .._results.accounting import Cost, chain_cost
from . import to_chain
from .activations import ACTIVATIONS
from .network import DenseChain, refuse_gated


class SkipMLP(eqx.Module):
    """A chain of dense layers with linear skip connections into the pre-activations.

    Layer `j` (0-based, `j = 0..L-1`) maps activation `a^j` to `a^{j+1}`:

    `z^{j+1} = W_j a^j + S_j [a^{k_1}; a^{k_2}; ...] + b_j`, `a^{j+1} = σ_j(z^{j+1})`, `a^0 = x`,

    where `(k_1, k_2, ...) = skip_sources[j]` are indices of *earlier* activations (`k < j`), concatenated in
    that order (the merge puts the current input first, then older ones), and `S_j = skips[j]` is `None` when the
    layer has no skip. A hidden layer may have width 0: it has disappeared and only skips carry its signal.

    Called on one example `(n_0,)` like `eqx.nn.MLP` (a batch `(batch, n_0)` also works).

    Supported by `jaxlump.cost`, `jaxlump.measure_latency`, `jaxlump.save` and `jaxlump.load` (skips and
    vanished layers included). Everything that needs the dense chain — lumping, pruning, the ODE encodings,
    the ERODE export — refuses it with that reason rather than silently dropping the skips.

    **Arguments:**

    - `weights`: per layer `W_j` of shape `(n_{j+1}, n_j)` (Equinox's `(out, in)` layout).
    - `biases`: per layer `b_j` of shape `(n_{j+1},)` (zeros where `use_bias[j]` is False).
    - `activations`: per layer the name of `σ_j` in `jaxlump._model.activations.ACTIVATIONS`.
    - `use_bias`: per layer whether the bias is a parameter (counted by `cost`).
    - `skips`: per layer `S_j` of shape `(n_{j+1}, Σ_k n_k)` or `None` (default: no skips at all).
    - `skip_sources`: per layer the tuple of source activation indices (`()` where `skips[j]` is `None`).

    **Raises:** `ValueError` when shapes, sources or activation names are inconsistent.

    ```python
    import jax.numpy as jnp
    from jaxlump._model.skip_mlp import SkipMLP

    # 2 -> 3 -> 1 with a skip from the input x straight into the output's pre-activation.
    model = SkipMLP(
        (jnp.ones((3, 2)), jnp.ones((1, 3))), (jnp.zeros(3), jnp.zeros(1)), ("relu", "identity"), (True, True),
        skips=(None, jnp.array([[1.0, -1.0]])), skip_sources=((), (0,)),
    )
    assert model(jnp.array([1.0, 2.0])).shape == (1,)
    assert int(model.cost().dense_params) == 6 + 3 + 3 + 1 + 2
    ```
    """

    weights: tuple[jax.Array, ...]
    biases: tuple[jax.Array, ...]
    skips: tuple[jax.Array | None, ...]
    activations: tuple[str, ...] = eqx.field(static=True)
    use_bias: tuple[bool, ...] = eqx.field(static=True)
    skip_sources: tuple[tuple[int, ...], ...] = eqx.field(static=True)
    widths: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, weights, biases, activations, use_bias, skips=None, skip_sources=None):
        n_layers = len(weights)
        self.weights = tuple(jnp.asarray(w) for w in weights)
        self.biases = tuple(jnp.asarray(b) for b in biases)
        skips = (None,) * n_layers if skips is None else skips
        skip_sources = ((),) * n_layers if skip_sources is None else skip_sources
        self.skips = tuple(None if s is None else jnp.asarray(s) for s in skips)
        self.activations = tuple(activations)
        self.use_bias = tuple(bool(u) for u in use_bias)
        self.skip_sources = tuple(tuple(int(k) for k in sources) for sources in skip_sources)
        self.widths = (int(self.weights[0].shape[1]),) + tuple(int(w.shape[0]) for w in self.weights) if weights else ()

    def __check_init__(self):
        n = len(self.weights)
        lengths = (len(self.biases), len(self.activations), len(self.use_bias), len(self.skips), len(self.skip_sources))
        if n == 0 or any(length != n for length in lengths):
            raise ValueError(
                "SkipMLP needs one weight, bias, activation, use_bias flag, skip and skip_sources entry per layer; "
                f"received {n} weights and {lengths} of the others."
            )
        for j, (w, b, act, s, sources) in enumerate(
            zip(self.weights, self.biases, self.activations, self.skips, self.skip_sources, strict=True)
        ):
            if act not in ACTIVATIONS:
                raise ValueError(f"SkipMLP layer {j}: activation {act!r} not in {list(ACTIVATIONS)}.")
            if w.shape != (self.widths[j + 1], self.widths[j]) or b.shape != (self.widths[j + 1],):
                raise ValueError(
                    f"SkipMLP layer {j}: weight {w.shape} and bias {b.shape} do not chain with widths {self.widths}."
                )
            if (s is None) != (len(sources) == 0):
                raise ValueError(f"SkipMLP layer {j}: a skip matrix needs sources and sources need a skip matrix.")
            if any(not 0 <= k < j for k in sources):
                raise ValueError(f"SkipMLP layer {j}: skip sources {sources} must be earlier activations (k < {j}).")
            if s is not None and s.shape != (self.widths[j + 1], sum(self.widths[k] for k in sources)):
                raise ValueError(
                    f"SkipMLP layer {j}: skip of shape {s.shape} does not map sources {sources} "
                    f"(widths {[self.widths[k] for k in sources]}) to {self.widths[j + 1]} neurons."
                )

    @classmethod
    def from_chain(cls, chain) -> "SkipMLP":
        """The same network as `chain` (a `DenseChain` or any model `to_chain` accepts), without skips."""
        chain = to_chain(chain, "chain")
        refuse_gated(chain, "chain", "jaxlump.SkipMLP.from_chain")
        return cls(chain.weights, chain.biases, chain.activations, chain.use_bias)

    @property
    def in_size(self) -> int:
        return self.widths[0]

    @property
    def out_size(self) -> int:
        return self.widths[-1]

    @property
    def n_layers(self) -> int:
        return len(self.weights)

    def dense_chain(self) -> DenseChain:
        """The chain part alone (weights, biases, activations), ignoring the skips."""
        return DenseChain(self.weights, self.biases, self.activations, self.use_bias)

    def forward(self, x: jax.Array) -> tuple[list[jax.Array], list[jax.Array]]:
        """Pre-activations `[z^1..z^L]` and activations `[a^0=x, a^1..a^L]` for one example or a batch."""
        zs, acts = [], [x]
        layers = zip(self.weights, self.biases, self.activations, self.skips, self.skip_sources, strict=True)
        for w, b, act, s, sources in layers:
            z = acts[-1] @ w.T + b
            if s is not None:
                z = z + jnp.concatenate([acts[k] for k in sources], axis=-1) @ s.T
            zs.append(z)
            acts.append(ACTIVATIONS[act].fn(z))
        return zs, acts

    def __call__(self, x: jax.Array, *, key=None) -> jax.Array:
        del key
        return self.forward(x)[1][-1]

    def cost(self) -> Cost:
        """`Cost` with the conventions of `jaxlump._results.accounting`, skip matrices included.

        A skip `S_j` adds `S_j.size` dense parameters, its non-zeros, and `2·S_j.size` FLOPs (multiply-adds).
        """
        chain_part = chain_cost(self.dense_chain())
        skips = [s for s in self.skips if s is not None]
        skip_params = sum(s.size for s in skips)
        skip_nonzeros = sum((jnp.count_nonzero(s) for s in skips), jnp.asarray(0))
        return Cost(
            chain_part.dense_params + skip_params,
            chain_part.nonzeros + skip_nonzeros,
            chain_part.flops + 2 * skip_params,
        )
