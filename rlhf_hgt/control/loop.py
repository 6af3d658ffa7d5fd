"""The control loop: gather queries → answers → fit reward → train policy, round after round.

Christiano et al. (2017): trajectory segments of the current policy are compared by a
person (or a synthetic teacher); an ensemble of reward models learns from every stored
answer with the shared Bradley–Terry core; the policy is trained on the learned reward.
With ``algo="dpo"`` the policy learns from the preferences directly (no reward model).

Asking and answering go through the store, so a person can answer from another terminal
(``rlhf-hgt label STORE``) while the policy trains, and a killed run resumes from its last
finished round.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from rlhf_hgt.control import checkpoint
from rlhf_hgt.control.agents import (
    AgentConfig,
    agent_steps_per_round,
    evaluate_true_return,
    make_agent,
    make_vec_env,
    random_return,
)
from rlhf_hgt.control.fragments import cut_segments
from rlhf_hgt.control.queries import query_schedule, select_pairs
from rlhf_hgt.control.reward_model import RewardEnsemble, RewardModelConfig
from rlhf_hgt.control.rollouts import BatchedRewardCallback, RolloutRecorder
from rlhf_hgt.envs import HiddenRewardWrapper, LearnedRewardVecEnv, make_env
from rlhf_hgt.feedback.store import PreferenceStore
from rlhf_hgt.feedback.teachers import answer_pending, make_teacher
from rlhf_hgt.preference import answers_to_targets

HUMAN_TEACHERS = ("human", "external")


@dataclass
class ControlConfig:
    """One run of the control loop (the `rlhf-hgt control` command)."""

    env_id: str = field(metadata={"help": "any gymnasium id, also 'module:Env-v0'"})
    out: str = field(metadata={"help": "run directory (metrics, checkpoints, store)"})
    teacher: str = field(default="oracle", metadata={
        "help": "oracle, stochastic, mistake, skip, equal, myopic (with :param=value), "
                "human (asks in this terminal) or external (waits for `rlhf-hgt label`)"})
    labels: int = field(default=500, metadata={"help": "total comparisons to ask for"})
    timesteps: int = field(default=50_000, metadata={"help": "agent env steps in all"})
    algo: str = field(default="ppo", metadata={
        "help": "ppo: reward model + RL on it; dpo: policy learns from the pairs directly"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    rounds: int = field(default=10, metadata={"help": "gather/fit/train rounds"})
    segment_length: int = field(default=50, metadata={"help": "steps per compared clip"})
    query_method: str = field(default="disagreement", metadata={
        "help": "random or disagreement (ensemble uncertainty; PPO only)"})
    initial_label_fraction: float = field(default=0.25, metadata={
        "help": "share of the labels asked for before any policy training"})
    eval_episodes: int = field(default=10, metadata={"help": "episodes for the true return"})
    store: str | None = field(default=None, metadata={
        "help": "preference store (default RUN_DIR/feedback.db)"})
    record_frames: bool | None = field(default=None, metadata={
        "help": "store rgb frames with each clip (default: only for human teachers)"})
    reward: RewardModelConfig = field(default_factory=RewardModelConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    init_policy: str | None = field(default=None, metadata={
        "help": "start from this policy: an SB3 PPO/A2C .zip (weights read, nothing "
                "unpickled) or a .safetensors policy state dict of a run"})
    lora_r: int = field(default=0, metadata={
        "help": "adapt the policy through LoRA adapters of this rank (0: train all weights)"})
    dpo: dict = field(default_factory=dict, metadata={
        "help": "PolicyDPOConfig fields for --algo dpo"})

    def __post_init__(self) -> None:
        if self.labels < 1:
            raise ValueError(f"--labels must be at least 1, got {self.labels}")
        if self.timesteps < 1:
            raise ValueError(f"--timesteps must be at least 1, got {self.timesteps}")
        if self.algo not in ("ppo", "dpo"):
            raise ValueError(f"--algo must be ppo or dpo, got {self.algo!r}")
        if self.rounds < 1:
            raise ValueError(f"--rounds must be at least 1, got {self.rounds}")
        if self.segment_length < 2:
            raise ValueError(f"--segment-length must be at least 2, got {self.segment_length}")
        if self.query_method not in ("random", "disagreement"):
            raise ValueError(f"--query-method must be random or disagreement, "
                             f"got {self.query_method!r}")
        if not 0 < self.initial_label_fraction < 1:
            raise ValueError("initial_label_fraction must lie strictly between 0 and 1")
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
        self.rounds = min(self.rounds, self.labels)

    @property
    def human(self) -> bool:
        return self.teacher.split(":")[0] in HUMAN_TEACHERS


Progress = Callable[[str, dict[str, Any]], None]


def _quiet(event: str, info: dict[str, Any]) -> None:
    pass


IDENTITY_FIELDS = ("env_id", "algo", "teacher", "labels", "timesteps", "rounds", "seed",
                   "segment_length", "init_policy", "lora_r")


def run_identity(cfg: ControlConfig) -> dict[str, Any]:
    """What a run directory's checkpoints belong to: resuming with other values is refused."""
    return {k: getattr(cfg, k) for k in IDENTITY_FIELDS} | {
        "agent_algo": cfg.agent.algo, "n_envs": cfg.agent.n_envs}


