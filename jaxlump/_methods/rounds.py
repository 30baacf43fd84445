"""The scalable merge-or-remove path of one hidden layer: Gram-only, in batched rounds, `O(n³)` time, `O(n²)` memory.

The exact greedy (`jaxlump._methods.greedy`) keeps each candidate merge's true merged activation on all `N` rows and
refreshes a merged neuron's pairs against every neuron, `O(N n⁴)` in all. Here every operation is a *linear
constraint* on the next layer's damped least-squares refit `β` (`m × n`, one column per original neuron), as in
structured OBS: removing slot `a` is `β_a = 0`, merging slots `a` and `b` is `β_a = β_b` (the members of a merged block
share one column). With `K` the inverse damped Gram, a constraint `c` adds exactly `‖β c‖² / cᵀKc` to the refit error
and moves `K ← K − K c cᵀK / cᵀKc`, `β ← β − β c cᵀK / cᵀKc` — ZipLM's downdate, for removals and merges alike, from
the Gram `F_cᵀF_c` alone (the `N` rows enter only through `jaxlump._criteria.gram`'s streamed statistics).

A constraint treats the merged neuron's activation as its members' mean activation `ā`; the true one is `σ(z̄)` of
their mean pre-activation. A merge's cost therefore adds the first-order error of that replacement,
`‖s β_merged‖² ‖σ(z̄) − ā‖²` (`s`: the block's size), estimated on the sketch rows and scaled to `N`, less what the two
blocks already carried. Merges are considered between each neuron's block and its `candidates` nearest neighbours in
pre-activation; pairs whose pre-activations coincide on every row are merged first, at cost 0 (ε = 0 stays exact).

Each round takes the `⌈fraction · width⌉` cheapest operations on distinct slots under the current refit and applies
them together: `K ← K − K Cᵀ (C K Cᵀ)⁻¹ C K` (one GEMM), with each operation's exact sequential cost from the
Cholesky factor of `C K Cᵀ` (in the order of their costs). One operation per round is the greedy on these costs;
with merges off it is structured OBS's greedy elimination exactly.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from .._criteria.gram import LayerStatistics, layer_statistics
from .._criteria.merge_cost import centred, unit_activation
from .._errors import spans_processes
from .._reconstruction.linalg import cho_solve, cholesky, inv
from .greedy import AbstractPath

_HIGHEST = jax.lax.Precision.HIGHEST
_ROUNDING_ULPS = 64
_PAIR_BUDGET = 2**23  # elements of one chunk of the pairs' (chunk, m) or (chunk, S) gathers


class Rounds(AbstractPath):
    """`merge_or_remove`'s scalable path (strategy): Gram-only costs, batched rounds (see `jaxlump._methods.rounds`).

    **Arguments:**

    - `fraction`: operations per round, as a fraction of the layer's current width (default 1/64; at least one).
    - `candidates`: merge partners per neuron, its nearest in pre-activation (default 16).
    - `sketch_rows`: calibration rows on which a merge's nonlinear error is estimated (default 2048; all rows when
      there are fewer).
    - `batch_rows`: rows per batch of the streamed statistics (default 2048).
    - `devices`: the devices to use (default: the default device only). With several, every batch of calibration rows
      is split over them (each sums its rows' moments, `psum` adds them: data parallel), and the hidden layers'
      paths run on them concurrently, layer l on `devices[l % len(devices)]` (site parallel). The result equals one
      device's up to the order of the floating-point sums.

    Time `O(N n² + n³ + n k (m + S))` per layer of width n (N calibration rows, m next-layer neurons, k candidates,
    S sketch rows), memory `O(n² + n (m + S))`; `merge_or_remove` takes it for layers wider than 512 unless told.
    On small trained networks the exact greedy (`jaxlump.Greedy()`) finds better merges (it refits with each merged
    neuron's true activation): see `benchmarks/results/perf_scale.json`.

    ```python
    import equinox as eqx, jax.numpy as jnp, jax.random as jr, jaxlump
    mlp = eqx.nn.MLP(3, 2, 64, 1, activation=jnp.tanh, key=jr.key(0))
    x = jr.normal(jr.key(1), (512, 3))
    small, info = jaxlump.baselines.compress_to(mlp, "merge_or_remove", (16,), x, path=jaxlump.Rounds())
    assert info.widths_after.tolist() == [3, 16, 2]
    ```
    """

    fraction: float = eqx.field(static=True, default=1 / 64)
    candidates: int = eqx.field(static=True, default=16)
    sketch_rows: int = eqx.field(static=True, default=2048)
    batch_rows: int = eqx.field(static=True, default=2048)
    devices: tuple | None = eqx.field(static=True, default=None, converter=lambda d: None if d is None else tuple(d))

    def __check_init__(self):
        if self.devices is not None and (not self.devices or not all(isinstance(d, jax.Device) for d in self.devices)):
            raise TypeError(
                f"`Rounds.devices` must be a non-empty sequence of jax devices or None; received {self.devices!r}."
            )
        if not (isinstance(self.fraction, (float, int)) and not isinstance(self.fraction, bool)) or not (
            0 < self.fraction <= 1
        ):
            raise ValueError(f"`Rounds.fraction` must be a number in (0, 1]; received {self.fraction!r}.")
        for name in ("candidates", "sketch_rows", "batch_rows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"`Rounds.{name}` must be an integer >= 1; received {value!r}.")

    def paths(self, chain, x, layers, *, merge, damping, candidates, steps):
        """The paths in float64 up to width 8192; wider layers in float32 (the inverse Gram of a
        16384-wide layer in float64 and its factorisation's workspace would not fit 8 GB)."""
        del candidates  # the greedy path's option; the rounds have their own
        if max(chain.widths[l + 1] for l in layers) > 8192:
            chain, x = jax.tree.map(lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a) else a, (chain, x))
        devices = self.devices or (None,)
        mesh = Mesh(np.asarray(devices), ("rows",)) if len(devices) > 1 else None
        stats = layer_statistics(
            chain, x, sketch_size=self.sketch_rows, candidates=self.candidates, batch_rows=self.batch_rows, mesh=mesh
        )
        # The paths are solved by every process on its own devices (the statistics are the same everywhere).
        stats = jax.tree.map(lambda a: a.addressable_data(0) if spans_processes(a) else a, stats)
        devices = [d for d in devices if d is None or d.process_index == jax.process_index()]
        started = [  # dispatched first, so that the layers' paths run concurrently on their devices
            _start(
                stats[l],
                chain.weights[l + 1],
                chain.activations[l],
                gated=chain.gated[l],
                centre=chain.use_bias[l + 1],
                damping=damping,
                merge=merge,
                strategy=self,
                steps=steps[l],
                device=devices[i % len(devices)],
            )
            for i, l in enumerate(layers)
        ]
        return [_collect(*s) for s in started]


class OpsPath(eqx.Module):
    """A compression path as its operations: step t merged `gone[t]` into `keep[t]` (`merged[t]`) or removed slot
    `keep[t]`; `cumulative[t]` is the next layer's relative refit error after step t (as `greedy.Path`'s)."""

    keep: np.ndarray
    gone: np.ndarray
    merged: np.ndarray
    cumulative: np.ndarray
    width: int = eqx.field(static=True)  # the layer's original width (the path may stop before one neuron)

    def labels_after(self, steps: int) -> np.ndarray:
        """Each original neuron's slot after `steps` operations (`-1`: removed)."""
        n = self.width
        parent = np.arange(n)
        removed = np.zeros(n, bool)
        for keep, gone, merged in zip(self.keep[:steps], self.gone[:steps], self.merged[:steps]):
            if merged:
                parent[gone] = keep
            else:
                removed[keep] = True
        root = parent.copy()
        while True:  # follow merges to their final slot (each pass halves every chain)
            deeper = root[root]
            if np.array_equal(deeper, root):
                break
            root = deeper
        return np.where(removed[root], -1, root)


def duplicate_merges(stats: LayerStatistics, gated: bool, dtype) -> tuple[np.ndarray, np.ndarray]:
    """The merges of neurons whose pre-activations coincide on every calibration row (RMS difference within 64 ulps
    of the layer's RMS pre-activation), as `(keep, gone)` in order: each class of duplicates (connected through the
    candidate lists) joins its lowest index."""
    gap, partners = np.asarray(stats.gap), np.asarray(stats.partners)
    n = partners.shape[0]
    rows = float(stats.count) * (2 if gated else 1)
    z_rms = np.sqrt(float(stats.pre_square) / (rows * n))
    same = np.sqrt(gap / rows) <= _ROUNDING_ULPS * np.finfo(dtype).eps * z_rms
    root = np.arange(n)

    def find(i):
        while root[i] != i:
            root[i] = root[root[i]]
            i = root[i]
        return i

    for i, r in zip(*np.nonzero(same)):
        a, b = find(i), find(partners[i, r])
        if a != b:
            root[max(a, b)] = min(a, b)
    final = np.asarray([find(i) for i in range(n)], np.int64)
    gone = np.nonzero(final != np.arange(n))[0]
    return final[gone], gone


class _Carry(eqx.Module):
    t: jax.Array  # operations done
    inverse: jax.Array  # K, (n, n)
    beta: jax.Array  # the refit, one column per original neuron, (m, n)
    rep: jax.Array  # each original neuron's slot (-1: removed); slot a is alive iff rep[a] == a
    sizes: jax.Array
    pre: jax.Array  # each slot's mean pre-activation on the sketch, slot-major (n, S')
    mean_act: jax.Array  # each slot's members' mean activation on the sketch, (n, S)
    total: jax.Array  # the squared error added so far
    keep: jax.Array
    gone: jax.Array
    merged: jax.Array
    cumulative: jax.Array


class _Ops(eqx.Module):
    """At most `width` operations of one round, in order: slots `a` (kept or removed) and `b` (merged into `a`)."""

    a: jax.Array
    b: jax.Array
    merge: jax.Array
    valid: jax.Array
    extra: jax.Array  # a merge's estimated nonlinear error (added to its exact linear cost)


def _apply(carry: _Carry, ops: _Ops, count, scale) -> _Carry:
    """Apply the round's operations as one block of constraints `C` (rows `e_a` or `e_a − e_b`): `K ← K − K Cᵀ (C K
    Cᵀ)⁻¹ C K`, `β ← β − β Cᵀ (C K Cᵀ)⁻¹ C K`; each operation's cost is its exact sequential one (the rows of
    `L⁻¹ C βᵀ`, `L Lᵀ = C K Cᵀ`) plus its `extra`. Then the slots, sizes and sketches follow one operation at a
    time."""
    k, beta = carry.inverse, carry.beta
    valid, merge = ops.valid.astype(k.dtype), (ops.merge & ops.valid).astype(k.dtype)
    b = jnp.maximum(ops.b, 0)
    kc = (k[:, ops.a] - merge[None] * k[:, b]) * valid[None]  # K Cᵀ, (n, B)
    system = (kc[ops.a] - merge[:, None] * kc[b]) * valid[:, None] + jnp.diag(1.0 - valid)
    v = (beta[:, ops.a] - merge[None] * beta[:, b]) * valid[None]  # β Cᵀ, (m, B)
    factor = cholesky(system)
    y = jax.scipy.linalg.solve_triangular(factor, v.T, lower=True)
    step_costs = jnp.sum(y**2, axis=1) + ops.extra
    update = cho_solve(factor, kc.T)  # (C K Cᵀ)⁻¹ C K, (B, n)
    k = k - jnp.einsum("nb,bl->nl", kc, update, precision=_HIGHEST)
    beta = beta - jnp.einsum("mb,bl->ml", v, update, precision=_HIGHEST)

    def one(i, c: _Carry) -> _Carry:
        a, b, is_merge = ops.a[i], jnp.maximum(ops.b[i], 0), ops.merge[i]
        alpha = c.sizes[a] / (c.sizes[a] + c.sizes[b])
        pre = jnp.where(is_merge, alpha * c.pre[a] + (1 - alpha) * c.pre[b], c.pre[a])
        mean_act = jnp.where(is_merge, alpha * c.mean_act[a] + (1 - alpha) * c.mean_act[b], c.mean_act[a])
        rep = jnp.where(is_merge, jnp.where(c.rep == b, a, c.rep), jnp.where(c.rep == a, -1, c.rep))
        sizes = jnp.where(is_merge, c.sizes.at[a].add(c.sizes[b]).at[b].set(0.0), c.sizes.at[a].set(0.0))
        total = c.total + step_costs[i]
        return _Carry(
            c.t + 1,
            c.inverse,
            c.beta,
            rep,
            sizes,
            c.pre.at[a].set(pre),
            c.mean_act.at[a].set(mean_act),
            total,
            c.keep.at[c.t].set(a),
            c.gone.at[c.t].set(jnp.where(is_merge, b, -1)),
            c.merged.at[c.t].set(is_merge),
            c.cumulative.at[c.t].set(jnp.sqrt(total / count) / scale),
        )

    carry = eqx.tree_at(lambda c: (c.inverse, c.beta), carry, (k, beta))
    return jax.lax.fori_loop(0, jnp.sum(ops.valid), one, carry)  # the valid operations come first


def _round_ops(carry: _Carry, partners, count, target, width: int, activation: str, gated: bool, centre: bool):
    """The round's operations: the `target` cheapest of removing a live slot and merging a candidate pair, on
    distinct slots, in order of cost."""
    k, beta, rep, sizes = carry.inverse, carry.beta, carry.rep, carry.sizes
    n = k.shape[0]
    dtype = k.dtype
    slots = jnp.arange(n, dtype=jnp.int32)
    alive = rep == slots
    kd = jnp.diag(k)
    beta_norm = jnp.sum(beta**2, axis=0)
    removal = jnp.where(alive, beta_norm / jnp.where(alive, kd, 1.0), jnp.inf)
    if partners is None:
        costs, a_all, b_all, merge_all, extra_all = removal, slots, jnp.full(n, -1, jnp.int32), jnp.zeros(n, bool), 0.0
    else:
        a = rep[jnp.repeat(slots, partners.shape[1])]
        b = rep[partners.ravel()]
        ok = (a >= 0) & (b >= 0) & (a != b)
        a, b = jnp.where(ok, a, 0), jnp.where(ok, b, 0)
        d = kd[a] + kd[b] - 2 * k[a, b]
        d = jnp.where(d > 0, d, 1.0)
        shift = (kd[a] - k[a, b]) / d

        # The pairs are ranked by their linear cost on a random projection of the refit's columns (Johnson–
        # Lindenstrauss: gathering every pair's full m-vector costs more than the whole round); the shortlist's costs
        # are then exact, and their nonlinear parts (never negative) are added.
        m, projection = beta.shape[0], 64
        rows = (jax.random.normal(jax.random.key(0), (projection, m), dtype) @ beta).T if m > projection else beta.T
        rough = _pairwise(lambda a, b: jnp.sum((rows[a] - rows[b]) ** 2, axis=1), a.shape[0], rows.shape[1], a, b)
        _, short = jax.lax.top_k(-jnp.where(ok, rough / d, jnp.inf), min(a.shape[0], 4 * width))
        sa, sb = a[short], b[short]
        linear = jnp.where(ok[short], jnp.sum((beta[:, sa] - beta[:, sb]) ** 2, axis=0) / d[short], jnp.inf)
        alpha = sizes[sa] / jnp.maximum(sizes[sa] + sizes[sb], 1.0)
        merged = (sizes[sa] + sizes[sb]) * (beta[:, sa] - (beta[:, sa] - beta[:, sb]) * shift[short])
        pre = alpha[:, None] * carry.pre[sa] + (1 - alpha[:, None]) * carry.pre[sb]
        act = alpha[:, None] * carry.mean_act[sa] + (1 - alpha[:, None]) * carry.mean_act[sb]
        error = jnp.sum(centred(unit_activation(activation, gated, pre, -1) - act, centre, -1) ** 2, axis=1)
        nonlinear = count / carry.mean_act.shape[1] * jnp.sum(merged**2, axis=0) * error
        # (√linear + √nonlinear)² − linear: the triangle inequality's bound
        short_extra = jnp.where(jnp.isfinite(linear), 2 * jnp.sqrt(linear * nonlinear) + nonlinear, 0.0)
        extra = jnp.zeros(a.shape[0], dtype).at[short].set(short_extra)
        merge_costs = jnp.full(a.shape[0], jnp.inf, dtype).at[short].set(linear + short_extra)
        keep_a = removal[a] >= removal[b]
        costs = jnp.concatenate([removal, merge_costs])
        a_all = jnp.concatenate([slots, jnp.where(keep_a, a, b)])
        b_all = jnp.concatenate([jnp.full(n, -1, jnp.int32), jnp.where(keep_a, b, a)])
        merge_all = jnp.concatenate([jnp.zeros(n, bool), jnp.ones(a.shape[0], bool)])
        extra_all = jnp.concatenate([jnp.zeros(n, dtype), extra])
    extra_all = jnp.broadcast_to(jnp.asarray(extra_all, dtype), costs.shape)
    n_look = min(costs.shape[0], 8 * width)
    _, order = jax.lax.top_k(-costs, n_look)

    def consider(state, index):
        used, taken, ops = state
        a, b, is_merge = a_all[index], b_all[index], merge_all[index]
        free = ~used[a] & (~is_merge | ~used[jnp.maximum(b, 0)])
        accept = jnp.isfinite(costs[index]) & free & (taken < target)
        marked = used.at[a].set(True)
        marked = jnp.where(is_merge, marked.at[jnp.maximum(b, 0)].set(True), marked)
        used = jnp.where(accept, marked, used)
        slot = jnp.where(accept, taken, width)  # out of range: dropped
        ops = _Ops(
            ops.a.at[slot].set(a, mode="drop"),
            ops.b.at[slot].set(b, mode="drop"),
            ops.merge.at[slot].set(is_merge, mode="drop"),
            ops.valid.at[slot].set(True, mode="drop"),
            ops.extra.at[slot].set(extra_all[index], mode="drop"),
        )
        return (used, taken + accept, ops), None

    empty = _Ops(
        jnp.zeros(width, jnp.int32),
        jnp.full(width, -1, jnp.int32),
        jnp.zeros(width, bool),
        jnp.zeros(width, bool),
        jnp.zeros(width, dtype),
    )
    (_, taken, ops), _ = jax.lax.scan(consider, (jnp.zeros(n, bool), jnp.zeros((), jnp.int32), empty), order)
    return ops, taken


def _pairwise(fn, n_items: int, width: int, *arrays):
    """`fn` over the leading axis of `arrays` in chunks of at most `_PAIR_BUDGET / width` items (`fn` maps a chunk of
    `width` values per item to `(chunk,)`)."""
    size = max(1, min(n_items, _PAIR_BUDGET // max(width, 1)))
    n_chunks = -(-n_items // size)
    padded = [jnp.pad(x, (0, n_chunks * size - n_items)) for x in arrays]
    out = jax.lax.map(lambda xs: fn(*xs), tuple(x.reshape(n_chunks, size) for x in padded))
    return out.reshape(n_chunks * size, *out.shape[2:])[:n_items]


@eqx.filter_jit
def _rounds(
    stats: LayerStatistics, w, forced, n_forced, damping, *, activation, gated, centre, merge, fraction, width, steps
):
    n = stats.gram.shape[0]
    dtype = w.dtype
    level = jnp.mean(jnp.diag(stats.gram))
    lam = damping * jnp.where(level > 0, level, 1.0)
    inverse = inv(stats.gram + lam * jnp.eye(n, dtype=dtype))
    count = stats.count
    scale = jnp.mean(jnp.sqrt(jnp.diag(stats.gram) / count) * jnp.linalg.norm(w, axis=0))
    scale = jnp.maximum(scale, jnp.finfo(dtype).tiny)
    length = steps + width
    carry = _Carry(
        jnp.zeros((), jnp.int32),
        (inverse + inverse.T) / 2,
        w,
        jnp.arange(n, dtype=jnp.int32),
        jnp.ones(n, dtype),
        stats.sketch.T,
        unit_activation(activation, gated, stats.sketch.T, -1),
        jnp.zeros((), dtype),
        jnp.zeros(length, jnp.int32),
        jnp.full(length, -1, jnp.int32),
        jnp.zeros(length, bool),
        jnp.full(length, jnp.nan, dtype),
    )

    def forced_round(i, carry):
        index = i * width + jnp.arange(width)
        valid = index < n_forced
        index = jnp.minimum(index, n - 1)
        ops = _Ops(forced[0, index], forced[1, index], valid, valid, jnp.zeros(width, dtype))
        carry = _apply(carry, ops, count, scale)
        # duplicates cost nothing: their pre-activations coincide, so the merged neuron is exactly theirs
        return eqx.tree_at(
            lambda c: (c.total, c.cumulative),
            carry,
            (jnp.zeros((), dtype), jnp.where(jnp.arange(length) < jnp.minimum(n_forced, steps), 0.0, carry.cumulative)),
        )

    n_forced = jnp.minimum(n_forced, steps)
    carry = jax.lax.fori_loop(0, (n_forced + width - 1) // width, forced_round, carry)
    partners = stats.partners if merge else None

    def cond(state):
        carry, progress = state
        return (carry.t < steps) & progress

    def body(state):
        carry, _ = state
        live = n - carry.t
        target = jnp.minimum(jnp.clip(jnp.ceil(fraction * live).astype(jnp.int32), 1, width), steps - carry.t)
        ops, taken = _round_ops(carry, partners, count, target, width, activation, gated, centre)
        return _apply(carry, ops, count, scale), taken > 0

    carry, _ = jax.lax.while_loop(cond, body, (carry, jnp.asarray(True)))
    return carry.keep, carry.gone, carry.merged, carry.cumulative


def _start(stats, w, activation, *, gated, centre, damping, merge, strategy, steps, device):
    n = stats.gram.shape[0]
    steps = n - 1 if steps is None else int(min(max(steps, 0), n - 1))
    keep0, gone0 = duplicate_merges(stats, gated, stats.gram.dtype) if merge else (np.zeros(0, int), np.zeros(0, int))
    forced = np.full((2, n), -1, np.int32)
    forced[0, : len(keep0)], forced[1, : len(gone0)] = keep0, gone0
    operands = (stats, jnp.asarray(w, stats.gram.dtype), jnp.asarray(forced), jnp.asarray(len(keep0), jnp.int32))
    if device is not None:
        operands = jax.device_put(operands, device)
    out = _rounds(
        *operands,
        damping,
        activation=activation,
        gated=gated,
        centre=centre,
        merge=merge,
        fraction=strategy.fraction,
        width=max(1, int(np.ceil(strategy.fraction * n))),
        steps=steps,
    )
    return out, steps, n


def _collect(out, steps: int, n: int) -> OpsPath:
    return OpsPath(*(np.asarray(a)[:steps] for a in out), n)


def rounds_path(
    stats: LayerStatistics,
    w: jax.Array,
    activation: str,
    *,
    gated: bool,
    centre: bool,
    damping: float,
    merge: bool,
    strategy: Rounds,
    steps: int | None = None,
) -> OpsPath:
    """The scalable path of one hidden layer from its statistics and the next layer's weights `w` (`m × n`), for
    `steps` operations (default `n − 1`: down to one neuron)."""
    options = dict(gated=gated, centre=centre, damping=damping, merge=merge, strategy=strategy, steps=steps)
    return _collect(*_start(stats, w, activation, **options, device=None))
