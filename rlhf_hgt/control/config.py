"""The settings of a control run, each field with its help text (the command line builds its
flags from them) and checks that say how to fix a bad value.

Light to import (no torch, no stable-baselines3, no gymnasium), so ``rlhf-hgt control
--help`` and a script that only builds a config stay fast:

- :class:`ControlConfig`    one run of the loop; holds the three below
- :class:`RewardModelConfig` the reward ensemble (defined in ``reward_config``)
- :class:`AgentConfig`      the RL agent trained on the learned reward
- :class:`PolicyDPOConfig`  policy DPO (``algo="dpo"``)

The nested configs may be given as plain dicts of their fields (``dpo={"alpha": 0.5}``);
an unknown key is refused with the known ones named.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from rlhf_hgt.configs import renamed_fields
from rlhf_hgt.control.learner import LEARNERS
from rlhf_hgt.control.reward_config import RewardModelConfig
from rlhf_hgt.feedback.errors import UserInputError

if TYPE_CHECKING:
    import gymnasium as gym

__all__ = ["ALGOS", "DEFAULT_MARK_WEIGHT", "HUMAN_TEACHERS", "AgentConfig", "ControlConfig",
           "PolicyDPOConfig", "RewardModelConfig", "config_from_dict", "parse_distractors",
           "parse_feature_marks", "parse_marker"]

ALGOS = ("ppo", "sac")  # RL agents trained on the learned reward
HUMAN_TEACHERS = ("human", "external")

C = TypeVar("C")

#: weight of the feature-mark penalty (a share in [0, 1]) when --mark-weight is not given;
#: the measurement behind it is in ControlConfig.mark_weight's help (the same 10 as the
#: image RRR default, rlhf_hgt.attention.guidance.DEFAULT_WEIGHTS)
DEFAULT_MARK_WEIGHT = 10.0
DEFAULT_TIME_FLOOR = 0.2  # rlhf_hgt.confidence.DEFAULT_FLOOR (this module stays light)


def parse_marker(spec: str, n_features: int | None = None) -> tuple[tuple[int, ...], float]:
    """``"0-3:noise=0.2"`` -> ((0, 1, 2, 3), 0.2): the features a synthetic marker marks and
    its noise (``--marker``)."""
    features, _, rest = str(spec).partition(":")
    noise = 0.0
    if rest:
        key, eq, value = rest.partition("=")
        try:
            noise = float(value) if key.strip() == "noise" and eq else math.nan
        except ValueError:
            noise = math.nan
        if not 0 <= noise <= 1:
            raise UserInputError(f"--marker {spec}: after the features give noise=P with P in "
                                 "[0, 1], e.g. 0-3:noise=0.2")
    try:
        picked = parse_feature_marks(features, n_features)
    except UserInputError as exc:
        raise UserInputError(str(exc).replace("--feature-marks", "--marker", 1)) from None
    return picked, noise


def parse_feature_marks(spec: str, n_features: int | None = None,
                        where: str = "") -> tuple[int, ...]:
    """The sorted feature indices of a spec like ``"0,1,4-5"`` (indices and inclusive
    ranges); with ``n_features``, each must be below it. A UserInputError names
    --feature-marks, the bad part and, for an index out of range, the observation size."""
    flag = f"--feature-marks {spec}"
    picked: set[int] = set()
    for part in str(spec).split(","):
        item = part.strip()
        match = re.fullmatch(r"([0-9]+)\s*(?:-\s*([0-9]+))?", item)
        if match is None:
            raise UserInputError(f"{flag}: {item!r} is not a feature index or a range a-b; "
                                 "give indices and ranges of observation features, e.g. 0,1,4-5")
        a = int(match[1])
        b = a if match[2] is None else int(match[2])
        if b < a:
            raise UserInputError(f"{flag}: the range {item} runs backwards; write {b}-{a}")
        limit = 1_000_000 if n_features is None else n_features
        if b >= limit:
            raise UserInputError(
                f"{flag}: feature {max(a, limit)} is out of range: the observation{where} has "
                f"{n_features} features (indices 0 to {n_features - 1})" if n_features else
                f"{flag}: feature {b} is past any observation size this checks")
        picked.update(range(a, b + 1))
    if n_features is not None:
        if len(picked) == n_features:
            raise UserInputError(f"{flag}: marks every one of the {n_features} observation "
                                 f"features{where}, so nothing is penalised; mark only those "
                                 "that decide, or leave --feature-marks out")
    return tuple(sorted(picked))


def parse_distractors(spec: str) -> tuple[tuple[str, int], ...]:
    """``"noise:4,time:2"`` -> (("noise", 4), ("time", 2)): distractor kinds and counts
    (the kinds are checked by the wrapper, rlhf_hgt.envs.DistractorWrapper)."""
    out = []
    for part in str(spec).split(","):
        kind, _, k = part.strip().partition(":")
        k = k.strip() or "1"
        if not kind.strip() or not re.fullmatch("[0-9]+", k) or int(k) < 1:
            raise UserInputError(f"--distractors {spec}: {part.strip()!r} is not KIND:K (K a "
                                 "count >= 1), e.g. noise:4,time:2")
        out.append((kind.strip(), int(k)))
    return tuple(out)


def config_from_dict(cls: type[C], data: Any, where: str) -> C:
    """``cls(**data)`` for a dict of a config's fields (an instance passes through); an
    unknown key or a value of another type is a UserInputError (a ValueError) that says
    what is accepted."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise UserInputError(f"{where} must be a {cls.__name__} or a dict of its fields, got "
                         f"{type(data).__name__}")
    known = {f.name for f in fields(cls) if f.init} | set(renamed_fields(cls))  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserInputError(f"{where}: unknown field(s) {', '.join(map(str, unknown))}; "
                             f"known: {', '.join(sorted(known))}")
    return cls(**data)


