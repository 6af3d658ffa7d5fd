"""The online preference loop for language models: sample → ask → refit → train, round after round.

Round ``r``:

1. gather: the current policy samples two responses per prompt (temperature sampling; a pair
   with identical or empty sides is skipped) and the pairs go into the store with
   ``round=r``; each side's source is the policy's id, ``"{run}:round{r}:{adapter hash}"``;
2. answers: a synthetic teacher (B-Pref's oracle or another, see ``teacher_model``) judges
   each pair on a score function (a built-in one of :mod:`rlhf_hgt.lm.scores`: VADER
   sentiment, or the response's length in words; or any function given to
   :func:`run_online`), annotator ``teacher:<model>(<score>)``; or a person answers in this
   terminal (``human``), or from another one with ``rlhf-hgt label STORE`` while the loop
   waits (``external``);
3. fit: PPO refits the reward model (TRL + LoRA, :func:`train_reward_model`) on ALL labelled
   text pairs of the store; DPO instead trains the policy's adapter on all of them
   (:func:`train_dpo`);
4. train (PPO): PPO updates on the round's prompts against the refit reward model, continuing
   the same adapter, value head, optimiser and KL coefficient (one :class:`LMPPOTrainer`
   for the whole run).

Memory: the policy is ONE base model (LoRA adapter, value head; the reference is the base
with the adapter off). The reward model is a second, sequence-classification model: a
fresh LoRA on its own copy of the base, trained each round, then reloaded for scoring (the
previous round's one is freed first). With DPO there is no reward model, but TRL holds a
frozen copy of the policy as it was at the start of the round (the reference of iterated
DPO) while it trains.

After every round the policy (:meth:`LMPPOTrainer.save`: adapter, value head, optimiser
moments as safetensors, PPO updates and KL coefficient), then
metrics.json, then state.json (atomically, the commit point) are written; a killed run
resumes after its last finished round, and the queries a round already asked are reused,
never asked again. Randomness is seeded per round, so a resumed run samples what an
unbroken one would have. Each round's folder ``checkpoints/roundNNNN`` also holds the loop's
state as it was then (``state.json``), so a person can roll the run back to it.

A person's hand (``rlhf-hgt oversee RUN_DIR pause|resume|stop|reject|rollback``,
:mod:`rlhf_hgt.governance.oversight`) is obeyed between rounds, while the loop waits for
answers, and between updates of the reward model, DPO and PPO: ``pause`` holds; ``stop`` ends
the round in progress early, writes its checkpoint and ends the run (metrics ``status``);
``reject`` drops the round in progress and goes back to the checkpoint the rejected one
started from (a fresh policy when there is none); ``rollback --to N`` drops it and goes
on from round N's kept checkpoint. Rounds trained again are kept as ``roundNNNN.G`` (G: how
many times the run went back), their queries asked anew; no checkpoint is overwritten.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlhf_hgt.feedback.annotators import default_annotator
from rlhf_hgt.feedback.errors import UserInputError
from rlhf_hgt.feedback.files import write_json_atomic
from rlhf_hgt.feedback.store import PreferenceStore, TextPair
from rlhf_hgt.governance import lineage
from rlhf_hgt.governance.card import write_cards, write_checkpoint_cards
from rlhf_hgt.governance.oversight import Overseer, parse_round
from rlhf_hgt.lm import online_checkpoints as kept
from rlhf_hgt.lm.online_config import OnlineConfig, default_ppo_config
from rlhf_hgt.lm.scores import BUILTIN_SCORES, make_score

__all__ = ["OnlineConfig", "adapter_hash", "default_ppo_config", "load_prompts",
           "round_prompts", "run_online"]

FORMAT = "rlhf_hgt.lm_online/1"
STATE_FILE = "state.json"
METRICS_FILE = "metrics.json"
CHECKPOINTS = "checkpoints"
REWARD_DIR = "checkpoints/reward"

ScoreFn = Callable[[str, str], float]
Progress = Callable[[str, dict[str, Any]], None]


def _quiet(event: str, info: dict[str, Any]) -> None:
    pass


# ----------------------------------------------------------------------------- inputs


def load_prompts(cfg: OnlineConfig) -> list[str]:
    """The distinct prompts of the run (file, store or list order)."""
    if isinstance(cfg.prompts, list):
        return list(dict.fromkeys(cfg.prompts))[:cfg.max_prompts]
    from rlhf_hgt.lm.data import read_prompts

    for flag, path in (("--prompts", cfg.prompts), ("--prompt-store", cfg.prompt_store)):
        if path is not None and not Path(path).is_file():
            raise UserInputError(f"{flag} {path}: no such file; check the path")
    return read_prompts(cfg.prompts, cfg.prompt_store, cfg.max_prompts)


def round_prompts(prompts: Sequence[str], per_round: int, rnd: int, seed: int) -> list[str]:
    """The prompts of round ``rnd``: consecutive slices of one seeded shuffle of all prompts
    (wrapping round), each prompt at most once per round. Depends on nothing but its
    arguments, so a resumed run asks about the same prompts."""
    order = list(range(len(prompts)))
    random.Random(f"online-prompts:{seed}").shuffle(order)
    k = min(per_round, len(prompts))
    return [prompts[order[(rnd * k + i) % len(order)]] for i in range(k)]


def adapter_hash(lm: Any) -> str:
    """A short hash of a model's LoRA weights: the version of the policy that wrote a query."""
    h = hashlib.sha256()
    for name, p in sorted(lm.named_parameters(), key=lambda kv: kv[0]):
        if "lora_" in name:
            h.update(name.encode())
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def _check_human_terminal() -> None:
    import sys

    for name, stream in (("stdin", sys.stdin), ("stdout", sys.stdout)):
        if stream is None or not stream.isatty():
            raise UserInputError(f"teacher human asks at this terminal, but {name} is not "
                                 "one; run in an interactive terminal, or use --teacher "
                                 "external and label with `rlhf-hgt label STORE`")


