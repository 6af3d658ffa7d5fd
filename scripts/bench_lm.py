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
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve()
PEER_SCRIPT = SCRIPT.parent / "bench_lm_trl_ppo.py"
PEER_DIR = ROOT / ".peers" / "trl112"
PEER_INSTALL = "pip install --no-deps --target .peers/trl112 trl==1.12.0"
TRL_DPO_LR = 5e-5
TRL_LORA = {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"}
ANCHORS = {"trl_dpo_acc_1epoch_800": 0.765, "base_vader": 0.19, "trl112_tokens_per_s": 13.0,
           "trl112_peak_gb": 5.5, "trl112_sampling_tokens_per_s": 64.0}
TARGETS = {"reward_acc_400": 0.85, "dpo_acc": 0.80, "dpo_speed_ratio": 0.95,
           "ppo_speed_ratio": 1.5, "ppo_memory_ratio": 0.5}


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
                 "dpo_speed_steps", "ppo_speed_steps", "repeats"):
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
    plan.results.parent.mkdir(parents=True, exist_ok=True)
    tmp = plan.results.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True))
    os.replace(tmp, plan.results)


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


def cmd_dpo(plan: Plan) -> None:
    for seed in plan.seeds:
        for n in plan.n_train or [800]:
            for side in ("ours", "trl"):
                out = plan.runs / f"dpo-{side}-{plan.slug}-n{n}-{plan.t}-s{seed}"
                run_job(plan, key("dpo", side, plan.slug, f"n{n}", plan.t, f"s{seed}"),
                        {"job": f"dpo_{side}", "model": plan.model, "n_train": n,
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


def plot_curve(plan: Plan, res: dict[str, Any]) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  (matplotlib is not installed: no PNG of the PPO curve)", flush=True)
        return None
    curve = res["curve"]
    steps = [c["step"] for c in curve]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(steps, [c["score"] for c in curve])
    a.set(xlabel="PPO update", ylabel="learned reward (mean)", title="reward")
    b.plot(steps, [c["kl_k1"] for c in curve], label="KL k1")
    b.plot(steps, [c["kl_k3"] for c in curve], label="KL k3")
    b.set(xlabel="PPO update", ylabel="nats / sequence", title="KL to reference")
    b.legend()
    fig.tight_layout()
    path = plan.sibling("ppo_curve", ".png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- report


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.mean(vals) if vals else None


def _f(v: float | None, fmt: str = ".3f") -> str:
    return "—" if v is None else format(v, fmt)


def _mark(ok: bool | None) -> str:
    return "" if ok is None else (" ✓" if ok else " ✗")


def _group(results: dict, prefix: str, side: str) -> dict[str, list[dict]]:
    """Entries ``prefix|side|model|nN|tT|sS`` grouped by (model, nN, tT)."""
    out: dict[str, list[dict]] = {}
    for k, v in results.items():
        parts = k.split("|")
        if parts[0] == prefix and parts[1] == side and not v.get("missing"):
            out.setdefault("|".join(parts[2:5]), []).append(v)
    return out


def cmd_report(plan: Plan) -> str:
    res = load_results(plan)
    where = (plan.results.relative_to(ROOT) if plan.results.is_relative_to(ROOT)
             else plan.results)
    smoke = " (SMOKE: tiny model, numbers mean nothing)" if plan.smoke else ""
    lines = [f"# Language-model benchmarks{smoke}", "", f"Results: `{where}`. Commands:", ""]
    lines += sorted({f"    {v['command']}" for v in res.values() if v.get("command")})
    lines += ["", "## Reward model (held-out pairs, unseen movies)", "",
              "| model | train pairs | test | seeds | ours | plain TRL | VADER | ours ≥ TRL |"
              " ≥ 0.85 at 400 |", "|" + "---|" * 9]
    ours, trl = _group(res, "reward", "ours"), _group(res, "reward", "trl")
    vader: dict[str, list[float]] = {}  # per test size, over seeds
    for k, v in res.items():
        if k.startswith("reward|vader|"):
            vader.setdefault(k.split("|")[3], []).append(v["accuracy"])
    for g in sorted(ours, key=lambda g: (g.split("|")[0], int(g.split("|")[1][1:]))):
        model, n, t = g.split("|")
        a = _mean([r.get("accuracy") for r in ours[g]])
        b = _mean([r.get("accuracy") for r in trl.get(g, [])])
        target = a >= TARGETS["reward_acc_400"] if n == "n400" and a is not None else None
        lines.append(f"| {model} | {n[1:]} | {t[1:]} | {len(ours[g])} | {_f(a)} | {_f(b)} | "
                     f"{_f(_mean(vader.get(t, [])))} | "
                     f"{_mark(a >= b if a is not None and b is not None else None)} | "
                     f"{_mark(target)} |")
    lines += ["", "## DPO with LoRA (held-out implicit-reward accuracy; VADER of sampled "
              f"reviews, base ≈ {ANCHORS['base_vader']})", "",
              "| model | pairs | side | seeds | epochs | accuracy | VADER before → after |"
              " samples/s |", "|" + "---|" * 8]
    for side in ("ours", "trl"):
        for g, runs in sorted(_group(res, "dpo", side).items()):
            model, n, _ = g.split("|")
            acc = _mean([r.get("implicit_reward_accuracy") for r in runs])
            mark = _mark(acc >= TARGETS["dpo_acc"]) if side == "ours" and acc else ""
            lines.append(
                f"| {model} | {n[1:]} | {'ours' if side == 'ours' else 'plain TRL'} | "
                f"{len(runs)} | {_f(_mean([r.get('epochs') for r in runs]), '.1f')} | "
                f"{_f(acc)}{mark} | {_f(_mean([r.get('vader_before') for r in runs]))} → "
                f"{_f(_mean([r.get('vader_after') for r in runs]))} | "
                f"{_f(_mean([r.get('samples_per_s') for r in runs]), '.2f')} |")
    lines.append(f"\nAnchor: plain TRL DPOTrainer + LoRA reached "
                 f"{ANCHORS['trl_dpo_acc_1epoch_800']} after one epoch on 800 pairs.")
    lines += ["", "## PPO with LoRA on the learned reward (held-out prompts)", "",
              "| run | updates | learned reward before → after | VADER before → after | "
              "KL k1 final (max) | tokens/s | peak MB |", "|" + "---|" * 7]
    for k, r in sorted(res.items()):
        if k.startswith("ppo|ours|"):
            kl = [c["kl_k1"] for c in r["curve"]]
            lines.append(f"| {' '.join(k.split('|')[2:])} | {len(r['curve'])} | "
                         f"{_f(r['reward_before'])} → "
                         f"{_f(r['reward_after'])} | {_f(r['vader_before'])} → "
                         f"{_f(r['vader_after'])} | {_f(kl[-1])} ({_f(max(kl))}) | "
                         f"{_f(r['tokens_per_s'], '.1f')} | {r['peak_memory_mb']:.0f} |")
    lines += ["", f"Curve: {plan.sibling('ppo_curve', '.png').name}", ""]
    lines += ["## Speed and memory vs TRL (same model, data, batch and steps)"]
    for model in sorted({k.split("|")[3] for k in res if k.startswith("speed|")}):
        lines += ["", f"{model}:", ""]
        lines += report_speed({k: v for k, v in res.items()
                               if k.startswith("speed|") and k.split("|")[3] == model})
    text = "\n".join(lines)
    path = plan.sibling("summary", ".md")
    path.write_text(text + "\n")
    print(text)
    return text


def report_speed(res: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    dpo: dict[str, list[float]] = {"ours": [], "trl": []}
    for k, r in res.items():
        p = k.split("|")
        if p[:2] == ["speed", "dpo"]:
            dpo[p[2]].append(r["samples_per_s"])
    if dpo["ours"] and dpo["trl"]:
        o, t = statistics.median(dpo["ours"]), statistics.median(dpo["trl"])
        lines.append(f"- DPO samples/s: ours {o:.2f}, raw TRL DPOTrainer {t:.2f} (medians of "
                     f"{len(dpo['ours'])}/{len(dpo['trl'])} runs): ratio {o / t:.3f} "
                     f"(target ≥ {TARGETS['dpo_speed_ratio']}){_mark(o / t >= 0.95)}")
    ppo = {k.split("|")[2]: r for k, r in res.items() if k.startswith("speed|ppo|")}
    ours, peer = ppo.get("ours"), ppo.get("trl112")
    if ours:
        lines.append(f"- our LoRA PPO: {ours['tokens_per_s']:.1f} generated tokens/s over "
                     f"whole updates (sampling alone {ours['sampling_tokens_per_s']:.1f}), "
                     f"peak {ours['peak_memory_mb']:.0f} MB ({ours['peak_memory_kind']})")
        full = ppo.get("ours_full")
        if full:
            lines.append(f"- our PPO, full fine-tuning (lora_r=0, frozen reference copy): "
                         f"{full['tokens_per_s']:.1f} tokens/s, peak "
                         f"{full['peak_memory_mb']:.0f} MB; LoRA / full peak memory "
                         f"{ours['peak_memory_mb'] / full['peak_memory_mb']:.2f}, trainable "
                         f"weights {ours.get('trainable_params', 0):,} vs "
                         f"{full.get('trainable_params', 0):,}")
    if peer and peer.get("missing"):
        lines.append(f"- TRL 1.12 PPOTrainer anchor: MISSING; install with `{PEER_INSTALL}`")
    elif peer:
        lines.append(f"- TRL 1.12 PPOTrainer + LoRA: {peer['tokens_per_s']:.1f} tokens/s "
                     f"(sampling alone {peer['sampling_tokens_per_s']:.1f}), peak "
                     f"{peer['peak_memory_mb']:.0f} MB (anchor ≈ "
                     f"{ANCHORS['trl112_tokens_per_s']:.0f} tokens/s, "
                     f"{ANCHORS['trl112_peak_gb']} GB)")
        if ours:
            sr = ours["tokens_per_s"] / peer["tokens_per_s"]
            mr = ours["peak_memory_mb"] / peer["peak_memory_mb"]
            lines.append(f"- ratios ours / TRL 1.12: tokens/s {sr:.2f} (target ≥ "
                         f"{TARGETS['ppo_speed_ratio']}){_mark(sr >= 1.5)}, peak memory "
                         f"{mr:.2f} (target ≤ {TARGETS['ppo_memory_ratio']}){_mark(mr <= 0.5)}")
    full_peer = ppo.get("trl112_full")
    if full_peer and not full_peer.get("missing"):
        lines.append(f"- TRL 1.12 PPOTrainer, full fine-tuning: peak "
                     f"{full_peer['peak_memory_mb']:.0f} MB, {full_peer['tokens_per_s']:.1f} "
                     "tokens/s")
    return lines


# ----------------------------------------------------------------------------- jobs (children)


def run_job_file(spec_path: str, out_path: str) -> int:
    """Child entry: run the job a spec names and write its result JSON."""
    spec = json.loads(Path(spec_path).read_text())
    import torch

    from rlhf_hgt.lm import trl_common

    if not torch.cuda.is_available():
        torch.set_num_threads(1)
    trl_common.quiet_libraries()
    from rlhf_hgt.feedback.errors import UserInputError

    try:
        res = JOBS[spec["job"]](spec)
    except UserInputError as exc:
        print(f"bench_lm: error: {exc}", file=sys.stderr)
        return 2
    res["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    if torch.cuda.is_available():
        res["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    write_json(out_path, res)
    return 0


def write_json(path: str | Path, obj: Any) -> None:
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def causal_lm(name: str) -> tuple[Any, Any]:
    """(model, tokenizer) in fp32: the tiny in-memory model or a real one (pad fixed)."""
    import torch

    if name == "tiny":
        from rlhf_hgt.lm.tiny import tiny_causal_lm

        return tiny_causal_lm(seed=0)
    from rlhf_hgt.lm.models import load_causal_lm

    return load_causal_lm(name, dtype=torch.float32)


def reward_lm(name: str) -> tuple[Any, Any]:
    import torch

    if name == "tiny":
        from rlhf_hgt.lm.tiny import tiny_reward_lm

        return tiny_reward_lm(seed=0)
    from rlhf_hgt.lm.models import load_reward_lm

    return load_reward_lm(name, dtype=torch.float32)


def pairs(spec: dict[str, Any]) -> tuple[Any, Any]:
    from rlhf_hgt.lm.data import rotten_tomatoes_pairs

    return rotten_tomatoes_pairs(spec.get("n_train"), spec.get("n_test"), seed=spec["seed"])


def heldout_prompts(test: Any, n: int) -> list[str]:
    """``n`` prompts of held-out movies: each distinct prompt once, then round again."""
    distinct = list(dict.fromkeys(test["prompt"]))
    return [distinct[i % len(distinct)] for i in range(n)]


def trl_args(spec: dict[str, Any], batch: int) -> dict[str, Any]:
    """TrainingArguments that plain TRL runs get besides its defaults: where to write, the
    batch, the step cap, quiet, and bf16 / checkpointing off on a CPU."""
    import torch

    gpu = torch.cuda.is_available()
    return {"output_dir": spec["out"], "seed": spec["seed"], "per_device_train_batch_size": batch,
            "max_steps": spec.get("max_steps", -1), "report_to": [], "save_strategy": "no",
            "logging_steps": 10, "disable_tqdm": True, "use_cpu": not gpu,
            "bf16": bool(gpu and torch.cuda.is_bf16_supported()),
            "activation_checkpointing": False}


def sample_reviews(model: Any, tok: Any, prompts: list[str], new_tokens: int, seed: int,
                   batch: int = 16) -> list[str]:
    """Sampled continuations of plain-text prompts (temperature 0.7, no top-k/top-p, the
    model's own generation defaults hidden), reproducible given ``seed``."""
    import torch
    from transformers import GenerationConfig

    from rlhf_hgt.lm.ppo_model import eos_ids

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved = base.generation_config
    base.generation_config = GenerationConfig(eos_token_id=eos_ids(base, tok),
                                              pad_token_id=tok.pad_token_id)
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    texts: list[str] = []
    try:
        for i in range(0, len(prompts), batch):
            ids = [tok(p)["input_ids"] for p in prompts[i:i + batch]]
            width = max(len(x) for x in ids)
            input_ids = torch.full((len(ids), width), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(ids), width), dtype=torch.long)
            for j, x in enumerate(ids):
                input_ids[j, width - len(x):], mask[j, width - len(x):] = torch.tensor(x), 1
            with torch.no_grad():
                out = model.generate(input_ids=input_ids.to(device),
                                     attention_mask=mask.to(device), do_sample=True,
                                     temperature=0.7, top_k=0, top_p=1.0,
                                     max_new_tokens=new_tokens)
            texts += [tok.decode(row, skip_special_tokens=True) for row in out[:, width:]]
    finally:
        base.generation_config = saved
    return texts


def vader_mean(prompts: list[str], texts: list[str]) -> float:
    from rlhf_hgt.lm.data import vader_scorer

    score = vader_scorer()
    return statistics.mean(score(p, t) for p, t in zip(prompts, texts, strict=True))


def sentiment(model: Any, tok: Any, test: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """VADER of sampled held-out reviews with the adapter off (base) and on (trained)."""
    prompts = heldout_prompts(test, spec["samples"])
    model.eval()
    with model.disable_adapter():
        before = sample_reviews(model, tok, prompts, spec["new_tokens"], spec["seed"])
    after = sample_reviews(model, tok, prompts, spec["new_tokens"], spec["seed"])
    return {"vader_before": vader_mean(prompts, before), "vader_after": vader_mean(prompts, after),
            "samples": len(prompts), "new_tokens": spec["new_tokens"], "temperature": 0.7,
            "examples": [{"prompt": p, "before": b, "after": a}
                         for p, b, a in list(zip(prompts, before, after, strict=True))[:3]]}


def job_reward_ours(spec: dict[str, Any]) -> dict[str, Any]:
    from rlhf_hgt.lm.reward import LMRewardConfig, train_reward_model

    train, test = pairs(spec)
    cfg = LMRewardConfig(seed=spec["seed"], progress=False, max_steps=spec["max_steps"])
    t0 = time.perf_counter()
    m = train_reward_model(spec["model"], train, test, cfg, out_dir=spec["out"])
    return {"accuracy": m["reward_model_accuracy"], "eval_loss": m["eval_loss"],
            "steps": m["steps"], "epochs": m["epochs"], "learning_rate": cfg.learning_rate,
            "train_runtime_s": m["train_runtime_s"], "call_s": time.perf_counter() - t0,
            "train_pairs": len(train), "eval_pairs": len(test), "out": spec["out"]}


def job_reward_trl(spec: dict[str, Any]) -> dict[str, Any]:
    from peft import LoraConfig
    from transformers import set_seed
    from trl import RewardConfig, RewardTrainer

    from rlhf_hgt.lm import trl_common
    from rlhf_hgt.lm.reward import LMRewardConfig, evaluate_reward_model

    train, test = pairs(spec)
    ours = LMRewardConfig()
    set_seed(spec["seed"])
    model, tok = reward_lm(spec["model"])
    args = RewardConfig(**trl_args(spec, ours.batch_size),
                        num_train_epochs=ours.resolved_epochs(len(train)))
    trainer = RewardTrainer(model=model, args=args, train_dataset=train, processing_class=tok,
                            peft_config=LoraConfig(task_type="SEQ_CLS", **TRL_LORA))
    trl_common.quiet_trainer(trainer, progress=False)
    t0 = time.perf_counter()
    out = trainer.train()
    runtime = time.perf_counter() - t0
    trained = trainer.accelerator.unwrap_model(trainer.model).eval()
    ev = evaluate_reward_model(trained, tok, test)  # TRL's format: prompt + response + eos
    return {"accuracy": ev["reward_model_accuracy"], "eval_loss": ev["eval_loss"],
            "steps": trainer.state.global_step, "epochs": trainer.state.epoch,
            "learning_rate": args.learning_rate, "train_loss": out.training_loss,
            "train_runtime_s": runtime, "train_pairs": len(train), "eval_pairs": len(test),
            "lora": TRL_LORA}


def job_dpo_ours(spec: dict[str, Any]) -> dict[str, Any]:
    from rlhf_hgt.lm.dpo import LMDPOConfig, load_policy, train_dpo

    train, test = pairs(spec)
    cfg = LMDPOConfig(seed=spec["seed"], progress=False, max_steps=spec["max_steps"])
    m = train_dpo(spec["model"], train, test, cfg, out_dir=spec["out"])
    policy, tok = load_policy(spec["out"])
    return {"implicit_reward_accuracy": m["implicit_reward_accuracy"], "steps": m["steps"],
            "epochs": m["epochs"], "learning_rate": cfg.learning_rate,
            "samples_per_s": m["steps"] * cfg.batch_size / m["train_runtime_s"],
            "train_runtime_s": m["train_runtime_s"], "train_pairs": len(train),
            "eval_pairs": len(test), **sentiment(policy, tok, test, spec)}


def _trl_dpo(spec: dict[str, Any], train: Any, *, epochs: float, batch: int,
             max_steps: int) -> tuple[Any, Any, Any, float]:
    """Plain TRL DPOTrainer + LoRA: (trainer, policy, tokenizer, train seconds)."""
    from peft import LoraConfig
    from transformers import set_seed
    from trl import DPOConfig, DPOTrainer

    from rlhf_hgt.lm import trl_common

    set_seed(spec["seed"])
    model, tok = causal_lm(spec["model"])
    args = DPOConfig(**{**trl_args(spec, batch), "max_steps": max_steps},
                     num_train_epochs=epochs, learning_rate=TRL_DPO_LR)
    trainer = DPOTrainer(model=model, args=args, train_dataset=train, processing_class=tok,
                         peft_config=LoraConfig(task_type="CAUSAL_LM", **TRL_LORA))
    trl_common.quiet_trainer(trainer, progress=False)
    t0 = time.perf_counter()
    trainer.train()
    runtime = time.perf_counter() - t0
    return trainer, trainer.accelerator.unwrap_model(trainer.model).eval(), tok, runtime


def job_dpo_trl(spec: dict[str, Any]) -> dict[str, Any]:
    from rlhf_hgt.lm.dpo import LMDPOConfig, implicit_reward_accuracy

    train, test = pairs(spec)
    ours = LMDPOConfig()
    trainer, policy, tok, runtime = _trl_dpo(spec, train, epochs=ours.epochs,
                                             batch=ours.batch_size, max_steps=spec["max_steps"])
    acc = implicit_reward_accuracy(policy, None, tok, test, beta=trainer.args.beta)
    steps = trainer.state.global_step
    return {"implicit_reward_accuracy": acc, "steps": steps, "epochs": trainer.state.epoch,
            "learning_rate": TRL_DPO_LR, "samples_per_s": steps * ours.batch_size / runtime,
            "train_runtime_s": runtime, "train_pairs": len(train), "eval_pairs": len(test),
            "lora": TRL_LORA, **sentiment(policy, tok, test, spec)}


def job_dpo_speed_ours(spec: dict[str, Any]) -> dict[str, Any]:
    from rlhf_hgt.lm.dpo import LMDPOConfig, train_dpo

    train, _ = pairs(spec)
    cfg = LMDPOConfig(seed=spec["seed"], progress=False, max_steps=spec["steps"],
                      batch_size=spec["batch"], eval_fraction=0.0)
    m = train_dpo(spec["model"], train, None, cfg, out_dir=spec["out"])
    return {"samples_per_s": m["steps"] * spec["batch"] / m["train_runtime_s"],
            "steps": m["steps"], "batch": spec["batch"], "train_runtime_s": m["train_runtime_s"]}


def job_dpo_speed_trl(spec: dict[str, Any]) -> dict[str, Any]:
    train, _ = pairs(spec)
    trainer, _, _, runtime = _trl_dpo(spec, train, epochs=1.0, batch=spec["batch"],
                                      max_steps=spec["steps"])
    steps = trainer.state.global_step
    return {"samples_per_s": steps * spec["batch"] / runtime, "steps": steps,
            "batch": spec["batch"], "train_runtime_s": runtime}


def _ppo_trainer(spec: dict[str, Any], batch: int, merge: bool, full: bool = False
                 ) -> tuple[Any, Any]:
    from rlhf_hgt.lm.ppo import LMPPOConfig, LMPPOTrainer
    from rlhf_hgt.lm.reward import RewardScorer

    scorer = RewardScorer.load(spec["reward_dir"])
    if merge and hasattr(scorer.model, "merge_and_unload"):  # as TRL 1.12 gets it
        scorer.model = scorer.model.merge_and_unload().eval()
    model, tok = causal_lm(spec["model"])
    cfg = LMPPOConfig(steps=spec["steps"], batch_size=batch, mini_batch_size=min(8, batch),
                      max_new_tokens=spec["new_tokens"], seed=spec["seed"],
                      **({"lora_r": 0, "lr": 1e-6} if full else {}))
    return LMPPOTrainer(model, tok, scorer, cfg), scorer


def _throughput(hist: list[dict[str, float]], batch: int) -> dict[str, float]:
    """Generated tokens/s over whole updates and over sampling alone; the first update (warm
    up) is left out when there are more."""
    h = hist[1:] if len(hist) > 1 else hist
    tokens = sum(s["response_length"] * batch for s in h)
    return {"tokens_per_s": tokens / sum(s["step_time_s"] for s in h),
            "sampling_tokens_per_s": tokens / sum(s["time_generate_s"] for s in h),
            "updates_measured": len(h), "tokens": tokens}


def job_ppo_ours(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    train, test = pairs({**spec, "n_train": None})
    trainer, scorer = _ppo_trainer(spec, spec["batch"], merge=False)
    prompts = heldout_prompts(test, spec["samples"])

    def evaluate() -> tuple[float, float, list[str]]:
        torch.manual_seed(spec["seed"] + 7)
        texts = [t for i in range(0, len(prompts), 16) for t in trainer.generate(prompts[i:i + 16])]
        return float(scorer.score(prompts, texts).mean()), vader_mean(prompts, texts), texts

    r0, v0, before = evaluate()
    hist = trainer.train(list(dict.fromkeys(train["prompt"])), steps=spec["steps"])
    r1, v1, after = evaluate()
    trainer.save(spec["out"])
    keep = ("step", "score", "reward", "kl_k1", "kl_k3", "kl_coef", "entropy", "approx_kl",
            "policy_clipfrac", "response_length", "tokens_per_s", "step_time_s")
    return {"reward_before": r0, "reward_after": r1, "vader_before": v0, "vader_after": v1,
            "samples": len(prompts), "steps": len(hist), "batch": spec["batch"],
            "curve": [{k: s[k] for k in keep if k in s} for s in hist],
            "config": asdict(trainer.config), **_throughput(hist, spec["batch"]),
            "examples": [{"prompt": p, "before": b, "after": a}
                         for p, b, a in list(zip(prompts, before, after, strict=True))[:3]]}


def job_ppo_speed_ours(spec: dict[str, Any]) -> dict[str, Any]:
    """Our PPO, LoRA (or with spec["full"] full fine-tuning with a frozen reference copy)."""
    train, _ = pairs({**spec, "n_train": None})
    trainer, _ = _ppo_trainer(spec, spec["batch"], merge=True, full=spec.get("full", False))
    hist = trainer.train(list(dict.fromkeys(train["prompt"])), steps=spec["steps"])
    return {**_throughput(hist, spec["batch"]), "steps": len(hist), "batch": spec["batch"],
            "new_tokens": spec["new_tokens"], "ppo_epochs": trainer.config.ppo_epochs,
            "per_update": [{k: s[k] for k in ("step_time_s", "time_generate_s",
                                              "response_length")} for s in hist],
            "lora_r": trainer.config.lora_r,
            "trainable_params": sum(p.numel() for p in trainer.policy.parameters()
                                    if p.requires_grad)}


JOBS = {"reward_ours": job_reward_ours, "reward_trl": job_reward_trl, "dpo_ours": job_dpo_ours,
        "dpo_trl": job_dpo_trl, "dpo_speed_ours": job_dpo_speed_ours,
        "dpo_speed_trl": job_dpo_speed_trl, "ppo_ours": job_ppo_ours,
        "ppo_speed_ours": job_ppo_speed_ours}


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
    cmd_report(plan)
    if plan.failures:
        print(f"\nFAILED: {', '.join(plan.failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
