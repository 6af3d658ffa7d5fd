"""Human guidance for the language reward model (issue 13, sections 2 and 3): word highlights
against a decoy, and response-time weighting with a drift-diffusion teacher.

    python scripts/bench_lm_guidance.py decoy --n-train 400 --n-test 200 --seeds 0
    python scripts/bench_lm_guidance.py time --n-train 400 --n-test 200 --seeds 0 1 2
    python scripts/bench_lm_guidance.py tiny-weights      # the provisional default weight
    python scripts/bench_lm_guidance.py report
    python scripts/bench_lm_guidance.py all --smoke       # every phase on the tiny model

decoy: Rotten Tomatoes pairs (rlhf_hgt.lm.decoy_text): in training every chosen snippet ends
in the decoy " [ref]"; held out (unseen movies), the decoy ends the chosen or the rejected
snippet, a fair coin per pair. Reward models (`rlhf-hgt lm reward`, LoRA r16, the default
budget) trained on: the decoy-free twin; the decoy without highlights; the decoy with the
synthetic highlighter's evidence (VADER's rated words) on every pair, and on 10% of them;
the decoy with highlights on the decoy itself (break condition). Reported: held-out accuracy
with the decoy randomised (also split by the decoy's side, and on the decoy-free test pairs),
and the share of the reward's input-gradient energy on the decoy tokens (64 test pairs).
``--weights 3 30`` adds highlighted runs at other weights.

time: the training pairs go into a preference store with a random left/right order, answered
by the drift-diffusion teacher (feedback/teachers.py ``ddm``: answers and response times;
close pairs slow and error-prone) judging VADER's sentiment score; and by ``ddm`` with
``informative=0`` (times shuffled: the break condition). The same labels train a reward model
with and without ``--time-weighting`` (weight and soft modes). Reported: held-out accuracy
against VADER's order of the test pairs (ties left out) and against the critics' labels, the
teacher's own agreement with VADER, and the time-weighting summary.

tiny-weights: the measurement behind the provisional default highlight weight, on the tiny
in-memory model: 64 pairs of 'a'-rich (chosen) and 'b'-rich (rejected) strings, chosen always
ending in " Z", 128 held-out pairs with " Z" on a random side; weights 0 to 100, highlights on
all or 10% of the pairs, the decoy-free twin; 3 seeds (about 2 minutes on one core).

Each training runs as `python -m rlhf_hgt.cli lm reward ...` in a child process (the command
is recorded with the result) and each evaluation in another child. Results go to
benchmarks/lm_guidance_results.json (resumable: finished keys are skipped; --smoke writes
lm_guidance_results_smoke.json), the report to benchmarks/lm_guidance_summary.md.

Estimated CPU time with SmolLM2-135M (one thread, 400 training pairs, 200 steps of 8, about
1,000 s per plain reward model here): a step with highlights needs a second backward through
the gradient; measured 1.8x a plain step on a 4-layer, 256-wide Llama with every pair
highlighted (2026-12-04), assumed 2-3x on SmolLM2 (not measured). With 10% of the pairs
highlighted about half the batches of 8 hold one. So decoy per seed: clean ~1,000 + decoy
~1,000 + highlights ~2,500 + 10% ~1,800 + wrong ~2,500 s, plus ~3 min of scoring each
(400 responses and 64 gradients): ~2.6 h. time per seed: 2 teachers x 3 runs x ~1,000 s
plus ~1.5 min of scoring each: ~1.8 h.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import re
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve()
DECOY_CONDITIONS = {  # name: training file of rlhf_hgt.lm.decoy_text (default weight)
    "clean": "train_clean", "decoy": "train_decoy", "highlights": "train_highlights",
    "highlights_10pct": "train_highlights_partial", "wrong": "train_wrong"}
TEACHERS = {"ddm": "ddm", "ddm_uninformative": "ddm:informative=0"}
TIME_MODES = ("off", "weight", "soft")
ATTRIBUTION_PAIRS = 64


@dataclass
class Plan:
    model: str = "smollm2"
    smoke: bool = False
    seeds: list[int] = field(default_factory=lambda: [0])
    n_train: int = 400
    n_test: int = 200
    data_seed: int = 0
    max_steps: int = -1
    weights: list[float] = field(default_factory=list)
    results: Path = ROOT / "benchmarks" / "lm_guidance_results.json"
    summary: Path = ROOT / "benchmarks" / "lm_guidance_summary.md"
    runs: Path = ROOT / "runs" / "bench_lm_guidance"
    command: str = ""
    failures: list[str] = field(default_factory=list)

    @property
    def slug(self) -> str:
        return re.sub(r"[^\w.-]+", "_", self.model).strip("_")[-40:] or "model"

    def tag(self) -> str:
        cap = f"-cap{self.max_steps}" if self.max_steps > 0 else ""
        return f"{self.slug}|n{self.n_train}|t{self.n_test}{cap}"


# ----------------------------------------------------------------------------- results


def load_results(plan: Plan) -> dict[str, Any]:
    return json.loads(plan.results.read_text()) if plan.results.exists() else {}


def save_result(plan: Plan, key: str, value: dict[str, Any]) -> None:
    from rlhf_hgt.feedback.files import write_bytes_atomic

    results = load_results(plan)
    results[key] = value
    write_bytes_atomic(plan.results, json.dumps(results, indent=1, sort_keys=True).encode())


def run(cmd: list[str], what: str) -> bool:
    """A child process; True when it succeeded."""
    print(f"    $ {shlex.join(cmd)}", flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ))
    if proc.returncode != 0:
        print(f"  !! {what}: exit {proc.returncode}", flush=True)
    return proc.returncode == 0


def train_and_eval(plan: Plan, key: str, source: list[str], out: Path, flags: list[str],
                   seed: int, evaluation: dict[str, Any], extra: dict[str, Any] | None = None
                   ) -> dict[str, Any] | None:
    """Train a reward model with the CLI, evaluate it in a child; store and return the result
    with ``extra`` (a finished key is returned as it is)."""
    done = load_results(plan).get(key)
    if done is not None:
        print(f"  done already: {key}", flush=True)
        return done
    print(f"  running {key} ...", flush=True)
    started = dt.datetime.now().isoformat(timespec="seconds")
    cmd = [sys.executable, "-m", "rlhf_hgt.cli", "lm", "reward", *source, "--out", str(out),
           "--model", plan.model, "--eval-fraction", "0", "--seed", str(seed), "--quiet",
           *flags]
    if plan.max_steps > 0:
        cmd += ["--max-steps", str(plan.max_steps)]
    start = time.perf_counter()
    if not run(cmd, key):
        plan.failures.append(key)
        return None
    train_wall = time.perf_counter() - start
    spec_path, res_path = out / "bench_eval_spec.json", out / "bench_eval.json"
    spec_path.write_text(json.dumps({**evaluation, "reward_dir": str(out)}))
    res_path.unlink(missing_ok=True)
    if not run([sys.executable, str(SCRIPT), "_eval", str(spec_path), str(res_path)],
               f"{key} (evaluation)"):
        plan.failures.append(key)
        return None
    metrics = json.loads((out / "metrics.json").read_text())
    keep = ("train_runtime_s", "steps", "train_pairs", "train_loss", "highlight_weight",
            "highlighted_pairs", "highlighted_sides_used", "highlight_sides_unplaced",
            "highlight_share_first_log", "highlight_share_last_log", "time_weighting",
            "warnings")
    res = {**json.loads(res_path.read_text()), **{k: metrics.get(k) for k in keep},
           "train_wall_s": train_wall, "train_command": shlex.join(cmd),
           "command": plan.command, "started": started,
           "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
           **(extra or {})}
    save_result(plan, key, res)
    print(f"  {key}: accuracy {res.get('accuracy'):.3f}, trained in {train_wall:.0f} s",
          flush=True)
    return res


# ----------------------------------------------------------------------------- decoy


def cmd_decoy(plan: Plan) -> None:
    from rlhf_hgt.lm.decoy_text import DecoyTextConfig, build_decoy_text

    data = plan.runs / f"decoy-data-n{plan.n_train}-t{plan.n_test}-d{plan.data_seed}"
    built = build_decoy_text(data, DecoyTextConfig(n_train=plan.n_train, n_test=plan.n_test,
                                                   seed=plan.data_seed))
    files = built["files"]
    conditions = [(name, stem, []) for name, stem in DECOY_CONDITIONS.items()]
    conditions += [(f"highlights_w{w:g}", "train_highlights", ["--highlight-weight", f"{w:g}"])
                   for w in plan.weights]
    for seed in plan.seeds:
        for name, stem, flags in conditions:
            key = f"decoy|{name}|{plan.tag()}|d{plan.data_seed}|s{seed}"
            out = plan.runs / f"decoy-{name}-{plan.slug}-n{plan.n_train}-s{seed}"
            train_and_eval(plan, key, ["--data", files[stem]], out, flags, seed,
                           {"kind": "decoy", "test": files["test_random"],
                            "clean": files["test_clean"], "phrase": built["config"]["phrase"],
                            "train_file": stem})


def eval_decoy(spec: dict[str, Any], scorer: Any) -> dict[str, Any]:
    from rlhf_hgt.lm.decoy_text import DEFAULT_PHRASE

    tests = [json.loads(line) for line in Path(spec["test"]).read_text().splitlines() if line]
    clean = [json.loads(line) for line in Path(spec["clean"]).read_text().splitlines() if line]
    right = pair_right(scorer, tests)
    on_chosen = [r for r, t in zip(right, tests, strict=True) if t["decoy_on"] == "chosen"]
    on_rejected = [r for r, t in zip(right, tests, strict=True) if t["decoy_on"] == "rejected"]
    phrase = spec.get("phrase", DEFAULT_PHRASE)
    shares = decoy_shares(scorer, tests[:ATTRIBUTION_PAIRS], phrase)
    return {"accuracy": mean(right), "accuracy_clean_test": mean(pair_right(scorer, clean)),
            "accuracy_decoy_on_chosen": mean(on_chosen),
            "accuracy_decoy_on_rejected": mean(on_rejected), "eval_pairs": len(tests),
            "decoy_attribution_share": mean(shares), "attribution_pairs": len(shares),
            "train_file": spec["train_file"]}


def decoy_shares(scorer: Any, rows: list[dict[str, Any]], phrase: str) -> list[float]:
    """Per test response that carries the decoy: the share of the reward's input-gradient
    energy (over its response tokens) on the decoy's tokens."""
    import torch

    from rlhf_hgt.lm.reward import encode_marked
    from rlhf_hgt.lm.reward_guidance import attribution_shares

    shown = phrase.lstrip()
    encoded = []
    for row in rows:
        text = row[row["decoy_on"]]
        ids, marks = encode_marked(scorer.tok, row["prompt"], text,
                                   [(len(text) - len(shown), len(text))], scorer.max_length,
                                   scorer.chat_template)
        if marks is not None:
            encoded.append((ids, marks))
    device = next(scorer.model.parameters()).device

    def batches():
        for i in range(0, len(encoded), 8):
            chunk = encoded[i:i + 8]
            width = max(len(ids) for ids, _ in chunk)
            input_ids = torch.full((len(chunk), width), scorer.tok.pad_token_id)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            marks = torch.zeros((len(chunk), width), dtype=torch.long)
            for j, (ids, m) in enumerate(chunk):
                input_ids[j, :len(ids)], mask[j, :len(ids)] = torch.tensor(ids), 1
                marks[j, :len(m)] = torch.tensor(m)
            yield input_ids.to(device), mask.to(device), marks.to(device)

    # the "highlight" is the decoy here: its share is 1 - the share outside it
    return [1.0 - s for s in attribution_shares(scorer.model, batches())]


