"""The shared figure helpers."""

import numpy as np
import pytest

from birl_lite.plotting import confidence_band


def test_confidence_band_is_the_student_t_interval():
    a = np.random.default_rng(0).normal(size=(5, 7))
    mean, half = confidence_band(a)
    assert np.allclose(mean, a.mean(0))
    assert np.allclose(half, 2.776 * a.std(0, ddof=1) / np.sqrt(5))  # t_{0.975, 4}


def test_confidence_band_along_another_axis_and_many_seeds():
    a = np.random.default_rng(1).normal(size=(3, 40))
    mean, half = confidence_band(a, axis=1)
    assert mean.shape == (3,)
    assert np.allclose(half, 2.042 * a.std(1, ddof=1) / np.sqrt(40))  # capped at 30 dof


def test_confidence_band_of_one_seed_is_zero_width():
    mean, half = confidence_band([[1.0, 2.0]])
    assert mean.tolist() == [1.0, 2.0] and half.tolist() == [0.0, 0.0]


@pytest.mark.parametrize("n", [2, 10, 31])
def test_band_shrinks_with_more_seeds(n):
    a = np.random.default_rng(n).normal(size=(n, 1000))
    _, half = confidence_band(a)
    assert half.mean() < 13 / np.sqrt(n)


def test_paired_difference():
    from birl_lite.plotting import paired_difference

    mean, half, wins, n = paired_difference([1.0, 2.0, 3.0], [0.0, 2.5, 1.0])
    assert abs(mean - 2.5 / 3) < 1e-12 and (wins, n) == (2, 3)
    assert abs(half - 4.303 * np.std([1.0, -0.5, 2.0], ddof=1) / np.sqrt(3)) < 1e-12
    with pytest.raises(ValueError, match="one value per seed"):
        paired_difference([1.0, 2.0], [1.0])