@dataclass
class AgentConfig:
    """How the policy is trained on the (learned) reward."""

    algo: str = field(default="auto", metadata={
        "help": "ppo, sac, or auto (PPO for discrete actions, SAC for continuous ones, "
                "which learns continuous control in far fewer steps: on HalfCheetah SAC's "
                "50k steps reached 2.7 times PPO's 100k, BENCHMARKS.md)"})
    n_envs: int = field(default=4, metadata={"help": "parallel envs (PPO)"})
    subprocess: bool = field(default=False, metadata={
        "help": "run envs in subprocesses (SubprocVecEnv): worth it for slow envs only"})
    learning_rate: float = field(default=3e-4, metadata={"help": "optimiser step size"})
    gamma: float = field(default=0.99, metadata={"help": "discount factor"})
    n_steps: int = field(default=256, metadata={"help": "PPO: steps per env per update"})
    batch_size: int = field(default=64, metadata={"help": "minibatch size (PPO) / batch (SAC)"})
    n_epochs: int = field(default=10, metadata={"help": "PPO: epochs per update"})
    gae_lambda: float = field(default=0.95, metadata={"help": "PPO: GAE lambda"})
    ent_coef: float = field(default=0.0, metadata={"help": "PPO: entropy bonus"})
    learning_starts: int = field(default=1000, metadata={
        "help": "SAC: random steps before learning starts"})
    gradient_steps: int = field(default=1, metadata={
        "help": "SAC: gradient steps per env step (SB3's default 1; 2 on Reacher-v5 with "
                "200 labels: 0.84 and 0.39 of the true-reward agent against 0.77 and 0.89 "
                "with 1, BENCHMARKS.md)"})
    normalize_reward: bool = field(default=True, metadata={
        "help": "PPO: scale the learned reward by a running std of discounted returns "
                "(SB3 VecNormalize), so value targets stay O(1) whatever the reward's scale"})
    net_arch: tuple[int, ...] = field(default=(64, 64), metadata={
        "help": "hidden layer sizes of policy and value networks"})

    def __post_init__(self) -> None:
        if self.algo not in (*ALGOS, "auto"):
            raise ValueError(f"algo must be one of auto, {', '.join(ALGOS)}; got {self.algo!r}")
        if self.n_envs < 1:
            raise ValueError(f"n_envs must be >= 1, got {self.n_envs}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be greater than 1, got {self.batch_size}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must lie in (0, 1], got {self.gamma}")
        for name in ("n_steps", "n_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.algo == "ppo":
            self._check_ppo_batch()
        if not 0 < self.learning_rate < math.inf:
            raise ValueError(f"learning_rate must be > 0 (3e-4 is usual), got "
                             f"{self.learning_rate}")
        self.net_arch = tuple(self.net_arch)
        if any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in self.net_arch):
            raise ValueError(f"net_arch must be positive layer widths, e.g. 64,64; got "
                             f"{','.join(map(str, self.net_arch)) or 'none'}")
        if not 0 <= self.gae_lambda <= 1:
            raise ValueError(f"gae_lambda must lie in [0, 1] (0.95 is usual), got "
                             f"{self.gae_lambda}")
        if not 0 <= self.ent_coef < math.inf:
            raise ValueError(f"ent_coef must be >= 0 (0 turns the bonus off), got "
                             f"{self.ent_coef}")
        if self.learning_starts < 0:
            raise ValueError(f"learning_starts must be >= 0, got {self.learning_starts}")
        if self.gradient_steps < 1:
            raise ValueError(f"gradient_steps must be >= 1, got {self.gradient_steps}")

    def _check_ppo_batch(self) -> None:
        """PPO normalises advantages over a rollout of n_steps × n_envs steps: two at least."""
        if self.n_steps * self.n_envs < 2:
            raise ValueError(f"n_steps * n_envs must be > 1 for PPO (its rollout batch), got "
                             f"{self.n_steps} * {self.n_envs}; raise --agent-n-steps or "
                             "--agent-n-envs")

    def envs_for(self, action_space: gym.Space) -> int:
        """Parallel envs: n_envs for PPO; one for SAC (one gradient step per env step)."""
        return 1 if self.resolve_algo(action_space) == "sac" else self.n_envs

    def resolve_algo(self, action_space: gym.Space) -> str:
        from gymnasium.spaces import Box

        if self.algo != "auto":
            if self.algo == "sac" and not isinstance(action_space, Box):
                raise ValueError("SAC needs continuous (Box) actions; use --agent-algo ppo")
            return self.algo
        if isinstance(action_space, Box):
            return "sac"
        self._check_ppo_batch()
        return "ppo"


