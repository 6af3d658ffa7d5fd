"""Settings of the online preference loop (:mod:`rlhf_hgt.lm.online`), with their checks."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from rlhf_hgt.feedback.errors import UserInputError
from rlhf_hgt.lm.dpo import LMDPOConfig
from rlhf_hgt.lm.ppo import LMPPOConfig
from rlhf_hgt.lm.reward import LMRewardConfig
from rlhf_hgt.lm.scores import BUILTIN_SCORES

__all__ = ["PEOPLE", "TEACHERS", "OnlineConfig", "default_ppo_config"]

PEOPLE = ("human", "external")
TEACHERS = (*BUILTIN_SCORES, *PEOPLE, "custom")


def default_ppo_config() -> LMPPOConfig:
    return LMPPOConfig(steps=20)


@dataclass
class OnlineConfig:
    """One run of the online loop (the ``rlhf-hgt lm online`` command)."""

    out: str = field(metadata={"help": "run directory: checkpoints, metrics, state, store"})
    prompts: str | list[str] | None = field(default=None, metadata={
        "help": 'a JSONL file whose lines have a "prompt", or a list of prompts'})
    prompt_store: str | None = field(default=None, metadata={
        "help": "or: a preference store whose text queries' prompts are used"})
    max_prompts: int | None = field(default=None, metadata={
        "help": "use at most this many distinct prompts (default all)"})
    model: str = field(default="smollm2", metadata={
        "help": "policy base (and reward-model base): 'smollm2', a local folder, a hub id, "
                "or 'tiny' (a tiny random model built in memory, for tests)"})
    rounds: int = field(default=4, metadata={"help": "gather/answer/fit/train rounds in all"})
    prompts_per_round: int = field(default=16, metadata={
        "help": "prompts sampled per round (two responses each: one query per prompt)"})
    teacher: str = field(default="vader", metadata={
        "help": "vader or length (a synthetic teacher scoring responses by sentiment or by "
                "their number of words, rlhf_hgt.lm.scores), human (asks in this terminal), "
                "external (waits for `rlhf-hgt label STORE`); custom = the score_fn given to "
                "run_online"})
    teacher_model: str = field(default="oracle", metadata={
        "help": "how a synthetic teacher turns scores into answers: oracle, "
                "stochastic:beta=B, mistake:eps=E, ... (rlhf_hgt.feedback.teachers)"})
    annotator: str | None = field(default=None, metadata={
        "help": "name stored with human answers (default: the login name)"})
    monitor: str | None = field(default=None, metadata={
        "help": "score logged for the policy's samples: vader or length (default: the "
                "teacher's own score; none for people)"})
    algo: str = field(default="ppo", metadata={
        "help": "ppo: refit a reward model, then PPO; dpo: DPO on the pairs directly"})
    reward: LMRewardConfig = field(default_factory=LMRewardConfig, metadata={
        "help": "reward-model training, refit from scratch every round"})
    ppo: LMPPOConfig = field(default_factory=default_ppo_config, metadata={
        "help": "PPO settings; steps = PPO updates per round; lora_* shape the policy "
                "adapter for both algos"})
    dpo: LMDPOConfig = field(default_factory=LMDPOConfig, metadata={
        "help": "DPO settings (algo dpo); DPO trains the policy's adapter, so lora_r is unused "
                "and chat_template follows the policy's prompt format"})
    store: str | None = field(default=None, metadata={
        "help": "preference store (default RUN_DIR/feedback.db); a synthetic teacher "
                "answers only this run's queries in it, so people can share it"})
    seed: int = field(default=0, metadata={
        "help": "random seed of everything (replaces the nested configs' seeds)"})
    run_name: str | None = field(default=None, metadata={
        "help": "prefix of the policy ids stored as sources (default: RUN_DIR's name)"})
    eval_prompts: int = field(default=16, metadata={
        "help": "after each round, score one sample on this many fixed prompts with the "
                "monitor score (0: off)"})
    keep_checkpoints: int = field(default=2, metadata={
        "help": "round checkpoints kept (the newest ones)"})
    poll_seconds: float = field(default=2.0, metadata={
        "help": "how often the loop looks for answers given elsewhere"})

    def __post_init__(self) -> None:
        for name, cls in (("reward", LMRewardConfig), ("ppo", LMPPOConfig),
                          ("dpo", LMDPOConfig)):
            value = getattr(self, name)
            if isinstance(value, dict):
                try:
                    setattr(self, name, cls(**value))
                except (TypeError, ValueError) as exc:
                    raise UserInputError(f"{name} settings: {exc}") from None
        if not str(self.out).strip():
            raise UserInputError("out: give a run directory, e.g. --out runs/online")
        if isinstance(self.prompts, tuple):
            self.prompts = list(self.prompts)
        if (self.prompts is None) == (self.prompt_store is None):
            raise UserInputError("give exactly one source of prompts: --prompts FILE.jsonl "
                                 "(lines with a \"prompt\"), --prompt TEXT, or --prompt-store "
                                 "STORE" + (", not both" if self.prompts is not None else ""))
        if isinstance(self.prompts, list):
            if not self.prompts:
                raise UserInputError("prompts: the list is empty; give at least one prompt")
            for i, p in enumerate(self.prompts, start=1):
                if not isinstance(p, str):
                    raise UserInputError(f"prompt number {i} is {p!r}, not text (--prompt "
                                         "TEXT); every prompt must be a non-empty string")
                if not p.strip():
                    raise UserInputError(f"prompt number {i} is empty (--prompt TEXT); give "
                                         "the text to generate from")
        checks = [
            (self.max_prompts is None or self.max_prompts >= 1,
             f"max_prompts must be at least 1 (or unset for all), got {self.max_prompts}"),
            (self.rounds >= 1, f"rounds must be at least 1, got {self.rounds}"),
            (self.prompts_per_round >= 1,
             f"prompts_per_round must be at least 1, got {self.prompts_per_round}"),
            (self.teacher in TEACHERS, f"teacher must be one of {', '.join(TEACHERS[:-1])} "
                                       f"(or custom with a score function), got {self.teacher!r}"),
            (self.algo in ("ppo", "dpo"), f"algo must be ppo or dpo, got {self.algo!r}"),
            (self.ppo.lora_r >= 1, "the online loop trains a LoRA adapter: --lora-r must be at "
                                   "least 1 (full fine-tuning is `rlhf-hgt lm ppo --lora-r 0`)"),
            (self.monitor is None or self.monitor in BUILTIN_SCORES,
             f"monitor must be vader or length (or unset), got {self.monitor!r}"),
            (self.eval_prompts >= 0, f"eval_prompts must be >= 0, got {self.eval_prompts}"),
            (self.keep_checkpoints >= 1,
             f"keep_checkpoints must be at least 1, got {self.keep_checkpoints}"),
            (self.poll_seconds > 0, f"poll_seconds must be > 0, got {self.poll_seconds}"),
            (self.annotator is None or bool(self.annotator.strip()),
             "annotator: give a non-empty name, or leave it unset"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserInputError(message)
        if self.synthetic:
            from rlhf_hgt.feedback.teachers import make_teacher

            make_teacher(self.teacher_model)  # a bad spec raises UserInputError naming it
        self.ppo = replace(self.ppo, seed=self.seed)

    @property
    def synthetic(self) -> bool:
        return self.teacher not in PEOPLE

    @property
    def store_path(self) -> Path:
        return Path(self.store) if self.store else Path(self.out) / "feedback.db"

    @property
    def run_id(self) -> str:
        return self.run_name or Path(self.out).resolve().name

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))
