"""The shared Bradley–Terry core."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_hgt.preference import (
    answers_to_targets,
    preference_accuracy,
    preference_logprobs,
    preference_loss,
)


def test_loss_matches_closed_form():
    sl, sr = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([0.0, 0.0, 1.0])
    loss = preference_loss(sl, sr, [1.0, 0.5, 0.0], reduction="none")
    p = torch.sigmoid(sl - sr)
    want = -(torch.tensor([1.0, 0.5, 0.0]) * p.log()
             + torch.tensor([0.0, 0.5, 1.0]) * (1 - p).log())
    torch.testing.assert_close(loss, want)
    # a tie on equal scores is the minimum of a tie's loss: log 2
    assert math.isclose(float(loss[1]), math.log(2), rel_tol=1e-6)


def test_noise_bounds_the_probability():
    log_l, log_r = preference_logprobs(torch.tensor([100.0]), torch.tensor([0.0]), noise=0.2)
    assert math.isclose(float(log_l.exp()), 0.9, rel_tol=1e-5)
    assert math.isclose(float(log_r.exp()), 0.1, rel_tol=1e-5)
    # a confidently wrong label costs at most -log(noise/2)
    bad = preference_loss(torch.tensor([100.0]), torch.tensor([0.0]), [0.0], noise=0.2)
    assert float(bad) <= -math.log(0.1) + 1e-4


def test_skips_are_dropped_and_gradients_flow():
    targets, keep = answers_to_targets(["left", "skip", "right", "tie"])
    assert keep.tolist() == [True, False, True, True]
    sl = torch.zeros(4, requires_grad=True)
    sr = torch.zeros(4)
    loss = preference_loss(sl, sr, targets, mask=keep)
    loss.backward()
    assert sl.grad[1] == 0 and sl.grad[0] < 0 and sl.grad[2] > 0 and sl.grad[3] == 0


def test_bad_input_says_how_to_fix():
    with pytest.raises(ValueError, match="0 <= noise < 1"):
        preference_loss(torch.zeros(1), torch.zeros(1), [1.0], noise=1.5)
    with pytest.raises(ValueError, match="one shape"):
        preference_loss(torch.zeros(2), torch.zeros(1), [1.0, 0.0])
    with pytest.raises(ValueError, match="left, right, tie or skip"):
        answers_to_targets(["maybe"])


def test_accuracy_ignores_ties():
    acc = preference_accuracy(torch.tensor([1.0, 0.0, 3.0, 1.0]),
                              torch.tensor([0.0, 1.0, 1.0, 1.0]), [1.0, 1.0, 0.5, 0.0])
    # right, wrong, (tie excluded), equal scores count half
    assert math.isclose(acc, 0.5)
