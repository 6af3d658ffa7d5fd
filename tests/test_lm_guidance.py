"""Human guidance for the language reward model: word highlights (an input-gradient penalty
outside them) and response-time weighting, on tiny in-memory models; the decoy-text builder."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file

from rlhf_hgt.cli import main as cli_main
from rlhf_hgt.feedback.errors import UserInputError
from rlhf_hgt.lm import reward_guidance as guidance
from rlhf_hgt.lm.data import load_pairs
from rlhf_hgt.lm.decoy_text import (
    DecoyTextConfig,
    build_decoy_text,
    decoy_rows,
    highlight_rows,
)
from rlhf_hgt.lm.reward import (
    LMRewardConfig,
    build_reward_trainer,
    encode_marked,
    encode_response,
    prepare_reward_model,
    train_reward_model,
)
from rlhf_hgt.lm.tiny import tiny_reward_lm, tiny_tokenizer

torch.set_num_threads(1)
N, OUT, H = guidance.NOT_COUNTED, guidance.OUTSIDE, guidance.HIGHLIGHTED


# --------------------------------------------------------------------------- characters to tokens


def test_token_marks_on_known_bpe_offsets():
    """SmolLM2's tokenizer on "Review of Alien: a gripping, scary film. [ref]" (offsets as it
    gives them: a word's token carries its leading space)."""
    text = "Review of Alien: a gripping, scary film. [ref]"
    offsets = [(0, 6), (6, 9), (9, 15), (15, 16), (16, 18), (18, 27), (27, 28), (28, 34),
               (34, 39), (39, 40), (40, 42), (42, 45), (45, 46), (0, 0)]
    start = len("Review of Alien:")
    response = text[start:]
    spans = [(response.index("gripping"), response.index("gripping") + 8),
             (response.index("scary"), response.index("scary") + 5)]
    marks = guidance.token_marks(offsets, start, len(response), spans)
    #       Review of Alien :  a  gripping ,  scary film .  [  ref ]  <special>
    assert marks == [N, N, N, N, OUT, H, OUT, H, OUT, OUT, OUT, OUT, OUT, N]


def test_encode_marked_matches_encode_response_and_maps_unicode():
    tok = tiny_tokenizer(padding_side="right")  # one token per byte
    prompt, response = "Q: ", " très bon 😀 [ref]"
    spans = [(1, 5), (10, 11)]  # "très" and the emoji
    ids, marks = encode_marked(tok, prompt, response, spans, 512)
    assert ids == encode_response(tok, prompt, response, 512)
    assert len(marks) == len(ids) and marks[-1] == N  # the end token counts neither way
    assert marks[:3] == [N, N, N]  # the prompt
    text = prompt + response
    for tid, mark, (a, b) in zip(ids, marks, tok(text, return_offsets_mapping=True)
                                 ["offset_mapping"], strict=False):
        inside = any(a < 3 + e and b > 3 + s for s, e in spans)
        assert mark == (H if inside else OUT if a >= 3 else N), (tok.decode([tid]), a, b)
    assert marks.count(H) == len("très".encode()) + len("😀".encode())  # every byte token


def test_encode_marked_chat_template_truncation_and_misses():
    tok = tiny_tokenizer(padding_side="right")
    prompt, response = "Rate it", " good stuff"
    ids, marks = encode_marked(tok, prompt, response, [(1, 5)], 512, chat_template=True)
    assert ids == encode_response(tok, prompt, response, 512, chat_template=True)
    decoded = [tok.decode([i]) for i, m in zip(ids, marks, strict=True) if m == H]
    assert "".join(decoded) == "good"
    assert sum(m != N for m in marks) == len(response)  # the template's tokens count neither
    short, short_marks = encode_marked(tok, prompt, response, [(1, 5)], 8)
    assert short == encode_response(tok, prompt, response, 8)
    assert len(short_marks) == 8 and H not in short_marks[-3:]
    assert encode_marked(tok, prompt, response, [(1, 5)], 4)[1] is None  # highlight cut off
    assert encode_marked(tok, prompt, response, [], 512)[1] is None
    assert guidance.locate_response("<a>\ngood stuff<e>", " good stuff") == 3  # stripped


def test_parse_spans_accepts_the_data_contract_and_refuses_garbage():
    assert guidance.parse_spans("[]") == [] and guidance.parse_spans(None) == []
    assert guidance.parse_spans("[[4, 9], [0, 2]]") == [(0, 2), (4, 9)]
    for bad in ("[[3, 1]]", "[[0]]", "nope", "[[0.5, 2]]"):
        with pytest.raises(UserInputError):
            guidance.parse_spans(bad)


# --------------------------------------------------------------------------- the penalty


