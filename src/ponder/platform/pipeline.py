"""The streaming half of the driver: keeps the rollout pool busy and hands the learner batches out of the buffer.

Backpressure is credit: at most `max_staleness + 1` steps' worth of groups are alive (submitted, neither trained nor
dropped), plus at most one batch of refill when groups were dropped; so the buffer is bounded and no engine works on
prompts that could only arrive too stale. Each prompt batch carries the oldest weights allowed to start it
(`Staleness.oldest_weights` of the step expected to train it, the rule the buffer drops by); the buffer drops whatever
still ends up older than the bound. The engines deliver groups to the buffer, which has them scored; this class only
moves requests and counts.

Modes: `one_step_off` = bound 1, updates wait for in-flight samples to finish; `async` = the configured bound, and
with `partial_rollouts` an update lands at the engines' next decode step (in-flight samples continue on it).
A rollout engine that dies or comes back from a restart gets the newest weights and its undelivered groups again
(`_recover_lost`); the buffer scores again a group whose reward actor died.

`StreamingRollouts` holds the rules and reaches the actors through two small ports, `Engines` and the buffer's plain
methods, so a unit test drives it with fakes; `StreamingRollouts.on_ray` wires it to the rollout pool and the buffer
actor (`RayEngines`, `Remote`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Protocol

import ray
from ray.exceptions import RayActorError

from ponder.actors.buffer import Batch, Staleness
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

    @property
    def staleness(self) -> Staleness:
        return Staleness(self.max_staleness)


class Engines(Protocol):
    """The rollout side of the stream."""

    count: int

    def stream(self, engine: int, requests: list[RolloutRequest], min_version: int) -> None:
        """Engine `engine` generates these groups from weights of at least `min_version` and delivers them to the
        buffer; returns at once."""

    def restarted(self, engine: int) -> bool:
        """Whether the engine came back from a restart since it last answered (it lost its undelivered groups); it
        is given the newest weights before this returns."""

    def push(self, handle: WeightsVersion, interrupt: bool) -> None:
        """New weights to every engine, without waiting for them to load."""

    def settle(self) -> bool:
        """Wait until every engine serves the last pushed weights; False if one died meanwhile."""


class StreamingRollouts:
    """`next_batch(step)` → a Batch of `groups_per_step` whole groups; `push(handle)` → weights to every engine.
    `buffer`: the trajectory buffer's take / counts / delivered / close as plain calls."""

    def __init__(self, schedule: Schedule, prompts: Callable[[int], list[RolloutRequest]], engines: Engines, buffer,
                 groups_per_step: int, samples_per_group: int, start_step: int = 1, batches_drawn: int = 0,
                 clock: Callable[[], float] = time.monotonic):
        """`start_step`, `batches_drawn`: where a resumed run goes on (its first step, the prompt batches its earlier
        attempts took); nothing is alive at the start."""
        self.schedule, self.prompts, self.engines, self.buffer = schedule, prompts, engines, buffer
        self.groups_per_step, self.samples_per_group = groups_per_step, samples_per_group
        self.start_step, self.batches_at_start = start_step, batches_drawn
        self.batches_submitted = batches_drawn
        self.clock = clock
        self.reissued = 0  # groups generated again after their engine died
        # undelivered group id -> (engine, request, min_version): what a restarted engine must generate again
        self._sent: dict[int, tuple[int, RolloutRequest, int]] = {}

    @classmethod
    def on_ray(cls, schedule: Schedule, prompts: Callable[[int], list[RolloutRequest]], rollouts: RolloutPool,
               rewards: RewardPool, buffer, sampling: Sampling, groups_per_step: int, start_step: int = 1,
               batches_drawn: int = 0) -> "StreamingRollouts":
        """The stream over the rollout pool and the buffer actor `buffer`."""
        return cls(schedule, prompts, RayEngines(rollouts, rewards, buffer, sampling), Remote(buffer), groups_per_step,
                   sampling.n, start_step, batches_drawn)

    def next_batch(self, step: int, poll_s: float = 0.5) -> Batch:
        self._fill(step)
        refills, progress, since = 0, None, self.clock()
        while (batch := self.buffer.take(self.groups_per_step, step, poll_s)) is None:
            self._recover_lost()
            counts = self.buffer.counts()
            refills += self._fill(step, counts)  # only dropped groups make room for more
            if (counts["samples/generated"], counts["groups/dropped"]) != progress:
                progress, since = (counts["samples/generated"], counts["groups/dropped"]), self.clock()
            elif self.clock() - since > STALL_S:
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
        # A delivered group is the buffer's from now on: only undelivered ones may need re-issuing.
        for gid in self.buffer.delivered(list(self._sent)):
            del self._sent[gid]
        return batch

    def _alive(self, step: int, dropped: int) -> int:
        """Groups submitted and neither trained (before `step`) nor dropped."""
        g = self.groups_per_step
        return (self.batches_submitted - self.batches_at_start) * g - (step - self.start_step) * g - dropped

    def _fill(self, step: int, counts: dict[str, float] | None = None) -> int:
        """Submit prompt batches until (max_staleness + 1) steps of groups are alive; returns how many. `counts`: the
        buffer's, if just read."""
        g = self.groups_per_step
        alive = self._alive(step, int((counts or self.buffer.counts())["groups/dropped"]))
        submitted = 0
        while alive < (self.schedule.max_staleness + 1) * g:
            min_version = self.schedule.staleness.oldest_weights(step + alive // g)  # the step expected to train it
            self.batches_submitted += 1
            requests = self.prompts(self.batches_submitted)
            for engine, shard in enumerate(split_even(requests, self.engines.count)):
                self._stream(engine, shard, min_version)
            alive += g
            submitted += 1
        return submitted

    def _stream(self, engine: int, requests: list[RolloutRequest], min_version: int) -> None:
        self._sent.update({req.group_id: (engine, req, min_version) for req in requests})
        self.engines.stream(engine, requests, min_version)

    def _recover_lost(self) -> None:
        """Re-issue the undelivered groups of an engine that died or came back from a restart (it lost them and its
        weights). Seeds are per (step, prompt, sample): a re-issued group samples what the lost one would have. (A
        group whose reward actor died is scored again by the buffer.)"""
        for engine in range(self.engines.count):
            if self.engines.restarted(engine):
                owned = [gid for gid, (owner, _, _) in self._sent.items() if owner == engine]
                self._reissue(sorted(set(owned) - self.buffer.delivered(owned)))

    def _reissue(self, group_ids: list[int]) -> None:
        self.reissued += len(group_ids)
        for gid in group_ids:
            engine, request, min_version = self._sent[gid]
            self._stream(engine, [request], min_version)

    def settle(self) -> None:
        """Wait until every engine serves the newest pushed weights (an engine that died gets them again). Held-out
        evaluation in the streaming modes starts from here."""
        if not self.engines.settle():
            self._recover_lost()

    def push(self, handle: WeightsVersion) -> None:
        """Hand new weights to every engine without waiting for them to load (a refused push raises at the next one).
        Engines verify off their decode thread and pause decoding only for the reload itself."""
        self.settle()
        self.engines.push(handle, self.schedule.interrupt)

    def close(self) -> dict[str, float]:
        """Final accounting: groups still buffered count as dropped (`run_ended`); requests still inside an engine
        were never generated and are reported as `samples/unfinished`."""
        counts = self.buffer.close()
        submitted = (self.batches_submitted - self.batches_at_start) * self.groups_per_step * self.samples_per_group
        counts["samples/unfinished"] = submitted - counts["samples/generated"]
        return counts


class RayEngines:
    """`Engines` over the rollout pool: engines stream into the buffer actor, which has the reward pool score."""

    def __init__(self, rollouts: RolloutPool, rewards: RewardPool, buffer, sampling: Sampling):
        self.pool, self.rewards, self.buffer, self.sampling = rollouts, rewards, buffer, sampling
        self.count = len(rollouts.actors)
        self._acks: list = []

    def stream(self, engine: int, requests: list[RolloutRequest], min_version: int) -> None:
        self.pool.actors[engine].stream.remote(requests, self.sampling, min_version, self.rewards.actors, self.buffer)

    def restarted(self, engine: int) -> bool:
        return self.pool.fanout.check(engine)  # a restarted engine is given the pool's newest weights

    def push(self, handle: WeightsVersion, interrupt: bool) -> None:
        self.pool.adopt(handle)
        self._acks = [w.load_weights.remote(handle, interrupt) for w in self.pool.actors]

    def settle(self) -> bool:
        acks, self._acks = self._acks, []
        try:
            ray.get(acks)
        except RayActorError:
            return False
        return True


class Remote:
    """An actor's methods as plain blocking calls."""

    def __init__(self, actor):
        self.actor = actor

    def __getattr__(self, name: str):
        method = getattr(self.actor, name)
        return lambda *args: ray.get(method.remote(*args))
