"""Where the driver's training steps come from: one small interface, and the GRPO sources.

`SyncSteps` runs the stages one after another (generate → score → train → push, `grpo_step`). `StreamingSteps`
(`one_step_off`, `async`) lets the rollout actors generate continuously into the trajectory buffer while the learner
trains (`streaming_step`; platform/pipeline.py keeps the engines fed). Either way trajectories travel as ObjectRefs
from rollout actors to reward actors to learner ranks; the driver holds refs and pulls only metrics. `StarSteps`
(platform/star.py, `algo.name=star`) makes each step an expert iteration on the same pools and learner.
"""

from __future__ import annotations

import itertools
import time
from contextlib import contextmanager
from typing import Callable, Protocol

import ray

from ponder.actors.buffer import Ledger
from ponder.actors.rollout import Sampling, Thinking
from ponder.data.datasets import load_problems
from ponder.data.stream import PromptStream, make_requests
from ponder.data.template import has_completion
from ponder.platform.cluster import Cluster
from ponder.platform.config import PonderConfig
from ponder.platform.pipeline import Schedule, StreamingRollouts
from ponder.platform.pools import LearnerGroup, RewardPool, RolloutPool


class StepSource(Protocol):
    def step(self, k: int) -> tuple[dict[str, float], list]:
        """Train step `k` (the learner then holds version k); its metrics and the scored refs it trained on."""

    def accounting(self) -> dict[str, float]:
        """The run's sample counts so far, earlier attempts included (what a checkpoint saves)."""

    def batches_drawn(self) -> int:
        """Prompt batches taken from the stream so far (the data position a checkpoint saves)."""

    def settle(self) -> None:
        """Return once every engine serves the newest weights (held-out evaluation waits for it)."""

    def close(self) -> dict[str, float]:
        """End of training: the final accounting."""


def training_sampling(cfg: PonderConfig) -> Sampling:
    """How training samples are drawn: the group size, temperature, length, budget forcing and environment."""
    r = cfg.rollout
    return Sampling(r.samples_per_prompt, r.temperature, r.top_p, r.max_tokens, thinking=Thinking.of(r),
                    env=r.episodes)


def prompt_batches(cfg: PonderConfig, train_set: list) -> Callable[[int], list]:
    """The run's prompt batches as requests: `batches(i)` is the i-th (from 1; = its step in sync mode)."""
    r, t = cfg.rollout, cfg.trainer
    stream = PromptStream(train_set, t.prompts_per_step, cfg.seed)

    def batch(index: int) -> list:
        return make_requests(stream.batch(index - 1), cfg.data.template, cfg.seed, index,
                             first_group=index * t.prompts_per_step, budgets=r.thinking_budget,
                             budget_prompt=r.budget_prompt)

    return batch


def demonstration_batches(cfg: PonderConfig, position: int) -> Callable[[], tuple[str, list]]:
    """algo.replay_data's demonstrations for the learner, `algo.replay_per_step` a step from a seeded stream of the
    rows that have something to train toward, going on after `position` steps (a resumed run's)."""
    problems = [p for p in load_problems(cfg.algo.replay_data, "train", cfg.data.task) if has_completion(p)]
    stream, count = PromptStream(problems, cfg.algo.replay_per_step, cfg.seed + 1), itertools.count(position)
    return lambda: (cfg.data.template, stream.batch(next(count)))


def step_source(cfg: PonderConfig, cluster: Cluster, rollouts: RolloutPool, rewards: RewardPool,
                learners: LearnerGroup, train_set: list, step: int, batches_drawn: int,
                accounting: dict[str, float]) -> StepSource:
    """The configured GRPO mode's source, going on after `step` with `batches_drawn` and `accounting` (a resumed
    run's; zeros for a new one)."""
    sampling, prompt_batch = training_sampling(cfg), prompt_batches(cfg, train_set)
    if cfg.pipeline.mode == "sync":
        return SyncSteps(rollouts, rewards, learners, prompt_batch, sampling, Ledger.of(accounting), step)
    schedule = Schedule.of(cfg.pipeline)
    buffer = cluster.buffer(schedule.max_staleness, cfg.pipeline.dynamic_sampling)
    pipeline = StreamingRollouts.on_ray(schedule, prompt_batch, rollouts, rewards, buffer, sampling,
                                        cfg.trainer.prompts_per_step, start_step=step + 1, batches_drawn=batches_drawn)
    return StreamingSteps(pipeline, learners, rewards, buffer, accounting)


