"""``rlhf-hgt attention train|mark|compare``: human attention in training.

    rlhf-hgt attention train --data DATA --method METHOD --out RUN_DIR [--arch mlp|cnn] ...
    rlhf-hgt attention mark STORE --data DATA [--limit N] [--annotator NAME]
    rlhf-hgt attention compare RUN_DIR [RUN_DIR ...] --out DIR

``train``'s flags come from :class:`rlhf_hgt.attention.train.AttentionConfig`, ``mark``'s
from :class:`rlhf_hgt.feedback.mark_terminal.MarkOptions`. ``mark`` stays light (numpy,
no torch): the data module reads images with numpy alone.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlhf_hgt.cli.flags import Section, add_sections, build, sections

COMMANDS = {
    "train": ("train an image classifier with (or without) human attention guidance",
              "none (baseline), augment (data), gate (architecture), rrr / gradcam / gaze-kl "
              "(loss), random-mask (the control arm); reports accuracy and alignment of the "
              "model's saliency with the human maps"),
    "mark": ("mark where the evidence is on each image, at the terminal",
             "a grid over each image; marked cells are saved at once with their provenance "
             "and feed `attention train --marks STORE`"),
    "compare": ("runs side by side: a table and a saliency picture grid",
                "reads each RUN_DIR's metrics.json and saliency examples"),
}


def train_sections() -> list[Section]:
    from rlhf_hgt.attention.train import AttentionConfig

    return sections(AttentionConfig, titles={"": "attention training"})


def mark_sections() -> list[Section]:
    from rlhf_hgt.feedback.mark_terminal import MarkOptions

    return sections(MarkOptions, titles={"": "marking"})


def add(parser: argparse.ArgumentParser, argv: Sequence[str] = (),
        everything: bool = False) -> None:
    from rlhf_hgt.cli import add_subcommands

    add_subcommands(parser, "attention_cmd", COMMANDS, argv, everything, fill)


def fill(p: argparse.ArgumentParser, name: str) -> None:
    if name == "train":
        add_sections(p, train_sections())
        p.add_argument("--quiet", action="store_true", help="no progress output")
    elif name == "mark":
        p.add_argument("store", metavar="STORE", help="the preference store for the marks")
        p.add_argument("--data", required=True, metavar="DATA",
                       help="decoy-mnist, mnist or an .npz with x_train (the images to "
                            "mark: the training images)")
        add_sections(p, mark_sections())
    else:
        p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="attention train runs")
        p.add_argument("--out", required=True, metavar="DIR",
                       help="where compare.md, compare.json and saliency_grid.png go")


def run(args: argparse.Namespace) -> int:
    if args.attention_cmd == "mark":
        return run_mark(args)
    if args.attention_cmd == "compare":
        from rlhf_hgt.attention.compare import compare

        rows = compare([Path(r) for r in args.runs], Path(args.out))
        for row in rows:
            print(f"{row['method']:>12}  test accuracy {row['test_accuracy']:.3f}  "
                  f"saliency in mask {_fmt(row['saliency_mass_in_mask'])}  ({row['run']})")
        print(f"wrote {args.out}/compare.md, compare.json, saliency_grid.png")
        return 0
    return run_train(args)


def _fmt(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def run_train(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console(stderr=True, quiet=args.quiet)
    cfg = build(args, train_sections())
    with console.status("loading the data and the attention stack…"):
        from rlhf_hgt.attention.train import run_attention

    def progress(event: str, info: dict[str, Any]) -> None:
        every = max(1, info.get("epochs", 1) // 20)  # a small data set runs many passes
        if event == "epoch" and (info["epoch"] % every == 0 or info["epoch"] == info["epochs"]):
            console.print(f"epoch {info['epoch']}/{info['epochs']}  test accuracy "
                          f"{info['test_accuracy']:.3f}  loss {info['train_loss']:.3f}")
        elif event == "warning":
            Console(stderr=True).print(f"[yellow]warning[/]: {info['message']}")

    from rlhf_hgt.cli.run_keys import oversight_keys

    with oversight_keys(cfg.out, console):  # p, r, s at this terminal
        m = run_attention(cfg, progress)
    # the result is shown with --quiet too (it hides progress only)
    Console(stderr=True).print(
        f"[bold]{cfg.method}[/] ({cfg.arch}) on {m['data']}: test accuracy "
        f"{m['test_accuracy']:.3f}, train {m['train_accuracy']:.3f}, saliency in mask "
        f"{_fmt(m.get('saliency_mass_in_mask'))}, top-k IoU {_fmt(m.get('topk_iou'))}, flip "
        f"rate {_fmt(m.get('outside_swap_flip_rate'))} ({m['epochs']} passes, "
        f"{m['wall_s']:.0f}s) → {cfg.out}")
    return 0


def run_mark(args: argparse.Namespace) -> int:
    from rlhf_hgt.attention.data import load_data
    from rlhf_hgt.feedback.mark_terminal import run_marking

    data = load_data(args.data)
    return run_marking(args.store, data.x_train, data.dataset_id,
                       build(args, mark_sections()))
