"""``rlhf-hgt attention compare RUN_DIR ... --out DIR``: the runs side by side, as a table
(``compare.md``, ``compare.json``) and a picture of where each run's model looks
(``saliency_grid.png``: the same test images for every run)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from rlhf_hgt.feedback.errors import UserInputError

COLUMNS = ("method", "arch", "data", "seed", "epochs", "guidance_weight", "mask_fraction",
           "mask_noise", "test_accuracy", "train_accuracy", "saliency_mass_in_mask", "topk_iou",
           "pointing_game", "rank_correlation", "decoy_saliency_share", "nss", "cc",
           "kl_divergence", "similarity", "wall_s")


def read_run(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserInputError(f"{folder}: no metrics.json; give the --out folder of "
                             "`rlhf-hgt attention train`") from None
    except json.JSONDecodeError as exc:
        raise UserInputError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if "test_accuracy" not in metrics or "method" not in metrics:
        raise UserInputError(f"{path}: not the metrics of an attention run (no test_accuracy "
                             "or method)")
    return metrics


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def compare(runs: list[Path], out: Path) -> list[dict[str, Any]]:
    """Write the table and the picture grid of ``runs`` into ``out``; returns the rows."""
    from rlhf_hgt.attention.pictures import EXAMPLES_FILE, compare_grid
    from rlhf_hgt.feedback.files import write_bytes_atomic, write_json_atomic

    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out}: exists and is not a folder; give a folder for "
                             "compare.md, compare.json and saliency_grid.png")
    rows = [{"run": str(r), **{k: read_run(r).get(k) for k in COLUMNS}} for r in runs]
    shapes = {tuple(np.load(Path(r) / EXAMPLES_FILE)["x"].shape[1:]) for r in runs
              if (Path(r) / EXAMPLES_FILE).is_file()}
    out.mkdir(parents=True, exist_ok=True)
    head = ["run", *COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cell(row[k]) for k in head) + " |" for row in rows]
    write_bytes_atomic(out / "compare.md", ("\n".join(lines) + "\n").encode())
    write_json_atomic(out / "compare.json", rows)
    with_pictures = [(f"{Path(r).name}", Path(r)) for r in runs
                     if (Path(r) / EXAMPLES_FILE).is_file()]
    if with_pictures and len(shapes) == 1:  # one grid only for runs on images of one size
        compare_grid(with_pictures, out / "saliency_grid.png")
    return rows
