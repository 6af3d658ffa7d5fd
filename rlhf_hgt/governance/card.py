"""Model cards: a Hugging Face style README.md beside every saved policy, adapter and reward
model, with a human-guidance section.

    write_cards(run_dir)                      # every model folder of a finished run
    write_cards(run_dir, config=..., metrics={"history": history}, store=store)
                                              # at a checkpoint, before metrics.json exists
    write_card(folder, run_dir)               # one folder

The front matter (YAML) carries ``base_model``, ``library_name``, ``tags`` and ``datasets``
where they are known; the body says who guided the model (annotators, people or synthetic
teachers, the count of each kind of label, reasons, highlights and attention marks), how far
they agreed and matched gold answers, how it was trained (command, revision, config), its
held-out numbers, the oversight acts and its known limits (:func:`known_limits`).

Cheap and torch-free (reads JSON and the store), so a loop can call it at every checkpoint.
Front-matter keys that another tool wrote into an existing README.md (PEFT writes one
beside an adapter) and that the card does not set are kept.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from rlhf_hgt.feedback.files import write_bytes_atomic
from rlhf_hgt.governance import sections as S
from rlhf_hgt.governance.doc import Block, Bullets, Heading, Para, Table, fmt, to_markdown
from rlhf_hgt.governance.run_info import RunInfo, load_run

CARD = "README.md"
#: not walked by :func:`write_cards` at a run's end: report pictures, and the kept round
#: snapshots (each got its card when it was saved, describing the run at that round)
SKIP_DIRS = ("report_files", "rounds")
#: a kept round checkpoint inside a run (lm online's checkpoints/round0003[.1]): its card was
#: written when it was saved (write_checkpoint_cards); at the end only the current one's is
ROUND_DIR = re.compile(r"round-?[0-9]+(\.[0-9]+)?")
HUB_IDS = {"smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}
FEW_LABELS = 50
LOW_AGREEMENT = 0.4
LOW_GOLD = 0.7


# ----------------------------------------------------------------------------- limits


def known_limits(info: RunInfo) -> list[str]:
    """What a reader should not assume about the model, from the run's own record."""
    out: list[str] = []
    if info.kind == "attention":
        out += _attention_limits(info)
    elif info.kind == "lm ppo":
        out.append(f"Trained against `{info.metrics.get('reward') or info.config.get('reward')}`"
                   ": the people behind that reward are in its own card and report, not here.")
    elif info.annotators:
        out += _label_limits(info)
    elif info.file_annotators is not None:
        named = [n for n in info.file_annotators if n != "not named in the file"]
        if not named:
            out.append(f"The pairs came from `{info.data_file}` without annotator names: who "
                       "labelled them is not recorded.")
        elif len(named) == 1:
            out.append(f"Labels came from one annotator named in the file (`{named[0]}`): "
                       "agreement between people was not measured.")
        out.append("The labels came from a file, not a store: when and how long each was "
                   "answered is not recorded.")
        n = sum(info.file_annotators.values())
        if info.kind == "lm reward" and info.metrics.get("reward_model_accuracy") is None:
            out.append("The reward model had no held-out pairs: its accuracy was never "
                       "measured.")
        if n < FEW_LABELS:
            out.append(f"Only {n} labels: numbers from so few are rough.")
    else:
        out.append("No labels are recorded with this run: who guided it is not known.")
    if info.store_note and "shared" in info.store_note:
        out.append("The store may be shared with other runs: its counts cover every answer in "
                   "it, not only the ones this run used (`rlhf-hgt lineage` lists those).")
    git = info.manifest.get("git") or {}
    if not info.manifest:
        out.append("No manifest.json: config, versions and data hashes were not recorded.")
    elif git.get("dirty"):
        out.append(f"Trained from code with uncommitted changes (at revision "
                   f"`{str(git.get('revision'))[:12]}`): the revision alone does not "
                   "reproduce it.")
    elif not git.get("revision"):
        out.append("The code's git revision was not recorded.")
    out += [f"Warning from the run: {w}" for w in info.metrics.get("warnings") or []]
    for e in info.oversight:
        d = e.get("data") or {}
        if d.get("act") in ("stop", "reject", "rollback"):
            what = d.get("to") or d.get("checkpoint")  # a rollback's target, a reject's
            out.append(f"Oversight: `{d.get('act')}`" + (f" ({what})" if what else "")
                       + f" by {d.get('by') or e.get('annotator')} "
                       f"on {S.when(e.get('at'))}: {d.get('reason') or 'no reason given'}.")
    return out


