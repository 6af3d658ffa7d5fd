"""The preference learner: the one role the control loop hands the stored answers to.

The loop (:func:`rlhf_hgt.control.loop.run_control`) gathers clips of the learner's policy,
asks for answers, and then, each round,

1. ``fit(left, right, targets, episodes, rng)`` on every stored answer,
2. ``train(steps)``: the policy's training for the round (on the learned reward, or nothing
   more when fitting already changed the policy),

and keeps ``save``/``restore`` to resume a killed run. A learner whose ``train`` runs long
asks :attr:`PreferenceLearner.gate` between policy updates (``training_callback``) and ends
the round early when it says no: that is how a person's pause, stop or rollback
(``rlhf-hgt oversee``) reaches a round in progress. Two learners come with the package,
registered under the ``--algo`` names:

- ``ppo``: :class:`rlhf_hgt.control.reward_learner.RewardModelLearner`, an ensemble of
  reward models and an RL agent (SB3 PPO or SAC) trained on the ensemble's reward;
- ``dpo``: :class:`rlhf_hgt.control.dpo_learner.PolicyDPOLearner`, the policy learns from
  the pairs directly (no reward model).

A new learner subclasses :class:`PreferenceLearner` and registers itself with
:func:`register_learner`; the loop needs no new branch. This module stays light (the
config checks ``--algo`` against :data:`LEARNERS`): implementations are imported by name
when a run starts.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import gymnasium as gym
    import numpy as np
    from stable_baselines3.common.base_class import BaseAlgorithm
    from stable_baselines3.common.vec_env import VecEnv

    from rlhf_hgt.control.config import ControlConfig

POLICY_FILE = "policy.safetensors"

#: ``--algo`` name -> the learner class, or "module:Class" (imported when a run starts)
LEARNERS: dict[str, type[PreferenceLearner] | str] = {
    "ppo": "rlhf_hgt.control.reward_learner:RewardModelLearner",
    "dpo": "rlhf_hgt.control.dpo_learner:PolicyDPOLearner",
}


def register_learner(name: str, learner: type[PreferenceLearner] | str) -> None:
    """Make ``learner`` (a class, or "module:Class") available as ``--algo name``."""
    if not name or not isinstance(name, str):
        raise ValueError(f"a learner needs a non-empty name, got {name!r}")
    LEARNERS[name] = learner


def learner_class(name: str) -> type[PreferenceLearner]:
    """The learner class registered as ``name``."""
    if name not in LEARNERS:
        raise ValueError(f"--algo must be {' or '.join(LEARNERS)}, got {name!r}")
    entry = LEARNERS[name]
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = LEARNERS[name] = getattr(importlib.import_module(module), attr)
    return entry


class PreferenceLearner(ABC):
    """Learns a policy from pairwise preferences over clips, round by round.

    Subclasses set ``agent`` (an SB3 algorithm: its policy is evaluated, and its clips are
    compared) in ``__init__(cfg, envs)``; ``envs`` is the vector env whose steps the loop
    records for new clips (the true reward hidden). The policy is saved and restored here;
    a learner with more state (a reward model) extends :meth:`save` and :meth:`restore`.
    """

    #: True when the policy may train on the last fit while people label the next pairs
    trains_while_people_label: bool = False
    #: True when :meth:`explore` trains the policy (``--explore-fraction``); else it is skipped
    explores: bool = False
    agent: BaseAlgorithm
    #: the keep mask (F,) of the task's --feature-marks, for a learner that uses marks
    marks: np.ndarray | None = None
    #: asked between policy updates: False ends the round's training early (oversight)
    gate: Callable[[], bool] | None = None

    @abstractmethod
    def __init__(self, cfg: ControlConfig, envs: VecEnv) -> None: ...

    @classmethod
    def check(cls, cfg: ControlConfig, env: gym.Env) -> None:
        """Refuse, before any work, an env or settings this learner cannot take
        (ValueError saying what to change). ``env`` is a fresh instance of the task."""
        cfg.agent.resolve_algo(env.action_space)

    def steps_per_round(self, total: int, rounds: int) -> list[int]:
        """The env-step budget of each round (``total`` split evenly)."""
        return [total // rounds] * rounds

    def query_model(self) -> Any | None:
        """A model whose members' disagreement can pick the next pairs to ask about
        (``disagreement(left, right)``), or None: the pairs are then drawn at random."""
        return None

    @abstractmethod
    def fit(self, left: Sequence[dict[str, np.ndarray]], right: Sequence[dict[str, np.ndarray]],
            targets: np.ndarray, episodes: list[dict[str, np.ndarray]],
            rng: np.random.Generator, weights: np.ndarray | None = None,
            marks: np.ndarray | None = None, mark_weight: float = 0.0) -> dict[str, Any]:
        """Learn from every stored answer (``targets``: P(left preferred), 1 left, 0 right,
        0.5 tie, or soft) and return JSON-ready metrics; ``holdout_accuracy`` (held-out
        pairwise accuracy) when measured. ``episodes`` are the policy's recent episodes, the
        clips' source. ``weights`` (n,) per-pair loss weights, ``marks`` keep masks (F,) or
        (n, F) of the features that decide, penalised with ``mark_weight`` (a learner that
        cannot use them is refused them by the config's checks)."""

    @abstractmethod
    def train(self, steps: int) -> None:
        """The policy's training for one round, ``steps`` env steps at most."""

    def explore(self, steps: int) -> None:
        """Before the first questions: train the policy for ``steps`` env steps to visit new
        states (learners with :attr:`explores`; the others have nothing to do here)."""
        return None

    def training_callback(self, callback: Any = None) -> Any:
        """``callback`` (an SB3 callback or None) with :attr:`gate` asked at every env step
        (it polls the store at most twice a second): SB3 ends ``learn`` when it says no."""
        if self.gate is None:
            return callback
        from stable_baselines3.common.callbacks import CallbackList, ConvertCallback

        gate = self.gate
        asked = ConvertCallback(lambda _locals, _globals: gate())
        return asked if callback is None else CallbackList([callback, asked])

    @property
    def timesteps(self) -> int:
        """Env steps the policy has trained on so far."""
        return int(self.agent.num_timesteps)

    def save(self, folder: Path) -> None:
        """Write the learner's weights into ``folder`` (safetensors: nothing pickled)."""
        from safetensors.torch import save

        from rlhf_hgt.feedback.files import write_bytes_atomic

        weights = {k: v.detach().cpu().contiguous()
                   for k, v in self.agent.policy.state_dict().items()}
        write_bytes_atomic(folder / POLICY_FILE, save(weights))

    def restore(self, folder: Path, timesteps: int) -> None:
        """Load what :meth:`save` wrote; ``timesteps`` is :attr:`timesteps` at that time."""
        from safetensors.torch import load_file

        self.agent.policy.load_state_dict(load_file(str(folder / POLICY_FILE)))
        self.agent.num_timesteps = int(timesteps)


def build_agent(cfg: ControlConfig, envs: VecEnv) -> BaseAlgorithm:
    """The run's SB3 agent on ``envs``: made from ``cfg.agent``, started from
    ``cfg.init_policy`` when given, with LoRA adapters when ``cfg.lora_r`` > 0."""
    from rlhf_hgt.control.agents import make_agent

    agent = make_agent(cfg.agent, envs, cfg.seed)
    if cfg.init_policy:
        agent = _initial_policy(cfg, agent, envs)
    if cfg.lora_r:
        from rlhf_hgt.control.lora import apply_lora

        apply_lora(agent, r=cfg.lora_r, alpha=2.0 * cfg.lora_r, target="all")
    return agent


def _initial_policy(cfg: ControlConfig, agent: BaseAlgorithm, envs: VecEnv) -> BaseAlgorithm:
    """The starting policy: an SB3 .zip read safely, or our own safetensors state dict."""
    path = Path(cfg.init_policy or "")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            agent.policy.load_state_dict(load_file(str(path)))
        except (RuntimeError, OSError) as exc:
            raise ValueError(f"{path}: not a policy of this env and architecture ({exc})") \
                from None
        return agent
    from rlhf_hgt.control.lora import load_sb3_checkpoint

    algo = cfg.agent.resolve_algo(envs.action_space)
    if algo != "ppo":
        raise ValueError(f"--init-policy with a .zip needs a PPO agent (use --agent-algo ppo), "
                         f"not {algo}")
    a = cfg.agent
    return load_sb3_checkpoint(path, envs, algo="ppo", seed=cfg.seed,
                               learning_rate=a.learning_rate, n_steps=a.n_steps,
                               batch_size=a.batch_size, n_epochs=a.n_epochs, gamma=a.gamma,
                               gae_lambda=a.gae_lambda, ent_coef=a.ent_coef)
