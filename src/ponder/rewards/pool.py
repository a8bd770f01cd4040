"""A process pool whose every call is bounded by a hard timeout enforced from outside.

Verifiers hang (sympy on adversarial expressions), blow up or crash. Each call runs in a spawned worker process with
an address-space cap; the parent waits on the worker's pipe with a deadline, and a worker that misses it is killed
(SIGKILL, not `signal.alarm`) and replaced, so the pool survives its workers being killed. Results come back in input
order as `Result`s that say whether the call finished, timed out, hit a limit (MemoryError, RecursionError: the
completion made the verifier blow up) or failed (anything else: the infrastructure's fault).
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Optional

from ponder.types import Problem

START_TIMEOUT_S = 60.0  # a verifier process's start-up (spawn, imports, `prepare`) on a loaded machine
CHUNK = 32  # most tasks per pipe message


@dataclass(frozen=True)
class Task:
    reward: str  # registry name or import path; resolved inside the worker
    completion: str
    problem: Problem
    options: dict[str, Any]


READY = "ready"


@dataclass(frozen=True)
class Result:
    status: str  # "ok" | "timeout" | "over_limit" | "error"
    value: float = 0.0
    error: Optional[str] = None


def _worker_main(conn: Connection, memory_mb: int, prepare: tuple[tuple[str, dict], ...]) -> None:
    import resource

    _die_with_parent()
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
    from ponder.rewards.registry import resolve

    for name, options in prepare:  # e.g. start warm sandboxes, before any call's clock runs
        fn = resolve(name)
        if hasattr(fn, "prepare"):
            try:
                fn.prepare(options)
            except Exception:  # noqa: BLE001 - the reward's own calls raise it again, and are masked
                pass
    conn.send(READY)

    while True:
        chunk: Optional[list[Task]] = conn.recv()
        if chunk is None:
            return
        for task in chunk:  # one result per task, sent as soon as it is known: the parent times each task
            conn.send(_call(resolve, task))


def _call(resolve, task: Task) -> Result:
    try:
        return Result("ok", float(resolve(task.reward)(task.completion, task.problem, **task.options)))
    except (MemoryError, RecursionError) as e:
        return Result("over_limit", error=type(e).__name__)
    except Exception as e:  # noqa: BLE001 - a reward's failure is reported to the parent, with its type
        return Result("error", error=f"{type(e).__name__}: {e}")


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when its parent dies, so a hung verifier never outlives a killed reward actor."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class _Worker:
    def __init__(self, ctx: mp.context.SpawnContext, memory_mb: int, prepare: tuple):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, memory_mb, prepare), daemon=True)
        self.process.start()
        child.close()
        self.ready = False

    def hand(self, tasks: list[Task]) -> None:
        """Send a task once the worker is up: its start-up (imports, warm sandboxes) is not on the call's clock.
        OSError/EOFError: the worker is dead or never came up."""
        if not self.ready:
            if not self.conn.poll(START_TIMEOUT_S) or self.conn.recv() != READY:
                raise OSError("verifier process did not start")
            self.ready = True
        self.conn.send(tasks)

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()


class HardTimeoutPool:
    """`map(tasks)` runs each task in a worker with `timeout_s` of wall time and `memory_mb` of address space; never
    raises for a task's sake."""

    def __init__(self, num_processes: int, timeout_s: float, memory_mb: int = 4096,
                 prepare: tuple[tuple[str, dict], ...] = ()):
        self._ctx = mp.get_context("spawn")
        self._timeout_s, self._memory_mb, self._prepare = timeout_s, memory_mb, prepare
        self._workers = [_Worker(self._ctx, memory_mb, prepare) for _ in range(num_processes)]
        self.restarts = 0

    def map(self, tasks: list[Task]) -> list[Result]:
        """Results in input order. Tasks go out in chunks (one pipe message per chunk, not per task), and come back
        one by one: each task's clock starts when the one before it in the chunk returned. A task past its deadline
        is killed with its worker; the rest of its chunk goes back to the queue."""
        results: list[Optional[Result]] = [None] * len(tasks)
        todo = deque(range(len(tasks)))
        busy: dict[int, tuple[deque[int], float]] = {}  # worker slot -> (indices in flight, deadline of the first)
        while todo or busy:
            for slot in range(len(self._workers)):
                if slot not in busy and todo:
                    size = max(1, min(CHUNK, len(todo) // (2 * len(self._workers))))
                    chunk = deque(todo.popleft() for _ in range(size))
                    if self._hand(slot, [tasks[i] for i in chunk]):
                        busy[slot] = (chunk, time.monotonic() + self._timeout_s)
                    else:
                        results[chunk.popleft()] = Result("error", error="verifier process did not start")
                        todo.extendleft(reversed(chunk))
            if not busy:
                continue
            next_deadline = min(deadline for _, deadline in busy.values())
            ready = wait([self._workers[s].conn for s in busy], timeout=max(0.0, next_deadline - time.monotonic()))
            for slot in list(busy):
                pending, deadline = busy[slot]
                if self._workers[slot].conn in ready:
                    index = pending.popleft()
                    try:
                        results[index] = self._workers[slot].conn.recv()
                        busy[slot] = (pending, time.monotonic() + self._timeout_s)
                    except (EOFError, OSError):  # died mid-call: killed from outside, out of memory, segfault
                        code = self._workers[slot].process.exitcode
                        results[index] = Result("error", error=f"reward worker died (exit code {code})")
                        self._abandon(slot, pending, todo)
                elif time.monotonic() >= deadline:
                    index = pending.popleft()
                    results[index] = self._timed_out(tasks[index])
                    self._abandon(slot, pending, todo)
                if not pending:
                    del busy[slot]
        return results  # type: ignore[return-value]

    def _timed_out(self, task: Task) -> Result:
        """A hung call scores 0 (the completion made the verifier hang), unless the reward bounds its own time (the
        code sandbox): then only the infrastructure can have hung it, and the sample is masked."""
        from ponder.rewards.registry import resolve

        if hasattr(resolve(task.reward), "time_bound"):
            return Result("error", error=f"{task.reward} did not finish within reward.timeout_s "
                                         f"({self._timeout_s:.1f}s) although it bounds its own time")
        return Result("timeout", 0.0, f"killed after {self._timeout_s:.1f}s")

    def _hand(self, slot: int, chunk: list[Task]) -> bool:
        """Give a chunk to a worker; an idle worker killed from outside is replaced first. False: none came up."""
        for _ in range(2):
            try:
                self._workers[slot].hand(chunk)
                return True
            except (OSError, EOFError):
                self._replace(slot)
        return False

    def _abandon(self, slot: int, pending: deque[int], todo: deque[int]) -> None:
        """Kill and replace a worker; the tasks of its chunk it had not started go back to the front of the queue."""
        self._replace(slot)
        todo.extendleft(reversed(pending))
        pending.clear()

    def _replace(self, slot: int) -> None:
        self._workers[slot].kill()
        self._workers[slot] = _Worker(self._ctx, self._memory_mb, self._prepare)
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
