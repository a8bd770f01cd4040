"""Format reward: the completion closes its reasoning and ends with a boxed answer."""

from __future__ import annotations

import re

from ponder.types import Problem

_SHAPE = re.compile(r"</think>\s*\\boxed\{[^\n]*\}\s*$", re.DOTALL)


def format_reward(completion: str, problem: Problem) -> float:
    r"""1.0 for `...</think> \boxed{...}` at the end of the completion, else 0.0.

    >>> format_reward("7+5=12\n</think>\n\\boxed{12}", None)
    1.0
    >>> format_reward("\\boxed{12} and more", None)
    0.0
    """
    return 1.0 if _SHAPE.search(completion) else 0.0
