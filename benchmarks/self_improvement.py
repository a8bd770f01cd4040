"""Self-improvement on the embedded task (issue 17), from the demo's SFT warm start:

1. STaR with rationalization, STaR without, and GRPO, each for the same number of steps with held-out greedy accuracy
   every 2 steps; printed per step and at equal training wall-clock (the longest time all three reached).
2. The flywheel closed: the GRPO run's verified traces exported, a freshly initialised model fine-tuned on them with
   the warm start's SFT settings, and its held-out accuracy against the warm start's and against a fresh model
   fine-tuned the same way on the gold worked solutions of the same prompts.

Usage (nothing else running; ~15 minutes on 2 cores):

    .venv/bin/python benchmarks/self_improvement.py [--steps 12] [--out outputs/bench_self_improvement] [--replay]

With --replay: GRPO, GRPO with the replay of each step's verified successes, and GRPO with the replay of gold worked
solutions (algo.replay_data), same table, no flywheel.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from dataclasses import replace
from pathlib import Path

from ponder.data.datasets import load_problems
from ponder.data.tiny_model import build_tiny_model
from ponder.data.traces import TraceFilter
from ponder.learner.sft import run_sft
from ponder.platform.config import load_config
from ponder.platform.driver import train
from ponder.platform.evaluate import evaluate_model
from ponder.platform.export import export_run

RUNS = {"STaR + rationalization": ["configs/star.yaml"],
        "STaR, no rationalization": ["configs/star.yaml", "algo.star.rationalize=false"],
        "STaR + rationalization, restart": ["configs/star.yaml", "algo.star.restart=true"],
        "GRPO": []}
REPLAY_RUNS = {"GRPO + replay of successes (0.1)": ["algo.replay_coef=0.1"],
               "GRPO + replay of gold solutions (0.1, 32/step)": ["algo.replay_coef=0.1",
                                                                   "algo.replay_data=embedded:arithmetic"],
               "GRPO": []}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--out", default="outputs/bench_self_improvement")
    parser.add_argument("--replay", action="store_true", help="GRPO with and without the replay terms instead (no "
                                                                   "flywheel)")
    args = parser.parse_args()
    runs = REPLAY_RUNS if args.replay else RUNS
    out = Path(args.out)
    common = prepare(args.steps, out)
    base = load_config(["configs/default.yaml"], common)
    command = f"benchmarks/self_improvement.py --steps {args.steps}{' --replay' * args.replay}"
    results = compare(runs, common, out, command)

    if args.replay:
        return
    grpo = results["GRPO"]
    export = export_run(base, grpo.run_id, str(out / "flywheel.jsonl"), TraceFilter())
    print(f"\nflywheel: exported {export.rows} of {export.traces} traces (left out {export.left_out})")
    distilled = run_sft(replace(base.sft, out_dir=str(out / "distilled")), replace(base.data, train=export.uri))
    # the same prompts with their gold worked solutions: traces against gold at equal data
    exported = {p.prompt for p in load_problems(export.uri, "train", base.data.task)}
    gold = [p for p in load_problems(base.data.train, "train", base.data.task) if p.prompt in exported]
    (out / "gold.jsonl").write_text("".join(json.dumps({"prompt": p.prompt, "answer": p.answer, "solution": p.solution})
                                            + "\n" for p in gold))
    gold_sft = run_sft(replace(base.sft, out_dir=str(out / "gold_sft")), replace(base.data, train=str(out / "gold.jsonl")))
    cfg = load_config(["configs/default.yaml"], common + ["eval.k=1"])
    accuracy = {name: evaluate_model(str(model), cfg).metrics["greedy/accuracy"]
                for name, model in (("SFT warm start: 20,000 gold worked solutions", base.model.path),
                                    (f"fresh model SFT on the export ({export.rows} verified traces)", distilled),
                                    (f"fresh model SFT on the same {len(gold)} prompts' gold solutions", gold_sft))}
    accuracy["GRPO policy, last step"] = grpo.evals[max(grpo.evals)]["eval/accuracy"]
    print("\n| model | held-out greedy accuracy |\n| --- | --- |")
    for name, value in accuracy.items():
        print(f"| {name} | {value:.3f} |")


def prepare(steps: int, out: Path) -> list[str]:
    """A fresh `out`, the demo's model and SFT warm start (cached), and the overrides every run of a comparison
    shares: `steps` steps, held-out accuracy every 2, no checkpoints, MLflow under `out`."""
    shutil.rmtree(out, ignore_errors=True)
    common = [f"trainer.steps={steps}", "trainer.eval_every=2", "checkpoint.every=0",
              "trainer.save_final_model=false", f"tracking.uri=sqlite:///{out.resolve()}/mlflow.db",
              f"tracking.artifact_location={out.resolve()}/artifacts"]
    base = load_config(["configs/default.yaml"], common)
    build_tiny_model(base.tiny_model)
    run_sft(base.sft, base.data)
    return common


def compare(runs: dict[str, list[str]], common: list[str], out: Path, command: str) -> dict:
    """Train each run (config files and overrides over configs/default.yaml and `common`) one after another; print
    held-out accuracy per evaluation and at equal training wall-clock (the longest time every run reached)."""
    results, wall = {}, {}
    for name, extra in runs.items():
        files = [e for e in extra if e.endswith(".yaml")]
        cfg = load_config(["configs/default.yaml", *files],
                          common + [e for e in extra if "=" in e] + [f"trainer.output_dir={out}/{len(results)}"])
        started = time.perf_counter()
        results[name] = train(cfg)
        wall[name] = time.perf_counter() - started

    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; command: python {command}\n")
    print("| step | " + " | ".join(f"{n}: held-out (train s)" for n in runs) + " |")
    print("| --- |" + " --- |" * len(runs))
    for step in sorted(next(iter(results.values())).evals):
        cells = [f"{r.evals[step]['eval/accuracy']:.3f} ({r.evals[step]['time/train_elapsed_s']:.0f})"
                 for r in results.values()]
        print(f"| {step} | " + " | ".join(cells) + " |")
    budget = min(max(e["time/train_elapsed_s"] for e in r.evals.values()) for r in results.values())
    print(f"\nat equal training wall-clock ({budget:.0f} s, the longest all runs reached):")
    for name, r in results.items():
        step = max(s for s, e in r.evals.items() if e["time/train_elapsed_s"] <= budget + 1e-6)
        print(f"  {name}: {r.evals[step]['eval/accuracy']:.3f} (step {step}); whole run {wall[name]:.0f} s; "
              f"MLflow run {r.run_id}")
        print("    accounting: " + ", ".join(f"{k} {v:.0f}" for k, v in r.accounting.items() if v))
    return results


if __name__ == "__main__":
    main()
