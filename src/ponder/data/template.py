"""The think template: the prompt opens a `<think>` block; a completion closes it and gives a `\\boxed{}` answer."""

from __future__ import annotations

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def render_prompt(question: str, template: str = "think") -> str:
    """The prompt text the engine continues.

    >>> render_prompt("12+30")
    '12+30\\n<think>\\n'
    """
    if template == "none":
        return question
    return f"{question}\n{THINK_OPEN}\n"


def render_completion(reasoning: str, answer: str) -> str:
    """The target a worked solution is trained toward (SFT), and the shape the format reward checks."""
    return f"{reasoning}\n{THINK_CLOSE}\n\\boxed{{{answer}}}"
