"""Partial credit from a worked solution: how far the completion's thinking follows it before it first goes wrong.

An outcome reward says nothing when every sample of a group is wrong — on a long search that is most groups, and
one slip anywhere makes a sample wrong. This term tells the group's wrong samples apart by how much of the worked
solution each reproduced, character for character, before departing from it: the sample that slipped in its fifth
line scores above the one that slipped in its first. Only a right search scores 1, and only the trusted side holds the
solution (the problem's `solution`, never shown to the policy), so the term cannot be raised except by doing the
work. Problems without a worked solution score 0.
"""

from __future__ import annotations

from os.path import commonprefix

from ponder.data.template import THINK_CLOSE
from ponder.types import Problem


def steps_reward(completion: str, problem: Problem) -> float:
    """The fraction of the worked solution that the thinking reproduces as a prefix (whitespace at line ends and
    blank lines ignored), in [0, 1].

    >>> p = Problem("find n>=137 with digit sum 13", "139", solution="137 13-1=12-3=9-7=2 no\\n138 13-1=12-3=9-8=1 no")
    >>> steps_reward("137 13-1=12-3=9-7=2 no\\n138 13-1=12-3=9-8=1 no\\n</think>\\n\\\\boxed{139}", p)
    1.0
    >>> round(steps_reward("137 13-1=12-3=9-7=2 no\\n138 13-1=11", p), 2)  # a slip in the second line
    0.73
    >>> steps_reward("", p), steps_reward("anything", Problem("x", "1"))
    (0.0, 0.0)
    """
    reference = _lines(problem.solution or "")
    if not reference:
        return 0.0
    thinking = _lines(completion.split(THINK_CLOSE, 1)[0])
    return len(commonprefix([thinking, reference])) / len(reference)


def _lines(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.splitlines() if line.strip())
