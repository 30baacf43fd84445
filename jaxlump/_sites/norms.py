"""Per-channel normalisations between a convolution and its activation, folded into the site: an open registry.

A BatchNorm in inference mode computes `s_c · u_c + t_c` on each channel `c` of its input `u` (`s = γ / √(var + ε)`,
`t = β − mean · s`), so a site *convolution → BatchNorm → activation → reader* has the pre-activations
`s_c · (W_c * x + b_c) + t_c`: the channel site's path is computed on these. Removing channels slices the
BatchNorm's statistics and parameters with the convolution's rows. A merged group `K` (mean-in weights `m`) keeps the
statistics of its member `f` with the largest `|s|`, and the convolution's rows and bias
`Σ_c m_c (s_c / s_f) (W_c, b_c)`, the BatchNorm's shift `Σ_c m_c t_c`: exactly the mean of the members'
normalised pre-activations. A channel left alone keeps its own values unchanged, so ε = 0 stays exact. The
BatchNorm stays a BatchNorm of the new width: the model can be trained on (its running statistics update as before).
"""

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class NormType:
    """One kind of per-channel normalisation that a channel site may have between its convolution and activation.

    - `name`: shown in listings and errors (`"flax.nnx.BatchNorm"`).
    - `matches(norm)`: whether `norm` is of this type.
    - `affine(norm)`: `(s, t)`, each `(channels,)`: the norm computes `s · u + t` on each channel of its input `u`.
    - `rebuild(norm, keep, offset)`: a norm of `norm`'s class and settings with the channels `keep` (indices), each
      computing its old affine map plus `offset` (`(len(keep),)`) added to its shift.
    - `why_not(norm)`: why it cannot be folded (`None` when it can): e.g. a BatchNorm in training mode.

    Equinox's own BatchNorm keeps its statistics in an `eqx.nn.State`, which a model called as `model(x)` has not;
    a per-channel affine module of your own is registered like this:

    ```python
    import equinox as eqx, jax, jax.numpy as jnp, jax.random as jr, jaxlump

    class ChannelAffine(eqx.Module):  # s · u + t on each channel of a map (C, H, W)
        s: jax.Array
        t: jax.Array

        def __call__(self, u):
            return self.s[:, None, None] * u + self.t[:, None, None]

    jaxlump.register_norm_type(
        jaxlump.NormType(
            "ChannelAffine",
            lambda m: isinstance(m, ChannelAffine),
            lambda m: (m.s, m.t),
            lambda m, keep, offset: ChannelAffine(m.s[keep], m.t[keep] + offset),
        )
    )

    class CNN(eqx.Module):
        conv1: eqx.nn.Conv2d
        affine: ChannelAffine
        conv2: eqx.nn.Conv2d

        def __call__(self, x):  # one image (1, 6, 6)
            return self.conv2(jax.nn.relu(self.affine(self.conv1(x))))

    k1, k2 = jr.split(jr.key(0))
    affine = ChannelAffine(jnp.array([2.0, 1.0, 0.5, 3.0]), jnp.zeros(4))
    cnn = CNN(eqx.nn.Conv2d(1, 4, 3, key=k1), affine, eqx.nn.Conv2d(4, 2, 3, key=k2))
    images = jr.normal(jr.key(1), (16, 1, 6, 6))
    (site,) = jaxlump.sites(cnn, images).sites
    assert site.norm == "affine" and site.width == 4
    small, info = jaxlump.baselines.compress_to(cnn, "obs_prune", {site.path: 3}, images)
    assert small.affine.s.shape == (3,) == small.conv1.weight.shape[:1]
    ```
    """

    name: str
    matches: Callable
    affine: Callable
    rebuild: Callable
    why_not: Callable = lambda norm: None


NORM_TYPES: list[NormType] = []


def register_norm_type(norm_type: NormType) -> NormType:
    """Add a normalisation type that channel sites fold (checked before the built-in ones); returns it.

    **Raises:** `TypeError` for anything but a `jaxlump.NormType`.
    """
    if not isinstance(norm_type, NormType):
        raise TypeError(f"`norm_type` must be a jaxlump.NormType; received {type(norm_type).__name__}.")
    NORM_TYPES.insert(0, norm_type)
    return norm_type


def norm_type_of(node) -> NormType | None:
    return next((t for t in NORM_TYPES if t.matches(node)), None)


def is_norm(node) -> bool:
    return norm_type_of(node) is not None


# Flax NNX (imported only when an NNX model is met) -------------------------------------------------------------


def _is_nnx_batch_norm(node) -> bool:
    cls = type(node)
    return cls.__module__.startswith("flax.nnx") and cls.__name__ == "BatchNorm"


def _nnx_affine(norm):
    var, mean = norm.var[...], norm.mean[...]
    scale = norm.scale[...] if norm.use_scale else jnp.ones_like(var)
    s = scale * jnp.reciprocal(jnp.sqrt(var + norm.epsilon))
    shift = norm.bias[...] if norm.use_bias else jnp.zeros_like(var)
    return s, shift - mean * s


def _nnx_rebuild(norm, keep, offset):
    from flax import nnx

    new = nnx.clone(norm)
    new.num_features = len(keep)
    new.mean = nnx.BatchStat(norm.mean[...][keep])
    new.var = nnx.BatchStat(norm.var[...][keep])
    if norm.use_scale:
        new.scale = nnx.Param(norm.scale[...][keep])
    bias = (norm.bias[...][keep] if norm.use_bias else 0.0) + offset
    if norm.use_bias or bool(jnp.any(offset != 0)):
        new.use_bias = True
        new.bias = nnx.Param(jnp.asarray(bias, norm.var[...].dtype))
    return new


def _nnx_why_not(norm) -> str | None:
    if not norm.use_running_average:
        return (
            "its BatchNorm is in training mode (use_running_average=False), so its output depends on the batch; "
            "call `model.eval()` first"
        )
    if norm.axis != -1:
        return f"its BatchNorm normalises axis {norm.axis!r}, not the last (channel) axis, -1"
    return None


register_norm_type(NormType("flax.nnx.BatchNorm", _is_nnx_batch_norm, _nnx_affine, _nnx_rebuild, _nnx_why_not))
