"""Parts shared by the run report and the model card: who guided the model and how, the
agreement, the gold checks, the oversight acts, the headline numbers and the training
record. Each returns document blocks (:mod:`rlhf_hgt.governance.doc`); no plotting here.
"""

from __future__ import annotations

import time
from typing import Any

from rlhf_hgt.governance.doc import Block, Bullets, Code, Para, Table, fmt
from rlhf_hgt.governance.run_info import RunInfo

#: kind -> (metric key, what it is), the numbers a reader looks at first
HEADLINE: dict[str, list[tuple[str, str]]] = {
    "control": [("true_return_mean", "true return (the env's own reward, hidden from the "
                                     "learner)"),
                ("true_return_std", "true return, standard deviation"),
                ("random_return_mean", "random policy's return"),
                ("start_return_mean", "return before training"),
                ("reward_model_accuracy", "reward model held-out pairwise accuracy"),
                ("labels", "labels used"), ("timesteps", "agent timesteps"),
                ("eval_episodes", "evaluation episodes"), ("mark_share", "reward's share "
                                                                         "outside the marks")],
    "lm reward": [("reward_model_accuracy", "held-out pairwise accuracy"),
                  ("eval_pairs", "held-out pairs"), ("eval_loss", "held-out loss"),
                  ("train_pairs", "training pairs"), ("train_loss", "training loss"),
                  ("steps", "optimiser steps"), ("base_model", "base model"),
                  ("lora_r", "LoRA rank")],
    "lm dpo": [("implicit_reward_accuracy", "held-out implicit-reward accuracy"),
               ("eval_loss", "held-out loss"), ("train_loss", "training loss"),
               ("steps", "optimiser steps"), ("beta", "beta"), ("pairs", "pairs")],
    "lm ppo": [("score_first", "score, first updates"), ("score_last", "score, last updates"),
               ("score_gain", "score gain"), ("steps", "PPO updates"),
               ("reward", "reward"), ("prompts", "prompts")],
    "lm online": [("eval_score_initial", "held-out prompts' score before training"),
                  ("eval_score_final", "held-out prompts' score after training"),
                  ("reward_model_accuracy", "reward model held-out accuracy"),
                  ("implicit_reward_accuracy", "DPO held-out implicit-reward accuracy"),
                  ("labels", "labels"), ("rounds", "rounds")],
    "attention": [("test_accuracy", "test accuracy"), ("train_accuracy", "training accuracy"),
                  ("saliency_mass_in_mask", "saliency mass inside the human mask"),
                  ("decoy_saliency_share", "saliency share on the decoy"),
                  ("outside_swap_flip_rate", "predictions flipped by swapping unmarked "
                                             "pixels"),
                  ("pointing_game", "pointing game"), ("topk_iou", "top-k IoU")],
}

WHAT = {"control": "a control policy trained from preferences over clips",
        "lm reward": "a language-model reward model learned from preference pairs",
        "lm dpo": "a language-model policy trained on preference pairs with DPO",
        "lm ppo": "a language-model policy trained with PPO against a reward",
        "lm online": "a language-model policy from the online preference loop",
        "attention": "an image classifier trained with human attention guidance",
        "unknown": "a model (the run's kind was not recognised)"}


def when(at: float | None) -> str:
    return "–" if at is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def subject(info: RunInfo) -> str:
    """One line: what was trained, on what."""
    cfg, m = info.config, info.metrics
    if info.kind == "control":
        return (f"{cfg.get('algo') or m.get('algo') or 'ppo'} policy on "
                f"`{m.get('env_id') or cfg.get('env_id')}`, teacher "
                f"`{m.get('teacher') or cfg.get('teacher')}`, seed {fmt(cfg.get('seed'))}")
    if info.kind == "attention":
        return (f"{m.get('arch') or cfg.get('arch')} on `{m.get('data') or cfg.get('data')}`, "
                f"guidance `{m.get('method') or cfg.get('method')}`, seed {fmt(cfg.get('seed'))}")
    model = m.get("model") or cfg.get("model") or m.get("base_model")
    return f"`{model}` ({info.kind})" if model else info.kind


# ----------------------------------------------------------------------------- guidance


def annotator_rows(info: RunInfo) -> list[list[Any]]:
    rows = []
    for name, a in info.annotators.items():
        v, g = a["by_value"], a["gold"]
        gold = f"{g['accuracy']:.2f} on {g['answers']}" if g["answers"] else "–"
        rows.append([f"`{name}`", "synthetic teacher" if a["synthetic"] else "person",
                     a["answers"], v["left"], v["right"], v["tie"], v["skip"],
                     a["median_seconds_per_label"], gold])
    return rows


ANNOTATOR_HEADER = ["annotator", "kind", "answers", "left", "right", "tie", "skip",
                    "median s/label", "gold accuracy"]