def validate(cfg: ControlConfig) -> None:
    """Fail fast, before any work, on what a user can fix: the env id, spaces the reward
    model cannot take, the teacher spec, an agent that cannot drive these actions, a run
    directory that holds a different run."""
    stored = checkpoint.load_state(Path(cfg.out)).get("identity")
    if stored:
        diff = {k: (v, stored.get(k)) for k, v in run_identity(cfg).items()
                if stored.get(k) != v}
        if diff:
            what = ", ".join(f"{k}={old!r} (now {new!r})" for k, (new, old) in diff.items())
            raise ValueError(f"{cfg.out}: holds a run with {what}; it resumes only with the "
                             f"same settings: give a new --out, or the same settings")
    env = make_env(cfg.env_id)
    try:
        RewardEnsemble(env.observation_space, env.action_space, config=cfg.reward, seed=0)
        cfg.agent.resolve_algo(env.action_space)
        if cfg.algo == "dpo" and not isinstance(env.action_space,
                                                (gym.spaces.Discrete, gym.spaces.Box)):
            raise ValueError(f"{cfg.env_id}: --algo dpo needs Discrete or Box actions, "
                             f"got {env.action_space}")
    finally:
        env.close()
    if not cfg.human:
        make_teacher(cfg.teacher)


def run_control(cfg: ControlConfig, progress: Progress = _quiet,
                ask_human: Callable[[str, int], None] | None = None) -> dict[str, Any]:
    """Run (or resume) the loop and return the metrics written to RUN_DIR/metrics.json."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)

    # -- set-up: envs (true reward hidden), store, teacher, reward model, agent
    def env_fn() -> gym.Env:
        return HiddenRewardWrapper(make_env(cfg.env_id))

    probe = env_fn()
    obs_space, act_space = probe.observation_space, probe.action_space
    probe.close()
    store = PreferenceStore(cfg.store or out / "feedback.db")
    teacher = None if cfg.human else make_teacher(cfg.teacher)
    record_frames = cfg.human if cfg.record_frames is None else cfg.record_frames
    ensemble = RewardEnsemble(obs_space, act_space, config=cfg.reward, seed=cfg.seed)

    def learned_reward(obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        return ensemble.predict(obs, actions)

    venv = make_vec_env(env_fn, cfg.agent.envs_for(act_space), cfg.seed, cfg.agent.subprocess)
    recorder = RolloutRecorder(venv)
    on_policy = cfg.agent.resolve_algo(act_space) == "ppo"
    # PPO: the learned reward for each whole rollout in one batched call (see rollouts.py);
    # SAC: per step, into its replay buffer (relabelled after every refit)
    train_env = recorder if on_policy else LearnedRewardVecEnv(recorder, learned_reward)
    reward_callback = BatchedRewardCallback(learned_reward, act_space, cfg.agent.gamma,
                                            cfg.agent.normalize_reward) if on_policy else None
    agent = make_agent(cfg.agent, train_env, cfg.seed)
    if cfg.init_policy:
        agent = _initial_policy(cfg, agent, train_env)
    if cfg.lora_r:
        from rlhf_hgt.control.lora import apply_lora

        apply_lora(agent, r=cfg.lora_r, alpha=2.0 * cfg.lora_r, target="all")
    start_return, _ = evaluate_true_return(agent, env_fn, max(3, cfg.eval_episodes // 2),
                                           seed=123_456)
    labels_per_round = query_schedule(cfg.labels, cfg.rounds, cfg.initial_label_fraction)
    steps_per_round = agent_steps_per_round(cfg.agent, train_env, cfg.timesteps, cfg.rounds) \
        if cfg.algo == "ppo" else [cfg.timesteps // cfg.rounds] * cfg.rounds
    if cfg.algo == "ppo" and sum(steps_per_round) > cfg.timesteps:
        progress("steps_rounded", {"asked": cfg.timesteps, "steps": sum(steps_per_round),
                                   "rounds": cfg.rounds, "per_round": steps_per_round[0]})
    reference = None  # the starting policy (taken before any resume restores weights)
    if cfg.algo == "dpo":
        from rlhf_hgt.control.policy_dpo import PolicyDPOConfig, frozen_reference

        dpo_cfg = PolicyDPOConfig(**cfg.dpo)
        reference = frozen_reference(agent.policy)
    state = checkpoint.load_state(out)
    history: list[dict[str, Any]] = state.get("history", [])
    if state:
        checkpoint.restore(out, agent, ensemble)
        progress("resume", {"round": state["round"] + 1})
    start_round = state.get("round", -1) + 1

    for rnd in range(start_round, cfg.rounds):
        t_round = time.time()
        # 1. gather: clips of the current policy, the most informative pairs, into the store
        source = f"{cfg.algo}:{cfg.seed}:round{rnd}"
        episodes = _policy_episodes(agent, recorder, env_fn, cfg, rnd, rng, record_frames)
        if store.query_ids(round=rnd, source=source):
            progress("queries", {"round": rnd, "added": 0, "resumed": True})
        else:  # (a run killed after asking keeps the questions it asked)
            candidates = cut_segments(episodes, cfg.segment_length,
                                      max(4 * labels_per_round[rnd], 64), rng)
            use_ensemble = (cfg.algo == "ppo" and cfg.query_method == "disagreement"
                            and ensemble.fitted)
            pairs = select_pairs(candidates, labels_per_round[rnd],
                                 "disagreement" if use_ensemble else "random",
                                 ensemble if use_ensemble else None, rng=rng)
            store.add_segment_queries(pairs, env_id=cfg.env_id, left_source=source,
                                      right_source=source, round=rnd)
            progress("queries", {"round": rnd, "added": len(pairs)})

        # 2. answers (a person labels while the policy keeps training on the last reward)
        trainer = None
        if cfg.human and rnd > 0 and cfg.algo == "ppo":
            trainer = threading.Thread(target=agent.learn, kwargs={
                "total_timesteps": steps_per_round[rnd], "reset_num_timesteps": False,
                "callback": reward_callback})
            trainer.start()
        if teacher is not None:
            answer_pending(store, teacher, rng=rng,
                           among=store.query_ids(round=rnd, source=source))
        else:
            _wait_for_people(store, cfg, ask_human, progress)
        if trainer is not None:
            trainer.join()

        # 3. fit the reward model on every stored answer (or the policy, for DPO)
        left, right, targets = _stored_preferences(store, cfg.env_id)
        fit_metrics: dict[str, Any] = {}
        if cfg.algo == "ppo" and len(targets):
            fit_metrics = ensemble.fit(left, right, targets, rng=rng)
            _fit_normalisation(ensemble, episodes)
            from rlhf_hgt.control.agents import relabel_replay_buffer

            relabel_replay_buffer(agent, learned_reward)
        elif cfg.algo == "dpo" and len(targets):
            from rlhf_hgt.control.policy_dpo import train_policy_dpo

            prefs = list(zip(left, right, targets.tolist(), strict=True))
            fit_metrics = train_policy_dpo(agent.policy, prefs, dpo_cfg, rng=rng,
                                           reference=reference)
        progress("fit", {"round": rnd, **_scalars(fit_metrics)})

        # 4. train the policy on the learned reward
        if cfg.algo == "ppo" and trainer is None:
            agent.learn(total_timesteps=steps_per_round[rnd], reset_num_timesteps=False,
                        callback=reward_callback)
        mean_ret, _ = evaluate_true_return(agent, env_fn, max(3, cfg.eval_episodes // 2),
                                           seed=10_000 + rnd)
        row = {"round": rnd, "labels": len(targets), "timesteps": int(agent.num_timesteps)
               if cfg.algo == "ppo" else sum(steps_per_round[: rnd + 1]),
               "true_return": mean_ret, "seconds": time.time() - t_round,
               **{f"reward_{k}": v for k, v in _scalars(fit_metrics).items()}}
        history.append(row)
        progress("round", row)
        checkpoint.save(out, rnd, agent, ensemble, history, run_identity(cfg))

    # -- evaluate on the env's own reward, write metrics and the learning curve
    mean_ret, std_ret = evaluate_true_return(agent, env_fn, cfg.eval_episodes, seed=123_456)
    left, right, targets = _stored_preferences(store, cfg.env_id)
    last_fit = next((h for h in reversed(history) if "reward_holdout_accuracy" in h), {})
    metrics = {
        "env_id": cfg.env_id, "algo": cfg.algo, "teacher": cfg.teacher, "seed": cfg.seed,
        "true_return_mean": mean_ret, "true_return_std": std_ret,
        "eval_episodes": cfg.eval_episodes, "labels": int(len(targets)),
        "timesteps": int(agent.num_timesteps) if cfg.algo == "ppo" else sum(steps_per_round),
        "reward_model_accuracy": last_fit.get("reward_holdout_accuracy",
                                              last_fit.get("reward_holdout_pref_accuracy")),
        "random_return_mean": random_return(env_fn, cfg.eval_episodes, seed=123_456),
        "start_return_mean": start_return,
        "history": history,
    }
    if cfg.lora_r:
        from rlhf_hgt.control.lora import save_adapter

        save_adapter(agent, out / "adapter")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    checkpoint.write_manifest(out, cfg_dict(cfg), store)
    checkpoint.plot_curve(out, history)
    store.close()
    train_env.close()
    return metrics


def _initial_policy(cfg: ControlConfig, agent, train_env):
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

    algo = cfg.agent.resolve_algo(train_env.action_space)
    if algo != "ppo":
        raise ValueError(f"--init-policy with a .zip needs a PPO agent (use --agent-algo ppo), "
                         f"not {algo}")
    a = cfg.agent
    return load_sb3_checkpoint(path, train_env, algo="ppo", seed=cfg.seed,
                               learning_rate=a.learning_rate, n_steps=a.n_steps,
                               batch_size=a.batch_size, n_epochs=a.n_epochs, gamma=a.gamma,
                               gae_lambda=a.gae_lambda, ent_coef=a.ent_coef)


def cfg_dict(cfg: ControlConfig) -> dict[str, Any]:
    return asdict(cfg)


def _policy_episodes(agent, recorder: RolloutRecorder, env_fn, cfg: ControlConfig, rnd: int,
                     rng: np.random.Generator, record_frames: bool) -> list[dict[str, np.ndarray]]:
    """Episodes to cut clips from: the agent's own recent training rollouts when there are
    enough, else fresh rollouts of the current policy (always when frames are wanted)."""
    from rlhf_hgt.control.fragments import collect_rollouts

    recent = recorder.episodes_so_far()
    steps = sum(len(e["obs"]) for e in recent)
    if not record_frames and steps >= 4 * cfg.segment_length:
        recorder.clear()
        return recent
    if record_frames:
        def render_env_fn() -> gym.Env:
            return HiddenRewardWrapper(make_env(cfg.env_id, render_mode="rgb_array"))
        env = render_env_fn()
    else:
        env = env_fn()
    n = max(8 * cfg.segment_length, 1000)
    episodes = collect_rollouts(env, agent, n, rng, record_frames=record_frames)
    env.close()
    return episodes


def _stored_preferences(store: PreferenceStore, env_id: str):
    left, right, answers = [], [], []
    for query, ans in store.labelled(kind="segment"):
        if query.env_id != env_id:
            continue
        left.append(query.left)
        right.append(query.right)
        answers.append(ans.answer)
    targets, _ = answers_to_targets(answers)
    return left, right, targets.numpy()


def _fit_normalisation(ensemble: RewardEnsemble, episodes: list[dict[str, np.ndarray]]) -> None:
    """Unit spread of the learned reward on recent policy steps. Where clips ran past an
    episode's end, "episode over" is already worth exactly 0 to the reward model, so the
    reward is not centred: living on is worth what the person's answers say, and the agent
    is neither paid to end episodes early nor to drag them out."""
    obs = np.concatenate([e["obs"] for e in episodes])
    acts = np.concatenate([e["actions"] for e in episodes])
    ensemble.fit_normalization(obs, acts)


def _wait_for_people(store: PreferenceStore, cfg: ControlConfig,
                     ask_human: Callable[[str, int], None] | None, progress: Progress) -> None:
    """Human teachers: prompt in this terminal, or wait for answers given elsewhere."""
    if cfg.teacher == "human" and ask_human is not None:
        ask_human(str(store.path), 0)
    while True:
        pending = store.unanswered_ids()
        if not pending:
            return
        progress("waiting", {"pending": len(pending), "store": str(store.path)})
        time.sleep(2.0)


def _scalars(d: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in d.items() if isinstance(v, int | float)}
