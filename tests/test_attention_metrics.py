"""Saliency maps and alignment metrics, each on hand-made tensors with a known answer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from rlhf_hgt.attention import metrics as am

# ---------------------------------------------------------------- models


def linear_model(c: int = 2, h: int = 4, w: int = 4, k: int = 3) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, k))


class TinyCNN(nn.Module):
    """conv 2x2 stride 2 of ones, ReLU, sum pool, head [+1, -1]: class 0 = brightness."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, kernel_size=2, stride=2, bias=False)
        self.head = nn.Linear(1, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.head.weight.copy_(torch.tensor([[1.0], [-1.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).sum(dim=(2, 3))[:, None].flatten(1))


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.body = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Conv2d(4, 4, 3, padding=1),
            nn.ReLU(),
            nn.BatchNorm2d(4),
        )
        self.head = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).flatten(1))


def images(n: int = 3, c: int = 2, h: int = 4, w: int = 4) -> torch.Tensor:
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(2))


# ---------------------------------------------------------------- saliency maps


def test_input_gradients_of_linear_model_equal_abs_w():
    model, x = linear_model(), images()
    w = model[1].weight.detach()
    target = torch.tensor([0, 2, 1])
    sal = am.input_gradients(model, x, target)
    assert sal.shape == (3, 4, 4) and not sal.requires_grad
    for i, t in enumerate(target):
        torch.testing.assert_close(sal[i], w[t].reshape(2, 4, 4).abs().sum(0))
    predicted = model(x).argmax(1)
    expected = torch.stack([w[t].reshape(2, 4, 4).abs().sum(0) for t in predicted])
    torch.testing.assert_close(am.input_gradients(model, x), expected)
    one = am.input_gradients(model, x, 1)
    torch.testing.assert_close(one[0], w[1].reshape(2, 4, 4).abs().sum(0))


def test_gradient_x_input_of_linear_model():
    model, x = linear_model(), images()
    w = model[1].weight.detach()
    sal = am.gradient_x_input(model, x, torch.tensor([1, 1, 1]))
    torch.testing.assert_close(sal, (w[1].reshape(1, 2, 4, 4) * x).abs().sum(1))


def test_input_gradients_match_captum_saliency():
    from captum.attr import Saliency

    model = SmallCNN().eval()
    x = images(4, 3, 6, 6)
    target = torch.tensor([0, 1, 2, 0])
    ours = am.input_gradients(model, x, target)
    theirs = Saliency(model).attribute(x.clone().requires_grad_(), target=target, abs=True).sum(1)
    torch.testing.assert_close(ours, theirs)


def test_integrated_gradients_of_linear_model_is_w_times_x_minus_baseline():
    model, x = linear_model(), images()
    w = model[1].weight.detach()[2].reshape(1, 2, 4, 4)
    sal = am.integrated_gradients(model, x, torch.tensor([2, 2, 2]), steps=8)
    torch.testing.assert_close(sal, (w * x).abs().sum(1))
    base = torch.full_like(x, 0.5)
    sal = am.integrated_gradients(model, x, 2, steps=8, baseline=base)
    torch.testing.assert_close(sal, (w * (x - 0.5)).abs().sum(1))


def test_grad_cam_follows_the_evidence():
    model = TinyCNN()
    x = torch.zeros(2, 1, 8, 8)
    x[0, 0, 4:6, 2:4] = 1.0  # coarse cell (2, 1)
    x[1, 0, 0:2, 6:8] = 0.7  # coarse cell (0, 3)
    x[1, 0, 6:8, 0:2] = 0.2  # weaker evidence elsewhere
    cam = am.grad_cam(model, x, target=0)
    assert cam.shape == (2, 8, 8) and (cam >= 0).all() and not cam.requires_grad
    rows, cols = np.divmod(cam.flatten(1).argmax(1).numpy(), 8)
    assert 4 <= rows[0] <= 5 and 2 <= cols[0] <= 3
    assert 0 <= rows[1] <= 1 and 6 <= cols[1] <= 7
    assert cam[1, 6, 0] > 0  # the weaker evidence shows, less
    # class 1 counts brightness against: its ReLU'd Grad-CAM is empty
    assert (am.grad_cam(model, x, target=1) == 0).all()
    torch.testing.assert_close(am.grad_cam(model, x, 0, layer=model.conv), cam)


