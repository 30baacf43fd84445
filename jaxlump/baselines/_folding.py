"""Neuron-merging peers: model folding (k-means), ZipIt!-style correlation matching, REPAIR, Neuron Merging.

All merges use the operator lumping uses (reference §1.4): a block's incoming weights and bias are its members'
mean, its outgoing weights their sum (`W_in' = (CCᵀ)⁻¹C W_in`, `W_out' = W_out Cᵀ`, model folding's code). They
differ in the partition: k-means of the neurons' weight vectors (data-free), greedy pairing by activation
correlation (data-aware), or Neuron Merging's nearest kept neuron by cosine with a norm-ratio scale.

Their inputs are first divided by a power of two (exact), so squared distances, correlations and norms of large but
finite weights or activations cannot overflow and the choices are those of the unscaled arithmetic bit for bit.
`info.result` reports NaN/inf activations (`RESULTS.selection_nonfinite`, ZipIt!), a merged model that overflowed
(`RESULTS.nonfinite_result`: the sum of outgoing columns, REPAIR's rescaling) and a failed reconstruction.
"""

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Float

from .._errors import host_rows
from .._methods.base import Fractions, layer_knob
from .._methods.registry import NEURON_SPARSITY, Compressor, register_compressor
from .._model.activations import ACTIVATIONS
from .._model.network import DenseChain, refuse_gated
from .._reconstruction.reconstruct import DEFAULT_RIDGE
from .._results.info import CompressionInfo
from .._sites.compress import over_sites
from ._masks import check_flag
from ._obs import finish, hidden_activations, kept_count, masked_quotient, prepare, pruning_labels, selection_status


def rescaled(a: np.ndarray, axis: int | None = None) -> np.ndarray:
    """`a` divided by the power of two that brings its largest magnitude (per slice along `axis`, or overall) into
    `[0.5, 1)`: exact, so scale-invariant quantities (clusterings, correlations, norm ratios) are unchanged."""
    a = np.asarray(a, np.float64)
    _, exponent = np.frexp(np.max(np.abs(a), axis=axis, keepdims=True, initial=0.0))
    return np.ldexp(a, -exponent)


def merge_labels(chain: DenseChain, sparsity: Fractions, clusters) -> list[np.ndarray]:
    """Per hidden layer `l`, the representative labels of `clusters(l, k)` (a cluster id per neuron, `k` clusters
    with `k = kept_count(n, s_l)`, `s_l` the layer's sparsity), or the identity where the layer keeps all its
    neurons."""
    labels = []
    for l in range(1, chain.n_layers):
        n, k = chain.widths[l], kept_count(chain.widths[l], layer_knob(sparsity, l - 1))
        labels.append(np.arange(n) if k == n else representative_labels(clusters(l, k)))
    return labels


def representative_labels(clusters: np.ndarray) -> np.ndarray:
    """Cluster ids → each neuron's block representative (the block's lowest index), the fixed-shape labels."""
    clusters = np.asarray(clusters)
    first = {c: int(np.flatnonzero(clusters == c)[0]) for c in np.unique(clusters)}
    return np.asarray([first[c] for c in clusters], int)


