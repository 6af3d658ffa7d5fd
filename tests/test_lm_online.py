"""The online preference loop (rlhf_hgt.lm.online) on the tiny in-memory model: rounds, the
store's queries and answers, resume, DPO, people answering from elsewhere, and the CLI."""

from __future__ import annotations

import io
import json
import os
import sys
import threading
import time
from pathlib import Path

import pexpect
import pytest
import torch

from rlhf_hgt.cli import main as lm_main
from rlhf_hgt.feedback.errors import UserInputError
from rlhf_hgt.feedback.store import PreferenceStore
from rlhf_hgt.lm.dpo import LMDPOConfig
from rlhf_hgt.lm.online import OnlineConfig, round_prompts, run_online
from rlhf_hgt.lm.ppo import LMPPOConfig
from rlhf_hgt.lm.reward import LMRewardConfig

torch.set_num_threads(1)
PROMPTS = ["hello there", "the cat sat", "abc", "zz top", "once upon a time", "why?"]
SMALL = ["--model", "tiny", "--prompts-per-round", "4", "--teacher", "length",
         "--ppo-steps", "1", "--batch-size", "4", "--mini-batch-size", "4", "--ppo-epochs",
         "1", "--max-new-tokens", "8", "--rm-max-steps", "2", "--dpo-max-steps", "1",
         "--eval-prompts", "2", "--quiet"]


def small(tmp_path: Path, **kw) -> OnlineConfig:
    base = dict(out=str(tmp_path / "run"), prompts=PROMPTS, model="tiny", rounds=2,
                prompts_per_round=4, teacher="length", eval_prompts=2,
                ppo=LMPPOConfig(steps=1, batch_size=4, mini_batch_size=4, num_ppo_epochs=1,
                                response_length=8),
                reward=LMRewardConfig(max_steps=2, progress=False),
                dpo=LMDPOConfig(max_steps=1, learning_rate=1e-2, warmup_ratio=0,
                                progress=False))
    base.update(kw)
    return OnlineConfig(**base)


def stored(db: Path) -> tuple[list, list]:
    with PreferenceStore(db, create=False) as st:
        return list(st.queries(kind="text")), st.answers(kind="text")


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    e.update(OMP_NUM_THREADS="1", TERM="xterm-256color")
    return e


# ----------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("kw, hint", [
    ({"prompts": None}, "exactly one source of prompts"),
    ({"prompt_store": "x.db"}, "not both"),
    ({"prompts": []}, "the list is empty"),
    ({"prompts": ["ok", "  "]}, "prompt number 2 is empty"),
    ({"teacher": "sentiment"}, "teacher must be one of vader, length, human, external"),
    ({"teacher_model": "wise"}, "unknown teacher 'wise'"),
    ({"algo": "grpo"}, "algo must be ppo or dpo"),
    ({"rounds": 0}, "rounds must be at least 1"),
    ({"monitor": "bleu"}, "monitor must be vader or length"),
    ({"ppo": {"mini_batch_size": 3, "batch_size": 4}}, "must divide batch_size"),
])
def test_bad_settings_say_how_to_fix(tmp_path, kw, hint):
    with pytest.raises(UserInputError, match=hint):
        small(tmp_path, **kw)


def test_length_score_counts_words_for_teacher_monitor_and_ppo(tmp_path):
    """One definition of the built-in length (rlhf_hgt.lm.scores): the words of the response,
    for the online loop's teacher and monitor as for `lm ppo --reward length`."""
    from rlhf_hgt.lm.online import _Loop
    from rlhf_hgt.lm.scores import BUILTIN_SCORES, make_score

    text = "  two\twords,\n  "
    assert BUILTIN_SCORES == ("vader", "length")
    assert make_score("length")("any prompt", text) == 2.0
    assert make_score("length")("p", "") == 0.0
    loop = _Loop(small(tmp_path, monitor="length"), lambda event, info: None, None)
    try:
        assert loop.teacher_fn("p", text) == loop.monitor_fn("p", text) == 2.0
    finally:
        loop.close()
    with pytest.raises(ValueError, match="use one of vader, length"):
        make_score("characters")


