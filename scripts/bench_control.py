"""Control benchmarks: label efficiency, noisy teachers, reward-wrapper overhead.

Every number is measured in this run; results go to a JSON file (resumable: finished
entries are kept and skipped) and a Markdown summary.

    python scripts/bench_control.py efficiency --envs CartPole-v1 Pendulum-v1 Acrobot-v1 \
        --labels 200 500 1000 --seeds 0 1 2 --jobs 2
    python scripts/bench_control.py teachers --envs CartPole-v1 --labels 500 --seeds 0 1 2
    python scripts/bench_control.py overhead --envs CartPole-v1
    python scripts/bench_control.py report

Scores: the true return (hidden from the learner) over 10 evaluation episodes, and the
normalised score (ours - random) / (PPO-or-SAC on the true reward - random), with the same
agent, settings and timesteps, per seed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

RESULTS = Path("benchmarks/control_results.json")
RUNS = Path("runs/bench")
TIMESTEPS = {"CartPole-v1": 30_000, "Pendulum-v1": 20_000, "Acrobot-v1": 60_000,
             "Hopper-v5": 100_000,
             "rlhf_hgt/CartPoleLeft-v0": 50_000, "HalfCheetah-v5": 100_000}
# PPO for HalfCheetah: SAC (our default for continuous actions) runs at ~100 steps/s on
# one CPU core, too slow for 12 runs of 100k steps here; both sides use the same agent.
AGENT_ALGO = {"HalfCheetah-v5": "ppo"}
TEACHERS = ["oracle", "stochastic", "mistake", "skip", "equal", "myopic"]


def load_results() -> dict:
    """Every control benchmark result so far (this script's, bench_policy_adapt's and
    bench_imitation's share one file)."""
    if RESULTS.exists():
        return json.loads(RESULTS.read_text())
    return {}


def save_results(results: dict) -> None:
    from rlhf_hgt.feedback.files import write_bytes_atomic

    write_bytes_atomic(RESULTS, json.dumps(results, indent=1, sort_keys=True).encode())


def record_result(key: str, value: dict) -> None:
    """Add one result to the file as it is now (other benchmarks may have added theirs)."""
    results = load_results()
    results[key] = value
    save_results(results)


def _job(kind: str, env_id: str, seed: int, labels: int, teacher: str, timesteps: int,
         algo: str = "ppo", variant: str = "") -> dict:
    """One run. ``variant`` 'AGENT-STEPS' (e.g. 'sac-50000') overrides the env's default
    agent (AGENT_ALGO) and marks the result key, so both kinds of run sit side by side."""
    import torch

    from rlhf_hgt.control.agents import AgentConfig

    torch.set_num_threads(1)
    t0 = time.time()
    agent = AgentConfig(algo=variant.split("-")[0] if variant else AGENT_ALGO.get(env_id, "auto"))
    if kind == "true":
        from rlhf_hgt.control.baseline import train_on_true_reward

        res = train_on_true_reward(env_id, timesteps, seed, agent)
    else:
        from rlhf_hgt.control.loop import ControlConfig, run_control

        safe = env_id.replace("/", "_") + (f"-{variant}" if variant else "")
        out = RUNS / f"{safe}-{algo}-{teacher.replace(':', '_')}-l{labels}-s{seed}"
        cfg = ControlConfig(env_id=env_id, out=str(out), teacher=teacher, labels=labels,
                            timesteps=timesteps, seed=seed, algo=algo, agent=agent)
        m = run_control(cfg)
        res = {k: m[k] for k in ("true_return_mean", "true_return_std", "labels", "timesteps",
                                 "reward_model_accuracy", "random_return_mean")}
    res["seconds"] = time.time() - t0
    return res


def _key(kind: str, env_id: str, seed: int, labels: int = 0, teacher: str = "",
         algo: str = "ppo", variant: str = "") -> str:
    return "|".join([kind, env_id, str(seed), str(labels), teacher, algo]
                    + ([variant] if variant else []))


def _variant(key: str) -> str:
    parts = key.split("|")
    return parts[6] if len(parts) > 6 else ""


def _label(env_id: str, variant: str) -> str:
    """How a row names its env: 'HalfCheetah-v5' or 'HalfCheetah-v5 (SAC, 50k steps)'."""
    if not variant:
        return env_id
    agent, steps = variant.split("-")
    return f"{env_id} ({agent.upper()}, {int(steps) // 1000}k steps)"


def _variant_of(args: argparse.Namespace, steps: int) -> str:
    return f"{args.agent}-{steps}" if args.agent else ""


def _run_jobs(jobs: list[tuple], n_jobs: int) -> None:
    results = load_results()
    todo = [j for j in jobs if _key(*j[:5], algo=j[6], variant=j[7]) not in results]
    print(f"{len(jobs) - len(todo)} done already, {len(todo)} to run", flush=True)
    with ProcessPoolExecutor(max_workers=n_jobs) as pool:
        futures = {pool.submit(_job, *j): j for j in todo}
        for fut in futures:
            j = futures[fut]
            res = fut.result()
            results = load_results()
            results[_key(*j[:5], algo=j[6], variant=j[7])] = res
            save_results(results)
            print(f"{j[0]:5s} {j[1]:14s} seed {j[2]} labels {j[3]:4d} {j[4]:10s}: "
                  f"return {res['true_return_mean']:8.1f} ({res['seconds']:.0f}s)", flush=True)


def efficiency(args: argparse.Namespace) -> None:
    jobs = []
    for env_id in args.envs:
        steps = args.timesteps or TIMESTEPS.get(env_id, 50_000)
        var = _variant_of(args, steps)
        for seed in args.seeds:
            jobs.append(("true", env_id, seed, 0, "", steps, "ppo", var))
            for labels in args.labels:
                jobs.append(("ours", env_id, seed, labels, "oracle", steps, "ppo", var))
    _run_jobs(jobs, args.jobs)


def teachers(args: argparse.Namespace) -> None:
    jobs = []
    for env_id in args.envs:
        steps = args.timesteps or TIMESTEPS.get(env_id, 50_000)
        var = _variant_of(args, steps)
        for seed in args.seeds:
            for teacher in args.teachers:
                for labels in args.labels:
                    jobs.append(("ours", env_id, seed, labels, teacher, steps, "ppo", var))
    _run_jobs(jobs, args.jobs)


def _hidden_env(env_id: str):
    from rlhf_hgt.envs import HiddenRewardWrapper, make_env

    return HiddenRewardWrapper(make_env(env_id))


def overhead(args: argparse.Namespace) -> None:
    """Env steps/s of SB3 PPO on the learned reward, exactly as the loop trains it (true
    reward hidden, rollouts recorded for queries, a fitted 3-member reward ensemble called
    once per rollout), vs plain SB3 PPO on the true reward; same env and settings."""
    import numpy as np
    import torch

    from rlhf_hgt.control.agents import AgentConfig, make_agent, make_vec_env
    from rlhf_hgt.control.reward_model import RewardEnsemble
    from rlhf_hgt.control.rollouts import BatchedRewardCallback, RolloutRecorder
    from rlhf_hgt.envs import make_env

    torch.set_num_threads(1)
    results = load_results()
    for env_id in args.envs:
        cfg = AgentConfig(algo="ppo")
        steps = args.timesteps or 20_480
        probe = make_env(env_id)
        ens = RewardEnsemble(probe.observation_space, probe.action_space, seed=0)
        rng = np.random.default_rng(0)
        obs = rng.normal(size=(64, 10, *probe.observation_space.shape)).astype(np.float32)
        acts = np.stack([[probe.action_space.sample() for _ in range(10)] for _ in range(64)])
        segs = [{"obs": o, "actions": a, "true_rewards": np.zeros(10, np.float32)}
                for o, a in zip(obs, acts, strict=True)]
        ens.fit(segs[:32], segs[32:], np.ones(32), rng=rng)
        timings = {"true": [], "learned": []}
        for rep in range(args.repeats):
            for kind in ("true", "learned"):
                callback = None
                if kind == "true":
                    venv = make_vec_env(partial(make_env, env_id), cfg.n_envs, rep)
                else:
                    venv = RolloutRecorder(make_vec_env(partial(_hidden_env, env_id),
                                                        cfg.n_envs, rep))
                    callback = BatchedRewardCallback(ens.predict, probe.action_space,
                                                     cfg.gamma)
                agent = make_agent(cfg, venv, seed=rep)
                t0 = time.perf_counter()
                agent.learn(total_timesteps=steps, callback=callback)
                timings[kind].append(agent.num_timesteps / (time.perf_counter() - t0))
                venv.close()
        true_sps = statistics.median(timings["true"])
        learned_sps = statistics.median(timings["learned"])
        results[f"overhead|{env_id}"] = {"true_steps_per_s": true_sps,
                                         "learned_steps_per_s": learned_sps,
                                         "ratio": learned_sps / true_sps,
                                         "repeats": args.repeats, "timesteps": steps,
                                         "ensemble_size": ens.k, "timings": timings}
        save_results(results)
        print(f"{env_id}: true {true_sps:.0f} steps/s, learned {learned_sps:.0f} steps/s, "
              f"ratio {learned_sps / true_sps:.3f}", flush=True)


def report(args: argparse.Namespace) -> None:
    results = load_results()
    lines = ["| env | labels | seeds | true return (ours) | PPO/SAC true reward | random |"
             " normalised score (mean, min) | reward acc |", "|" + "---|" * 8]
    rows: dict[tuple, list] = {}
    for key, res in results.items():
        parts = key.split("|")
        if parts[0] != "ours" or parts[4] != "oracle":
            continue
        rows.setdefault((parts[1], _variant(key), int(parts[3])), []).append((int(parts[2]), res))
    for (env_id, variant, labels), runs in sorted(rows.items()):
        scores, ours, base = [], [], []
        for seed, res in runs:
            b = results.get(_key("true", env_id, seed, variant=variant))
            if b is None:
                continue
            rand = res["random_return_mean"]
            scores.append((res["true_return_mean"] - rand)
                          / max(b["true_return_mean"] - rand, 1e-9))
            ours.append(res["true_return_mean"])
            base.append(b["true_return_mean"])
        if not scores:
            continue
        acc = [r["reward_model_accuracy"] for _, r in runs if r["reward_model_accuracy"]]
        lines.append(f"| {_label(env_id, variant)} | {labels} | {len(scores)} | "
                     f"{statistics.mean(ours):.1f} | "
                     f"{statistics.mean(base):.1f} | {runs[0][1]['random_return_mean']:.1f} | "
                     f"{statistics.mean(scores):.2f}, {min(scores):.2f} | "
                     f"{statistics.mean(acc):.2f} |")
    lines += ["", "| env | teacher | labels | seeds | true return | vs oracle |",
              "|---|---|---|---|---|---|"]
    trows: dict[tuple, list] = {}
    for key, res in results.items():
        parts = key.split("|")
        if parts[0] == "ours":
            trows.setdefault((parts[1], _variant(key), parts[4], int(parts[3])), []).append(res)
    for (env_id, variant, teacher, labels), runs in sorted(trows.items()):
        oracle = trows.get((env_id, variant, "oracle", labels))
        if teacher == "oracle" or not oracle or len(runs) < 1:
            continue
        rand = runs[0]["random_return_mean"]
        mean = statistics.mean(r["true_return_mean"] for r in runs)
        omean = statistics.mean(r["true_return_mean"] for r in oracle)
        lines.append(f"| {_label(env_id, variant)} | {teacher} | {labels} | {len(runs)} | "
                     f"{mean:.1f} | "
                     f"{(mean - rand) / max(omean - rand, 1e-9):.2f} |")
    lines += ["", "| env | PPO true reward steps/s | PPO learned reward steps/s | ratio |",
              "|---|---|---|---|"]
    for key, res in sorted(results.items()):
        if key.startswith("overhead|"):
            lines.append(f"| {key.split('|')[1]} | {res['true_steps_per_s']:.0f} | "
                         f"{res['learned_steps_per_s']:.0f} | {res['ratio']:.3f} |")
    lines += _peer_lines(results) + _adapt_lines(results)
    text = "\n".join(lines)
    from rlhf_hgt.feedback.files import write_bytes_atomic

    write_bytes_atomic("benchmarks/control_summary.md", (text + "\n").encode())
    print(text)


def _mean_return(results: dict, prefix: str, env_id: str, labels: int) -> tuple[float, int]:
    vals = [r["true_return_mean"] for k, r in results.items()
            if k.startswith(f"{prefix}|{env_id}|") and k.split("|")[3] == str(labels)
            and k.split("|")[4] == "oracle" and not _variant(k)]
    return (statistics.mean(vals), len(vals)) if vals else (float("nan"), 0)


def _peer_lines(results: dict) -> list[str]:
    """Ours vs imitation's PreferenceComparisons: same env, oracle teacher, labels, steps."""
    peer = {(k.split("|")[1], int(k.split("|")[3])) for k in results if k.startswith("imitation|")}
    if not peer:
        return []
    lines = ["", "| env | labels | imitation return (seeds) | ours (seeds) | "
             "fewest labels with which ours reached imitation's return |", "|---|---|---|---|---|"]
    for env_id, labels in sorted(peer):
        theirs, n_t = _mean_return(results, "imitation", env_id, labels)
        ours, n_o = _mean_return(results, "ours", env_id, labels)
        budgets = sorted({int(k.split("|")[3]) for k in results
                          if k.startswith(f"ours|{env_id}|") and k.split("|")[4] == "oracle"
                          and not _variant(k)})
        reached = [b for b in budgets if _mean_return(results, "ours", env_id, b)[0] >= theirs]
        lines.append(f"| {env_id} | {labels} | {theirs:.1f} ({n_t}) | {ours:.1f} ({n_o}) | "
                     f"{reached[0] if reached else 'not reached'} (tried {budgets}) |")
    return lines


def _adapt_lines(results: dict) -> list[str]:
    rows = [(k, r) for k, r in sorted(results.items()) if k.split("|")[0] in ("dpo", "lora")]
    if not rows:
        return []
    lines = ["", "| method | env | seed | labels | start return | final return |",
             "|---|---|---|---|---|---|"]
    for key, r in rows:
        method, env_id, seed, extra = key.split("|")
        name = "DPO (policy)" if method == "dpo" else f"LoRA {extra} from a CartPole-v1 policy"
        lines.append(f"| {name} | {env_id} | {seed} | {r['labels']} | "
                     f"{r['start_return_mean']:.1f} | {r['true_return_mean']:.1f} |")
    groups: dict[str, list[dict]] = {}
    for key, r in rows:
        method, _, _, extra = key.split("|")
        groups.setdefault(method if method == "dpo" else f"LoRA {extra}", []).append(r)
    lines += ["", "| method | seeds | improved on its start | start (mean) | final (mean) |",
              "|---|---|---|---|---|"]
    for name, runs in sorted(groups.items()):
        better = sum(r["true_return_mean"] > r["start_return_mean"] for r in runs)
        lines.append(f"| {name} | {len(runs)} | {better}/{len(runs)} | "
                     f"{statistics.mean(r['start_return_mean'] for r in runs):.1f} | "
                     f"{statistics.mean(r['true_return_mean'] for r in runs):.1f} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    for name in ("efficiency", "teachers", "overhead"):
        p = sub.add_parser(name)
        p.add_argument("--envs", nargs="+", default=["CartPole-v1"])
        p.add_argument("--labels", nargs="+", type=int, default=[500])
        p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
        p.add_argument("--timesteps", type=int, default=None)
        p.add_argument("--jobs", type=int, default=1)
        p.add_argument("--repeats", type=int, default=3)
        p.add_argument("--agent", choices=["ppo", "sac"], default=None,
                       help="efficiency/teachers: this agent for both sides instead of the "
                            "env's default; results kept apart as 'AGENT-STEPS'")
        p.add_argument("--teachers", nargs="+", default=TEACHERS, choices=TEACHERS,
                       help="teachers: which ones (default all)")
    sub.add_parser("report")
    args = parser.parse_args()
    {"efficiency": efficiency, "teachers": teachers, "overhead": overhead,
     "report": report}[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
