"""Issue 30's CNN: two 3×3 convolutions with ReLU, a flatten and a linear classifier, trained on scikit-learn's digits
and called per example on `(1, 8, 8)` images, with 8 planted duplicate channels in each convolution."""

import functools

import jax
import jax.random as jr
import numpy as np
import pytest
from _vision import DigitsCNN, accuracy, digits, plant_channels, train_cnn

import jaxlump

pytestmark = pytest.mark.integration  # a trained model, two channel sites cut by the exact group greedy


@functools.cache
def planted():
    model = train_cnn(DigitsCNN((16, 16), key=jr.key(0)), 300, jr.key(1))
    wide, copies1, sources1 = plant_channels(model, "conv1", 8, jr.key(2))
    wide, copies2, sources2 = plant_channels(wide, "conv2", 8, jr.key(3))
    return model, wide, ((copies1, sources1), (copies2, sources2))


def test_the_planted_duplicate_channels_merge_with_their_sources_and_the_logits_do_not_change():
    model, wide, pairs = planted()
    x, _, x_test, y_test = digits()
    assert wide.conv1.out_channels == wide.conv2.out_channels == 24
    small, info = jaxlump.merge_or_remove(wide, x[:256], 0.0)
    for segment, (copies, sources) in zip(info.segments, pairs, strict=True):
        labels = np.asarray(segment.partitions[0])
        np.testing.assert_array_equal(labels[copies], labels[sources])  # each copy went into its source
        assert sorted(set(labels.tolist())) == list(range(16))  # and nothing else merged or went
    assert small.conv1.out_channels == small.conv2.in_channels == small.conv2.out_channels == 16
    logits, reference = np.asarray(jax.vmap(small)(x_test)), np.asarray(jax.vmap(model)(x_test))
    np.testing.assert_allclose(logits, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())
    assert accuracy(small, x_test, y_test) == accuracy(model, x_test, y_test)
