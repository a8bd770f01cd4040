"""The streaming rules without Ray: the trajectory buffer's admission, drops and rescoring, and the pipeline's credit,
refills, stalls and re-issues, driven through their ports with fakes (a scoring whose answers the test decides,
engines that deliver at once)."""

from __future__ import annotations

import itertools

import pytest

from ponder.actors.buffer import Staleness, TrajectoryBuffer
from ponder.platform import pipeline as pipeline_module
from ponder.platform.pipeline import PipelineError, Schedule, StreamingRollouts
from ponder.types import GroupMeta, Problem, RolloutRequest, ScoreReport, WeightsVersion

N = 4  # samples per group
VARIED, EQUAL = ScoreReport({"reward/n": 1.0}, (0.0, 1.0, 0.0, 1.0), 0), ScoreReport({}, (1.0,) * N, 0)


class FakeScoring:
    """Scores come back at once; `answer(group_id, attempt)` decides each: a ScoreReport, None (its reward actor
    died), or an exception (the reward function raised)."""

    def __init__(self, answer=lambda gid, attempt: VARIED):
        self.answer, self.attempts = answer, {}

    def submit(self, reward, group):
        gid = group.group_id
        self.attempts[gid] = self.attempts.get(gid, 0) + 1
        return ("scored", gid), ("report", gid, self.attempts[gid])

    def wait(self, reports, wait_s):
        out = {}
        for ref in reports:
            answer = self.answer(ref[1], ref[2])
            if isinstance(answer, Exception):
                raise answer
            out[ref] = answer
        return out


def meta(gid: int, version: int) -> GroupMeta:
    return GroupMeta(gid, N, version, version, 10)


def balanced(counts: dict) -> bool:
    dropped = sum(v for k, v in counts.items() if k.startswith("samples/dropped_"))
    return counts["samples/generated"] == counts["samples/trained"] + dropped + counts["samples/buffered"]


def take(buffer: TrajectoryBuffer, groups: int, step: int):
    return buffer.take(groups, step, timeout_s=0.05)


# --- the staleness rule -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bound", [0, 1, 3])
def test_a_group_started_on_the_oldest_weights_allowed_is_admitted_at_its_step_and_no_later(bound):
    rule = Staleness(bound)
    for step in range(1, 12):
        group = meta(0, rule.oldest_weights(step))
        assert rule.admits(group, step)
        if step - 1 > bound:  # (clamped at version 0 before that: such a group stays admissible longer)
            assert not rule.admits(group, step + 1)


# --- the buffer ---------------------------------------------------------------------------------------------------

def test_the_buffer_drops_stale_groups_and_hands_out_the_oldest_weights_first():
    buffer = TrajectoryBuffer(max_staleness=1, dynamic_sampling=False, scoring=FakeScoring())
    for gid, version in [(0, 0), (1, 2), (2, 1), (3, 2)]:
        buffer.put(meta(gid, version), meta(gid, version), "reward")
    batch = take(buffer, 2, step=3)  # trains on version 2: version 0 is 2 behind, too stale
    assert batch.metas == [meta(1, 2), meta(2, 1)]  # oldest weights first (2's version 1), then in group order
    assert batch.refs == [("scored", 1), ("scored", 2)]
    assert batch.metrics["pipeline/staleness_max"] == 1.0
    counts = buffer.counts()
    assert counts["samples/dropped_stale"] == N and counts["samples/trained"] == 2 * N
    assert counts["samples/buffered"] == N and balanced(counts)
    assert take(buffer, 2, step=3) is None  # one group left: a batch is whole groups or nothing
    assert buffer.close()["samples/dropped_run_ended"] == N


def test_dynamic_sampling_drops_groups_whose_rewards_are_all_equal():
    answers = {0: EQUAL, 1: VARIED}
    for dynamic, kept in [(True, [1]), (False, [0, 1])]:
        buffer = TrajectoryBuffer(0, dynamic, FakeScoring(lambda gid, _: answers[gid]))
        for gid in answers:
            buffer.put(meta(gid, 0), meta(gid, 0), "reward")
        batch = take(buffer, len(kept), step=1)
        assert [m.group_id for m in batch.metas] == kept
        assert buffer.counts()["samples/dropped_zero_variance"] == (N if dynamic else 0)
        assert balanced(buffer.counts())


