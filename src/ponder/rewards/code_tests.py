"""A code problem's tests, read from its metadata into a plan the trusted side can run: pure parsing, no sandbox.

Three forms:
  - `tests`: statements, usually asserts (MBPP's `test_list`): `["assert add(1, 2) == 3", ...]`. Names the tests use
    but never define, that are neither builtins nor standard-library modules, are the program's functions.
  - `test` + `entry_point`: HumanEval's module with `def check(candidate)`; its module-level statements run first, and
    each statement of `check`'s body is a statement of the plan, with `candidate` standing for the entry point.
  - `cases`: stdin/stdout pairs (competitive-programming form).
`setup` (optional): trusted code run before the tests, e.g. HumanEval's prompt, whose helpers (`encode_cyclic`) the
tests call: the trusted copy is used, never one the program defines.

A statement is a *test* when it checks something (an assert or a raise) and involves the program: it uses one of the
program's names, or a name bound or changed by an earlier statement that did (`x = candidate(1)`, `res.append(f(1))`,
then `assert x == 2`). Anything else — `assert True`, `import math`, setting up inputs, `x = candidate(1)` itself —
earns nothing (though a statement that fails after the program has run counts as a failed test). (When the tests run, a test that neither calls the program nor reads a value
its calls produced — `assert callable(candidate)` — is not counted either: `code.evaluate`.)
"""

from __future__ import annotations

import ast
import builtins
import sys
from dataclasses import dataclass, field

BUILTIN_NAMES = frozenset(dir(builtins))


@dataclass(frozen=True)
class Plan:
    kind: str  # "call" (statements evaluated in the parent) or "stdio"
    setup: str = ""  # trusted code run first: the problem's setup, then a HumanEval module's other statements
    statements: tuple[str, ...] = ()
    tests: tuple[bool, ...] = ()  # per statement: does it involve the program (does it count)?
    reads: tuple[frozenset[str], ...] = ()  # per statement: the names it reads
    binds: tuple[frozenset[str], ...] = ()  # per statement: the names it binds or may change
    remote: dict[str, str] = field(default_factory=dict)  # name in the tests -> the program's function it stands for
    modules: tuple[str, ...] = ()  # standard-library modules the tests use without importing them
    cases: tuple[tuple[str, str], ...] = ()  # stdio: (stdin, expected stdout)

    @property
    def count(self) -> int:
        return len(self.cases) if self.kind == "stdio" else sum(self.tests)


def plan_tests(metadata: dict) -> Plan:
    """The problem's tests as a plan; ValueError names what is wrong with the row."""
    if "cases" in metadata:
        cases = metadata["cases"]
        if not cases or not all(isinstance(c, dict) and {"input", "output"} <= set(c) for c in cases):
            raise ValueError("metadata.cases must be a non-empty list of {'input': ..., 'output': ...}")
        return Plan("stdio", cases=tuple((str(c["input"]), str(c["output"])) for c in cases))
    setup = _parse(str(metadata.get("setup", "")), "metadata.setup")
    if "tests" in metadata:
        sources = [metadata["tests"]] if isinstance(metadata["tests"], str) else list(metadata["tests"])
        body = [node for source in sources for node in _parse(str(source), "test").body]
        preamble, remote, checks = [], {}, [_checks(node) for node in body]
    elif "test" in metadata and "entry_point" in metadata:
        preamble, body, remote, checks = _humaneval(_parse(metadata["test"], "metadata.test"),
                                                    str(metadata["entry_point"]))
    else:
        raise ValueError("a code problem needs metadata 'tests' (assert statements), 'test' + 'entry_point' "
                         "(HumanEval) or 'cases' (stdin/stdout pairs)")
    defined = _bound(setup.body + preamble) | BUILTIN_NAMES
    free = sorted(_loaded(body) - _bound(body) - defined - set(remote))
    modules = tuple(n for n in free if n in sys.stdlib_module_names)
    remote.update({n: n for n in free if n not in sys.stdlib_module_names})
    tests = [involved and check for involved, check in zip(_involved(body, set(remote)), checks)]
    if not any(tests):
        raise ValueError("the problem's tests never check the program (no assert involves one of its functions): "
                         "metadata.tests needs statements like `assert f(1) == 2`")
    setup_source = "\n".join(ast.unparse(node) for node in setup.body + preamble)
    return Plan("call", setup_source, tuple(ast.unparse(n) for n in body), tuple(tests),
                tuple(frozenset(_loaded([n])) for n in body), tuple(frozenset(_changed(n)) for n in body), remote,
                modules)


def _parse(source: str, what: str) -> ast.Module:
    try:
        return ast.parse(source)
    except SyntaxError as e:
        raise ValueError(f"{what} {source[:200]!r} is not valid Python: {e.msg}") from None


def _humaneval(module: ast.Module, entry_point: str) -> tuple[list, list, dict[str, str], list[bool]]:
    """(module-level statements but `check`, `check`'s body as statements, the names standing for the program, which
    statements check something)."""
    check = next((n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
    if check is None:
        raise ValueError("HumanEval 'test' must define check(candidate)")
    param = check.args.args[0].arg if check.args.args else "candidate"
    remote = {param: entry_point, entry_point: entry_point}
    preamble = [n for n in module.body if n is not check]
    body = [n for n in check.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    try:
        for node in body:  # each statement must stand alone at module level (no `return`, `nonlocal`, ...)
            compile(ast.Module([node], []), "test", "exec")
    except SyntaxError:  # then the whole check is one statement, and one test
        return preamble + [check], [ast.parse(f"check({param})").body[0]], remote, [True]
    return preamble, body, remote, [_checks(node) for node in body]


def _checks(node: ast.AST) -> bool:
    """Does the statement check anything (an assert, or a raise)? A call that only has to run is not a test."""
    return any(isinstance(n, (ast.Assert, ast.Raise)) for n in ast.walk(node))


def _involved(body: list[ast.stmt], remote: set[str]) -> list[bool]:
    """Per statement: does it use the program's names, or names bound from them by an earlier statement?"""
    tainted, tests = set(remote), []
    for node in body:
        involved = bool(_loaded([node]) & tainted)
        if involved:
            tainted |= _changed(node)
        tests.append(involved)
    return tests


def _changed(node: ast.AST) -> set[str]:
    """The names a statement binds, and those whose objects it may change: `out[k] = ...`, `res.append(...)`."""
    names = _bound([node])
    for n in ast.walk(node):
        target = None
        if isinstance(n, (ast.Subscript, ast.Attribute)) and not isinstance(n.ctx, ast.Load):
            target = n.value
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute):
            target = n.func.value
        while isinstance(target, (ast.Subscript, ast.Attribute)):
            target = target.value
        if isinstance(target, ast.Name):
            names.add(target.id)
    return names


def _loaded(nodes: list[ast.AST]) -> set[str]:
    return {n.id for node in nodes for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _bound(nodes: list[ast.AST]) -> set[str]:
    """Every name a statement can bind, in any scope inside it (over-approximate: shadowing is rare in tests)."""
    names = set()
    for node in nodes:
        for n in ast.walk(node):
            if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load):
                names.add(n.id)
            elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(n.name)
            elif isinstance(n, ast.arg):
                names.add(n.arg)
            elif isinstance(n, ast.alias):
                names.add((n.asname or n.name).split(".")[0])
            elif isinstance(n, ast.ExceptHandler) and n.name:
                names.add(n.name)
    return names
