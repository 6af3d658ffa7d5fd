"""Attention benchmarks (issue #12): every claim of human attention guidance, measured.

    python scripts/bench_attention.py decoy --seeds 0 1 2        # the Decoy MNIST table
    python scripts/bench_attention.py fraction                   # cost-benefit: share masked
    python scripts/bench_attention.py weight                     # rrr across guidance weights
    python scripts/bench_attention.py clean                      # guidance on the clean task
    python scripts/bench_attention.py gaze                       # synthetic gaze maps
    python scripts/bench_attention.py noise                      # the break condition
    python scripts/bench_attention.py unseen                     # a confounded task not tuned on
    python scripts/bench_attention.py small --seeds 0 1 2        # a small unseen task
    python scripts/bench_attention.py ink                        # masks on the ink, not the box
    python scripts/bench_attention.py flips                      # flip rates of saved runs
    python scripts/bench_attention.py report                     # summary + saliency grid

Each run is `rlhf_hgt.attention.train.run_attention` with the defaults unless the row says
otherwise; results go to benchmarks/attention_results.json (resumable: finished runs are
kept and skipped), run folders to runs/bench_attention/, the summary to
benchmarks/attention_summary.md and the decoy table's saliency grid to
benchmarks/attention_saliency_grid.png.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

RESULTS = Path("benchmarks/attention_results.json")
SUMMARY = Path("benchmarks/attention_summary.md")
GRID = Path("benchmarks/attention_saliency_grid.png")
RUNS = Path("runs/bench_attention")
UNSEEN = Path("runs/bench_attention/stripe_mnist.npz")
UNSEEN_CLEAN = Path("runs/bench_attention/stripe_mnist_clean.npz")  # the stripe random
KEEP = ("test_accuracy", "train_accuracy", "saliency_mass_in_mask", "topk_iou",
        "pointing_game", "rank_correlation", "decoy_saliency_share", "accuracy_per_epoch",
        "wall_s", "masked_train_images", "nss", "cc", "kl_divergence",
        "outside_swap_flip_rate", "epochs")


def load() -> dict[str, Any]:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def run(key: str, **settings: Any) -> dict[str, Any]:
    """One run (skipped when the results already hold it)."""
    results = load()
    if key in results:
        return results[key]
    import torch

    from rlhf_hgt.attention.train import AttentionConfig, run_attention
    from rlhf_hgt.feedback.files import write_json_atomic

    torch.set_num_threads(1)
    cfg = AttentionConfig(out=str(RUNS / key.replace("/", "_")), **settings)
    metrics = run_attention(cfg)
    row = {"settings": settings, **{k: metrics.get(k) for k in KEEP}}
    results = load()
    results[key] = row
    write_json_atomic(RESULTS, results)
    print(f"{key}: test {row['test_accuracy']:.3f}  mass-in-mask "
          f"{_f(row['saliency_mass_in_mask'])}  decoy share {_f(row['decoy_saliency_share'])}"
          f"  ({row['wall_s']:.0f}s)", flush=True)
    return row


def _f(x: Any) -> str:
    return "–" if x is None else f"{x:.3f}"


DECOY_MLP = ["none", "augment", "gate", "rrr", "gaze-kl", "random-mask"]
DECOY_CNN = ["none", "augment", "gate", "rrr", "gradcam", "random-mask"]


def decoy(seeds: list[int]) -> None:
    for seed in seeds:
        for arch, methods in (("mlp", DECOY_MLP), ("cnn", DECOY_CNN)):
            run(f"decoy/{arch}/clean/{seed}", data="mnist", method="none", arch=arch, seed=seed)
            for method in methods:
                extra = {"synthetic_gaze": 12} if method == "gaze-kl" else {}
                run(f"decoy/{arch}/{method}/{seed}", data="decoy-mnist", method=method,
                    arch=arch, seed=seed, **extra)


def fraction(seeds: list[int]) -> None:
    for seed in seeds:
        for method in ("rrr", "gate", "augment"):
            for share in (1.0, 0.3, 0.1, 0.03):
                run(f"fraction/{method}/{share}/{seed}", data="decoy-mnist", method=method,
                    mask_fraction=share, seed=seed)


def weight(seeds: list[int]) -> None:
    for seed in seeds:
        for w in (0.1, 1.0, 10.0, 100.0, 1000.0):
            run(f"weight/rrr/{w}/{seed}", data="decoy-mnist", method="rrr",
                guidance_weight=w, seed=seed)


def clean(seeds: list[int]) -> None:
    for seed in seeds:
        for method in ("none", "augment", "gate", "rrr", "random-mask"):
            run(f"clean/mlp/{method}/{seed}", data="mnist", method=method, seed=seed)


def gaze(seeds: list[int]) -> None:
    for seed in seeds:
        for method in ("gaze-kl", "rrr"):
            run(f"gaze/{method}/{seed}", data="decoy-mnist", method=method, seed=seed,
                synthetic_gaze=12)


def noise(seeds: list[int]) -> None:
    for seed in seeds:
        for spec in ("dilate:3", "shift:4", "shift:8", "drop:0.5", "decoy:0.3", "decoy:1"):
            run(f"noise/rrr/{spec}/{seed}", data="decoy-mnist", method="rrr",
                mask_noise=spec, seed=seed)


def stripe_mnist(path: Path, confound: bool = True) -> Path:
    """A confounded task the defaults were not tuned on: MNIST digits in colour on 3x40x40
    images at a random place, with a stripe along the top whose colour encodes the label in
    training (``confound``; else random there too) and is random at test; the mask marks the
    digit's box."""
    import numpy as np

    from rlhf_hgt.attention.data import digit_masks, mnist_digits

    digits, labels = mnist_digits()
    rng = np.random.default_rng(7)
    order = rng.permutation(len(labels))
    palette = rng.random((10, 3)).astype(np.float32) * 0.8 + 0.2
    arrays = {}
    for name, idx in (("train", order[1000:]), ("test", order[:1000])):
        n = len(idx)
        x = np.zeros((n, 3, 40, 40), np.float32)
        m = np.zeros((n, 40, 40), np.float32)
        masks = digit_masks(digits[idx])
        stripe = labels[idx] if name == "train" and confound else rng.integers(0, 10, n)
        for i, j in enumerate(idx):
            r, c = rng.integers(4, 12, 2)
            colour = rng.random(3).astype(np.float32) * 0.6 + 0.4
            x[i, :, r:r + 28, c:c + 28] = digits[j] / 255.0 * colour[:, None, None]
            m[i, r:r + 28, c:c + 28] = masks[i]
            x[i, :, 0:3, :] = palette[stripe[i]][:, None, None]
            m[i, 0:3, :] = 0.0
        arrays[f"x_{name}"], arrays[f"y_{name}"], arrays[f"mask_{name}"] = x, labels[idx], m
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def unseen(seeds: list[int]) -> None:
    if not UNSEEN.exists():
        stripe_mnist(UNSEEN)
    if not UNSEEN_CLEAN.exists():
        stripe_mnist(UNSEEN_CLEAN, confound=False)
    for seed in seeds:
        for arch in ("mlp", "cnn"):
            run(f"unseen/{arch}/clean/{seed}", data=str(UNSEEN_CLEAN), method="none",
                arch=arch, seed=seed)
        for arch, methods in (("mlp", ["none", "augment", "gate", "rrr", "random-mask"]),
                              ("cnn", ["none", "augment", "gate", "rrr", "gradcam"])):
            for method in methods:
                run(f"unseen/{arch}/{method}/{seed}", data=str(UNSEEN), method=method,
                    arch=arch, seed=seed)
        for weight in (100.0, 1000.0):  # rrr's failure here is not its weight
            run(f"unseen/mlp/rrr-w{weight:g}/{seed}", data=str(UNSEEN), method="rrr",
                arch="mlp", seed=seed, guidance_weight=weight)


