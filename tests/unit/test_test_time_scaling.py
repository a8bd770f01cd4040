"""Test-time scaling metrics by hand: pass@k, maj@k, best-of-k and RM-weighted votes over disjoint sets of k
samples, and votes on a code task."""

from __future__ import annotations

import pytest

from ponder.eval.scaling import greedy_point, sampled_points
from ponder.types import Problem, Trajectory

MATH = Problem("q", "7")


def sample(index: int, answer: str | None, correct: bool, rm: float | None = None, tokens: int = 10,
           problem: Problem = MATH, group: int = 0, text: str | None = None) -> Trajectory:
    text = text if text is not None else ("" if answer is None else f"</think>\\boxed{{{answer}}}")
    return Trajectory(group, index, problem, [1], [2] * tokens, text, [0.0] * tokens, "stop", 0, correct=correct,
                      reward_terms={} if rm is None else {"reward_model": rm})


def table(points):
    return {(p.method, p.k): (p.accuracy, p.tokens_per_problem) for p in points}


def test_votes_over_disjoint_sets_by_hand():
    # four samples: right, wrong "5", wrong "5", right. k=2 sets: (7, 5) tie -> first seen, right; (5, 7) -> wrong.
    # The reward model prefers the right ones in the first set and the wrong one in the second.
    samples = [sample(0, "7", True, rm=2.0), sample(1, "5", False, rm=0.0), sample(2, "5", False, rm=3.0),
               sample(3, "7", True, rm=1.0)]
    got = table(sampled_points(samples, budget=None))
    assert got[("pass", 1)] == (0.5, 10) and got[("pass", 2)][0] == pytest.approx(1 - 1 / 6)
    assert got[("pass", 4)] == (1.0, 40)
    assert got[("maj", 1)][0] == 0.5 and got[("maj", 2)][0] == 0.5 and got[("maj", 4)][0] == 1.0  # 2-2 tie: "7" first
    assert got[("best", 2)][0] == 0.5 and got[("best", 4)][0] == 0.0  # the top score (3.0) is a wrong sample
    # weighted vote over all four: "7" has e^2 + e^1 ~ 10.1, "5" has e^0 + e^3 ~ 21.1 -> wrong
    assert got[("rm_vote", 4)][0] == 0.0 and got[("rm_vote", 2)][0] == 0.5


def test_no_reward_model_no_best_or_rm_vote_and_unanswered_samples_do_not_vote():
    samples = [sample(0, None, False), sample(1, None, False), sample(2, "7", True), sample(3, "5", False)]
    got = table(sampled_points(samples, budget=64))
    assert {m for m, _ in got} == {"pass", "maj"}
    assert got[("maj", 2)][0] == 0.5  # (none, none): nobody voted, wrong; ("7", "5"): "7" first seen, right
    assert greedy_point(samples[:2], 64).accuracy == 0.0 and greedy_point(samples[2:], 64).accuracy == 0.5


def test_code_votes_use_the_normalised_program():
    code = Problem("f(x)=2x", "", metadata={"answer_format": "code", "tests": ["assert f(1) == 2"]})
    same = ["```python\ndef f(x):\n    return 2*x  # double\n```", "```\ndef f(x): return 2 * x\n```"]
    other = "```python\ndef f(x):\n    return x + x + 1\n```"
    samples = [sample(0, None, False, problem=code, text=other), sample(1, None, True, problem=code, text=same[0]),
               sample(2, None, True, problem=code, text=same[1]), sample(3, None, False, problem=code, text=other + " ")]
    # two programs that differ only in spacing and comments vote together; so do the two copies of the wrong one
    assert table(sampled_points(samples[:3], None))[("maj", 3)][0] == 1.0
    assert table(sampled_points([samples[0], samples[3], samples[1]], None))[("maj", 3)][0] == 0.0