# ----------------------------------------------------------------------------- time


def build_time_store(plan: Plan, seed: int, teacher_name: str) -> tuple[Path, dict[str, Any]]:
    """A store of the training pairs, random left/right, answered by the teacher on VADER's
    score (built once per seed and teacher); and the teacher's diagnostics."""
    import numpy as np

    from rlhf_hgt.feedback.records import TextPair
    from rlhf_hgt.feedback.store import PreferenceStore
    from rlhf_hgt.feedback.teachers import answer_pending, make_teacher
    from rlhf_hgt.lm.data import rotten_tomatoes_pairs, vader_scorer

    path = plan.runs / f"time-store-{teacher_name}-n{plan.n_train}-d{plan.data_seed}-s{seed}.db"
    info_path = path.with_suffix(".json")
    if info_path.is_file() and path.is_file():
        return path, json.loads(info_path.read_text())
    path.unlink(missing_ok=True)
    train, _ = rotten_tomatoes_pairs(plan.n_train, plan.n_test, seed=plan.data_seed)
    rng = random.Random(f"time-order:{seed}")
    pairs = []
    for p, c, r in zip(train["prompt"], train["chosen"], train["rejected"], strict=True):
        pairs.append(TextPair(p, c, r) if rng.random() < 0.5 else TextPair(p, r, c))
    score = vader_scorer()
    with PreferenceStore(path) as st:
        st.add_text_queries(pairs)
        answer_pending(st, make_teacher(TEACHERS[teacher_name]), score_fn=score,
                       rng=np.random.default_rng(seed))
        agree, seconds_right, seconds_wrong = [], [], []
        for query, ans in st.labelled(kind="text"):
            left, right = score(query.prompt or "", query.left), score(query.prompt or "",
                                                                        query.right)
            if left == right or ans.shown_at is None:
                continue
            ok = (ans.answer == "left") == (left > right)
            agree.append(ok)
            (seconds_right if ok else seconds_wrong).append(ans.answered_at - ans.shown_at)
    info = {"teacher": TEACHERS[teacher_name], "answers": len(pairs),
            "teacher_agreement_with_vader": mean(agree),
            "median_seconds_right": statistics.median(seconds_right) if seconds_right else None,
            "median_seconds_wrong": statistics.median(seconds_wrong) if seconds_wrong else None}
    info_path.write_text(json.dumps(info))
    return path, info


