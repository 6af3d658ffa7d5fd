"""Saliency maps of image classifiers and their alignment with human attention.

Images are float tensors (N, C, H, W) in [0, 1]; a model maps them to logits (N, K).
Saliency maps come back as detached, non-negative tensors (N, H, W). Masks and maps are
(N, H, W) (or one (H, W) image), numpy or torch: binary {0, 1} masks or graded maps in
[0, 1] such as a gaze fixation density.

Alignment functions return a numpy array of one value per image; an image whose value is
undefined (an empty mask, an all-zero or constant saliency map) gets NaN, so callers
average with ``np.nanmean``. The graded-map metrics follow the MIT saliency benchmark
(Bylinskii et al. 2019, "What do different evaluation metrics tell us about saliency
models?"). Evaluation attributions (integrated gradients, Grad-CAM) come from captum; the
training losses, which need double backpropagation, live elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

ArrayLike = np.ndarray | torch.Tensor
Target = int | Sequence[int] | torch.Tensor | None

SALIENCY_KINDS = ("input_gradients", "gradient_x_input", "integrated_gradients", "grad_cam")
KL_EPS = 1e-7


# ---------------------------------------------------------------- saliency maps


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode, parameters frozen, gradients on; every module's mode and flag restored."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, training in modes:
            m.training = training


def _check_images(x: torch.Tensor) -> None:
    if not torch.is_tensor(x) or x.ndim != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"x must be a float tensor (N, C, H, W); got {shape}")


def _targets(target: Target, logits: torch.Tensor) -> torch.Tensor:
    """Class per image: the predicted class when target is None."""
    if logits.ndim != 2:
        raise ValueError(f"the model must return logits (N, K); got {tuple(logits.shape)}")
    n = logits.shape[0]
    if target is None:
        return logits.detach().argmax(dim=1)
    if isinstance(target, int):
        return torch.full((n,), target, dtype=torch.long, device=logits.device)
    t = torch.as_tensor(target, dtype=torch.long, device=logits.device).reshape(-1)
    if t.numel() != n:
        raise ValueError(f"target must hold one class per image ({n}); got {t.numel()}")
    return t


def _predicted(model: nn.Module, x: torch.Tensor, target: Target) -> torch.Tensor:
    with torch.no_grad():
        return _targets(target, model(x))


def _input_grad(model: nn.Module, x: torch.Tensor, target: Target) -> torch.Tensor:
    _check_images(x)
    with _evaluating(model):
        xg = x.detach().clone().requires_grad_(True)
        logits = model(xg)
        t = _targets(target, logits)
        (grad,) = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), xg)
    return grad.detach()


def input_gradients(model: nn.Module, x: torch.Tensor, target: Target = None) -> torch.Tensor:
    """|d logit[target] / dx| summed over channels, (N, H, W); target defaults to the
    predicted class. Computed in eval mode; the model's modes and flags are restored and no
    parameter gradient is accumulated."""
    return _input_grad(model, x, target).abs().sum(dim=1)


def gradient_x_input(model: nn.Module, x: torch.Tensor, target: Target = None) -> torch.Tensor:
    """|grad * x| summed over channels, (N, H, W); as :func:`input_gradients` otherwise."""
    return (_input_grad(model, x, target) * x.detach()).abs().sum(dim=1)


def integrated_gradients(
    model: nn.Module,
    x: torch.Tensor,
    target: Target = None,
    steps: int = 32,
    baseline: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Integrated gradients (captum) from ``baseline`` (zeros when None) in ``steps``
    steps, absolute value summed over channels, (N, H, W)."""
    from captum.attr import IntegratedGradients

    _check_images(x)
    if steps < 1:
        raise ValueError(f"steps must be at least 1; got {steps}")
    with _evaluating(model):
        t = _predicted(model, x, target)
        attr = IntegratedGradients(model).attribute(
            x.detach(), baselines=baseline, target=t, n_steps=steps
        )
    return attr.detach().abs().sum(dim=1)


