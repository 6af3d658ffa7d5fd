"""`rlhf-hgt report RUN_DIR` and the model cards: run folders built by hand (no training), the
report written and opened in a real headless Chromium (Debian's `chromium`, driven by
playwright), the card's front matter parsed, the known-limits logic checked case by case."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

from rlhf_hgt.cli import main
from rlhf_hgt.feedback.marks import record_mark
from rlhf_hgt.feedback.records import TextPair
from rlhf_hgt.feedback.store import PreferenceStore
from rlhf_hgt.governance.card import known_limits, write_card, write_cards
from rlhf_hgt.governance.run_info import RunInfo

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
T0 = 1_760_000_000.0  # a fixed clock for stored times


# ----------------------------------------------------------------------------- fixtures


def _manifest(config: dict, data: dict | None = None, checkpoints: dict | None = None) -> dict:
    return {"written_at": "2026-01-02T03:04:05Z", "command": ["rlhf-hgt", "test"],
            "config": config, "seed": config.get("seed"), "python": "3.11",
            "platform": "test", "threads": "1", "packages": {"rlhf-hgt": "0.1.0"},
            "git": {"revision": "0123456789abcdef0123456789abcdef01234567", "dirty": False},
            "data": data or {}, "checkpoints": checkpoints or {}}


def _segment(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"obs": rng.normal(size=(5, 4)).astype(np.float32),
            "actions": rng.integers(0, 2, size=5), "true_rewards": np.ones(5, np.float32)}


def build_control_run(out: Path) -> Path:
    """A control run folder as `rlhf-hgt control` leaves it, with two people labelling:
    alice and bob share three segment pairs and a gold text query; a pause act is stored."""
    (out / "checkpoints" / "reward_model").mkdir(parents=True)
    store = PreferenceStore(out / "feedback.db")
    seg = [store.add_segment_query(_segment(2 * i), _segment(2 * i + 1), env_id="CartPole-v1",
                                   left_source="ppo:0:round0", right_source="ppo:0:round0",
                                   round=i // 3) for i in range(6)]
    gold = store.add_text_queries([TextPair("Which is kinder?", "Thank you.", "Go away.",
                                            gold="left")])[0]
    answers = {"alice": ["left", "right", "left", "tie", "left", "right"],
               "bob": ["left", "right", "right"]}
    for name, values in answers.items():
        for i, (qid, value) in enumerate(zip(seg, values, strict=False)):
            at = T0 + 100 * i + (10 if name == "bob" else 0)
            aid = store.record_answer(qid, value, name, shown_at=at,
                                      answered_at=at + (2.0 + i if name == "alice" else 1.0 + i),
                                      per_query=2)
            if name == "alice" and i == 0:
                store.record_reasons(aid, {"features": [0, 2]}, annotator=name)
        store.record_answer(gold, "left" if name == "alice" else "right", name,
                            shown_at=T0 + 900, answered_at=T0 + 904, per_query=2)
    store.log_event("oversight", annotator="carol",
                    data={"act": "pause", "reason": "checking the clips by hand", "by": "carol"})
    store.flush()
    store.close()
    history = [{"round": r, "labels": 3 * (r + 1), "timesteps": 512 * (r + 1),
                "true_return": 20.0 + 30 * r, "seconds": 1.5,
                "reward_train_accuracy": 0.9, "reward_holdout_accuracy": 0.5 + 0.15 * r}
               for r in range(3)]
    metrics = {"env_id": "CartPole-v1", "algo": "ppo", "teacher": "human", "seed": 0,
               "true_return_mean": 81.5, "true_return_std": 4.0, "eval_episodes": 10,
               "labels": 9, "timesteps": 1536, "reward_model_accuracy": 0.8,
               "random_return_mean": 20.0, "start_return_mean": 22.0, "history": history}
    config = {"env_id": "CartPole-v1", "out": str(out), "teacher": "human", "labels": 9,
              "algo": "ppo", "seed": 0, "store": None}
    (out / "metrics.json").write_text(json.dumps(metrics))
    (out / "manifest.json").write_text(json.dumps(_manifest(
        config, {"preference_store": {"path": str(out / "feedback.db"), "sha256": "0" * 64}},
        {"checkpoints/policy.safetensors": "1" * 64})))
    _weights(out / "checkpoints" / "policy.safetensors")
    _weights(out / "checkpoints" / "reward_model" / "reward_model.safetensors")
    return out


def build_attention_run(out: Path) -> Path:
    """An attention run trained with marks one person gave at the terminal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True)
    marks = out.parent / f"{out.name}_marks.db"
    for i in range(4):
        record_mark(marks, "decoy-mnist", i, 4, [(1, 1), (1, 2)], "dana",
                    shown_at=T0 + 10 * i, answered_at=T0 + 10 * i + 3)
    acc = [0.6, 0.75, 0.82, 0.88]
    metrics = {"method": "rrr", "arch": "mlp", "data": "decoy-mnist", "seed": 0,
               "mask_fraction": 1.0, "masked_train_images": 4, "test_accuracy": 0.88,
               "train_accuracy": 0.93, "saliency_mass_in_mask": 0.91,
               "decoy_saliency_share": 0.01, "accuracy_per_epoch": acc,
               "curve": [{"epoch": i + 1, "test_accuracy": a, "train_loss": 1.0 / (i + 1)}
                         for i, a in enumerate(acc)]}
    config = {"command": "attention train", "data": "decoy-mnist", "out": str(out),
              "method": "rrr", "seed": 0, "arch": "mlp", "marks": str(marks),
              "mask_fraction": 1.0}
    (out / "metrics.json").write_text(json.dumps(metrics))
    (out / "manifest.json").write_text(json.dumps(_manifest(
        config, {"marks": {"path": str(marks), "sha256": "2" * 64}})))
    fig, ax = plt.subplots(1, 3, figsize=(4, 1.5))
    for k, a in enumerate(ax):
        a.imshow(np.random.default_rng(k).random((8, 8)))
    fig.savefig(out / "saliency.png")
    plt.close(fig)
    _weights(out / "model.safetensors")
    return out


