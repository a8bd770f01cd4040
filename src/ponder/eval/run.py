"""`ponder eval`: held-out metrics of a saved model, on the same rollout and reward actors as training."""

from __future__ import annotations

from ponder.actors.rollout import Sampling
from ponder.data.datasets import load_problems
from ponder.eval.heldout import heldout_metrics, rollout_and_score
from ponder.platform.cluster import Cluster
from ponder.platform.config import PonderConfig
from ponder.platform.recovery import Rewards, Rollouts


def evaluate_model(model_dir: str, cfg: PonderConfig) -> dict[str, float]:
    problems = load_problems(cfg.data.eval, "eval", cfg.data.task)[: cfg.eval.prompts]
    max_tokens = cfg.rollout.max_tokens
    with Cluster(cfg) as cluster:
        rollouts = Rollouts(cluster.rollout_pool(model_dir), cfg.ft.max_actor_restarts)
        rewards = Rewards(cluster.reward_pool(), cfg.ft.max_actor_restarts)
        greedy = rollout_and_score(rollouts, rewards, problems, cfg.data.template, Sampling(1, 0.0, 1.0, max_tokens),
                                   cfg.seed)
        metrics = heldout_metrics(greedy, prefix="greedy")
        if cfg.eval.k > 1:
            sampled = rollout_and_score(rollouts, rewards, problems, cfg.data.template,
                                        Sampling(cfg.eval.k, cfg.eval.temperature, 1.0, max_tokens), cfg.seed)
            metrics.update(heldout_metrics(sampled, prefix="sampled"))
    return metrics