def test_round_prompts_are_seeded_slices_without_repeats():
    rounds = [round_prompts(PROMPTS, 4, r, seed=3) for r in range(3)]
    assert rounds == [round_prompts(PROMPTS, 4, r, seed=3) for r in range(3)]
    assert all(len(r) == 4 == len(set(r)) for r in rounds)
    assert set(rounds[0] + rounds[1]) == set(PROMPTS)  # the shuffle is walked through
    assert round_prompts(PROMPTS, 50, 0, seed=3) == round_prompts(PROMPTS, 6, 0, seed=3)
    assert sorted(round_prompts(PROMPTS, 50, 0, seed=3)) == sorted(PROMPTS)
    assert round_prompts(PROMPTS, 4, 0, seed=4) != rounds[0]


# ----------------------------------------------------------------------------- the loop


def test_ppo_loop_two_rounds_with_resume(tmp_path):
    out = tmp_path / "run"
    # round 0 from the command line, then rounds=2 resumes: round 0 is not run again
    assert lm_main(["lm", "online", "--prompt", PROMPTS[0], *sum((["--prompt", p]
                    for p in PROMPTS[1:]), []), "--out", str(out), "--rounds", "1",
                    *SMALL]) == 0
    state0 = json.loads((out / "state.json").read_text())
    assert state0["round"] == 0
    queries0, _ = stored(out / "feedback.db")
    events: list[tuple[str, dict]] = []
    m = run_online(small(tmp_path), progress=lambda e, i: events.append((e, i)))

    assert ("resume", {"round": 1, "rounds": 2}) in events
    assert [h["round"] for h in m["history"]] == [0, 1]
    assert m["history"][0] == state0["history"][0]  # round 0 kept as it was
    # round 1 was asked by the policy restored from round 0's checkpoint, bit for bit
    assert m["history"][1]["policy"] == f"run:round1:{state0['policy_hash']}"
    queries, answers = stored(out / "feedback.db")
    assert queries[:len(queries0)] == queries0
    for r, row in enumerate(m["history"]):
        mine = [q for q in queries if q.round == r]
        assert row["queries"] == len(mine) >= 1
        assert row["queries"] + row["pairs_skipped"] == 4  # one query per prompt
        assert {q.prompt for q in mine} <= set(round_prompts(PROMPTS, 4, r, 0))
        assert all(q.left_source == q.right_source == row["policy"] for q in mine)
        assert row["policy"].startswith(f"run:round{r}:")
        assert all(q.left != q.right and q.left.strip() and q.right.strip() for q in mine)
        # the reward model was refit on every label so far (its held-out accuracy is None
        # when the one held-out pair is a tie: random bytes often have equal word counts)
        assert row["fit_pairs"] == sum(h["answers_added"] for h in m["history"][:r + 1])
        assert "reward_model_accuracy" in row and row["ppo_updates"] == 1
        assert row["ppo_kl_last"] is not None and row["sample_score_mean"] is not None
    assert m["history"][0]["policy"] != m["history"][1]["policy"]  # PPO moved the adapter
    assert len(queries) == sum(h["queries"] for h in m["history"])  # nothing asked twice
    assert len(answers) == len(queries) == m["labels"]
    assert {(a.annotator, a.synthetic) for a in answers} == {("teacher:oracle(length)", True)}
    # every side scored by the teacher's function: the oracle's answer is the side with more
    # words (rlhf_hgt.lm.scores: the same length as `lm ppo --reward length`)
    for q in queries:
        a = next(a for a in answers if a.query_id == q.id)
        ll, lr = len(q.left.split()), len(q.right.split())
        assert a.answer == ("tie" if ll == lr else "left" if ll > lr else "right")

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rounds"] == 2 and len(metrics["history"]) == 2
    state = json.loads((out / "state.json").read_text())
    assert state["round"] == 1 and state["ppo_updates"] == 2
    ck = out / state["checkpoint"]
    assert {"adapter_model.safetensors", "value_head.safetensors",
            "optimizer.safetensors"} <= {p.name for p in ck.iterdir()}
    assert (out / "checkpoints" / "reward" / "reward_model.json").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["preference_store"]["path"] == str(out / "feedback.db")
    assert any(k.endswith("adapter_model.safetensors") for k in manifest["checkpoints"])
    # a card beside every round's checkpoint, written when it was saved, and the reward model's
    for row in metrics["history"]:
        round_card = out / "checkpoints" / f"round{row['round']:04d}" / "README.md"
        assert round_card.is_file() and "## Human guidance" in round_card.read_text()
    assert (out / "checkpoints" / "reward" / "README.md").is_file()

    # a finished run asked again does nothing new; other settings are refused
    again = run_online(small(tmp_path))
    assert again["history"] == m["history"] and len(stored(out / "feedback.db")[0]) == len(queries)
    with pytest.raises(UserInputError, match="started with algo='ppo'"):
        run_online(small(tmp_path, algo="dpo"))