def test_grad_cam_layer_checks():
    with pytest.raises(ValueError, match="conv layer"):
        am.grad_cam(linear_model(), images())
    with pytest.raises(ValueError, match="module of the model"):
        am.grad_cam(TinyCNN(), torch.zeros(1, 1, 8, 8), layer=nn.Conv2d(1, 1, 2))
    model = SmallCNN()
    assert am.last_conv(model) is model.body[3]


@pytest.mark.parametrize("kind", am.SALIENCY_KINDS)
def test_saliency_restores_modes_flags_and_accumulates_no_grad(kind):
    model = SmallCNN().train()
    model.body[5].eval()  # a frozen batch norm: mixed modes must come back as they were
    model.head.bias.requires_grad_(False)
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    x = images(2, 3, 6, 6)
    kw = {"steps": 4} if kind == "integrated_gradients" else {}
    with torch.no_grad():  # callers inside no_grad still get a map
        sal = am.saliency(model, x, kind=kind, **kw)
    assert sal.shape == (2, 6, 6) and (sal >= 0).all() and not sal.requires_grad
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert not x.requires_grad and x.grad is None


def test_saliency_dispatch_and_bad_input():
    model, x = linear_model(), images()
    torch.testing.assert_close(am.saliency(model, x, target=1), am.input_gradients(model, x, 1))
    torch.testing.assert_close(
        am.saliency(model, x, "gradient_x_input", 0), am.gradient_x_input(model, x, 0)
    )
    with pytest.raises(ValueError, match="input_gradients, gradient_x_input"):
        am.saliency(model, x, kind="lime")
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        am.input_gradients(model, x[0])
    with pytest.raises(ValueError, match="one class per image"):
        am.input_gradients(model, x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="steps"):
        am.integrated_gradients(model, x, steps=0)


# ---------------------------------------------------------------- binary masks


def square_mask() -> np.ndarray:
    mask = np.zeros((4, 4))
    mask[:2, :2] = 1
    return mask


def test_mass_in_mask_known_shares():
    mask = square_mask()
    inside = mask * 3.0
    half = inside.copy()
    half[3, 3] = 12.0  # 12 inside, 12 outside
    sal = np.stack([inside, half, np.zeros((4, 4)), inside])
    masks = np.stack([mask, mask, mask, np.zeros((4, 4))])
    out = am.mass_in_mask(sal, masks)
    assert out[:2].tolist() == [1.0, 0.5] and np.isnan(out[2:]).all()
    assert am.mass_in_mask(torch.tensor(-half), torch.tensor(mask)).tolist() == [0.5]  # |sal|
    decoy = np.zeros((4, 4))
    decoy[3, 3] = 1
    assert am.share_in_region(half, decoy).tolist() == [0.5]


def test_topk_iou():
    mask = square_mask()
    assert am.topk_iou(mask, mask).tolist() == [1.0]
    assert am.topk_iou(1 - mask, mask).tolist() == [0.0]
    sal = np.zeros((4, 4))
    sal[0, 0], sal[3, 3] = 2.0, 1.0  # top-4: (0,0), (3,3), then ties (0,1), (0,2) by order
    assert am.topk_iou(sal, mask).tolist() == pytest.approx([2 / 6])
    assert am.topk_iou(sal, mask, k=1).tolist() == [0.25]
    assert np.isnan(am.topk_iou(sal, np.zeros((4, 4)))).all()
    with pytest.raises(ValueError, match="k must be"):
        am.topk_iou(sal, mask, k=0)


def test_pointing_game():
    mask = square_mask()
    hit, miss, flat = np.zeros((4, 4)), np.zeros((4, 4)), np.ones((4, 4))
    hit[1, 1], miss[3, 3] = 1.0, 1.0
    out = am.pointing_game(np.stack([hit, miss, flat]), np.stack([mask] * 3))
    assert out[:2].tolist() == [1.0, 0.0] and np.isnan(out[2])
    near = np.zeros((4, 4))
    near[2, 2] = 1.0  # sqrt(2) from (1, 1)
    assert am.pointing_game(near, mask, tolerance=1).tolist() == [0.0]
    assert am.pointing_game(near, mask, tolerance=1.5).tolist() == [1.0]
    assert np.isnan(am.pointing_game(hit, np.zeros((4, 4)))).all()


