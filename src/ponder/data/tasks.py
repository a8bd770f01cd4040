"""The embedded tasks: column-by-column arithmetic, a code task, and a long search with checks (`SearchTask`).

Generated offline from a seed, so the demo needs no dataset hub. Each problem carries its verifiable answer and a
worked solution (used only by `ponder sft` for the warm start; GRPO sees the answer through the reward alone).
"""

from __future__ import annotations

import math
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


def with_tool_episode(problem: Problem) -> Problem:
    """The tool task (`embedded:tools`): long additions, where the worked solution is an episode that hands the sum to
    the calculator and copies its result. Segments are (text, written by the policy); the `<out>` observation is
    the environment's (`envs/tools.py`) and is never trained on.

    >>> with_tool_episode(Problem("1234567+7654321", "8888888")).metadata["episode"][:2]
    [['<calc>1234567+7654321</calc>', True], ['<out>8888888</out>', False]]
    """
    episode = [[f"<calc>{problem.prompt}</calc>", True], [f"<out>{problem.answer}</out>", False],
               [f"\n</think>\n\\boxed{{{problem.answer}}}", True]]
    return Problem(problem.prompt, problem.answer, metadata={**problem.metadata, "episode": episode})


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


def digit_sum_line(n: int, target: int) -> str:
    """One step of the search task's working: the candidate, then its digits taken off the target one at a time, and
    the check — the candidate is the answer when nothing is left (a local, one-token check a small model can learn).

    >>> digit_sum_line(138, 12), digit_sum_line(139, 12)
    ('138 12-1=11-3=8-8=0 yes', '139 12-1=11-3=8-9=-1 no')
    """
    left, parts = target, [f"{n} {target}"]
    for digit in map(int, str(n)):
        left -= digit
        parts.append(f"-{digit}={left}")
    return "".join(parts) + (" yes" if left == 0 else " no")


@dataclass(frozen=True)
class SearchTask:
    """The long chain-of-thought task: "find n>=137 with digit sum 20" — the first number from a start whose digits
    add up to a target. The worked solution is a search with checks: propose the next candidate, add up its digits,
    compare, go on or stop. Problems are drawn so that the number of candidates (hence the response length) is
    log-uniform on 1..`max_steps`: most searches are short, a long tail runs to ~23 tokens a step x `max_steps`.
    Stopping early (a thinking budget) leaves a guess; thinking to the end finds the answer."""

    min_start: int = 100
    max_start: int = 999
    max_steps: int = 44

    def sample(self, rng: random.Random) -> tuple[int, int] | None:
        """(start, target), or None when the drawn search length has no solution from the drawn start (redraw)."""
        steps = min(self.max_steps, int(math.exp(rng.uniform(0, math.log(self.max_steps + 1)))))
        start = rng.randint(self.min_start, self.max_start)
        sums = [_digit_sum(n) for n in range(start, start + steps)]
        return (start, sums[-1]) if sums[-1] not in sums[:-1] else None


def search_problem(start: int, target: int) -> Problem:
    """The problem "find n>=start with digit sum target", its answer and its worked search.

    >>> p = search_problem(137, 13)
    >>> p.prompt, p.answer
    ('find n>=137 with digit sum 13', '139')
    >>> print(p.solution)
    137 13-1=12-3=9-7=2 no
    138 13-1=12-3=9-8=1 no
    139 13-1=12-3=9-9=0 yes
    """
    lines, n = [], start
    while _digit_sum(n) != target:
        lines.append(digit_sum_line(n, target))
        n += 1
    lines.append(digit_sum_line(n, target))
    return Problem(prompt=f"find n>={start} with digit sum {target}", answer=str(n), solution="\n".join(lines))


def generate_search_problems(n: int, seed: int, task: SearchTask, exclude: frozenset[str] = frozenset()
                             ) -> list[Problem]:
    """`n` distinct search problems from `seed`, skipping prompts in `exclude`."""
    rng, seen, problems, draws = random.Random(seed), set(exclude), [], 0
    while len(problems) < n:
        draws += 1
        if draws > 200 * n + 10_000:
            raise ValueError(f"asked for {n} distinct search problems; the task's range (starts {task.min_start}.."
                             f"{task.max_start}, up to {task.max_steps} steps) has too few left: widen it")
        drawn = task.sample(rng)
        if drawn is None:
            continue
        problem = search_problem(*drawn)
        if problem.prompt not in seen:
            seen.add(problem.prompt)
            problems.append(problem)
    return problems


def _digit_sum(n: int) -> int:
    return sum(map(int, str(n)))
