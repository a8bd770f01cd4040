"""The RL loop: step → log → evaluate → checkpoint, around a step source (platform/steps.py: synchronous or
streaming). The driver holds refs and pulls only metrics (and, every `log_samples_every` steps, a handful of samples
to log).

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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import ray
from tqdm import tqdm

from ponder.actors.rollout import Sampling
from ponder.data.datasets import load_problems
from ponder.data.traces import source_runs, traces_jsonl
from ponder.eval.heldout import heldout_metrics
from ponder.platform.evaluate import rollout_and_score
from ponder.storage.checkpoints import CheckpointTarget
from ponder.platform.cluster import Cluster
from ponder.platform.config import PonderConfig, flatten, to_yaml
from ponder.platform.lineage import lineage_tags, problems_digest
from ponder.platform.plots import plot_compute_curve, plot_curves
from ponder.platform.pools import LearnerGroup, NeedsCheckpoint, RewardPool, RolloutPool
from ponder.platform.star import star_steps
from ponder.platform.steps import StepSource, demonstration_batches, step_source
from ponder.platform.tracking import CHECKPOINT_DIR_TAG, FINAL_MODEL, LATEST_CHECKPOINT_TAG, TRACES_DIR, Tracker


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
    if run_id is None:  # a resumed run logged its inputs when it began
        for source, problems, context in ((cfg.data.train, train_set, "train"), (cfg.data.eval, eval_set, "eval")):
            tracker.log_dataset(source, problems_digest(problems), len(problems), context, source_runs(problems))
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
    greedy = Sampling(1, 0.0, 1.0, cfg.rollout.max_tokens, env=cfg.rollout.episodes)
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
            if cfg.algo.replay_data:  # demonstrations replayed every step, from where the run is
                learners.demonstrations = demonstration_batches(cfg, state.step)
            steps: StepSource = star_steps(cfg, rollouts, rewards, learners, train_set, state.step,
                                           state.accounting) if cfg.algo.name == "star" else \
                step_source(cfg, cluster, rollouts, rewards, learners, train_set, state.step, state.batches_drawn,
                            state.accounting)
            earlier_restarts = dict(state.restarts)
            if start is not None:  # every engine serves the restored weights before the first step
                result.checkpoint = target.uri(start)
                rollouts.push(learners.publish(state.step))

            def evaluate(step: int) -> None:  # waits for every engine to serve the weights of `step`
                steps.settle()
                scored = rollout_and_score(rollouts, rewards, eval_set, cfg.data.template, greedy, cfg.seed, step)
                # wall-clock of training so far, evaluation excluded: what "time to +N points" is measured in
                elapsed = sum(h["time/step"] for h in state.history)  # up to and including `step`
                state.evals[step] = {**heldout_metrics(scored), "time/train_elapsed_s": elapsed}
                tracker.log_metrics(state.evals[step], step)

            if start is None:
                evaluate(0)
            bar = tqdm(range(state.step + 1, t.steps + 1), desc=f"{cfg.algo.name} {cfg.pipeline.mode}", unit="step",
                       dynamic_ncols=True, initial=state.step, total=t.steps)
            for step in bar:
                metrics, scored = steps.step(step)
                state.step, state.restarts = step, restarts(earlier_restarts, rollouts, rewards)
                metrics.update({f"ft/{pool}_restarts": float(n) for pool, n in state.restarts.items()})
                state.history.append({"step": step, **metrics})
                tracker.log_metrics(metrics, step)
                if t.eval_every and (step % t.eval_every == 0 or step == t.steps):
                    evaluate(step)
                if t.log_samples_every and step % t.log_samples_every == 0:
                    tracker.log_text(samples_jsonl(ray.get(scored[0])[:8]), f"samples/step_{step:06d}.jsonl")
                if t.save_traces:  # what `ponder export` turns into datasets (the flywheel)
                    traces = traces_jsonl([s for batch in ray.get(scored) for s in batch], step)
                    tracker.log_text(traces, f"{TRACES_DIR}/step_{step:06d}.jsonl")
                if cfg.checkpoint.every and (step % cfg.checkpoint.every == 0 or step == t.steps):
                    state.accounting, state.batches_drawn = steps.accounting(), steps.batches_drawn()
                    result.checkpoint = save_checkpoint(cfg, tracker, target, learners, state)
                bar.set_postfix(progress_line(metrics, state.evals), refresh=False)
            result.accounting = steps.close()
            tracker.log_metrics({f"final/{k}": v for k, v in result.accounting.items()}, t.steps)
            if t.save_final_model:
                tracker.log_artifact(export_final_model(cfg, target, result.checkpoint, learners, out), FINAL_MODEL)
                name = cfg.tracking.registered_model
                result.registered = f"{name}/{tracker.register_model(name)}" if name else None
        tracker.log_artifact(plot_curves(state.history, state.evals, out / "curves.png"))
        tracker.log_artifact(plot_compute_curve(state.history, state.evals, out / "accuracy_vs_compute.png"))
    finally:
        shutil.rmtree(weights_dir, ignore_errors=True)  # also when a killed learner could not clean up itself


def restarts(earlier: dict[str, int], *pools) -> dict[str, int]:
    """Actor restarts of the run by pool, those of earlier attempts (`earlier`) included."""
    return {pool.fanout.name: earlier.get(pool.fanout.name, 0) + pool.fanout.restarts for pool in pools}


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


def progress_line(metrics: dict[str, float], evals: dict[int, dict[str, float]]) -> dict[str, str]:
    last_eval = evals[max(evals)]["eval/accuracy"] if evals else float("nan")
    line = {"reward": f"{metrics['rollout/reward_mean']:.3f}", "acc": f"{metrics['rollout/accuracy']:.2f}",
            "heldout": f"{last_eval:.2f}", "tok/s": f"{metrics['perf/tokens_per_s']:.0f}"}
    if "episode/turns_mean" in metrics:  # multi-turn: turns and tool calls per episode
        line["turns"] = f"{metrics['episode/turns_mean']:.1f}"
        if "tool/calls" in metrics:
            line["calls"] = f"{metrics['tool/calls'] / metrics['episode/count']:.2f}"
    if "star/kept" in metrics:  # STaR: examples kept (rationalized among them)
        line["kept"] = f"{metrics['star/kept']:.0f} ({metrics['star/rationalized']:.0f} hinted)"
    line["time"] = "/".join(f"{k[5:]} {v:.1f}" for k, v in metrics.items() if k.startswith("time/") and k != "time/step")
    return line


def samples_jsonl(trajectories: list) -> str:
    return "\n".join(json.dumps({"prompt": t.problem.prompt, "answer": t.problem.answer, "response": t.response_text,
                                 "reward": t.reward, "terms": t.reward_terms, "version": t.policy_version,
                                 **({"turns": t.turns, "end": t.episode_end} if t.episode_end else {}),
                                 **({"masked": t.mask_reason} if t.masked else {})})
                     for t in trajectories) + "\n"
