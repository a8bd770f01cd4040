"""Time to accuracy of the embedded demo: held-out greedy accuracy over GRPO wall-clock.

Runs init-model, SFT and `ponder train` on a config (default: configs/default.yaml) and prints a Markdown table of
held-out accuracy against training wall-clock (generation + reward + training + weight sync, evaluation excluded),
plus the time to +10, +20 and +30 points over the SFT start, and the sample accounting. Usage:

    .venv/bin/python benchmarks/time_to_accuracy.py [configs/default.yaml] [key=value ...]
"""

from __future__ import annotations

import platform
import sys
import time

from ponder.data.tiny_model import build_tiny_model
from ponder.eval.metrics import time_to_gain
from ponder.learner.sft import run_sft
from ponder.platform.cli import resolve_resume, split_args
from ponder.platform.config import load_config
from ponder.platform.driver import train


def main(argv: list[str]) -> None:
    files, overrides = split_args(argv or ["configs/default.yaml"])
    cfg = load_config(files, overrides)
    build_tiny_model(cfg.tiny_model)
    run_sft(cfg.sft, cfg.data)
    target, _, _ = resolve_resume(cfg, None)  # a new run; refuses to overwrite an unfinished one's checkpoints
    started = time.perf_counter()
    result = train(cfg, target)
    total = time.perf_counter() - started
    print(f"\nmachine: {platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores; "
          f"command: python benchmarks/time_to_accuracy.py {' '.join(argv)}")
    print(f"MLflow run {result.run_id}; whole `train` call {total:.0f} s (engine start, evals and export included)\n")
    print("| step | train wall-clock (s) | held-out accuracy |\n| --- | --- | --- |")
    for step in sorted(result.evals):
        e = result.evals[step]
        print(f"| {step} | {e['time/train_elapsed_s']:.0f} | {e['eval/accuracy']:.3f} |")
    for points in (10, 20, 30):
        hit = time_to_gain(result.evals, points)
        print(f"+{points} points: " + (f"step {hit[0]}, {hit[1]:.0f} s of training" if hit else "not reached"))
    print("accounting: " + ", ".join(f"{k} {v:.0f}" for k, v in result.accounting.items() if v))


if __name__ == "__main__":
    main(sys.argv[1:])