class SyncSteps:
    def __init__(self, rollouts: RolloutPool, rewards: RewardPool, learners: LearnerGroup,
                 prompts: Callable[[int], list], sampling: Sampling, ledger: Ledger, step: int):
        self.rollouts, self.rewards, self.learners = rollouts, rewards, learners
        self.prompts, self.sampling, self.ledger, self.last = prompts, sampling, ledger, step

    def step(self, k: int) -> tuple[dict[str, float], list]:
        out = grpo_step(self.rollouts, self.rewards, self.learners, self.prompts(k), self.sampling, k, self.ledger)
        self.last = k
        return out

    def accounting(self) -> dict[str, float]:
        return self.ledger.as_metrics()

    def batches_drawn(self) -> int:
        return self.last  # batch k trains step k

    def settle(self) -> None:
        """Nothing to wait for: a sync push returns once every engine has loaded the weights."""

    def close(self) -> dict[str, float]:
        return self.ledger.as_metrics()


class StreamingSteps:
    def __init__(self, pipeline: StreamingRollouts, learners: LearnerGroup, rewards: RewardPool, buffer,
                 accounting: dict[str, float]):
        self.pipeline, self.learners, self.rewards, self.buffer = pipeline, learners, rewards, buffer
        # Counts of the attempts before this one (the buffer starts from zero). What was still buffered when the
        # checkpoint was taken did not survive the restart: it counts as dropped at the end of that attempt.
        self.earlier = dict(accounting)
        self.earlier["samples/dropped_run_ended"] = self.earlier.get("samples/dropped_run_ended", 0.0) + \
            self.earlier.pop("samples/buffered", 0.0)

    def step(self, k: int) -> tuple[dict[str, float], list]:
        out = streaming_step(self.pipeline, self.learners, k)
        self.rewards.observe(ray.get(self.buffer.scorers.remote()))  # a reward actor's restart shows in its reports
        return out

    def accounting(self) -> dict[str, float]:
        return merge_counts([self.earlier, ray.get(self.buffer.counts.remote())])

    def batches_drawn(self) -> int:
        return self.pipeline.batches_submitted

    def settle(self) -> None:
        self.pipeline.settle()

    def close(self) -> dict[str, float]:
        return merge_counts([self.earlier, self.pipeline.close()])


def grpo_step(rollouts: RolloutPool, rewards: RewardPool, learners: LearnerGroup, requests: list, sampling: Sampling,
              step: int, ledger: Ledger) -> tuple[dict[str, float], list]:
    """generate → score → train → push, one stage at a time (each timed). Returns metrics and the scored refs."""
    timings: dict[str, float] = {}
    with timed(timings, "generate"):
        generated, _ = rollouts.generate(requests, sampling)
    with timed(timings, "reward"):
        scored, reports = rewards.score(generated)
        reward_metrics = merge_counts([r.counts for r in reports])
    with timed(timings, "train"):
        metrics = learners.train(*scored, step=step)
    with timed(timings, "weight_sync"):
        rollouts.push(learners.publish(step))
    ledger.generated(len(requests) * sampling.n)
    ledger.trained(len(requests) * sampling.n, masked=sum(r.masked for r in reports),
                   env_masked=sum(r.env_masked for r in reports))
    metrics.update(reward_metrics, **ledger.as_metrics(), **{f"time/{k}": v for k, v in timings.items()})
    metrics["time/step"] = sum(timings.values())
    metrics["perf/tokens_per_s"] = metrics["rollout/tokens"] / max(timings["generate"], 1e-9)
    return metrics, scored


def streaming_step(pipeline: StreamingRollouts, learners: LearnerGroup, step: int) -> tuple[dict[str, float], list]:
    """wait for a batch of fresh groups → train → publish; the engines generate all along and take the weights
    without the driver waiting. `time/wait` is the generation the learner could not hide."""
    timings: dict[str, float] = {}
    with timed(timings, "wait"):
        batch = pipeline.next_batch(step)
    with timed(timings, "train"):
        metrics = learners.train(*batch.refs, step=step)
    with timed(timings, "weight_sync"):
        pipeline.push(learners.publish(step))
    metrics.update(batch.metrics, **{f"time/{k}": v for k, v in timings.items()})
    metrics["ft/groups_reissued"] = float(pipeline.reissued)
    metrics["time/step"] = sum(timings.values())
    metrics["perf/tokens_per_s"] = metrics["rollout/tokens"] / max(metrics["time/step"], 1e-9)
    return metrics, batch.refs


@contextmanager
def timed(timings: dict[str, float], name: str):
    start = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - start


def merge_counts(parts: list[dict[str, float]]) -> dict[str, float]:
    merged: dict[str, float] = {}
    for part in parts:
        for k, v in part.items():
            merged[k] = merged.get(k, 0.0) + v
    return merged
