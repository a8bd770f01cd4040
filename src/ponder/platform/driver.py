"""The RL loop: generate → score → train → push weights → log, synchronous or streaming.

`sync` runs the stages one after another (`grpo_step`). `one_step_off` and `async` let the rollout actors generate
continuously into the trajectory buffer while the learner trains (`streaming_step`; platform/pipeline.py keeps the
engines fed). Either way trajectories travel as ObjectRefs from rollout actors to reward actors to learner ranks; the
driver holds refs and pulls only metrics (and, every `log_samples_every` steps, a handful of samples to log).
Nothing imports this module except the CLI.
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import ray
from tqdm import tqdm

from ponder.actors.buffer import Ledger
from ponder.actors.rollout import Sampling
from ponder.data.datasets import load_problems
from ponder.data.stream import PromptStream, make_requests
from ponder.eval.heldout import heldout_metrics, rollout_and_score
from ponder.platform.cluster import Cluster, generate_on, score_on
from ponder.platform.config import PonderConfig, flatten, to_yaml
from ponder.platform.pipeline import Schedule, StreamingRollouts
from ponder.platform.plots import plot_curves
from ponder.platform.tracking import Tracker


@dataclass
class TrainResult:
    run_id: str
    output_dir: str
    history: list[dict[str, float]] = field(default_factory=list)
    evals: dict[int, dict[str, float]] = field(default_factory=dict)
    accounting: dict[str, float] = field(default_factory=dict)  # samples generated / trained / dropped per reason


def train(cfg: PonderConfig) -> TrainResult:
    t, out = cfg.trainer, Path(cfg.trainer.output_dir)
    train_set = load_problems(cfg.data.train, "train", cfg.data.task)
    eval_set = load_problems(cfg.data.eval, "eval", cfg.data.task)[: t.eval_prompts]
    stream = PromptStream(train_set, t.prompts_per_step, cfg.seed)
    r = cfg.rollout
    sampling = Sampling(r.samples_per_prompt, r.temperature, r.top_p, r.max_tokens)
    greedy = Sampling(1, 0.0, 1.0, r.max_tokens)
    tracker = Tracker(cfg.tracking, flatten(cfg), to_yaml(cfg))
    result = TrainResult(tracker.run_id, str(out))
    weights_dir = Path(cfg.cluster.shm_dir) / f"ponder-{tracker.run_id}"
    status = "FAILED"

    def prompt_batch(index: int) -> list:  # the index-th batch of the run (= its step in sync mode)
        return make_requests(stream.next(), cfg.data.template, cfg.seed, index, first_group=index * t.prompts_per_step)

    try:
        with Cluster(cfg) as cluster:
            rollouts = cluster.rollout_pool(cfg.model.path)
            rewards = cluster.reward_pool()
            learners = cluster.learner_group(cfg.model.path, str(weights_dir))
            cluster.connect_weight_sync(learners, rollouts)
            run_step, accounting = stepper(cfg, cluster, rollouts, rewards, learners, prompt_batch, sampling)

            def evaluate(step: int) -> None:  # waits for every engine to serve the weights of `step`
                scored = rollout_and_score(rollouts, rewards, eval_set, cfg.data.template, greedy, cfg.seed, step)
                # wall-clock of training so far, evaluation excluded: what "time to +N points" is measured in
                elapsed = sum(h["time/step"] for h in result.history)  # up to and including `step`
                result.evals[step] = {**heldout_metrics(scored), "time/train_elapsed_s": elapsed}
                tracker.log_metrics(result.evals[step], step)

            evaluate(0)
            bar = tqdm(range(1, t.steps + 1), desc=f"grpo {cfg.pipeline.mode}", unit="step", dynamic_ncols=True)
            for step in bar:
                metrics, scored = run_step(step)
                tracker.log_metrics(metrics, step)
                result.history.append({"step": step, **metrics})
                if t.eval_every and (step % t.eval_every == 0 or step == t.steps):
                    evaluate(step)
                if t.log_samples_every and step % t.log_samples_every == 0:
                    tracker.log_text(samples_jsonl(ray.get(scored[0])[:8]), f"samples/step_{step:06d}.jsonl")
                bar.set_postfix(progress_line(metrics, result.evals), refresh=False)
            result.accounting = accounting()
            tracker.log_metrics({f"final/{k}": v for k, v in result.accounting.items()}, t.steps)
            if t.save_final_model:
                final = ray.get([rank.save_hf.remote(str(out / "final_model")) for rank in learners])[0]
                tracker.log_artifact(final, "final_model")
        tracker.log_artifact(plot_curves(result.history, result.evals, out / "curves.png"))
        status = "FINISHED"
        return result
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        shutil.rmtree(weights_dir, ignore_errors=True)  # also when a killed learner could not clean up itself
        tracker.finish(status)


def stepper(cfg: PonderConfig, cluster: Cluster, rollouts: list, rewards: list, learners: list,
            prompt_batch: Callable[[int], list], sampling: Sampling) -> tuple[Callable, Callable[[], dict]]:
    """The configured mode's step function (step -> (metrics, scored refs)) and its final sample accounting."""
    if cfg.pipeline.mode == "sync":
        ledger = Ledger()
        return (lambda step: grpo_step(rollouts, rewards, learners, prompt_batch(step), sampling, step, ledger),
                ledger.as_metrics)
    schedule = Schedule.of(cfg.pipeline)
    buffer = cluster.buffer(schedule.max_staleness, cfg.pipeline.dynamic_sampling)
    pipeline = StreamingRollouts(schedule, prompt_batch, rollouts, rewards, buffer, sampling,
                                 cfg.trainer.prompts_per_step)
    return (lambda step: streaming_step(pipeline, learners, step)), pipeline.close