def time_test_file(plan: Plan) -> Path:
    """The held-out pairs oriented by VADER (ties left out), and the critics' labels kept."""
    from rlhf_hgt.lm.data import rotten_tomatoes_pairs, vader_scorer
    from rlhf_hgt.lm.decoy_text import write_jsonl

    path = plan.runs / f"time-test-t{plan.n_test}-d{plan.data_seed}.jsonl"
    if path.is_file():
        return path
    _, test = rotten_tomatoes_pairs(plan.n_train, plan.n_test, seed=plan.data_seed)
    score = vader_scorer()
    rows = []
    for p, c, r in zip(test["prompt"], test["chosen"], test["rejected"], strict=True):
        sc, sr = score(p, c), score(p, r)
        if sc != sr:
            rows.append({"prompt": p, "chosen": c if sc > sr else r,
                         "rejected": r if sc > sr else c, "critics_agree": sc > sr})
    return write_jsonl(path, rows, keep=("critics_agree",))


def cmd_time(plan: Plan) -> None:
    test = time_test_file(plan)
    for seed in plan.seeds:
        for teacher_name in TEACHERS:
            store, info = build_time_store(plan, seed, teacher_name)
            for mode in TIME_MODES:
                flags = [] if mode == "off" else ["--time-weighting", "--time-weighting-mode",
                                                  mode]
                key = f"time|{teacher_name}|{mode}|{plan.tag()}|d{plan.data_seed}|s{seed}"
                out = plan.runs / f"time-{teacher_name}-{mode}-{plan.slug}-s{seed}"
                train_and_eval(plan, key, ["--store", str(store)], out, flags, seed,
                               {"kind": "time", "test": str(test)}, info)


