"""B1 and B6: what streaming buys, and what Ray costs.

B1 — trained samples/s of `one_step_off` and `async` (with and without partial rollouts) against `sync`, on one
Ray cluster in one run, with a long-tailed response-length mix: every request gets its own length, drawn lognormal
(median `--median-len`, sigma 1, capped), and EOS is ignored so that lengths are exact. Repetitions of the modes are
interleaved (sync, one_step_off, async, async+partial, sync, ...) and medians reported. The ideal streaming speedup is
computed from the sync runs' own stage times: (generate + reward + train + sync) / max(generate + reward, train + sync).
Placement: the engine's threads on core 0, the learner pinned to core 1 with one thread (streaming overlaps them);
sync is measured on that placement and, for reference, on a second cluster where each stage may use both cores.

B6 — step time of the Ray pipeline (sync mode) against the same three components (vLLM engine, reward worker,
DeepSpeed learner) called directly in this one process, same model, prompts and lengths.

The model is the tiny Qwen2 built fresh (random weights: rewards are all 0, so the learner's work is the same as in
training but nothing is learned; throughput is the point). With `--task search` B1 runs the real workload instead:
the long chain-of-thought task's SFT warm start (`ponder sft configs/search.yaml` first), its prompts, the settings
of configs/search.yaml, its real rewards and real stopping (no synthetic lengths), and the learner really trains.
Usage:

    .venv/bin/python benchmarks/pipeline.py [--repeats 2] [--steps 4] [--b6]
    .venv/bin/python benchmarks/pipeline.py --task search --prompts 32 --n 8 --repeats 1 --steps 3
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time

import ray

from ponder.actors.buffer import Ledger
from ponder.actors.rollout import Sampling
from ponder.data.datasets import load_problems
from ponder.data.stream import PromptStream, make_requests
from ponder.data.tiny_model import build_tiny_model
from ponder.platform.cluster import Cluster
from ponder.platform.config import TinyModelConfig, load_config
from ponder.platform.steps import grpo_step, streaming_step
from ponder.platform.pools import RewardPool, RolloutPool
from ponder.platform.pipeline import Schedule, StreamingRollouts

SEARCH_CONFIG = "configs/search.yaml"
MODES = {"sync": None, "one_step_off": Schedule(1, False), "async": Schedule(2, False),
         "async+partial": Schedule(2, True)}


def config(args, pinned: bool):
    pins = ["rollout.cpu_bind=0", "learner.cpu_bind=1", "learner.num_threads=1"] if pinned else []
    if args.task == "search":  # the task's own config: its length cap, micro-batches and rewards
        return load_config([SEARCH_CONFIG], [f"trainer.prompts_per_step={args.prompts}",
                                             f"rollout.samples_per_prompt={args.n}", "cluster.num_cpus=4", *pins])
    return load_config([], [f"trainer.prompts_per_step={args.prompts}", f"rollout.samples_per_prompt={args.n}",
                            f"rollout.max_tokens={args.cap}", "learner.micro_batch_size=16", "cluster.num_cpus=4",
                            "rollout.kv_cache_gb=1.0", *pins])


def prompt_source(args, problems):
    """Requests for the index-th batch. Synthetic: per-request lengths, lognormal(median, sigma 1), capped, seeded by
    the batch index; search: the task's prompts as they are."""
    stream = PromptStream(problems, args.prompts, seed=0)

    def batch(index: int) -> list:
        if args.task == "search":
            return make_requests(stream.next(), "think", 0, index, first_group=index * args.prompts)
        rng = random.Random(index)
        return [dataclasses.replace(r, max_tokens=min(args.cap, max(8, int(rng.lognormvariate(
                    math.log(args.median_len), 1.0)))))
                for r in make_requests(stream.next(), "think", 0, index, first_group=index * args.prompts)]
    return batch