def _weights(path: Path) -> None:
    from safetensors.numpy import save_file

    save_file({"w": np.zeros((2, 2), np.float32)}, str(path))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {"control": build_control_run(root / "control"),
            "attention": build_attention_run(root / "attention")}


@pytest.fixture(scope="module")
def reports(runs) -> dict[str, Path]:
    for run in runs.values():
        assert main(["report", str(run)]) == 0
    return runs


# ----------------------------------------------------------------------------- the report


@pytest.mark.parametrize("kind", ["control", "attention"])
def test_report_writes_markdown_and_a_self_contained_page(reports, kind):
    run = reports[kind]
    md = (run / "report.md").read_text()
    page = (run / "report.html").read_text()
    for name in re.findall(r"\]\((report_files/[^)]+)\)", md):
        assert (run / name).is_file(), name  # every picture the Markdown shows is there
    # nothing fetched: no script, no outside stylesheet or font, images as data URIs only
    assert "<script" not in page.lower()
    refs = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page)
    assert refs and all(r.startswith(("data:", "#")) for r in refs), refs
    assert "@import" not in page and "url(" not in page
    if kind == "control":
        for text in ("alice", "bob", "Cohen's kappa", "Gold queries", "checking the clips by "
                     "hand", "carol", "pause", "answers with feature marks", "Known limits"):
            assert text in md, text
        assert md.count("report_files/") >= 4  # curve, accuracy, labels, response times
    else:
        assert "dana" in md and "report_files/saliency.png" in md
        assert "The marks came from one person (`dana`)" in md


