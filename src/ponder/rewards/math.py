"""Math correctness through math-verify: the last `\\boxed{}` answer against the gold answer (gold first).

math-verify's own timeout relies on `signal.alarm`, which works only on a main thread; the reward pool runs this in a
worker process whose main thread calls it, and enforces a hard timeout from outside as well.
"""

from __future__ import annotations

from ponder.rewards.extract import last_boxed
from ponder.types import Problem

MAX_ANSWER_CHARS = 1000  # longer "answers" are not parsed at all: they are never right and can be slow


def math_reward(completion: str, problem: Problem) -> float:
    """1.0 if the final boxed answer is mathematically equal to the gold answer, else 0.0.

    >>> from ponder.types import Problem
    >>> math_reward(r"... </think> \\boxed{0.5}", Problem("x", r"\\frac{1}{2}"))
    1.0
    >>> math_reward("no box", Problem("x", "2"))
    0.0
    """
    predicted = last_boxed(completion)
    if predicted is None or len(predicted) > MAX_ANSWER_CHARS:
        return 0.0
    from math_verify import parse, verify

    gold = parse(f"\\boxed{{{problem.answer}}}")
    answer = parse(f"\\boxed{{{predicted}}}")
    return 1.0 if gold and answer and verify(gold, answer) else 0.0


def _prepare(options: dict) -> None:
    """Import math-verify (and sympy) before the first call, so the import is not on that call's clock."""
    import math_verify  # noqa: F401


math_reward.prepare = _prepare  # type: ignore[attr-defined]
