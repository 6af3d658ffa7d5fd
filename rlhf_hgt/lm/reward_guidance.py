"""What people give beside their choice, used by the language reward model: the words that
decided (highlights) and how long they took (response times).

Highlights (``--highlight-weight W``). A pair may carry ``chosen_highlights`` /
``rejected_highlights``: ``[start, end)`` offsets, in Python ``str`` characters, into the
chosen / rejected response text (JSON text such as ``"[[0, 5]]"``, a list, or ``"[]"`` /
None for none). The reward model's attribution is its input gradient: the gradient of the
reward with respect to the token embeddings (the output of the input embedding layer), taken
with ``create_graph=True`` so that training differentiates through it (double backprop
through the LoRA model). Its energy per token is the squared gradient summed over the
embedding dimension. For every side with highlights the penalty is the share of that energy,
over the response's tokens, that lies on tokens outside the highlights ("Right for the
Right Reasons", Ross et al. 2017, as a share: :func:`rlhf_hgt.penalties.outside_share`,
the core control and image guidance use too); prompt, template, end and padding tokens count
neither way. The loss adds ``W`` times the mean share over the sides with highlights in the
batch; a batch without highlights trains exactly as before (no second backward).

Characters become tokens through the tokenizer's ``offset_mapping``: the response is found
in the text the model reads (``prompt + response``, or the chat template around it; the last
occurrence), and a token belongs to the response, or to a highlight, when its character
span overlaps it (a token that straddles a highlight's edge counts as highlighted). A side
whose response cannot be found in that text or whose highlighted tokens were all cut by
``max_length`` trains without the penalty and is counted in ``highlight_sides_unplaced``.
Conversational pairs are re-formatted in the model's chat template before encoding
(:func:`rlhf_hgt.lm.data.format_conversations`, which moves their spans along).

Response times (``--time-weighting``): the ``seconds`` column (NaN when unknown) becomes a
per-comparison confidence, ranked within each annotator (:mod:`rlhf_hgt.confidence`), used
as the pair's weight in the Bradley–Terry loss or as a soft target.

A column that is absent means "no highlights" / "no times".
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from rlhf_hgt.confidence import apply_confidence, time_confidence
from rlhf_hgt.feedback.errors import UserInputError
from rlhf_hgt.penalties import outside_share

__all__ = ["DEFAULT_HIGHLIGHT_WEIGHT", "HIGHLIGHTED", "NOT_COUNTED", "OUTSIDE", "EmbeddingTap",
           "attribution_shares", "highlight_share", "locate_response", "parse_spans", "plan",
           "run_summary", "spans_of", "time_weighting", "token_marks"]

log = logging.getLogger(__name__)

#: The penalty's weight when the pairs carry highlights and --highlight-weight is not given.
#: PROVISIONAL: chosen on the tiny in-memory model (see LMRewardConfig.highlight_weight's
#: help for the measurement); to be re-measured with SmolLM2 on decoy text
#: (scripts/bench_lm_guidance.py decoy --weights ...).
DEFAULT_HIGHLIGHT_WEIGHT = 10.0

#: Token marks: not a response token (prompt, template, end, padding) / a response token
#: outside the highlights / a highlighted response token.
NOT_COUNTED, OUTSIDE, HIGHLIGHTED = 0, 1, 2


# --------------------------------------------------------------------------- spans


def parse_spans(cell: Any, where: str = "highlights") -> list[tuple[int, int]]:
    """A highlights cell as sorted ``(start, end)`` tuples: JSON text, a list of pairs, or
    None / "" / "[]" (none)."""
    if cell is None:
        return []
    if isinstance(cell, str):
        if not cell.strip():
            return []
        try:
            cell = json.loads(cell)
        except json.JSONDecodeError:
            raise UserInputError(f"{where}: {cell[:40]!r} is not JSON; give a list of [start, "
                                 "end] character offsets, e.g. [[0, 5]]") from None
    if not isinstance(cell, list | tuple):
        raise UserInputError(f"{where}: expected a list of [start, end] spans, got "
                             f"{type(cell).__name__}")
    out = []
    for span in cell:
        if (not isinstance(span, list | tuple) or len(span) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in span)
                or not 0 <= span[0] < span[1]):
            raise UserInputError(f"{where}: {span!r} is not a [start, end) span of whole "
                                 "numbers with 0 <= start < end")
        out.append((int(span[0]), int(span[1])))
    return sorted(out)


def spans_of(ds: Any, side: str) -> list[list[tuple[int, int]]]:
    """Per row, the ``side`` ("chosen" or "rejected") highlights; empty when the column is
    absent."""
    name = f"{side}_highlights"
    if name not in ds.column_names:
        return [[] for _ in range(len(ds))]
    return [parse_spans(c, f"pair {i + 1}, {name}") for i, c in enumerate(ds[name])]


def locate_response(text: str, response: str) -> int | None:
    """Where ``response`` starts in the formatted ``text`` (its last occurrence; a template
    that strips the response's outer whitespace is allowed for), or None."""
    at = text.rfind(response)
    if at >= 0:
        return at
    stripped = response.strip()
    if stripped and stripped != response:
        at = text.rfind(stripped)
        if at >= 0:  # offsets count in the unstripped response
            return at - (len(response) - len(response.lstrip()))
    return None


def token_marks(offsets: Sequence[tuple[int, int]], start: int, length: int,
                spans: Sequence[tuple[int, int]]) -> list[int]:
    """Per token (``offsets``: character spans in the formatted text), NOT_COUNTED, OUTSIDE
    or HIGHLIGHTED, for a response of ``length`` characters at ``start`` whose highlights
    are ``spans`` (offsets into the response). A token counts where its span overlaps."""
    end = start + length
    moved = [(start + s, start + e) for s, e in spans]
    marks = []
    for a, b in offsets:
        if b <= a or b <= start or a >= end:  # special tokens have empty spans
            marks.append(NOT_COUNTED)
        elif any(a < e and b > s for s, e in moved):
            marks.append(HIGHLIGHTED)
        else:
            marks.append(OUTSIDE)
    return marks


# --------------------------------------------------------------------------- penalty


class EmbeddingTap:
    """Keeps the output of a model's input embedding layer during a forward pass, made to
    require grad, so that the reward's gradient with respect to the token embeddings can be
    taken (double backprop). Inside the tap, scaled-dot-product attention uses its plain
    math kernel: the fused CPU and GPU kernels have no second derivative.

        with EmbeddingTap(model) as tap:
            scores = model(input_ids=..., attention_mask=...).logits
        grad = torch.autograd.grad(scores.sum(), tap.embeds, create_graph=True)
    """

    def __init__(self, model: Any, active: bool = True):
        self.model, self.active = model, active
        self.embeds: torch.Tensor | None = None
        self._stack = contextlib.ExitStack()

    def _hook(self, module: Any, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        if not output.requires_grad:  # a frozen embedding (LoRA): make the output a leaf
            output = output.detach().requires_grad_(True)
        self.embeds = output
        return output

    def __enter__(self) -> EmbeddingTap:
        if self.active:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            handle = self.model.get_input_embeddings().register_forward_hook(self._hook)
            self._stack.callback(handle.remove)
            self._stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()


def highlight_share(scores: torch.Tensor, embeds: torch.Tensor, marks: torch.Tensor
                    ) -> tuple[torch.Tensor, int]:
    """(mean share of the reward's input-gradient energy on response tokens outside the
    highlights, over the sequences that have highlights; their number). ``scores`` (N,)
    rewards computed from ``embeds`` (N, T, D); ``marks`` (N, T) of NOT_COUNTED / OUTSIDE /
    HIGHLIGHTED. Differentiable in the model's parameters; 0 (and 0) without highlights."""
    has = (marks == HIGHLIGHTED).any(1)
    n = int(has.sum())
    if n == 0:
        return scores.new_zeros(()), 0
    (grad,) = torch.autograd.grad(scores[has].sum(), embeds, create_graph=True)
    energy = grad[has].float().square().sum(-1) * (marks[has] != NOT_COUNTED)
    return outside_share(energy, marks[has] == HIGHLIGHTED).mean(), n


def attribution_shares(model: Any, batches: Iterator[tuple[torch.Tensor, torch.Tensor,
                                                           torch.Tensor]]) -> list[float]:
    """Per sequence with highlights, the share of the reward's input-gradient energy on its
    response tokens outside them (an evaluation: no graph kept). ``batches`` yields
    (input_ids, attention_mask, marks) on the model's device."""
    out: list[float] = []
    was_training = model.training
    model.eval()
    try:
        for input_ids, mask, marks in batches:
            with EmbeddingTap(model) as tap:
                scores = model(input_ids=input_ids, attention_mask=mask,
                               use_cache=False).logits[:, 0].float()
            has = (marks == HIGHLIGHTED).any(1)
            if not has.any():
                continue
            (grad,) = torch.autograd.grad(scores[has].sum(), tap.embeds)
            energy = grad[has].float().square().sum(-1) * (marks[has] != NOT_COUNTED)
            out.extend(outside_share(energy, marks[has] == HIGHLIGHTED).tolist())
    finally:
        model.train(was_training)
    return out


# --------------------------------------------------------------------------- response times


def time_weighting(ds: Any, targets: Sequence[float], mode: str, floor: float
                   ) -> tuple[list[float], list[float], dict[str, Any]]:
    """(targets, weights, summary) of the pairs ``ds`` with their response times (column
    ``seconds``, NaN when unknown; absent: no times) turned into confidence per annotator
    (column ``annotator``; absent: one annotator). ``summary`` is what metrics.json
    records: how many pairs had a time and the spread of the confidence."""
    n = len(targets)
    seconds = (np.asarray([math.nan if s is None else float(s) for s in ds["seconds"]], float)
               if "seconds" in ds.column_names else np.full(n, math.nan))
    who = (list(ds["annotator"]) if "annotator" in ds.column_names else [""] * n)
    conf = time_confidence(seconds, [w or "" for w in who], floor=floor) if n else np.ones(0)
    new_targets, weights = apply_confidence(targets, conf, mode)
    timed = np.isfinite(seconds) & (seconds >= 0)
    ranked = conf < 1.0
    summary: dict[str, Any] = {
        "mode": mode, "floor": floor, "pairs": n, "timed_pairs": int(timed.sum()),
        "annotators": len(set(who)), "timed_annotators": len({w for w, t in zip(who, timed,
                                                                                strict=True)
                                                               if t}),
        "pairs_below_full_confidence": int(ranked.sum()),
    }
    if n:
        summary.update({
            "confidence_mean": float(conf.mean()), "confidence_std": float(conf.std()),
            "confidence_min": float(conf.min()),
            "confidence_quartiles": [float(q) for q in np.quantile(conf, [0.25, 0.5, 0.75])],
            "seconds_median": float(np.median(seconds[timed])) if timed.any() else None,
        })
    return [float(t) for t in new_targets], [float(w) for w in weights], summary


# --------------------------------------------------------------------------- one run


def plan(ds: Any, targets: Sequence[float], highlight_weight: float | None,
         time_weighting_on: bool, mode: str, floor: float) -> dict[str, Any]:
    """What a training run does with the pairs' highlights and times: the highlight weight in
    use (``highlight_weight``, or unset: DEFAULT_HIGHLIGHT_WEIGHT when some pair has
    highlights, else 0), the targets and weights (time weighting), and their summary."""
    spans = spans_of(ds, "chosen"), spans_of(ds, "rejected")
    n_pairs = sum(bool(c or r) for c, r in zip(*spans, strict=True))
    weight = (float(highlight_weight) if highlight_weight is not None
              else DEFAULT_HIGHLIGHT_WEIGHT if n_pairs else 0.0)
    warnings = []
    if weight > 0 and not n_pairs:
        warnings.append(f"--highlight-weight {weight:g}: no training pair has highlights "
                        "(chosen_highlights / rejected_highlights); trained without the penalty")
    out: dict[str, Any] = {"highlight_weight": weight, "highlighted_pairs": n_pairs,
                           "targets": list(targets), "weights": None, "time_weighting": None,
                           "warnings": warnings}
    if time_weighting_on:
        out["targets"], out["weights"], out["time_weighting"] = time_weighting(
            ds, targets, mode, floor)
        if not out["time_weighting"]["timed_pairs"]:
            warnings.append("--time-weighting: no training pair has a response time (column "
                            "seconds); every pair keeps confidence 1")
    return out


def run_summary(plan: dict[str, Any], log_history: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The plan's numbers for metrics.json, with the highlight share the trainer logged at
    its first and last log; its warnings are logged too."""
    out = {k: v for k, v in plan.items() if k not in ("targets", "weights")}
    shares = [h["highlight_share"] for h in log_history if "highlight_share" in h]
    out["highlight_share_first_log"] = shares[0] if shares else None
    out["highlight_share_last_log"] = shares[-1] if shares else None
    for warning in out["warnings"]:
        log.warning(warning)
    return out
