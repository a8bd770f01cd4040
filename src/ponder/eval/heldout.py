"""Held-out metrics of scored trajectories: accuracy, mean reward, pass@k and maj@k (k = samples per prompt).

Pure: the driver (between training steps) and `ponder eval` generate and score on the pools
(`platform/evaluate.py`), then call this.
"""

from __future__ import annotations

from ponder.envs.stats import episode_stats
from ponder.eval.metrics import majority_correct, pass_at_k
from ponder.eval.scaling import by_problem
from ponder.rewards.extract import vote_key
from ponder.types import Trajectory


def heldout_metrics(trajectories: list[Trajectory], prefix: str = "eval") -> dict[str, float]:
    """Accuracy and mean reward; with several samples per prompt also pass@k and maj@k (k = samples per prompt); for
    multi-turn episodes their turns, tool use and first-attempt against final accuracy (`envs/stats.py`)."""
    groups = by_problem(trajectories)
    k = min(len(g) for g in groups)
    out = {f"{prefix}/accuracy": sum(t.correct for t in trajectories) / len(trajectories),
           f"{prefix}/reward_mean": sum(t.reward for t in trajectories) / len(trajectories)}
    if k > 1:
        out[f"{prefix}/pass@{k}"] = sum(pass_at_k(len(g), sum(t.correct for t in g), k)
                                        for g in groups) / len(groups)
        out[f"{prefix}/maj@{k}"] = sum(majority_correct([vote_key((t.attempts or [t.response_text])[-1], t.problem) for t in g],
                                                        [t.correct for t in g]) for g in groups) / len(groups)
    return out | {f"{prefix}/{name}": value for name, value in episode_stats(trajectories).items()}
