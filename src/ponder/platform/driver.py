"""The RL loop: generate → score → train → push weights → log → checkpoint, synchronous or streaming.

`sync` runs the stages one after another (`grpo_step`). `one_step_off` and `async` let the rollout actors generate
continuously into the trajectory buffer while the learner trains (`streaming_step`; platform/pipeline.py keeps the
engines fed). Either way trajectories travel as ObjectRefs from rollout actors to reward actors to learner ranks; the
driver holds refs and pulls only metrics (and, every `log_samples_every` steps, a handful of samples to log).

Every `checkpoint.every` steps the learner saves a checkpoint (storage/checkpoints.py) holding the DeepSpeed state
and this loop's own state (`DriverState`: step, data position, sample accounting, metrics so far, run id). A resumed
run loads it, pushes the restored weights to the engines and goes on at the next step in the same MLflow run. A
rollout or reward actor that dies is restarted and its work re-issued (platform/pools.py); a learner that dies
ends the attempt, and with `ft.auto_resume` the run starts again from its last complete checkpoint.
Nothing imports this module except the CLI.
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import ray
from tqdm import tqdm

from ponder.actors.buffer import Ledger
from ponder.actors.rollout import Sampling, Thinking
from ponder.data.datasets import load_problems
from ponder.data.stream import PromptStream, make_requests
from ponder.eval.heldout import heldout_metrics
from ponder.platform.evaluate import rollout_and_score
from ponder.storage.checkpoints import CheckpointTarget
from ponder.platform.cluster import Cluster
from ponder.platform.config import PonderConfig, flatten, to_yaml
from ponder.platform.lineage import lineage_tags
from ponder.platform.pipeline import Schedule, StreamingRollouts
from ponder.platform.plots import plot_compute_curve, plot_curves
from ponder.platform.pools import LearnerGroup, NeedsCheckpoint, RewardPool, RolloutPool
from ponder.platform.tracking import CHECKPOINT_DIR_TAG, FINAL_MODEL, LATEST_CHECKPOINT_TAG, Tracker


class TrainingStopped(RuntimeError):
    """The run cannot go on (its learner died); the message names the checkpoint to resume from."""


@dataclass
class DriverState:
    """The loop's own state, saved in every checkpoint beside the learner's."""

    run_id: str
    last_step: int  # trainer.steps: the run is finished once `step` reaches it
    step: int = 0  # the last completed step (= the policy version the learner holds)
    batches_drawn: int = 0  # prompt batches taken from the stream (the data position)
    accounting: dict[str, float] = field(default_factory=dict)  # sample counts up to `step`
    history: list[dict[str, float]] = field(default_factory=list)
    evals: dict[int, dict[str, float]] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)  # actor restarts so far, by pool
    config: str = ""  # the resolved configuration (YAML) of the attempt that saved it

    @classmethod
    def from_json(cls, data: dict) -> "DriverState":
        state = cls(**data)
        state.evals = {int(k): v for k, v in state.evals.items()}
        return state


@dataclass
class TrainResult:
    run_id: str
    output_dir: str
    history: list[dict[str, float]] = field(default_factory=list)
    evals: dict[int, dict[str, float]] = field(default_factory=dict)
    accounting: dict[str, float] = field(default_factory=dict)  # samples generated / trained / dropped per reason
    checkpoint: Optional[str] = None  # URI of the last checkpoint written
    registered: Optional[str] = None  # "name/version" of the registered final model
    resumed_from: list[str] = field(default_factory=list)  # checkpoints this run went on from


def train(cfg: PonderConfig, target: Optional[CheckpointTarget] = None, start: Optional[str] = None,
          run_id: Optional[str] = None) -> TrainResult:
    """Train, writing checkpoints to `target` (default: checkpoint.dir); with `start` (a checkpoint name there) go on
    from it in run `run_id`."""
    target = target or CheckpointTarget.of(cfg.checkpoint, cfg.trainer.output_dir)
    train_set = load_problems(cfg.data.train, "train", cfg.data.task)
    eval_set = load_problems(cfg.data.eval, "eval", cfg.data.task)[: cfg.trainer.eval_prompts]
    tracker = Tracker(cfg.tracking, flatten(cfg), to_yaml(cfg), run_id=run_id)
    tracker.set_tags({CHECKPOINT_DIR_TAG: target.url, **lineage_tags(cfg, train_set, eval_set)})
    result = TrainResult(tracker.run_id, cfg.trainer.output_dir)
    status = "FAILED"
    try:
        for attempt in range(cfg.ft.max_auto_resumes + 1):
            if start is not None:
                result.resumed_from.append(target.uri(start))
            try:
                run_attempt(cfg, tracker, target, start, train_set, eval_set, result)
                break
            except NeedsCheckpoint as lost:
                start = target.store().latest()
                where = target.uri(start) if start else "none (no checkpoint was completed)"
                if not (cfg.ft.auto_resume and start and attempt < cfg.ft.max_auto_resumes):
                    raise TrainingStopped(
                        f"{lost}\nThe run stopped. Last complete checkpoint: {where}. Continue with `ponder train "
                        f"<same config> --resume auto` (or --resume {tracker.run_id})"
                        + (" or set ft.auto_resume=true" if not cfg.ft.auto_resume else "")) from lost
                tqdm.write(f"{str(lost).splitlines()[0]}; auto-resuming from {where} "
                           f"({attempt + 1}/{cfg.ft.max_auto_resumes})")
        status = "FINISHED"
        return result
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.finish(status)


def run_attempt(cfg: PonderConfig, tracker: Tracker, target: CheckpointTarget, start: Optional[str],
                train_set: list, eval_set: list, result: TrainResult) -> None:
    """One life of the cluster: start every actor, restore `start` if given, train to the last step, finish."""
    t, out = cfg.trainer, Path(cfg.trainer.output_dir)
    greedy = Sampling(1, 0.0, 1.0, cfg.rollout.max_tokens)
    weights_dir = Path(cfg.cluster.shm_dir) / f"ponder-{tracker.run_id}"
    try:
        with Cluster(cfg) as cluster:
            rollouts = RolloutPool(cluster.rollout_pool(cfg.model.path), cfg.ft.max_actor_restarts)
            rewards = RewardPool(cluster.reward_pool(), cfg.ft.max_actor_restarts)
            learners = cluster.learner_group(cfg.model.path)
            cluster.connect_weight_sync(learners, rollouts.actors, str(weights_dir))
            state = DriverState(tracker.run_id, t.steps, config=to_yaml(cfg))
            if start is not None:
                state = DriverState.from_json(learners.load(target, start))
                state.last_step, state.config = t.steps, to_yaml(cfg)  # a resumed run may be given more steps
            result.history, result.evals = state.history, state.evals
            loop = Loop.of(cfg, cluster, rollouts, rewards, learners, train_set, state)
            if start is not None:  # every engine serves the restored weights before the first step
                result.checkpoint = target.uri(start)
                rollouts.push(learners.publish(state.step))

            def evaluate(step: int) -> None:  # waits for every engine to serve the weights of `step`
                loop.settle()
                scored = rollout_and_score(rollouts, rewards, eval_set, cfg.data.template, greedy, cfg.seed, step)
                # wall-clock of training so far, evaluation excluded: what "time to +N points" is measured in
                elapsed = sum(h["time/step"] for h in state.history)  # up to and including `step`
                state.evals[step] = {**heldout_metrics(scored), "time/train_elapsed_s": elapsed}
                tracker.log_metrics(state.evals[step], step)

            if start is None:
                evaluate(0)
            bar = tqdm(range(state.step + 1, t.steps + 1), desc=f"grpo {cfg.pipeline.mode}", unit="step",
                       dynamic_ncols=True, initial=state.step, total=t.steps)
            for step in bar:
                metrics, scored = loop.step(step)
                state.step = step
                state.history.append({"step": step, **metrics})
                tracker.log_metrics(metrics, step)
                if t.eval_every and (step % t.eval_every == 0 or step == t.steps):
                    evaluate(step)
                if t.log_samples_every and step % t.log_samples_every == 0:
                    tracker.log_text(samples_jsonl(ray.get(scored[0])[:8]), f"samples/step_{step:06d}.jsonl")
                if cfg.checkpoint.every and (step % cfg.checkpoint.every == 0 or step == t.steps):
                    result.checkpoint = save_checkpoint(cfg, tracker, target, learners, loop.snapshot(state))
                bar.set_postfix(progress_line(metrics, state.evals), refresh=False)
            result.accounting = loop.close()
            tracker.log_metrics({f"final/{k}": v for k, v in result.accounting.items()}, t.steps)
            if t.save_final_model:
                tracker.log_artifact(export_final_model(cfg, target, result.checkpoint, learners, out), FINAL_MODEL)
                name = cfg.tracking.registered_model
                result.registered = f"{name}/{tracker.register_model(name)}" if name else None
        tracker.log_artifact(plot_curves(state.history, state.evals, out / "curves.png"))
        tracker.log_artifact(plot_compute_curve(state.history, state.evals, out / "accuracy_vs_compute.png"))
    finally:
        shutil.rmtree(weights_dir, ignore_errors=True)  # also when a killed learner could not clean up itself


def save_checkpoint(cfg: PonderConfig, tracker: Tracker, target: CheckpointTarget, learners: LearnerGroup,
                    state: DriverState) -> str:
    started = time.perf_counter()
    meta = {"run_id": state.run_id, "step": state.step, "last_step": state.last_step}  # read without a download
    uri = learners.save(target, state.step, asdict(state), meta, cfg.checkpoint.export_hf)
    tracker.set_tags({LATEST_CHECKPOINT_TAG: uri})
    tracker.log_metrics({"time/checkpoint": time.perf_counter() - started}, state.step)
    return uri


def export_final_model(cfg: PonderConfig, target: CheckpointTarget, checkpoint: Optional[str], learners: LearnerGroup,
                       out: Path) -> str:
    """The final policy in Hugging Face format in `out`/final_model, on the driver's node. Taken from the last
    checkpoint's export when it has one: that is in shared storage, and the learner may run on another node. Without
    one, learner rank 0 writes it, which only the driver's own node (a local cluster) can see."""
    local = out / FINAL_MODEL
    if checkpoint and checkpoint.endswith(f"_{cfg.trainer.steps:08d}") and cfg.checkpoint.export_hf:
        shutil.rmtree(local, ignore_errors=True)
        target.store().load(checkpoint.rpartition("/")[2], local, only="hf/")
        return str(local)
    return learners.save_hf(str(local))


