"""Pictures of where a model looks: the same test images, their human map and the model's
saliency side by side (``saliency.png`` of a run), and the grid of several runs that
``rlhf-hgt attention compare`` draws. Each run also keeps its examples as numbers
(``saliency_examples.npz``), so a comparison needs no model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

EXAMPLES = 8  # test images shown per run (the first ones: the same for every run)
EXAMPLES_FILE = "saliency_examples.npz"


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _gray(x: np.ndarray) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W, 3) for 3 channels, else (H, W): the one channel, or
    the mean of 2, 4 or more (RGBA, stacked frames)."""
    return np.moveaxis(x, 0, -1) if x.shape[0] == 3 else x.mean(axis=0)


def examples(model: Any, data: Any, n: int = EXAMPLES) -> dict[str, np.ndarray]:
    """Inputs, maps and input-gradient saliency of the first ``n`` test images."""
    import torch

    from rlhf_hgt.attention.metrics import input_gradients

    device = next(model.parameters()).device
    x = data.x_test[:n]
    sal = input_gradients(model, torch.as_tensor(x).to(device)).cpu().numpy()
    mask = data.mask_test[:n] if data.mask_test is not None else np.zeros_like(sal)
    return {"x": x, "mask": mask, "saliency": sal, "y": data.y_test[:n]}


def saliency_grid(model: Any, data: Any, path: Path, title: str = "") -> dict[str, np.ndarray]:
    """Write ``path`` (rows: input, human map, saliency) and the examples beside it."""
    ex = examples(model, data)
    np.savez_compressed(Path(path).parent / EXAMPLES_FILE, **ex)
    draw([("input", ex["x"], "gray"), ("human map", ex["mask"], "magma"),
          ("saliency", ex["saliency"], "inferno")], path, title)
    return ex


def draw(rows: list[tuple[str, np.ndarray, str]], path: Path, title: str = "") -> None:
    """A grid: one row per (label, images, colour map); images (N, C, H, W) or (N, H, W)."""
    plt = _plt()
    n = max(len(r[1]) for r in rows)
    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n, 1.4 * len(rows) + 0.4),
                             squeeze=False)
    for r, (label, images, cmap) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(images):
                img = images[c]
                img = _gray(img) if img.ndim == 3 else img
                ax.imshow(img, cmap=cmap, vmin=0, vmax=None if r else 1)
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    from rlhf_hgt.feedback.files import write_atomic

    try:
        write_atomic(path, lambda fh: fig.savefig(fh, format="png", dpi=80))
    finally:
        plt.close(fig)


def compare_grid(runs: list[tuple[str, Path]], path: Path) -> None:
    """One row of saliency per run (its examples), under the inputs and the human maps of
    the first run."""
    loaded = [(name, np.load(Path(folder) / EXAMPLES_FILE)) for name, folder in runs]
    first = loaded[0][1]
    rows = [("input", first["x"], "gray"), ("human map", first["mask"], "magma")]
    rows += [(name, ex["saliency"], "inferno") for name, ex in loaded]
    draw(rows, path, "saliency (input gradients of the predicted class)")
