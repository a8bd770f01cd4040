"""Held-out evaluation on running rollout and reward actors: greedy pass@1, sampled pass@k and maj@k.

Used by the driver between training steps (with the current policy) and by `ponder eval` (with a saved model).
"""

from __future__ import annotations

import ray

from ponder.actors.rollout import Sampling
from ponder.data.stream import make_requests
from ponder.eval.metrics import majority_correct, pass_at_k
from ponder.eval.scaling import by_problem
from ponder.platform.recovery import Rewards, Rollouts
from ponder.rewards.extract import vote_key
from ponder.types import Problem, Trajectory


def rollout_and_score(rollouts: Rollouts, rewards: Rewards, problems: list[Problem], template: str, sampling: Sampling,
                      seed: int, min_version: int = 0, budget_prompt: str = "") -> list[Trajectory]:
    """Generate and score `problems` once every engine serves weights of at least `min_version`; with
    `budget_prompt`, each prompt states the sampling's thinking budget (if it has one)."""
    budget = sampling.thinking.budget if sampling.thinking else None
    requests = make_requests(problems, template, seed, step=-1, budgets=() if budget is None else [budget],
                             budget_prompt=budget_prompt)
    scored, _ = rewards.score(rollouts.generate(requests, sampling, min_version)[0])
    return [t for batch in ray.get(scored) for t in batch]


def heldout_metrics(trajectories: list[Trajectory], prefix: str = "eval") -> dict[str, float]:
    """Accuracy and mean reward; with several samples per prompt also pass@k and maj@k (k = samples per prompt)."""
    groups = by_problem(trajectories)
    k = min(len(g) for g in groups)
    out = {f"{prefix}/accuracy": sum(t.correct for t in trajectories) / len(trajectories),
           f"{prefix}/reward_mean": sum(t.reward for t in trajectories) / len(trajectories)}
    if k > 1:
        out[f"{prefix}/pass@{k}"] = sum(pass_at_k(len(g), sum(t.correct for t in g), k)
                                        for g in groups) / len(groups)
        out[f"{prefix}/maj@{k}"] = sum(majority_correct([vote_key(t.response_text, t.problem) for t in g],
                                                        [t.correct for t in g]) for g in groups) / len(groups)
    return out
