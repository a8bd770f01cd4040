"""Prompt batches for the driver: a seeded, epoch-shuffled stream of problems turned into rollout requests."""

from __future__ import annotations

import random
from typing import Sequence

from ponder.data.template import render_prompt
from ponder.seeding import derive_seed
from ponder.types import Problem, RolloutRequest


def make_requests(problems: list[Problem], template: str, seed: int, step: int, first_group: int = 0,
                  budgets: Sequence[int] = (), budget_prompt: str = "") -> list[RolloutRequest]:
    """One request per problem; group ids count up from `first_group`; seeds derive from (seed, step, prompt). With
    several thinking `budgets`, each prompt draws one from its seed (one budget, or none, is the sampling's own).
    `budget_prompt` (e.g. " (think <= {budget})") states each prompt's budget after its question.

    >>> [r.prompt_text for r in make_requests([Problem("2+2", "4")], "think", 0, 1, budgets=[64],
    ...                                         budget_prompt=" ({budget})")]
    ['2+2 (64)\\n<think>\\n']
    """
    requests = []
    for i, p in enumerate(problems):
        request_seed = derive_seed(seed, step, i)
        budget = budgets[request_seed % len(budgets)] if len(budgets) > 1 else None
        stated = budget if budget is not None else (budgets[0] if budgets else None)
        question = p.prompt + budget_prompt.format(budget=stated) if budget_prompt and stated is not None else p.prompt
        requests.append(RolloutRequest(group_id=first_group + i, problem=p, seed=request_seed, thinking_budget=budget,
                                       prompt_text=render_prompt(question, template), chat=template == "chat"))
    return requests


class PromptStream:
    """Batches of `batch_size` problems; each epoch is a fresh shuffle from (seed, epoch) and yields
    len(problems) // batch_size whole batches. `batch(i)` is a pure function of i, so the data position of a run is
    one integer (what a checkpoint stores); `next()` walks the batches in order from `position`."""

    def __init__(self, problems: list[Problem], batch_size: int, seed: int, position: int = 0):
        if batch_size > len(problems):
            raise ValueError(f"batch of {batch_size} prompts asked from a dataset of {len(problems)}")
        self.problems, self.batch_size, self.seed = problems, batch_size, seed
        self.per_epoch = len(problems) // batch_size
        self.position = position  # index of the batch `next()` gives
        self._epoch, self._order = -1, []

    def batch(self, index: int) -> list[Problem]:
        epoch, within = divmod(index, self.per_epoch)
        if epoch != self._epoch:
            self._epoch, self._order = epoch, list(range(len(self.problems)))
            random.Random(derive_seed(self.seed, epoch)).shuffle(self._order)
        start = within * self.batch_size
        return [self.problems[i] for i in self._order[start : start + self.batch_size]]

    def next(self) -> list[Problem]:
        self.position += 1
        return self.batch(self.position - 1)


def split_even(items: list, parts: int) -> list[list]:
    """Consecutive, near-equal parts.

    >>> split_even([1, 2, 3, 4, 5], 2)
    [[1, 2, 3], [4, 5]]
    """
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out