def _no_reward(prompt: str, response: str) -> float:
    raise RuntimeError("no reward model has been fitted yet")


def _mean(xs: Sequence[float]) -> float | None:
    return float(sum(xs) / len(xs)) if xs else None


# ----------------------------------------------------------------------------- the loop


def run_online(cfg: OnlineConfig, progress: Progress = _quiet,
               score_fn: ScoreFn | None = None) -> dict[str, Any]:
    """Run (or resume) the loop; returns the metrics written to RUN_DIR/metrics.json.

    ``progress(event, info)`` hears of each step (events: resume, gather, label, waiting,
    answers, fit, ppo_start, ppo_step, round, done). ``score_fn(prompt, response)`` is the
    synthetic teacher's score when ``cfg.teacher == "custom"``."""
    if (cfg.teacher == "custom") != (score_fn is not None):
        raise UserInputError("teacher custom needs score_fn=..., and a score_fn needs "
                             "teacher custom")
    loop = _Loop(cfg, progress, score_fn)
    try:
        return loop.run()
    finally:
        loop.close()


class _Loop:
    def __init__(self, cfg: OnlineConfig, progress: Progress, score_fn: ScoreFn | None):
        from rlhf_hgt.lm.processes import launched_by_accelerate

        if launched_by_accelerate():
            raise UserInputError("lm online runs in one process; start it without "
                                 "accelerate launch / torchrun")
        self.cfg, self.progress = cfg, progress
        self.out = Path(cfg.out)
        if self.out.exists() and not self.out.is_dir():
            raise UserInputError(f"--out {self.out}: exists and is not a folder; give a run "
                                 "directory")
        self.prompts = load_prompts(cfg)
        if cfg.teacher == "human":
            _check_human_terminal()
        self.teacher_fn = score_fn if score_fn is not None else (
            make_score(cfg.teacher) if cfg.teacher in BUILTIN_SCORES else None)
        self.monitor_fn = make_score(cfg.monitor) if cfg.monitor else self.teacher_fn
        from rlhf_hgt.lm.models import resolve_model_path

        resolve_model_path(cfg.model)  # an unknown model fails here, before any work
        self.state = self._read_state()
        self.store: Any = None  # opened once the policy is built: a bad setting writes nothing
        self.trainer: Any = None
        self.scorer: Any = None
        self.overseer: Any = None  # a person's pause / stop / reject / rollback
        self.generation = int(self.state.get("generation", 0))  # times the run went back
        self.current: str | None = self.state.get("checkpoint")  # the policy's checkpoint

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
        if self.overseer is not None:
            self.overseer.close()

    # -- set-up and resume

    def _fingerprint(self) -> dict[str, Any]:
        c = self.cfg
        return {"model": c.model, "algo": c.algo, "seed": c.seed, "run": c.run_id,
                "lora_r": c.ppo.lora_r, "lora_alpha": c.ppo.lora_alpha,
                "lora_target_modules": c.ppo.lora_target_modules}

    def _read_state(self) -> dict[str, Any]:
        path = self.out / STATE_FILE
        if not path.is_file():
            return {}
        try:
            state = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserInputError(f"{path}: not valid JSON; the run directory is damaged: "
                                 "give a new --out") from None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise UserInputError(f"{path}: not the state of an online run ({FORMAT}); give a "
                                 "new --out")
        old = json.loads(json.dumps(state.get("fingerprint", {})))
        new = json.loads(json.dumps(self._fingerprint()))
        diff = [f"{k}={old.get(k)!r} (now {new[k]!r})" for k in new if old.get(k) != new[k]]
        if diff:
            raise UserInputError(f"{path}: this run was started with {', '.join(diff)}; "
                                 "rerun with the same settings to resume, or give a new --out")
        return state

    def _build_trainer(self) -> None:
        from rlhf_hgt.lm.models import load_causal_lm, pick_device
        from rlhf_hgt.lm.ppo import LMPPOTrainer

        device = pick_device(self.cfg.ppo.device)
        model, tok = load_causal_lm(self.cfg.model, device=device)
        self.trainer = LMPPOTrainer(model, tok, _no_reward, self.cfg.ppo)

    def _restore(self, state: dict[str, Any]) -> None:
        ck = self.out / state["checkpoint"]
        if not ck.is_dir():
            raise UserInputError(f"{ck}: the checkpoint named by {self.out / STATE_FILE} is "
                                 "missing; give a new --out")
        try:
            self.trainer.restore(ck)
        except UserInputError as exc:
            raise UserInputError(f"{exc}; or give a new --out") from None
        if adapter_hash(self.trainer.lm) != state["policy_hash"]:
            raise UserInputError(f"{ck}: the adapter does not match the state file; give a "
                                 "new --out")
        self.current = state["checkpoint"]

    def _seed(self, rnd: int, salt: int) -> None:
        s = (self.cfg.seed * 1_000_003 + rnd * 101 + salt + self.generation * 7919) % (2**63)
        torch.manual_seed(s)
        self.trainer.rng.manual_seed(s)

    # -- the run

    def run(self) -> dict[str, Any]:
        from rlhf_hgt.lm.trl_common import quiet_libraries

        cfg = self.cfg
        quiet_libraries()
        self._build_trainer()
        self.out.mkdir(parents=True, exist_ok=True)
        self.store = PreferenceStore(cfg.store_path)
        self.overseer = Overseer(self.out, self.progress)
        state = self._unrejected(self.state)  # never resume from a checkpoint a person rejected
        history: list[dict[str, Any]] = list(state.get("history", []))
        rnd = int(state.get("round", -1)) + 1
        if state.get("checkpoint"):
            self._restore(state)
            self.progress("resume", {"round": rnd, "rounds": cfg.rounds})
        initial = state["eval_score_initial"] if "eval_score_initial" in state \
            else self._eval_score()
        while rnd < cfg.rounds:
            if not self.overseer.gate(force=True):  # between rounds: a pause holds here
                state = self._obey(initial)
                if state is None:
                    break  # stopped
                history, rnd = list(state["history"]), int(state["round"]) + 1
                continue
            t0 = time.time()
            prompts = round_prompts(self.prompts, cfg.prompts_per_round, rnd, cfg.seed)
            row: dict[str, Any] = {"round": rnd}
            ids, gathered = self._gather(rnd, prompts)
            row.update(gathered)
            row.update(self._answer(rnd, ids))
            if self.overseer.pending is not None:
                continue  # a person acted while the loop waited for answers: obeyed above
            row["sample_score_mean"] = self._sample_score(ids)
            row.update(self._fit(rnd))
            row.update(self._train(rnd, prompts))
            if (self.overseer.pending or {}).get("act") in ("reject", "rollback"):
                continue  # reject / rollback: this round is dropped, the act obeyed above
            row["eval_score_mean"] = self._eval_score()  # a stop keeps the round, cut short
            row["seconds"] = time.time() - t0
            history.append(row)
            self._checkpoint(rnd, history, initial)
            self.progress("round", dict(row))
            rnd += 1
        metrics = self._metrics(history, initial) | self.overseer.outcome()
        self._write_outputs(metrics)
        self.progress("done", {"rounds": len(history), "out": str(self.out)})
        return metrics

    # -- a person's reject and rollback (rlhf_hgt.governance.oversight)

    def _unrejected(self, state: dict[str, Any]) -> dict[str, Any]:
        """The state to resume from: ``state``, unless a person rejected its checkpoint."""
        rejected = self.overseer.rejected()  # names as lineage writes them: roundNNNN[.G]
        if not state.get("checkpoint") or Path(state["checkpoint"]).name not in rejected:
            return state
        self.progress("rejected", {"checkpoint": state["checkpoint"]})
        back = kept.before(self.out, state["checkpoint"], rejected)
        return self._go_back(back, state.get("eval_score_initial"))

    def _obey(self, initial: float | None) -> dict[str, Any] | None:
        """Carry out a person's stop (None), reject or rollback: the state to go on from."""
        act = self.overseer.pending or {}
        if act.get("act") == "rollback" and kept.newest_of_round(self.out, parse_round(
                act["to"])) is None:
            self.overseer.refuse(f"{act['to']}'s checkpoint is no longer kept")
            act = {"act": "refused", "to": self.current}  # the round in progress is dropped
        self.overseer.done()
        if act.get("act") == "stop":
            return None
        if act.get("act") == "refused":
            folder = self.out / self.current if self.current else None
        elif act.get("act") == "rollback":
            folder = kept.newest_of_round(self.out, parse_round(act["to"]))
        else:  # reject: back to the checkpoint the rejected one started from
            folder = kept.before(self.out, str(act.get("checkpoint") or self.current or ""),
                                 self.overseer.rejected())
        state = self._go_back(folder, initial)
        self.progress("rolled_back", {"round": state["round"], "act": act.get("act")})
        return state

    def _go_back(self, folder: Path | None, initial: float | None) -> dict[str, Any]:
        """Make ``folder`` (None: a fresh policy) the run's current checkpoint; the rounds
        after it are trained again (kept as roundNNNN.G, G = the times the run went back)."""
        self.generation += 1
        if folder is None:
            self.scorer = self.trainer = None
            _free_memory()
            self._build_trainer()
            self.current = None
            state = {"round": -1, "history": []}
        else:
            state = json.loads((folder / STATE_FILE).read_text())
            self._restore(state)
        state = {**state, "format": FORMAT, "generation": self.generation,
                 "fingerprint": self._fingerprint(), "eval_score_initial": initial}
        write_json_atomic(self.out / STATE_FILE, state)  # a kill now resumes from here
        return state

    # -- 1. gather

    def _gather(self, rnd: int, prompts: list[str]) -> tuple[list[int], dict[str, Any]]:
        source = f"{self.cfg.run_id}:round{rnd}:{adapter_hash(self.trainer.lm)}" + (
            f":g{self.generation}" if self.generation else "")  # trained again: new queries
        ids = self.store.query_ids(round=rnd, source=source)
        if ids:  # a run killed after asking keeps the questions it asked
            info = {"policy": source, "queries": len(ids), "queries_added": 0,
                    "queries_reused": True, "pairs_skipped": 0}
            self.progress("gather", {"round": rnd, **info})
            return ids, info
        self._seed(rnd, 0)
        texts = self.trainer.generate(prompts + prompts)
        n = len(prompts)
        pairs, skipped = [], 0
        meta = {"run": self.cfg.run_id, "round": rnd, "policy": source, "algo": self.cfg.algo}
        for prompt, a, b in zip(prompts, texts[:n], texts[n:], strict=True):
            if a == b or not a.strip() or not b.strip():
                skipped += 1
                continue
            pairs.append(TextPair(prompt, a, b, source_a=source, source_b=source,
                                  meta=dict(meta)))
        if pairs:
            self.store.add_text_queries(pairs, round=rnd)
        ids = self.store.query_ids(round=rnd, source=source)
        self.store.log_event("online_gather", data={**meta, "queries": ids,
                                                    "skipped": skipped})
        info = {"policy": source, "queries": len(ids), "queries_added": len(ids),
                "queries_reused": False, "pairs_skipped": skipped}
        self.progress("gather", {"round": rnd, **info})
        return ids, info

    # -- 2. answers

    def _answer(self, rnd: int, ids: list[int]) -> dict[str, Any]:
        cfg = self.cfg
        if cfg.synthetic:
            from rlhf_hgt.feedback.teachers import answer_pending, make_teacher

            teacher = make_teacher(cfg.teacher_model)
            annotator = f"teacher:{teacher.name}({cfg.teacher})"
            n = answer_pending(self.store, teacher, annotator=annotator,
                               score_fn=self.teacher_fn,
                               rng=np.random.default_rng([cfg.seed, rnd]), among=ids)
        else:
            annotator = cfg.annotator or default_annotator()
            before = len(self.store.answers(kind="text"))
            if cfg.teacher == "human" and self._open(ids):
                from rlhf_hgt.feedback.terminal import LabelOptions, run_labelling

                self.progress("label", {"round": rnd, "pending": len(self._open(ids)),
                                        "annotator": annotator})
                code = run_labelling(self.store.path, LabelOptions(annotator=annotator))
                if code >= 128:  # stopped by a signal: stop here, resume this round later
                    raise KeyboardInterrupt
            self._wait(rnd, ids)
            n = len(self.store.answers(kind="text")) - before
        info = {"annotator": annotator, "answers_added": n,
                "labels": sum(1 for _ in self.store.labelled(kind="text"))}
        self.progress("answers", {"round": rnd, **info})
        return info

    def _open(self, ids: list[int]) -> list[int]:
        wanted = set(ids)
        return [q for q in self.store.unanswered_ids() if q in wanted]

    def _wait(self, rnd: int, ids: list[int]) -> None:
        told = None
        while True:
            still = self._open(ids)
            if not still:
                return
            if len(still) != told:
                self.progress("waiting", {"round": rnd, "pending": len(still),
                                          "store": str(self.store.path)})
                told = len(still)
            if not self.overseer.gate():  # a person's stop, reject or rollback
                return
            time.sleep(self.cfg.poll_seconds)

    def _sample_score(self, ids: list[int]) -> float | None:
        if self.monitor_fn is None:
            return None
        scores = []
        for qid in ids:
            q = self.store.get_query(qid)
            scores += [float(self.monitor_fn(q.prompt or "", q.left)),
                       float(self.monitor_fn(q.prompt or "", q.right))]
        return _mean(scores)

    # -- 3. fit

    def _fit(self, rnd: int) -> dict[str, Any]:
        answers = [a.answer for _, a in self.store.labelled(kind="text")]
        strict = sum(a in ("left", "right") for a in answers)
        if not answers or (self.cfg.algo == "dpo" and strict == 0):
            self.progress("fit", {"round": rnd, "skipped": "no usable labels yet"})
            return {"fit_pairs": 0}
        from rlhf_hgt.lm.data import load_pairs

        ds = load_pairs(store=self.store.path)
        self.progress("fit", {"round": rnd, "pairs": len(ds), "algo": self.cfg.algo})
        if self.cfg.algo == "dpo":
            return self._fit_dpo(rnd, ds)
        from rlhf_hgt.lm.ppo import as_batch_scorer
        from rlhf_hgt.lm.reward import RewardScorer, train_reward_model

        self.scorer = None  # free the last round's reward model before training the next
        self.trainer.score_fn = as_batch_scorer(_no_reward)
        _free_memory()
        rm_cfg = replace(self.cfg.reward, seed=self.cfg.seed + rnd)
        m = train_reward_model(self.cfg.model, ds, None, rm_cfg, self.out / REWARD_DIR,
                               callbacks=self._gates())
        _free_memory()
        self.scorer = RewardScorer.load(str(self.out / REWARD_DIR),
                                        device=str(self.trainer.device))
        self.trainer.score_fn = as_batch_scorer(self.scorer)
        return {"fit_pairs": len(ds), "reward_model_accuracy": m.get("reward_model_accuracy"),
                "reward_eval_pairs": m.get("eval_pairs"),
                "reward_train_loss": m.get("train_loss"), "reward_steps": m.get("steps")}

    def _fit_dpo(self, rnd: int, ds: Any) -> dict[str, Any]:
        """DPO on the policy's own adapter against a frozen copy of that adapter (the policy
        at the start of this round); the model itself is not copied."""
        from rlhf_hgt.lm.dpo import train_dpo

        d = self.cfg.dpo
        dcfg = replace(d, lora_r=self.cfg.ppo.lora_r, seed=self.cfg.seed + rnd,
                       chat_template=self.trainer.chat)
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        if not d.progress:
            hf_logging.disable_progress_bar()  # the scratch save's bar, too
        try:
            with tempfile.TemporaryDirectory(dir=self.out, prefix=".dpo-") as tmp:
                m = train_dpo((self.trainer.lm, self.trainer.tokenizer), ds, None, dcfg, tmp,
                              callbacks=self._gates())
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        self.trainer.policy.eval()
        _free_memory()
        return {"fit_pairs": len(ds),
                "implicit_reward_accuracy": m.get("implicit_reward_accuracy"),
                "dpo_eval_pairs": m.get("eval_pairs"), "dpo_train_loss": m.get("train_loss"),
                "dpo_steps": m.get("steps"), "dpo_ties_dropped": m.get("train_ties_dropped")}

    def _gates(self) -> list[Any]:
        """The TRL callback that asks for a person's pause or stop after each update."""
        from rlhf_hgt.lm.trl_common import oversight_callback

        return [oversight_callback(self.overseer.gate)]

    # -- 4. train

    def _train(self, rnd: int, prompts: list[str]) -> dict[str, Any]:
        if self.cfg.algo != "ppo" or self.scorer is None:
            return {}
        steps = self.cfg.ppo.steps
        self._seed(rnd, 1)
        self.progress("ppo_start", {"round": rnd, "steps": steps})

        def hear(stats: dict[str, float]) -> None:
            self.progress("ppo_step", {"round": rnd, **stats})

        hist = self.trainer.train(prompts, steps=steps, callback=hear, gate=self.overseer.gate)
        if not hist:  # a person acted before the first update
            return {"ppo_updates": 0}
        last = hist[-1]
        return {"ppo_updates": len(hist),
                "ppo_score_mean": _mean([h["score"] for h in hist]),
                "ppo_score_last": last["score"],
                "ppo_reward_mean": _mean([h["reward"] for h in hist]),
                "ppo_kl_mean": _mean([h["kl_k1"] for h in hist]), "ppo_kl_last": last["kl_k1"],
                "ppo_kl_coef": self.trainer.kl_ctl.value,
                "ppo_clipfrac_mean": _mean([h.get("policy_clipfrac", 0.0) for h in hist]),
                "ppo_tokens_per_s": _mean([h["tokens_per_s"] for h in hist])}

    def _eval_score(self) -> float | None:
        n = self.cfg.eval_prompts
        if self.monitor_fn is None or n == 0:
            return None
        prompts = self.prompts[:n]
        self._seed(-1, 2)  # the same sampling noise every time
        texts = self.trainer.generate(prompts)
        return _mean([float(self.monitor_fn(p, t)) for p, t in zip(prompts, texts, strict=True)])

    # -- checkpoints and outputs

    def _checkpoint(self, rnd: int, history: list[dict[str, Any]],
                    initial: float | None) -> None:
        root = self.out / CHECKPOINTS
        name = kept.folder_name(rnd, self.generation)
        ck, tmp = root / name, root / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self.trainer.save(tmp)  # adapter, value head, optimiser, PPO updates, KL coefficient
        reward = self.out / REWARD_DIR
        lineage.stage(tmp, self.store, lineage.store_text_answer_ids(self.store),
                      reward_model=[str(p.relative_to(self.out)) for p in
                                    lineage.checkpoint_files([reward])])
        state = {"format": FORMAT, "round": rnd, "checkpoint": str(ck.relative_to(self.out)),
                 "parent": self.current, "generation": self.generation,
                 "policy_hash": adapter_hash(self.trainer.lm),
                 "kl_coef": self.trainer.kl_ctl.value, "ppo_updates": self.trainer.step_count,
                 "eval_score_initial": initial, "fingerprint": self._fingerprint(),
                 "history": history}
        write_json_atomic(tmp / STATE_FILE, state)  # the loop as it was: for a rollback
        shutil.rmtree(ck, ignore_errors=True)
        os.replace(tmp, ck)
        self.current = state["checkpoint"]
        metrics = self._metrics(history, initial)
        write_json_atomic(self.out / METRICS_FILE, metrics)
        write_json_atomic(self.out / STATE_FILE, state)  # the commit point of the round: last
        lineage.record_checkpoint(self.out, self.store, ck.name, [ck, reward], round=rnd,
                                  role="policy and reward model", prunable=True)
        for p in kept.to_prune(self.out, self.cfg.keep_checkpoints):
            shutil.rmtree(p, ignore_errors=True)
        self._write_manifest()
        write_checkpoint_cards(self.out, ck, store=self.store)  # this round's, as it is now
        write_cards(self.out, store=self.store)  # the reward model's

    def _metrics(self, history: list[dict[str, Any]], initial: float | None) -> dict[str, Any]:
        def last(key: str) -> Any:
            return next((h[key] for h in reversed(history) if h.get(key) is not None), None)

        return {
            "format": FORMAT, "model": self.cfg.model, "algo": self.cfg.algo,
            "teacher": self.cfg.teacher, "teacher_model": self.cfg.teacher_model,
            "run": self.cfg.run_id, "store": str(self.store.path), "rounds": len(history),
            "prompts": len(self.prompts),
            "labels": sum(1 for _ in self.store.labelled(kind="text")),
            "reward_model_accuracy": last("reward_model_accuracy"),
            "implicit_reward_accuracy": last("implicit_reward_accuracy"),
            "sample_score_first": history[0].get("sample_score_mean") if history else None,
            "sample_score_last": last("sample_score_mean"),
            "eval_score_initial": initial, "eval_score_final": last("eval_score_mean"),
            "policy_checkpoint": self.current,
            "history": history,
        }

    def _write_outputs(self, metrics: dict[str, Any]) -> None:
        root = self.out / CHECKPOINTS
        lineage.backfill(self.out, self.store, {p.name: p for p in sorted(root.glob("round*"))
                                                if p.is_dir()}, prunable=True)
        write_json_atomic(self.out / METRICS_FILE, metrics)
        self._write_manifest()
        write_cards(self.out, store=self.store)

    def _write_manifest(self) -> None:
        from rlhf_hgt.governance.manifest import write_manifest

        self.store.flush()  # the data hash then covers every answer
        write_manifest(self.out, {"command": "lm online", **self.cfg.to_dict()},
                       {"preference_store": self.store.path})


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