def label_kinds(info: RunInfo) -> list[list[Any]]:
    """Counts of each kind of guidance: comparisons, ties, skips, reasons, marks."""
    s = info.stats or {}
    a = s.get("answers") or {}
    by = a.get("by_value") or {}
    rows: list[list[Any]] = []
    if a:
        rows += [["comparisons (left/right)", by.get("left", 0) + by.get("right", 0)],
                 ["ties", by.get("tie", 0)], ["skips", by.get("skip", 0)],
                 ["answers by people / by synthetic teachers",
                  f"{a.get('human', 0)} / {a.get('synthetic', 0)}"],
                 ["undone answers (not used)", a.get("undone", 0)]]
        by_kind = a.get("by_kind") or {}
        rows += [[f"answers on {k} queries", n] for k, n in by_kind.items() if n]
    if info.reasons.get("features"):
        rows.append(["answers with feature marks (the observation features that decided)",
                     info.reasons["features"]])
    if info.reasons.get("highlights"):
        rows.append(["answers with word highlights", info.reasons["highlights"]])
    marks = info.marks
    if marks.get("total") or marks.get("skipped"):
        rows.append([f"attention marks on images ({', '.join(marks.get('datasets') or [])})",
                     marks["total"]])
        rows.append(["images skipped by markers", marks.get("skipped", 0)])
    timed = sum(len(v) for v in info.durations.values())
    if timed:
        rows.append(["answers with a response time", timed])
    return rows


def marks_rows(info: RunInfo) -> list[list[Any]]:
    return [[f"`{n}`", "synthetic" if m["synthetic"] else "person", m["marks"], m["skips"],
             m["median_seconds_per_mark"]]
            for n, m in (info.marks.get("by_annotator") or {}).items()]


def agreement_text(info: RunInfo) -> str:
    if info.stats is None:
        return "Agreement: not measured (no store)."
    ag = info.stats["agreement"]
    if ag["method"] is None:
        return ("Agreement: not measured: no query was answered (left, right or tie) by two "
                "annotators.")
    name = "Cohen's kappa" if ag["method"] == "cohen_kappa" else "Krippendorff's alpha"
    return (f"Agreement over {ag['queries']} queries answered by {len(ag['annotators'])} "
            f"annotators: {name} **{fmt(ag['value'], 3)}**, observed agreement "
            f"{fmt(ag['observed_agreement'], 3)}.")


def gold_text(info: RunInfo) -> str:
    if info.stats is None:
        return "Gold queries: none (no store)."
    gold = info.stats["gold"]
    if not gold["queries"]:
        return "Gold queries: none; the answers were never checked against known answers."
    o = gold["overall"]
    return (f"Gold queries: {gold['queries']} ({gold['queries_answered']} answered); answers "
            f"matching gold **{fmt(o['accuracy'], 3)}** of {o['answers']} ({o['skipped']} "
            f"skipped; exact match).")


def attention_source(info: RunInfo) -> str | None:
    """Where an attention run's maps came from (None for other runs)."""
    if info.kind != "attention":
        return None
    cfg, m = info.config, info.metrics
    method = m.get("method") or cfg.get("method")
    data = str(m.get("data") or cfg.get("data") or "")
    if method == "none":
        return "no attention guidance (class labels only)"
    if method == "random-mask":
        return "random masks of the same area (a control arm, not human attention)"
    if cfg.get("marks"):
        text = f"marks given at the terminal (`rlhf-hgt attention mark`), store `{cfg['marks']}`"
    elif data in ("decoy-mnist", "mnist"):
        text = "masks computed from the digits (bounding box), not drawn by people"
    else:
        text = f"the maps in the data file `{data}` (who drew them is not recorded)"
    if cfg.get("synthetic_gaze"):
        text += f", as synthetic gaze ({cfg['synthetic_gaze']} fixations per map)"
    if m.get("masked_train_images") is not None:
        text += f"; {m['masked_train_images']} training images carried a map"
    return text


def guidance_blocks(info: RunInfo, detail: bool = True) -> list[Block]:
    """Who guided the model, how, how far they agreed."""
    blocks: list[Block] = []
    source = attention_source(info)
    if source:
        blocks.append(Para(f"Attention guidance: {source}."))
    if info.stats is not None:
        where = f"`{info.store}`"
        blocks.append(Para(f"From the preference store {where}: {info.labels} active answers "
                           f"by {len(info.annotators)} annotator(s)."))
        if info.annotators:
            blocks.append(Table(ANNOTATOR_HEADER, annotator_rows(info)))
        rows = marks_rows(info)
        if rows:
            blocks.append(Table(["marker", "kind", "marks", "skips", "median s/mark"], rows,
                                caption="attention marks on images"))
        kinds = label_kinds(info)
        if kinds and detail:
            blocks.append(Table(["kind of guidance", "count"], kinds))
        blocks += [Para(agreement_text(info)), Para(gold_text(info))]
        teachers = teacher_lines(info)
        if teachers:
            blocks.append(Bullets(teachers))
    elif info.file_annotators is not None:
        rows = [[f"`{n}`", c] for n, c in sorted(info.file_annotators.items())]
        blocks.append(Para(f"From the data file `{info.data_file}` (no store): the annotators "
                           f"it names."))
        blocks.append(Table(["annotator (as in the file)", "pairs"], rows))
    elif source is None:
        blocks.append(Para(f"No labels recorded with this run: {info.store_note or 'no store'}."))
    if info.stats is not None and info.store_note:
        blocks.append(Para(f"Note: {info.store_note}."))
    return blocks


