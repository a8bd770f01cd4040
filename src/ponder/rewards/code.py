"""Code rewards: the completion's final code block, run in the sandbox against the problem's tests (`code_tests.py`).

The tests run here, in the trusted verifier process, never in the sandbox. Each name that stands for the program's
function (HumanEval's `candidate`, MBPP's `remove_Occ`) is a proxy: calling it sends the plain-data arguments into the
sandbox, where the program — loaded once per sample — runs the call, and the value comes back as plain data, rebuilt
here from builtins only (`plain.py`). So every test form is exact: `f(x) == y`, `y == f(x)`, `abs(f(x) - y) < eps`,
`not f(x)`, `f(x) in (...)`, `isinstance(f(x), int)`, chained comparisons, loops, imports, helper functions, prints.
A program cannot return an object whose comparisons lie, patch what the test calls, read the expected values (they
never enter the sandbox), or stop the test early to make it pass.

Semantics: arguments are passed by value (the test's objects are never changed by the call); a raised exception is
raised again here as its nearest builtin class (`class BadInput(ValueError)` as ValueError; `ProgramError` where
there is none); a call that is too slow, crashes, returns something that is not plain data or produces too much
output fails the whole statement it was made in, whatever the test does with the exception. The verifier's own CPU
time on a sample's tests is capped too (a program's values can make trusted test code slow): past it, the remaining
tests fail. A test that passes a non-plain argument (a function, an object) cannot be evaluated that way: the sample
is then evaluated again with the whole test run inside the sandbox beside the program — not exact, as the program
shares that interpreter (docs/rewards.md). Only the test's own code can cause that: whatever a program returns can
be passed back to it.

`cases` (stdin/stdout): each case runs the program as __main__ in a fresh child; outputs are compared here, trailing
whitespace ignored. Reward: the fraction of tests passed (`mode: fraction`) or 1.0 only when all pass (`mode: all`).
"""

from __future__ import annotations

import builtins
import contextlib
import importlib
import io
import signal
import threading
import time
from typing import Any

from ponder.rewards.code_tests import Plan, plan_tests
from ponder.rewards.extract import last_code_block
from ponder.rewards.plain import decode, encode
from ponder.rewards.sandbox import Job, Limits, SandboxError, SandboxPool, self_test
from ponder.types import Problem

class ProgramError(Exception):
    """The program raised an exception that is not a builtin one."""


class _Aborted(BaseException):
    """A call that did not return: the statement it was made in fails, whatever the test's `except` says."""


class _NeedsWhole(Exception):
    """A test passed something that is not plain data to the program."""


class _OverBudget(BaseException):
    """The verifier's own CPU time on this sample's tests is spent."""


class _Calls:
    """What the proxies saw during one statement."""

    def __init__(self):
        self.made, self.failed, self.infra, self.not_plain_argument = 0, False, None, False


class _Run:
    """One evaluation: the calls of each statement so far, and whether the verifier's CPU budget is spent."""

    def __init__(self):
        self.calls: list[_Calls] = []
        self.spent = False


class _Proxy:
    """Stands for one of the program's functions in the tests."""

    def __init__(self, job: Job, name: str, run: _Run):
        self.job, self.name, self.run = job, name, run

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        seen = self.run.calls[-1]
        seen.made += 1
        if self.run.spent:  # no more calls once the budget is spent, however the test caught that
            seen.failed = True
            raise _Aborted("the verifier's time on these tests is spent")
        try:
            sent = encode(list(args)), encode(kwargs)
        except TypeError:  # a function, an object: the test's own doing, never the program's
            seen.not_plain_argument = True
            raise _Aborted from None
        except ValueError:  # nested too deep (the test wrapped what the program returned): the call fails
            sent = None
        try:
            reply = self.job.call(self.name, *sent) if sent else None
        except SandboxError as e:
            seen.infra = e
            raise _Aborted from None
        if reply is not None and reply.status == "ok":
            try:
                return decode(reply.body)
            except ValueError:
                pass
        elif reply is not None and reply.status == "error" and not reply.body.startswith("load: "):
            raise _exception(reply.body)
        seen.failed = True
        raise _Aborted(reply.status if reply else "arguments nested too deep")


def _exception(name: str) -> Exception:
    kind = getattr(builtins, name, None)
    if isinstance(kind, type) and issubclass(kind, Exception) and kind not in (StopIteration, StopAsyncIteration):
        return kind("raised by the program")
    return ProgramError(name)


def evaluate(plan: Plan, job: Job, cpu_s: float | None = None) -> list[bool]:
    """Run the plan's statements here, the program's names standing for calls into `job`; one verdict per test.

    `cpu_s` caps this process's own CPU time on the tests (values a program returns can make trusted test code slow):
    when it is spent, the statement running and every test after it fail."""
    namespace: dict[str, Any] = {"__builtins__": builtins, "__name__": "tests"}
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(plan.setup, "setup", "exec"), namespace)
    except Exception as e:  # noqa: BLE001 - trusted code that does not run: the row is broken
        raise ValueError(f"the problem's setup fails: {type(e).__name__}: {e}") from None
    namespace.update({name: importlib.import_module(name) for name in plan.modules})
    run = _Run()
    namespace.update({name: _Proxy(job, target, run) for name, target in plan.remote.items()})
    verdicts: list[tuple[int, bool]] = []  # (statement, passed)
    try:
        with _cpu_budget(cpu_s, run):
            _statements(plan, namespace, run, verdicts)
    except _OverBudget:
        running = len(run.calls) - 1  # it and every test after it fail
        verdicts = [v for v in verdicts if v[0] < running] + [(i, False) for i in range(running, len(plan.tests))
                                                               if plan.tests[i]]
    if not verdicts:
        raise ValueError("no test statement called the program: fix the problem's tests")
    return [passed for _, passed in verdicts]


