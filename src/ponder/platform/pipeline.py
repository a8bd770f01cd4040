"""The streaming half of the driver: keeps the rollout pool busy and hands the learner batches out of the buffer.

Backpressure is credit: at most `max_staleness + 1` steps' worth of groups are alive (submitted, neither trained nor
dropped), plus at most one batch of refill when groups were dropped; so the buffer is bounded and no engine works on
prompts that could only arrive too stale. Each prompt batch carries the oldest weights allowed to start it
(`min_version` = the step expected to train it, minus one, minus `max_staleness`); the buffer drops whatever still
ends up older than the bound. The engines deliver groups to the buffer, which has them scored; this class only moves
refs and counts.

Modes: `one_step_off` = bound 1, updates wait for in-flight samples to finish; `async` = the configured bound, and
with `partial_rollouts` an update lands at the engines' next decode step (in-flight samples continue on it).
A rollout engine that dies or comes back from a restart gets the newest weights and its undelivered groups again
(`_recover_lost`); the buffer scores again a group whose reward actor died.
Talks to the rollout actors (stream, load_weights, pid) and the buffer actor (take, counts, delivered, close).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import ray
from ray.exceptions import RayActorError

from ponder.actors.buffer import Batch
from ponder.actors.rollout import Sampling
from ponder.data.stream import split_even
from ponder.platform.config import PipelineConfig
from ponder.platform.pools import RewardPool, RolloutPool
from ponder.types import RolloutRequest, WeightsVersion


STALL_S = 900.0  # no group arriving for this long while a batch is awaited: the run stops and says so


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

    def __init__(self, schedule: Schedule, prompts: Callable[[int], list[RolloutRequest]], rollouts: RolloutPool,
                 rewards: RewardPool, buffer, sampling: Sampling, groups_per_step: int, start_step: int = 1,
                 batches_drawn: int = 0):
        """`rollouts`, `rewards`: the pools (their restarts are counted, a restarted engine readied). `start_step`,
        `batches_drawn`: where a resumed run goes on (its first step, the prompt batches its earlier attempts took);
        nothing is alive at the start."""
        self.schedule, self.prompts, self.sampling, self.buffer = schedule, prompts, sampling, buffer
        self.rollout_pool, self.rollouts = rollouts, rollouts.actors
        self.reward_pool, self.rewards = rewards, rewards.actors
        self.groups_per_step = groups_per_step
        self.start_step, self.batches_at_start = start_step, batches_drawn
        self.batches_submitted = batches_drawn
        self._acks: list = []
        self.reissued = 0  # groups generated again after their engine died
        self._sent: dict[int, tuple[int, RolloutRequest, int]] = {}  # group id -> (engine, request, min_version)

    def next_batch(self, step: int, poll_s: float = 0.5) -> Batch:
        self._fill(step)
        refills, progress, since = 0, None, time.monotonic()
        while (batch := ray.get(self.buffer.take.remote(self.groups_per_step, step, poll_s))) is None:
            self._recover_lost()
            counts = ray.get(self.buffer.counts.remote())
            refills += self._fill(step, counts)  # only dropped groups make room for more
            if (counts["samples/generated"], counts["groups/dropped"]) != progress:
                progress, since = (counts["samples/generated"], counts["groups/dropped"]), time.monotonic()
            elif time.monotonic() - since > STALL_S:
                raise PipelineError(f"step {step}: no group reached the buffer in {STALL_S:.0f} s although "
                                    f"{self.groups_per_step} are needed; the rollout actors' logs (Ray's session log "
                                    "directory, or cluster.log_to_driver=true) say why")
            if refills > self.schedule.max_refill_batches:
                raise PipelineError(
                    f"step {step}: {refills} extra prompt batches did not give {self.groups_per_step} usable groups "
                    f"(dropped so far: {counts['samples/dropped_zero_variance']:.0f} samples with equal rewards, "
                    f"{counts['samples/dropped_stale']:.0f} stale). With dynamic sampling every group whose samples all "
                    "score the same is dropped: the task is too easy or too hard for this model. Raise "
                    "rollout.samples_per_prompt, use easier/harder prompts, or set pipeline.dynamic_sampling=false "
                    "(pipeline.max_refill_batches raises the limit).")
        for actor, pid in ray.get(self.buffer.scorers.remote()):  # a reward actor's restart shows in its reports
            self.reward_pool.fanout.observe(self.rewards.index(actor), pid)
        return batch

    def _fill(self, step: int, counts: dict[str, float] | None = None) -> int:
        """Submit prompt batches until (max_staleness + 1) steps of groups are alive; returns how many. `counts`: the
        buffer's, if just read."""
        g = self.groups_per_step
        dropped = int((counts or ray.get(self.buffer.counts.remote()))["groups/dropped"])
        alive = (self.batches_submitted - self.batches_at_start) * g - (step - self.start_step) * g - dropped
        submitted = 0
        while alive < (self.schedule.max_staleness + 1) * g:
            expected_step = step + alive // g
            min_version = max(0, expected_step - 1 - self.schedule.max_staleness)
            self.batches_submitted += 1
            requests = self.prompts(self.batches_submitted)
            for engine, shard in enumerate(split_even(requests, len(self.rollouts))):
                self._stream(engine, shard, min_version)
            alive += g
            submitted += 1
        # Groups of batches older than this can no longer be trained: no need to keep them for re-issuing.
        oldest = (step - self.schedule.max_staleness - 2) * g
        self._sent = {gid: sent for gid, sent in self._sent.items() if gid >= oldest}
        return submitted

    def _stream(self, engine: int, requests: list[RolloutRequest], min_version: int) -> None:
        self._sent.update({req.group_id: (engine, req, min_version) for req in requests})
        self.rollouts[engine].stream.remote(requests, self.sampling, min_version, self.rewards, self.buffer)

    def _recover_lost(self) -> None:
        """Re-issue the undelivered groups of an engine that died or came back from a restart (it lost them and its
        weights). Seeds are per (step, prompt, sample): a re-issued group samples what the lost one would have. (A
        group whose reward actor died is scored again by the buffer.)"""
        for engine in range(len(self.rollouts)):
            if self.rollout_pool.fanout.check(engine):  # restarted: the pool gave it the newest weights
                owned = [gid for gid, (owner, _, _) in self._sent.items() if owner == engine]
                self._reissue(sorted(set(owned) - ray.get(self.buffer.delivered.remote(owned))))

    def _reissue(self, group_ids: list[int]) -> None:
        self.reissued += len(group_ids)
        for gid in group_ids:
            engine, request, min_version = self._sent[gid]
            self._stream(engine, [request], min_version)

    def settle(self) -> None:
        """Wait until every engine serves the newest pushed weights (an engine that died gets them again). Held-out
        evaluation in the streaming modes starts from here."""
        try:
            ray.get(self._acks)
        except RayActorError:
            self._recover_lost()
        self._acks = []

    def push(self, handle: WeightsVersion) -> None:
        """Hand new weights to every engine without waiting for them to load (a refused push raises at the next one).
        Engines verify off their decode thread and pause decoding only for the reload itself."""
        self.settle()
        self.rollout_pool.adopt(handle)
        self._acks = [w.load_weights.remote(handle, self.schedule.interrupt) for w in self.rollouts]

    def close(self) -> dict[str, float]:
        """Final accounting: groups still buffered count as dropped (`run_ended`); requests still inside an engine
        were never generated and are reported as `samples/unfinished`."""
        counts = ray.get(self.buffer.close.remote())
        submitted = (self.batches_submitted - self.batches_at_start) * self.groups_per_step * self.sampling.n
        counts["samples/unfinished"] = submitted - counts["samples/generated"]
        return counts