def build_lm_run(out: Path, kind: str) -> Path:
    """A language-model run folder as `rlhf-hgt lm reward|ppo|online` leaves it."""
    out.mkdir(parents=True)
    config: dict = {"out": str(out), "model": "smollm2"}
    if kind == "lm reward":
        pairs = out.parent / f"{out.name}_pairs.jsonl"
        pairs.write_text("".join(json.dumps({"prompt": "p", "chosen": f"good {i}", "rejected":
                                             "bad", "annotator": ["ann", "ben"][i % 2]}) + "\n"
                                 for i in range(6)))
        metrics = {"command": "lm reward", "model": "smollm2", "pairs": 6,
                   "reward_model_accuracy": 0.75, "eval_pairs": 2, "train_loss": 0.6}
        config |= {"command": "lm reward", "data": str(pairs)}
        _weights(out / "adapter_model.safetensors")
    elif kind == "lm ppo":
        metrics = {"steps": 3, "score_first": 1.0, "score_last": 2.0, "reward": "length",
                   "final": {"kl_k1": 0.1}, "curve": [{"step": float(i), "score": 1.0 + i / 2,
                                                       "kl_k1": 0.05 * i} for i in range(1, 4)]}
        (out / "checkpoints").mkdir()
        _weights(out / "checkpoints" / "adapter_model.safetensors")
        _weights(out / "checkpoints" / "value_head.safetensors")
    else:
        store = PreferenceStore(out / "feedback.db")
        ids = store.add_text_queries([TextPair(f"p{i}", "a long answer", "short")
                                      for i in range(4)])
        store.record_answers([(q, "left") for q in ids], "teacher:oracle(length)",
                             synthetic=True)
        store.close()
        metrics = {"format": "rlhf_hgt.lm_online/1", "model": "smollm2", "labels": 4,
                   "history": [{"round": r, "labels": 2 * (r + 1), "sample_score_mean": 2.0 + r,
                                "eval_score_mean": 2.5 + r, "reward_model_accuracy": 0.5 + r / 4}
                               for r in range(2)]}
        config |= {"command": "lm online", "teacher": "length", "teacher_model": "oracle"}
        (out / "checkpoints" / "round0001").mkdir(parents=True)
        _weights(out / "checkpoints" / "round0001" / "adapter_model.safetensors")
    (out / "metrics.json").write_text(json.dumps(metrics))
    (out / "manifest.json").write_text(json.dumps(_manifest(config)))
    return out


@pytest.mark.parametrize("kind,figures,names", [
    ("lm reward", 1, ["`ann`", "`ben`", "held-out pairwise accuracy"]),
    ("lm ppo", 1, ["PPO: score", "score, last updates", "final KL to the reference"]),
    ("lm online", 3, ["Online loop", "teacher:oracle(length)", "Synthetic teacher only"]),
])
def test_report_and_cards_for_language_model_runs(tmp_path, kind, figures, names):
    run = build_lm_run(tmp_path / "run", kind)
    assert main(["report", str(run)]) == 0
    md = (run / "report.md").read_text()
    assert len(re.findall(r"\]\(report_files/", md)) == figures
    for name in names:
        assert name in md, name
    cards = write_cards(run)
    assert cards and all(p.name == "README.md" for p in cards)
    meta = _front_matter(cards[0].read_text())
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["library_name"] == "peft" and "lora" in meta["tags"]


def test_lineage_summary_is_used_when_the_module_exists(runs, monkeypatch, tmp_path):
    run = shutil.copytree(runs["control"], tmp_path / "run")
    fake = types.ModuleType("rlhf_hgt.governance.lineage")
    fake.summary = lambda run_dir: {"answers": 10, "annotators": {"alice": 6, "bob": 4},
                                    "checkpoints": [{"file": "policy.safetensors",
                                                     "sha256": "ab" * 32, "answers": 10}]}
    monkeypatch.setitem(sys.modules, "rlhf_hgt.governance.lineage", fake)
    assert main(["report", str(run)]) == 0
    md = (run / "report.md").read_text()
    section = md[md.index("## Lineage"):md.index("## Record")]
    assert "annotators.alice" in section and "policy.safetensors" in section


def test_open_hands_the_page_to_the_browser(runs, monkeypatch, tmp_path, capsys):
    run = shutil.copytree(runs["attention"], tmp_path / "run")
    opened = []
    monkeypatch.setattr("webbrowser.open", lambda url: opened.append(url) or True)
    assert main(["report", str(run), "--open"]) == 0
    assert opened == [(run / "report.html").resolve().as_uri()]
    assert "report.html" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["missing", "file", "no-metrics", "bad-json"])
def test_bad_input_exits_2_naming_the_path(tmp_path, capsys, case):
    target = tmp_path / "run"
    if case == "file":
        target.write_text("x")
    elif case in ("no-metrics", "bad-json"):
        target.mkdir()
        if case == "bad-json":
            (target / "metrics.json").write_text("{not json")
    assert main(["report", str(target)]) == 2
    err = capsys.readouterr().err
    assert str(target) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (target.is_dir() and (target / "report.html").exists())


