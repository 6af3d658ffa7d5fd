"""The control loop: gather queries → answers → fit → train policy, round after round.

Christiano et al. (2017): trajectory segments of the current policy are compared by a
person (or a synthetic teacher); a preference learner (:mod:`rlhf_hgt.control.learner`)
learns from every stored answer and trains the policy. ``algo="ppo"``: an ensemble of
reward models (the shared Bradley–Terry core) and an RL agent on the learned reward;
``algo="dpo"``: the policy learns from the preferences directly (no reward model).

Asking and answering go through the store, so a person can answer from another terminal
(``rlhf-hgt label STORE``) while the policy trains, and a killed run resumes from its last
finished round.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from rlhf_hgt.control import checkpoint
from rlhf_hgt.control.agents import evaluate_true_return, make_vec_env, random_return
from rlhf_hgt.control.config import (  # noqa: F401 - their old home: ``from ..loop import``
    HUMAN_TEACHERS,
    AgentConfig,
    ControlConfig,
    PolicyDPOConfig,
    RewardModelConfig,
    parse_feature_marks,
    parse_marker,
)
from rlhf_hgt.control.fragments import cut_segments
from rlhf_hgt.control.labels import stored_labels
from rlhf_hgt.control.learner import PreferenceLearner, learner_class
from rlhf_hgt.control.queries import query_schedule, select_pairs
from rlhf_hgt.control.rollouts import RolloutRecorder
from rlhf_hgt.envs import HiddenRewardWrapper, make_env
from rlhf_hgt.envs.wrappers import add_distractors
from rlhf_hgt.feedback.errors import UserInputError
from rlhf_hgt.feedback.files import write_json_atomic
from rlhf_hgt.feedback.store import PreferenceStore
from rlhf_hgt.feedback.teachers import SyntheticMarker, answer_pending, make_teacher
from rlhf_hgt.governance import lineage
from rlhf_hgt.governance.card import write_checkpoint_cards
from rlhf_hgt.governance.oversight import Overseer, parse_round, round_name

Progress = Callable[[str, dict[str, Any]], None]


def _quiet(event: str, info: dict[str, Any]) -> None:
    pass


IDENTITY_FIELDS = ("env_id", "algo", "teacher", "labels", "timesteps", "rounds", "seed",
                   "segment_length", "init_policy", "lora_r", "distractors")


def run_identity(cfg: ControlConfig) -> dict[str, Any]:
    """What a run directory's checkpoints belong to: resuming with other values is refused."""
    return {k: getattr(cfg, k) for k in IDENTITY_FIELDS} | {
        "agent_algo": cfg.agent.algo, "n_envs": cfg.agent.n_envs}


def validate(cfg: ControlConfig) -> None:
    """Fail fast, before any work, on what a user can fix: the env id, spaces the learner
    cannot take, the teacher spec, an agent that cannot drive these actions, a run
    directory that holds a different run."""
    stored = checkpoint.load_state(Path(cfg.out)).get("identity")
    if stored:
        diff = {k: (v, stored.get(k)) for k, v in run_identity(cfg).items()
                if stored.get(k) != v}
        if diff:
            what = ", ".join(f"{k}={old!r} (now {new!r})" for k, (new, old) in diff.items())
            raise ValueError(f"{cfg.out}: holds a run with {what}; it resumes only with the "
                             f"same settings: give a new --out, or the same settings")
    env = task_env(cfg)
    try:
        learner_class(cfg.algo).check(cfg, env)
        make_marker(cfg, env.observation_space)
    finally:
        env.close()
    if not cfg.human:
        make_teacher(cfg.teacher)


def make_marker(cfg: ControlConfig, space: gym.Space) -> SyntheticMarker | None:
    """The run's synthetic marker (``--marker``), checked against the observation size."""
    if cfg.marker is None:
        return None
    shape = getattr(space, "shape", None)
    if not shape or len(shape) != 1:
        raise UserInputError(f"--marker marks vector observation features; {cfg.env_id} "
                             f"observes {space}")
    features, noise = parse_marker(cfg.marker, int(shape[0]))
    return SyntheticMarker(features, int(shape[0]), noise, seed=cfg.seed)


def task_env(cfg: ControlConfig, **kwargs: Any) -> gym.Env:
    """A fresh env of the run's task: ENV_ID with the run's distractors, if any."""
    env = make_env(cfg.env_id, **kwargs)
    try:
        return add_distractors(env, cfg.distractors)
    except ValueError:
        env.close()
        raise