def grpo_step(rollouts: list, rewards: list, learners: list, requests: list, sampling: Sampling, step: int,
              ledger: Ledger) -> tuple[dict[str, float], list]:
    """generate → score → train → push, one stage at a time (each timed). Returns metrics and the scored refs."""
    timings: dict[str, float] = {}
    with timed(timings, "generate"):
        generated = generate_on(rollouts, requests, sampling)
        wait_all(generated)
    with timed(timings, "reward"):
        scored, reports = score_on(rewards, generated)
        reports = ray.get(reports)
        reward_metrics = merge_counts([r.counts for r in reports])
    with timed(timings, "train"):
        metrics = ray.get([rank.train.remote(*scored) for rank in learners])[0]
    with timed(timings, "weight_sync"):
        handle = ray.get([rank.publish_weights.remote(step) for rank in learners])[0]
        ray.get([w.load_weights.remote(handle) for w in rollouts])
    ledger.generated(len(requests) * sampling.n)
    ledger.trained(len(requests) * sampling.n, masked=sum(r.masked for r in reports))
    metrics.update(reward_metrics, **ledger.as_metrics(), **{f"time/{k}": v for k, v in timings.items()})
    metrics["time/step"] = sum(timings.values())
    metrics["perf/tokens_per_s"] = metrics["rollout/tokens"] / max(timings["generate"], 1e-9)
    return metrics, scored


def streaming_step(pipeline: StreamingRollouts, learners: list, step: int) -> tuple[dict[str, float], list]:
    """wait for a batch of fresh groups → train → publish; the engines generate all along and take the weights
    without the driver waiting. `time/wait` is the generation the learner could not hide."""
    timings: dict[str, float] = {}
    with timed(timings, "wait"):
        batch = pipeline.next_batch(step)
    with timed(timings, "train"):
        metrics = ray.get([rank.train.remote(*batch.refs) for rank in learners])[0]
    with timed(timings, "weight_sync"):
        pipeline.push(ray.get([rank.publish_weights.remote(step) for rank in learners])[0])
    metrics.update(batch.metrics, **{f"time/{k}": v for k, v in timings.items()})
    metrics["time/step"] = sum(timings.values())
    metrics["perf/tokens_per_s"] = metrics["rollout/tokens"] / max(metrics["time/step"], 1e-9)
    return metrics, batch.refs


@contextmanager
def timed(timings: dict[str, float], name: str):
    start = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - start


def wait_all(refs: list) -> None:
    """Block until every ref is ready without pulling the objects into the driver."""
    ray.wait(refs, num_returns=len(refs), fetch_local=False)


def merge_counts(parts: list[dict[str, float]]) -> dict[str, float]:
    merged: dict[str, float] = {}
    for part in parts:
        for k, v in part.items():
            merged[k] = merged.get(k, 0.0) + v
    return merged


def progress_line(metrics: dict[str, float], evals: dict[int, dict[str, float]]) -> dict[str, str]:
    last_eval = evals[max(evals)]["eval/accuracy"] if evals else float("nan")
    return {"reward": f"{metrics['rollout/reward_mean']:.3f}", "acc": f"{metrics['rollout/accuracy']:.2f}",
            "heldout": f"{last_eval:.2f}", "tok/s": f"{metrics['perf/tokens_per_s']:.0f}",
            "time": "/".join(f"{k[5:]} {v:.1f}" for k, v in metrics.items() if k.startswith("time/") and k != "time/step")}


def samples_jsonl(trajectories: list) -> str:
    return "\n".join(json.dumps({"prompt": t.problem.prompt, "answer": t.problem.answer, "response": t.response_text,
                                 "reward": t.reward, "terms": t.reward_terms, "version": t.policy_version})
                     for t in trajectories) + "\n"
