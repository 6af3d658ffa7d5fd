"""The report side of scripts/bench_lm.py: the Markdown summary of a results file, with
each target beside its number, and the PNG of the PPO curve. ``plan`` is bench_lm's Plan."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from rlhf_hgt.feedback.files import write_bytes_atomic

ANCHORS = {"trl_dpo_acc_1epoch_800": 0.765, "base_vader": 0.19, "trl112_tokens_per_s": 13.0,
           "trl112_peak_gb": 5.5, "trl112_sampling_tokens_per_s": 64.0}
PEER_INSTALL = "pip install --no-deps --target .peers/trl112 trl==1.12.0"
TARGETS = {"reward_acc_400": 0.85, "dpo_acc": 0.80, "dpo_speed_ratio": 0.95,
           "ppo_speed_ratio": 1.5, "ppo_memory_ratio": 0.5}


def plot_curve(plan: Any, res: dict[str, Any]) -> Path | None:
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


def write_report(plan: Any, res: dict[str, Any], root: Path) -> str:
    """The Markdown summary beside the results file (also printed)."""
    where = (plan.results.relative_to(root) if plan.results.is_relative_to(root)
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
    sides = sorted({k.split("|")[1] for k in res if k.startswith("dpo|")}, key=len)
    for side in sides:
        for g, runs in sorted(_group(res, "dpo", side).items()):
            model, n, _ = g.split("|")
            acc = _mean([r.get("implicit_reward_accuracy") for r in runs])
            mark = _mark(acc >= TARGETS["dpo_acc"]) if side == "ours" and acc else ""
            lines.append(
                f"| {model} | {n[1:]} | {'plain TRL' if side == 'trl' else side} | "
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
    write_bytes_atomic(path, (text + "\n").encode())
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