def teacher_lines(info: RunInfo) -> list[str]:
    cfg = info.config
    lines = []
    teacher = cfg.get("teacher") or info.metrics.get("teacher")
    if teacher in ("human", "external"):
        lines.append(f"People answered (the run's teacher: `{teacher}`)")
    elif teacher:
        model = cfg.get("teacher_model")
        lines.append(f"Teacher asked for by the run: `{teacher}`"
                     + (f" (answers by `{model}`)" if model else ""))
    for name, n in sorted(info.teachers.items()):
        lines.append(f"Synthetic teacher `{name}` gave {n} answers (store events)")
    return lines


# ----------------------------------------------------------------------------- oversight


#: checkpoint: a rollback's target, or the one a reject rejected
OVERSIGHT_HEADER = ["when", "act", "by", "reason", "checkpoint"]


def oversight_blocks(info: RunInfo) -> list[Block]:
    if not info.oversight:
        return [Para("No oversight acts recorded (pause, resume, stop, reject, rollback: "
                     "`rlhf-hgt oversee RUN_DIR ACT --reason TEXT`).")]
    rows = []
    for e in info.oversight:
        d = e.get("data") or {}
        rows.append([when(e.get("at")), d.get("act") or "?", d.get("by") or e.get("annotator"),
                     d.get("reason") or "–", d.get("to") or d.get("checkpoint")])
    return [Table(OVERSIGHT_HEADER, rows)]


# ----------------------------------------------------------------------------- numbers


def headline_rows(info: RunInfo) -> list[list[Any]]:
    m = info.metrics
    rows = [[label, m[key]] for key, label in HEADLINE.get(info.kind, []) if key in m]
    final = m.get("final")
    if info.kind == "lm ppo" and isinstance(final, dict):
        rows += [["final KL to the reference", final.get("kl_k1")]]
    return rows


def scalar_rows(metrics: dict[str, Any]) -> list[list[Any]]:
    """Every number or short value in metrics.json (one level of nested objects)."""
    rows: list[list[Any]] = []
    for key, value in metrics.items():
        if isinstance(value, dict):
            rows += [[f"{key}.{k}", v] for k, v in value.items()
                     if isinstance(v, int | float | str | bool) or v is None]
        elif isinstance(value, int | float | str | bool) or value is None:
            rows.append([key, value])
        elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            rows.append([key, "; ".join(value)])
    return rows


def training_blocks(info: RunInfo, detail: bool = True) -> list[Block]:
    """The record of the run: command, code, versions, data and checkpoint hashes, config."""
    man = info.manifest
    if not man:
        return [Para("No manifest.json: config, versions and data hashes were not recorded.")]
    git = man.get("git") or {}
    rev = git.get("revision")
    rows: list[list[Any]] = [
        ["command", "`" + " ".join(str(c) for c in man.get("command") or []) + "`"],
        ["written", man.get("written_at")],
        ["git revision", f"`{rev}`" + (" (uncommitted changes)" if git.get("dirty") else "")
         if rev else "not recorded"],
        ["seed", man.get("seed")], ["python", man.get("python")],
        ["platform", man.get("platform")], ["threads", man.get("threads")],
    ]
    packages = ", ".join(f"{k} {v}" for k, v in (man.get("packages") or {}).items() if v)
    rows.append(["packages", packages])
    blocks: list[Block] = [Table(["what", "value"], rows)]
    data = man.get("data") or {}
    if data:
        blocks.append(Table(["data", "path", "sha256"],
                            [[k, f"`{v.get('path')}`", f"`{v.get('sha256')}`"]
                             for k, v in data.items()], caption="data hashes"))
    ckpts = man.get("checkpoints") or {}
    if ckpts and detail:
        blocks.append(Table(["checkpoint file", "sha256"],
                            [[f"`{k}`", f"`{v}`"] for k, v in ckpts.items()],
                            caption="checkpoint hashes (at the time the manifest was written)"))
    if detail:
        import json

        blocks.append(Code(json.dumps(info.config, indent=2, default=str),
                           summary="the run's full config", lang="json"))
    return blocks
