"""Builds a small Qwen2-architecture causal LM and a character-level tokenizer offline, in Hugging Face format.

The result loads with transformers (learner) and vLLM (rollout) alike, so the CPU demo runs the same code paths as a
real model on GPUs. Cached: a directory that already holds a model built from the same settings is reused.
"""

from __future__ import annotations

import json
import string
from dataclasses import asdict
from pathlib import Path

from ponder.platform.config import TinyModelConfig

PAD, EOS, UNK = "<pad>", "<|endoftext|>", "<unk>"
SPECIALS = [PAD, EOS, UNK]
CHARS = [c for c in string.printable if c not in "\r\x0b\x0c\t"]
# ChatML with EOS closing each message, so that `data.template=chat` runs on the tiny model as on a chat model
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build_tokenizer():
    """One token per printable character, plus pad/eos/unk.

    Written as a byte-level BPE with no merges, the shape of Qwen2's own tokenizer: transformers' AutoTokenizer always
    rebuilds a `qwen2` model's tokenizer as `Qwen2Tokenizer` from vocab and merges, so any other tokenizer type would
    silently lose characters when vLLM or the learner loads it.
    """
    from transformers import Qwen2Tokenizer

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for c in CHARS:
        vocab[_byte_level(c)] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=UNK, pad_token=PAD, eos_token=EOS, bos_token=None)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _byte_level(c: str) -> str:
    """GPT-2's byte-to-unicode map, for ASCII: printable characters are themselves, the rest shift past 255."""
    return c if 33 <= ord(c) <= 126 else chr(256 + ord(c))


def build_tiny_model(cfg: TinyModelConfig) -> Path:
    """Write model + tokenizer to `cfg.out_dir` (skipped if it already holds the same build). Returns the dir."""
    out = Path(cfg.out_dir)
    stamp = out / "ponder_build.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == asdict(cfg):
        return out
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=False,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(cfg.seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    stamp.write_text(json.dumps(asdict(cfg)))
    return out


def build_tiny_reward_model(policy_dir: str | Path, out_dir: str | Path) -> Path:
    """A reward model for tests and demos: the tiny policy's body with a fresh one-output scoring head
    (`Qwen2ForSequenceClassification`, num_labels=1), and the same tokenizer. Untrained: its scores mean nothing."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    config = AutoConfig.from_pretrained(policy_dir, num_labels=1)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(policy_dir, config=config)
    out = Path(out_dir)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(policy_dir).save_pretrained(out)
    return out