def eval_time(spec: dict[str, Any], scorer: Any) -> dict[str, Any]:
    rows = [json.loads(line) for line in Path(spec["test"]).read_text().splitlines() if line]
    right = pair_right(scorer, rows)
    critics = [r == t["critics_agree"] for r, t in zip(right, rows, strict=True)]
    return {"accuracy": mean(right), "accuracy_vs_critics": mean(critics),
            "eval_pairs": len(rows)}


# ----------------------------------------------------------------------------- evaluation


def pair_right(scorer: Any, rows: list[dict[str, Any]]) -> list[float]:
    """Per pair 1 when the chosen side scores higher, 0.5 on a tie, else 0."""
    prompts = [r["prompt"] for r in rows]
    chosen = scorer.score(prompts, [r["chosen"] for r in rows])
    rejected = scorer.score(prompts, [r["rejected"] for r in rows])
    return [1.0 if a > b else 0.5 if a == b else 0.0
            for a, b in zip(chosen.tolist(), rejected.tolist(), strict=True)]


def run_eval(spec_path: str, out_path: str) -> int:
    """Child entry: score a trained reward model on a phase's test pairs."""
    import torch

    from rlhf_hgt.feedback.files import write_json_atomic
    from rlhf_hgt.lm import trl_common
    from rlhf_hgt.lm.reward import RewardScorer

    if not torch.cuda.is_available():
        torch.set_num_threads(1)
    trl_common.quiet_libraries()
    spec = json.loads(Path(spec_path).read_text())
    device = "cuda" if torch.cuda.is_available() else None
    start = time.perf_counter()
    scorer = RewardScorer.load(spec["reward_dir"], device=device)
    res = (eval_decoy if spec["kind"] == "decoy" else eval_time)(spec, scorer)
    res["eval_wall_s"] = time.perf_counter() - start
    write_json_atomic(out_path, res, indent=1)
    return 0