def flips(seeds: list[int]) -> None:
    """outside_swap_flip_rate for runs measured before metrics.json carried it: computed from
    each run's saved weights and data, exactly as `attention train` now does."""
    import torch
    from safetensors.torch import load_file

    from rlhf_hgt.attention.data import load_data
    from rlhf_hgt.attention.metrics import outside_swap_flips
    from rlhf_hgt.attention.models import build_model
    from rlhf_hgt.feedback.files import write_json_atomic

    torch.set_num_threads(1)
    results, cache = load(), {}
    for key, row in results.items():
        folder = RUNS / key.replace("/", "_")
        if row.get("outside_swap_flip_rate") is not None or not folder.is_dir():
            continue
        config = json.loads((folder / "manifest.json").read_text())["config"]
        if config["data"] not in cache:
            cache[config["data"]] = load_data(config["data"])
        data = cache[config["data"]]
        if data.mask_test is None:
            continue
        model = build_model(config["arch"], data.image_shape, data.classes,
                            gated=config["method"] == "gate")
        model.load_state_dict(load_file(folder / "model.safetensors"))
        row["outside_swap_flip_rate"] = float(
            outside_swap_flips(model, torch.as_tensor(data.x_test), data.mask_test).mean())
        print(f"{key}: outside_swap_flip_rate {row['outside_swap_flip_rate']:.3f}", flush=True)
    write_json_atomic(RESULTS, results)


SMALL = Path("runs/bench_attention/small_bars_{seed}.npz")


def small_bars(path: Path, seed: int, n: int = 256, size: int = 10) -> Path:
    """A small unseen task: rlhf_hgt.attention.data.bars_task with a 3x3 corner confound."""
    import numpy as np

    from rlhf_hgt.attention.data import bars_task

    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **bars_task(n, size, seed, corner=3))
    return path


def small(seeds: list[int]) -> None:
    """The small task over seeds (data and training), at the default number of passes, and
    rrr at 20 passes (80 steps), the default before it reached 1,000 steps."""
    for seed in seeds:
        path = Path(str(SMALL).format(seed=seed))
        if not path.exists():
            small_bars(path, seed)
        for method in ("none", "rrr", "gate", "augment", "random-mask"):
            run(f"small/{method}/{seed}", data=str(path), method=method, seed=seed)
        run(f"small/rrr-20-passes/{seed}", data=str(path), method="rrr", seed=seed, epochs=20)