def test_a_run_killed_after_asking_reuses_its_queries(tmp_path):
    out = tmp_path / "run"
    first = run_online(small(tmp_path, rounds=1))
    queries, answers = stored(out / "feedback.db")
    # killed before the round was committed: no state, no checkpoint
    (out / "state.json").unlink()
    for p in (out / "checkpoints").glob("round*"):
        for f in p.iterdir():
            f.unlink()
        p.rmdir()
    again = run_online(small(tmp_path, rounds=1))
    row = again["history"][0]
    assert row["queries_reused"] and row["policy"] == first["history"][0]["policy"]
    assert row["answers_added"] == 0  # answered before; not asked again
    assert stored(out / "feedback.db") == (queries, answers)


def test_dpo_loop_trains_the_policy_adapter(tmp_path):
    cfg = small(tmp_path, algo="dpo", prompts_per_round=6)
    m = run_online(cfg)
    rows = m["history"]
    assert [r["round"] for r in rows] == [0, 1]
    assert rows[0]["policy"] != rows[1]["policy"]  # DPO changed the adapter
    assert "reward_model_accuracy" not in rows[0] and "ppo_updates" not in rows[0]
    assert rows[1]["fit_pairs"] == rows[0]["queries"] + rows[1]["queries"]  # all labels
    assert rows[1]["dpo_steps"] == 1 and "implicit_reward_accuracy" in rows[1]
    out = Path(cfg.out)
    assert not (out / "checkpoints" / "reward").exists()
    assert not list(out.glob(".dpo-*"))  # the scratch folder is gone
    state = json.loads((out / "state.json").read_text())
    from safetensors.torch import load_file

    saved = load_file(str(out / state["checkpoint"] / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in saved.items())


def test_external_people_answer_while_the_loop_waits(tmp_path):
    cfg = small(tmp_path, teacher="external", rounds=1, poll_seconds=0.05, eval_prompts=0)
    events: list[tuple[str, dict]] = []
    errors: list[BaseException] = []

    def loop() -> None:
        try:
            events.append(("result", run_online(cfg, progress=lambda e, i: events.append((e, i)))))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    t = threading.Thread(target=loop)
    t.start()
    deadline = time.time() + 60
    while not any(e == "waiting" for e, _ in events) and time.time() < deadline and t.is_alive():
        time.sleep(0.05)
    assert not errors and any(e == "waiting" for e, _ in events)
    with PreferenceStore(cfg.store_path, create=False) as st:
        pending = st.unanswered_ids()
        assert pending
        for qid in pending:
            st.record_answer(qid, "right", "bob", interface="test/1")
    t.join(timeout=60)
    assert not t.is_alive() and not errors
    row = dict(events)["result"]["history"][0]
    assert row["annotator"] and row["answers_added"] == len(pending) == row["queries"]
    assert row["sample_score_mean"] is None  # no score for people (no --monitor)
    answers = stored(cfg.store_path)[1]
    assert {a.annotator for a in answers} == {"bob"}


def test_custom_score_function_and_annotator_name(tmp_path):
    def count_a(prompt: str, response: str) -> float:
        return float(response.count("a"))

    with pytest.raises(UserInputError, match="teacher custom"):
        run_online(small(tmp_path), score_fn=count_a)
    m = run_online(small(tmp_path, rounds=1, teacher="custom", teacher_model="mistake:eps=0"),
                   score_fn=count_a)
    assert m["history"][0]["annotator"] == "teacher:mistake(eps=0)(custom)"
    assert m["history"][0]["eval_score_mean"] is not None


# ----------------------------------------------------------------------------- the command


@pytest.mark.parametrize("args, hint", [
    (["--out", "{out}", "--model", "tiny"], "exactly one source of prompts"),
    (["--out", "{out}", "--model", "tiny", "--prompt", "hi", "--teacher", "sentiment"],
     "teacher must be one of"),
    (["--out", "{out}", "--model", "tiny", "--prompts", "{tmp}/missing.jsonl"], "no such file"),
    (["--out", "{out}", "--model", "tiny", "--prompt", "hi", "--batch-size", "4",
      "--mini-batch-size", "3"], "--ppo-mini-batch-size"),
])
def test_cli_bad_input_exits_2_without_traceback(tmp_path, capsys, args, hint):
    args = [a.format(out=tmp_path / "run", tmp=tmp_path) for a in args]
    assert lm_main(["lm", "online", *args]) == 2  # in process: the message, not the exit
    err = capsys.readouterr().err
    assert hint in err and "Traceback" not in err and "rlhf-hgt: error:" in err
    assert not (tmp_path / "run").exists()  # nothing written


@pytest.mark.slow
def test_human_teacher_labels_at_this_terminal(tmp_path):
    out = tmp_path / "run"
    child = pexpect.spawn(sys.executable, ["-m", "rlhf_hgt.cli", "lm", "online", "--out",
                                           str(out), "--prompt", "hello", "--prompt", "cats",
                                           "--rounds", "1", *SMALL, "--teacher", "human",
                                           "--annotator", "alice", "--eval-prompts", "0"],
                          env=env(), dimensions=(40, 160), encoding="utf-8", timeout=90)
    child.logfile_read = io.StringIO()
    queries = 0
    while True:  # one key per pair shown, until the loop goes on
        if child.expect([r"left: \d+", pexpect.EOF]) == 1:
            break
        child.send("1")
        queries += 1
    child.close()
    assert child.exitstatus == 0, child.logfile_read.getvalue()[-2000:]
    qs, answers = stored(out / "feedback.db")
    assert queries >= len(qs) >= 1
    assert len(answers) == len(qs) and {a.annotator for a in answers} == {"alice"}
    assert all(a.answer == "left" and not a.synthetic for a in answers)
    assert json.loads((out / "metrics.json").read_text())["history"][0]["answers_added"] \
        == len(qs)


@pytest.mark.slow
def test_lineage_of_an_online_run_lists_the_answers_each_round_saw(tmp_path):
    """Lineage of an `lm online` run (DPO rounds here; PPO rounds share the recording):
    each round's checkpoint lists exactly the store's active answers up to it, an answer
    undone later is not used by the rounds after, and --verify holds."""
    out = tmp_path / "run"
    run_online(small(tmp_path, algo="dpo", rounds=1))
    _, first = stored(out / "feedback.db")
    with PreferenceStore(out / "feedback.db") as st:
        st.undo(first[0].id, reason="a wrong click")
    run_online(small(tmp_path, algo="dpo", rounds=2))  # the same run, one round more
    _, active = stored(out / "feedback.db")
    import subprocess

    got = subprocess.run([sys.executable, "-m", "rlhf_hgt.cli", "lineage", str(out), "--json"],
                         capture_output=True, text=True, timeout=120, env=env())
    record = json.loads(got.stdout)
    by_name = {c["checkpoint"]: c for c in record["checkpoints"]}
    assert sorted(by_name) == ["round0000", "round0001"]
    assert sorted(by_name["round0000"]["answer_ids"]) == sorted(a.id for a in first)
    assert sorted(by_name["round0001"]["answer_ids"]) == sorted(a.id for a in active)
    assert first[0].id not in by_name["round0001"]["answer_ids"]
    assert sorted(a["id"] for a in record["answers"]) == sorted(a.id for a in active)
    verify = subprocess.run([sys.executable, "-m", "rlhf_hgt.cli", "lineage", str(out),
                             "--verify"], capture_output=True, text=True, timeout=120, env=env())
    assert verify.returncode == 0, verify.stdout + verify.stderr
