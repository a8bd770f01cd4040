"""Messages that cross process boundaries. Plain dataclasses of Python lists and scalars: cheap to pickle, no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass(frozen=True)
class Problem:
    """One prompt with its verifiable answer. `solution` is an optional worked solution (SFT only)."""

    prompt: str
    answer: str
    solution: Optional[str] = None
    reward: Optional[str] = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RolloutRequest:
    """Generate `n` samples for one prompt. `group_id` ties the samples of a prompt together (the GRPO group)."""

    group_id: int
    problem: Problem
    prompt_text: str
    seed: int


@dataclass
class Trajectory:
    """One sampled completion and everything the learner needs to train on it."""

    group_id: int
    sample_index: int
    problem: Problem
    prompt_ids: list[int]
    response_ids: list[int]
    response_text: str
    logprobs: list[float]  # behaviour logprobs from the engine, one per response token
    finish_reason: str
    policy_version: int
    reward: float = 0.0
    reward_terms: dict[str, float] = field(default_factory=dict)
    correct: bool = False
    masked: bool = False  # infrastructure failure while scoring: excluded from the loss, never scored as 0


@dataclass(frozen=True)
class WeightsVersion:
    """A published set of policy weights: where they are and how to check them."""

    version: int
    path: str
    checksum: str
    num_bytes: int
    tensors: dict[str, tuple[str, tuple[int, ...]]]  # name -> (dtype, shape)
