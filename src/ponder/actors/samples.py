"""What the rollout actor keeps per call, per prompt and per sample while it generates: sampling settings, budget
forcing, and the growing token record of each sample (or multi-turn episode). Plain data; the engine thread in
`actors/rollout.py` drives it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ponder.data.template import THINK_CLOSE
from ponder.platform.config import EnvConfig, RolloutConfig
from ponder.types import RolloutRequest, Trajectory


@dataclass(frozen=True)
class Sampling:
    """Per-call sampling settings (training and evaluation use the same engine with different ones)."""

    n: int
    temperature: float
    top_p: float
    max_tokens: int
    # EOS is suppressed before this many tokens (length-controlled runs, benchmarks); the logprobs recorded for those
    # tokens are of that suppressed distribution, which is the one that sampled them.
    min_tokens: int = 0
    # Keep sampling past EOS up to max_tokens without changing the distribution (exact lengths for benchmarks).
    ignore_eos: bool = False
    regex: Optional[str] = None  # structured output: completions must match it (a judge's "Score: N" line)
    thinking: Optional["Thinking"] = None  # budget forcing; None: one request per sample, thinking unbounded
    env: Optional[EnvConfig] = None  # multi-turn episodes with this environment; None: one response per sample


@dataclass(frozen=True)
class Thinking:
    """Budget forcing (s1). A sample thinks for at most `budget` tokens (a request's own `thinking_budget` overrides
    it; None = unbounded); then `close` and `answer_prefix` are appended and it goes on to answer, so a response always
    ends with an answer. A think block the model closes itself is reopened with `cue` up to `extend` times (think
    longer). Appended text is the environment's: recorded, never trained on."""

    budget: Optional[int] = None
    extend: int = 0
    cue: str = "Wait"
    close: str = "\n" + THINK_CLOSE + "\n"
    answer_prefix: str = "\\boxed{"

    @classmethod
    def of(cls, cfg: RolloutConfig) -> Optional["Thinking"]:
        """The configured budget forcing, or None when there is none. With several budgets the per-prompt draw is in
        the requests (`data.stream.make_requests`)."""
        if not cfg.thinking_budget and not cfg.thinking_extend:
            return None
        budget = cfg.thinking_budget[0] if len(cfg.thinking_budget) == 1 else None
        return cls(budget, cfg.thinking_extend, cfg.thinking_cue, answer_prefix=cfg.answer_prefix)


@dataclass
class Sample:
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    sampled: list[int] = field(default_factory=list)  # 1: the policy's token; 0: the environment's
    finish_reason: str = "unknown"
    thinking: bool = False  # in the think block (only tracked with a thinking budget)
    thinking_tokens: Optional[int] = None
    forced: bool = False
    extensions: int = 0
    segments: int = 0  # requests this sample has been generated in
    segment_start: int = 0  # where the running request's tokens begin in token_ids
    # A multi-turn episode (rollout.env; a turn is a segment): the environment's state, model turns taken, the texts
    # of the turns the environment marked as answers, how the episode ended and the environment's metrics.
    env_state: Any = None
    turns: int = 0
    attempts: list[str] = field(default_factory=list)
    episode_end: str = ""
    env_metrics: dict[str, float] = field(default_factory=dict)
    mask_reason: str = ""  # the environment failed: the episode leaves the loss, with this reason

    def append(self, token_ids: list[int], logprobs: list[float], versions: list[int], sampled: int) -> None:
        self.token_ids += token_ids
        self.logprobs += logprobs
        self.versions += versions
        self.sampled += [sampled] * len(token_ids)

    def truncate(self, length: int) -> None:
        for seq in (self.token_ids, self.logprobs, self.versions, self.sampled):
            del seq[length:]


@dataclass
class Group:
    request: RolloutRequest
    sampling: Sampling
    prompt_ids: list[int]
    samples: list[Sample]
    remaining: int
    on_done: Callable[[list[Trajectory]], None]
    env: Any = None  # the Environment of a multi-turn sampling (envs/base.py)

    @property
    def max_tokens(self) -> int:
        return self.request.max_tokens or self.sampling.max_tokens

    @property
    def budget(self) -> Optional[int]:
        thinking = self.sampling.thinking
        if thinking is None:
            return None
        return self.request.thinking_budget if self.request.thinking_budget is not None else thinking.budget




def token_versions(spans, num_tokens: int, current: int) -> list[int]:
    """vLLM's `WeightVersionSpan`s ([start, end) -> version label) as one version per output token.

    >>> from types import SimpleNamespace as Span
    >>> token_versions([Span(version="3", start=0, end=2), Span(version="4", start=2, end=5)], 5, 4)
    [3, 3, 4, 4, 4]
    """
    if not spans:  # no step was labelled (no tokens, or an engine that does not label): the weights it holds now
        return [current] * num_tokens
    versions = [int(spans[0].version)] * num_tokens
    for span in spans:
        versions[span.start : span.end] = [int(span.version)] * (span.end - span.start)
    return versions