def _statements(plan: Plan, namespace: dict, run: _Run, verdicts: list[tuple[int, bool]]) -> None:
    derived: set[str] = set()  # names bound or changed by statements that called the program
    for index, (source, is_test, reads, binds) in enumerate(zip(plan.statements, plan.tests, plan.reads, plan.binds)):
        run.calls.append(_Calls())
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile(source, "test", "exec"), namespace)
            ok = True
        except BaseException:  # noqa: BLE001 - a failing test statement, whatever it raised
            ok = False
        if run.spent:  # even if the test's own `except` caught the budget's signal
            raise _OverBudget
        seen = run.calls[-1]
        if seen.infra is not None:
            raise seen.infra
        if seen.not_plain_argument:
            raise _NeedsWhole(source)
        if seen.made:
            derived |= binds
        ok = ok and not seen.failed  # a call that did not return fails its statement, whatever the test caught
        if is_test and (seen.made or reads & derived):
            verdicts.append((index, ok))
        elif not is_test and not ok:
            if not any(c.made for c in run.calls):  # nothing of the program has run: the row itself is broken
                raise ValueError(f"test statement {source[:200]!r} fails without involving the program: fix the "
                                 "problem's tests")
            verdicts.append((index, False))  # it may hold what the program returned in a way the plan did not see
        # else: a test that exercised nothing of the program (`assert callable(f)`, an empty loop): not counted


@contextlib.contextmanager
def _cpu_budget(seconds: float | None, run: _Run):
    """Once this process has used `seconds` of CPU (load does not change that), mark the run spent and raise
    _OverBudget — again every 50 ms of CPU after, so that a test's bare `except:` cannot swallow it for good."""
    if seconds is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def spent(signum, frame):
        run.spent = True
        raise _OverBudget

    previous = signal.signal(signal.SIGPROF, spent)
    signal.setitimer(signal.ITIMER_PROF, seconds, 0.05)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


def evaluate_whole(plan: Plan, job: Job) -> list[bool]:
    """The fallback: setup and statements run inside the sandbox beside the program; the verdicts are the sandbox's
    (a program that tampers with its own interpreter can pass these). The setup already ran in the verifier, so
    when it fails in the sandbox the program is to blame: every test fails."""
    names = "\n".join([f"import {m}" for m in plan.modules] + [f"{a} = {t}" for a, t in plan.remote.items() if a != t])

    def prepare() -> bool:  # again after a statement that cost the program its process (a fresh one has no setup)
        return job.exec(plan.setup, fill=True).status == "ok" and job.exec(names).status == "ok"

    if not prepare():
        return [False] * plan.count
    verdicts = []
    for index, (source, is_test) in enumerate(zip(plan.statements, plan.tests)):
        status = job.exec(source).status
        if is_test or status != "ok":  # as in `evaluate`: a failing statement that is not a test still fails one
            verdicts.append(status == "ok")
        if status not in ("ok", "error") and not prepare():
            return verdicts + [False] * sum(plan.tests[index + 1:])
    return verdicts


def run_cases(plan: Plan, job: Job) -> list[bool]:
    passed = []
    for stdin, expected in plan.cases:
        reply = job.run(stdin)
        passed.append(reply.status == "ok" and _normalise(reply.body) == _normalise(expected))
    return passed


def _normalise(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.rstrip().splitlines())


_POOLS: dict[tuple, SandboxPool] = {}  # one warm pool per option set, per verifier process


def code_reward(completion: str, problem: Problem, *, mode: str = "fraction", warm: int = 2, **limits) -> float:
    """Pass fraction (or all-pass) of the final code block against the problem's tests, run in the sandbox.

    Options: `mode` fraction|all, `warm` sandboxes kept started in this process, and any `sandbox.Limits` field
    (case_cpu_s, case_timeout_s, timeout_s, memory_mb, ...). Raises SandboxError on an infrastructure failure and
    ValueError on a problem whose tests are broken (both masked upstream).
    """
    plan = plan_tests(problem.metadata)
    code = last_code_block(completion)
    if code is None:
        return 0.0
    pool = _pool(warm, limits)
    if plan.kind == "stdio":
        with pool.job(code, "stdio") as job:
            passed = run_cases(plan, job)
    else:
        started = time.monotonic()
        try:
            with pool.job(code, "call") as job:
                passed = evaluate(plan, job, cpu_s=pool.limits.timeout_s / 4)
        except _NeedsWhole:  # the second job gets what the first left of the sample's time
            left = max(1.0, pool.limits.timeout_s - (time.monotonic() - started))
            with pool.job(code, "call", seconds=left) as job:
                passed = evaluate_whole(plan, job)
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
    Limits(**_limits(options)).check()


def time_bound(options: dict[str, Any]) -> float:
    """Seconds a call can take whatever the program does: the sandbox's own time (at most `timeout_s`), this process's
    CPU on the tests (a quarter of it), ending the job and a sandbox's start (15 s: more is a loaded machine)."""
    return Limits(**_limits(options)).timeout_s * 1.25 + 15


# The registry's optional hooks (rewards/registry.py): options checked before any actor starts, isolation checked
# where the reward actor runs, warm sandboxes started in each verifier process before its first call, and the time
# the reward bounds itself to (so the verifier pool's hard timeout is never the program's doing).
code_reward.check_options = check_options  # type: ignore[attr-defined]
code_reward.self_test = lambda options: self_test(Limits(**_limits(options)))  # type: ignore[attr-defined]
code_reward.prepare = lambda options: _pool(options.get("warm", 2), _limits(options))  # type: ignore[attr-defined]
code_reward.time_bound = time_bound  # type: ignore[attr-defined]
