"""Answer extraction shared by the verifiable rewards."""

from __future__ import annotations

import ast
import re
from typing import Optional

from ponder.types import Problem

_BLOCK = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL)


def last_boxed(text: str) -> Optional[str]:
    r"""Contents of the last `\boxed{...}`, braces balanced; None if there is none.

    >>> last_boxed(r"so \boxed{1} no, \boxed{\frac{1}{2}}")
    '\\frac{1}{2}'
    >>> last_boxed("no answer") is None
    True
    """
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None


def last_code_block(completion: str) -> str | None:
    """The last fenced code block (```python, ```py or bare ```), None if there is none.

    >>> last_code_block("try\\n```python\\nx = 1\\n```\\nbetter:\\n```\\nx = 2\\n```")
    'x = 2\\n'
    """
    blocks = _BLOCK.findall(completion)
    return blocks[-1] if blocks else None


def vote_key(completion: str, problem: Problem) -> Optional[str]:
    """What samples vote with in maj@k and reward-weighted votes: for code tasks (`answer_format` "code") the program
    normalised (its syntax tree: comments, spacing and quotes do not split a vote), otherwise the final boxed answer
    with spaces removed. None: no answer, no vote.

    >>> p = Problem("f", "", metadata={"answer_format": "code"})
    >>> vote_key("```python\\ndef f(x):  # twice\\n    return 2*x\\n```", p) == vote_key("```\\ndef f(x): return 2 * x\\n```", p)
    True
    >>> vote_key("\\\\boxed{ 1/2 }", Problem("q", "0.5"))
    '1/2'
    """
    if problem.metadata.get("answer_format") == "code":
        code = last_code_block(completion)
        if code is None:
            return None
        try:
            return ast.dump(ast.parse(code))
        except (SyntaxError, ValueError):
            return code.strip()
    answer = last_boxed(completion)
    return None if answer is None else "".join(answer.split())
