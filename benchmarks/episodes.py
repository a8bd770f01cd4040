"""Multi-turn episodes before and after GRPO (issue 16): held-out accuracy, tool-call quality and self-revision.

Each model directory is evaluated on the same held-out problems of a config's task, through the real rollout engine
(`RolloutWorker`, vLLM) with the config's environment, greedy and with `--samples` samples at temperature 1; answers
are scored as the reward actor scores them (the configured reward functions on the turns the environment marked as
answers). Reported per model and decoding:

- accuracy: the final answer is right;
- tool use (`rollout.env.name: tools`): calls per episode; well-formed: the episode made a call the tool could run
  (no error observation); faithful: its first call's expression is exactly the question (the embedded tool task);
- self-revision (`revision`): first-attempt and final accuracy, and revisions that fixed / broke an answer
  (`envs/stats.py`, as training logs them).

Usage (docs/benchmarks.md has the results and the runs that made the models):

    .venv/bin/python benchmarks/episodes.py configs/tools.yaml artifacts/tools/sft outputs/tools/final_model
    .venv/bin/python benchmarks/episodes.py "configs/default.yaml configs/revision.yaml" artifacts/tiny/sft \\
        outputs/revision/final_model
"""

from __future__ import annotations

import argparse
import json
import platform
import re

from ponder.actors.rollout import RolloutWorker, Sampling
from ponder.data.datasets import load_problems
from ponder.data.stream import make_requests
from ponder.envs.stats import episode_stats
from ponder.envs.tools import parse_call
from ponder.platform.config import load_config
from ponder.rewards.registry import resolve
from ponder.types import Trajectory


def score(trajectories: list[Trajectory], accuracy_from: str) -> None:
    """The accuracy term's verdict on each answer, as the reward actor gives it: `attempts_correct` and `correct`."""
    check = resolve(accuracy_from)
    for t in trajectories:
        t.attempts_correct = [check(text, t.problem) >= 1.0 for text in (t.attempts or [t.response_text])]
        t.correct = t.attempts_correct[-1]


def summary(trajectories: list[Trajectory]) -> dict[str, float]:
    n = len(trajectories)
    out = {"accuracy": sum(t.correct for t in trajectories) / n,
           "turns": sum(t.turns for t in trajectories) / n,
           "masked": sum(t.masked for t in trajectories) / n}
    calls = [t.env_metrics.get("tool/calls", 0.0) for t in trajectories]
    if any(calls):
        out["calls_per_episode"] = sum(calls) / n
        out["well_formed"] = sum(c > 0 and t.env_metrics.get("tool/errors", 0.0) == 0
                                 for c, t in zip(calls, trajectories)) / n
        out["faithful"] = sum(_first_call(t) == t.problem.prompt for t in trajectories) / n
    # self-revision: first-attempt and final accuracy, revisions that fixed / broke an answer (counts)
    out.update({k: v for k, v in episode_stats(trajectories).items() if k.startswith("revision/")})
    return out


def _first_call(t: Trajectory) -> str | None:
    match = re.search(r"<calc>.*?</calc>", t.response_text, re.DOTALL)
    call = parse_call(match.group(0)) if match else None
    return call[1] if call else None


def evaluate(model_dir: str, cfg, problems, samples: int) -> dict[str, dict[str, float]]:
    worker = RolloutWorker(model_dir, cfg.model.dtype, cfg.rollout, cfg.seed)
    try:
        out = {}
        for name, sampling in (("greedy", Sampling(1, 0.0, 1.0, cfg.rollout.max_tokens, env=cfg.rollout.episodes)),
                               (f"T=1 x{samples}", Sampling(samples, 1.0, 1.0, cfg.rollout.max_tokens,
                                                             env=cfg.rollout.episodes))):
            trajectories = worker.generate(make_requests(problems, cfg.data.template, cfg.seed, 0), sampling)
            score(trajectories, cfg.reward.accuracy_from)
            out[name] = summary(trajectories)
        return out
    finally:
        worker.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", help="config file(s), space-separated, as for ponder train")
    parser.add_argument("models", nargs="+", help="model directories to compare (e.g. the SFT start, the GRPO end)")
    parser.add_argument("--prompts", type=int, default=256, help="held-out problems")
    parser.add_argument("--samples", type=int, default=4, help="samples per problem at temperature 1")
    args = parser.parse_args()
    cfg = load_config(args.configs.split(), ["rollout.kv_cache_gb=0.5"])
    problems = load_problems(cfg.data.eval, "eval", cfg.data.task)[: args.prompts]
    results = {model: evaluate(model, cfg, problems, args.samples) for model in args.models}
    print(f"machine: {platform.processor() or platform.machine()}, {len(problems)} held-out problems")
    for model, by_decoding in results.items():
        for decoding, metrics in by_decoding.items():
            print(f"{model:40s} {decoding:8s} " + "  ".join(f"{k}={v:.3f}" for k, v in metrics.items()))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