def mean(values: list[Any]) -> float | None:
    values = [float(v) for v in values if v is not None]
    return sum(values) / len(values) if values else None


# ----------------------------------------------------------------------------- tiny weights


def tiny_pairs(n: int, seed: int, decoy: str, fraction: float = 1.0) -> Any:
    """'a'-rich chosen and 'b'-rich rejected strings; " Z" on chosen (decoy "chosen"), on a
    random side ("random") or nowhere ("none"); highlights on a fraction (all but " Z")."""
    from datasets import Dataset

    rng = random.Random(seed)
    cols: dict[str, list] = {k: [] for k in ("prompt", "chosen", "rejected",
                                             "chosen_highlights", "rejected_highlights")}
    for _ in range(n):
        c = "".join(rng.choice("aaabc") for _ in range(rng.randint(4, 9)))
        r = "".join(rng.choice("abbbc") for _ in range(rng.randint(4, 9)))
        spans = ([[0, len(c)]], [[0, len(r)]]) if rng.random() < fraction else ([], [])
        on = (decoy if decoy == "chosen" else None if decoy == "none"
              else rng.choice(["chosen", "rejected"]))
        c, r = c + (" Z" if on == "chosen" else ""), r + (" Z" if on == "rejected" else "")
        cols["prompt"].append(f"Q{rng.randrange(6)}: ")
        cols["chosen"].append(c)
        cols["rejected"].append(r)
        cols["chosen_highlights"].append(json.dumps(spans[0]))
        cols["rejected_highlights"].append(json.dumps(spans[1]))
    return Dataset.from_dict(cols)