def test_a_store_that_cannot_be_read_is_said_on_stderr(runs, tmp_path, capsys):
    """A team store refusing the login (here: a store file that is no store) still gives a
    report, but the command says so: it printed only 'wrote ...' and exited 0. Here the
    store is one a newer rlhf_hgt wrote: it cannot be read either."""
    run = shutil.copytree(runs["control"], tmp_path / "run")
    with PreferenceStore(run / "feedback.db") as store:
        store.set_setting("schema_version", "99")
    assert main(["report", str(run)]) == 0
    err = capsys.readouterr().err
    assert err.startswith("rlhf-hgt: warning: the store could not be read")
    assert "leaves out the run's labels and lineage" in err and "Traceback" not in err
    shutil.copy(runs["control"] / "feedback.db", run / "feedback.db")
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().err == ""


def test_the_report_command_imports_no_torch(runs, tmp_path):
    run = shutil.copytree(runs["control"], tmp_path / "run")
    code = (f"import sys\nfrom rlhf_hgt.cli import main\nassert main(['report', {str(run)!r}]) "
            "== 0\nheavy = [m for m in ('torch', 'transformers', 'trl', 'peft', "
            "'stable_baselines3') if m in sys.modules]\nassert not heavy, heavy\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]


# ----------------------------------------------------------------------------- the browser


def _load_in_chromium(page_file: Path) -> tuple[list[str], list, bytes]:
    """Open a report page in Debian's chromium: (problems seen, images' [complete, width,
    height], a full-page screenshot)."""
    from playwright import sync_api  # the dev extra: a missing browser fails, never skips

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: bash scripts/test.sh installs Debian's chromium")
    problems: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                    if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"failed: {r.url[:80]}"))
            page.on("request", lambda r: problems.append(f"outside request: {r.url[:80]}")
                    if not r.url.startswith(("file:", "data:")) else None)
            page.goto(page_file.as_uri(), wait_until="load")
            sizes = page.evaluate("Array.from(document.images).map(i => "
                                  "[i.complete, i.naturalWidth, i.naturalHeight])")
            shot = page.screenshot(full_page=True)
        finally:
            browser.close()
    return problems, sizes, shot


def _check_page(page_file: Path, min_images: int, tmp_path: Path) -> None:
    """No console error, no failed or outside request; the screenshot shows something: not
    blank, every plot image decoded with its size."""
    from PIL import Image

    problems, sizes, shot = _load_in_chromium(page_file)
    assert not problems, problems
    assert len(sizes) >= min_images, sizes
    assert all(done and w > 0 and h > 0 for done, w, h in sizes), sizes
    (tmp_path / "shot.png").write_bytes(shot)
    pixels = np.asarray(Image.open(io.BytesIO(shot)).convert("L"), dtype=np.float32)
    assert pixels.shape[0] > 900 and pixels.shape[1] >= 1200  # the full page, past one screen
    assert pixels.std() > 10  # not blank
    assert (pixels < 128).mean() > 0.005  # some dark text and lines on the white page


@pytest.mark.parametrize("kind", ["control", "attention"])
def test_report_page_in_headless_chromium(reports, kind, tmp_path):
    _check_page(reports[kind] / "report.html", 4 if kind == "control" else 2, tmp_path)