@dataclass
class PolicyDPOConfig:
    """Settings of :func:`rlhf_hgt.control.policy_dpo.train_policy_dpo` (``--algo dpo``).

    With these defaults, 500 labels and 20k steps, DPO from a random CartPole-v1 policy
    improved on its start on 5 seeds of 5 (mean return 63 -> 329; BENCHMARKS.md)."""

    alpha: float = field(default=0.1, metadata={
        "help": "temperature of the implicit reward (DPO's beta, CPL's alpha): larger values "
                "let the policy move less far from the reference for the same margin"})
    lr: float = field(default=3e-4, metadata={"help": "Adam step size for the actor"})
    epochs: int = field(default=10, metadata={"help": "passes over the training pairs"})
    batch_size: int = field(default=32, metadata={"help": "pairs per optimiser step"})
    discount: float = field(default=1.0, metadata={
        "help": "gamma in the segment score: weight gamma^t on step t of a segment (CPL)"})
    conservative_lambda: float = field(default=1.0, metadata={
        "help": "CPL's conservative bias: the rejected side's score is multiplied by this "
                "(1 = plain DPO; 0.5 makes the chosen actions rise instead of only pushing "
                "the rejected ones down)"})
    bc_weight: float = field(default=0.0, metadata={
        "help": "weight of a behaviour-cloning term (mean negative log-likelihood of the "
                "preferred segments' actions); ties count half for each side"})
    label_noise: float = field(default=0.0, metadata={
        "help": "probability that an answer is random (noise term of the shared core)"})
    max_grad_norm: float | None = field(default=1.0, metadata={
        "help": "clip the actor's gradient norm to this (none: no clipping)"})
    holdout_fraction: float = field(default=0.2, metadata={
        "help": "share of pairs kept out of training to measure implicit-preference accuracy"})
    stable_split: bool = field(default=True, metadata={
        "help": "choose held-out pairs by a hash of their content, so that over the rounds of "
                "a loop a pair stays on its side and trained pairs never score as held out "
                "(off: a fresh random split each time)"})
    weight_decay: float = field(default=0.0, metadata={"help": "Adam weight decay"})

    def __post_init__(self) -> None:
        if not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise ValueError(f"alpha must be a positive number (0.1 is a good start), "
                             f"got {self.alpha}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0 (3e-4 is a good start), got {self.lr}")
        if int(self.epochs) != self.epochs or self.epochs < 1:
            raise ValueError(f"epochs must be a whole number >= 1, got {self.epochs}")
        if int(self.batch_size) != self.batch_size or self.batch_size < 1:
            raise ValueError(f"batch_size must be a whole number >= 1, got {self.batch_size}")
        if not 0 < self.discount <= 1:
            raise ValueError(f"discount must lie in (0, 1], got {self.discount}")
        if not 0 < self.conservative_lambda <= 1:
            raise ValueError(f"conservative_lambda must lie in (0, 1] (1 turns it off), "
                             f"got {self.conservative_lambda}")
        if not self.bc_weight >= 0:
            raise ValueError(f"bc_weight must be >= 0 (0 turns it off), got {self.bc_weight}")
        if not 0 <= self.label_noise < 1:
            raise ValueError(f"label_noise is a probability: use 0 <= label_noise < 1, "
                             f"got {self.label_noise}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0, or None for no clipping, "
                             f"got {self.max_grad_norm}")
        if not 0 <= self.holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must lie in [0, 1), got {self.holdout_fraction}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        self.epochs, self.batch_size = int(self.epochs), int(self.batch_size)


