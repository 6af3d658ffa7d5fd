"""Human guidance in reward learning (issue #13), control side: feature marks on a task with
distractor features, and response-time weighting with the drift-diffusion teacher.

    python scripts/bench_reward_guidance.py marks --env CartPole-v1 \
        --distractors noise:2 time:2 --labels 10 20 40 80 --seeds 0 1 2
    python scripts/bench_reward_guidance.py time --env CartPole-v1 --labels 40 --seeds 0 1 2
    python scripts/bench_reward_guidance.py report

marks: for each distractor kind and seed, the agent on the env's own reward (with the same
distractors in its observation: the yardstick), and preference runs (oracle teacher) at each
label budget without marks (``--feature-marks`` of the env's own features with weight 0: no
penalty, but the reward model's input-gradient share on the distractors is measured) and with
them (the default weight); the break condition marks the distractors instead. Labels needed
= the smallest budget whose run reaches 0.9 of the yardstick's return (per seed).

time: the same labels from the ``ddm`` teacher (answers and response times), the reward model
with and without ``--time-weighting``, and with a teacher whose times carry no information
(``ddm:informative=0``).

Results: benchmarks/reward_guidance_results.json (resumable); the summary:
benchmarks/reward_guidance_summary.md.
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

RESULTS = Path("benchmarks/reward_guidance_results.json")
SUMMARY = Path("benchmarks/reward_guidance_summary.md")
RUNS = Path("runs/bench_reward_guidance")
TIMESTEPS = {"CartPole-v1": 30_000, "Pendulum-v1": 20_000, "Acrobot-v1": 60_000}
KEEP = ("true_return_mean", "true_return_std", "labels", "timesteps", "reward_model_accuracy",
        "random_return_mean", "mark_share", "time_weighting")


def load() -> dict[str, Any]:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def record(key: str, row: dict[str, Any]) -> None:
    from rlhf_hgt.feedback.files import write_json_atomic

    results = load()
    results[key] = row
    write_json_atomic(RESULTS, results)


def n_features(env_id: str) -> int:
    from rlhf_hgt.envs import make_env

    env = make_env(env_id)
    n = int(env.observation_space.shape[0])
    env.close()
    return n


def baseline(env_id: str, distractors: str, seed: int, steps: int) -> dict[str, Any]:
    key = f"true|{env_id}|{distractors}|{seed}"
    if key in load():
        return load()[key]
    import torch

    from rlhf_hgt.control.agents import AgentConfig
    from rlhf_hgt.control.baseline import train_on_true_reward

    torch.set_num_threads(1)
    t0 = time.time()
    row = train_on_true_reward(env_id, steps, seed, AgentConfig(), distractors=distractors)
    row["seconds"] = time.time() - t0
    record(key, row)
    print(f"{key}: return {row['true_return_mean']:.1f} ({row['seconds']:.0f}s)", flush=True)
    return row


def control(key: str, **settings: Any) -> dict[str, Any]:
    """One preference run (skipped when the results hold it)."""
    if key in load():
        return load()[key]
    import torch

    from rlhf_hgt.control.loop import ControlConfig, run_control

    torch.set_num_threads(1)
    t0 = time.time()
    out = RUNS / key.replace("|", "_").replace(":", "-").replace(",", "+")
    m = run_control(ControlConfig(out=str(out), **settings))
    row = {k: m.get(k) for k in KEEP} | {"settings": settings, "seconds": time.time() - t0}
    record(key, row)
    print(f"{key}: return {row['true_return_mean']:.1f}, reward accuracy "
          f"{row['reward_model_accuracy']}, mark share {row['mark_share']} "
          f"({row['seconds']:.0f}s)", flush=True)
    return row


def _explore(args: argparse.Namespace) -> dict[str, float]:
    """--explore-fraction when given (0 compares with rows measured before the loop explored
    by default); the row's settings record it."""
    return {} if args.explore_fraction is None else {"explore_fraction": args.explore_fraction}


def marks(args: argparse.Namespace) -> None:
    env_id = args.env
    steps = args.timesteps or TIMESTEPS.get(env_id, 50_000)
    own = f"0-{n_features(env_id) - 1}"
    for distractors in args.distractors:
        extra = sum(int(p.partition(":")[2] or 1) for p in distractors.split(","))
        others = f"{n_features(env_id)}-{n_features(env_id) + extra - 1}"
        for seed in args.seeds:
            baseline(env_id, distractors, seed, steps)
            common = {"env_id": env_id, "teacher": "oracle", "timesteps": steps, "seed": seed,
                      "distractors": distractors, **_explore(args)}
            for labels in args.labels:
                control(f"plain|{env_id}|{distractors}|{seed}|{labels}", labels=labels,
                        feature_marks=own, mark_weight=0.0, **common)
                control(f"marks|{env_id}|{distractors}|{seed}|{labels}", labels=labels,
                        feature_marks=own, **common)
            if args.wrong_at:
                control(f"wrong|{env_id}|{distractors}|{seed}|{args.wrong_at}",
                        labels=args.wrong_at, feature_marks=others, **common)


