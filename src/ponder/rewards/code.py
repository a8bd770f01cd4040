"""Code rewards: the completion's final code block, run in the sandbox against the problem's tests.

Two test forms, both read from the problem's metadata:
  - `tests`: assert statements (MBPP's `test_list`), or `test` + `entry_point` (HumanEval's `check(candidate)`).
    `assert f(x) == <literal>` is split in the parent: only `f(x)` enters the sandbox, which sends back the value's
    repr (plain data only); the parent rebuilds the value and compares it with the literal. Any other assert is
    evaluated in the sandbox as a whole and must come back exactly `True` (a program that patches builtins can fool
    those, never the `==` form).
  - `cases`: [{"input": stdin, "output": expected stdout}] (competitive-programming form); outputs are compared in
    the parent, trailing whitespace ignored.
Expected values never enter the sandbox, so exiting early, printing "passed", an `__eq__` that always says yes,
patching `assert` or reading the test file cannot turn a failing test into a passing one.

Reward: the fraction of tests passed (`mode: fraction`) or 1.0 only when all pass (`mode: all`).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Any

from ponder.rewards.sandbox import Limits, SandboxPool, self_test
from ponder.types import Problem

_BLOCK = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL)
_MISSING = object()
MAX_RESULT_CHARS = 100_000


def last_code_block(completion: str) -> str | None:
    """The last fenced code block (```python, ```py or bare ```), None if there is none.

    >>> last_code_block("try\\n```python\\nx = 1\\n```\\nbetter:\\n```\\nx = 2\\n```")
    'x = 2\\n'
    """
    blocks = _BLOCK.findall(completion)
    return blocks[-1] if blocks else None


@dataclass(frozen=True)
class CodeTests:
    kind: str  # "call" or "stdio"
    cases: list[str]  # what enters the sandbox: expressions, or stdin texts
    expected: list[Any]  # what stays in the parent: values, or stdout texts

    def passed(self, index: int, status: str, output: str) -> bool:
        if status != "ok":
            return False
        if self.kind == "stdio":
            return _normalise(output) == _normalise(self.expected[index])
        value = _rebuild(output)
        return value is not _MISSING and _equal(value, self.expected[index])


def code_tests(problem: Problem) -> CodeTests:
    """The problem's tests in sandbox form; ValueError names what is wrong with a row."""
    meta = problem.metadata
    if "cases" in meta:
        cases = meta["cases"]
        if not cases or not all(isinstance(c, dict) and {"input", "output"} <= set(c) for c in cases):
            raise ValueError("metadata.cases must be a non-empty list of {'input': ..., 'output': ...}")
        return CodeTests("stdio", [str(c["input"]) for c in cases], [str(c["output"]) for c in cases])
    if "tests" in meta:
        asserts = list(meta["tests"]) if not isinstance(meta["tests"], str) else [meta["tests"]]
    elif "test" in meta and "entry_point" in meta:
        asserts = _humaneval_asserts(meta["test"], meta["entry_point"])
    else:
        raise ValueError("a code problem needs metadata 'tests' (assert statements), 'test' + 'entry_point' "
                         "(HumanEval) or 'cases' (stdin/stdout pairs)")
    pairs = [pair for text in asserts for pair in _split_asserts(text)]
    if not pairs:
        raise ValueError("metadata.tests holds no assert statements")
    return CodeTests("call", [expr for expr, _ in pairs], [expected for _, expected in pairs])


def _split_asserts(source: str) -> list[tuple[str, Any]]:
    """`assert f(x) == 3` -> ("f(x)", 3); any other assert -> (its condition, True)."""
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise ValueError(f"test {source!r} is not valid Python: {e.msg}") from None
    pairs = []
    for node in tree.body:
        if not isinstance(node, ast.Assert):
            raise ValueError(f"tests must be assert statements; got {ast.unparse(node)!r}")
        test = node.test
        if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq):
            try:
                pairs.append((ast.unparse(test.left), ast.literal_eval(test.comparators[0])))
                continue
            except ValueError:
                pass
        pairs.append((ast.unparse(test), True))
    return pairs


def _humaneval_asserts(test: str, entry_point: str) -> list[str]:
    """The asserts of HumanEval's `def check(candidate)`, with `candidate` renamed to the entry point."""
    tree = ast.parse(test)
    check = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
    if check is None:
        raise ValueError("HumanEval 'test' must define check(candidate)")
    arg = check.args.args[0].arg if check.args.args else "candidate"
    body = [n for n in check.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    renamed = [ast.unparse(_Rename(arg, entry_point).visit(n)) for n in body]
    return renamed


class _Rename(ast.NodeTransformer):
    def __init__(self, old: str, new: str):
        self.old, self.new = old, new

    def visit_Name(self, node: ast.Name) -> ast.Name:
        return ast.Name(self.new, node.ctx) if node.id == self.old else node


def _rebuild(output: str) -> Any:
    """The value the sandbox sent back, rebuilt in the parent from plain literals only."""
    if len(output) > MAX_RESULT_CHARS:
        return _MISSING
    try:
        return ast.literal_eval(output)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return _MISSING


def _equal(value: Any, expected: Any) -> bool:
    """Python's `==` between two plain values built in the parent (nothing the program defined takes part)."""
    try:
        return bool(value == expected)
    except RecursionError:
        return False


def _normalise(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.rstrip().splitlines())


_POOLS: dict[tuple, SandboxPool] = {}  # one warm pool per option set, per verifier process


def code_reward(completion: str, problem: Problem, *, mode: str = "fraction", warm: int = 2, **limits) -> float:
    """Pass fraction (or all-pass) of the final code block against the problem's tests, run in the sandbox.

    Options: `mode` fraction|all, `warm` sandboxes kept started in this process, and any `sandbox.Limits` field
    (timeout_s, case_timeout_s, memory_mb, ...). Raises SandboxError on an infrastructure failure (masked upstream).
    """
    tests = code_tests(problem)
    code = last_code_block(completion)
    if code is None:
        return 0.0
    results = _pool(warm, limits).run(code, tests.kind, tests.cases)
    passed = [tests.passed(i, r.status, r.output) for i, r in enumerate(results)]
    if mode == "all":
        return float(all(passed))
    return sum(passed) / len(passed)


def _pool(warm: int, limits: dict[str, Any]) -> SandboxPool:
    key = (warm, tuple(sorted(limits.items())))
    if key not in _POOLS:
        self_test(Limits(**limits))
        _POOLS[key] = SandboxPool(Limits(**limits), warm)
    return _POOLS[key]


def _limits(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k in Limits.__dataclass_fields__}


def check_options(options: dict[str, Any]) -> None:
    """ValueError that names the fix for an option code_reward does not take or a value it cannot use."""
    limit_fields = set(Limits.__dataclass_fields__)
    unknown = sorted(set(options) - limit_fields - {"mode", "warm"})
    if unknown:
        raise ValueError(f"code reward has no option(s) {unknown}; it takes mode, warm and {sorted(limit_fields)}")
    if options.get("mode", "fraction") not in ("fraction", "all"):
        raise ValueError(f"code reward mode {options['mode']!r}: use 'fraction' or 'all'")
    bad = [k for k, v in _limits(options).items() if not isinstance(v, (int, float)) or v <= 0]
    if bad or not (isinstance(options.get("warm", 2), int) and options.get("warm", 2) >= 0):
        raise ValueError(f"code reward options {bad or ['warm']} must be positive numbers (warm: an int >= 0)")


# The registry's optional hooks (rewards/registry.py): options checked before any actor starts, isolation checked
# where the reward actor runs, and warm sandboxes started in each verifier process before its first call.
code_reward.check_options = check_options  # type: ignore[attr-defined]
code_reward.self_test = lambda options: self_test(Limits(**_limits(options)))  # type: ignore[attr-defined]
code_reward.prepare = lambda options: _pool(options.get("warm", 2), _limits(options))  # type: ignore[attr-defined]