def test_a_group_put_twice_is_counted_once():
    buffer = TrajectoryBuffer(0, False, FakeScoring())
    for _ in range(2):
        buffer.put(meta(7, 0), meta(7, 0), "reward")
    assert buffer.delivered([6, 7]) == {7}
    assert take(buffer, 1, step=1) is not None
    assert take(buffer, 1, step=1) is None
    assert buffer.counts()["samples/generated"] == N


def test_a_group_whose_reward_actor_died_is_scored_again_and_counted_once():
    scoring = FakeScoring(lambda gid, attempt: None if attempt == 1 else VARIED)
    buffer = TrajectoryBuffer(0, False, scoring)
    buffer.put(meta(0, 0), meta(0, 0), "reward")
    batch = buffer.take(1, step=1, timeout_s=5.0)  # the second try waits a second after the failure
    assert batch is not None and scoring.attempts[0] == 2
    assert batch.metrics["ft/groups_rescored"] == 1.0
    assert batch.metrics["samples/generated"] == N and batch.metrics["samples/trained"] == N


def test_a_reward_that_raised_surfaces_from_take_with_its_cause():
    buffer = TrajectoryBuffer(0, False, FakeScoring(lambda gid, _: ValueError("reward function broke")))
    buffer.put(meta(0, 0), meta(0, 0), "reward")
    with pytest.raises(ValueError, match="reward function broke"):
        take(buffer, 1, step=1)


def test_masked_samples_count_as_dropped_for_reward_error():
    masked = ScoreReport({}, (0.0, 1.0, 0.0, 1.0), masked=1)
    buffer = TrajectoryBuffer(0, False, FakeScoring(lambda gid, _: masked))
    buffer.put(meta(0, 0), meta(0, 0), "reward")
    take(buffer, 1, step=1)
    counts = buffer.counts()
    assert counts["samples/trained"] == N - 1 and counts["samples/dropped_reward_error"] == 1 and balanced(counts)


# --- the pipeline -------------------------------------------------------------------------------------------------

class FakeEngines:
    """Engines that deliver each group at once, sampled on the weights they hold (never older than asked). An engine
    in `lost` drops what it is sent until `restart(engine)`; `frozen` engines ignore pushes."""

    def __init__(self, buffer: TrajectoryBuffer, count: int = 2, frozen: bool = False):
        self.buffer, self.count, self.frozen = buffer, count, frozen
        self.version, self.sent, self.lost, self.restarts = 0, [], set(), set()

    def stream(self, engine, requests, min_version):
        self.sent.append((engine, [r.group_id for r in requests], min_version))
        if engine in self.lost:
            return
        version = self.version if self.frozen else max(self.version, min_version)
        for r in requests:
            self.buffer.put(meta(r.group_id, version), meta(r.group_id, version), "reward")

    def restarted(self, engine):
        if engine in self.restarts:
            self.restarts.discard(engine)
            self.lost.discard(engine)
            return True
        return False

    def push(self, handle, interrupt):
        if not self.frozen:
            self.version = handle.version

    def settle(self):
        return True


def prompts(groups: int):
    problem = Problem("1+1", "2")
    return lambda index: [RolloutRequest(index * groups + i, problem, "1+1", seed=0) for i in range(groups)]


def stream(schedule: Schedule, groups: int = 4, answer=lambda gid, attempt: VARIED, dynamic=False, frozen=False,
           clock=None):
    buffer = TrajectoryBuffer(schedule.max_staleness, dynamic, FakeScoring(answer))
    engines = FakeEngines(buffer, frozen=frozen)
    kwargs = {"clock": clock} if clock else {}
    return StreamingRollouts(schedule, prompts(groups), engines, buffer, groups, N, **kwargs), engines, buffer