class Bench:
    """One cluster, reused by every mode: fresh learner and buffer per run, the engine reset to version 0."""

    def __init__(self, args, model: str, pinned: bool, tmp: str):
        self.args, self.model, self.tmp = args, model, tmp
        self.cluster = Cluster(config(args, pinned))
        self.rollouts, self.rewards = self.cluster.rollout_pool(model), self.cluster.reward_pool()
        data, r = self.cluster.cfg.data, self.cluster.cfg.rollout
        self.problems = load_problems(data.train, "train", data.task)
        self.sampling = Sampling(args.n, r.temperature, r.top_p, r.max_tokens, ignore_eos=args.task == "synthetic")

    def run(self, mode: str) -> dict[str, float]:
        learners = self.cluster.learner_group(self.model)
        self.cluster.connect_weight_sync(learners, self.rollouts, tempfile.mkdtemp(dir=self.tmp))
        handle = learners.publish(0)
        ray.get([w.load_weights.remote(handle) for w in self.rollouts])
        prompts, schedule, ledger, pipeline = prompt_source(self.args, self.problems), MODES[mode], Ledger(), None
        if schedule is not None:
            buffer = self.cluster.buffer(schedule.max_staleness, False)
            pipeline = StreamingRollouts.on_ray(schedule, prompts, RolloutPool(self.rollouts, 0),
                                                RewardPool(self.rewards, 0), buffer, self.sampling, self.args.prompts)

        def step_fn(step: int):
            if pipeline is None:
                return grpo_step(RolloutPool(self.rollouts, 0), RewardPool(self.rewards, 0), learners, prompts(step),
                                 self.sampling, step, ledger)
            return streaming_step(pipeline, learners, step)
        history = []
        for step in range(1, self.args.warmup + self.args.steps + 1):
            started = time.perf_counter()
            metrics, _ = step_fn(step)
            metrics["wall"] = time.perf_counter() - started
            history.append(metrics)
        if pipeline is not None:
            pipeline.close()
            self._drain()
        self.cluster.retire(learners)
        measured = history[self.args.warmup:]
        wall = sum(m["wall"] for m in measured)
        out = {"samples_per_s": len(measured) * self.args.prompts * self.args.n / wall, "step_s": wall / len(measured),
               "tokens_per_step": statistics.mean(m["rollout/tokens"] for m in measured)}
        for key in ("generate", "reward", "train", "weight_sync", "wait"):
            if f"time/{key}" in measured[0]:
                out[key] = statistics.mean(m[f"time/{key}"] for m in measured)
        return out

    def _drain(self) -> None:
        """Wait until the engines have finished what the last run left in flight (its groups are simply dropped)."""
        while any(ray.get(w.stats.remote())["running"] for w in self.rollouts):
            time.sleep(0.2)

    def close(self) -> None:
        self.cluster.shutdown()

    def run_once(self, mode: str) -> dict[str, float]:
        try:
            return self.run(mode)
        finally:
            self.close()


def b1(args, model: str, tmp: str) -> None:
    results: dict[str, list[dict]] = {m: [] for m in MODES}
    bench = Bench(args, model, pinned=True, tmp=tmp)
    try:
        for rep in range(args.repeats):
            for mode in MODES:
                results[mode].append(bench.run(mode))
                print(f"  rep {rep} {mode}: {results[mode][-1]}", flush=True)
    finally:
        bench.close()
    results["sync (both cores per stage)"] = [Bench(args, model, pinned=False, tmp=tmp).run_once("sync")]
    best_sync = min(statistics.median(r["step_s"] for r in results[m])
                    for m in ("sync", "sync (both cores per stage)"))
    s = {k: statistics.median(r[k] for r in results["sync"]) for k in ("generate", "reward", "train", "weight_sync")}
    gen, train = s["generate"] + s["reward"], s["train"] + s["weight_sync"]
    ideal = (gen + train) / max(gen, train)
    workload = (f"lengths lognormal(median {args.median_len}, sigma 1, cap {args.cap})" if args.task == "synthetic"
                else f"embedded:search from {model}, real lengths and rewards")
    print(f"\nB1 — {args.prompts} prompts x {args.n} samples per step, {workload}, {args.steps} measured steps after "
          f"{args.warmup} warm-up, medians of {args.repeats} interleaved repetitions")
    print(f"sync stage times (pinned): generate+reward {gen:.2f} s, train+sync {train:.2f} s -> ideal speedup "
          f"{ideal:.2f}x\n")
    # Streaming trains the groups that finish first, so over a few steps its batches are shorter than sync's (the
    # long ones are trained later): trained tokens/s is shown beside samples/s for that reason.
    print("| mode | trained samples/s | trained tokens/s | step (s) | speedup vs best sync | fraction of ideal |\n"
          "|---|---|---|---|---|---|")
    for mode, runs in results.items():
        step = statistics.median(r["step_s"] for r in runs)
        rate = statistics.median(r["samples_per_s"] for r in runs)
        tokens = statistics.median(r["tokens_per_step"] / r["step_s"] for r in runs)
        speedup = best_sync / step
        print(f"| {mode} | {rate:.2f} | {tokens:.0f} | {step:.2f} | {speedup:.2f}x | {speedup / ideal:.2f} |")


