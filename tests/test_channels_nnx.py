"""Channel sites of Flax NNX convolutions (channels last) and BatchNorm folded into them (`jaxlump._sites.norms`),
against independent truth: Flax's own convolution and BatchNorm, FLOPs counted by hand, NumPy least squares, the
normalised outputs computed by hand."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from flax import nnx

import jaxlump
from jaxlump._methods.channels import _consumer_reading, _folded
from jaxlump._sites.norms import norm_type_of
from jaxlump.baselines import compress_to, obs_prune


class CNN(nnx.Module):
    """As the Flax NNX tutorials write a CNN: channels last, BatchNorm after each convolution, `model.eval()`."""

    def __init__(self, rngs: nnx.Rngs, channels=(6, 5)):
        self.conv1 = nnx.Conv(1, channels[0], kernel_size=(3, 3), use_bias=False, rngs=rngs)
        self.bn1 = nnx.BatchNorm(channels[0], rngs=rngs)
        self.conv2 = nnx.Conv(channels[0], channels[1], kernel_size=(3, 3), strides=2, rngs=rngs)
        self.bn2 = nnx.BatchNorm(channels[1], rngs=rngs)
        self.linear = nnx.Linear(channels[1] * 3 * 3, 3, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn1(self.conv1(x)))
        x = nnx.relu(self.bn2(self.conv2(x)))
        return self.linear(x.reshape(x.shape[0], -1))


X = jr.normal(jr.key(1), (48, 6, 6, 1))


def _trained_statistics(model: CNN) -> CNN:
    """`model` with BatchNorm statistics and parameters far from their initial values, in inference mode."""
    for i, bn in enumerate((model.bn1, model.bn2)):
        keys = jr.split(jr.key(10 + i), 4)
        normal = lambda key: jr.normal(key, bn.mean.shape, bn.mean.dtype)  # noqa: E731, B023
        bn.mean[...] = 0.3 * normal(keys[0])
        bn.var[...] = jnp.exp(normal(keys[1]))
        bn.scale[...] = 1 + 0.5 * normal(keys[2])
        bn.bias[...] = 0.3 * normal(keys[3])
    model.eval()
    return model


MODEL = _trained_statistics(CNN(nnx.Rngs(0)))


def test_sites_are_listed_through_batchnorm_and_a_channels_last_flatten():
    listing = jaxlump.sites(MODEL, X)
    assert [(s.path, s.producers, s.norm, s.consumer, s.unit, s.width, s.group) for s in listing.sites] == [
        ("conv2", ("conv1",), "bn1", "conv2", "channel", 6, 9),
        ("linear", ("conv2",), "bn2", "linear", "channel", 5, 9),
    ]
    assert "linear: 5 channels, conv2 → bn2 → relu (flattened) → linear" in str(listing)


def test_a_batchnorm_in_training_mode_is_named_with_what_to_do():
    model = CNN(nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"bn1: its BatchNorm is in training mode .* call `model.eval\(\)` first"):
        jaxlump.sites(model, X)


class _Partial(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, 4, kernel_size=(3, 3), rngs=rngs)
        self.linear = nnx.Linear(6 * 4, 2, rngs=rngs)

    def __call__(self, x):  # (B, 6, 6, 1) → a Linear on (B, 6, 6·4): channels are not whole groups of its inputs
        return self.linear(nnx.relu(self.conv(x)).reshape(x.shape[0], 6, -1)).sum(axis=1)


def test_a_partial_flatten_is_left_out_with_the_reason():
    listing = jaxlump.sites(_Partial(nnx.Rngs(0)), X)
    assert listing.sites == ()
    assert "flattened only in part (its last 2 axes)" in listing.left_out[0].reason


@pytest.mark.parametrize(
    "settings",
    [
        dict(padding="SAME"),
        dict(padding="VALID", strides=2),
        dict(padding=2, kernel_dilation=2),
        dict(padding=((1, 0), (0, 2)), input_dilation=(2, 1)),
    ],
)
def test_a_consumers_reading_of_each_channel_adds_up_to_its_convolution(settings):
    conv = nnx.Conv(4, 3, kernel_size=(3, 2), rngs=nnx.Rngs(3), **settings)
    model = nnx.Sequential(nnx.Conv(1, 4, kernel_size=(1, 1), rngs=nnx.Rngs(4)), nnx.relu, conv)
    (site,) = jaxlump.sites(model, jnp.ones((2, 7, 7, 1))).sites
    features, weights = _consumer_reading(site, conv)
    a = jr.normal(jr.key(5), (2, 7, 7, 4))
    rows = sum(features(a[..., u]) @ weights[:, u].T for u in range(4))  # (B · positions, out)
    expected = conv(a) - conv.bias[...]  # (B, H', W', out)
    np.testing.assert_allclose(rows, np.asarray(expected).reshape(-1, 3), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "pool",
    [
        lambda a: nnx.max_pool(a, (2, 2), strides=(2, 2)),
        lambda a: nnx.avg_pool(a, (3, 3), strides=(1, 1), padding="SAME"),
        lambda a: nnx.min_pool(a, (2, 3), strides=(1, 2), padding="SAME"),
    ],
    ids=["max", "average-same", "min"],
)
def test_a_consumers_reading_after_pooling_adds_up_to_it(pool):
    conv = nnx.Conv(4, 3, kernel_size=(2, 2), padding="VALID", rngs=nnx.Rngs(3))
    model = nnx.Sequential(nnx.Conv(1, 4, kernel_size=(1, 1), rngs=nnx.Rngs(4)), nnx.relu, pool, conv)
    (site,) = jaxlump.sites(model, jnp.ones((2, 7, 7, 1))).sites
    assert site.pooling
    features, weights = _consumer_reading(site, conv)
    a = jr.normal(jr.key(5), (2, 7, 7, 4))
    rows = sum(features(a[..., u]) @ weights[:, u].T for u in range(4))
    expected = conv(pool(a)) - conv.bias[...]
    np.testing.assert_allclose(rows, np.asarray(expected).reshape(-1, 3), rtol=1e-5, atol=1e-5)


class _GlobalPool(nnx.Module):
    """A ResNet-style head: a global average pool (a mean over the spatial axes), then the classifier."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(3, 6, kernel_size=(3, 3), rngs=rngs)
        self.linear = nnx.Linear(6, 2, rngs=rngs)

    def __call__(self, x):
        return self.linear(jnp.mean(nnx.relu(self.conv(x)), axis=(1, 2)))


