"""The embedded task: multi-digit addition and subtraction with a worked, column-by-column chain of thought.

Generated offline from a seed, so the demo needs no dataset hub. Each problem carries its verifiable answer and a
worked solution (used only by `ponder sft` for the warm start; GRPO sees the answer through the reward alone).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ponder.types import Problem


@dataclass(frozen=True)
class ArithmeticTask:
    min_digits: int = 2
    max_digits: int = 3
    ops: str = "+-"

    def sample(self, rng: random.Random) -> tuple[int, str, int]:
        def number() -> int:
            digits = rng.randint(self.min_digits, self.max_digits)
            return rng.randint(10 ** (digits - 1), 10**digits - 1)

        a, b, op = number(), number(), rng.choice(self.ops)
        if op == "-" and a < b:
            a, b = b, a  # keep results non-negative so that column subtraction is well defined
        return a, op, b


def worked_solution(a: int, op: str, b: int) -> str:
    """Column-by-column working from the least significant digit, e.g. for 47+85:

    >>> print(worked_solution(47, "+", 85))
    7+5+0=12 d2 c1
    4+8+1=13 d3 c1
    0+0+1=1 d1 c0
    """
    xs, ys = str(a)[::-1], str(b)[::-1]
    width = max(len(xs), len(ys))
    lines, carry = [], 0
    for i in range(width):
        x = int(xs[i]) if i < len(xs) else 0
        y = int(ys[i]) if i < len(ys) else 0
        value = x + y + carry if op == "+" else x - y - carry
        digit = value % 10
        next_carry = (1 if value >= 10 else 0) if op == "+" else (1 if value < 0 else 0)
        lines.append(f"{x}{op}{y}{op}{carry}={value} d{digit} c{next_carry}")
        carry = next_carry
    if op == "+" and carry:
        lines.append(f"0+0+{carry}={carry} d{carry} c0")
    return "\n".join(lines)


def generate_problems(n: int, seed: int, task: ArithmeticTask, exclude: frozenset[str] = frozenset()) -> list[Problem]:
    """`n` distinct problems from `seed`, skipping any question in `exclude` (keeps train and held-out disjoint)."""
    rng = random.Random(seed)
    seen: set[str] = set(exclude)
    problems: list[Problem] = []
    space = _space_size(task)
    if n > space - len(exclude):
        raise ValueError(f"asked for {n} distinct problems but the task only has {space - len(exclude)} left")
    while len(problems) < n:
        a, op, b = task.sample(rng)
        question = f"{a}{op}{b}"
        if question in seen:
            continue
        seen.add(question)
        answer = a + b if op == "+" else a - b
        problems.append(Problem(prompt=question, answer=str(answer), solution=worked_solution(a, op, b)))
    return problems


def _space_size(task: ArithmeticTask) -> int:
    count = 10**task.max_digits - 10 ** (task.min_digits - 1)
    return count * count * len(task.ops) // (2 if "-" in task.ops else 1)


def code_problem(a: int, op: str, b: int) -> Problem:
    """The embedded code task: write `f` from its formula, e.g. `f(x)=3x+4`; three assert tests check it.

    >>> p = code_problem(3, "+", 4)
    >>> print(p.answer, end="")
    def f(x):
        return 3*x+4
    >>> p.metadata["tests"][1]
    'assert f(1) == 7'
    """
    formula = f"{a}*x{op}{b}"
    tests = [f"assert f({x}) == {a * x + b if op == '+' else a * x - b}" for x in (0, 1, 7)]
    return Problem(prompt=f"f(x)={a}x{op}{b}", answer=f"def f(x):\n    return {formula}\n", solution=f"f(x)={formula}",
                   metadata={"tests": tests, "answer_format": "code"})


def generate_code_problems(n: int, seed: int, exclude: frozenset[str] = frozenset()) -> list[Problem]:
    """`n` distinct code problems from `seed` (a in 2..19, b in 1..99, + or -), skipping prompts in `exclude`."""
    space = 18 * 99 * 2
    if n > space - len(exclude):
        raise ValueError(f"asked for {n} distinct code problems but the task only has {space - len(exclude)} left")
    rng, seen, problems = random.Random(seed), set(exclude), []
    while len(problems) < n:
        problem = code_problem(rng.randint(2, 19), rng.choice("+-"), rng.randint(1, 99))
        if problem.prompt not in seen:
            seen.add(problem.prompt)
            problems.append(problem)
    return problems