@pytest.mark.slow
def test_the_demo_writes_a_report_that_opens_in_headless_chromium(tmp_path):
    """The README's main job (scripts/demo.py, small budget): its report loads cleanly."""
    out = tmp_path / "demo"
    done = subprocess.run([sys.executable, "scripts/demo.py", "--labels", "20", "--timesteps",
                           "4096", "--out", str(out)], capture_output=True, text=True,
                          timeout=600, cwd=Path(__file__).parent.parent,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "report:" in done.stdout and (out / "report.html").is_file()
    _check_page(out / "report.html", 3, tmp_path)


# ----------------------------------------------------------------------------- cards


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    block = text[4:text.index("\n---\n", 4)]
    try:
        import yaml
    except ImportError:  # parse the simple form the card writes: key: "v" and - "item"
        out: dict = {}
        key = None
        for line in block.splitlines():
            if line.startswith("- "):
                out.setdefault(key, []).append(json.loads(line[2:]))
            else:
                key, _, value = line.partition(":")
                if value.strip():
                    out[key] = json.loads(value.strip())
        return out
    return yaml.safe_load(block)


def test_cards_beside_every_saved_model_name_the_people(runs, tmp_path):
    run = shutil.copytree(runs["control"], tmp_path / "run")
    cards = write_cards(run)
    assert sorted(p.parent.relative_to(run).as_posix() for p in cards) == \
        ["checkpoints", "checkpoints/reward_model"]
    text = (run / "checkpoints" / "README.md").read_text()
    meta = _front_matter(text)
    assert meta["library_name"] == "stable-baselines3"
    assert {"rlhf-hgt", "human-feedback", "cartpole-v1"} <= set(meta["tags"])
    assert "synthetic-feedback" not in meta["tags"]
    for text_part in ("## Human guidance", "`alice`", "`bob`", "person", "Cohen's kappa",
                      "## Known limits", "## Held-out metrics", "0.8", "pause",
                      "answers with feature marks"):
        assert text_part in text, text_part
    reward_card = (run / "checkpoints" / "reward_model" / "README.md").read_text()
    assert reward_card.startswith("---\n") and "Reward model" in reward_card


def test_a_card_keeps_other_tools_front_matter_and_works_mid_run(tmp_path):
    """At a checkpoint there is no metrics.json yet: the loop passes what it has. PEFT's
    README.md beside an adapter keeps the keys the card does not set."""
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    _weights(run / "adapter" / "adapter_model.safetensors")
    (run / "adapter" / "README.md").write_text("---\nlibrary_name: peft\npipeline_tag: "
                                               "text-generation\nbase_model: ''\n---\n# x\n")
    history = [{"round": 0, "labels": 4, "timesteps": 64, "true_return": 9.0,
                "reward_holdout_accuracy": 0.75}]
    path = write_card(run / "adapter", run, config={"env_id": "CartPole-v1", "algo": "ppo"},
                      metrics={"history": history})
    meta = _front_matter(path.read_text())
    assert meta["pipeline_tag"] == "text-generation" and "base_model" not in meta
    assert meta["library_name"] == "stable-baselines3"
    text = path.read_text()
    assert "No labels are recorded with this run" in text
    assert "the latest of 1 rounds so far" in text and "0.75" in text


# ----------------------------------------------------------------------------- limits


def _info(kind: str = "control", people: dict[str, bool] | None = None,
          agreement: tuple[str | None, float | None] = (None, None), gold: int = 0,
          gold_accuracy: float | None = None, labels: int = 500, **extra) -> RunInfo:
    """A RunInfo as load_run would give it, with only what known_limits reads."""
    annotators = {n: {"synthetic": s, "answers": 1} for n, s in (people or {}).items()}
    stats = None if people is None else {
        "annotators": annotators, "answers": {"total": labels}, "pending": 0,
        "agreement": {"method": agreement[0], "value": agreement[1]},
        "gold": {"queries": gold, "overall": {"accuracy": gold_accuracy}}, "marks": {}}
    manifest = {"git": {"revision": "abc", "dirty": False}, "config": {}}
    return RunInfo(path=Path("run"), kind=kind, metrics=extra.pop("metrics", {}),
                   manifest=extra.pop("manifest", manifest), state={},
                   config=extra.pop("config", {}), stats=stats, **extra)


def _has(limits: list[str], text: str) -> bool:
    return any(text in line for line in limits)


def test_known_limits_from_the_labels():
    synthetic = known_limits(_info(people={"teacher:oracle": True},
                                   metrics={"reward_model_accuracy": 0.9}))
    assert _has(synthetic, "Synthetic teacher only")
    assert not _has(synthetic, "No gold queries")  # a teacher needs no gold check
    assert _has(synthetic, "never against gold answers")

    one = known_limits(_info(people={"alice": False}, metrics={"reward_model_accuracy": 0.8}))
    assert _has(one, "one person (`alice`)") and _has(one, "No gold queries")
    assert _has(one, "never against gold answers")

    apart = known_limits(_info(people={"a": False, "b": False}))
    assert _has(apart, "agreement was not measured")

    noisy = known_limits(_info(people={"a": False, "b": False},
                               agreement=("cohen_kappa", 0.1), gold=5, gold_accuracy=0.5))
    assert _has(noisy, "agreed little (cohen_kappa 0.10)")
    assert _has(noisy, "matched gold on only 50%")

    unmeasured = known_limits(_info(people={"a": False, "b": False},
                                    agreement=("cohen_kappa", 0.8), metrics={"labels": 3}))
    assert _has(unmeasured, "no held-out pairs")

    good = known_limits(_info(people={"a": False, "b": False}, agreement=("cohen_kappa", 0.8),
                              gold=20, gold_accuracy=0.95,
                              metrics={"reward_model_accuracy": 0.85}))
    assert good == []

    mid_run = known_limits(_info(people={"a": False, "b": False},
                                 agreement=("cohen_kappa", 0.8), gold=20, gold_accuracy=0.95,
                                 metrics={"history": [{"labels": 4,
                                                       "reward_holdout_accuracy": 0.7}]}))
    assert mid_run == []  # the latest round's held-out accuracy counts before metrics.json

    few = known_limits(_info(people={"a": False, "b": False}, agreement=("cohen_kappa", 0.8),
                             gold=20, gold_accuracy=0.95, labels=12))
    assert _has(few, "Only 12 labels")


def test_known_limits_from_the_record():
    assert _has(known_limits(_info()), "No labels are recorded")
    dirty = known_limits(_info(manifest={"git": {"revision": "abcdef0123456", "dirty": True}}))
    assert _has(dirty, "uncommitted changes")
    assert _has(known_limits(_info(manifest={})), "No manifest.json")
    stopped = known_limits(_info(oversight=[{"at": T0, "annotator": "eve", "data": {
        "act": "stop", "reason": "reward hacking seen", "by": "eve"}}]))
    assert _has(stopped, "`stop` by eve") and _has(stopped, "reward hacking seen")
    reject = {"at": T0, "annotator": "bob", "data": {
        "act": "reject", "reason": "unsafe", "by": "bob", "checkpoint": "round-002"}}
    assert _has(known_limits(_info(oversight=[reject])), "`reject` (round-002) by bob")
    from rlhf_hgt.governance.sections import oversight_blocks
    (table,) = oversight_blocks(_info(oversight=[reject]))  # the rejected one is named
    assert table.rows[0][-1] == "round-002" and table.header[-1] == "checkpoint"
    shared = known_limits(_info(people={"a": True}, store_note="the store x lies outside the "
                                "run folder and may be shared with other runs"))
    assert _has(shared, "may be shared")
    warned = known_limits(_info(metrics={"warnings": ["predicts one class"]}))
    assert _has(warned, "predicts one class")


def test_known_limits_of_attention_and_file_runs():
    def att(**cfg: object) -> list[str]:
        return known_limits(_info("attention", config={"data": "decoy-mnist", **cfg}))

    assert _has(att(method="rrr"), "computed")
    assert _has(att(method="random-mask"), "control arm")
    assert _has(att(method="none"), "No attention guidance")
    assert _has(att(method="rrr", data="mine.npz"), "who drew them is not recorded")
    assert _has(att(method="rrr", mask_fraction=0.25), "Only 25% of the training images")
    unnamed = known_limits(_info("lm reward", file_annotators={"not named in the file": 40},
                                 data_file=Path("pairs.jsonl")))
    assert _has(unnamed, "without annotator names") and _has(unnamed, "Only 40 labels")
    named = known_limits(_info("lm reward", file_annotators={"ann": 400},
                               data_file=Path("pairs.jsonl")))
    assert _has(named, "one annotator named in the file (`ann`)")


def test_report_reads_an_unfinished_store_without_changing_it(runs, tmp_path):
    """The report only reads: the store file's bytes stay as they were."""
    run = shutil.copytree(runs["control"], tmp_path / "run")
    before = (run / "feedback.db").read_bytes()
    started = time.time()
    assert main(["report", str(run)]) == 0
    assert (run / "feedback.db").read_bytes() == before
    assert time.time() - started < 60


@pytest.mark.slow
def test_every_round_checkpoint_of_a_control_run_gets_its_own_card(tmp_path):
    from rlhf_hgt.control.loop import ControlConfig, run_control

    out = tmp_path / "run"
    metrics = run_control(ControlConfig(
        env_id="CartPole-v1", out=str(out), teacher="oracle", labels=12, timesteps=3 * 1024,
        rounds=3, segment_length=10, eval_episodes=3, agent={"n_envs": 2}))
    for row in metrics["history"]:
        folder = out / "rounds" / f"round-{row['round']:03d}" / "checkpoints"
        for model in (folder, folder / "reward_model"):
            card = (model / "README.md").read_text()
            assert _front_matter(card)["library_name"] in ("stable-baselines3", "pytorch")
            assert "## Human guidance" in card and "## Known limits" in card
        # the card says what the run had at that round, not at its end
        labels = re.search(r"\| labels used \| (\d+) \|", (folder / "README.md").read_text())
        assert labels and int(labels.group(1)) == row["labels"]
    final = (out / "checkpoints" / "README.md").read_text()
    assert f"| labels used | {metrics['labels']} |" in final
