"""Evaluation on the pools: `rollout_and_score` (the driver's held-out evaluation between steps, with the current
policy) and `ponder eval`'s `evaluate_model`: held-out metrics of a saved model on the same rollout and reward actors as
training, and with `eval.thinking_budgets` / `eval.k` a test-time scaling sweep (eval/scaling.py) over budgets and
samples per problem. The metrics themselves are pure (`ponder.eval`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import ray

from ponder.actors.rollout import Sampling, Thinking
from ponder.data.datasets import load_problems
from ponder.data.stream import make_requests
from ponder.eval.heldout import heldout_metrics
from ponder.eval.scaling import Point, greedy_point, sampled_points
from ponder.platform.cluster import Cluster
from ponder.platform.config import PonderConfig
from ponder.platform.pools import RewardPool, RolloutPool
from ponder.types import Problem, Trajectory


def rollout_and_score(rollouts: RolloutPool, rewards: RewardPool, problems: list[Problem], template: str,
                      sampling: Sampling, seed: int, min_version: int = 0, budget_prompt: str = "") -> list[Trajectory]:
    """Generate and score `problems` once every engine serves weights of at least `min_version`; with
    `budget_prompt`, each prompt states the sampling's thinking budget (if it has one)."""
    budget = sampling.thinking.budget if sampling.thinking else None
    requests = make_requests(problems, template, seed, step=-1, budgets=() if budget is None else [budget],
                             budget_prompt=budget_prompt)
    scored, _ = rewards.score(rollouts.generate(requests, sampling, min_version)[0])
    return [t for batch in ray.get(scored) for t in batch]


@dataclass
class EvalResult:
    metrics: dict[str, float]  # the unbounded run's greedy/sampled metrics, and per budget `budget_<B>/...`
    points: list[Point] = field(default_factory=list)  # the scaling sweep, every budget and k


def evaluate_model(model_dir: str, cfg: PonderConfig, progress=None) -> EvalResult:
    """Greedy and `eval.k`-sample evaluation, once unbounded and once per thinking budget in `eval.thinking_budgets`.
    `progress(text)` is told what runs."""
    problems = load_problems(cfg.data.eval, "eval", cfg.data.task)[: cfg.eval.prompts]
    max_tokens, result = cfg.rollout.max_tokens, EvalResult({})
    with Cluster(cfg) as cluster:
        rollouts = RolloutPool(cluster.rollout_pool(model_dir), cfg.ft.max_actor_restarts)
        rewards = RewardPool(cluster.reward_pool(), cfg.ft.max_actor_restarts)
        for budget in [None, *cfg.eval.thinking_budgets]:
            thinking: Optional[Thinking] = None if budget is None else Thinking(
                budget, answer_prefix=cfg.rollout.answer_prefix)
            prefix = "" if budget is None else f"budget_{budget}/"
            if progress:
                progress(f"greedy, thinking budget {budget or 'none'}")
            greedy = rollout_and_score(rollouts, rewards, problems, cfg.data.template,
                                       Sampling(1, 0.0, 1.0, max_tokens, thinking=thinking, env=cfg.rollout.episodes), cfg.seed,
                                       budget_prompt=cfg.rollout.budget_prompt)
            result.metrics.update(heldout_metrics(greedy, prefix=f"{prefix}greedy"))
            result.points.append(greedy_point(greedy, budget))
            if cfg.eval.k > 1:
                if progress:
                    progress(f"{cfg.eval.k} samples per problem, thinking budget {budget or 'none'}")
                sampled = rollout_and_score(rollouts, rewards, problems, cfg.data.template,
                                            Sampling(cfg.eval.k, cfg.eval.temperature, 1.0, max_tokens,
                                                     thinking=thinking, env=cfg.rollout.episodes), cfg.seed,
                                            budget_prompt=cfg.rollout.budget_prompt)
                result.metrics.update(heldout_metrics(sampled, prefix=f"{prefix}sampled"))
                result.points.extend(sampled_points(sampled, budget))
    return result
