"""Answer extraction shared by the verifiable rewards."""

from __future__ import annotations

from typing import Optional


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
