"""Pooling between a channel site's activation and its reader, read off the traced program.

Max, min, sum and average pooling act on each channel on its own, so a channel site may pool its activations
before the next convolution or the flatten (`relu → max_pool → conv`, as CNNs are written). The pooling is found
as a chain of equations from the activation's output to the reader's input — window reductions
(`reduce_window_max/min/sum`) whose window spans only spatial axes, reductions of whole spatial axes (a global
pool, `x.mean(axis=(1, 2))`), scalings by a constant (an average pool's division), and the layout moves Equinox's
pools make around them (`transpose`, `broadcast_in_dim` and `squeeze` of unit axes) — and kept as
`Window`/`Reduce`/`Scale` steps on one channel's map, which the site's reading applies before it unfolds or
flattens the map (`jaxlump._methods.channels`).
"""

import dataclasses

import jax
import jax.extend.core as jcore
import jax.numpy as jnp
import numpy as np

_WINDOWS = {"reduce_window_max": "max", "reduce_window_min": "min", "reduce_window_sum": "sum"}
_REDUCTIONS = {"reduce_max": "max", "reduce_min": "min", "reduce_sum": "sum"}
_LAYOUT = frozenset(("transpose", "broadcast_in_dim", "squeeze", "convert_element_type"))
_SCALINGS = frozenset(("mul", "div"))
KINDS = frozenset(_WINDOWS) | frozenset(_REDUCTIONS) | _LAYOUT | _SCALINGS  # the equations a pooling chain is made of
POOLS = frozenset(_WINDOWS) | frozenset(_REDUCTIONS)  # a chain pools when it holds one of these


@dataclasses.dataclass(frozen=True)
class Window:
    """A window reduction over the spatial axes of one channel's map `(B, *spatial)`."""

    op: str  # "max", "min" or "sum"
    window: tuple[int, ...]
    strides: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    base_dilation: tuple[int, ...]
    window_dilation: tuple[int, ...]

    def __call__(self, a):
        init, computation = {"max": (-jnp.inf, jax.lax.max), "min": (jnp.inf, jax.lax.min), "sum": (0, jax.lax.add)}[
            self.op
        ]
        return jax.lax.reduce_window(
            a,
            jnp.asarray(init, a.dtype),
            computation,
            (1, *self.window),
            (1, *self.strides),
            ((0, 0), *self.padding),
            (1, *self.base_dilation),
            (1, *self.window_dilation),
        )

    def describe(self) -> str:
        return f"{self.op} pool {'×'.join(map(str, self.window))}"


@dataclasses.dataclass(frozen=True)
class Reduce:
    """A reduction of whole spatial axes of one channel's map `(B, *spatial)` (a global pool: `x.mean(axis=(1, 2))`
    is a sum over them, then a `Scale`); `size`: how many values each output reduces."""

    op: str  # "max", "min" or "sum"
    axes: tuple[int, ...]  # among the map's spatial axes, from 0
    size: int

    def __call__(self, a):
        return {"max": jnp.max, "min": jnp.min, "sum": jnp.sum}[self.op](a, axis=tuple(1 + i for i in self.axes))

    def describe(self) -> str:
        return f"global {self.op} pool"


@dataclasses.dataclass(frozen=True)
class Scale:
    """A map multiplied by a constant (an average pool's `1 / window size`)."""

    factor: float

    def __call__(self, a):
        return a * jnp.asarray(self.factor, a.dtype)

    def describe(self) -> str:
        return f"× {self.factor:.4g}"