def _label_limits(info: RunInfo) -> list[str]:
    out: list[str] = []
    ann = info.annotators
    people = [n for n, a in ann.items() if not a["synthetic"]]
    synthetic = [n for n, a in ann.items() if a["synthetic"]]
    stats = info.stats or {}
    agreement = stats.get("agreement") or {}
    if not people:
        names = ", ".join(f"`{n}`" for n in synthetic)
        out.append(f"Synthetic teacher only ({names}): no person labelled; the model learned "
                   "the teacher's score, not human judgement.")
    elif len(people) == 1:
        out.append(f"Labels came from one person (`{people[0]}`): nobody checked them and "
                   "agreement between people was not measured.")
    elif agreement.get("method") is None:
        out.append("No query was answered by two annotators: agreement was not measured.")
    value = agreement.get("value")
    if value is not None and value < LOW_AGREEMENT:
        out.append(f"Annotators agreed little ({agreement['method']} {value:.2f}): the labels "
                   "are noisy.")
    gold = stats.get("gold") or {}
    accuracy = (gold.get("overall") or {}).get("accuracy")
    if people and not gold.get("queries"):
        out.append("No gold queries: the answers were never checked against known answers.")
    elif accuracy is not None and accuracy < LOW_GOLD:
        out.append(f"Answers matched gold on only {accuracy:.0%} of the gold queries.")
    if info.kind in ("control", "lm reward", "lm online") and not _uses_dpo(info):
        held_out = _held_out(info)
        if held_out is None and (info.metrics or info.history):
            out.append("The reward model had no held-out pairs: its accuracy was never "
                       "measured.")
        elif held_out is not None and not gold.get("queries"):
            out.append("The reward model was checked only on held-out answers of the same "
                       "annotators, never against gold answers.")
    if info.labels < FEW_LABELS:
        out.append(f"Only {info.labels} labels: numbers from so few are rough.")
    if info.stats and info.stats.get("pending"):
        out.append(f"{info.stats['pending']} queries were still waiting for answers.")
    return out


def _held_out(info: RunInfo) -> float | None:
    """The reward model's held-out accuracy: the run's, or mid-run the latest round's."""
    value = info.metrics.get("reward_model_accuracy")
    if value is None:
        value = next((r[k] for r in reversed(info.history) for k in
                      ("reward_holdout_accuracy", "reward_model_accuracy")
                      if r.get(k) is not None), None)
    return value


def _uses_dpo(info: RunInfo) -> bool:
    return (info.config.get("algo") or info.metrics.get("algo")) == "dpo"


def _attention_limits(info: RunInfo) -> list[str]:
    cfg, m = info.config, info.metrics
    method = m.get("method") or cfg.get("method")
    data = str(m.get("data") or cfg.get("data") or "")
    out: list[str] = []
    if method == "none":
        out.append("No attention guidance: trained on the class labels alone (a baseline).")
    elif method == "random-mask":
        out.append("Random masks of the same area (a control arm), not human attention.")
    elif cfg.get("marks"):
        people = [n for n, v in (info.marks.get("by_annotator") or {}).items()
                  if not v["synthetic"]]
        if not people:
            out.append("The marks came from synthetic markers only, not from people.")
        elif len(people) == 1:
            out.append(f"The marks came from one person (`{people[0]}`).")
    elif cfg.get("synthetic_gaze"):
        out.append("Synthetic gaze maps drawn inside the masks, not recorded gaze.")
    elif data in ("decoy-mnist", "mnist"):
        out.append("The attention masks are computed (the digit's bounding box, Ross et al. "
                   "2017), not drawn by people.")
    else:
        out.append("The masks came with the data file: who drew them is not recorded.")
    fraction = m.get("mask_fraction", cfg.get("mask_fraction"))
    if method != "none" and isinstance(fraction, int | float) and fraction < 1:
        out.append(f"Only {fraction:.0%} of the training images carried a map.")
    if m.get("mask_noise") or cfg.get("mask_noise"):
        noise = m.get("mask_noise") or cfg.get("mask_noise")
        out.append(f"The maps were degraded on purpose (`{noise}`).")
    return out


# ----------------------------------------------------------------------------- front matter