INK = Path("runs/bench_attention/decoy_mnist_ink{k}.npz")


def ink(seeds: list[int]) -> None:
    """Decoy MNIST with tighter masks: the digit's ink dilated by k pixels instead of its box
    (the issue's "mass in mask at least twice the baseline's" cannot be met with boxes,
    which hold 55% of the baseline's saliency already)."""
    import numpy as np
    from scipy.ndimage import binary_dilation

    from rlhf_hgt.attention.data import mnist

    for k in (1, 2):
        path = Path(str(INK).format(k=k))
        if not path.exists():
            d = mnist(decoy=True)
            arrays = {"x_train": d.x_train, "y_train": d.y_train, "x_test": d.x_test,
                      "y_test": d.y_test}
            for part, x, decoy in (("train", d.x_train, d.decoy_train),
                                   ("test", d.x_test, d.decoy_test)):
                ink_ = (x[:, 0] > 0) & ~decoy
                dilated = [binary_dilation(i, iterations=k) & ~p
                           for i, p in zip(ink_, decoy, strict=True)]
                arrays[f"mask_{part}"] = np.stack(dilated).astype(np.float32)
            np.savez_compressed(path, **arrays)
        for seed in seeds:
            for method in ("none", "rrr", "gate"):
                run(f"ink/{k}/{method}/{seed}", data=str(path), method=method, seed=seed)


# ----------------------------------------------------------------------------- report


def _stats(rows: list[dict], key: str) -> str:
    vals = [r[key] for r in rows if r.get(key) is not None]
    if not vals:
        return "–"
    mean = statistics.mean(vals)
    return f"{mean:.3f}" + (f" ± {statistics.stdev(vals):.3f}" if len(vals) > 1 else "")


def _group(results: dict, prefix: str) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for key, row in results.items():
        if key.startswith(prefix):
            groups.setdefault(key.rsplit("/", 1)[0], []).append(row)
    return groups


def report() -> None:
    results = load()
    lines = ["# Attention benchmarks (scripts/bench_attention.py)", ""]
    cols = ("test_accuracy", "saliency_mass_in_mask", "topk_iou", "rank_correlation",
            "decoy_saliency_share", "outside_swap_flip_rate")
    for title, prefix in (("Decoy MNIST", "decoy/"), ("Cost-benefit (MLP)", "fraction/"),
                          ("rrr across the guidance weight (MLP)", "weight/"),
                          ("Guidance on clean MNIST (MLP)", "clean/"),
                          ("Synthetic gaze maps (MLP)", "gaze/"),
                          ("Break condition: degraded masks (rrr, MLP)", "noise/"),
                          ("A confounded task not tuned on (stripe MNIST, 3x40x40)",
                           "unseen/"),
                          ("Decoy MNIST with masks on the ink (dilated 1 or 2 pixels), MLP",
                           "ink/"),
                          ("A small task not tuned on (256 images of 10x10), MLP",
                           "small/")):
        groups = _group(results, prefix)
        if not groups:
            continue
        lines += [f"## {title}", "", "| run | seeds | " + " | ".join(cols) + " |",
                  "|---|---|" + "---|" * len(cols)]
        for name, rows in groups.items():
            lines.append(f"| {name} | {len(rows)} | "
                         + " | ".join(_stats(rows, c) for c in cols) + " |")
        lines.append("")
    curves = _group(results, "decoy/mlp/")
    if curves:
        lines += ["## Test accuracy per epoch (Decoy MNIST, MLP, mean over seeds)", "",
                  "| run | epoch 1 | 2 | 3 | 5 | 10 | 20 |", "|---|---|---|---|---|---|---|"]
        for name, rows in curves.items():
            per = [statistics.mean(r["accuracy_per_epoch"][e - 1] for r in rows
                                   if len(r["accuracy_per_epoch"]) >= e)
                   for e in (1, 2, 3, 5, 10, 20)]
            lines.append(f"| {name} | " + " | ".join(f"{p:.3f}" for p in per) + " |")
        lines.append("")
    from rlhf_hgt.feedback.files import write_bytes_atomic

    write_bytes_atomic(SUMMARY, "\n".join(lines).encode())
    print("\n".join(lines))
    runs = [(m, RUNS / f"decoy_mlp_{m}_0") for m in ("none", "rrr", "augment", "gate",
                                                    "random-mask")]
    runs = [(n, p) for n, p in runs if (p / "saliency_examples.npz").exists()]
    if runs:
        from rlhf_hgt.attention.pictures import compare_grid

        compare_grid(runs, GRID)
        print(f"wrote {GRID}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["decoy", "fraction", "weight", "clean", "gaze",
                                         "noise", "unseen", "small", "ink", "flips",
                                         "report"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args(argv)
    if args.what == "report":
        report()
    else:
        globals()[args.what](args.seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