def run(pipeline: StreamingRollouts, steps, poll_s: float = 0.01):
    batches = []
    for step in steps:
        batches.append(pipeline.next_batch(step, poll_s))
        pipeline.push(WeightsVersion(step, "shm", None, "", 0, {}))
    return batches


@pytest.mark.parametrize("bound", [0, 1, 2])
def test_credit_keeps_bound_plus_one_steps_of_groups_alive_each_starting_on_the_oldest_weights_allowed(bound):
    pipeline, engines, _ = stream(Schedule(bound, interrupt=False), groups=4)
    batches = run(pipeline, range(1, 7))
    # batch b (groups 4b .. 4b+3) is expected to train step b: it may start on weights no older than b - 1 - bound
    sent = {gid: min_version for _, gids, min_version in engines.sent for gid in gids}
    assert sent == {gid: max(0, gid // 4 - 1 - bound) for gid in range(4, 4 * (6 + bound + 1))}
    assert pipeline.batches_submitted == 6 + bound  # (bound + 1) steps ahead of the next step, 7
    assert [sorted(m.group_id // 4 for m in b.metas) for b in batches] == [[s] * 4 for s in range(1, 7)]
    assert all(b.metrics["pipeline/staleness_max"] <= bound for b in batches)
    counts = pipeline.close()
    assert counts["samples/trained"] == 6 * 4 * N and counts["samples/dropped_run_ended"] == bound * 4 * N
    assert counts["samples/unfinished"] == 0 and balanced(counts)


def test_dropped_groups_make_room_for_refills_and_too_many_stop_with_what_to_change():
    pipeline, engines, _ = stream(Schedule(0, False, max_refill_batches=2), answer=lambda gid, _: EQUAL, dynamic=True)
    with pytest.raises(PipelineError, match="pipeline.dynamic_sampling=false"):
        pipeline.next_batch(1, poll_s=0.01)
    assert pipeline.batches_submitted == 1 + 3  # the batch, then refills until more than max_refill_batches
    counts = pipeline.close()
    assert counts["samples/trained"] == 0 and counts["samples/dropped_zero_variance"] >= 3 * 4 * N
    assert counts["samples/generated"] == counts["samples/dropped_zero_variance"] + counts["samples/dropped_run_ended"]


def test_engines_that_never_take_new_weights_give_only_stale_groups_and_the_stream_says_so():
    pipeline, _, _ = stream(Schedule(1, False, max_refill_batches=1), frozen=True)
    run(pipeline, [1, 2])  # version 0 is at most one behind steps 1 and 2
    with pytest.raises(PipelineError, match=r"\d+ stale"):
        pipeline.next_batch(3, poll_s=0.01)
    counts = pipeline.close()
    assert counts["samples/dropped_stale"] > 0 and balanced(counts)


def test_a_restarted_engines_undelivered_groups_are_issued_again_once():
    pipeline, engines, _ = stream(Schedule(0, False))
    engines.lost.add(1)  # engine 1 dies with its shard of batch 1 (groups 6 and 7)
    ticks = itertools.count()

    def restart_soon(engine, original=engines.restarted):
        if engine == 1 and next(ticks) == 3:
            engines.restarts.add(1)
        return original(engine)
    engines.restarted = restart_soon
    (batch,) = run(pipeline, [1])
    assert sorted(m.group_id for m in batch.metas) == [4, 5, 6, 7]
    assert pipeline.reissued == 2
    assert [gids for engine, gids, _ in engines.sent if engine == 1] == [[6, 7], [6], [7]]
    assert pipeline.close()["samples/generated"] == 4 * N  # nothing counted twice


def test_a_stream_where_nothing_arrives_stops_after_the_stall_limit(monkeypatch):
    monkeypatch.setattr(pipeline_module, "STALL_S", 10.0)
    now = itertools.count(step=6.0)  # every clock read is 6 s later
    pipeline, engines, _ = stream(Schedule(0, False), clock=lambda: next(now))
    engines.lost.update({0, 1})
    with pytest.raises(PipelineError, match="no group reached the buffer in 10 s"):
        pipeline.next_batch(1, poll_s=0.01)