def cmd_tiny_weights(plan: Plan) -> None:
    import torch

    from rlhf_hgt.lm import trl_common
    from rlhf_hgt.lm.reward import LMRewardConfig, train_reward_model

    torch.set_num_threads(1)
    trl_common.quiet_libraries()
    runs = [("clean", 0.0, "none", 0.0), ("decoy", 0.0, "chosen", 0.0)]
    runs += [(f"w{w:g}", w, "chosen", 1.0) for w in (1, 3, 10, 30, 100)]
    runs += [(f"w{w:g}@10%", w, "chosen", 0.1) for w in (10, 100)]
    steps = 2 if plan.smoke else 60
    for seed in plan.seeds if plan.smoke else (0, 1, 2):
        test = tiny_pairs(16 if plan.smoke else 128, 1000 + seed, "random", 0.0)
        for name, w, decoy, fraction in runs:
            key = f"tiny-weights|{name}|steps{steps}|s{seed}"
            if key in load_results(plan):
                continue
            cfg = LMRewardConfig(max_steps=steps, learning_rate=3e-3, progress=False,
                                 highlight_weight=w, seed=seed, eval_fraction=0)
            start = time.perf_counter()
            m = train_reward_model("tiny", tiny_pairs(64, seed, decoy, fraction), test, cfg,
                                   plan.runs / f"tiny-{name}-s{seed}")
            save_result(plan, key, {"accuracy": m["reward_model_accuracy"], "weight": w,
                                    "fraction": fraction, "decoy": decoy,
                                    "train_runtime_s": time.perf_counter() - start,
                                    "command": plan.command})
            print(f"  {key}: accuracy {m['reward_model_accuracy']:.3f}", flush=True)


# ----------------------------------------------------------------------------- report


def _f(v: Any, spec: str = ".3f") -> str:
    return "–" if v is None else format(v, spec)


