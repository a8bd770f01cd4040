"""The learner's algorithms on the embedded task (issue 18), from the demo's SFT warm start: GRPO, Dr. GRPO, RLOO,
REINFORCE++, GSPO, PPO with its value model (configs/ppo.yaml; one update per step, so no clip acts) and GRPO and
GSPO with 4 mini-batches per step (the clip acts), the same number of steps each with held-out greedy accuracy every
2 steps; printed per step and at equal training wall-clock. One run each (one seed): differences of a few points are
noise on 256 held-out problems.

Usage (nothing else running; ~25 minutes on 2 cores):

    .venv/bin/python benchmarks/algorithms.py [--steps 12] [--out outputs/bench_algorithms]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from self_improvement import compare, prepare

RUNS = {"GRPO": [],
        "Dr. GRPO": ["algo.norm_adv_by_std=false"],
        "RLOO": ["algo.name=rloo"],
        "REINFORCE++": ["algo.name=reinforce_pp"],
        "GSPO": ["algo.name=gspo"],
        "PPO (value model, 2 warm-up steps)": ["configs/ppo.yaml"],
        "PPO, value model lr 1e-3 × 4 epochs": ["configs/ppo.yaml", "critic.lr=1e-3", "critic.ppo_epochs=4"],
        "GRPO, 4 mini-batches": ["learner.num_minibatches=4"],
        "GSPO, 4 mini-batches": ["algo.name=gspo", "learner.num_minibatches=4"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--out", default="outputs/bench_algorithms")
    parser.add_argument("--only", nargs="*", help="run only these (names as in the table)")
    args = parser.parse_args()
    out = Path(args.out)
    common = prepare(args.steps, out)  # the demo's warm start (cached)
    runs = {k: v for k, v in RUNS.items() if not args.only or k in args.only}
    compare(runs, common, out, f"benchmarks/algorithms.py --steps {args.steps}")


if __name__ == "__main__":
    main()
