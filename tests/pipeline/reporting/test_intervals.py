"""The interval math, against hand computations and published values."""

import math

import numpy as np
import pytest

from pipeline.reporting.intervals import accuracy_with_interval, pack, paired_difference, unpack, wilson


def test_wilson_matches_a_hand_computation():
    # 45 of 50: p = 0.9, z^2 / n = 0.0768292; centre = (0.9 + 0.0384146) / 1.0768292 = 0.871461;
    # half = z * sqrt(0.0018 + 0.000384146) / 1.0768292 = 0.085063. Newcombe (1998) lists [0.7864, 0.9565].
    low, high = wilson(45, 50)
    assert low == pytest.approx(0.786398, abs=1e-6) and high == pytest.approx(0.956524, abs=1e-6)
    assert (round(low, 4), round(high, 4)) == (0.7864, 0.9565)


def test_wilson_stays_inside_zero_and_one_and_narrows_with_more_images():
    assert wilson(0, 20)[0] == 0.0 and wilson(20, 20)[1] == 1.0
    assert wilson(20, 20)[0] == pytest.approx(20 / (20 + 1.959963984540054**2), abs=1e-12)  # (n) / (n + z^2)
    assert wilson(0, 0) == (0.0, 1.0)
    small, large = wilson(90, 100), wilson(9000, 10000)
    assert large[1] - large[0] < (small[1] - small[0]) / 9


def test_paired_difference_matches_a_hand_computation():
    first = np.array([1, 1, 1, 0, 0, 1], dtype=bool)
    second = np.array([1, 0, 0, 0, 1, 1], dtype=bool)
    # only first right: 2 images, only second right: 1; n = 6; d = 1/6;
    # half = z * sqrt(2 + 1 - (2 - 1)^2 / 6) / 6 = 1.959964 * sqrt(2.833333) / 6 = 0.549852
    d, low, high = paired_difference(first, second)
    assert d == pytest.approx(1 / 6)
    half = 1.959963984540054 * math.sqrt(3 - 1 / 6) / 6
    assert (low, high) == pytest.approx((1 / 6 - half, 1 / 6 + half))
    assert half == pytest.approx(0.549852, abs=1e-6)


def test_paired_difference_of_identical_models_is_exactly_zero_and_is_antisymmetric():
    rng = np.random.default_rng(0)
    a, b = rng.random(500) < 0.9, rng.random(500) < 0.8
    assert paired_difference(a, a) == (0.0, 0.0, 0.0)
    d, low, high = paired_difference(a, b)
    assert paired_difference(b, a) == pytest.approx((-d, -high, -low))
    with pytest.raises(ValueError, match="different lengths"):
        paired_difference(a, b[:10])


def test_correctness_packs_to_bits_and_back():
    rng = np.random.default_rng(1)
    for count in (1, 7, 8, 9, 1000):
        correct = rng.random(count) < 0.7
        assert np.array_equal(unpack(pack(correct), count), correct)
    with pytest.raises(ValueError, match="not the 20 images expected"):
        unpack(pack(np.ones(9, dtype=bool)), 20)
    record = accuracy_with_interval(np.array([True, True, False, True]))
    assert record["accuracy"] == 0.75 and record["images"] == 4 and record["interval"] == list(wilson(3, 4))
