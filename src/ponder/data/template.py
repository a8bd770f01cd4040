"""The think template: the prompt opens a `<think>` block; a completion closes it and gives a `\\boxed{}` answer."""

from __future__ import annotations

from ponder.types import Problem

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


def completion_segments(problem: Problem) -> list[tuple[str, bool]]:
    """The SFT target of a problem as (text, written by the policy) segments: its worked solution as one policy
    segment, or its worked multi-turn episode (`metadata["episode"]`), whose environment segments are context only.

    >>> completion_segments(Problem("1+2", "3", metadata={"episode": [["<calc>1+2</calc>", True], ["<out>3</out>", 0]]}))
    [('<calc>1+2</calc>', True), ('<out>3</out>', False)]
    """
    episode = problem.metadata.get("episode")
    if episode:
        return [(text, bool(policy)) for text, policy in episode]
    return [(render_completion(problem.solution or "", problem.answer, problem.metadata.get("answer_format", "boxed")),
             True)]