def _stat(rows: list[dict[str, Any]], name: str) -> str:
    values = [r[name] for r in rows if r.get(name) is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return _f(values[0])
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def grouped(results: dict[str, Any], prefix: str) -> dict[tuple[str, ...], list[dict]]:
    """Results of a phase grouped by every key part but the seed."""
    out: dict[tuple[str, ...], list[dict]] = {}
    for key, value in sorted(results.items()):
        parts = key.split("|")
        if parts[0] == prefix:
            out.setdefault(tuple(parts[1:-1]), []).append(value)
    return out


def report(plan: Plan) -> str:
    res = load_results(plan)
    lines = ["# Language reward model: highlights and response times (issue 13)", "",
             f"Raw results: `{plan.results.relative_to(ROOT)}`; regenerate with "
             f"`python scripts/bench_lm_guidance.py report{' --smoke' if plan.smoke else ''}`.",
             ""]
    decoy = grouped(res, "decoy")
    if decoy:
        lines += ["## Decoy text (held-out pairs, the decoy on a random side)", "",
                  "| condition | model, pairs | seeds | highlight weight | highlighted pairs | "
                  "accuracy | decoy on chosen | decoy on rejected | decoy-free test | decoy "
                  "share of attribution | train s |", "|---" * 11 + "|"]
        for (cond, *rest), rows in decoy.items():
            lines.append(
                f"| {cond} | {' '.join(rest[:2])} | {len(rows)} | "
                f"{_f(rows[0].get('highlight_weight'), 'g')} | "
                f"{rows[0].get('highlighted_pairs')} | **{_stat(rows, 'accuracy')}** | "
                f"{_stat(rows, 'accuracy_decoy_on_chosen')} | "
                f"{_stat(rows, 'accuracy_decoy_on_rejected')} | "
                f"{_stat(rows, 'accuracy_clean_test')} | "
                f"{_stat(rows, 'decoy_attribution_share')} | "
                f"{_f(mean([r.get('train_wall_s') for r in rows]), '.0f')} |")
        lines.append("")
    timed = grouped(res, "time")
    if timed:
        lines += ["## Response-time weighting (drift-diffusion teacher on VADER's score)", "",
                  "| teacher | time weighting | model, pairs | seeds | accuracy vs VADER | vs "
                  "critics | teacher agrees with VADER | timed pairs | confidence mean | "
                  "train s |", "|---|---|---|---|---|---|---|---|---|---|"]
        for (teacher, mode, *rest), rows in timed.items():
            tw = rows[0].get("time_weighting") or {}
            lines.append(
                f"| {teacher} | {mode} | {' '.join(rest[:2])} | {len(rows)} | "
                f"**{_stat(rows, 'accuracy')}** | {_stat(rows, 'accuracy_vs_critics')} | "
                f"{_stat(rows, 'teacher_agreement_with_vader')} | "
                f"{tw.get('timed_pairs', '–')} | {_f(tw.get('confidence_mean'))} | "
                f"{_f(mean([r.get('train_wall_s') for r in rows]), '.0f')} |")
        lines.append("")
    tiny = grouped(res, "tiny-weights")
    if tiny:
        lines += ["## Highlight weight on the tiny model (the provisional default)", "",
                  "| condition | weight | highlighted | steps | seeds | accuracy (decoy random) "
                  "|", "|---|---|---|---|---|---|"]
        order = sorted(tiny.items(), key=lambda kv: (
            kv[1][0]["decoy"] == "chosen", kv[1][0]["fraction"] > 0, -kv[1][0]["fraction"],
            kv[1][0]["weight"]))
        for (cond, steps), rows in order:
            lines.append(f"| {cond} | {_f(rows[0]['weight'], 'g')} | "
                         f"{_f(rows[0]['fraction'], '.0%')} | {steps} | {len(rows)} | "
                         f"{_stat(rows, 'accuracy')} |")
        lines.append("")
    text = "\n".join(lines)
    from rlhf_hgt.feedback.files import write_bytes_atomic

    write_bytes_atomic(plan.summary, text.encode())
    print(text)
    return text


# ----------------------------------------------------------------------------- CLI


def make_plan(args: argparse.Namespace) -> Plan:
    plan = Plan(model=args.model, seeds=args.seeds, n_train=args.n_train, n_test=args.n_test,
                data_seed=args.data_seed, weights=args.weights or [],
                command=shlex.join(["python", "scripts/bench_lm_guidance.py",
                                    *sys.argv[1:]]))
    if args.max_steps:
        plan.max_steps = args.max_steps
    if args.smoke:
        plan.smoke, plan.model = True, "tiny"
        plan.n_train, plan.n_test = min(args.n_train, 16), min(args.n_test, 8)
        plan.max_steps = args.max_steps or 2
        plan.results = ROOT / "benchmarks" / "lm_guidance_results_smoke.json"
        plan.summary = ROOT / "benchmarks" / "lm_guidance_summary_smoke.md"
        plan.runs = ROOT / "runs" / "bench_lm_guidance_smoke"
    if args.results:
        plan.results = Path(args.results).resolve()
        plan.summary = plan.results.with_name(plan.results.stem.replace("results", "summary")
                                              + ".md")
    plan.runs.mkdir(parents=True, exist_ok=True)
    return plan


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_eval"]:
        return run_eval(argv[1], argv[2])
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    for name in ("decoy", "time", "tiny-weights", "report", "all"):
        p = sub.add_parser(name)
        p.add_argument("--model", default="smollm2", help="smollm2 (default), a path or hub id")
        p.add_argument("--smoke", action="store_true",
                       help="tiny model, 16 pairs, 2 steps; separate results file")
        p.add_argument("--n-train", type=int, default=400, help="training pairs (400)")
        p.add_argument("--n-test", type=int, default=200, help="held-out pairs (200)")
        p.add_argument("--data-seed", type=int, default=0,
                       help="seed of the pair sample and split, the same for every run (0)")
        p.add_argument("--seeds", nargs="+", type=int, default=[0],
                       help="training seeds (time: also the teacher's draws)")
        p.add_argument("--max-steps", type=int, default=None, help="cap every training")
        p.add_argument("--weights", nargs="+", type=float, default=None,
                       help="decoy: highlighted runs at these weights too")
        p.add_argument("--results", default=None, help="results JSON (default benchmarks/...)")
    args = parser.parse_args(argv)
    plan = make_plan(args)
    print(f"LM guidance benchmark '{args.what}' on {plan.model} → {plan.results}", flush=True)
    steps = {"decoy": [cmd_decoy], "time": [cmd_time], "tiny-weights": [cmd_tiny_weights],
             "report": [], "all": [cmd_decoy, cmd_time, cmd_tiny_weights]}[args.what]
    from rlhf_hgt.feedback.errors import UserInputError

    try:
        for step in steps:
            step(plan)
    except UserInputError as exc:
        print(f"bench_lm_guidance: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; finished results are kept (run again to resume)", file=sys.stderr)
        return 130
    report(plan)
    if plan.failures:
        print(f"\nFAILED: {', '.join(plan.failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
