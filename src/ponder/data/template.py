"""The think template: the prompt opens a `<think>` block; a completion closes it and gives a `\\boxed{}` answer."""

from __future__ import annotations

from ponder.types import Problem

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def render_prompt(question: str, template: str = "think") -> str:
    """The prompt text the engine continues.

    >>> render_prompt("12+30")
    '12+30\\n<think>\\n'

    With `template` "chat" the question is a user message, rendered by the engine with the model's own chat template
    (`chat_prompt_ids`).
    """
    if template in ("none", "chat"):
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


def has_completion(problem: Problem) -> bool:
    """Whether the problem carries something to train toward: a worked solution, episode or exported completion."""
    return bool(problem.solution or problem.metadata.get("episode") or problem.metadata.get("completion"))


def completion_segments(problem: Problem) -> list[tuple[str, bool]]:
    """The SFT target of a problem as (text, written by the policy) segments: its worked solution as one policy
    segment, its worked multi-turn episode (`metadata["episode"]`), whose environment segments are context only, or an
    exported response (`metadata["completion"]`) as it was sampled.

    >>> completion_segments(Problem("1+2", "3", metadata={"episode": [["<calc>1+2</calc>", True], ["<out>3</out>", 0]]}))
    [('<calc>1+2</calc>', True), ('<out>3</out>', False)]
    """
    episode = problem.metadata.get("episode")
    if episode:
        return [(text, bool(policy)) for text, policy in episode]
    if problem.metadata.get("completion"):  # a response exported from a run (data/traces.py), verbatim
        return [(problem.metadata["completion"], True)]
    return [(render_completion(problem.solution or "", problem.answer, problem.metadata.get("answer_format", "boxed")),
             True)]


def chat_prompt(tokenizer, question: str) -> str:
    """The model's own chat template (its tokenizer's) around one user message, ready for the assistant's turn.

    >>> from ponder.data.tiny_model import build_tokenizer
    >>> chat_prompt(build_tokenizer(), "12+30")
    '<|im_start|>user\\n12+30<|endoftext|>\\n<|im_start|>assistant\\n'
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("data.template=chat needs a tokenizer with a chat template (tokenizer_config.json "
                         "'chat_template'); use data.template=think or none for a base model")
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)


def chat_observation(tokenizer, text: str, role: str = "user", closed: bool = True) -> str:
    """An environment's observation as the chat template writes it after an assistant turn: the rest of the turn's
    closing (what the model did not write itself; `closed`: the turn ended at EOS, whose text is the close's start),
    the observation as a `role` message, and the opening of the next assistant turn.

    >>> from ponder.data.tiny_model import build_tokenizer
    >>> print(chat_observation(build_tokenizer(), "<out>42</out>"))
    <BLANKLINE>
    <|im_start|>user
    <out>42</out><|endoftext|>
    <|im_start|>assistant
    <BLANKLINE>
    """
    base = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    before = tokenizer.apply_chat_template(base, tokenize=False)
    after = tokenizer.apply_chat_template(base + [{"role": role, "content": text}], tokenize=False,
                                          add_generation_prompt=True)
    if not after.startswith(before):
        raise ValueError("the chat template rewrites earlier turns when a message is added; multi-turn episodes "
                         "need a template that only appends")
    close = before[before.rindex("A") + 1 :]  # what ends an assistant turn, e.g. "<|im_end|>\n"
    eos = tokenizer.eos_token or ""
    if closed and eos and close.startswith(eos):
        close = close[len(eos) :]
    return close + after[len(before) :]