def test_rank_correlation_known_example_and_scipy():
    x = np.array([[1.0, 2, 3, 4, 5]])
    y = np.array([[5.0, 6, 7, 8, 7]])  # ranks 1, 2, 3.5, 5, 3.5
    assert am.rank_correlation(x, y).tolist() == pytest.approx([8 / math.sqrt(95)])
    assert am.rank_correlation(x, x**3).tolist() == pytest.approx([1.0])
    assert am.rank_correlation(x, -x).tolist() == pytest.approx([-1.0])
    assert np.isnan(am.rank_correlation(x, np.ones_like(x))).all()
    from scipy import stats  # a dev dependency: the reference implementation
    rng = np.random.default_rng(0)
    sal = rng.integers(0, 5, (3, 6, 6)).astype(float)  # many ties
    gaze = rng.random((3, 6, 6)).round(1)
    ours = am.rank_correlation(sal, gaze)
    theirs = [stats.spearmanr(sal[i].ravel(), gaze[i].ravel()).statistic for i in range(3)]
    np.testing.assert_allclose(ours, theirs)
    np.testing.assert_allclose(am._rankdata(sal[0].ravel()), stats.rankdata(sal[0].ravel()))


# ---------------------------------------------------------------- graded maps


def test_nss_by_hand():
    sal = np.array([[0.0, 0.0], [0.0, 4.0]])  # mean 1, population std sqrt(3)
    fix = np.array([[0.0, 0.0], [0.0, 1.0]])
    assert am.nss(sal, fix).tolist() == pytest.approx([math.sqrt(3)])
    graded = np.array([[0.0, 0.0], [0.5, 1.0]])
    r3 = math.sqrt(3)
    assert am.nss(sal, graded).tolist() == pytest.approx([(-1 / r3 + r3) / 2])
    assert am.nss(sal, graded, weighted=True).tolist() == pytest.approx([5 / (3 * r3)])
    assert np.isnan(am.nss(np.ones((2, 2)), fix)).all()
    assert np.isnan(am.nss(sal, np.zeros((2, 2)))).all()


def test_auc_judd_by_hand():
    fix = np.array([[1.0, 0, 1, 0]])
    assert am.auc_judd(np.array([[4.0, 1, 3, 2]]), fix).tolist() == [1.0]
    assert am.auc_judd(fix, fix).tolist() == [1.0]  # a binary perfect predictor, tied
    # thresholds 4 and 2: (0, .5) then (.5, 1), then (1, 1): area .375 + .5
    assert am.auc_judd(np.array([[4.0, 3, 2, 1]]), fix).tolist() == pytest.approx([0.875])
    assert np.isnan(am.auc_judd(fix, np.ones((1, 4)))).all()


def test_kl_cc_similarity_by_hand():
    rng = np.random.default_rng(1)
    density = rng.random((2, 5, 5))
    assert am.kl_divergence(density, density) == pytest.approx([0, 0], abs=1e-5)
    assert am.kl_divergence(3 * density, density) == pytest.approx([0, 0], abs=1e-5)
    assert am.cc(density, density) == pytest.approx([1, 1])
    assert am.cc(1 - 2 * density, density) == pytest.approx([-1, -1])
    assert am.similarity(density, density) == pytest.approx([1, 1])
    assert am.similarity(5 * density + 1, density) == pytest.approx([1, 1])
    # KL: q = (1, 0), p = (.5, .5) -> log 2; CC of (1,2,3) and (1,3,2) = .5
    kl = am.kl_divergence(np.array([[1.0, 1.0]]), np.array([[1.0, 0.0]]))
    assert kl.tolist() == pytest.approx([math.log(2)], abs=1e-6)
    assert am.cc(np.array([[1.0, 2, 3]]), np.array([[1.0, 3, 2]])).tolist() == pytest.approx([0.5])
    # SIM: (0, .5, .5) against (0, 0, 1) -> .5; disjoint maps -> 0
    sim = am.similarity(np.array([[0.0, 1, 1]]), np.array([[0.0, 0, 1]]))
    assert sim.tolist() == pytest.approx([0.5])
    assert am.similarity(np.array([[1.0, 0]]), np.array([[0.0, 1]])).tolist() == [0.0]
    for metric in (am.kl_divergence, am.cc, am.similarity):
        assert np.isnan(metric(np.zeros((1, 3)), np.array([[0.0, 1, 2]]))).all()


