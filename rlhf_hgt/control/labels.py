"""What the learner learns from: every stored answer to this task's clips, with the reasons
and confidence people gave with it.

For each active answer to a segment query of the task: the two clips, the target (1 left,
0 right, 0.5 tie), and two optional extras:

- time weighting (``--time-weighting``): the answer's response time, ranked among its
  annotator's times, becomes a confidence (:mod:`rlhf_hgt.confidence`), used as the pair's
  weight in the Bradley–Terry loss or as a soft target;
- feature marks: the features a person marked for this pair at the prompt (a ``reasons``
  event stored with the answer) replace the task's ``--feature-marks`` for that pair. A
  pair with neither is not penalised (its keep mask is all ones).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rlhf_hgt.confidence import apply_confidence, time_confidence
from rlhf_hgt.control.config import DEFAULT_MARK_WEIGHT, ControlConfig
from rlhf_hgt.feedback.errors import UserInputError
from rlhf_hgt.feedback.store import PreferenceStore
from rlhf_hgt.preference import answers_to_targets


@dataclass
class StoredLabels:
    """The pairs, their targets, and what the loss does with each (see the module doc)."""

    left: list[dict[str, np.ndarray]]
    right: list[dict[str, np.ndarray]]
    targets: np.ndarray  # (n,) P(left preferred); NaN-free; skips already dropped
    weights: np.ndarray | None = None  # (n,) per-pair loss weights (time weighting)
    marks: np.ndarray | None = None  # (n, F) keep masks (1 = a feature that decides)
    mark_weight: float = 0.0
    summary: dict[str, Any] | None = None  # what the extras did, for metrics.json
    answer_ids: list[int] = field(default_factory=list)  # the store ids, in the same order

    def __len__(self) -> int:
        return len(self.targets)

    def extras(self) -> dict[str, Any]:
        """The keyword arguments of ``PreferenceLearner.fit`` in use (none by default, so a
        learner written before them keeps working)."""
        out: dict[str, Any] = {}
        if self.weights is not None:
            out["weights"] = self.weights
        if self.marks is not None:  # weight 0 measures the share outside them, no penalty
            out |= {"marks": self.marks, "mark_weight": self.mark_weight}
        return out


def stored_labels(store: PreferenceStore, cfg: ControlConfig,
                  task_keep: np.ndarray | None = None) -> StoredLabels:
    """Every active (non-skip) answer to a segment query of ``cfg.task_id``, oldest first.
    ``task_keep`` is the keep mask (F,) of ``--feature-marks`` (None without)."""
    left, right, answers, seconds, who, ids = [], [], [], [], [], []
    for query, ans in store.labelled(kind="segment"):
        if query.env_id != cfg.task_id:
            continue
        left.append(query.left)
        right.append(query.right)
        answers.append(ans.answer)
        seconds.append(np.nan if ans.shown_at is None else ans.answered_at - ans.shown_at)
        who.append(ans.annotator)
        ids.append(ans.id)
    targets = answers_to_targets(answers)[0].numpy().astype(np.float64)
    labels = StoredLabels(left, right, targets, summary={}, answer_ids=ids)
    if cfg.time_weighting and len(targets):
        conf = time_confidence(seconds, who, floor=cfg.time_floor)
        labels.targets, labels.weights = apply_confidence(targets, conf,
                                                          cfg.time_weighting_mode)
        timed = np.isfinite(np.asarray(seconds, float))
        labels.summary["time_weighting"] = {
            "mode": cfg.time_weighting_mode, "floor": cfg.time_floor,
            "timed_pairs": int(timed.sum()), "pairs": len(targets),
            "confidence_mean": float(conf.mean()), "confidence_min": float(conf.min())}
    _add_marks(labels, store.reasons(), ids, cfg, task_keep)
    return labels


def _add_marks(labels: StoredLabels, reasons: dict[int, dict], ids: list[int],
               cfg: ControlConfig, task_keep: np.ndarray | None) -> None:
    """Per-pair keep masks from the marks people gave, the task's marks elsewhere."""
    marked = [(row, reasons[aid]["features"]) for row, aid in enumerate(ids)
              if "features" in reasons.get(aid, {})]
    if not marked or not labels.left:
        if task_keep is not None:
            labels.marks, labels.mark_weight = task_keep, cfg.marks_weight
        return
    n_features = int(np.asarray(labels.left[0]["obs"]).reshape(
        len(labels.left[0]["obs"]), -1).shape[1])
    keep = np.ones((len(ids), n_features), np.float32) if task_keep is None else \
        np.tile(np.asarray(task_keep, np.float32), (len(ids), 1))
    for row, features in marked:
        bad = [f for f in features if not (isinstance(f, int) and 0 <= f < n_features)]
        if bad:
            raise UserInputError(f"{cfg.task_id}: a stored answer marks features {bad}, but "
                                 f"the observation has {n_features} (0-{n_features - 1}); "
                                 "the clips and the marks belong to different tasks?")
        if features:
            keep[row] = 0.0
            keep[row, features] = 1.0
    labels.marks = keep
    labels.mark_weight = cfg.marks_weight if cfg.feature_marks is not None else \
        DEFAULT_MARK_WEIGHT
    labels.summary["marked_pairs"] = sum(bool(f) for _, f in marked)