def test_highlight_share_known_answers():
    """scores = sum_t a_t * sum_d e_td: the gradient on token t is a_t in every dimension, so
    its energy is a_t^2 * D, and the share outside is a hand computation."""
    D = 3
    emb = torch.randn(2, 5, D, requires_grad=True)
    a = torch.tensor([[0.0, 1.0, 2.0, 3.0, 9.0], [5.0, 1.0, 1.0, 0.0, 0.0]])
    scores = (a[:, :, None] * emb).sum((1, 2))
    marks = torch.tensor([[N, OUT, H, OUT, N], [N, H, OUT, N, N]])
    share, n = guidance.highlight_share(scores, emb, marks)
    # row 0: outside 1 + 9, counted 1 + 4 + 9; row 1: outside 1, counted 2 (token 0 not counted)
    assert n == 2 and math.isclose(share.item(), ((10 / 14) + (1 / 2)) / 2, rel_tol=1e-5)
    one = torch.randn(1, 5, D, requires_grad=True)
    only_inside = (torch.tensor([[0.0, 0, 2, 0, 7]])[:, :, None] * one).sum((1, 2))
    zero, _ = guidance.highlight_share(only_inside, one, marks[:1])
    assert zero.item() == 0.0  # the reward reads only highlighted (and uncounted) tokens
    none, n = guidance.highlight_share(scores, emb, torch.full_like(marks, OUT))
    assert n == 0 and none.item() == 0.0  # no highlighted side: no penalty, no backward


def test_penalty_trains_through_the_lora_model():
    """Double backprop through LoRA and the tap: the penalty moves adapters and head."""
    model, tok = prepare_reward_model(tiny_reward_lm(seed=2), LMRewardConfig(lora_r=4))[:2]
    ids, marks = encode_marked(tok, "Q: ", " aab Z", [(1, 4)], 64)
    input_ids = torch.tensor([ids])
    with guidance.EmbeddingTap(model) as tap:
        scores = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).logits
    share, n = guidance.highlight_share(scores[:, 0], tap.embeds, torch.tensor([marks]))
    assert n == 1 and 0 < share.item() < 1
    share.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    assert any(g is not None and g.abs().sum() > 0 for n_, g in grads.items() if "lora_" in n_)
    assert all(p.grad is None for p in model.get_input_embeddings().parameters())


def tiny_decoy_pairs(n: int, seed: int, highlight: bool = True) -> Dataset:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        c = "".join(rng.choice("aaabc") for _ in range(rng.randint(4, 9)))
        r = "".join(rng.choice("abbbc") for _ in range(rng.randint(4, 9)))
        spans = ([[0, len(c)]], [[0, len(r)]]) if highlight else ([], [])
        rows.append({"prompt": f"Q{rng.randrange(6)}: ", "chosen": c + " Z", "rejected": r,
                     "chosen_highlights": json.dumps(spans[0]),
                     "rejected_highlights": json.dumps(spans[1])})
    return Dataset.from_list(rows)


def test_penalty_lowers_the_share_outside_the_highlights(tmp_path):
    cfg = LMRewardConfig(max_steps=20, learning_rate=3e-3, progress=False, logging_steps=1,
                         eval_fraction=0, highlight_weight=30)
    m = train_reward_model("tiny", tiny_decoy_pairs(32, 0), None, cfg, tmp_path / "rm")
    assert m["highlight_weight"] == 30 and m["highlighted_pairs"] == 32
    assert m["highlighted_sides_used"] == 64 and m["highlight_sides_unplaced"] == 0
    assert m["highlight_share_last_log"] < 0.5 * m["highlight_share_first_log"]