def kmeans(points: np.ndarray, k: int, seed: int, n_iter: int = 100) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding (NumPy); returns a cluster id per point. An emptied cluster is
    re-seeded at the point farthest from its centre."""
    points = rescaled(points)
    generator = np.random.default_rng(seed)
    centres = [points[generator.integers(len(points))]]
    d2 = ((points - centres[0]) ** 2).sum(-1)  # each point's squared distance to its nearest centre so far
    for _ in range(1, k):
        total = d2.sum()
        centres.append(points[generator.choice(len(points), p=d2 / total)] if total > 0 else points[len(centres)])
        d2 = np.minimum(d2, ((points - centres[-1]) ** 2).sum(-1))
    centres = np.asarray(centres)
    labels = np.full(len(points), -1)
    for _ in range(n_iter):
        d2 = ((points[:, None, :] - centres[None]) ** 2).sum(-1)
        new = np.argmin(d2, axis=1)
        for c in range(k):
            if not np.any(new == c):
                far = int(np.argmax(d2[np.arange(len(points)), new]))
                new[far] = c
        if np.array_equal(new, labels):
            break
        labels = new
        centres = np.asarray([points[labels == c].mean(axis=0) for c in range(k)])
    return labels


def folding_features(chain: DenseChain, l: int) -> np.ndarray:
    """Neuron `j` of hidden layer `l` as `[W^l[j, :], b^l[j], W^{l+1}[:, j]]` (model folding's feature vector)."""
    w, b, w_next = (np.asarray(a, np.float64) for a in (chain.weights[l - 1], chain.biases[l - 1], chain.weights[l]))
    return np.concatenate([w, b[:, None], w_next.T], axis=1)


def zipit_clusters(a: np.ndarray, k: int, alpha: float) -> np.ndarray:
    """Greedy matching by activation correlation until `k` blocks: repeatedly merge the most correlated pair of
    blocks; a merged block's correlations become `alpha · min` of its two parts' (ZipIt!'s `match_tensors_zipit`)."""
    a = rescaled(a, axis=0)
    a = a - a.mean(axis=0)
    norms = np.linalg.norm(a, axis=0)
    sims = np.where(np.outer(norms, norms) > 0, (a.T @ a) / np.maximum(np.outer(norms, norms), 1e-300), 0.0)
    n = sims.shape[0]
    np.fill_diagonal(sims, -np.inf)
    clusters = np.arange(n)
    for _ in range(n - k):
        u, v = np.unravel_index(int(np.argmax(sims)), sims.shape)
        u, v = min(u, v), max(u, v)
        merged = alpha * np.minimum(sims[u], sims[v])
        sims[u], sims[:, u] = merged, merged
        sims[v], sims[:, v] = -np.inf, -np.inf
        sims[u, u] = -np.inf
        clusters[clusters == v] = u
    return clusters


def repair(original: DenseChain, merged: DenseChain, x, labels) -> DenseChain:
    """REPAIR on the incoming side: layer by layer through the merged network, rescale each live neuron's row and
    bias so its pre-activation's mean and std on `x` equal the mean of its members' originals (Jordan et al. 2023)."""
    z_orig = [host_rows(z).astype(np.float64) for z in original.forward(x)[0][:-1]]
    weights = [np.array(w, np.float64) for w in merged.weights]
    biases = [np.array(b, np.float64) for b in merged.biases]
    a = host_rows(x).astype(np.float64)
    for l, block in enumerate(labels):
        block = np.asarray(block)
        z = a @ weights[l].T + biases[l]
        live = np.unique(block[block >= 0])
        mu_t = np.asarray([z_orig[l][:, block == r].mean() for r in live])
        sd_t = np.asarray([z_orig[l][:, block == r].std(axis=0).mean() for r in live])
        mu, sd = z[:, live].mean(axis=0), z[:, live].std(axis=0)
        scale = np.where(sd > 0, sd_t / np.where(sd > 0, sd, 1.0), 1.0)
        weights[l][live] *= scale[:, None]
        biases[l][live] = (biases[l][live] - mu) * scale + mu_t
        a = np.asarray(ACTIVATIONS[merged.activations[l]].fn(jnp.asarray(a @ weights[l].T + biases[l])))
    dtype = merged.weights[0].dtype
    return DenseChain(
        tuple(jnp.asarray(w, dtype) for w in weights),
        tuple(jnp.asarray(b, dtype) for b in biases),
        merged.activations,
        merged.use_bias,
    )


def _merge(method, knob, model, chain, x, labels, *, repair_on: bool, reconstruct: bool, ridge: float, **checks):
    masked = None
    if repair_on and not all(np.array_equal(p, np.arange(p.size)) for p in labels):
        masked = repair(chain, masked_quotient(chain, labels), x, labels)
    name = method + ("+repair" if repair_on else "")
    return finish(name, knob, model, chain, x, labels, reconstruct=reconstruct, ridge=ridge, masked=masked, **checks)


@over_sites
def fold(
    model: Any,
    x_calib: Float[ArrayLike, "batch in"] | None,
    sparsity: float | Sequence[float],
    *,
    seed: int = 0,
    repair: bool = False,
    reconstruct: bool = False,
    ridge: float = DEFAULT_RIDGE,
    throw: bool = True,
) -> tuple[Any, CompressionInfo]:
    """Model folding: k-means-cluster each hidden layer's neurons by their weights and merge every cluster.

    Neuron `j` is the vector `[W^l[j, :], b^l[j], W^{l+1}[:, j]]`; k-means (k-means++ seeding, `seed`) gives
    `k = n − int(n·s)` clusters, merged mean-in / sum-out. Data-free unless `repair` or `reconstruct` is asked for.

    **Arguments:**

    - `model`: an `eqx.nn.MLP`, `eqx.nn.Sequential`, `LumpedMLP` or NNX chain; not modified.
    - `x_calib`: calibration inputs `(batch, n_0)`; may be `None` unless `repair` or `reconstruct`.
    - `sparsity`: the fraction of each hidden layer's neurons merged away, in `[0, 1)`, or one per hidden layer.
    - `seed`: the k-means seed.
    - `repair`: REPAIR's moment correction on the incoming side (needs data; default `False`, as the data-free
      paper).
    - `reconstruct`: apply the shared least-squares reconstruction (default `False`).
    - `ridge`: the reconstruction's ridge.
    - `throw`: raise a `jaxlump.CompressionError` naming the failed stage (default): a merged model that overflowed,
      a failed reconstruction (module docs); `False` reports it in `info.result` instead.

    **Returns:** `(new_model, info)`, physically smaller; `info.partitions` maps each original neuron to its merged
    neuron's index.

    **Raises:** `ValueError` for a sparsity outside `[0, 1)`, or missing/bad `x_calib` when data are needed;
    `CompressionError` for a failed stage when `throw=True`.

    ```python
    import equinox as eqx, jax.numpy as jnp, jax.random as jr
    from jaxlump.baselines import fold

    mlp = eqx.nn.MLP(3, 2, 8, 2, activation=jnp.tanh, key=jr.key(0))
    small, info = fold(mlp, None, 0.5)
    assert info.widths_after.tolist() == [3, 4, 4, 2]
    ```

    Wang, Šikić, Thiele, Saukh, *Forget the Data and Fine-tuning! Just Fold the Network to Compress*, ICLR 2025.
    """
    chain, x, sparsity, _, ridge = prepare(
        model, x_calib, sparsity, 0.0, ridge, reconstruct, required=repair, why="for repair=True"
    )
    refuse_gated(chain, "model", "jaxlump.baselines.fold")
    check_flag(repair, "repair")
    check_flag(throw, "throw")
    labels = merge_labels(chain, sparsity, lambda l, k: kmeans(folding_features(chain, l), k, seed))
    options = dict(repair_on=repair, reconstruct=reconstruct, ridge=ridge, throw=throw)
    return _merge("fold", sparsity, model, chain, x, labels, **options)


@over_sites
def zipit_merge(
    model: Any,
    x_calib: Float[ArrayLike, "batch in"],
    sparsity: float | Sequence[float],
    *,
    alpha: float = 0.5,
    repair: bool = True,
    reconstruct: bool = False,
    ridge: float = DEFAULT_RIDGE,
    throw: bool = True,
) -> tuple[Any, CompressionInfo]:
    """Data-aware merging: greedy matching of each hidden layer's neurons by activation correlation (ZipIt!).

    The Pearson correlations of the layer's calibration activations are merged greedily, most correlated pair
    first, until `k = n − int(n·s)` blocks remain (module docs); blocks merge mean-in / sum-out, then REPAIR.

    **Arguments:** as `fold` (`throw` included; NaN/inf activations are a failure too), with `x_calib` required,
    `alpha` ZipIt!'s decay of a merged block's correlations (default 0.5) and `repair` defaulting to `True`.

    **Returns:** `(new_model, info)` as `fold`.

    **Raises:** as `fold`; `ValueError` for `alpha` outside `(0, 1]`.

    ```python
    import equinox as eqx, jax.numpy as jnp, jax.random as jr
    from jaxlump.baselines import zipit_merge

    mlp = eqx.nn.MLP(3, 2, 8, 2, activation=jnp.tanh, key=jr.key(0))
    small, info = zipit_merge(mlp, jr.normal(jr.key(1), (64, 3)), 0.5)
    assert info.widths_after.tolist() == [3, 4, 4, 2]
    ```

    Stoica, Bolya, Bjorner, Hearn, Hoffman, *ZipIt! Merging Models from Different Tasks without Training*, ICLR 2024;
    Jordan, Sedghi, Saukh, Entezari, Neyshabur, *REPAIR*, ICLR 2023.
    """
    chain, x, sparsity, _, ridge = prepare(model, x_calib, sparsity, 0.0, ridge, reconstruct)
    refuse_gated(chain, "model", "jaxlump.baselines.zipit_merge")
    check_flag(repair, "repair")
    check_flag(throw, "throw")
    alpha = float(alpha)
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"`alpha` must lie in (0, 1]; received {alpha!r}.")
    acts = hidden_activations(chain, x)
    labels = merge_labels(chain, sparsity, lambda l, k: zipit_clusters(acts[l - 1], k, alpha))
    options = dict(repair_on=repair, reconstruct=reconstruct, ridge=ridge, throw=throw)
    return _merge("zipit", sparsity, model, chain, x, labels, selection=selection_status(*acts), **options)