class Loop:
    """The configured mode's step (step -> (metrics, scored refs)), what a checkpoint saves of it, its final
    accounting, and how evaluation waits for the engines to hold the newest weights."""

    def __init__(self, step: Callable, snapshot: Callable[[DriverState], DriverState], close: Callable[[], dict],
                 settle: Callable[[], None] = lambda: None):
        self.step, self.snapshot, self.close, self.settle = step, snapshot, close, settle

    @classmethod
    def of(cls, cfg: PonderConfig, cluster: Cluster, rollouts: RolloutPool, rewards: RewardPool, learners: LearnerGroup,
           train_set: list, state: DriverState) -> "Loop":
        r, t = cfg.rollout, cfg.trainer
        sampling = Sampling(r.samples_per_prompt, r.temperature, r.top_p, r.max_tokens, thinking=Thinking.of(r))
        stream = PromptStream(train_set, t.prompts_per_step, cfg.seed)

        def prompt_batch(index: int) -> list:  # the index-th batch of the run (= its step in sync mode), from 1
            return make_requests(stream.batch(index - 1), cfg.data.template, cfg.seed, index,
                                 first_group=index * t.prompts_per_step, budgets=r.thinking_budget,
                                 budget_prompt=r.budget_prompt)

        fanouts = {"rollout": rollouts.fanout, "reward": rewards.fanout}

        def restarts() -> dict[str, int]:  # of this run, earlier attempts included
            return {pool: state.restarts.get(pool, 0) + fanout.restarts for pool, fanout in fanouts.items()}

        def with_restarts(step: Callable) -> Callable:
            def run(k: int):
                metrics, scored = step(k)
                metrics.update({f"ft/{pool}_restarts": float(n) for pool, n in restarts().items()})
                return metrics, scored
            return run

        def snapshot(accounting: Callable[[], dict], batches: Callable[[DriverState], int]) -> Callable:
            return lambda s: DriverState(**{**asdict(s), "accounting": accounting(), "batches_drawn": batches(s),
                                            "restarts": restarts()})

        if cfg.pipeline.mode == "sync":
            ledger = Ledger.of(state.accounting)
            step = with_restarts(lambda k: grpo_step(rollouts, rewards, learners, prompt_batch(k), sampling, k, ledger))
            return cls(step, snapshot(ledger.as_metrics, lambda s: s.step), ledger.as_metrics)
        schedule = Schedule.of(cfg.pipeline)
        buffer = cluster.buffer(schedule.max_staleness, cfg.pipeline.dynamic_sampling)
        pipeline = StreamingRollouts(schedule, prompt_batch, rollouts, rewards, buffer, sampling,
                                     cfg.trainer.prompts_per_step, start_step=state.step + 1,
                                     batches_drawn=state.batches_drawn)
        # Counts of the attempts before this one (the buffer starts from zero). What was still buffered when the
        # checkpoint was taken did not survive the restart: it counts as dropped at the end of that attempt.
        earlier = dict(state.accounting)
        earlier["samples/dropped_run_ended"] = earlier.get("samples/dropped_run_ended", 0.0) + \
            earlier.pop("samples/buffered", 0.0)
        return cls(with_restarts(lambda k: streaming_step(pipeline, learners, k)),
                   snapshot(lambda: merge_counts([earlier, ray.get(buffer.counts.remote())]),
                            lambda s: pipeline.batches_submitted),
                   lambda: merge_counts([earlier, pipeline.close()]), pipeline.settle)


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
        metrics = learners.train(*scored)
    with timed(timings, "weight_sync"):
        rollouts.push(learners.publish(step))
    ledger.generated(len(requests) * sampling.n)
    ledger.trained(len(requests) * sampling.n, masked=sum(r.masked for r in reports))
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
        metrics = learners.train(*batch.refs)
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


def progress_line(metrics: dict[str, float], evals: dict[int, dict[str, float]]) -> dict[str, str]:
    last_eval = evals[max(evals)]["eval/accuracy"] if evals else float("nan")
    return {"reward": f"{metrics['rollout/reward_mean']:.3f}", "acc": f"{metrics['rollout/accuracy']:.2f}",
            "heldout": f"{last_eval:.2f}", "tok/s": f"{metrics['perf/tokens_per_s']:.0f}",
            "time": "/".join(f"{k[5:]} {v:.1f}" for k, v in metrics.items() if k.startswith("time/") and k != "time/step")}


def samples_jsonl(trajectories: list) -> str:
    return "\n".join(json.dumps({"prompt": t.problem.prompt, "answer": t.problem.answer, "response": t.response_text,
                                 "reward": t.reward, "terms": t.reward_terms, "version": t.policy_version})
                     for t in trajectories) + "\n"
