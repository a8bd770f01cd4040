"""Test-time scaling: accuracy as a function of samples per problem (k) and thinking budget, for several ways of
turning k samples into one answer. Pure functions of scored trajectories; `platform/evaluate.py` generates them.

From K samples per problem (K = `eval.k`), for each k in 1, 2, 4, ..., K:
  pass@k     some sample of k is right (the unbiased estimator over all K)
  maj@k      the most common answer of k samples is right (vote keys: `rewards.extract.vote_key`)
  best@k     the sample a reward model scores highest is right
  rm_vote@k  votes weighted by exp(reward-model score) pick a right answer
maj/best/rm_vote are averaged over the K // k disjoint sets of k samples of each problem. best@k and rm_vote@k need a
`reward_model` term on the samples (a reward_model critic in `reward.functions`). Cost is the mean number of tokens
generated per problem: k times the mean response length (greedy: one response).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Optional

from ponder.eval.metrics import majority_correct, pass_at_k
from ponder.rewards.extract import vote_key
from ponder.types import Trajectory

RM_TERM = "reward_model"


@dataclass(frozen=True)
class Point:
    """One point of a scaling curve."""

    method: str  # greedy, pass, maj, best, rm_vote
    budget: Optional[int]  # thinking budget (None: unbounded)
    k: int
    accuracy: float
    tokens_per_problem: float


def powers_of_two(limit: int) -> list[int]:
    """1, 2, 4, ... up to `limit`, and `limit` itself.

    >>> powers_of_two(8), powers_of_two(6), powers_of_two(1)
    ([1, 2, 4, 8], [1, 2, 4, 6], [1])
    """
    ks = [1 << i for i in range(limit.bit_length()) if 1 << i <= limit]
    return ks if ks[-1] == limit else ks + [limit]


def by_problem(trajectories: list[Trajectory]) -> list[list[Trajectory]]:
    groups: dict[int, list[Trajectory]] = defaultdict(list)
    for t in trajectories:
        groups[t.group_id].append(t)
    return [sorted(g, key=lambda t: t.sample_index) for _, g in sorted(groups.items())]


def greedy_point(trajectories: list[Trajectory], budget: Optional[int]) -> Point:
    return Point("greedy", budget, 1, _mean([t.correct for t in trajectories]),
                 _mean([len(t.response_ids) for t in trajectories]))


def sampled_points(trajectories: list[Trajectory], budget: Optional[int]) -> list[Point]:
    """Every method at every k, from K samples per problem."""
    groups = by_problem(trajectories)
    size = min(len(g) for g in groups)
    tokens_per_sample = _mean([len(t.response_ids) for t in trajectories])
    has_rm = all(RM_TERM in t.reward_terms for t in trajectories)
    points = []
    for k in powers_of_two(size):
        cost = k * tokens_per_sample
        points.append(Point("pass", budget, k, _mean([pass_at_k(size, sum(t.correct for t in g), k)
                                                      for g in groups]), cost))
        methods: dict[str, Callable[[list[Trajectory]], bool]] = {"maj": majority_right}
        if has_rm:
            methods.update(best=best_right, rm_vote=rm_vote_right)
        for name, pick in methods.items():
            points.append(Point(name, budget, k, _mean([_mean([pick(g[i : i + k]) for i in range(0, size - k + 1, k)])
                                                        for g in groups]), cost))
    return points


def majority_right(samples: list[Trajectory]) -> bool:
    return majority_correct(_keys(samples), [t.correct for t in samples])


def rm_vote_right(samples: list[Trajectory]) -> bool:
    top = max(t.reward_terms[RM_TERM] for t in samples)  # exp of the score relative to the best: no overflow
    return majority_correct(_keys(samples), [t.correct for t in samples],
                            [math.exp(t.reward_terms[RM_TERM] - top) for t in samples])


def best_right(samples: list[Trajectory]) -> bool:
    return max(samples, key=lambda t: t.reward_terms[RM_TERM]).correct


def _keys(samples: list[Trajectory]) -> list[str | None]:
    return [vote_key(t.response_text, t.problem) for t in samples]


def points_to_rows(points: list[Point]) -> list[dict]:
    return [{"method": p.method, "budget": "none" if p.budget is None else p.budget, "k": p.k,
             "accuracy": round(p.accuracy, 6), "tokens_per_problem": round(p.tokens_per_problem, 2)} for p in points]


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0
