"""A process pool whose every call is bounded by a hard timeout enforced from outside.

Verifiers hang (sympy on adversarial expressions) or crash. Each call runs in a spawned worker process; the parent
waits on the worker's pipe with a deadline, and a worker that misses it is killed (SIGKILL, not `signal.alarm`) and
replaced, so the pool survives its workers being killed. Results come back in input order as `Result`s that say
whether the call finished, timed out, or raised.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Optional

from ponder.types import Problem


@dataclass(frozen=True)
class Task:
    reward: str  # registry name or import path; resolved inside the worker
    completion: str
    problem: Problem
    options: dict[str, Any]


@dataclass(frozen=True)
class Result:
    status: str  # "ok" | "timeout" | "error"
    value: float = 0.0
    error: Optional[str] = None


def _worker_main(conn: Connection) -> None:
    _die_with_parent()
    from ponder.rewards.registry import resolve

    while True:
        task: Optional[Task] = conn.recv()
        if task is None:
            return
        try:
            value = float(resolve(task.reward)(task.completion, task.problem, **task.options))
            conn.send(Result("ok", value))
        except Exception as e:  # noqa: BLE001 - a reward's failure is reported to the parent, with its type
            conn.send(Result("error", error=f"{type(e).__name__}: {e}"))


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when its parent dies, so a hung verifier never outlives a killed reward actor."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class _Worker:
    def __init__(self, ctx: mp.context.SpawnContext):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child,), daemon=True)
        self.process.start()
        child.close()

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()


class HardTimeoutPool:
    """`map(tasks)` runs each task in a worker with `timeout_s` of wall time; never raises for a task's sake."""

    def __init__(self, num_processes: int, timeout_s: float):
        self._ctx = mp.get_context("spawn")
        self._timeout_s = timeout_s
        self._workers = [_Worker(self._ctx) for _ in range(num_processes)]
        self.restarts = 0

    def map(self, tasks: list[Task]) -> list[Result]:
        results: list[Optional[Result]] = [None] * len(tasks)
        todo = deque(enumerate(tasks))
        busy: dict[int, tuple[int, float]] = {}  # worker slot -> (task index, deadline)
        while todo or busy:
            for slot in range(len(self._workers)):
                if slot not in busy and todo:
                    index, task = todo.popleft()
                    try:
                        self._workers[slot].conn.send(task)
                    except OSError:  # the idle worker was killed from outside: replace it, then hand over
                        self._replace(slot)
                        self._workers[slot].conn.send(task)
                    busy[slot] = (index, time.monotonic() + self._timeout_s)
            next_deadline = min(deadline for _, deadline in busy.values())
            ready = wait([self._workers[s].conn for s in busy], timeout=max(0.0, next_deadline - time.monotonic()))
            for slot in list(busy):
                worker, (index, deadline) = self._workers[slot], busy[slot]
                if worker.conn in ready:
                    results[index] = self._receive(slot)
                    del busy[slot]
                elif time.monotonic() >= deadline:
                    results[index] = Result("timeout", 0.0, f"killed after {self._timeout_s:.1f}s")
                    self._replace(slot)
                    del busy[slot]
        return results  # type: ignore[return-value]

    def _receive(self, slot: int) -> Result:
        try:
            return self._workers[slot].conn.recv()
        except (EOFError, OSError):  # the worker died mid-call (killed from outside, out of memory, segfault)
            code = self._workers[slot].process.exitcode
            self._replace(slot)
            return Result("error", error=f"reward worker died (exit code {code})")

    def _replace(self, slot: int) -> None:
        self._workers[slot].kill()
        self._workers[slot] = _Worker(self._ctx)
        self.restarts += 1

    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers]

    def close(self) -> None:
        for worker in self._workers:
            if worker.process.is_alive():
                try:
                    worker.conn.send(None)
                except OSError:
                    pass
            worker.process.join(timeout=2)
            if worker.process.is_alive():
                worker.kill()
        self._workers = []
