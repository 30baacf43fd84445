"""Channel sites (`jaxlump._methods.channels`): convolutions found, read, cut and rebuilt, against independent truth —
Equinox's own convolution, FLOPs counted by hand, exact duplicates, NumPy least squares."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from _vision import SmallCNN

import jaxlump
from jaxlump._methods.channels import _consumer_reading
from jaxlump.baselines import compress_to, obs_prune, structured_prune

MODEL = SmallCNN(jr.key(0))
X = jr.normal(jr.key(1), (48, 1, 6, 6))


def test_convolution_sites_are_listed_with_their_groups():
    listing = jaxlump.sites(MODEL, X)
    assert [(s.path, s.producers, s.consumer, s.activation, s.unit, s.width, s.group) for s in listing.sites] == [
        ("conv2", ("conv1",), "conv2", "relu", "channel", 6, 9),
        ("head", ("conv2",), "head", "tanh", "channel", 5, 9),
    ]
    assert "head: 5 channels, conv2 → tanh (flattened) → head" in str(listing)


class _NoFlatten(eqx.Module):
    conv: eqx.nn.Conv1d
    grouped: eqx.nn.Conv1d
    last: eqx.nn.Conv1d
    head: eqx.nn.Linear

    def __call__(self, x):  # (2, 8)
        x = self.grouped(jax.nn.relu(self.conv(x)))
        return jax.vmap(self.head)(jax.nn.relu(self.last(x)))  # a Linear on the length axis: channels are not its units


def test_grouped_convolutions_and_a_linear_without_flatten_are_left_out_with_the_reason():
    keys = jr.split(jr.key(2), 4)
    model = _NoFlatten(
        eqx.nn.Conv1d(2, 4, 3, padding=1, key=keys[0]),
        eqx.nn.Conv1d(4, 4, 3, padding=1, groups=2, key=keys[1]),
        eqx.nn.Conv1d(4, 3, 3, padding=1, key=keys[2]),
        eqx.nn.Linear(8, 2, key=keys[3]),
    )
    listing = jaxlump.sites(model, jnp.ones((3, 2, 8)))
    assert listing.sites == ()
    reasons = {o.layers: o.reason for o in listing.left_out}
    assert "grouped convolution (groups=2)" in reasons[("conv", "grouped")]
    assert "without a flatten of its channels" in reasons[("last", "head")]


@pytest.mark.parametrize("stride, padding, dilation", [(1, 1, 1), (2, 0, 1), (1, 2, 2)])
def test_a_consumers_reading_of_each_channel_adds_up_to_its_convolution(stride, padding, dilation):
    conv = eqx.nn.Conv2d(4, 3, (3, 2), stride=stride, padding=padding, dilation=dilation, key=jr.key(3))
    listing = jaxlump.sites(
        eqx.nn.Sequential([eqx.nn.Conv2d(1, 4, 1, key=jr.key(4)), eqx.nn.Lambda(jax.nn.relu), conv]),
        jnp.ones((2, 1, 7, 7)),
    )
    features, weights = _consumer_reading(listing.sites[0], conv)
    a = jr.normal(jr.key(5), (2, 4, 7, 7))
    rows = sum(features(a[:, u]) @ weights[:, u].T for u in range(4))  # (B · positions, out)
    expected = jax.vmap(conv)(a) - conv.bias  # (B, out, H', W')
    np.testing.assert_allclose(rows, np.moveaxis(np.asarray(expected), 1, -1).reshape(-1, 3), rtol=1e-5, atol=1e-5)


class PooledCNN(eqx.Module):
    """As Equinox users pool: a max pool after the first activation, an average pool (with padding) after the
    second; images `(1, 8, 8)`."""

    conv1: eqx.nn.Conv2d
    pool: eqx.nn.MaxPool2d
    conv2: eqx.nn.Conv2d
    average: eqx.nn.AvgPool2d
    head: eqx.nn.Linear

    def __init__(self, key):
        keys = jr.split(key, 3)
        self.conv1 = eqx.nn.Conv2d(1, 6, 3, padding=1, key=keys[0])
        self.pool = eqx.nn.MaxPool2d(2, 2)
        self.conv2 = eqx.nn.Conv2d(6, 5, 3, padding=1, key=keys[1])
        self.average = eqx.nn.AvgPool2d(3, 1, padding=1)
        self.head = eqx.nn.Linear(5 * 4 * 4, 3, key=keys[2])

    def __call__(self, x):
        x = self.pool(jax.nn.relu(self.conv1(x)))
        x = self.average(jnp.tanh(self.conv2(x)))
        return self.head(x.reshape(-1))


POOLED = PooledCNN(jr.key(6))
X8 = jr.normal(jr.key(7), (48, 1, 8, 8))


def test_pooling_after_the_activation_is_part_of_the_site():
    listing = jaxlump.sites(POOLED, X8)
    assert [(s.path, s.width, s.group) for s in listing.sites] == [("conv2", 6, 9), ("head", 5, 16)]
    assert "conv2: 6 channels, conv1 → relu → max pool 2×2 → conv2" in str(listing)
    assert "head: 5 channels, conv2 → tanh → avg pool 3×3 (flattened) → head" in str(listing)


def test_pooling_across_channels_is_left_out_with_the_reason():
    def across(m):  # pairs of channels pooled: a channel's reader sees its neighbour too
        return jax.lax.reduce_window(m, -jnp.inf, jax.lax.max, (2, 1, 1), (2, 1, 1), "VALID")

    conv = eqx.nn.Conv2d(2, 3, 1, key=jr.key(3))
    model = eqx.nn.Sequential(
        [eqx.nn.Conv2d(1, 4, 1, key=jr.key(4)), eqx.nn.Lambda(jax.nn.relu), eqx.nn.Lambda(across), conv]
    )
    listing = jaxlump.sites(model, jnp.ones((2, 1, 5, 5)))
    assert listing.sites == ()
    assert "pooled across channels or examples" in listing.left_out[0].reason


@pytest.mark.parametrize(
    "pool",
    [eqx.nn.MaxPool2d(2, 2), eqx.nn.AvgPool2d(3, 1, padding=1), eqx.nn.MaxPool2d(3, 2, padding=1)],
    ids=["max", "average-padded", "max-strided-padded"],
)
def test_a_consumers_reading_after_pooling_adds_up_to_it(pool):
    conv = eqx.nn.Conv2d(4, 3, 2, key=jr.key(3))
    model = eqx.nn.Sequential([eqx.nn.Conv2d(1, 4, 1, key=jr.key(4)), eqx.nn.Lambda(jax.nn.relu), pool, conv])
    (site,) = jaxlump.sites(model, jnp.ones((2, 1, 7, 7))).sites
    features, weights = _consumer_reading(site, conv)
    a = jr.normal(jr.key(5), (2, 4, 7, 7))
    rows = sum(features(a[:, u]) @ weights[:, u].T for u in range(4))
    expected = jax.vmap(lambda m: conv(pool(m)))(a) - conv.bias
    np.testing.assert_allclose(rows, np.moveaxis(np.asarray(expected), 1, -1).reshape(-1, 3), rtol=1e-5, atol=1e-5)


@pytest.mark.integration  # the group path compiled and run on a CNN: the second test step
@pytest.mark.parametrize("method", ["merge_or_remove", "obs_prune"])
def test_a_pooled_cnn_is_cut_and_its_reported_deviation_is_its_own(method):
    small, info = compress_to(POOLED, method, {"conv2": 3, "head": 2}, X8)
    assert type(small) is PooledCNN and small.conv2.in_channels == 3 and small.head.in_features == 2 * 16
    deviation = np.abs(np.asarray(jax.vmap(small)(X8)) - np.asarray(jax.vmap(POOLED)(X8)))
    np.testing.assert_allclose(float(info.output_max_abs), deviation.max(), rtol=1e-4)
    exact, _ = jaxlump.merge_or_remove(POOLED, X8, 0.0)
    np.testing.assert_allclose(jax.vmap(exact)(X8), jax.vmap(POOLED)(X8), rtol=1e-4, atol=1e-5)


def test_cost_counts_each_convolution_at_every_output_position():
    cost = jaxlump.cost(MODEL, x=X)
    conv1 = 36 * (2 * 6 * 1 * 9 + 6)  # 6×6 positions
    conv2 = 9 * (2 * 5 * 6 * 9 + 5)  # stride 2: 3×3 positions
    head = 2 * 45 * 3 + 3
    assert int(cost.flops) == conv1 + conv2 + head
    with pytest.raises(ValueError, match="FLOPs of a convolution depend on the size of its input"):
        jaxlump.cost(MODEL)


def _arrays(model):
    return [np.asarray(a) for a in jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_inexact_array))]


@pytest.mark.integration  # the group path compiled and run on a CNN: the second test step
@pytest.mark.parametrize("method", ["merge_or_remove", "obs_prune"])
def test_the_result_is_a_smaller_model_of_the_same_class_with_its_cost_and_deviation(method):
    before = _arrays(MODEL)
    small, info = compress_to(MODEL, method, {"conv2": 3, "head": 2}, X)
    assert all(np.array_equal(a, b) for a, b in zip(before, _arrays(MODEL), strict=True)), "input model was modified"
    assert type(small) is SmallCNN and info.result == jaxlump.RESULTS.successful
    assert info.widths_after == {"conv2": 3, "head": 2}
    assert small.conv1.out_channels == small.conv2.in_channels == 3 == small.conv1.weight.shape[0]
    assert small.conv2.out_channels == 2 and small.head.in_features == 18 == small.head.weight.shape[1]
    cost = jaxlump.cost(small, x=X)
    assert info.params_after == int(cost.dense_params) == sum(a.size for a in _arrays(small))
    assert info.flops_after == int(cost.flops) < info.flops_before
    deviation = np.abs(np.asarray(jax.vmap(small)(X)) - np.asarray(jax.vmap(MODEL)(X)))
    np.testing.assert_allclose(float(info.output_max_abs), deviation.max(), rtol=1e-5)


def _duplicated(model: SmallCNN) -> SmallCNN:
    """conv1 with channel 6 a copy of channel 2 and conv2 reading the pair with its column split 0.3 / 0.7."""
    w1, b1 = model.conv1.weight, model.conv1.bias
    conv1 = eqx.nn.Conv2d(1, 7, 3, padding=1, key=jr.key(0))
    conv1 = eqx.tree_at(
        lambda c: (c.weight, c.bias), conv1, (jnp.concatenate([w1, w1[2:3]]), jnp.concatenate([b1, b1[2:3]]))
    )
    w2 = model.conv2.weight
    w2 = jnp.concatenate([w2.at[:, 2].multiply(0.3), 0.7 * w2[:, 2:3]], axis=1)
    conv2 = eqx.nn.Conv2d(7, 5, 3, stride=2, padding=1, key=jr.key(0))
    conv2 = eqx.tree_at(lambda c: (c.weight, c.bias), conv2, (w2, model.conv2.bias))
    return eqx.tree_at(lambda m: (m.conv1, m.conv2), model, (conv1, conv2))


@pytest.mark.integration  # the group path compiled and run on a CNN: the second test step
def test_at_eps_zero_only_the_duplicate_channel_goes_and_the_output_is_kept():
    planted = _duplicated(MODEL)
    small, info = jaxlump.merge_or_remove(planted, X, 0.0)
    assert info.widths_after == {"conv2": 6, "head": 5}
    labels = np.asarray(info.segments[0].partitions[0])
    assert labels[6] == labels[2] and sorted(set(labels.tolist())) == list(range(6))
    np.testing.assert_allclose(jax.vmap(small)(X), jax.vmap(MODEL)(X), rtol=1e-4, atol=1e-5)


@pytest.mark.integration  # the group path compiled and run on a CNN: the second test step
@pytest.mark.parametrize("method", [jaxlump.merge_or_remove, obs_prune], ids=["merge_or_remove", "obs_prune"])
def test_the_knob_cuts_channel_sites_with_the_methods_own_options(method):
    small, info = method(MODEL, X, 0.5, ridge=0.0)
    assert type(small) is SmallCNN and info.result == jaxlump.RESULTS.successful
    if method is obs_prune:  # int(n · 0.5) channels go from each site
        assert info.widths_after == {"conv2": 3, "head": 3}
    assert all(info.widths_after[p] < info.widths_before[p] for p in info.widths_before)
    assert small.conv2.in_channels == info.widths_after["conv2"] == small.conv1.out_channels
    removals, _ = jaxlump.merge_or_remove(MODEL, X, 0.5, merge=False)  # the option reaches the channel sites
    assert removals.conv1.out_channels <= 6


def test_the_consumer_refit_is_the_least_squares_solution():
    small, info = compress_to(MODEL, "obs_prune", {"head": 2}, X, ridge=0.0, where=lambda m: m.head)  # that site alone
    kept = np.asarray(info.segments[0].partitions[0])
    assert small.conv1 is MODEL.conv1
    # the head's refit on the kept conv2 channels, in NumPy: its inputs are the model's own activations
    hidden = np.asarray(jax.vmap(lambda x: jnp.tanh(small.conv2(jax.nn.relu(small.conv1(x)))))(X)).reshape(48, -1)
    targets = np.asarray(jax.vmap(MODEL)(X))
    design = np.concatenate([hidden, np.ones((48, 1))], axis=1)
    solution = np.linalg.lstsq(design.astype(np.float64), targets.astype(np.float64), rcond=None)[0]
    assert (kept >= 0).sum() == small.conv2.out_channels
    np.testing.assert_allclose(small.head.weight, solution[:-1].T, rtol=2e-3, atol=2e-4)


def test_other_targets_and_widths_out_of_range_are_refused():
    with pytest.raises(TypeError, match=r"channel sites \(conv2, head\); give their widths as a dict"):
        compress_to(MODEL, "merge_or_remove", 0.5, X)
    with pytest.raises(ValueError, match=r"`target\['head'\]` must be a number of channels from 1 to 5"):
        compress_to(MODEL, "merge_or_remove", {"head": 9}, X)
    with pytest.raises(TypeError, match="`merge_or_remove` has no option 'tau'"):
        compress_to(MODEL, "merge_or_remove", {"head": 2}, X, tau=1.0)


def test_methods_that_cannot_cut_channels_refuse_before_any_work():
    with pytest.raises(TypeError, match=r"channel sites \(conv2, head\), which jaxlump.structured_prune cannot"):
        structured_prune(MODEL, X, 0.5)
    with pytest.raises(ValueError, match="`independent=True`: channel sites"):
        jaxlump.merge_or_remove(MODEL, X, 0.5, independent=True)
    with pytest.raises(ValueError, match="channel sites take the exact greedy"):
        jaxlump.merge_or_remove(MODEL, X, 0.5, path=jaxlump.Rounds())
    with pytest.raises(ValueError, match="one fraction for every site"):
        obs_prune(MODEL, X, (0.5, 0.5))


@pytest.mark.integration  # the group path compiled and run on a CNN: the second test step
def test_a_compressed_cnn_is_saved_and_loaded(tmp_path):
    small, _ = compress_to(MODEL, "merge_or_remove", {"conv2": 4, "head": 3}, X)
    jaxlump.save(tmp_path / "cnn.jaxlump", small)
    loaded = jaxlump.load(tmp_path / "cnn.jaxlump", like=MODEL)
    assert loaded.conv2.in_channels == small.conv2.in_channels and loaded.head.in_features == small.head.in_features
    np.testing.assert_array_equal(jax.vmap(loaded)(X), jax.vmap(small)(X))
