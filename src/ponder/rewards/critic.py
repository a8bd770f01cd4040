"""Critic scores, the pure half: judge prompts and score parsing, reasoning steps, and the critics' options.

Critics are models, so they are served by actors (`actors/critic.py`: a reward model on transformers, an LLM judge on
vLLM); this module holds what those actors and the reward actor share and what can be tested without a model.
In `reward.functions` a critic is an entry like any other reward:

    - {name: reward_model, weight: 0.5, options: {path: /models/rm, per_step: false}}
    - {name: judge, weight: 1.0, options: {path: /models/judge, max_tokens: 256}}

`per_step: true` scores each reasoning step (the response split at its newlines): the term is the lowest step score
(a chain is as good as its worst step) and the step scores go to the learner as dense, token-level rewards.
"""

from __future__ import annotations

import re
from typing import Any, Optional

KINDS = ("reward_model", "judge")
OPTIONS = {
    "reward_model": {"path": None, "per_step": False, "batch_size": 16, "max_length": 2048, "num_cpus": 1.0,
                     "num_gpus": 0.0},
    "judge": {"path": None, "per_step": False, "max_tokens": 256, "constrained": False, "temperature": 0.0,
              "num_cpus": 1.0, "num_gpus": 0.0},
}

JUDGE_PROMPT = ("Question: {prompt}\nAnswer: {response}\nCritique the answer, then rate it from 0 to 10 on a last "
                "line of the form 'Score: N'.\nCritique:")
STEP_JUDGE_PROMPT = ("Question: {prompt}\nSolution so far: {response}\nCritique the last step of the solution, then "
                     "rate it from 0 to 10 on a last line of the form 'Score: N'.\nCritique:")


def score_regex(max_tokens: int) -> str:
    """What `constrained: true` forces the judge's output to match: a one-line critique short enough (a token is at
    least one character) that 'Score: N' still fits in `max_tokens`.

    >>> print(score_regex(40))
    [^\\n]{0,28}\\nScore: (10|[0-9])
    """
    return rf"[^\n]{{0,{max(0, max_tokens - 12)}}}\nScore: (10|[0-9])"


_SCORE = re.compile(r"Score:\s*(10|[0-9](?:\.[0-9]+)?)\s*$")


def parse_score(text: str) -> Optional[float]:
    """The judge's score on its last line, scaled to [0, 1]; None if the output has none (counted as unparseable).

    >>> parse_score("Clear and correct.\\nScore: 8")
    0.8
    >>> parse_score("Score: 11") is None, parse_score("I cannot rate this") is None
    (True, True)
    """
    lines = text.strip().splitlines()
    found = _SCORE.search(lines[-1]) if lines else None
    return float(found.group(1)) / 10 if found else None


def step_spans(pieces: list[str]) -> list[tuple[int, int]]:
    """Reasoning steps as token ranges [start, end): a step ends with the token that holds its newline. `pieces` are
    the response's tokens as text, one per token. Whitespace-only steps join the step before them.

    >>> step_spans(["1", "+", "2", "\\n", "=3", "\\n", "\\n", "ok"])
    [(0, 4), (4, 7), (7, 8)]
    """
    spans: list[tuple[int, int]] = []
    start, text = 0, ""
    for i, piece in enumerate(pieces):
        text += piece
        if "\n" in piece or i == len(pieces) - 1:
            if text.strip() or not spans:
                spans.append((start, i + 1))
            else:
                spans[-1] = (spans[-1][0], i + 1)
            start, text = i + 1, ""
    return spans


def check_options(kind: str, options: dict[str, Any]) -> None:
    """ValueError naming the fix for a critic's options: unknown keys, or no model path."""
    known = OPTIONS[kind]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"{kind} has no option(s) {unknown}; it takes {sorted(known)}")
    if not options.get("path"):
        raise ValueError(f"{kind} needs options.path: a Hugging Face model directory (or hub name) to score with")


def with_defaults(kind: str, options: dict[str, Any]) -> dict[str, Any]:
    return {**OPTIONS[kind], **options}
