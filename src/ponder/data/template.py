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


def render_completion(reasoning: str, answer: str, answer_format: str = "boxed") -> str:
    """The target a worked solution is trained toward (SFT): the shape the format reward checks, or for code tasks
    (`answer_format` "code") a fenced Python block, the shape the code reward reads.

    >>> print(render_completion("f(x)=2*x+1", "def f(x):\\n    return 2*x+1\\n", "code"))
    f(x)=2*x+1
    </think>
    ```python
    def f(x):
        return 2*x+1
    ```
    """
    if answer_format == "code":
        return f"{reasoning}\n{THINK_CLOSE}\n```python\n{answer}```"
    return f"{reasoning}\n{THINK_CLOSE}\n\\boxed{{{answer}}}"
