"""The control loop on tasks its defaults were not tuned on (issue #16).

Each task runs at one step budget that fits this machine, with the agent the loop picks
for it (PPO for discrete actions, SAC for continuous ones). For every task and seed:

- ``true``: the same agent on the env's own reward with the same steps (the anchor),
- ``ours``: the preference loop with a synthetic oracle at each label budget, once per
  *arm*: ``default`` (the loop as it ships) or an arm that turns one change off, so the
  change's effect can be read as a before/after at equal labels and steps.

Score: normalised return (ours - random) / (anchor - random) per seed, random and anchor
from the same run's evaluation seeds.

    python scripts/bench_suite.py run --tasks Acrobot-v1 Hopper-v5 --labels 200 500 \
        --seeds 0 1 [--arms default no-explore] [--only-true]
    PYTHONPATH=.peers/imitation python scripts/bench_suite.py peer --tasks Acrobot-v1 \
        --labels 200 500 --seeds 0 1
    python scripts/bench_suite.py report

Results: benchmarks/control_suite.json (resumable: finished entries are skipped).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

RESULTS = Path("benchmarks/control_suite.json")
RUNS = Path("runs/suite")

#: steps per task: SAC runs at ~80 steps/s on one core here, PPO at ~1000
SUITE: dict[str, int] = {
    "Acrobot-v1": 60_000,
    "MountainCar-v0": 300_000,  # exploring alone first reached the flag after 53k-92k steps
    "MountainCarContinuous-v0": 20_000,
    "Reacher-v5": 20_000,
    "InvertedDoublePendulum-v5": 20_000,
    "Hopper-v5": 20_000,
    "Walker2d-v5": 20_000,
    "Swimmer-v5": 20_000,
}

#: arm name -> ControlConfig overrides that turn one change off (``default``: none)
ARMS: dict[str, dict[str, Any]] = {
    "default": {},
    "no-explore": {"explore_fraction": 0.0},
    "explore-0.1": {"explore_fraction": 0.1},
    "explore-0.25": {"explore_fraction": 0.25},
    # as measured on Acrobot before PPO kept an entropy bonus while exploring
    "explore-0.25-ent-0": {"explore_fraction": 0.25, "explore_ent_coef": 0.0},
    # the learned reward's scale measured once, at the first fit, instead of every round
    "fixed-scale": {"reward": {"rescale_each_fit": False}},
    "segment-25": {"segment_length": 25},
    # SAC: two gradient steps per env step instead of one
    "gradient-steps-2": {"agent": {"gradient_steps": 2}},
    # PPO explores without an entropy bonus (the agent's own ent_coef, 0)
    "explore-ent-0": {"explore_ent_coef": 0.0},
}


def load() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def save_one(key: str, value: dict) -> None:
    from rlhf_hgt.feedback.files import write_bytes_atomic

    results = load()
    results[key] = value
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(RESULTS, json.dumps(results, indent=1, sort_keys=True).encode())


def run_one(kind: str, task: str, seed: int, labels: int, arm: str, steps: int) -> dict:
    import torch

    torch.set_num_threads(1)
    t0 = time.time()
    from rlhf_hgt.control.agents import AgentConfig

    if kind == "true":
        from rlhf_hgt.control.baseline import train_on_true_reward

        res = train_on_true_reward(task, steps, seed, AgentConfig())
        from rlhf_hgt.control.agents import random_return
        from rlhf_hgt.envs import make_env

        res["random_return_mean"] = random_return(lambda: make_env(task), 10, seed=123_456)
    else:
        from rlhf_hgt.control.loop import ControlConfig, run_control

        out = RUNS / f"{task.replace('/', '_')}-{arm}-l{labels}-s{seed}"
        cfg = ControlConfig(env_id=task, out=str(out), labels=labels, timesteps=steps,
                            seed=seed, **ARMS[arm])
        m = run_control(cfg)
        res = {k: m.get(k) for k in ("true_return_mean", "true_return_std", "labels",
                                     "timesteps", "reward_model_accuracy",
                                     "random_return_mean", "tie_share")}
        res["curve"] = [(h["timesteps"], h["true_return"]) for h in m["history"]]
    res["seconds"] = time.time() - t0
    return res


def key_of(kind: str, task: str, seed: int, labels: int = 0, arm: str = "") -> str:
    return "|".join([kind, task, str(seed), str(labels), arm])


def run(args: argparse.Namespace) -> None:
    jobs = []
    for task in args.tasks:
        steps = args.timesteps or SUITE.get(task, 20_000)
        for seed in args.seeds:
            if not args.skip_true:
                jobs.append(("true", task, seed, 0, "", steps))
            if args.only_true:
                continue
            for labels in args.labels:
                for arm in args.arms:
                    jobs.append(("ours", task, seed, labels, arm, steps))
    done = load()
    todo = [j for j in jobs if key_of(*j[:5]) not in done]
    print(f"{len(jobs) - len(todo)} done already, {len(todo)} to run", flush=True)
    for job in todo:
        res = run_one(*job)
        save_one(key_of(*job[:5]), res)
        print(f"{job[0]:4s} {job[1]:26s} seed {job[2]} labels {job[3]:4d} {job[4]:10s}: "
              f"return {res['true_return_mean']:9.1f} ({res['seconds']:.0f}s)", flush=True)


def peer(args: argparse.Namespace) -> None:
    """imitation's PreferenceComparisons on a suite task at the same labels and steps (its
    own settings, scripts/bench_imitation.py; needs PYTHONPATH=.peers/imitation)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_imitation import run_peer

    for task in args.tasks:
        steps = args.timesteps or SUITE.get(task, 20_000)
        for seed in args.seeds:
            for labels in args.labels:
                key = key_of("imitation", task, seed, labels, "imitation")
                if key in load():
                    continue
                # the suite's tasks end episodes early (Acrobot at the goal): imitation
                # must be told to accept that
                res = run_peer(task, labels, steps, seed, variable_horizon=True)
                save_one(key, res)
                print(f"imitation {task} seed {seed} labels {labels}: "
                      f"{res['true_return_mean']:.1f} ({res['seconds']:.0f}s)", flush=True)


