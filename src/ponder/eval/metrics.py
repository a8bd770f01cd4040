"""Held-out metrics from per-sample correctness: pass@k (unbiased estimator) and maj@k (majority vote)."""

from __future__ import annotations

from math import comb


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn from n (c of them correct) is correct (Chen et al. 2021).

    >>> pass_at_k(4, 1, 1), pass_at_k(4, 1, 4), pass_at_k(4, 0, 2)
    (0.25, 1.0, 0.0)
    """
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def majority_correct(answers: list[str | None], correct: list[bool], weights: list[float] | None = None) -> bool:
    """Is the answer with the most votes — or with `weights`, the largest total weight — a correct one (ties: the
    first seen)? Missing answers do not vote; with no votes at all, no.

    >>> majority_correct(["3", "4", "3"], [True, False, True]), majority_correct([None, "4"], [False, False])
    (True, False)
    >>> majority_correct(["3", "4", "3"], [True, False, True], weights=[1.0, 5.0, 1.0])
    False
    """
    totals: dict[str, float] = {}
    for i, answer in enumerate(answers):
        if answer is not None:
            totals[answer] = totals.get(answer, 0.0) + (1.0 if weights is None else weights[i])
    if not totals:
        return False
    winner = max(totals, key=totals.__getitem__)  # the first of the largest, in the order first seen
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
