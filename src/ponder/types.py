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
    max_tokens: Optional[int] = None  # per-request length cap (benchmarks with a long-tailed length mix)
    thinking_budget: Optional[int] = None  # per-request thinking budget (overrides the sampling's; budget forcing)
    chat: bool = False  # prompt_text is a user message: the engine renders it with the model's own chat template


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
    policy_version: int  # the oldest weights that produced any of its tokens (what staleness is measured from)
    token_versions: list[int] = field(default_factory=list)  # per response token: the weights that sampled it
    reward: float = 0.0
    reward_terms: dict[str, float] = field(default_factory=dict)
    correct: bool = False
    masked: bool = False  # infrastructure failure while scoring: excluded from the loss, never scored as 0
    # per-step critic scores (dense rewards): (end of the step as a response-token index, exclusive; score)
    step_scores: list[tuple[int, float]] = field(default_factory=list)
    # per response token: 1 sampled by the policy, 0 written by the environment (budget forcing's closing text and
    # answer prefix, its continuation cues). Empty: all sampled. Environment tokens are never trained on.
    sampled_mask: list[int] = field(default_factory=list)
    thinking_tokens: Optional[int] = None  # response tokens before the think block closed; None: it never closed
    forced_answer: bool = False  # the thinking budget ran out and the answer was forced
    max_tokens: int = 0  # the length cap this sample was generated under (length penalties are relative to it)
    # Multi-turn episodes (rollout.env). `attempts`: the texts of the model turns the environment marked as answers,
    # scored in order by the reward actor (empty: the response is the one answer); `attempts_correct` is its verdict
    # on each. `episode_end`: done, max_turns, max_tokens or env_error ("" for a single turn).
    turns: int = 1
    attempts: list[str] = field(default_factory=list)
    attempts_correct: list[bool] = field(default_factory=list)
    episode_end: str = ""
    env_metrics: dict[str, float] = field(default_factory=dict)  # summed over the episode (tool calls, tool seconds)
    mask_reason: str = ""  # why the sample is masked (an environment's failure, a verifier's error)


@dataclass(frozen=True)
class CriticRequest:
    """What a critic scores: the prompt, the response, and the response's policy tokens (steps are token ranges)."""

    prompt: str
    response: str
    response_ids: list[int]


@dataclass(frozen=True)
class CriticScore:
    """A critic's verdict on one response. `value` None: no usable score (a judge's unparseable output)."""

    value: Optional[float]
    steps: tuple[tuple[int, float], ...] = ()  # per-step mode: (step end, exclusive response-token index; score)


@dataclass(frozen=True)
class WeightsVersion:
    """A published set of policy weights: which transport carries them, where they are, and how to check them.
    Only `ponder.transport` reads `kind` and `location`."""

    version: int
    kind: str  # the transport: shm, network or nccl
    # shm: the directory; network: (address, port, token) of the sender; nccl: None (the bytes went in-band)
    location: Any
    checksum: str
    num_bytes: int
    tensors: dict[str, tuple[str, tuple[int, ...]]]  # name -> (dtype, shape)
    fetchable: bool = True  # an engine can load it on its own (False for NCCL: a restarted engine cannot rejoin)


@dataclass(frozen=True)
class GroupMeta:
    """What the trajectory buffer knows of a finished group without loading it: enough to account and to bound
    staleness."""

    group_id: int
    num_samples: int
    min_version: int
    max_version: int
    num_tokens: int

    @classmethod
    def of(cls, group: list["Trajectory"]) -> "GroupMeta":
        versions = [v for t in group for v in (t.token_versions or [t.policy_version])]
        return cls(group[0].group_id, len(group), min(versions), max(versions), sum(len(t.response_ids) for t in group))


@dataclass(frozen=True)
class GenerationReport:
    """The rollout actor's small companion to a generated batch, which the driver waits on (platform/pools.py)."""

    tokens: int  # generated
    oldest_version: int  # the oldest weights any of its tokens was sampled with
    pid: int  # the engine's process: a new one once Ray has restarted the actor


@dataclass(frozen=True)
class ScoreReport:
    """The reward actor's small companion to a scored batch: counts for logging, rewards for dynamic sampling, and
    the process that scored it (a new one once Ray has restarted the actor: platform/pools.py counts restarts so)."""

    counts: dict[str, float]
    rewards: tuple[float, ...]
    masked: int
    pid: int = 0
    env_masked: int = 0  # of the masked samples, those an environment's failure masked (multi-turn episodes)

    @property
    def zero_variance(self) -> bool:
        """All rewards equal: GRPO advantages are all zero, so the group teaches nothing."""
        return max(self.rewards) - min(self.rewards) < 1e-9 if self.rewards else True
