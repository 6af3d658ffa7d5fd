"""Response times to confidence: per-annotator ranks, the floor, weights and soft targets."""

from __future__ import annotations

import numpy as np
import pytest

from rlhf_hgt.confidence import apply_confidence, time_confidence, time_ranks


def test_ranks_are_per_annotator_so_speed_does_not_matter():
    # a quick and a slow person with the same order of their own times get the same ranks
    quick = [0.5, 0.7, 0.6, 0.9, 0.8]
    slow = [5.0, 7.0, 6.0, 9.0, 8.0]
    r = time_ranks(quick + slow, ["a"] * 5 + ["b"] * 5)
    np.testing.assert_allclose(r[:5], [0, 0.5, 0.25, 1, 0.75])
    np.testing.assert_allclose(r[5:], r[:5])


def test_missing_times_and_few_answers_get_full_confidence():
    secs = [1.0, float("nan"), 2.0, 3.0, 4.0, 5.0, 1.0, 2.0]
    who = ["a"] * 6 + ["b"] * 2  # b has two timed answers: too few to rank
    c = time_confidence(secs, who, floor=0.2)
    assert c[1] == 1.0 and c[6] == 1.0 and c[7] == 1.0
    np.testing.assert_allclose(c[[0, 2, 3, 4, 5]], [1.0, 0.8, 0.6, 0.4, 0.2])


def test_ties_share_their_rank():
    r = time_ranks([1.0, 2.0, 2.0, 3.0, 4.0], ["a"] * 5)
    np.testing.assert_allclose(r, [0, 0.375, 0.375, 0.75, 1.0])


def test_weight_and_soft_modes():
    targets, conf = [1.0, 0.0, 0.5], [0.2, 0.6, 0.4]
    y, w = apply_confidence(targets, conf, "weight")
    np.testing.assert_allclose(y, targets)
    np.testing.assert_allclose(w, conf)
    y, w = apply_confidence(targets, conf, "soft")
    np.testing.assert_allclose(y, [0.6, 0.2, 0.5])  # a tie stays 0.5
    np.testing.assert_allclose(w, 1.0)
    with pytest.raises(ValueError, match="mode must be"):
        apply_confidence(targets, conf, "hard")
    with pytest.raises(ValueError, match="floor"):
        time_confidence([1.0], ["a"], floor=1.5)
    with pytest.raises(ValueError, match="equal"):
        time_ranks([1.0, 2.0], ["a"])


def test_equal_times_carry_nothing():
    # a teacher that records no times (shown = answered): every time 0, full confidence
    c = time_confidence([0.0] * 6, ["t"] * 6)
    np.testing.assert_array_equal(c, 1.0)
    y, _ = apply_confidence([1.0] * 6, c, "soft")
    np.testing.assert_array_equal(y, 1.0)
