"""What a reward function is: a small pure function of (completion, problem) to a float.

Reward functions never import torch, ray or vllm. They run inside the reward pool's worker processes, so a slow or
hanging one is killed from outside and cannot stall training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ponder.types import Problem


class RewardFn(Protocol):
    def __call__(self, completion: str, problem: Problem, **options) -> float: ...


@dataclass
class RewardOutcome:
    """The weighted score of one completion, its per-function terms, and what went wrong on the way.

    `timeouts`, `over_limit` and `errors` list the reward names that were killed, ran out of memory or recursion, or
    raised. A timeout or a limit scores that term 0 (a defined score: the completion made the verifier hang or blow
    up). An error is an infrastructure failure: the sample is masked, never scored as 0.
    """

    reward: float
    terms: dict[str, float] = field(default_factory=dict)
    timeouts: list[str] = field(default_factory=list)
    over_limit: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def masked(self) -> bool:
        return bool(self.errors)