def folder_role(folder: Path, kind: str) -> str:
    """What a model folder holds, from its files."""
    names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    adapter = " (LoRA adapter)" if "adapter_model.safetensors" in names else ""
    if names & {"reward_model.json", "reward_model.safetensors"} or folder.name.startswith(
            "reward"):
        return "reward model" + adapter
    if "dpo_model.json" in names:
        return "policy trained with DPO" + adapter
    if "value_head.safetensors" in names:
        return "policy trained with PPO" + adapter
    if "policy.safetensors" in names:
        return "policy (with its reward model)" if (folder / "reward_model").is_dir() \
            else "policy"
    if folder.name == "adapter":
        return "policy adapter (LoRA)"
    if kind == "attention":
        return "image classifier"
    return "model" + adapter


def _tag(text: Any) -> str:
    return re.sub(r"[^a-z0-9._/-]+", "-", str(text).lower()).strip("-")


def front_matter(info: RunInfo, folder: Path) -> dict[str, Any]:
    cfg, m = info.config, info.metrics
    kind = info.kind
    meta: dict[str, Any] = {}
    base = None
    if kind.startswith("lm"):
        base = m.get("base_model") or cfg.get("model") or m.get("model")
        base = HUB_IDS.get(str(base).lower(), base) if base else None
        if base == "tiny" or (base and (Path(str(base)).exists() or str(base).count("/") != 1)):
            base = None  # built in memory, or a local path: named in the body instead
    if base:
        meta["base_model"] = base
    has_adapter = (folder / "adapter_model.safetensors").exists()
    policy = (folder / "policy.safetensors").exists() or folder.name == "adapter"
    if kind.startswith("lm"):
        meta["library_name"] = "peft" if has_adapter else "transformers"
    else:  # a control policy (or its LoRA adapter, our own format) is an SB3 policy
        meta["library_name"] = "stable-baselines3" if kind == "control" and policy \
            else "pytorch"
    tags = ["rlhf-hgt", "human-feedback"]
    tags += {"control": ["reinforcement-learning", "rlhf", cfg.get("env_id") or m.get("env_id"),
                         cfg.get("algo") or m.get("algo")],
             "lm reward": ["reward-model", "rlhf", "trl"], "lm dpo": ["dpo", "trl"],
             "lm ppo": ["ppo", "rlhf"], "lm online": ["rlhf", "online", cfg.get("algo")],
             "attention": ["human-attention", "saliency-guidance",
                           m.get("method") or cfg.get("method")]}.get(kind, [])
    if has_adapter:
        tags.append("lora")
    if info.annotators and all(a["synthetic"] for a in info.annotators.values()):
        tags.append("synthetic-feedback")
    meta["tags"] = list(dict.fromkeys(_tag(t) for t in tags if t))
    datasets = []
    if kind == "attention" and (m.get("data") or cfg.get("data")):
        datasets.append(Path(str(m.get("data") or cfg.get("data"))).stem)
    elif info.data_file is not None:
        datasets.append(info.data_file.stem)
    if datasets:
        meta["datasets"] = datasets
    return meta


def yaml_front_matter(meta: dict[str, Any]) -> str:
    """YAML written by hand: every scalar as a JSON string (valid YAML), lists as items."""
    lines = ["---"]
    for key, value in meta.items():
        if isinstance(value, list):
            lines.append(f"{key}:")
            lines += [f"- {json.dumps(str(v))}" for v in value]
        else:
            plain = value if isinstance(value, int | float | bool) else str(value)
            lines.append(f"{key}: {json.dumps(plain)}")
    lines.append("---")
    return "\n".join(lines) + "\n"


def _existing_front_matter(path: Path) -> dict[str, Any]:
    """The front matter another tool wrote (PEFT beside an adapter), if it parses."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    if not text.startswith("---\n") or "\n---" not in text[4:]:
        return {}
    try:
        import yaml

        value = yaml.safe_load(text[4:text.index("\n---", 4)])
    except Exception:  # no yaml, or a front matter yaml cannot read: start afresh
        return {}
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if v not in (None, "", [], {})}


# ----------------------------------------------------------------------------- the card


def card_blocks(info: RunInfo, role: str, folder: Path | None = None,
                level: int = 2) -> list[Block]:
    """The card's body (the report embeds it with its headings at ``level`` and below)."""
    from rlhf_hgt import __version__

    where = f"`{folder.relative_to(info.path)}`" if folder is not None and folder != info.path \
        and folder.is_relative_to(info.path) else "this folder"
    blocks: list[Block] = [
        Para(f"**{_upper_first(role)}**: {S.WHAT.get(info.kind, info.kind)}; "
             f"{S.subject(info)}. Files in {where}; the run folder is `{info.path}`."),
        Heading("Human guidance", level),
    ]
    blocks += S.guidance_blocks(info, detail=True)
    blocks.append(Heading("Oversight", level + 1))
    blocks += S.oversight_blocks(info)
    blocks.append(Heading("Held-out metrics", level))
    rows = S.headline_rows(info)
    latest = info.history[-1] if info.history else None
    if rows:
        blocks.append(Table(["metric", "value"], rows))
    elif latest:  # mid-run: the latest round so far
        blocks.append(Table(["metric", "value"], S.scalar_rows(latest),
                            caption=f"the latest of {len(info.history)} rounds so far"))
    else:
        blocks.append(Para("No held-out numbers yet (the run has not finished)."))
    blocks.append(Heading("Training", level))
    blocks += S.training_blocks(info, detail=False)
    blocks.append(Heading("Known limits", level))
    limits = known_limits(info)
    blocks.append(Bullets(limits) if limits else Para("None found in the run's record."))
    blocks.append(Heading("Record", level))
    blocks.append(Para(f"Written by rlhf_hgt {__version__} on "
                       f"{S.when(time.time())}. The labels behind each "
                       f"checkpoint: `rlhf-hgt lineage {info.path}`; the full report with "
                       f"plots: `rlhf-hgt report {info.path}`."))
    return blocks