def steps_of(chain: list, ndim: int, channel_axis: int) -> tuple | str:
    """The pooling `chain` (equation nodes in program order, each reading the previous one's output) computes on
    a value of `ndim` axes, batch first and channels at `channel_axis`: its steps on one channel's map, or why it
    is not a pooling of each channel on its own."""
    axes: list[int | None] = list(range(ndim))  # each current axis: the value's axis it is, None for a unit axis
    spatial = [a for a in range(ndim) if a not in (0, channel_axis % ndim)]
    steps: list = []
    for node in chain:
        params, shape = node.eqn.params, node.outs[0].aval.shape
        if node.name == "transpose":
            axes = [axes[i] for i in params["permutation"]]
        elif node.name == "broadcast_in_dim":
            new: list[int | None] = [None] * len(shape)
            for source, target in enumerate(params["broadcast_dimensions"]):
                new[target] = axes[source]
            if any(a is None and shape[i] != 1 for i, a in enumerate(new)):
                return "it is broadcast along a new axis"
            axes = new
        elif node.name == "squeeze":
            if any(axes[d] is not None for d in params["dimensions"]):
                return "one of its axes is squeezed away"
            axes = [a for i, a in enumerate(axes) if i not in params["dimensions"]]
        elif node.name in _WINDOWS:
            step = _window(node, axes, spatial)
            if isinstance(step, str):
                return step
            steps.append(step)
        elif node.name in _REDUCTIONS:
            reduced = [axes[i] for i in params["axes"]]
            if any(a is not None and a not in spatial for a in reduced):
                return "it is reduced across channels or examples, not over each channel's map"
            sizes = node.ins[0].aval.shape
            size = int(np.prod([sizes[i] for i in params["axes"]], dtype=int))
            steps.append(
                Reduce(_REDUCTIONS[node.name], tuple(spatial.index(a) for a in reduced if a is not None), size)
            )
            axes = [a for i, a in enumerate(axes) if i not in params["axes"]]
            spatial = [a for a in spatial if a not in reduced]
        elif node.name in _SCALINGS:
            factor = _factor(node)
            if factor is None:
                return f"it is scaled by `{node.name}` with something other than a constant"
            steps.append(Scale(factor))
    if axes != sorted({0, channel_axis % ndim, *spatial}):
        return "its axes are reordered before the next layer"
    return tuple(steps)


def reduced_axes(steps) -> int:
    """How many spatial axes `steps` reduce whole (0 for anything but steps)."""
    return sum(len(step.axes) for step in steps if isinstance(step, Reduce)) if isinstance(steps, tuple) else 0


def _window(node, axes: list, spatial: list) -> Window | str:
    params = node.eqn.params
    per_axis = {
        name: params[name] for name in ("window_dimensions", "window_strides", "base_dilation", "window_dilation")
    }
    padding = params["padding"]
    for i, a in enumerate(axes):
        if a in spatial:
            continue
        if any(per_axis[name][i] != 1 for name in per_axis) or tuple(padding[i]) != (0, 0):
            return "it is pooled across channels or examples, not over each channel's map"
    where = [axes.index(a) for a in spatial]
    return Window(
        _WINDOWS[node.name],
        *(tuple(int(per_axis[name][i]) for i in where) for name in ("window_dimensions", "window_strides")),
        tuple(tuple(int(p) for p in padding[i]) for i in where),
        *(tuple(int(per_axis[name][i]) for i in where) for name in ("base_dilation", "window_dilation")),
    )


def _factor(node) -> float | None:
    """The constant a `mul`/`div` node scales its other operand by, or None."""
    literals = [(i, v) for i, v in enumerate(node.ins) if isinstance(v, jcore.Literal) and np.ndim(v.val) == 0]
    if len(literals) != 1 or len(node.ins) != 2:
        return None
    position, literal = literals[0]
    value = float(literal.val)
    if node.name == "mul":
        return value
    return 1.0 / value if position == 1 and value != 0 else None


def apply(steps: tuple, a):
    """The pooling `steps` on one channel's map `a` `(B, *spatial)`."""
    for step in steps:
        a = step(a)
    return a


def describe(steps: tuple) -> str:
    """`"max pool 2×2"`, `"avg pool 3×3"` (a sum pool scaled by one over its window's size), ..."""
    words = []
    for i, step in enumerate(steps):
        if isinstance(step, Scale):
            continue
        after = steps[i + 1] if i + 1 < len(steps) else None
        size = step.size if isinstance(step, Reduce) else np.prod(step.window)
        average = step.op == "sum" and isinstance(after, Scale) and np.isclose(after.factor * size, 1)
        words.append(step.describe().replace("sum", "avg") if average else step.describe())
    return " → ".join(words)
