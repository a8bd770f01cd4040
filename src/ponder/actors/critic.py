"""Critic actors: models that score responses. Plain classes; `platform/cluster.py` makes them Ray actors.

`RewardModelWorker` serves a sequence-classification reward model (Hugging Face format, one output logit) with
transformers; `JudgeWorker` serves a generative judge on vLLM through the same engine host as the rollout actors
(`RolloutWorker`), asks for a critique ending in "Score: N", and parses it. Both answer `score(requests)` with one
`CriticScore` per request, and in per-step mode score every prefix of the reasoning, ending at each step, against the
prompt: step boundaries are found in the *policy's* tokens, so the learner can place each step's score on them.
"""

from __future__ import annotations

from dataclasses import replace

from ponder.actors.rollout import RolloutWorker, Sampling
from ponder.platform.config import RolloutConfig
from ponder.rewards.critic import (JUDGE_PROMPT, STEP_JUDGE_PROMPT, parse_score, score_regex, step_spans,
                                   with_defaults)
from ponder.types import CriticRequest, CriticScore, Problem, RolloutRequest


class _Steps:
    """Per-step mode: each response cut at its reasoning steps, as (request index, step end, text so far)."""

    def __init__(self, policy_path: str):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(policy_path)

    def prefixes(self, requests: list[CriticRequest]) -> list[tuple[int, int, str]]:
        out = []
        for i, r in enumerate(requests):
            pieces = [self.tokenizer.decode([t]) for t in r.response_ids]
            out += [(i, end, self.tokenizer.decode(r.response_ids[:end])) for _, end in step_spans(pieces)]
        return out

    @staticmethod
    def gather(n: int, prefixes: list[tuple[int, int, str]], values: list) -> list[CriticScore]:
        """A response's term is its worst step (None if any step has no score); its steps go to the learner."""
        steps: list[list[tuple[int, float | None]]] = [[] for _ in range(n)]
        for (i, end, _), value in zip(prefixes, values):
            steps[i].append((end, value))
        scores = []
        for s in steps:
            if not s or any(v is None for _, v in s):
                scores.append(CriticScore(None))
            else:
                scores.append(CriticScore(min(v for _, v in s), tuple(s)))  # type: ignore[misc]
        return scores


class RewardModelWorker:
    def __init__(self, options: dict, policy_path: str, dtype: str = "float32"):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.opts = with_defaults("reward_model", options)
        self.device = "cuda" if self.opts["num_gpus"] > 0 and torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(self.opts["path"])
        self.tokenizer.padding_side, self.tokenizer.truncation_side = "right", "left"  # keep the end of long texts
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForSequenceClassification.from_pretrained(
            self.opts["path"], dtype=getattr(torch, dtype)).to(self.device).eval()
        if self.model.config.num_labels != 1:
            raise ValueError(f"reward model {self.opts['path']!r} has {self.model.config.num_labels} outputs; a reward "
                             "model has exactly one (num_labels=1)")
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.steps = _Steps(policy_path) if self.opts["per_step"] else None

    def score(self, requests: list[CriticRequest]) -> list[CriticScore]:
        if self.steps is None:
            return [CriticScore(v) for v in self._scalars([(r.prompt, r.response) for r in requests])]
        prefixes = self.steps.prefixes(requests)
        values = self._scalars([(requests[i].prompt, text) for i, _, text in prefixes])
        return self.steps.gather(len(requests), prefixes, values)

    def _scalars(self, pairs: list[tuple[str, str]]) -> list[float]:
        import torch

        texts = [self._text(p, r) for p, r in pairs]
        out: list[float] = []
        for i in range(0, len(texts), self.opts["batch_size"]):
            batch = self.tokenizer(texts[i : i + self.opts["batch_size"]], return_tensors="pt", padding=True,
                                   truncation=True, max_length=self.opts["max_length"], add_special_tokens=False)
            with torch.no_grad():
                out += self.model(**batch.to(self.device)).logits[:, 0].float().tolist()
        return out

    def _text(self, prompt: str, response: str) -> str:
        """The reward model's own chat format when it has one (how such models are trained), else plain text."""
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], tokenize=False)
        return prompt + response

    def close(self) -> None:
        pass


class JudgeWorker:
    def __init__(self, options: dict, policy_path: str, rollout: RolloutConfig, dtype: str = "float32", seed: int = 0):
        self.opts = with_defaults("judge", options)
        engine_cfg = replace(rollout, num_workers=1, num_gpus=self.opts["num_gpus"], cpu_bind=None, weight_sync="shm")
        self.engine = RolloutWorker(self.opts["path"], dtype, engine_cfg, seed)
        self.sampling = Sampling(n=1, temperature=self.opts["temperature"], top_p=1.0,
                                 max_tokens=self.opts["max_tokens"],
                                 regex=score_regex(self.opts["max_tokens"]) if self.opts["constrained"] else None)
        self.steps = _Steps(policy_path) if self.opts["per_step"] else None
        self.seed = seed

    def score(self, requests: list[CriticRequest]) -> list[CriticScore]:
        if self.steps is None:
            return [CriticScore(v) for v in self._judge([JUDGE_PROMPT.format(prompt=r.prompt, response=r.response)
                                                         for r in requests])]
        prefixes = self.steps.prefixes(requests)
        values = self._judge([STEP_JUDGE_PROMPT.format(prompt=requests[i].prompt, response=text)
                              for i, _, text in prefixes])
        return self.steps.gather(len(requests), prefixes, values)

    def judgements(self, requests: list[CriticRequest]) -> list[str]:
        """The judge's raw outputs (what `score` parses), for inspection."""
        return self._generate([JUDGE_PROMPT.format(prompt=r.prompt, response=r.response) for r in requests])

    def _judge(self, prompts: list[str]) -> list[float | None]:
        return [parse_score(text) for text in self._generate(prompts)]

    def _generate(self, prompts: list[str]) -> list[str]:
        requests = [RolloutRequest(i, Problem(p, ""), p, self.seed + i) for i, p in enumerate(prompts)]
        by_id = {t.group_id: t.response_text for t in self.engine.generate(requests, self.sampling)}
        return [by_id[i] for i in range(len(prompts))]

    def close(self) -> None:
        self.engine.close()