def test_a_global_pool_before_the_classifier_makes_each_channel_one_input():
    model = _GlobalPool(nnx.Rngs(0))
    (site,) = jaxlump.sites(model, jnp.ones((2, 5, 5, 3))).sites
    assert (site.width, site.group) == (6, 1)
    assert "6 channels, conv → relu → global avg pool (flattened) → linear" in site.describe()
    features, weights = _consumer_reading(site, model.linear, channels_last=True)
    a = jr.normal(jr.key(5), (2, 5, 5, 6))
    rows = sum(features(a[..., u]) @ weights[:, u].T for u in range(6))
    np.testing.assert_allclose(rows, model.linear(a.mean(axis=(1, 2))) - model.linear.bias[...], rtol=1e-5, atol=1e-6)


def test_cost_counts_each_convolution_at_every_output_position():
    cost = jaxlump.cost(MODEL, x=X)
    conv1 = 36 * (2 * 6 * 1 * 9)  # 'SAME': 6×6 positions, no bias
    conv2 = 9 * (2 * 5 * 6 * 9 + 5)  # stride 2: 3×3 positions
    linear = 2 * 45 * 3 + 3
    assert int(cost.flops) == conv1 + conv2 + linear  # per example


@pytest.mark.parametrize("seed", range(3))
def test_folded_merges_give_the_mean_of_the_normalised_members_and_keep_single_channels_exactly(seed):
    keys = jr.split(jr.key(seed), 8)
    bn = nnx.BatchNorm(5, use_running_average=True, rngs=nnx.Rngs(0))
    bn.mean[...], bn.var[...] = jr.normal(keys[0], (5,), jnp.float32), jnp.exp(jr.normal(keys[1], (5,), jnp.float32))
    bn.scale[...], bn.bias[...] = jr.normal(keys[2], (5,), jnp.float32), jr.normal(keys[3], (5,), jnp.float32)
    labels = np.array([0, 1, 0, 2, 1])  # groups {0, 2}, {1, 4}, {3}
    members = np.eye(3)[labels].T
    mean_in = jnp.asarray(members / members.sum(axis=1, keepdims=True), jnp.float32)
    rows, new = _folded(bn, norm_type_of(bn).affine(bn), members, mean_in)
    u = jr.normal(keys[4], (7, 5), jnp.float32)  # producer outputs; new channels read `u @ rows.T`
    normalised = (np.asarray(u) - np.asarray(bn.mean[...])) / np.sqrt(np.asarray(bn.var[...]) + bn.epsilon)
    normalised = normalised * np.asarray(bn.scale[...]) + np.asarray(bn.bias[...])
    expected = normalised @ np.asarray(mean_in).T  # the mean of each group's normalised outputs
    np.testing.assert_allclose(new(u @ rows.T), expected, rtol=1e-5, atol=1e-5)
    assert new.num_features == 3 and new.mean.shape == (3,)
    np.testing.assert_array_equal(rows[2], np.eye(5)[3])  # channel 3 alone: its row and statistics as they were
    for name in ("mean", "var", "scale", "bias"):
        assert getattr(new, name)[...][2] == getattr(bn, name)[...][3]
    assert norm_type_of(bn).name == "flax.nnx.BatchNorm"


