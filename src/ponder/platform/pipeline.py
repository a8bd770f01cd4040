"""The streaming half of the driver: keeps the rollout pool busy and hands the learner batches out of the buffer.

Backpressure is credit: at most `max_staleness + 1` steps' worth of groups are alive (submitted, neither trained nor
dropped), plus at most one batch of refill when groups were dropped; so the buffer is bounded and no engine works on
prompts that could only arrive too stale. Each prompt batch carries the oldest weights allowed to start it
(`min_version` = the step expected to train it, minus one, minus `max_staleness`); the buffer drops whatever still
ends up older than the bound. The engines score and deliver groups themselves; this class only moves refs and counts.

Modes: `one_step_off` = bound 1, updates wait for in-flight samples to finish; `async` = the configured bound, and
with `partial_rollouts` an update lands at the engines' next decode step (in-flight samples continue on it).
Talks to the rollout actors (stream, load_weights, stats) and the buffer actor (take, counts, close).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import ray

from ponder.actors.buffer import Batch
from ponder.actors.rollout import Sampling
from ponder.data.stream import split_even
from ponder.platform.config import PipelineConfig
from ponder.types import RolloutRequest, WeightsVersion


class PipelineError(RuntimeError):
    """The stream cannot produce a batch; the message says why and what to change."""


@dataclass(frozen=True)
class Schedule:
    max_staleness: int
    interrupt: bool  # partial rollouts: weight updates land mid-generation
    max_refill_batches: int = 8  # extra prompt batches one step may draw when groups are dropped

    @classmethod
    def of(cls, cfg: PipelineConfig) -> "Schedule":
        if cfg.mode == "one_step_off":
            return cls(1, False, cfg.max_refill_batches)
        return cls(cfg.max_staleness, cfg.partial_rollouts, cfg.max_refill_batches)


class StreamingRollouts:
    """`next_batch(step)` → a Batch of `groups_per_step` whole groups; `push(handle)` → weights to every engine."""

    def __init__(self, schedule: Schedule, prompts: Callable[[int], list[RolloutRequest]], rollouts: list,
                 rewards: list, buffer, sampling: Sampling, groups_per_step: int, start_step: int = 1,
                 batches_drawn: int = 0):
        """`start_step`, `batches_drawn`: where a resumed run goes on (its first step, the prompt batches its earlier
        attempts took); nothing is alive at the start."""
        self.schedule, self.prompts, self.sampling = schedule, prompts, sampling
        self.rollouts, self.rewards, self.buffer = rollouts, rewards, buffer
        self.groups_per_step = groups_per_step
        self.start_step, self.batches_at_start = start_step, batches_drawn
        self.batches_submitted = batches_drawn
        self._acks: list = []

    def next_batch(self, step: int, poll_s: float = 0.5) -> Batch:
        self._fill(step)
        refills = 0
        while (batch := ray.get(self.buffer.take.remote(self.groups_per_step, step, poll_s))) is None:
            ray.get([w.stats.remote() for w in self.rollouts])  # an engine that died raises here, with its cause
            refills += self._fill(step)  # only dropped groups make room for more
            if refills > self.schedule.max_refill_batches:
                counts = ray.get(self.buffer.counts.remote())
                raise PipelineError(
                    f"step {step}: {refills} extra prompt batches did not give {self.groups_per_step} usable groups "
                    f"(dropped so far: {counts['samples/dropped_zero_variance']:.0f} samples with equal rewards, "
                    f"{counts['samples/dropped_stale']:.0f} stale). With dynamic sampling every group whose samples all "
                    "score the same is dropped: the task is too easy or too hard for this model. Raise "
                    "rollout.samples_per_prompt, use easier/harder prompts, or set pipeline.dynamic_sampling=false "
                    "(pipeline.max_refill_batches raises the limit).")
        return batch

    def _fill(self, step: int) -> int:
        """Submit prompt batches until (max_staleness + 1) steps of groups are alive; returns how many."""
        g = self.groups_per_step
        dropped = int(ray.get(self.buffer.counts.remote())["groups/dropped"])
        alive = (self.batches_submitted - self.batches_at_start) * g - (step - self.start_step) * g - dropped
        submitted = 0
        while alive < (self.schedule.max_staleness + 1) * g:
            expected_step = step + alive // g
            min_version = max(0, expected_step - 1 - self.schedule.max_staleness)
            self.batches_submitted += 1
            requests = self.prompts(self.batches_submitted)
            for worker, shard in zip(self.rollouts, split_even(requests, len(self.rollouts))):
                worker.stream.remote(shard, self.sampling, min_version, self.rewards, self.buffer)
            alive += g
            submitted += 1
        return submitted

    def push(self, handle: WeightsVersion) -> None:
        """Hand new weights to every engine without waiting for them to load (a refused push raises at the next one).
        Engines verify off their decode thread and pause decoding only for the reload itself."""
        ray.get(self._acks)
        self._acks = [w.load_weights.remote(handle, self.schedule.interrupt) for w in self.rollouts]

    def close(self) -> dict[str, float]:
        """Final accounting: groups still buffered count as dropped (`run_ended`); requests still inside an engine
        were never generated and are reported as `samples/unfinished`."""
        counts = ray.get(self.buffer.close.remote())
        submitted = (self.batches_submitted - self.batches_at_start) * self.groups_per_step * self.sampling.n
        counts["samples/unfinished"] = submitted - counts["samples/generated"]
        return counts
