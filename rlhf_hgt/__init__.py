"""rlhf_hgt: reinforcement learning from human feedback and human-guided training.

The public API, for scripts (loaded lazily, PEP 562: ``import rlhf_hgt`` imports no torch;
a name's stack is imported the first time the name is used)::

    from rlhf_hgt import ControlConfig, run_control              # the control loop
    from rlhf_hgt import LMRewardConfig, train_reward_model      # language models
    from rlhf_hgt import PreferenceStore, import_jsonl           # the store

The command line (``rlhf-hgt``) is built on these same names.
"""

from __future__ import annotations

import importlib
from typing import Any

try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("rlhf-hgt")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

#: public name -> module that defines it
_API: dict[str, str] = {
    # the shared preference core
    "preference_loss": "rlhf_hgt.preference",
    "answers_to_targets": "rlhf_hgt.preference",
    # the store, import/export, teachers
    "PreferenceStore": "rlhf_hgt.feedback.store",
    "import_jsonl": "rlhf_hgt.feedback.jsonl",
    "export_jsonl": "rlhf_hgt.feedback.jsonl",
    "compute_stats": "rlhf_hgt.feedback.stats",
    "make_teacher": "rlhf_hgt.feedback.teachers",
    "answer_pending": "rlhf_hgt.feedback.teachers",
    "LabelOptions": "rlhf_hgt.feedback.terminal",
    "run_labelling": "rlhf_hgt.feedback.terminal",
    # control
    "ControlConfig": "rlhf_hgt.control.config",
    "run_control": "rlhf_hgt.control.loop",
    "AgentConfig": "rlhf_hgt.control.config",
    "RewardModelConfig": "rlhf_hgt.control.reward_config",
    "RewardEnsemble": "rlhf_hgt.control.reward_model",
    "PolicyDPOConfig": "rlhf_hgt.control.config",
    "make_env": "rlhf_hgt.envs",
    # language models
    "load_pairs": "rlhf_hgt.lm.data",
    "read_prompts": "rlhf_hgt.lm.data",
    "split_pairs": "rlhf_hgt.lm.data",
    "load_causal_lm": "rlhf_hgt.lm.models",
    "LMRewardConfig": "rlhf_hgt.lm.reward",
    "train_reward_model": "rlhf_hgt.lm.reward",
    "RewardScorer": "rlhf_hgt.lm.reward",
    "LMDPOConfig": "rlhf_hgt.lm.dpo",
    "train_dpo": "rlhf_hgt.lm.dpo",
    "LMPPOConfig": "rlhf_hgt.lm.ppo",
    "LMPPOTrainer": "rlhf_hgt.lm.ppo",
    "OnlineConfig": "rlhf_hgt.lm.online",
    "run_online": "rlhf_hgt.lm.online",
    # attention
    "AttentionConfig": "rlhf_hgt.attention.train",
    "run_attention": "rlhf_hgt.attention.train",
    "load_data": "rlhf_hgt.attention.data",
    # governance
    "write_manifest": "rlhf_hgt.governance.manifest",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'rlhf_hgt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
