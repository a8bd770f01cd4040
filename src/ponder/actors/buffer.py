"""The trajectory buffer: finished groups waiting between the rollout actors and the learner, scored on the way.

Rollout actors `put` each finished group with its `GroupMeta` and the reward actor to score it; the buffer asks that
actor to score it and holds the two refs that come back (the scored trajectories and their `ScoreReport`). The driver
`take`s a training batch of whole groups as refs and hands them to the learner ranks, so the trajectories never pass
through the driver. The buffer, not the engine, owns those refs: they outlive an engine that dies. The group is the
unit throughout (GRPO normalises within it).

The buffer owns the streaming pipeline's accounting (`Ledger`): every generated sample is trained on or dropped with a
reason — `stale` (older than `max_staleness` versions when its step came), `zero_variance` (dynamic sampling: all
rewards equal, so zero advantage), `reward_error` (a failed reward masked it), `env_error` (a multi-turn episode's
environment failed), `run_ended` (still here at the end).
It is bounded by the producer's credit (platform/pipeline.py): no more than (max_staleness + 2) steps of groups are
ever alive. `Staleness` is the one staleness rule: the buffer drops by it, the pipeline starts batches by it. A threaded
actor (Ray is applied in platform/cluster.py); a reward that raised surfaces from `take`. A group whose reward actor
died while scoring it is scored again once Ray has restarted the actor (`ft/groups_rescored`); a group put twice (an
engine's re-issued work that had arrived after all) is counted once. The buffer reaches the reward actors only through
its `Scoring` (Ray's by default), so its admission, drop and rescore rules run in a unit test without Ray.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional, Protocol

from ponder.types import GroupMeta, ScoreReport

# unverified: STaR kept neither the sample nor a duplicate of it (a wrong answer, a rationale quoting its hint)
DROP_REASONS = ("stale", "zero_variance", "reward_error", "env_error", "run_ended", "unverified")
RESCORE_WAIT_S = 600.0  # how long a group waits for its restarted reward actor before the run fails


class Ledger:
    """Sample counts: generated = trained + Σ dropped[reason] + buffered, at every moment.

    >>> ledger = Ledger()
    >>> ledger.generated(16); ledger.trained(8, masked=1); ledger.dropped("stale", 8)
    >>> ledger.as_metrics()["samples/dropped_reward_error"], ledger.as_metrics()["samples/buffered"]
    (1.0, 0.0)
    """

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    @classmethod
    def of(cls, metrics: dict[str, float]) -> "Ledger":
        """The ledger whose `as_metrics()` gave `metrics` (a resumed run's counts so far).

        >>> Ledger.of({"samples/generated": 16.0, "samples/trained": 8.0, "groups/dropped": 1.0}).as_metrics()["samples/buffered"]
        8.0
        """
        ledger = cls()
        for key, value in metrics.items():
            name = "groups_dropped" if key == "groups/dropped" else key.split("/", 1)[1]
            if name in ("generated", "trained", "groups_dropped") or name.startswith("dropped_"):
                ledger.counts[name] = value
        return ledger

    def generated(self, samples: int) -> None:
        self.counts["generated"] += samples

    def trained(self, samples: int, masked: int = 0, env_masked: int = 0) -> None:
        """A trained group's masked samples carry no loss: they count as dropped, for `env_error` where their
        environment failed (`env_masked` of them) and for `reward_error` otherwise."""
        self.counts["trained"] += samples - masked
        self.counts["dropped_reward_error"] += masked - env_masked
        self.counts["dropped_env_error"] += env_masked

    def dropped(self, reason: str, samples: int, groups: int = 1) -> None:
        if reason not in DROP_REASONS:
            raise ValueError(f"unknown drop reason {reason!r}; one of {DROP_REASONS}")
        self.counts[f"dropped_{reason}"] += samples
        self.counts["groups_dropped"] += groups

    def as_metrics(self) -> dict[str, float]:
        out = {f"samples/{k}": float(self.counts[k]) for k in ("generated", "trained")}
        out.update({f"samples/dropped_{r}": float(self.counts[f"dropped_{r}"]) for r in DROP_REASONS})
        out["samples/buffered"] = out["samples/generated"] - out["samples/trained"] - sum(
            out[f"samples/dropped_{r}"] for r in DROP_REASONS)
        out["groups/dropped"] = float(self.counts["groups_dropped"])
        return out


@dataclass(frozen=True)
class Staleness:
    """The staleness rule. Training step k runs on the learner's version k - 1; a group's staleness at step k is how
    many versions the oldest weights that sampled any of its tokens lag behind that; a group may train at step k only
    if its staleness is at most `bound`.

    >>> rule = Staleness(bound=1)
    >>> rule.oldest_weights(step=5), rule.admits(GroupMeta(0, 4, 3, 4, 10), step=5), rule.of(GroupMeta(0, 4, 2, 4, 10), 5)
    (3, True, 2)
    """

    bound: int

    def of(self, meta: GroupMeta, step: int) -> int:
        return (step - 1) - meta.min_version

    def admits(self, meta: GroupMeta, step: int) -> bool:
        return self.of(meta, step) <= self.bound

    def oldest_weights(self, step: int) -> int:
        """The oldest weights a group may start on if it is to be trained at `step`."""
        return max(0, step - 1 - self.bound)


class Scoring(Protocol):
    """How the buffer has groups scored: `submit` asks a reward actor (returns two refs: the scored group and its
    ScoreReport); `wait` returns, of the given report refs, those finished within `wait_s` with their value, None for
    one whose reward actor died (a reward function's exception is raised)."""

    def submit(self, reward, group: list) -> tuple: ...

    def wait(self, reports: list, wait_s: float) -> dict: ...


class RayScoring:
    def submit(self, reward, group: list) -> tuple:
        return tuple(reward.score.options(num_returns=2).remote(group))

    def wait(self, reports: list, wait_s: float) -> dict:
        import ray

        ray.wait(reports, num_returns=1, timeout=wait_s, fetch_local=False)
        done, _ = ray.wait(reports, num_returns=len(reports), timeout=0)
        return {ref: _report(ref) for ref in done}


@dataclass
class Batch:
    """One training step's groups, as refs to scored trajectory lists, sorted by group id, with their metadata."""

    refs: list
    metas: list[GroupMeta]
    metrics: dict[str, float] = field(default_factory=dict)


class TrajectoryBuffer:
    def __init__(self, max_staleness: int, dynamic_sampling: bool, scoring: Optional[Scoring] = None):
        self.staleness, self.dynamic_sampling = Staleness(max_staleness), dynamic_sampling
        self.scoring = scoring or RayScoring()
        self.ledger = Ledger()
        self._lock = threading.Lock()
        self._scoring: list[_Scoring] = []  # asked to be scored, not yet back
        self._ready: list[tuple[GroupMeta, object, ScoreReport]] = []  # scored and kept, in arrival order
        self._delivered: set[int] = set()  # group ids put here
        self._scorers: dict = {}  # reward actor -> the process its latest report came from
        self.rescored = 0

    def put(self, meta: GroupMeta, group: list, reward) -> None:
        with self._lock:
            if meta.group_id in self._delivered:
                return  # re-issued after its engine was restarted, but the first one had arrived: keep one
            self._delivered.add(meta.group_id)
            self.ledger.generated(meta.num_samples)
            self._scoring.append(_Scoring(self.scoring, meta, group, reward))

    def delivered(self, group_ids: list[int]) -> set[int]:
        """Which of these groups reached the buffer (a restarted engine's others are generated again)."""
        with self._lock:
            return self._delivered.intersection(group_ids)

    def take(self, num_groups: int, step: int, timeout_s: float) -> Batch | None:
        """`num_groups` groups for training step `step` (the learner then holds version step - 1), oldest weights
        first, or None if they are not there within `timeout_s`. Groups too stale for `step` are dropped on the way."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._collect_scored(wait_s=min(0.05, max(0.0, deadline - time.monotonic())))
            with self._lock:
                for meta, _, _ in [g for g in self._ready if not self.staleness.admits(g[0], step)]:
                    self.ledger.dropped("stale", meta.num_samples)
                self._ready = [g for g in self._ready if self.staleness.admits(g[0], step)]
                if len(self._ready) >= num_groups:
                    # Oldest weights first (arrival order among equals): the group closest to the bound is trained
                    # before a fresher one that finished earlier, instead of going stale behind it.
                    self._ready.sort(key=lambda g: g[0].min_version)
                    taken, self._ready = self._ready[:num_groups], self._ready[num_groups:]
                    return self._batch(taken, step)
            if time.monotonic() >= deadline:
                return None

    def _batch(self, taken: list, step: int) -> Batch:
        taken.sort(key=lambda g: g[0].group_id)
        for meta, _, report in taken:
            self.ledger.trained(meta.num_samples, masked=report.masked, env_masked=report.env_masked)
        stale = [self.staleness.of(meta, step) for meta, _, _ in taken]
        metrics = {"pipeline/staleness_mean": sum(stale) / len(stale), "pipeline/staleness_max": float(max(stale)),
                   "pipeline/buffered_groups": float(len(self._ready)),
                   "pipeline/scoring_groups": float(len(self._scoring)), "ft/groups_rescored": float(self.rescored),
                   **self.ledger.as_metrics()}
        for name, value in sum((Counter(r.counts) for _, _, r in taken), Counter()).items():
            metrics[name] = float(value)
        return Batch(refs=[scored for _, scored, _ in taken], metas=[meta for meta, _, _ in taken], metrics=metrics)

    def _collect_scored(self, wait_s: float) -> None:
        """Move groups whose reward has arrived to the ready list (or drop them: dynamic sampling); score again those
        whose reward actor died."""
        with self._lock:
            for g in self._scoring:
                g.resubmit_if_due()
            pending = [g.report for g in self._scoring if g.report is not None]
        if not pending:
            time.sleep(wait_s)
            return
        reports = self.scoring.wait(pending, wait_s)  # a reward function's exception surfaces here, with its cause
        with self._lock:
            still = []
            for g in self._scoring:
                if g.report is None or g.report not in reports:
                    still.append(g)
                elif reports[g.report] is None:  # its reward actor died or is restarting: ask it again
                    if time.monotonic() - g.since > RESCORE_WAIT_S:
                        raise RuntimeError(f"group {g.meta.group_id}: its reward actor did not come back in "
                                           f"{RESCORE_WAIT_S:.0f} s")
                    g.score_again()
                    self.rescored += 1
                    still.append(g)
                else:
                    self._keep(g, reports[g.report])
            self._scoring = still

    def _keep(self, g: "_Scoring", report: ScoreReport) -> None:
        self._scorers[g.reward] = report.pid
        if self.dynamic_sampling and report.zero_variance:
            self.ledger.dropped("zero_variance", g.meta.num_samples)
        else:
            self._ready.append((g.meta, g.scored, report))

    def scorers(self) -> list[tuple[object, int]]:
        """(reward actor, the process of its latest report): the driver counts a reward actor's restarts from it."""
        with self._lock:
            return list(self._scorers.items())

    def counts(self) -> dict[str, float]:
        with self._lock:
            return self.ledger.as_metrics()

    def close(self) -> dict[str, float]:
        """End of training: whatever is still here is dropped as `run_ended`; returns the final accounting."""
        with self._lock:
            for meta in [g.meta for g in self._scoring] + [meta for meta, _, _ in self._ready]:
                self.ledger.dropped("run_ended", meta.num_samples)
            self._scoring, self._ready = [], []
            return self.ledger.as_metrics()


class _Scoring:
    """A group being scored: its refs, and what it takes to ask again (no sooner than a second after a failure)."""

    def __init__(self, scoring: Scoring, meta: GroupMeta, group: list, reward):
        self.scoring, self.meta, self.group, self.reward = scoring, meta, group, reward
        self.since, self.retry_at = time.monotonic(), 0.0
        self.scored, self.report = scoring.submit(reward, group)

    def score_again(self) -> None:
        self.scored, self.report = None, None
        self.retry_at = time.monotonic() + 1.0

    def resubmit_if_due(self) -> None:
        if self.report is None and time.monotonic() >= self.retry_at:
            self.scored, self.report = self.scoring.submit(self.reward, self.group)


def _report(ref) -> ScoreReport | None:
    """The group's ScoreReport, or None if the reward actor scoring it died or is being restarted."""
    import ray
    from ray.exceptions import RayActorError

    try:
        return ray.get(ref)
    except RayActorError:
        return None
