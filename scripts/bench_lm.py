"""Language-model benchmarks on real critic pairs (Rotten Tomatoes, movies held out by title):
the reward model, DPO and PPO with LoRA, and their speed and memory against TRL.

Every number is measured in this run beside its anchor (plain TRL on the same model, pairs,
batch and steps; the VADER lexicon on the same held-out pairs; TRL 1.12's PPOTrainer), and
the report gives ratios. Each measured thing runs in its own subprocess, so its peak memory
is clean: max RSS of that child (os.wait4) on CPU, torch.cuda.max_memory_allocated on CUDA.
Results go to benchmarks/lm_results.json (resumable: finished keys are skipped); the report
to benchmarks/lm_summary.md, the PPO curve to benchmarks/lm_ppo_curve.png.

    python scripts/bench_lm.py reward --n-train 400 800 1600 --seeds 0  # ours, TRL, VADER
    python scripts/bench_lm.py dpo --n-train 800 --seeds 0      # ours vs TRL, sentiment
    python scripts/bench_lm.py ppo --seeds 0                    # PPO on the learned reward
    python scripts/bench_lm.py speed                            # DPO and PPO vs TRL
    python scripts/bench_lm.py report
    python scripts/bench_lm.py all --smoke        # every code path on the tiny model (~1-2 min)

--smoke uses the tiny in-memory model, a few pairs and 1-2 steps of everything, and writes
benchmarks/lm_results_smoke.json (never mixed with real numbers).

The TRL 1.12 PPO anchor (TRL 1.13 deleted PPOTrainer) runs in its own process from a folder
that shadows TRL 1.16 (scripts/bench_lm_trl_ppo.py):

    pip install --no-deps --target .peers/trl112 trl==1.12.0

Without it the anchor is recorded as missing and everything else runs.

The plain-TRL baselines use TRL's own defaults (learning rate, schedule, loss) with the same
LoRA adapter as ours (r 16, alpha 32, every linear layer), the same base model, pairs, batch
(8) and epochs, bf16 and gradient checkpointing off on a CPU. One exception: plain TRL DPO
gets learning rate 5e-5, the setting behind its measured 0.765 (TRL's 1e-6 default is meant
for full fine-tuning and barely moves an adapter).

Estimated runtimes per seed, SmolLM2-135M on CPU, fp32, one thread. Extrapolated on
2026-11-24 from one short check on a loaded, shared 2-core machine (load average ~2.8): a
reward step (batch 8 pairs) took ~7 s, a DPO step ~11 s, scoring held-out pairs ~0.3 s per
pair for the reward model and ~1 s per pair for DPO (TRL's evaluate plus our implicit-reward
accuracy), sampling ~77 tokens/s at batch 8. Not measured here: PPO (estimated from the
sampling speed and TRL 1.12's anchor of ~13 tokens/s).

- reward (400/800/1600 pairs; ours and TRL, 200 steps each): ~26 min a run, ~2.6 h in all
- dpo (800 pairs, 2 epochs = 200 steps; ours and TRL): ~50 min a run, ~1.7 h in all
- ppo (64 updates of 16 rollouts, 48 tokens): ~40 min (+ ~26 min if the 800-pair reward
  model is not trained yet)
- speed (DPO 20 steps x 4 runs, PPO 5 updates ours + TRL 1.12): ~25 min
- all --smoke: ~1 min
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf_hgt.feedback.files import write_bytes_atomic

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/ is not a package

from bench_lm_jobs import run_job_file  # noqa: E402 - the child side; light at import
from bench_lm_report import PEER_INSTALL, plot_curve, write_report  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve()
PEER_SCRIPT = SCRIPT.parent / "bench_lm_trl_ppo.py"
PEER_DIR = ROOT / ".peers" / "trl112"


@dataclass
class Plan:
    """What one invocation runs; --smoke shrinks everything."""

    model: str = "smollm2"
    smoke: bool = False
    seeds: list[int] = field(default_factory=lambda: [0])
    n_train: list[int] | None = None  # per sub-command default when None
    n_test: int | None = None  # None = every held-out pair (about 645)
    max_steps: int = -1  # -1 = the full budget of each trainer
    samples: int = 64  # sampled reviews per sentiment measurement
    new_tokens: int = 48
    ppo_steps: int = 64
    ppo_batch: int = 16
    reward_pairs: int = 800  # the reward model PPO and the PPO speed test use
    dpo_speed_steps: int = 20
    dpo_loss: str | None = None  # ours with other TRL DPO losses, e.g. "sigmoid,sft"
    dpo_weights: str | None = None  # their weights, e.g. "1,0.1"
    dpo_beta: float | None = None  # ours with another beta
    dpo_sft_weight: float | None = None  # ours with another weight of the SFT term
    ppo_speed_steps: int = 5
    speed_batch: int = 8
    repeats: int = 2
    with_full: bool = False
    results: Path = ROOT / "benchmarks" / "lm_results.json"
    runs: Path = ROOT / "runs" / "bench_lm"
    command: str = ""
    failures: list[str] = field(default_factory=list)

    def sibling(self, kind: str, ext: str) -> Path:
        """A file beside the results: lm_results_smoke.json -> lm_summary_smoke.md."""
        return self.results.with_name(self.results.stem.replace("results", kind) + ext
                                      if "results" in self.results.stem
                                      else f"{self.results.stem}_{kind}{ext}")

    @property
    def slug(self) -> str:
        return re.sub(r"[^\w.-]+", "_", self.model).strip("_")[-40:] or "model"

    @property
    def t(self) -> str:
        """Test-set tag of keys and folders; a step cap shows in it, so capped runs never
        stand in for full ones."""
        cap = f"-cap{self.max_steps}" if self.max_steps > 0 else ""
        return f"t{self.n_test if self.n_test is not None else 'all'}{cap}"


def make_plan(args: argparse.Namespace) -> Plan:
    plan = Plan(model=args.model, smoke=args.smoke, seeds=args.seeds, n_train=args.n_train,
                n_test=args.n_test, command=" ".join(shlex.quote(a) for a in sys.argv))
    if args.smoke:
        plan.model = "tiny"
        plan.results = ROOT / "benchmarks" / "lm_results_smoke.json"
        plan.runs = ROOT / "runs" / "bench_lm_smoke"
        plan.n_train = args.n_train or [16]
        plan.n_test = args.n_test or 8
        plan.max_steps, plan.samples, plan.new_tokens = 2, 4, 8
        plan.ppo_steps, plan.ppo_batch, plan.reward_pairs = 2, 4, plan.n_train[0]
        plan.dpo_speed_steps, plan.ppo_speed_steps, plan.speed_batch = 2, 2, 4
        plan.repeats = 1
    for name in ("max_steps", "samples", "new_tokens", "ppo_steps", "ppo_batch", "reward_pairs",
                 "dpo_speed_steps", "ppo_speed_steps", "repeats", "dpo_loss", "dpo_weights",
                 "dpo_beta", "dpo_sft_weight"):
        value = getattr(args, name, None)
        if value is not None:
            setattr(plan, name, value)
    plan.with_full = bool(getattr(args, "with_full", False))
    if plan.ppo_batch > 8 and plan.ppo_batch % 8:
        raise SystemExit("bench_lm: --ppo-batch must be at most 8 or a multiple of 8 (PPO "
                         "minibatches of 8)")
    if args.results:
        plan.results = Path(args.results).resolve()
    return plan


# ----------------------------------------------------------------------------- results file


def load_results(plan: Plan) -> dict[str, Any]:
    return json.loads(plan.results.read_text()) if plan.results.exists() else {}


def save_result(plan: Plan, key: str, value: dict[str, Any]) -> None:
    results = load_results(plan)  # re-read: another sub-command may have written meanwhile
    results[key] = value
    write_bytes_atomic(plan.results, json.dumps(results, indent=1, sort_keys=True).encode())


def machine() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (None,)
    return {"cpus": os.cpu_count(), "load_avg_1m": load[0],
            "omp_threads": os.environ.get("OMP_NUM_THREADS"), "python": sys.version.split()[0]}


def key(*parts: Any) -> str:
    return "|".join(str(p) for p in parts)


# ----------------------------------------------------------------------------- subprocesses


def run_child(plan: Plan, name: str, spec: dict[str, Any], peer: bool = False
              ) -> dict[str, Any] | None:
    """Run one job in a fresh process; its result plus wall time and peak memory."""
    work = plan.runs / "_jobs"
    work.mkdir(parents=True, exist_ok=True)
    spec_path, out_path = work / f"{name}.spec.json", work / f"{name}.result.json"
    out_path.unlink(missing_ok=True)
    spec_path.write_text(json.dumps(spec, indent=1))
    env = dict(os.environ)
    cmd = [sys.executable, str(SCRIPT), "_job", str(spec_path), str(out_path)]
    if peer:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PEER_DIR), env.get("PYTHONPATH"))
                                            if p)
        cmd = [sys.executable, str(PEER_SCRIPT), str(spec_path), str(out_path)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
    try:
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not the max of all
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not out_path.exists():
        print(f"  !! {name}: failed (exit {proc.returncode}); see the output above", flush=True)
        return None
    res = json.loads(out_path.read_text())
    rss_mb = usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    res["peak_rss_mb"] = rss_mb
    cuda = res.get("cuda_peak_mb")
    res["peak_memory_mb"] = cuda if cuda is not None else rss_mb
    res["peak_memory_kind"] = ("torch.cuda.max_memory_allocated" if cuda is not None
                               else "child process max RSS")
    res["wall_s"] = wall
    return res


def run_job(plan: Plan, k: str, spec: dict[str, Any], peer: bool = False) -> dict | None:
    """The stored result of ``k``, or run the job now and store it (resumable)."""
    done = load_results(plan).get(k)
    if done is not None and not done.get("missing"):
        print(f"  done already: {k}", flush=True)
        return done
    print(f"  running {k} ...", flush=True)
    started = dt.datetime.now().isoformat(timespec="seconds")
    res = run_child(plan, re.sub(r"[^\w.-]+", "_", k), {**spec, "smoke": plan.smoke}, peer)
    if res is None:
        plan.failures.append(k)
        return None
    res.update({"command": plan.command, "started": started, "machine": machine()})
    save_result(plan, k, res)
    brief = {n: res[n] for n in ("accuracy", "samples_per_s", "tokens_per_s",
                                 "implicit_reward_accuracy") if res.get(n) is not None}
    print(f"  {k}: {json.dumps(brief)} peak {res['peak_memory_mb']:.0f} MB, "
          f"{res['wall_s']:.0f} s", flush=True)
    return res


def reward_dir(plan: Plan, n: int, seed: int) -> Path:
    return plan.runs / f"reward-ours-{plan.slug}-n{n}-{plan.t}-s{seed}"


def ensure_reward(plan: Plan, n: int, seed: int) -> Path | None:
    """Our reward model trained on ``n`` pairs (trained now if its folder is missing)."""
    out = reward_dir(plan, n, seed)
    k = key("reward", "ours", plan.slug, f"n{n}", plan.t, f"s{seed}")
    if not (out / "reward_model.json").is_file():
        results = load_results(plan)
        if k in results:  # the folder was removed: train again
            save_result(plan, k, {**results[k], "missing": True})
        run_job(plan, k, reward_spec(plan, "reward_ours", n, seed))
    return out if (out / "reward_model.json").is_file() else None


def reward_spec(plan: Plan, job: str, n: int, seed: int) -> dict[str, Any]:
    side = "ours" if job.endswith("ours") else "trl"
    out = (reward_dir(plan, n, seed) if side == "ours"
           else plan.runs / f"reward-trl-{plan.slug}-n{n}-{plan.t}-s{seed}")
    return {"job": job, "model": plan.model, "n_train": n, "n_test": plan.n_test, "seed": seed,
            "max_steps": plan.max_steps, "out": str(out)}


# ----------------------------------------------------------------------------- sub-commands


def cmd_reward(plan: Plan) -> None:
    sizes = plan.n_train or [400, 800, 1600]
    for seed in plan.seeds:
        vk = key("reward", "vader", f"n{max(sizes)}", plan.t, f"s{seed}")
        if vk not in load_results(plan):
            from rlhf_hgt.lm.data import rotten_tomatoes_pairs, vader_pair_accuracy

            _, test = rotten_tomatoes_pairs(max(sizes), plan.n_test, seed=seed)
            save_result(plan, vk, {"accuracy": vader_pair_accuracy(test),
                                   "eval_pairs": len(test), "command": plan.command})
        for n in sizes:
            for job in ("reward_ours", "reward_trl"):
                side = job.split("_")[1]
                run_job(plan, key("reward", side, plan.slug, f"n{n}", plan.t, f"s{seed}"),
                        reward_spec(plan, job, n, seed))


def dpo_variant(plan: Plan) -> str:
    """The side name of our DPO with non-default settings, e.g. 'ours+sigmoid+sft@1+0.1,b0.3'."""
    name = "ours"
    if plan.dpo_loss:
        name += "+" + plan.dpo_loss.replace(",", "+")
    if plan.dpo_weights:
        name += "@" + plan.dpo_weights.replace(",", "+")
    if plan.dpo_beta is not None:
        name += f",b{plan.dpo_beta:g}"
    if plan.dpo_sft_weight is not None:
        name += f",sft{plan.dpo_sft_weight:g}"
    return name


def cmd_dpo(plan: Plan) -> None:
    for seed in plan.seeds:
        for n in plan.n_train or [800]:
            variant = dpo_variant(plan)
            sides = [variant] if variant != "ours" else ["ours", "trl"]
            for side in sides:
                out = plan.runs / f"dpo-{side}-{plan.slug}-n{n}-{plan.t}-s{seed}"
                run_job(plan, key("dpo", side, plan.slug, f"n{n}", plan.t, f"s{seed}"),
                        {"job": "dpo_trl" if side == "trl" else "dpo_ours",
                         "model": plan.model, "n_train": n, "loss": plan.dpo_loss,
                         "weights": plan.dpo_weights, "beta": plan.dpo_beta,
                         "sft_weight": plan.dpo_sft_weight,
                         "n_test": plan.n_test, "seed": seed, "max_steps": plan.max_steps,
                         "samples": plan.samples, "new_tokens": plan.new_tokens,
                         "out": str(out)})


def cmd_ppo(plan: Plan) -> None:
    for seed in plan.seeds:
        rdir = ensure_reward(plan, plan.reward_pairs, seed)
        if rdir is None:
            print(f"  !! PPO seed {seed}: no reward model", flush=True)
            plan.failures.append(f"ppo seed {seed}")
            continue
        k = key("ppo", "ours", plan.slug, f"r{plan.reward_pairs}", f"steps{plan.ppo_steps}",
                f"b{plan.ppo_batch}", plan.t, f"s{seed}")
        res = run_job(plan, k, {
            "job": "ppo_ours", "model": plan.model, "reward_dir": str(rdir),
            "n_test": plan.n_test, "seed": seed, "steps": plan.ppo_steps,
            "batch": plan.ppo_batch, "samples": plan.samples, "new_tokens": plan.new_tokens,
            "out": str(plan.runs / f"ppo-ours-{plan.slug}-s{seed}")})
        if res is not None:
            plot_curve(plan, res)


def cmd_speed(plan: Plan) -> None:
    seed, n = plan.seeds[0], plan.dpo_speed_steps * plan.speed_batch
    common = {"model": plan.model, "seed": seed, "n_test": plan.n_test}
    for rep in range(plan.repeats):  # alternate the order: the machine's load drifts
        for side in (("ours", "trl") if rep % 2 == 0 else ("trl", "ours")):
            run_job(plan, key("speed", "dpo", side, plan.slug, f"steps{plan.dpo_speed_steps}",
                              f"b{plan.speed_batch}", f"rep{rep}"),
                    {**common, "job": f"dpo_speed_{side}", "n_train": n,
                     "steps": plan.dpo_speed_steps, "batch": plan.speed_batch,
                     "out": str(plan.runs / f"speed-dpo-{side}")})
    rdir = ensure_reward(plan, plan.reward_pairs, seed)
    if rdir is None:
        plan.failures.append("speed ppo: no reward model")
        return
    ppo = {**common, "reward_dir": str(rdir), "steps": plan.ppo_speed_steps,
           "batch": plan.speed_batch, "new_tokens": plan.new_tokens}
    tag = (plan.slug, f"steps{plan.ppo_speed_steps}", f"b{plan.speed_batch}",
           f"tok{plan.new_tokens}")
    run_job(plan, key("speed", "ppo", "ours", *tag),
            {**ppo, "job": "ppo_speed_ours", "out": str(plan.runs / "speed-ppo-ours")})
    if plan.with_full:  # our PPO with every weight trained: the memory LoRA saves
        run_job(plan, key("speed", "ppo", "ours_full", *tag),
                {**ppo, "job": "ppo_speed_ours", "full": True,
                 "out": str(plan.runs / "speed-ppo-ours-full")})
    variants = [("trl112", True)] + ([("trl112_full", False)] if plan.with_full else [])
    for name, lora in variants:
        k = key("speed", "ppo", name, *tag)
        if not (PEER_DIR / "trl" / "__init__.py").is_file():
            print(f"  TRL 1.12 is not installed in {PEER_DIR}; the PPO anchor is missing. "
                  f"Install it with:\n    {PEER_INSTALL}", flush=True)
            save_result(plan, k, {"missing": True, "install": PEER_INSTALL,
                                  "command": plan.command})
            continue
        run_job(plan, k, {**ppo, "job": "ppo_speed_trl112", "lora": lora,
                          "out": str(plan.runs / f"speed-ppo-{name}")}, peer=True)


# ----------------------------------------------------------------------------- CLI


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_job"]:
        return run_job_file(argv[1], argv[2])
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    for name in ("reward", "dpo", "ppo", "speed", "report", "all"):
        p = sub.add_parser(name)
        p.add_argument("--model", default="smollm2", help="smollm2 (default), a path or hub id")
        p.add_argument("--smoke", action="store_true",
                       help="tiny model, a few pairs, 1-2 steps; separate results file")
        p.add_argument("--n-train", nargs="+", type=positive, default=None,
                       help="training pairs (reward: 400 800 1600; dpo: 800)")
        p.add_argument("--n-test", type=positive, default=None, help="held-out pairs (all: ~645)")
        p.add_argument("--seeds", nargs="+", type=int, default=[0])
        p.add_argument("--results", default=None, help="results JSON (default benchmarks/...)")
        p.add_argument("--max-steps", type=positive, default=None,
                       help="cap every reward/DPO training (timing checks)")
        p.add_argument("--samples", type=positive, default=None, help="sampled reviews (64)")
        p.add_argument("--new-tokens", type=positive, default=None, help="response tokens (48)")
        p.add_argument("--ppo-steps", type=positive, default=None, help="PPO updates (64)")
        p.add_argument("--ppo-batch", type=positive, default=None, help="PPO rollouts/update (16)")
        p.add_argument("--reward-pairs", type=positive, default=None,
                       help="pairs of the reward model PPO uses (800)")
        p.add_argument("--dpo-speed-steps", type=positive, default=None, help="(20)")
        p.add_argument("--ppo-speed-steps", type=positive, default=None, help="(5)")
        p.add_argument("--repeats", type=positive, default=None, help="DPO speed repeats (2)")
        p.add_argument("--dpo-loss", default=None,
                       help="dpo: ours only, with these TRL losses summed (e.g. sigmoid,sft); "
                            "recorded as side 'ours+LOSSES'")
        p.add_argument("--dpo-weights", default=None,
                       help="dpo: weights of the --dpo-loss losses (e.g. 1,0.1)")
        p.add_argument("--dpo-beta", type=float, default=None, help="dpo: ours with this beta")
        p.add_argument("--dpo-sft-weight", type=float, default=None,
                       help="dpo: ours with this weight of the SFT term (0 = plain DPO loss)")
        p.add_argument("--with-full", action="store_true",
                       help="speed: also PPO with full fine-tuning, ours and TRL 1.12 (memory)")
    args = parser.parse_args(argv)
    plan = make_plan(args)
    print(f"LM benchmark '{args.what}' on {plan.model} → {plan.results}", flush=True)
    steps = {"reward": [cmd_reward], "dpo": [cmd_dpo], "ppo": [cmd_ppo], "speed": [cmd_speed],
             "report": [], "all": [cmd_reward, cmd_dpo, cmd_ppo, cmd_speed]}[args.what]
    from rlhf_hgt.feedback.errors import UserInputError

    try:
        for step in steps:
            step(plan)
    except UserInputError as exc:
        print(f"bench_lm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; finished results are kept (run again to resume)", file=sys.stderr)
        return 130
    write_report(plan, load_results(plan), ROOT)
    if plan.failures:
        print(f"\nFAILED: {', '.join(plan.failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