def last_conv(model: nn.Module) -> nn.Conv2d:
    """The last ``nn.Conv2d`` in the model's module order."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("grad_cam needs a conv layer: pass layer=... or add an nn.Conv2d")
    return convs[-1]


def grad_cam(
    model: nn.Module, x: torch.Tensor, target: Target = None, layer: nn.Module | None = None
) -> torch.Tensor:
    """Grad-CAM (captum's LayerGradCam) at ``layer`` (default: the last nn.Conv2d), ReLU'd
    and upsampled bilinearly to the image size, (N, H, W)."""
    from captum.attr import LayerAttribution, LayerGradCam

    _check_images(x)
    layer = last_conv(model) if layer is None else layer
    if not any(m is layer for m in model.modules()):
        raise ValueError("layer must be a module of the model (e.g. model.conv2)")
    with _evaluating(model):
        t = _predicted(model, x, target)
        cam = LayerGradCam(model, layer).attribute(x.detach(), target=t, relu_attributions=True)
    if cam.ndim != 4 or cam.shape[1] != 1:
        raise ValueError(f"layer output must be (N, C, h, w) for Grad-CAM; got {tuple(cam.shape)}")
    cam = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")
    return cam[:, 0].detach().clamp_min(0.0)


_SALIENCY: dict[str, Callable[..., torch.Tensor]] = {
    "input_gradients": input_gradients,
    "gradient_x_input": gradient_x_input,
    "integrated_gradients": integrated_gradients,
    "grad_cam": grad_cam,
}


def saliency(
    model: nn.Module,
    x: torch.Tensor,
    kind: str = "input_gradients",
    target: Target = None,
    **kw: object,
) -> torch.Tensor:
    """The saliency map of ``kind`` (one of SALIENCY_KINDS); ``kw`` goes to that function."""
    if kind not in _SALIENCY:
        choices = ", ".join(SALIENCY_KINDS)
        raise ValueError(f"unknown saliency kind {kind!r}; choose one of {choices}")
    return _SALIENCY[kind](model, x, target=target, **kw)


# ---------------------------------------------------------------- map handling


def _maps(a: ArrayLike, name: str) -> np.ndarray:
    arr = a.detach().cpu().double().numpy() if torch.is_tensor(a) else np.asarray(a, float)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"{name} must be (N, H, W) or (H, W); got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds NaN or inf values")
    return arr


def _pair3(sal: ArrayLike, other: ArrayLike, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Both maps as float64 (N, H, W), shapes checked."""
    s, m = _maps(sal, "sal"), _maps(other, name)
    if s.shape != m.shape:
        raise ValueError(f"sal {s.shape} and {name} {m.shape} must have the same shape")
    return s, m


def _pair(sal: ArrayLike, other: ArrayLike, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Both maps as float64 (N, H*W), shapes checked."""
    s, m = _pair3(sal, other, name)
    return s.reshape(len(s), -1), m.reshape(len(m), -1)


def _ratio(num: np.ndarray, den: np.ndarray, ok: np.ndarray) -> np.ndarray:
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=ok & (den != 0))
    return out


def _standardise(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows to zero mean and unit (population) std; also whether each row is non-constant."""
    mean, std = a.mean(axis=1, keepdims=True), a.std(axis=1, keepdims=True)
    ok = std[:, 0] > 0
    return (a - mean) / np.where(std > 0, std, 1.0), ok


def _rankdata(a: np.ndarray) -> np.ndarray:
    """1-based ranks of a 1-D array, ties given their average rank."""
    order = np.argsort(a, kind="mergesort")
    inv = np.empty(a.size, dtype=np.intp)
    inv[order] = np.arange(a.size)
    sorted_a = a[order]
    first = np.r_[True, sorted_a[1:] != sorted_a[:-1]]
    dense = np.cumsum(first)[inv]
    bounds = np.r_[np.nonzero(first)[0], a.size]
    return 0.5 * (bounds[dense] + bounds[dense - 1] + 1)


# ---------------------------------------------------------------- binary masks


def mass_in_mask(sal: ArrayLike, mask: ArrayLike) -> np.ndarray:
    """Share of the total |saliency| inside the mask (mask > 0.5), per image; NaN for an
    all-zero saliency or an empty mask."""
    s, m = _pair(sal, mask, "mask")
    s, inside = np.abs(s), m > 0.5
    return _ratio((s * inside).sum(axis=1), s.sum(axis=1), inside.any(axis=1))


def share_in_region(sal: ArrayLike, region: ArrayLike) -> np.ndarray:
    """Share of the total |saliency| inside any region (e.g. the decoy patch), per image."""
    return mass_in_mask(sal, region)


def topk_iou(sal: ArrayLike, mask: ArrayLike, k: int | None = None) -> np.ndarray:
    """IoU of the k most salient pixels with the mask (mask > 0.5), per image; k is each
    image's mask area when None. Ties go to the earlier pixel in row-major order. NaN for
    an empty mask."""
    s, m = _pair(sal, mask, "mask")
    if k is not None and k < 1:
        raise ValueError(f"k must be at least 1 (or None for the mask area); got {k}")
    inside = m > 0.5
    out = np.full(len(s), np.nan)
    for i in range(len(s)):
        area = int(inside[i].sum())
        if area == 0:
            continue
        kk = min(area if k is None else k, s.shape[1])
        top = np.zeros(s.shape[1], dtype=bool)
        top[np.argsort(-s[i], kind="stable")[:kk]] = True
        out[i] = (top & inside[i]).sum() / (top | inside[i]).sum()
    return out


def pointing_game(sal: ArrayLike, mask: ArrayLike, tolerance: float = 0.0) -> np.ndarray:
    """1.0 where the most salient pixel (first in row-major order on ties) lies within
    ``tolerance`` pixels (Euclidean) of the mask (mask > 0.5), else 0.0; NaN for an empty
    mask or a constant saliency map."""
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 pixels; got {tolerance}")
    s3, m3 = _pair3(sal, mask, "mask")
    width = s3.shape[2]
    s, m = s3.reshape(len(s3), -1), m3.reshape(len(m3), -1)
    out = np.full(len(s), np.nan)
    for i in range(len(s)):
        ys, xs = np.divmod(np.flatnonzero(m[i] > 0.5), width)
        if ys.size == 0 or s[i].max() == s[i].min():
            continue
        py, px = divmod(int(np.argmax(s[i])), width)
        out[i] = float(((ys - py) ** 2 + (xs - px) ** 2).min() <= tolerance**2)
    return out


def rank_correlation(sal: ArrayLike, mask_or_map: ArrayLike) -> np.ndarray:
    """Spearman rank correlation over pixels per image (average ranks for ties); NaN where
    either map is constant."""
    s, m = _pair(sal, mask_or_map, "mask_or_map")
    rs = np.stack([_rankdata(row) for row in s])
    rm = np.stack([_rankdata(row) for row in m])
    return _pearson(rs, rm)


# ---------------------------------------------------------------- graded maps


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    za, ok_a = _standardise(a)
    zb, ok_b = _standardise(b)
    return np.where(ok_a & ok_b, (za * zb).mean(axis=1), np.nan)


def nss(sal: ArrayLike, fixations: ArrayLike, weighted: bool = False) -> np.ndarray:
    """Normalised scanpath saliency: the mean of the standardised saliency (zero mean, unit
    population std per image) at the fixated pixels (fixations > 0). With ``weighted`` each
    pixel counts by its map value instead (the expected NSS of fixations drawn from a
    density); for a binary map both agree. NaN for no fixations or a constant saliency."""
    s, f = _pair(sal, fixations, "fixations")
    z, ok = _standardise(s)
    w = f if weighted else (f > 0).astype(float)
    return _ratio((z * w).sum(axis=1), w.sum(axis=1), ok & (f > 0).any(axis=1))


def auc_judd(sal: ArrayLike, fixations: ArrayLike) -> np.ndarray:
    """AUC-Judd: ROC area with the saliency values at the fixated pixels (fixations > 0) as
    thresholds, true positives the fixated pixels above it, false positives the other
    pixels above it. Tied thresholds count as one step (the benchmark breaks ties with
    random jitter; without ties both agree). NaN with no fixated or no unfixated pixel."""
    s, f = _pair(sal, fixations, "fixations")
    out = np.full(len(s), np.nan)
    n = s.shape[1]
    for i in range(len(s)):
        fixed = s[i][f[i] > 0]
        nf = fixed.size
        if nf == 0 or nf == n:
            continue
        all_sorted, fix_sorted = np.sort(s[i]), np.sort(fixed)
        thresholds = np.unique(fixed)[::-1]
        above_fix = nf - np.searchsorted(fix_sorted, thresholds, side="left")
        above_all = n - np.searchsorted(all_sorted, thresholds, side="left")
        tp = np.r_[0.0, above_fix / nf, 1.0]
        fp = np.r_[0.0, (above_all - above_fix) / (n - nf), 1.0]
        out[i] = float(np.sum(np.diff(fp) * (tp[1:] + tp[:-1]) / 2))
    return out


def _as_distribution(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    total = a.sum(axis=1, keepdims=True)
    ok = (total[:, 0] > 0) & (a >= 0).all(axis=1)
    return a / np.where(total > 0, total, 1.0), ok


def kl_divergence(sal: ArrayLike, density: ArrayLike) -> np.ndarray:
    """KL(density || saliency), both normalised to sum 1 per image:
    sum(q * log(eps + q / (p + eps))) with eps = 1e-7 as in the benchmark code. NaN where
    either map has a negative value or sums to zero."""
    s, d = _pair(sal, density, "density")
    p, ok_p = _as_distribution(s)
    q, ok_q = _as_distribution(d)
    kl = (q * np.log(KL_EPS + q / (p + KL_EPS))).sum(axis=1)
    return np.where(ok_p & ok_q, kl, np.nan)


def cc(sal: ArrayLike, density: ArrayLike) -> np.ndarray:
    """Pearson correlation coefficient over pixels per image; NaN where either is constant."""
    s, d = _pair(sal, density, "density")
    return _pearson(s, d)


def similarity(sal: ArrayLike, density: ArrayLike) -> np.ndarray:
    """SIM, histogram intersection: each map rescaled to [0, 1] then to sum 1 (as in the
    benchmark), sum of the pixelwise minimum. 1 for identical maps; NaN where a map is
    constant."""
    s, d = _pair(sal, density, "density")

    def normalised(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = a.min(axis=1, keepdims=True), a.max(axis=1, keepdims=True)
        span = hi - lo
        r = (a - lo) / np.where(span > 0, span, 1.0)
        return r / np.maximum(r.sum(axis=1, keepdims=True), 1e-300), span[:, 0] > 0

    p, ok_p = normalised(s)
    q, ok_q = normalised(d)
    return np.where(ok_p & ok_q, np.minimum(p, q).sum(axis=1), np.nan)


# ---------------------------------------------------------------- behaviour


@torch.no_grad()
def outside_swap_flips(model: nn.Module, x: torch.Tensor, mask: ArrayLike,
                       seed: int = 0, batch: int = 512) -> np.ndarray:
    """Per image, 1.0 when the predicted class changes once the pixels outside its mask come
    from another image (a random derangement), else 0.0. Only pixels outside both masks are
    swapped, so no piece of the other image's evidence is pasted in; graded maps blend:
    ``x + (1 - m)(1 - m_other)(x_other - x)``. Saliency is local and can miss what a model
    relies on (a wide confound of a few distinct colours can steer a ReLU network with small
    gradients at the data); this asks the model itself. A model right for the right reasons
    keeps its predictions: a flip rate near the baseline's says the guidance did not take."""
    _check_images(x)
    m = torch.as_tensor(_maps(mask, "mask"), dtype=x.dtype, device=x.device).unsqueeze(1)
    if m.shape[0] != x.shape[0] or m.shape[2:] != x.shape[2:]:
        raise ValueError(f"mask {tuple(m.shape)} does not match images {tuple(x.shape)}")
    n = x.shape[0]
    if n < 2:
        return np.full(n, np.nan)
    gen = torch.Generator().manual_seed(seed)
    other = (torch.arange(n) + torch.randint(1, n, (n,), generator=gen)) % n  # never itself
    flips = []
    with _evaluating(model), torch.no_grad():
        for i in range(0, n, batch):
            xs, ms, js = x[i:i + batch], m[i:i + batch], other[i:i + batch].to(x.device)
            swapped = xs + (1 - ms) * (1 - m[js]) * (x[js] - xs)
            flips.append((model(xs).argmax(1) != model(swapped).argmax(1)).float().cpu())
    return torch.cat(flips).numpy()


# ---------------------------------------------------------------- report


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def is_graded(mask: ArrayLike) -> bool:
    """Whether a map holds values strictly between 0 and 1 (a graded, gaze-like map)."""
    m = _maps(mask, "mask")
    return bool(((m > 0) & (m < 1)).any())


def alignment_report(sal: ArrayLike, mask: ArrayLike) -> dict[str, float]:
    """Nan-means over images of the binary-mask metrics (mask > 0.5; the rank correlation
    uses the map's own values), plus the graded-map metrics when the map is graded (NSS
    weighted by the map, AUC-Judd with the pixels at half the map's peak or above as the
    fixations)."""
    report = {
        "saliency_mass_in_mask": _nanmean(mass_in_mask(sal, mask)),
        "topk_iou": _nanmean(topk_iou(sal, mask)),
        "pointing_game": _nanmean(pointing_game(sal, mask)),
        "rank_correlation": _nanmean(rank_correlation(sal, mask)),
    }
    if is_graded(mask):
        # a dense map is not a list of fixations: NSS weights each pixel by the map (the
        # expected NSS of fixations drawn from it), AUC-Judd takes the pixels at half the
        # map's peak or above as fixated (every pixel > 0 would leave few negatives)
        dense = _maps(mask, "mask")
        peak = dense.reshape(len(dense), -1).max(axis=1).reshape(-1, *[1] * (dense.ndim - 1))
        report["nss"] = _nanmean(nss(sal, mask, weighted=True))
        report["auc_judd"] = _nanmean(auc_judd(sal, (dense >= 0.5 * peak) & (peak > 0)))
        report["kl_divergence"] = _nanmean(kl_divergence(sal, mask))
        report["cc"] = _nanmean(cc(sal, mask))
        report["similarity"] = _nanmean(similarity(sal, mask))
    return report