def b6(args, model: str, tmp: str) -> None:
    """The same sync step through Ray actors and through plain objects in this process, alternated."""
    from ponder.actors.reward import RewardWorker
    from ponder.actors.rollout import RolloutWorker
    from ponder.learner.worker import LearnerWorker

    cfg = config(args, pinned=False)
    problems = load_problems("embedded:arithmetic", "train", cfg.data.task)
    sampling = Sampling(args.n, 1.0, 1.0, args.cap, ignore_eos=True)
    local_times = []
    rollout, reward = RolloutWorker(model, "float32", cfg.rollout, 0), RewardWorker(cfg.reward)
    learner = LearnerWorker(model, "float32", cfg.learner, cfg.algo, rank=0, master_port=29533,
                            samples_per_step=args.prompts * args.n, temperature=1.0,
                            weights_dir=tempfile.mkdtemp(dir=tmp), seed=0)
    try:
        prompts = prompt_source(args, problems)
        for step in range(1, args.warmup + args.steps + 1):
            started = time.perf_counter()
            scored, _ = reward.score(rollout.generate(prompts(step), sampling))
            learner.train(scored)
            rollout.load_weights(learner.publish_weights(step))
            local_times.append(time.perf_counter() - started)
    finally:
        rollout.close(), reward.close(), learner.close()
    through_ray = Bench(args, model, pinned=False, tmp=tmp).run_once("sync")["step_s"]
    local = statistics.median(local_times[args.warmup:])
    print(f"\nB6 — sync step, same components: in one process {local:.2f} s, through Ray {through_ray:.2f} s "
          f"-> {through_ray / local:.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4, help="measured steps per run")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--median-len", type=int, default=100)
    parser.add_argument("--cap", type=int, default=768)
    parser.add_argument("--b6", action="store_true", help="also run B6 (Ray vs one process)")
    parser.add_argument("--only-b6", action="store_true")
    parser.add_argument("--task", choices=("synthetic", "search"), default="synthetic",
                        help="B1's workload: synthetic lengths on a fresh model, or the long task's warm start")
    parser.add_argument("--model", default="artifacts/search/sft", help="--task search: the SFT warm start")
    args = parser.parse_args()
    if args.task == "search" and (args.b6 or args.only_b6):
        parser.error("B6 runs on the synthetic workload only: drop --b6/--only-b6 or --task search")
    if args.task == "search" and not os.path.isdir(args.model):
        parser.error(f"--model {args.model} does not exist: run `ponder init-model {SEARCH_CONFIG} && "
                     f"ponder sft {SEARCH_CONFIG}` first")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; command: python {' '.join(sys.argv)}", flush=True)
    with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
        model = args.model if args.task == "search" else str(build_tiny_model(TinyModelConfig(out_dir=f"{tmp}/model")))
        if not args.only_b6:
            b1(args, model, tmp)
        if args.b6 or args.only_b6:
            b6(args, model, tmp)


if __name__ == "__main__":
    main()
