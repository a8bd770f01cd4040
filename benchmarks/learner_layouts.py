"""Learner memory and throughput by batch layout (issue 18): the same training step on a long-tailed length mix with
count-based micro-batches, a token budget, packing, and each with gradient checkpointing.

Each layout runs in its own process (the peak resident memory of a process only grows): one DeepSpeed rank (ZeRO-2,
CPU), the demo's tiny model widened to a 4k context, 64 samples whose lengths are long-tailed like the long
chain-of-thought task's (most under 150 tokens, a few up to 1,200), 1 warm-up step and 3 timed steps. Reported per
layout: trained tokens/s (real tokens, padding excluded; the median step), the peak resident memory the step adds
over the process after set-up, and that per trained token of the step.

Usage (nothing else running; ~5 minutes on 2 cores):

    .venv/bin/python benchmarks/learner_layouts.py [--samples 64] [--budget 4096]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace

LAYOUTS = {
    "count (64 a micro-batch)": {},
    "count, checkpointing": {"gradient_checkpointing": True},
    "token budget": {"micro_batch_tokens": "budget"},
    "token budget, checkpointing": {"micro_batch_tokens": "budget", "gradient_checkpointing": True},
    "packed": {"micro_batch_tokens": "budget", "packing": True},
    "packed, checkpointing": {"micro_batch_tokens": "budget", "packing": True, "gradient_checkpointing": True},
}


def lengths(n: int, seed: int = 0) -> list[int]:
    """Response lengths of a long-tailed mix: 70 % 40-150 tokens, 25 % 150-500, 5 % 500-1,200."""
    rng = random.Random(seed)
    return [rng.randint(*rng.choices([(40, 150), (150, 500), (500, 1200)], [0.70, 0.25, 0.05])[0]) for _ in range(n)]


def one_layout(layout: dict, samples: int, model_dir: str) -> dict:
    """In this process: set up a rank with `layout`, train 1 + 3 steps, measure."""
    import torch

    from ponder.learner.worker import LearnerWorker
    from ponder.platform.config import AlgoConfig, LearnerConfig
    from ponder.transport import node_address
    from ponder.types import Problem, Trajectory

    cfg = LearnerConfig(zero_stage=2, lr=1e-5, micro_batch_size=64, num_threads=2, **layout)
    worker = LearnerWorker(model_dir, "float32", cfg, AlgoConfig(), rank=0, samples_per_step=samples,
                           temperature=1.0, seed=0)
    worker.setup(*node_address())
    rng = random.Random(1)
    vocab = worker.tokenizer.vocab_size
    batch = []
    for i, n in enumerate(lengths(samples)):
        prompt = [rng.randrange(4, vocab) for _ in range(40)]
        response = [rng.randrange(4, vocab) for _ in range(n)]
        batch.append(Trajectory(i // 8, i % 8, Problem("q", "a"), prompt, response, "", [-4.0] * n, "stop", 0,
                                reward=float(i % 2)))
    tokens = sum(len(t.prompt_ids) + len(t.response_ids) for t in batch)
    torch.manual_seed(0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for step in range(4):
        started = time.perf_counter()
        worker.train([replace(t, group_id=t.group_id + 100 * step) for t in batch])
        times.append(time.perf_counter() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before  # KiB
    worker.engine.destroy()
    return {"tokens": tokens, "tokens_per_s": tokens / statistics.median(times[1:]),
            "peak_mib": peak / 1024, "peak_kib_per_token": peak / tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--budget", type=int, default=4096, help="learner.micro_batch_tokens of the budget layouts")
    parser.add_argument("--layout", help=argparse.SUPPRESS)  # internal: run one layout, print JSON
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.layout:
        print(json.dumps(one_layout(json.loads(args.layout), args.samples, args.model)))
        return

    from ponder.data.tiny_model import build_tiny_model
    from ponder.platform.config import load_config

    model_dir = tempfile.mkdtemp(prefix="ponder-layouts-")
    build_tiny_model(replace(load_config([], []).tiny_model, out_dir=model_dir))
    results = {}
    for name, layout in LAYOUTS.items():
        layout = {k: args.budget if v == "budget" else v for k, v in layout.items()}
        out = subprocess.run([sys.executable, __file__, "--layout", json.dumps(layout), "--samples", str(args.samples),
                              "--model", model_dir], capture_output=True, text=True, check=True)
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        print(name, results[name], flush=True)
    base = results["count (64 a micro-batch)"]
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; command: python "
          f"benchmarks/learner_layouts.py --samples {args.samples} --budget {args.budget}; "
          f"{base['tokens']} tokens a step (lengths {min(lengths(args.samples))}-{max(lengths(args.samples))} + 40)\n")
    print("| layout | trained tokens/s | × count | peak memory added (MiB) | KiB per trained token |")
    print("| --- | --- | --- | --- | --- |")
    for name, r in results.items():
        print(f"| {name} | {r['tokens_per_s']:.0f} | {r['tokens_per_s'] / base['tokens_per_s']:.2f} | "
              f"{r['peak_mib']:.0f} | {r['peak_kib_per_token']:.1f} |")


if __name__ == "__main__":
    main()
