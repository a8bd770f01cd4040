"""Supervised warm start on worked solutions, so that RL begins from non-zero accuracy.

Plain PyTorch in one process: a small model and a few hundred steps do not need the distributed learner. Trains on
the completion tokens only (prompt tokens are context). Cached: an output directory holding a model built from the
same settings and the same initial model is reused.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional

from ponder.data.datasets import load_problems
from ponder.data.template import chat_observation, chat_prompt, completion_segments, has_completion, render_prompt
from ponder.platform.config import DataConfig, SftConfig


def run_sft(cfg: SftConfig, data: DataConfig, progress: bool = True,
            log: Optional[Callable[[dict[str, float], int], None]] = None) -> Path:
    """Warm start on the worked solutions of `data.train` (rows without a `solution` are skipped); `log(metrics, step)`
    gets the loss every 10 steps and at the end (not called when the cached model is reused)."""
    out = Path(cfg.out_dir)
    stamp = out / "ponder_sft.json"
    init_stamp = Path(cfg.init_dir) / "ponder_build.json"  # a rebuilt initial model invalidates the warm start
    problems = load_problems(data.train, "train", data.task)
    settings = {"sft": asdict(cfg), "task": asdict(data.task), "template": data.template, "train": data.train,
                "init": init_stamp.read_text() if init_stamp.is_file() else None,
                "data": _digest(problems)}  # a dataset rewritten in place (an export) invalidates it too
    if stamp.is_file() and json.loads(stamp.read_text()) == settings:
        return out
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(cfg.init_dir)
    model = AutoModelForCausalLM.from_pretrained(cfg.init_dir, dtype=torch.float32)
    examples = [render_example(tokenizer, p, data.template) for p in problems if has_completion(p)]
    if not examples:
        raise ValueError(f"data.train {data.train!r} has no rows with a worked 'solution' (or episode, or exported "
                         "completion) to warm-start on")
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / cfg.warmup_steps))
    rng = random.Random(cfg.seed)
    batches = _length_grouped(examples, cfg.batch_size, rng) if cfg.group_by_length else None
    bar = tqdm(range(cfg.steps), desc="sft", unit="step", disable=not progress)
    for step in bar:
        ids, labels = _batch(tokenizer, next(batches) if batches else rng.sample(examples, cfg.batch_size))
        loss = model(input_ids=ids, attention_mask=(ids != tokenizer.pad_token_id).long(), labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        if log and (step % 10 == 0 or step == cfg.steps - 1):
            log({"sft/loss": loss.item(), "sft/lr": schedule.get_last_lr()[0]}, step)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    stamp.write_text(json.dumps(settings))
    return out


def _digest(problems) -> str:
    rows = [[p.prompt, p.answer, p.solution, p.metadata] for p in problems]
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()


def render_example(tokenizer, problem, template: str) -> tuple[str, list[tuple[str, bool]]]:
    """(prompt, completion segments); with the chat template, rendered as the rollout engine renders them."""
    segments = completion_segments(problem)
    if template != "chat":
        return render_prompt(problem.prompt, template), segments
    return chat_prompt(tokenizer, problem.prompt), [
        (text if policy else chat_observation(tokenizer, text, closed=False), policy) for text, policy in segments]


def encode_example(tokenizer, prompt: str, segments: list[tuple[str, bool]]) -> tuple[list[int], list[int], list[int]]:
    """Prompt ids, completion ids ending in EOS, and per completion token 1 where the policy wrote it (the loss is on
    those) and 0 for an environment's segment (context)."""
    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    ids, policy = [], []
    for text, written in segments:
        piece = encode(text)
        ids, policy = ids + piece, policy + [int(written)] * len(piece)
    return encode(prompt), ids + [tokenizer.eos_token_id], policy + [1]


def _length_grouped(examples: list[tuple[str, list]], batch_size: int, rng: random.Random, pool: int = 32):
    """Endless batches of examples of similar length (long-tailed data padded to each batch's longest wastes most of
    the compute otherwise): draw `pool` batches' worth at random, sort them by length, cut, and shuffle the cuts."""
    while True:
        drawn = sorted(rng.sample(examples, min(len(examples), pool * batch_size)), key=lambda e: len(e[0]) + sum(len(t) for t, _ in e[1]))
        cuts = [drawn[i : i + batch_size] for i in range(0, len(drawn) - batch_size + 1, batch_size)]
        rng.shuffle(cuts)
        yield from cuts


def _batch(tokenizer, examples: list[tuple[str, list[tuple[str, bool]]]]):
    """Padded ids and labels: the loss is on the policy's segments and the final EOS; the prompt and the
    environment's segments of a worked episode are context (-100)."""
    import torch

    rows = []
    for prompt, segments in examples:
        prompt_ids, completion, policy = encode_example(tokenizer, prompt, segments)
        labels = [t if written else -100 for t, written in zip(completion, policy)]
        rows.append((prompt_ids + completion, [-100] * len(prompt_ids) + labels))
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (row_ids, row_labels) in enumerate(rows):
        ids[i, : len(row_ids)] = torch.tensor(row_ids)
        labels[i, : len(row_labels)] = torch.tensor(row_labels)
    return ids, labels
