"""Held-out metrics from per-sample correctness: pass@k (unbiased estimator) and maj@k (majority vote)."""

from __future__ import annotations

from collections import Counter
from math import comb


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn from n (c of them correct) is correct (Chen et al. 2021).

    >>> pass_at_k(4, 1, 1), pass_at_k(4, 1, 4), pass_at_k(4, 0, 2)
    (0.25, 1.0, 0.0)
    """
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def majority_correct(answers: list[str | None], correct: list[bool]) -> bool:
    """Is the most common extracted answer (ties: first seen) a correct one? Missing answers do not vote.

    >>> majority_correct(["3", "4", "3"], [True, False, True]), majority_correct([None, "4"], [False, False])
    (True, False)
    """
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return False
    winner = votes.most_common(1)[0][0]
    return next(ok for a, ok in zip(answers, correct) if a == winner)


def time_to_gain(evals: dict[int, dict[str, float]], points: float) -> tuple[int, float] | None:
    """(step, training seconds) of the first evaluation at least `points` accuracy points above step 0's, or None.

    >>> evals = {0: {"eval/accuracy": .4, "time/train_elapsed_s": 0}, 5: {"eval/accuracy": .55, "time/train_elapsed_s": 40}}
    >>> time_to_gain(evals, 10), time_to_gain(evals, 20)
    ((5, 40), None)
    """
    start = evals[0]["eval/accuracy"]
    for step in sorted(evals):
        if evals[step]["eval/accuracy"] >= start + points / 100 - 1e-9:
            return step, evals[step]["time/train_elapsed_s"]
    return None