@over_sites
def neuron_merge(
    model: Any,
    x_calib: Float[ArrayLike, "batch in"] | None,
    sparsity: float | Sequence[float],
    *,
    threshold: float = 0.45,
    reconstruct: bool = False,
    ridge: float = DEFAULT_RIDGE,
    throw: bool = True,
) -> tuple[Any, CompressionInfo]:
    """Neuron Merging: prune by the incoming ℓ2 norm, and fold each pruned neuron into its most similar kept one.

    Layer by layer, keep the `k = n − int(n·s)` neurons with the largest `‖[W^l[j, :], b^l[j]]‖₂`; a removed neuron `i`
    whose best kept match `j* = argmax_j cos(u_i, u_j)` (`u = [W^l row, b^l]`) reaches `cos ≥ threshold` adds
    `(‖u_i‖/‖u_j*‖) W^{l+1}[:, i]` to `W^{l+1}[:, j*]` — exact for ReLU when `u_i` is a positive multiple of `u_j*`;
    otherwise it is simply removed. Data-free (Kim et al.'s `decompose.py`, the ℓ2 criterion).

    **Arguments:** `model`, `x_calib` (`None` unless `reconstruct`), `sparsity` as `fold`; `threshold`: the cosine
    similarity a merge needs, in `[0, 1]` (default 0.45, chosen here; the paper tunes it per network);
    `reconstruct`, `ridge`, `throw` as `fold` (the reconstruction targets each kept neuron's own pre-activation).

    **Returns:** `(new_model, info)`; `info.partitions` maps a merged neuron to the kept neuron it joined, a removed one
    to −1.

    **Raises:** `ValueError` for a sparsity outside `[0, 1)` or a threshold outside `[0, 1]`; `TypeError` for a
    threshold that is not a real number.

    ```python
    import equinox as eqx, jax, jax.random as jr
    from jaxlump.baselines import neuron_merge

    mlp = eqx.nn.MLP(3, 2, 8, 2, activation=jax.nn.relu, key=jr.key(0))
    small, info = neuron_merge(mlp, None, 0.5)
    assert info.widths_after.tolist() == [3, 4, 4, 2]
    ```

    Kim, Kim, Park, Jeon, *Neuron Merging: Compensating for Pruned Neurons*, NeurIPS 2020.
    """
    chain, x, sparsity, _, ridge = prepare(model, x_calib, sparsity, 0.0, ridge, reconstruct, required=False)
    refuse_gated(chain, "model", "jaxlump.baselines.neuron_merge")
    check_flag(throw, "throw")
    if isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, (int, float, np.integer, np.floating)):
        raise TypeError(f"`threshold` must be a real number in [0, 1]; received {threshold!r}.")
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:  # a negative cosine merges opposed neurons: the compensation has the wrong sign
        raise ValueError(
            f"`threshold` must lie in [0, 1] (the cosine similarity a merge needs; below 0 a neuron would be merged "
            f"into one pointing the opposite way, whose compensation has the wrong sign); received {threshold!r}."
        )
    weights = [np.array(w, np.float64) for w in chain.weights]
    biases = [np.array(b, np.float64) for b in chain.biases]
    prune, merge = [], []
    for l in range(1, chain.n_layers):
        u = rescaled(np.concatenate([weights[l - 1], biases[l - 1][:, None]], axis=1))
        n, k = u.shape[0], kept_count(u.shape[0], layer_knob(sparsity, l - 1))
        norms = np.linalg.norm(u, axis=1)
        keep = np.zeros(n, bool)
        keep[np.argsort(-norms, kind="stable")[:k]] = True
        target = pruning_labels(keep)
        kept = np.flatnonzero(keep)
        cos = (u @ u[kept].T) / np.maximum(np.outer(norms, norms[kept]), 1e-300)
        for i in np.flatnonzero(~keep):
            j = kept[int(np.argmax(cos[i]))]
            if cos[i].max() >= threshold and norms[j] > 0:
                weights[l][:, j] += norms[i] / norms[j] * weights[l][:, i]
                target[i] = j
        weights[l - 1][~keep], biases[l - 1][~keep], weights[l][:, ~keep] = 0.0, 0.0, 0.0
        prune.append(pruning_labels(keep))
        merge.append(target)
    dtype = chain.weights[0].dtype
    masked = DenseChain(
        tuple(jnp.asarray(w, dtype) for w in weights),
        tuple(jnp.asarray(b, dtype) for b in biases),
        chain.activations,
        chain.use_bias,
    )
    if all(p.all() for p in (np.asarray(q) >= 0 for q in prune)):
        masked = None
    options = dict(reconstruct=reconstruct, ridge=ridge, masked=masked, info_labels=merge, throw=throw)
    return finish("neuron_merge", sparsity, model, chain, x, prune, **options)


# fmt: off
register_compressor(Compressor("fold", fold, "sparsity", NEURON_SPARSITY.replace("removed", "merged away") + ", by k-means on their weights (model folding)", structured=True, needs_data=False, per_layer=True))  # noqa: E501
register_compressor(Compressor("zipit_merge", zipit_merge, "sparsity", NEURON_SPARSITY.replace("removed", "merged away") + ", by activation-correlation matching (ZipIt!) with REPAIR", structured=True, needs_data=True, per_layer=True))  # noqa: E501
register_compressor(Compressor("neuron_merge", neuron_merge, "sparsity", NEURON_SPARSITY + " by incoming norm, each folded into its most similar kept neuron (Neuron Merging)", structured=True, needs_data=False, per_layer=True))  # noqa: E501
# fmt: on