@dataclass
class ControlConfig:
    """One run of the control loop (the `rlhf-hgt control` command)."""

    env_id: str = field(metadata={"help": "any gymnasium id, also 'module:Env-v0'"})
    out: str = field(metadata={"help": "run directory (metrics, checkpoints, store)"})
    teacher: str = field(default="oracle", metadata={
        "help": "oracle, stochastic, mistake, skip, equal, myopic (with :param=value), "
                "human (asks in this terminal) or external (waits for `rlhf-hgt label`)"})
    labels: int = field(default=500, metadata={
        "help": "total comparisons to ask for (CartPole-v1 and Pendulum-v1 reached the "
                "true-reward agent's return with 50 to 500, BENCHMARKS.md)"})
    timesteps: int = field(default=50_000, metadata={"help": "agent env steps in all"})
    algo: str = field(default="ppo", metadata={
        "help": "the preference learner: ppo (reward model + RL on it; the agent is set by "
                "--agent-algo) or dpo (the policy learns from the pairs directly)"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    rounds: int = field(default=10, metadata={
        "help": "gather/fit/train rounds (at most one per label)"})
    segment_length: int = field(default=50, metadata={"help": "steps per compared clip"})
    query_method: str = field(default="disagreement", metadata={
        "help": "random or disagreement (ensemble uncertainty; learners with a reward "
                "ensemble only, the others ask random pairs)"})
    initial_label_fraction: float = field(default=0.25, metadata={
        "help": "share of the labels asked for before any policy training"})
    explore_fraction: float = field(default=0.1, metadata={
        "help": "share of --timesteps the agent first trains to visit new states (a "
                "state-entropy reward, PEBBLE's unsupervised pre-training) before the first "
                "questions, so that on sparse-reward tasks the first clips differ and the "
                "answers are not all ties; it keeps exploring while every answer so far is a "
                "tie; 0 turns both off (--algo ppo; in whole PPO rollouts, none when one "
                "rollout is more than twice the share). Acrobot-v1, 200 labels, 4 seeds: "
                "0.98-1.03 of the true-reward agent with 0.1 (0.97-1.04 with 0.25), 2 seeds "
                "of 4 stuck at -500 with 0; no cost seen on Reacher-v5 or "
                "MountainCarContinuous-v0 (BENCHMARKS.md)"})
    explore_ent_coef: float = field(default=0.01, metadata={
        "help": "PPO's entropy bonus while exploring (at least this much; the agent's own "
                "ent_coef returns when the answers say something), so the policy stays "
                "random enough to keep reaching new states; SAC maximises entropy anyway. "
                "MountainCar-v0, 200 labels, 150k steps: the flag reached on 2 seeds of 2 "
                "with 0.01, not on seed 0 with 0; exploring alone for 100k steps, the first "
                "flag after 92k/53k steps with 0.01 against never/85k with 0 (BENCHMARKS.md)"})
    eval_episodes: int = field(default=10, metadata={"help": "episodes for the true return"})
    store: str | None = field(default=None, metadata={
        "help": "preference store (default RUN_DIR/feedback.db)"})
    record_frames: bool | None = field(default=None, metadata={
        "help": "store rgb frames with each clip (default: only for human teachers)"})
    reward: RewardModelConfig = field(default_factory=RewardModelConfig, metadata={
        "help": "the reward ensemble (algo ppo); a RewardModelConfig or a dict of its fields"})
    agent: AgentConfig = field(default_factory=AgentConfig, metadata={
        "help": "the RL agent trained on the learned reward; an AgentConfig or a dict"})
    init_policy: str | None = field(default=None, metadata={
        "help": "start from this policy: an SB3 PPO/A2C .zip (weights read, nothing "
                "unpickled) or a .safetensors policy state dict of a run"})
    lora_r: int = field(default=0, metadata={
        "help": "adapt the policy through LoRA adapters of this rank (0: train all weights; "
                "r8 adapted a CartPole-v1 policy to CartPoleLeft on 4 seeds of 5, "
                "BENCHMARKS.md)"})
    dpo: PolicyDPOConfig = field(default_factory=PolicyDPOConfig, metadata={
        "help": "policy DPO (algo dpo); a PolicyDPOConfig or a dict of its fields"})
    feature_marks: str | None = field(default=None, metadata={
        "help": "observation features a person says decide what is better: indices and "
                "ranges, e.g. 0,1,4-5 (vector observations, --algo ppo); the reward "
                "ensemble's input gradients on the other features are penalised (Right for "
                "the Right Reasons on the Bradley-Terry reward, weight --mark-weight)"})
    mark_weight: float | None = field(default=None, metadata={
        "help": f"weight of the feature-mark penalty (of --feature-marks, and then of the "
                f"marks people give per pair at the prompt too), the share in [0, 1] of the "
                f"reward's "
                f"squared input gradient outside the marked features (default "
                f"{DEFAULT_MARK_WEIGHT:g}: random-policy clips with distractors time:2,noise:2, "
                "300 training pairs the distractors order as the true reward does, 200 "
                "held-out pairs they order the opposite way, 3 seeds: accuracy went from 0.22 "
                "to 0.87 on Pendulum-v1 and from 0.69 to 0.96 on rlhf_hgt/CartPoleLeft-v0, "
                "the distractors' share from 0.67 to 0.01 and from 0.51 to 0.006; weights 3 "
                "to 30 were within 0.03 of the best on both, 1 and 100 fell to 0.73 and "
                "0.78 on Pendulum-v1)"})
    marker: str | None = field(default=None, metadata={
        "help": "a synthetic marker beside the synthetic teacher: with each answer it marks "
                "the features that decided, as a person does with the m key: FEATURES"
                "[:noise=P], e.g. 0-3 or 0-3:noise=0.2 (each feature's mark flipped with "
                "probability P per pair); marking other features is the wrong-marks break "
                "condition (tests and benchmarks; --algo ppo)"})
    time_weighting: bool = field(default=False, metadata={
        "help": "turn each answer's response time into a confidence for its comparison: its "
                "rank among the same annotator's times (people differ in speed), 1 for the "
                "fastest down to --time-floor for the slowest (rlhf_hgt.confidence; --algo "
                "ppo)"})
    time_weighting_mode: str = field(default="weight", metadata={
        "help": "weight: the confidence weighs the comparison's loss; soft: it moves the "
                "target towards 0.5", "choices": ("weight", "soft")})
    time_floor: float = field(default=DEFAULT_TIME_FLOOR, metadata={
        "help": "the slowest answer's confidence, in [0, 1]"})
    distractors: str | None = field(default=None, metadata={
        "help": "append distractor features to the env's vector observation, KIND:K[,...] "
                "with KIND noise, time (time in episode), drift (slow drift over all steps) "
                "or random_walk, e.g. noise:2,time:2 (rlhf_hgt.envs.DistractorWrapper); the "
                "store records the clips under ENV_ID+distractors(SPEC)"})

    def __post_init__(self) -> None:
        self.reward = config_from_dict(RewardModelConfig, self.reward, "reward")
        self.agent = config_from_dict(AgentConfig, self.agent, "agent")
        self.dpo = config_from_dict(PolicyDPOConfig, self.dpo, "dpo")
        if self.labels < 1:
            raise ValueError(f"--labels must be at least 1, got {self.labels}")
        if self.timesteps < 1:
            raise ValueError(f"--timesteps must be at least 1, got {self.timesteps}")
        if self.algo not in LEARNERS:
            raise ValueError(f"--algo must be {' or '.join(LEARNERS)}, got {self.algo!r}")
        if self.rounds < 1:
            raise ValueError(f"--rounds must be at least 1, got {self.rounds}")
        if self.segment_length < 2:
            raise ValueError(f"--segment-length must be at least 2, got {self.segment_length}")
        if self.query_method not in ("random", "disagreement"):
            raise ValueError(f"--query-method must be random or disagreement, "
                             f"got {self.query_method!r}")
        if not 0 < self.initial_label_fraction < 1:
            raise ValueError(f"--initial-label-fraction must lie strictly between 0 and 1 "
                             f"(0.25 is usual), got {self.initial_label_fraction}")
        if not 0 <= self.explore_fraction < 1:
            raise UserInputError(f"--explore-fraction must lie in [0, 1) (0 turns exploration "
                                 f"off), got {self.explore_fraction}")
        if not 0 <= self.explore_ent_coef < math.inf:
            raise UserInputError(f"--explore-ent-coef must be >= 0 (0: the agent's own "
                                 f"ent_coef while exploring), got {self.explore_ent_coef}")
        if self.lora_r < 0:
            raise ValueError(f"--lora-r must be 0 (off) or a rank >= 1, got {self.lora_r}")
        if self.init_policy is not None and not Path(self.init_policy).is_file():
            raise ValueError(f"--init-policy {self.init_policy}: no such file; give an SB3 "
                             ".zip or a .safetensors policy checkpoint")
        if self.eval_episodes < 1:
            raise ValueError(f"--eval-episodes must be at least 1, got {self.eval_episodes}")
        if self.algo == "dpo" and self.reward.pessimism > 0:
            raise ValueError("--pessimism shapes the learned reward; --algo dpo has none "
                             "(leave --pessimism out, or use --algo ppo)")
        if self.feature_marks is not None:
            parse_feature_marks(self.feature_marks)
            if self.algo != "ppo":
                raise UserInputError(f"--feature-marks shape the learned reward; --algo "
                                     f"{self.algo} has none (use --algo ppo, or leave "
                                     "--feature-marks out)")
        if self.mark_weight is not None and not 0 <= self.mark_weight < math.inf:
            raise UserInputError(f"--mark-weight must be >= 0 and finite (default "
                                 f"{DEFAULT_MARK_WEIGHT:g}), got {self.mark_weight}")
        if self.mark_weight is not None and self.feature_marks is None:
            raise UserInputError("--mark-weight weighs the feature-mark penalty: give "
                                 "--feature-marks too, or leave --mark-weight out (marks "
                                 f"given per pair at the prompt weigh {DEFAULT_MARK_WEIGHT:g})")
        if self.marker is not None:
            parse_marker(self.marker)
            if self.human or self.algo != "ppo":
                raise UserInputError("--marker marks for a synthetic teacher's answers and "
                                     "shapes the learned reward: give a synthetic --teacher "
                                     "and --algo ppo (people mark with the m key)")
        if self.time_weighting and self.algo != "ppo":
            raise UserInputError(f"--time-weighting weighs the reward model's comparisons; "
                                 f"--algo {self.algo} has none (use --algo ppo, or leave "
                                 "--time-weighting out)")
        if self.time_weighting_mode not in ("weight", "soft"):
            raise UserInputError(f"--time-weighting-mode must be weight or soft, got "
                                 f"{self.time_weighting_mode!r}")
        if not 0 <= self.time_floor <= 1:
            raise UserInputError(f"--time-floor must lie in [0, 1], got {self.time_floor}")
        if self.distractors is not None:
            parse_distractors(self.distractors)
        self.rounds = min(self.rounds, self.labels)

    @property
    def task_id(self) -> str:
        """The id the store files this run's clips under: ENV_ID, with the distractors."""
        return self.env_id if not self.distractors else \
            f"{self.env_id}+distractors({self.distractors})"

    @property
    def marks_weight(self) -> float:
        """The feature-mark weight in force (0 without marks)."""
        if self.feature_marks is None:
            return 0.0
        return DEFAULT_MARK_WEIGHT if self.mark_weight is None else float(self.mark_weight)

    @property
    def human(self) -> bool:
        return self.teacher.split(":")[0] in HUMAN_TEACHERS
