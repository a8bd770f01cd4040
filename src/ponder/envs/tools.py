"""Tool use: the model calls a calculator or runs Python in the code sandbox, and reads the result.

The call format, the same for every template: a model turn that ends with

    <calc>12345678+87654321</calc>        an arithmetic expression
    <python>print(sum(range(10)))</python>  a program; its standard output comes back

gets the observation `<out>RESULT</out>` (a failure reads `<out>error: WHAT</out>`), and the model goes on. A turn
that ends any other way (EOS, the token caps) is the model's answer and ends the episode.

Isolation: the calculator is evaluated here from the parsed expression tree (numbers and arithmetic only, with caps
on the size of what it computes); Python runs in the reward sandbox (`rewards/sandbox.py`: namespaces, seccomp,
resource limits, a warm pool proven clean between jobs) as a program on empty stdin. A program that fails, runs out
its time or prints too much is the model's doing: an error observation, the episode goes on. A sandbox that cannot
run it at all (`SandboxError`) is an infrastructure failure: raised, so the episode is masked with that reason.
"""

from __future__ import annotations

import ast
import math
import operator
import re
import threading
import time
from dataclasses import fields
from typing import Any, Optional

from ponder.envs.base import Reply
from ponder.types import Problem

TOOLS = ("calc", "python")
_CALL = re.compile(r"<(calc|python)>(.*)</\1>\s*$", re.DOTALL)
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
MAX_DIGITS = 200  # the calculator refuses operands and results longer than this
MAX_EXPRESSION = 500  # characters


def parse_call(turn: str, tools: tuple[str, ...] = TOOLS) -> Optional[tuple[str, str]]:
    """(tool, its input) when the turn ends with a call to one of `tools`, else None.

    >>> parse_call("add them <calc>12+30</calc>")
    ('calc', '12+30')
    >>> parse_call("done: \\\\boxed{42}") is None
    True
    """
    match = _CALL.search(turn)
    if match is None or match.group(1) not in tools:
        return None
    body = match.group(2)
    opener = f"<{match.group(1)}>"
    return match.group(1), body[body.rfind(opener) + len(opener):] if opener in body else body


def calculate(expression: str) -> str:
    """The value of an arithmetic expression, as text; ValueError says what is wrong with it.

    >>> calculate("12345678 + 87654321"), calculate("(7 - 10) * 3 / 2"), calculate("2**10 % 1000")
    ('99999999', '-4.5', '24')
    """
    if len(expression) > MAX_EXPRESSION:
        raise ValueError(f"expression longer than {MAX_EXPRESSION} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise ValueError("not an arithmetic expression") from None
    value = _evaluate(tree.body)
    return str(int(value)) if isinstance(value, float) and value.is_integer() and abs(value) < 1e15 else str(value)


def _evaluate(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _bounded(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _evaluate(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(left) > 1 and abs(right) * math.log10(abs(left)) > MAX_DIGITS:
            raise ValueError(f"result longer than {MAX_DIGITS} digits")
        try:
            value = _OPS[type(node.op)](left, right)
        except ZeroDivisionError:
            raise ValueError("division by zero") from None
        except OverflowError:
            raise ValueError("result out of range") from None
        if isinstance(value, complex):
            raise ValueError("no real result")
        return _bounded(value)
    raise ValueError("only numbers, + - * / // % ** and parentheses are allowed")


def _bounded(value: Any) -> Any:
    if isinstance(value, int) and len(str(abs(value))) > MAX_DIGITS:
        raise ValueError(f"number longer than {MAX_DIGITS} digits")
    return value


class ToolEnv:
    """Calculator and Python tools (see the module's docstring). Options: `tools` to offer, `max_calls` per episode
    (a call beyond it gets an error observation), `max_output_chars` of a result shown to the model, and the
    sandbox's `warm` pool size and limits (`rewards.sandbox.Limits` fields, e.g. timeout_s, case_timeout_s)."""

    def __init__(self, tools: list[str] | tuple[str, ...] = TOOLS, max_calls: int = 4, max_output_chars: int = 200,
                 warm: int = 1, **limits: Any):
        from ponder.rewards.sandbox import Limits

        unknown = sorted(set(tools) - set(TOOLS))
        if unknown or not tools:
            raise ValueError(f"tools {list(tools)}: the tools are {list(TOOLS)}")
        unknown = sorted(set(limits) - {f.name for f in fields(Limits)})
        if unknown:
            raise ValueError(f"the tools environment has no option(s) {unknown}; it takes tools, max_calls, "
                             f"max_output_chars, warm and the sandbox limits {[f.name for f in fields(Limits)]}")
        self.tools, self.max_calls, self.max_output_chars, self.warm = tuple(tools), max_calls, max_output_chars, warm
        self.limits = Limits(**limits)
        self.limits.check()
        self.stop = tuple(f"</{tool}>" for tool in self.tools)
        self._pool = None
        self._lock = threading.Lock()

    def start(self, problem: Problem) -> dict[str, int]:
        return {"calls": 0}

    def step(self, state: dict[str, int], turn: str) -> Reply:
        call = parse_call(turn, self.tools)
        if call is None:
            return Reply(None, answer=True)
        tool, body = call
        state["calls"] += 1
        started = time.monotonic()
        if state["calls"] > self.max_calls:
            output, ok = f"error: no more than {self.max_calls} calls", False
        else:
            output, ok = self._run(tool, body)
        if len(output) > self.max_output_chars:
            output = output[: self.max_output_chars] + "..."
        return Reply(f"<out>{output}</out>", metrics={"tool/calls": 1.0, f"tool/{tool}_calls": 1.0,
                                                       "tool/errors": float(not ok),
                                                       "tool/seconds": time.monotonic() - started})

    def _run(self, tool: str, body: str) -> tuple[str, bool]:
        if tool == "calc":
            try:
                return calculate(body), True
            except ValueError as e:
                return f"error: {e}", False
        with self._sandboxes().job(body, "stdio") as job:
            reply = job.run("")
        if reply.status == "ok":
            return reply.body.strip(), True
        reason = {"timeout": "timed out", "output_limit": "too much output"}.get(reply.status, "the program failed")
        return f"error: {reason}", False

    def _sandboxes(self):
        with self._lock:
            if self._pool is None:
                from ponder.rewards.sandbox import SandboxPool

                self._pool = SandboxPool(self.limits, self.warm)
            return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