def time_weighting(args: argparse.Namespace) -> None:
    env_id = args.env
    steps = args.timesteps or TIMESTEPS.get(env_id, 50_000)
    for seed in args.seeds:
        baseline(env_id, "", seed, steps)
        for labels in args.labels:
            common = {"env_id": env_id, "timesteps": steps, "seed": seed, "labels": labels,
                      **_explore(args)}
            control(f"ddm|{env_id}||{seed}|{labels}", teacher="ddm", **common)
            control(f"ddm-weighted|{env_id}||{seed}|{labels}", teacher="ddm",
                    time_weighting=True, **common)
            control(f"ddm-soft|{env_id}||{seed}|{labels}", teacher="ddm",
                    time_weighting=True, time_weighting_mode="soft", **common)
            control(f"ddm-uninformative-weighted|{env_id}||{seed}|{labels}",
                    teacher="ddm:informative=0", time_weighting=True, **common)


# ----------------------------------------------------------------------------- report


def _mean(values: list[float]) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "–"
    return f"{statistics.mean(vals):.3f}" + (f" ± {statistics.stdev(vals):.3f}"
                                             if len(vals) > 1 else "")


def _norm(row: dict, base: dict) -> float:
    lo, hi = row["random_return_mean"], base["true_return_mean"]
    return (row["true_return_mean"] - lo) / (hi - lo) if hi != lo else float("nan")


def report(args: argparse.Namespace) -> None:
    res = load()
    lines = ["# Human guidance in reward learning (scripts/bench_reward_guidance.py)", ""]
    groups: dict[tuple, dict] = {}
    for key, row in res.items():
        kind, env_id, distractors, seed, *rest = key.split("|")
        if kind == "true":
            continue
        labels = int(rest[0])
        base = res.get(f"true|{env_id}|{distractors}|{seed}")
        if base is None:
            continue
        groups.setdefault((env_id, distractors, kind, labels), {})[int(seed)] = (row, base)
    lines += ["| env | distractors | arm | labels | seeds | return | normalised | reward "
              "accuracy | share outside the marks |", "|---|---|---|---|---|---|---|---|---|"]
    for (env_id, distractors, kind, labels), by_seed in sorted(groups.items()):
        rows = list(by_seed.values())
        lines.append(
            f"| {env_id} | {distractors or '–'} | {kind} | {labels} | {len(rows)} | "
            f"{_mean([r['true_return_mean'] for r, _ in rows])} | "
            f"{_mean([_norm(r, b) for r, b in rows])} | "
            f"{_mean([r['reward_model_accuracy'] for r, _ in rows])} | "
            f"{_mean([r.get('mark_share') for r, _ in rows])} |")
    lines += ["", "Labels needed to reach 0.9 of the yardstick's return (per seed; '>' when no "
              "budget did):", "", "| env | distractors | arm | per seed | median |",
              "|---|---|---|---|---|"]
    needed: dict[tuple, dict[int, list[tuple[int, float]]]] = {}
    for (env_id, distractors, kind, labels), by_seed in groups.items():
        if kind not in ("plain", "marks"):
            continue
        for seed, (row, base) in by_seed.items():
            needed.setdefault((env_id, distractors, kind), {}).setdefault(seed, []).append(
                (labels, _norm(row, base)))
    for (env_id, distractors, kind), by_seed in sorted(needed.items()):
        per = []
        for seed in sorted(by_seed):
            runs = sorted(by_seed[seed])
            hit = next((n for n, score in runs if score >= 0.9), None)
            per.append(hit if hit is not None else float("inf"))
        shown = ", ".join("> " + str(max(n for n, _ in by_seed[s])) if p == float("inf")
                          else str(p) for s, p in zip(sorted(by_seed), per, strict=True))
        med = statistics.median(per)
        most = max(n for s in by_seed for n, _ in by_seed[s])
        lines.append(f"| {env_id} | {distractors} | {kind} | {shown} | "
                     f"{f'> {most}' if med == float('inf') else f'{med:g}'} |")
    from rlhf_hgt.feedback.files import write_bytes_atomic

    write_bytes_atomic(SUMMARY, ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    for name in ("marks", "time"):
        p = sub.add_parser(name)
        p.add_argument("--env", default="CartPole-v1")
        p.add_argument("--labels", type=int, nargs="+", default=[40])
        p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
        p.add_argument("--timesteps", type=int, default=None)
        p.add_argument("--explore-fraction", type=float, default=None,
                       help="the loop's --explore-fraction (default: the loop's own); 0 for "
                            "rows comparable with those measured before exploration")
        if name == "marks":
            p.add_argument("--distractors", nargs="+", default=["noise:2", "time:2"])
            p.add_argument("--wrong-at", type=int, default=None,
                           help="label budget of the wrong-marks runs (the break condition)")
    sub.add_parser("report")
    args = parser.parse_args(argv)
    {"marks": marks, "time": time_weighting, "report": report}[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