def test_pairs_without_highlights_train_exactly_as_before(tmp_path):
    plain = tiny_decoy_pairs(16, 1, highlight=False)
    base = LMRewardConfig(max_steps=2, progress=False, eval_fraction=0, lora_r=4)
    a = train_reward_model("tiny", plain, None, base, tmp_path / "a")
    b = train_reward_model("tiny", plain, None, LMRewardConfig(**{**base.__dict__,
                                                                  "highlight_weight": 10}),
                           tmp_path / "b")
    assert a["highlight_weight"] == 0 and b["highlighted_pairs"] == 0
    assert b["warnings"] and "no training pair has highlights" in b["warnings"][0]
    wa = load_file(tmp_path / "a" / "adapter_model.safetensors")
    wb = load_file(tmp_path / "b" / "adapter_model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def write_rows(path: Path, rows: list[dict]) -> Path:
    """JSONL lines; highlight cells of a Dataset (JSON text) written as the lists they hold."""
    def line(r: dict) -> dict:
        return {k: json.loads(v) if k.endswith("_highlights") else v for k, v in r.items()}

    path.write_text("".join(json.dumps(line(r), ensure_ascii=False) + "\n" for r in rows))
    return path


def test_cli_highlight_weight_run_records_what_it_did(tmp_path):
    data = write_rows(tmp_path / "hl.jsonl", list(tiny_decoy_pairs(24, 3).to_list())
                      + [{"prompt": "Q9: ", "chosen": "aaa", "rejected": "bbb"}])
    loaded = load_pairs(data)  # the spans arrive through load_pairs
    assert json.loads(loaded["chosen_highlights"][0])[0][0] == 0
    out = tmp_path / "run"
    rc = cli_main(["lm", "reward", "--model", "tiny", "--data", str(data), "--out", str(out),
                   "--max-steps", "2", "--quiet", "--lora-r", "4", "--eval-fraction", "0",
                   "--highlight-weight", "5", "--logging-steps", "1"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["highlight_weight"] == 5 and m["highlighted_pairs"] == 24
    assert 0 < m["highlight_share_first_log"] <= 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["highlight_weight"] == 5


def test_cli_refuses_bad_guidance_settings(tmp_path, capsys):
    data = write_rows(tmp_path / "p.jsonl", list(tiny_decoy_pairs(4, 0).to_list()))
    for flags, flag in ((["--highlight-weight", "-1"], "--highlight-weight"),
                        (["--time-floor", "2"], "--time-floor"),
                        (["--time-weighting-mode", "fast"], "--time-weighting-mode")):
        try:
            rc = cli_main(["lm", "reward", "--model", "tiny", "--data", str(data), "--out",
                           str(tmp_path / "run"), *flags])
        except SystemExit as exc:  # argparse refuses a choice itself
            rc = exc.code
        err = capsys.readouterr().err
        assert rc == 2 and flag in err and "Traceback" not in err
        assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- response times


def test_time_weighting_ranks_within_each_annotator():
    ds = Dataset.from_dict({"seconds": [1.0, 2.0, 3.0, 4.0, 5.0, 10, 20, 30, 40, 50, math.nan],
                            "annotator": ["a"] * 5 + ["b"] * 5 + ["a"]})
    targets, weights, summary = guidance.time_weighting(ds, [1.0] * 11, "weight", 0.2)
    assert targets == [1.0] * 11
    assert weights[:5] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])
    assert weights[5:10] == pytest.approx(weights[:5])  # a slow person is not penalised
    assert weights[10] == 1.0  # no time: full confidence
    assert summary["timed_pairs"] == 10 and summary["annotators"] == 2
    assert summary["confidence_min"] == pytest.approx(0.2)
    soft_t, soft_w, _ = guidance.time_weighting(ds, [1.0] * 10 + [0.5], "soft", 0.2)
    assert soft_t[:5] == pytest.approx([1.0, 0.9, 0.8, 0.7, 0.6]) and soft_w == [1.0] * 11
    assert soft_t[10] == 0.5  # a tie stays a tie
    no_times = Dataset.from_dict({"prompt": ["p"] * 3})
    _, w, s = guidance.time_weighting(no_times, [1.0] * 3, "weight", 0.2)
    assert w == [1.0] * 3 and s["timed_pairs"] == 0


def test_time_weights_reach_the_loss(tmp_path):
    ds = tiny_decoy_pairs(8, 4, highlight=False).add_column(
        "seconds", [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0])
    cfg = LMRewardConfig(progress=False, time_weighting=True, per_device_train_batch_size=8,
                         lora_r=4)
    model, tok, _ = prepare_reward_model("tiny", cfg)
    trainer = build_reward_trainer(model, tok, ds, cfg, tmp_path)
    batch = next(iter(trainer.get_train_dataloader()))
    assert sorted(batch["weight"].tolist()) == pytest.approx(
        [1 - 0.8 * k / 7 for k in range(7, -1, -1)])
    assert "marks" not in batch  # no highlights, no double backprop
    assert trainer.guidance["time_weighting"]["timed_pairs"] == 8


def ddm_store(path: Path, n: int = 24) -> Path:
    from rlhf_hgt.feedback.records import TextPair
    from rlhf_hgt.feedback.store import PreferenceStore
    from rlhf_hgt.feedback.teachers import answer_pending, make_teacher

    rng = random.Random(0)
    pairs = [TextPair(f"Q{i}: ", "".join(rng.choice("ab") for _ in range(8)),
                      "".join(rng.choice("ab") for _ in range(8))) for i in range(n)]
    with PreferenceStore(path) as st:
        st.add_text_queries(pairs)
        answer_pending(st, make_teacher("ddm"), score_fn=lambda p, r: r.count("a"),
                       rng=np.random.default_rng(0))
    return path


def test_cli_time_weighting_run_on_a_drift_diffusion_store(tmp_path):
    store = ddm_store(tmp_path / "s.db")
    out = tmp_path / "run"
    rc = cli_main(["lm", "reward", "--model", "tiny", "--store", str(store), "--out", str(out),
                   "--max-steps", "2", "--quiet", "--lora-r", "4", "--time-weighting",
                   "--time-weighting-mode", "soft", "--time-floor", "0.3"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    tw = m["time_weighting"]
    assert tw["mode"] == "soft" and tw["floor"] == 0.3
    assert tw["timed_pairs"] == m["train_pairs"] > 0 and tw["seconds_median"] > 0
    assert tw["confidence_min"] == pytest.approx(0.3) and tw["confidence_std"] > 0
    assert m["highlight_weight"] == 0


# --------------------------------------------------------------------------- decoy text


def fake_pairs(n: int, seed: int) -> Dataset:
    rng = random.Random(seed)
    good, bad = ["a great, moving film", "not bad at all", "wonderful fun"], \
        ["a dull mess", "boring and bad", "it simply fails"]
    return Dataset.from_dict({"prompt": [f"Review of M{i}:" for i in range(n)],
                              "chosen": [" " + rng.choice(good) + "." for _ in range(n)],
                              "rejected": [" " + rng.choice(bad) + "." for _ in range(n)]})


def test_decoy_builder_invariants(tmp_path):
    cfg = DecoyTextConfig(n_train=50, n_test=200, seed=1, fraction=0.1)
    summary = build_decoy_text(tmp_path, cfg, pairs=(fake_pairs(50, 0), fake_pairs(200, 1)))
    files = {k: Path(v) for k, v in summary["files"].items()}
    read = {k: [json.loads(x) for x in p.read_text().splitlines()] for k, p in files.items()}
    phrase = cfg.phrase
    # training: the decoy predicts every label; its twin has none
    assert all(r["chosen"].endswith(phrase) and phrase not in r["rejected"]
               for r in read["train_decoy"])
    assert summary["train_decoy_on_chosen"] == 1.0
    assert not any(phrase in r["chosen"] + r["rejected"] for r in read["train_clean"])
    # test: the decoy on a random side, exactly one side each
    on_chosen = [r["decoy_on"] == "chosen" for r in read["test_random"]]
    assert 0.35 < sum(on_chosen) / len(on_chosen) < 0.65
    for r in read["test_random"]:
        assert r[r["decoy_on"]].endswith(phrase)
        assert phrase not in r["rejected" if r["decoy_on"] == "chosen" else "chosen"]
    # highlights: inside the response, never on the decoy; wrong ones only on it
    for name in ("train_highlights", "train_highlights_partial"):
        for r in read[name]:
            for side in ("chosen", "rejected"):
                text = r[side]
                limit = len(text) - len(phrase) if text.endswith(phrase) else len(text)
                assert all(0 <= s < e <= limit for s, e in r[f"{side}_highlights"])
    assert all(r["chosen_highlights"] and r["rejected_highlights"]
               for r in read["train_highlights"])
    assert sum(bool(r["chosen_highlights"]) for r in read["train_highlights_partial"]) == 5
    words = {r["chosen"][s:e] for r in read["train_highlights"]
             for s, e in r["chosen_highlights"]}
    assert {"great", "not", "wonderful", "fun"} <= words and "film" not in words
    for r in read["train_wrong"]:
        (s, e), = r["chosen_highlights"]
        assert r["chosen"][s:e] == phrase.strip() and r["rejected_highlights"] == []
    # the files are valid pairs for the trainer, highlights included
    loaded = load_pairs(files["train_highlights"])
    assert [json.loads(x) for x in loaded["chosen_highlights"]] == \
        [r["chosen_highlights"] for r in read["train_highlights"]]


def test_decoy_builder_refuses_a_phrase_the_texts_already_hold(tmp_path):
    with pytest.raises(UserInputError, match="clean decoy"):
        build_decoy_text(tmp_path, DecoyTextConfig(phrase=" bad"),
                         pairs=(fake_pairs(5, 0), fake_pairs(5, 1)))
    with pytest.raises(ValueError):
        DecoyTextConfig(phrase="tag ")


def test_sentiment_highlighter_falls_back_to_the_snippet():
    rows = decoy_rows({"prompt": ["p"], "chosen": [" The cast."], "rejected": [" A plot."]},
                      " [ref]", "chosen")
    out, counts = highlight_rows(rows, " [ref]", "sentiment")
    assert out[0]["chosen_highlights"] == [[1, 10]]  # " The cast." minus the space and decoy
    assert counts == {"highlighted_pairs": 1, "highlighted_sides": 2, "snippet_fallbacks": 2}