def test_shape_and_value_checks():
    with pytest.raises(ValueError, match="same shape"):
        am.mass_in_mask(np.ones((2, 4, 4)), np.ones((2, 4, 5)))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        am.cc(np.ones(4), np.ones(4))
    with pytest.raises(ValueError, match="NaN"):
        am.nss(np.full((2, 2), np.nan), np.ones((2, 2)))
    with pytest.raises(ValueError, match="tolerance"):
        am.pointing_game(np.ones((2, 2)), np.ones((2, 2)), tolerance=-1)


# ---------------------------------------------------------------- report


def test_alignment_report_binary_and_graded():
    mask = np.stack([square_mask(), np.zeros((4, 4))])  # the empty mask's image is skipped
    report = am.alignment_report(torch.tensor(mask), mask)
    assert set(report) == {"saliency_mass_in_mask", "topk_iou", "pointing_game", "rank_correlation"}
    assert report == pytest.approx(
        {"saliency_mass_in_mask": 1, "topk_iou": 1, "pointing_game": 1, "rank_correlation": 1}
    )
    gaze = np.array([[0.0, 0.2, 0.0], [0.2, 1.0, 0.4], [0.0, 0.1, 0.0]])
    report = am.alignment_report(gaze, gaze)
    assert list(report) == [
        "saliency_mass_in_mask",
        "topk_iou",
        "pointing_game",
        "rank_correlation",
        "nss",
        "auc_judd",
        "kl_divergence",
        "cc",
        "similarity",
    ]
    assert report["cc"] == pytest.approx(1) and report["similarity"] == pytest.approx(1)
    assert report["kl_divergence"] == pytest.approx(0, abs=1e-5)
    assert report["auc_judd"] == 1.0 and report["rank_correlation"] == pytest.approx(1)
    assert am.is_graded(gaze) and not am.is_graded(square_mask())
    # a dense map: every pixel > 0. Counting every pixel > 0 as a fixation leaves no
    # negative (AUC undefined); the report takes the core (>= half the peak) as fixated and
    # weights NSS by the map
    dense = np.array([[0.1, 0.2, 0.1], [0.2, 1.0, 0.6], [0.1, 0.1, 0.1]])
    assert np.isnan(am.auc_judd(dense, dense)[0])
    assert am.alignment_report(dense, dense)["auc_judd"] == 1.0
    peak_only = np.zeros((3, 3))
    peak_only[1, 1] = 1.0
    report = am.alignment_report(peak_only, dense)
    assert report["auc_judd"] == pytest.approx(0.75)  # one of the two core pixels found
    z = (peak_only - peak_only.mean()) / peak_only.std()
    assert report["nss"] == pytest.approx((z * dense).sum() / dense.sum())


# ---------------------------------------------------------------- behaviour


class HalfLooker(nn.Module):
    """Two classes: which is brighter, the left or the right half of the image."""

    def __init__(self, half: str) -> None:
        super().__init__()
        self.half = half

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.shape[-1] // 2
        part = x[..., :w] if self.half == "left" else x[..., w:]
        s = part.mean(dim=(1, 2, 3))
        return torch.stack([s, 0.5 - s + 0.0 * s], dim=1)


def test_outside_swap_flips_asks_the_model():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 4, 4, generator=gen)
    x[::2] *= 0.2  # half dark, half bright: the prediction depends on the brightness
    left = torch.zeros(64, 4, 4)
    left[..., :2] = 1.0  # people marked the left half
    # a model that looks where people looked keeps every prediction
    assert am.outside_swap_flips(HalfLooker("left"), x, left).tolist() == [0.0] * 64
    # one that looks at the unmarked half changes many of them when that half is swapped
    flips = am.outside_swap_flips(HalfLooker("right"), x, left)
    assert flips.shape == (64,) and 0.25 < flips.mean() < 0.75
    # pixels inside the other image's mask are never pasted: masks that cover everything
    # between them leave nothing to swap
    right = 1.0 - left
    both = torch.where(torch.arange(64)[:, None, None] % 2 == 0, left, right)
    assert am.outside_swap_flips(HalfLooker("right"), x, torch.ones(64, 4, 4)).sum() == 0
    assert am.outside_swap_flips(HalfLooker("right"), x, both).shape == (64,)
    assert np.isnan(am.outside_swap_flips(HalfLooker("left"), x[:1], left[:1])).all()
    with pytest.raises(ValueError, match="does not match"):
        am.outside_swap_flips(HalfLooker("left"), x, left[:, :3])
