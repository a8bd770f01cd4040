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


@dataclass(frozen=True)
class Schedule:
    max_staleness: int
    interrupt: bool  # partial rollouts: weight updates land mid-generation

    @classmethod
    def of(cls, cfg: PipelineConfig) -> "Schedule":
        if cfg.mode == "one_step_off":
            return cls(max_staleness=1, interrupt=False)
        return cls(max_staleness=cfg.max_staleness, interrupt=cfg.partial_rollouts)


class StreamingRollouts:
    """`next_batch(step)` → a Batch of `groups_per_step` whole groups; `push(handle)` → weights to every engine."""

    def __init__(self, schedule: Schedule, prompts: Callable[[int], list[RolloutRequest]], rollouts: list,
                 rewards: list, buffer, sampling: Sampling, groups_per_step: int):
        self.schedule, self.prompts, self.sampling = schedule, prompts, sampling
        self.rollouts, self.rewards, self.buffer = rollouts, rewards, buffer
        self.groups_per_step = groups_per_step
        self.batches_submitted = 0
        self._acks: list = []

    def next_batch(self, step: int, poll_s: float = 0.5) -> Batch:
        while True:
            self._fill(step)
            batch = ray.get(self.buffer.take.remote(self.groups_per_step, step, poll_s))
            if batch is not None:
                return batch
            ray.get([w.stats.remote() for w in self.rollouts])  # an engine that died raises here, with its cause

    def _fill(self, step: int) -> None:
        """Submit prompt batches until (max_staleness + 1) steps of groups are alive."""
        g = self.groups_per_step
        dropped = int(ray.get(self.buffer.counts.remote())["groups/dropped"])
        alive = self.batches_submitted * g - (step - 1) * g - dropped
        while alive < (self.schedule.max_staleness + 1) * g:
            expected_step = step + alive // g
            min_version = max(0, expected_step - 1 - self.schedule.max_staleness)
            self.batches_submitted += 1
            requests = self.prompts(self.batches_submitted)
            for worker, shard in zip(self.rollouts, split_even(requests, len(self.rollouts))):
                worker.stream.remote(shard, self.sampling, min_version, self.rewards, self.buffer)
            alive += g

    def push(self, handle: WeightsVersion) -> None:
        """Hand new weights to every engine without waiting for them to load (a refused push raises at the next one).
        Engines verify off their decode thread and pause decoding only for the reload itself."""
        ray.get(self._acks)
        self._acks = [w.load_weights.remote(handle, self.schedule.interrupt) for w in self.rollouts]

    def close(self) -> dict[str, float]:
        """Final accounting: groups still buffered count as dropped (`run_ended`); requests still inside an engine
        were never generated and are reported as `samples/unfinished`."""
        counts = ray.get(self.buffer.close.remote())
        submitted = self.batches_submitted * self.groups_per_step * self.sampling.n
        counts["samples/unfinished"] = submitted - counts["samples/generated"]
        return counts