def _upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def render_card(info: RunInfo, folder: Path, role: str | None = None,
                keep: dict[str, Any] | None = None) -> str:
    role = role or folder_role(folder, info.kind)
    meta = {**(keep or {}), **front_matter(info, folder)}
    title = f"{_upper_first(role)}: {fmt(S.subject(info))}"
    return (yaml_front_matter(meta) + "\n" + f"# {title}\n\n"
            + to_markdown(card_blocks(info, role, folder)))


def write_card(folder: str | Path, run_dir: str | Path | None = None, *, role: str | None = None,
               info: RunInfo | None = None, **overrides: Any) -> Path:
    """Write ``folder/README.md`` for the model saved there; ``run_dir`` (default: the folder
    itself) is the run it belongs to. ``overrides`` (config, metrics, store) go to
    :func:`rlhf_hgt.governance.run_info.load_run`. Returns the card's path."""
    folder = Path(folder)
    if info is None:
        info = load_run(run_dir if run_dir is not None else folder, need_metrics=False,
                        **overrides)
    path = folder / CARD
    text = render_card(info, folder, role, keep=_existing_front_matter(path))
    return write_bytes_atomic(path, text.encode("utf-8"))


def model_folders(run_dir: str | Path, depth: int = 3,
                  current: set[str] | None = None) -> list[Path]:
    """The run folder and its sub-folders (to ``depth``) that hold saved weights directly.
    Of the kept round checkpoints (:data:`ROUND_DIR`) only the run's current one is walked
    (named in ``current``; without a name, the newest): the others' cards were written when
    they were saved and stay as they were."""
    root = Path(run_dir)
    found: list[Path] = []

    def walk(folder: Path, level: int) -> None:
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            return
        if any(p.suffix == ".safetensors" and p.is_file() for p in entries):
            found.append(folder)
        if level >= depth:
            return
        dirs = [p for p in entries if p.is_dir() and not p.name.startswith(".")
                and p.name not in SKIP_DIRS]
        rounds = [p for p in dirs if ROUND_DIR.fullmatch(p.name)]
        keep = [p for p in rounds if p.name in (current or set())] or \
            sorted(rounds, key=lambda p: p.stat().st_mtime)[-1:]
        for p in dirs:
            if p not in rounds or p in keep:
                walk(p, level + 1)

    walk(root, 0)
    return found


def write_cards(run_dir: str | Path, **overrides: Any) -> list[Path]:
    """A card beside every saved model of the run (see :func:`model_folders`); the run is
    read once. What a loop calls at the end of a run and after each checkpoint."""
    info = load_run(run_dir, need_metrics=False, **overrides)
    current = {Path(str(name)).name for name in (info.metrics.get("policy_checkpoint"),
                                                 info.state.get("checkpoint")) if name}
    return [write_card(folder, run_dir, info=info)
            for folder in model_folders(run_dir, current=current)]


def write_checkpoint_cards(run_dir: str | Path, checkpoint: str | Path,
                           **overrides: Any) -> list[Path]:
    """Cards for the models of one checkpoint a loop has just saved (``checkpoint``, a folder
    inside ``run_dir``), from what the run knows so far: a loop passes ``metrics`` (its
    history up to now), ``config`` and ``store`` (no metrics.json exists yet)."""
    info = load_run(run_dir, need_metrics=False, **overrides)
    return [write_card(folder, run_dir, info=info) for folder in model_folders(checkpoint)]