def run_control(cfg: ControlConfig, progress: Progress = _quiet,
                ask_human: Callable[[str, int], None] | None = None) -> dict[str, Any]:
    """Run (or resume) the loop and return the metrics written to RUN_DIR/metrics.json."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)

    # -- set-up: envs (true reward hidden), store, teacher, the learner and its policy
    def env_fn() -> gym.Env:
        return HiddenRewardWrapper(task_env(cfg))

    probe = env_fn()
    act_space = probe.action_space
    marker = make_marker(cfg, probe.observation_space)  # marks with the teacher's answers
    probe.close()
    store = PreferenceStore(cfg.store or out / "feedback.db")
    teacher = None if cfg.human else make_teacher(cfg.teacher)
    record_frames = cfg.human if cfg.record_frames is None else cfg.record_frames
    venv = make_vec_env(env_fn, cfg.agent.envs_for(act_space), cfg.seed, cfg.agent.subprocess)
    recorder = RolloutRecorder(venv)  # the policy's training steps, cut into new clips
    learner: PreferenceLearner = learner_class(cfg.algo)(cfg, recorder)
    start_return, _ = evaluate_true_return(learner.agent, env_fn,
                                           max(3, cfg.eval_episodes // 2), seed=123_456)
    labels_per_round = query_schedule(cfg.labels, cfg.rounds, cfg.initial_label_fraction)
    explore_steps = int(cfg.explore_fraction * cfg.timesteps) if learner.explores else 0
    if explore_steps:  # in whole PPO rollouts, taken from the budget (total steps unchanged)
        whole = learner.steps_per_round(explore_steps, 1)[0]
        explore_steps = whole if whole <= 2 * explore_steps else 0  # too small a budget
    steps_per_round = learner.steps_per_round(cfg.timesteps - explore_steps, cfg.rounds)
    if sum(steps_per_round) > cfg.timesteps:
        progress("steps_rounded", {"asked": cfg.timesteps, "steps": sum(steps_per_round),
                                   "rounds": cfg.rounds, "per_round": steps_per_round[0]})
    overseer = Overseer(out, progress)  # a person's pause / stop / reject / rollback
    learner.gate = overseer.gate
    state = _start_state(out, learner, overseer, progress)
    history: list[dict[str, Any]] = state.get("history", [])
    generation = int(state.get("generation", 0))  # rounds trained again after a rollback
    rnd = state.get("round", -1) + 1
    if rnd == 0 and explore_steps and not learner.timesteps:  # a fresh start
        progress("explore", {"steps": explore_steps})
        learner.explore(explore_steps)

    while rnd < cfg.rounds:
        if not overseer.gate(force=True):  # between rounds: a pause holds here
            learner, state = _obey(overseer, out, cfg, learner, recorder, progress)
            if state is None:
                break  # stopped
            history, rnd = state.get("history", []), state.get("round", -1) + 1
            generation += 1
            continue
        t_round = time.time()
        # 1. gather: clips of the current policy, the most informative pairs, into the store
        source = f"{cfg.algo}:{cfg.seed}:round{rnd}" + (f":g{generation}" if generation else "")
        episodes = _policy_episodes(learner.agent, recorder, env_fn, cfg, rnd, rng,
                                    record_frames)
        if store.query_ids(round=rnd, source=source):
            progress("queries", {"round": rnd, "added": 0, "resumed": True})
        else:  # (a run killed after asking keeps the questions it asked)
            candidates = cut_segments(episodes, cfg.segment_length,
                                      max(4 * labels_per_round[rnd], 64), rng)
            model = learner.query_model() if cfg.query_method == "disagreement" else None
            pairs = select_pairs(candidates, labels_per_round[rnd],
                                 "random" if model is None else "disagreement", model, rng=rng)
            store.add_segment_queries(pairs, env_id=cfg.task_id, left_source=source,
                                      right_source=source, round=rnd)
            progress("queries", {"round": rnd, "added": len(pairs)})

        # 2. answers (a person labels while the policy keeps training on the last fit)
        background = None
        if cfg.human and rnd > 0 and learner.trains_while_people_label:
            background = threading.Thread(target=learner.train, args=(steps_per_round[rnd],))
            background.start()
        if teacher is not None:
            answer_pending(store, teacher, rng=rng, marker=marker,
                           among=store.query_ids(round=rnd, source=source))
        else:
            _wait_for_people(store, cfg, ask_human, progress, overseer)
        if background is not None:
            background.join()

        # 3. fit the learner on every stored answer
        labels = stored_labels(store, cfg, learner.marks)
        fit_metrics = learner.fit(labels.left, labels.right, labels.targets, episodes, rng,
                                  **labels.extras()) if len(labels) else {}
        progress("fit", {"round": rnd, **_scalars(fit_metrics)})

        # 4. train the policy (unless it trained while people labelled); a person's act
        # ends the training early: a stop keeps this round's checkpoint, the others drop it
        if background is None and overseer.pending is None:
            learner.train(steps_per_round[rnd])
        if overseer.pending is not None and overseer.pending.get("act") != "stop":
            continue  # carried out at the top of the loop
        mean_ret, _ = evaluate_true_return(learner.agent, env_fn,
                                           max(3, cfg.eval_episodes // 2), seed=10_000 + rnd)
        row = {"round": rnd, "labels": len(labels), "timesteps": learner.timesteps,
               "true_return": mean_ret, "seconds": time.time() - t_round,
               **{f"reward_{k}": v for k, v in _scalars(fit_metrics).items()}}
        history.append(row)
        progress("round", row)
        lineage.stage(out / checkpoint.CHECKPOINTS, store, labels.answer_ids)  # with the weights
        checkpoint.save(out, rnd, learner, history, run_identity(cfg),
                        extra={"generation": generation} if generation else None)
        snapshot = checkpoint.round_dir(out, rnd)
        lineage.record_checkpoint(out, store, snapshot.name, [snapshot], round=rnd,
                                  role=learner_role(cfg))
        write_checkpoint_cards(out, snapshot, store=store, config=cfg_dict(cfg),
                               metrics=_so_far(cfg, history, snapshot.name))
        rnd += 1

    # -- evaluate on the env's own reward, write metrics and the learning curve
    mean_ret, std_ret = evaluate_true_return(learner.agent, env_fn, cfg.eval_episodes,
                                             seed=123_456)
    labels = stored_labels(store, cfg, learner.marks)
    last_fit = next((h for h in reversed(history) if "reward_holdout_accuracy" in h), {})
    metrics = {
        "env_id": cfg.env_id, "algo": cfg.algo, "teacher": cfg.teacher, "seed": cfg.seed,
        "true_return_mean": mean_ret, "true_return_std": std_ret,
        "eval_episodes": cfg.eval_episodes, "labels": len(labels),
        "timesteps": learner.timesteps,
        "reward_model_accuracy": last_fit.get("reward_holdout_accuracy",
                                              last_fit.get("reward_holdout_pref_accuracy")),
        "random_return_mean": random_return(env_fn, cfg.eval_episodes, seed=123_456),
        "start_return_mean": start_return,
        "explore_steps": explore_steps,
        "tie_share": float(np.mean(labels.targets == 0.5)) if len(labels) else None,
        "history": history,
    }
    metrics |= labels.summary or {}  # time weighting, pairs marked at the prompt
    if labels.marks is not None:  # the marks and the reward's attribution outside them
        metrics |= {"feature_marks": None if cfg.feature_marks is None else
                    list(parse_feature_marks(cfg.feature_marks)),
                    "mark_weight": labels.mark_weight,
                    "mark_share": next((h["reward_mark_share"] for h in reversed(history)
                                        if "reward_mark_share" in h), None)}
    if cfg.distractors:
        metrics["distractors"] = cfg.distractors
    if overseer.pending is not None:  # a stop that came during the last round
        overseer.done()
    if overseer.acts:
        metrics["oversight"] = overseer.summary()
    if overseer.stopped is not None:
        who = overseer.stopped
        metrics["status"] = f"stopped by {who.get('by')}: {who.get('reason')}"
    overseer.close()
    if cfg.lora_r:
        from rlhf_hgt.control.lora import save_adapter

        save_adapter(learner.agent, out / "adapter")
    lineage.record_run_end(out, store, [out / checkpoint.CHECKPOINTS, out / "adapter"],
                           kept=out / checkpoint.ROUNDS, role=learner_role(cfg))
    write_json_atomic(out / "metrics.json", metrics)
    checkpoint.write_manifest(out, cfg_dict(cfg), store)
    checkpoint.plot_curve(out, history)
    from rlhf_hgt.governance.card import write_cards

    write_cards(out, store=store)  # a model card beside every saved policy / reward model
    store.close()
    recorder.close()
    return metrics


def _start_state(out: Path, learner: PreferenceLearner, overseer: Overseer,
                 progress: Progress) -> dict[str, Any]:
    """Restore the last round's checkpoint, unless a person rejected it: then the last kept
    one before it that is not rejected (nothing: a fresh start)."""
    state = checkpoint.load_state(out)
    rejected = overseer.rejected()
    if state and state.get("checkpoint", round_name(state["round"])) in rejected:
        state = _roll_back_past(out, state["round"], rejected)
        progress("rejected", {"round": state.get("round")})
        if not state:
            return {"generation": 1}
    state = checkpoint.restore(out, learner)
    if state:
        progress("resume", {"round": state["round"] + 1})
    return state


def _roll_back_past(out: Path, rnd: int, rejected: set[str]) -> dict[str, Any]:
    """Roll back to the newest kept round before ``rnd`` that is not rejected ({}: none)."""
    earlier = [r for r in checkpoint.saved_rounds(out)
               if r < rnd and checkpoint.round_dir(out, r).name not in rejected]
    return checkpoint.roll_back(out, earlier[-1]) if earlier else {}


def _obey(overseer: Overseer, out: Path, cfg: ControlConfig, learner: PreferenceLearner,
          recorder: RolloutRecorder, progress: Progress
          ) -> tuple[PreferenceLearner, dict[str, Any] | None]:
    """Carry out the act a person asked for: (the learner to go on with, the state to go on
    from), or (learner, None) to stop."""
    act = overseer.pending or {}
    overseer.done()
    if act.get("act") == "stop":
        return learner, None
    if act.get("act") == "rollback":
        state = checkpoint.roll_back(out, parse_round(act["to"]))
    else:  # reject: the newest checkpoint before the rejected one, or a fresh learner
        name = str(act.get("checkpoint") or "")
        rejected_round = (parse_round(name) if name.startswith("round-")
                          else checkpoint.load_state(out).get("round", -1) + 1)
        state = _roll_back_past(out, rejected_round, overseer.rejected())
    if state:
        learner.restore(out / checkpoint.CHECKPOINTS, checkpoint.restored_timesteps(state))
    else:
        learner = learner_class(cfg.algo)(cfg, recorder)
        learner.gate = overseer.gate
    progress("rolled_back", {"round": state.get("round", -1), "act": act.get("act")})
    return learner, state


def learner_role(cfg: ControlConfig) -> str:
    """What a control checkpoint holds, for the lineage record."""
    return "policy" if cfg.algo == "dpo" else "policy and reward model"


def _so_far(cfg: ControlConfig, history: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """What a checkpoint's card says of the run up to it (metrics.json comes at the end)."""
    last = history[-1]
    return {"env_id": cfg.env_id, "algo": cfg.algo, "teacher": cfg.teacher, "seed": cfg.seed,
            "checkpoint": name, "labels": last["labels"], "timesteps": last["timesteps"],
            "true_return_mean": last["true_return"],
            "reward_model_accuracy": last.get("reward_holdout_accuracy"), "history": history}


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
    env = HiddenRewardWrapper(task_env(cfg, render_mode="rgb_array")) \
        if record_frames else env_fn()
    n = max(8 * cfg.segment_length, 1000)
    episodes = collect_rollouts(env, agent, n, rng, record_frames=record_frames)
    env.close()
    return episodes


def _wait_for_people(store: PreferenceStore, cfg: ControlConfig,
                     ask_human: Callable[[str, int], None] | None, progress: Progress,
                     overseer: Overseer | None = None) -> None:
    """Human teachers: prompt in this terminal, or wait for answers given elsewhere (until
    a person's stop, reject or rollback says to stop waiting)."""
    if cfg.teacher == "human" and ask_human is not None:
        ask_human(str(store.path), 0)
    while True:
        pending = store.unanswered_ids()
        if not pending or (overseer is not None and overseer.pending is not None):
            return
        if overseer is not None and not overseer.gate():
            return
        progress("waiting", {"pending": len(pending), "store": str(store.path)})
        time.sleep(2.0)


def _scalars(d: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in d.items() if isinstance(v, int | float)}
