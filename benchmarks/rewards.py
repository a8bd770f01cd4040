"""B4 and B5: reward throughput.

B4 — math verification: the reward actor's class (`RewardWorker`, math + format as in the demo, verifier processes
with hard timeouts) against the same two reward functions called one after another in this process. Samples are the
demo's: embedded arithmetic problems with answers right, wrong, and as equivalent LaTeX (fractions) so that
math-verify parses and compares. Reports samples/s of each, their ratio, and the reward throughput as a multiple of
the demo's rollout samples/s (256 samples per step over the generation time of a demo step, `--demo-generate-s`).

B5 — code execution: one job = a small solution + 3 assert tests. Three ways, interleaved:
  - bare: `subprocess.run([python3, "-c", solution + tests])`, no isolation (what an unisolated reward does);
  - sandbox, cold: a new `Sandbox` per job (bubblewrap, the harness and its zygote interpreter start, run, kill);
  - sandbox, warm pool: `SandboxPool(warm=2).job` (started sandboxes whose zygotes fork each program's child, proven
    clean and reused between jobs).
Both sandboxed ways evaluate the asserts as the code reward does: in this process, on the plain values the program's
calls return from the sandbox (`rewards.code.evaluate`).
Reports jobs/s of each and the ratios warm/bare and warm/cold. Medians of `--repeats` interleaved rounds.

    .venv/bin/python benchmarks/rewards.py [--repeats 3] [--samples 1024] [--jobs 60]
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import subprocess
import time

from ponder.actors.reward import RewardWorker
from ponder.data.tasks import ArithmeticTask, generate_problems
from ponder.platform.config import RewardConfig
from ponder.rewards.code import evaluate
from ponder.rewards.extract import last_code_block
from ponder.rewards.code_tests import plan_tests
from ponder.rewards.format import format_reward
from ponder.rewards.math import math_reward
from ponder.rewards.sandbox import PYTHON, Limits, Sandbox, SandboxPool
from ponder.types import Trajectory

SOLUTION = "def add(a, b):\n    total = 0\n    for x in (a, b):\n        total += x\n    return total\n"
TESTS = ["assert add(1, 2) == 3", "assert add(-4, 4) == 0", "assert add(10**6, 1) == 1000001"]


def math_samples(n: int, seed: int = 0) -> list[Trajectory]:
    rng = random.Random(seed)
    samples = []
    for i, problem in enumerate(generate_problems(n, seed, ArithmeticTask())):
        answer = int(problem.answer)
        shown = rng.choice([str(answer), str(answer + rng.randint(1, 9)), f"\\frac{{{2 * answer}}}{{2}}"])
        text = f"{problem.solution}\n</think>\n\\boxed{{{shown}}}"
        samples.append(Trajectory(i, 0, problem, [1], [1], text, [0.0], "stop", 0))
    return samples


def b4(samples: list[Trajectory], worker: RewardWorker) -> tuple[float, float]:
    start = time.perf_counter()
    for t in samples:
        math_reward(t.response_text, t.problem) + 0.1 * format_reward(t.response_text, t.problem)
    serial = len(samples) / (time.perf_counter() - start)
    start = time.perf_counter()
    worker.score(samples)
    pooled = len(samples) / (time.perf_counter() - start)
    return serial, pooled


def b5(jobs: int, pool: SandboxPool, limits: Limits) -> dict[str, float]:
    plan = plan_tests({"tests": TESTS})
    code = last_code_block(f"```python\n{SOLUTION}```")
    rates = {}
    start = time.perf_counter()
    for _ in range(jobs):
        subprocess.run([PYTHON, "-c", SOLUTION + "\n".join(TESTS)], check=True, timeout=10)
    rates["bare"] = jobs / (time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(jobs):
        with Sandbox(limits) as box:
            assert all(evaluate(plan, box.job(code, "call")))
    rates["cold"] = jobs / (time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(jobs):
        with pool.job(code, "call") as job:
            assert all(evaluate(plan, job))
    rates["warm"] = jobs / (time.perf_counter() - start)
    return rates


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter,
                                epilog="example:\n  .venv/bin/python benchmarks/rewards.py --repeats 3")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--samples", type=int, default=1024, help="B4: math samples per round")
    p.add_argument("--jobs", type=int, default=60, help="B5: code jobs per way per round")
    p.add_argument("--demo-generate-s", type=float, default=4.6,
                   help="generation time of one demo step (256 samples), docs/benchmarks.md")
    args = p.parse_args()

    samples = math_samples(args.samples)
    worker = RewardWorker(RewardConfig(processes_per_worker=2))
    limits = Limits()
    pool = SandboxPool(limits, warm=2)
    try:
        worker.score(samples[:64])  # warm-up: imports and first calls on both sides
        b4(samples[:64], worker)
        b5(3, pool, limits)
        b4_rounds, b5_rounds = [], []
        for _ in range(args.repeats):
            b4_rounds.append(b4(samples, worker))
            b5_rounds.append(b5(args.jobs, pool, limits))
    finally:
        worker.close()
        pool.close()

    print(f"machine: {platform.machine()}, 2 cores; command: python benchmarks/rewards.py --repeats {args.repeats} "
          f"--samples {args.samples} --jobs {args.jobs}")
    serial = statistics.median(r[0] for r in b4_rounds)
    pooled = statistics.median(r[1] for r in b4_rounds)
    demo = 256 / args.demo_generate_s
    print("\nB4 math verification (math + format per sample)\n| way | samples/s |\n|---|---|")
    print(f"| serial, one process | {serial:.0f} |\n| RewardWorker, 2 verifier processes | {pooled:.0f} |")
    print(f"pool / serial = {pooled / serial:.2f}x; pool / demo rollout samples/s ({demo:.0f}) = {pooled / demo:.1f}x")
    rates = {k: statistics.median(r[k] for r in b5_rounds) for k in ("bare", "cold", "warm")}
    print("\nB5 code execution (3 assert tests per job)\n| way | jobs/s |\n|---|---|")
    for k, label in (("bare", "bare subprocess, no isolation"), ("cold", "sandbox, cold start per job"),
                     ("warm", "sandbox, warm pool")):
        print(f"| {label} | {rates[k]:.1f} |")
    print(f"warm / bare = {rates['warm'] / rates['bare']:.2f}x; warm / cold = {rates['warm'] / rates['cold']:.2f}x")


if __name__ == "__main__":
    main()