def merge(args: argparse.Namespace) -> None:
    """Entries of other results files (runs on other machines or cores) added to ours; an
    entry both have keeps ours."""
    for path in args.files:
        theirs = json.loads(path.read_text())
        for key, value in theirs.items():
            if key not in load():
                save_one(key, value)
        print(f"{path}: {len(theirs)} entries", flush=True)


def score(res: dict, anchor: dict) -> float | None:
    rand = anchor["random_return_mean"]
    span = anchor["true_return_mean"] - rand
    if span <= 1e-6 * max(1.0, abs(rand)):
        return None  # the anchor did not beat random: no scale to score on
    return (res["true_return_mean"] - rand) / span


def report(args: argparse.Namespace) -> None:
    results = load()
    rows: dict[tuple[str, str, int], list[tuple[float | None, dict, dict]]] = {}
    anchors: dict[str, list[float]] = {}
    for key, res in results.items():
        kind, task, seed, labels, arm = key.split("|")
        if kind == "true":
            anchors.setdefault(task, []).append(res["true_return_mean"])
            continue
        anchor = results.get(key_of("true", task, int(seed)))
        if anchor is None:
            continue
        rows.setdefault((task, arm, int(labels)), []).append((score(res, anchor), res, anchor))
    lines = ["| task | arm | labels | seeds | ours (mean) | anchor (mean) | random | "
             "normalised (per seed) | pooled | reward acc |", "|" + "---|" * 10]
    medians: dict[tuple[str, int], list[float]] = {}
    pooled_medians: dict[tuple[str, int], list[float]] = {}
    for (task, arm, labels), runs in sorted(rows.items()):
        scores = [s for s, _, _ in runs]
        shown = ", ".join("n/a" if s is None else f"{s:.2f}" for s in scores)
        acc = [r["reward_model_accuracy"] for _, r, _ in runs if r.get("reward_model_accuracy")]
        valid = [s for s in scores if s is not None]
        if valid:
            medians.setdefault((arm, labels), []).append(statistics.mean(valid))
        # pooled: the seeds' mean return against the anchors' mean return (one anchor run
        # that fails by chance does not make a seed unscoreable)
        mean_ours = statistics.mean(r["true_return_mean"] for _, r, _ in runs)
        mean_anchor = {"true_return_mean": statistics.mean(a["true_return_mean"]
                                                           for _, _, a in runs),
                       "random_return_mean": runs[0][2]["random_return_mean"]}
        pooled = score({"true_return_mean": mean_ours}, mean_anchor)
        if pooled is not None:
            pooled_medians.setdefault((arm, labels), []).append(pooled)
        lines.append(
            f"| {task} | {arm} | {labels} | {len(runs)} | {mean_ours:.1f} | "
            f"{mean_anchor['true_return_mean']:.1f} | "
            f"{runs[0][2]['random_return_mean']:.1f} | {shown} | "
            f"{'n/a' if pooled is None else f'{pooled:.2f}'} | "
            f"{statistics.mean(acc) if acc else float('nan'):.2f} |")
    lines += ["", "| arm | labels | tasks scored | median normalised (mean of seeds) | "
              "lowest task | median pooled | lowest pooled |", "|---|---|---|---|---|---|---|"]
    for (arm, labels), vals in sorted(medians.items()):
        pooled_vals = pooled_medians.get((arm, labels), [])
        lines.append(f"| {arm} | {labels} | {len(vals)} | {statistics.median(vals):.2f} | "
                     f"{min(vals):.2f} | "
                     + (f"{statistics.median(pooled_vals):.2f} | {min(pooled_vals):.2f} |"
                        if pooled_vals else "n/a | n/a |"))
    print("\n".join(lines))


def main() -> int:
    global RESULTS
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("run")
    p.add_argument("--tasks", nargs="+", default=list(SUITE))
    p.add_argument("--labels", nargs="+", type=int, default=[200, 500])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--arms", nargs="+", default=["default"], choices=list(ARMS))
    p.add_argument("--timesteps", type=int, default=None, help="override every task's budget")
    p.add_argument("--only-true", action="store_true", help="only the true-reward anchors")
    p.add_argument("--skip-true", action="store_true",
                   help="no anchors (another process runs them into its own results file: "
                        "merge with `merge FILE`)")
    p = sub.add_parser("peer", help="imitation's preference comparisons on suite tasks")
    p.add_argument("--tasks", nargs="+", default=["Acrobot-v1"])
    p.add_argument("--labels", nargs="+", type=int, default=[200])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--timesteps", type=int, default=None)
    sub.add_parser("report")
    p = sub.add_parser("merge", help="add the entries of other results files to this one")
    p.add_argument("files", nargs="+", type=Path)
    for sp in sub.choices.values():
        sp.add_argument("--results", type=Path, default=RESULTS,
                        help=f"results file (default {RESULTS}); another file keeps runs at "
                             "other step budgets apart")
    args = parser.parse_args()
    RESULTS = args.results
    {"run": run, "peer": peer, "report": report, "merge": merge}[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
