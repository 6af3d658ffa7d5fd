"""Tiny causal language models built in memory, for tests and smoke runs (no hub, no files).

The tokenizer has one token per byte (any text works) plus <eos> and <pad>, and a small
chat template; the model is a Llama with a few thousand parameters. Everywhere a model is
named (``--model``, :func:`rlhf_hgt.lm.models.load_causal_lm`), ``"tiny"`` builds it with the
fixed seed :data:`TINY_SEED`, never a run's seed: a saved adapter then finds its base again.
"""

from __future__ import annotations

from typing import Any

#: Model name of the tiny in-memory Llama used by tests and smoke runs (no files, no hub).
TINY = "tiny"
#: Seed of the tiny base model's random weights, so that a saved adapter finds its base again.
TINY_SEED = 0

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<eos>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def tiny_tokenizer(padding_side: str = "left"):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab.update({"<eos>": len(vocab), "<pad>": len(vocab) + 1})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>",
                                 padding_side=padding_side)
    hf.chat_template = CHAT_TEMPLATE
    return hf


def tiny_config(tokenizer, hidden: int = 32, layers: int = 2, heads: int = 4, **kw: Any):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden,
                       intermediate_size=2 * hidden, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=heads,
                       max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
                       eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
                       tie_word_embeddings=False, **kw)


def tiny_causal_lm(seed: int = 0, **kw: Any):
    """(model, tokenizer): a tiny LlamaForCausalLM with random weights, fp32, on CPU."""
    import torch
    from transformers import LlamaForCausalLM

    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config(tok, **kw))
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model, tok


def tiny_reward_lm(seed: int = 0, **kw: Any):
    """(model, tokenizer): a tiny LlamaForSequenceClassification with one output."""
    import torch
    from transformers import LlamaForSequenceClassification

    tok = tiny_tokenizer(padding_side="right")
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(tiny_config(tok, num_labels=1, **kw))
    return model, tok