@pytest.mark.user_errors
def test_registering_anything_but_a_norm_type_is_refused():
    with pytest.raises(TypeError, match="`norm_type` must be a jaxlump.NormType; received str"):
        jaxlump.register_norm_type("BatchNorm")


def _planted(model: CNN) -> CNN:
    """`model` with conv1 channel 6 a copy of channel 2 (filter and BatchNorm) and conv2 reading the pair with
    its columns split 0.3 / 0.7, so that the function is unchanged."""
    planted = CNN(nnx.Rngs(0), channels=(7, 5))
    kernel = model.conv1.kernel[...]
    planted.conv1.kernel[...] = jnp.concatenate([kernel, kernel[..., 2:3]], axis=-1)
    for name in ("mean", "var", "scale", "bias"):
        value = getattr(model.bn1, name)[...]
        getattr(planted.bn1, name)[...] = jnp.concatenate([value, value[2:3]])
    kernel = model.conv2.kernel[...]
    planted.conv2.kernel[...] = jnp.concatenate([kernel.at[:, :, 2].multiply(0.3), 0.7 * kernel[:, :, 2:3]], axis=2)
    planted.conv2.bias[...] = model.conv2.bias[...]
    for name in ("mean", "var", "scale", "bias"):
        getattr(planted.bn2, name)[...] = getattr(model.bn2, name)[...]
    planted.linear = nnx.clone(model.linear)
    planted.eval()
    return planted


@pytest.mark.integration  # the group path compiled and run on a CNN: the second test step
def test_at_eps_zero_only_the_planted_channel_goes_and_the_output_is_kept():
    planted = _planted(MODEL)
    np.testing.assert_allclose(planted(X), MODEL(X), rtol=1e-5, atol=1e-5)
    small, info = jaxlump.merge_or_remove(planted, X, 0.0)
    assert type(small) is CNN and info.widths_after == {"conv2": 6, "linear": 5}
    labels = np.asarray(info.segments[0].partitions[0])
    assert labels[6] == labels[2] and sorted(set(labels.tolist())) == list(range(6))
    assert small.bn1.num_features == small.bn1.mean.shape[0] == small.conv1.out_features == 6
    np.testing.assert_allclose(small(X), MODEL(X), rtol=1e-4, atol=1e-5)
    assert planted.conv1.out_features == 7 and planted.bn1.mean.shape == (7,), "input model was modified"
    small.train()
    small(X.astype(jnp.float32))  # still a model that trains on: its BatchNorms update their statistics


@pytest.mark.integration  # the group path compiled and run on a CNN: the second test step
@pytest.mark.parametrize("method", ["merge_or_remove", "obs_prune"])
def test_the_reported_deviation_is_the_compressed_models_own(method):
    """The last site alone (conv2 → bn2 → relu → flatten → linear): its refit error as the path computed it on the
    folded pre-activations equals the rebuilt model's output error, so the BatchNorm was rebuilt as planned."""
    small, info = compress_to(MODEL, method, {"linear": 3}, X, where=lambda m: m.linear)
    assert small.conv2.out_features == small.bn2.num_features == 3 and small.linear.in_features == 27
    deviation = np.abs(np.asarray(small(X)) - np.asarray(MODEL(X)))
    np.testing.assert_allclose(float(info.output_max_abs), deviation.max(), rtol=1e-4)
    assert float(info.output_max_abs) > 1e-3  # a real cut, not a no-op


@pytest.mark.integration  # the group path compiled and run on a CNN: the second test step
def test_the_channels_last_consumer_refit_is_the_least_squares_solution():
    small, info = obs_prune(MODEL, X, 0.4, ridge=0.0, where=lambda m: m.linear)
    kept = np.flatnonzero(np.asarray(info.segments[0].partitions[0]) >= 0)
    hidden = nnx.relu(small.bn2(small.conv2(nnx.relu(small.bn1(small.conv1(X))))))
    design = np.concatenate([np.asarray(hidden).reshape(48, -1), np.ones((48, 1))], axis=1).astype(np.float64)
    solution = np.linalg.lstsq(design, np.asarray(MODEL(X), np.float64), rcond=None)[0]
    assert len(kept) == small.conv2.out_features == 3
    np.testing.assert_allclose(small.linear.kernel[...], solution[:-1], rtol=2e-3, atol=2e-4)


@pytest.mark.integration  # the group path compiled and run on a CNN: the second test step
def test_a_compressed_cnn_with_batchnorm_is_saved_and_loaded(tmp_path):
    small, _ = compress_to(MODEL, "obs_prune", {"conv2": 4, "linear": 3}, X)
    jaxlump.save(tmp_path / "cnn.jaxlump", small)
    loaded = jaxlump.load(tmp_path / "cnn.jaxlump", like=MODEL)
    assert loaded.bn1.num_features == loaded.bn1.mean.shape[0] == 4 and loaded.bn2.var.shape == (3,)
    np.testing.assert_array_equal(loaded(X), small(X))
