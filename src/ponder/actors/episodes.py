"""The environments of a rollout actor and their steps in flight (multi-turn episodes, `rollout.env`).

Environment steps (a tool run in the sandbox, a verifier's critique) run on a small thread pool, never on the engine
thread, so decoding goes on meanwhile. A finished step is posted back to the engine thread, which appends the
observation and submits the next turn (`actors/rollout.py`); a step past its deadline is given up on and its late
answer ignored.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional

from ponder.actors.samples import Group, Sample
from ponder.envs.base import Environment, Reply
from ponder.envs.registry import make as make_env
from ponder.platform.config import EnvConfig
from ponder.types import Problem


@dataclass
class EnvStep:
    """One episode's environment step: the turn's text, its answer (a future), a deadline."""

    group: Group
    k: int
    turn: str
    deadline: float
    reply: Optional[Future] = None

    @property
    def sample(self) -> Sample:
        return self.group.samples[self.k]


class EnvironmentSteps:
    def __init__(self, post: Callable[[EnvStep], None]):
        """`post`: hands a finished step to the engine thread (its inbox)."""
        self._post = post
        self._envs: dict[str, Environment] = {}  # by their configuration, made on first use
        self._threads: Optional[ThreadPoolExecutor] = None
        self._lock = threading.Lock()
        self._steps: dict[int, EnvStep] = {}  # id of the sample -> its step in flight

    def environment(self, cfg: Optional[EnvConfig]) -> Optional[Environment]:
        """The environment of this configuration (one per actor, shared by its episodes); made on first use, where a
        bad one raises to the caller."""
        if cfg is None:
            return None
        with self._lock:
            key = repr(cfg)
            if key not in self._envs:
                self._envs[key] = make_env(cfg.name, dict(cfg.options))
                if self._threads is None:
                    self._threads = ThreadPoolExecutor(cfg.threads, "env-step")
            return self._envs[key]

    def start(self, group: Group, k: int, turn: str) -> None:
        step = EnvStep(group, k, turn, time.monotonic() + group.sampling.env.step_timeout_s)
        self._steps[id(step.sample)] = step
        step.reply = self._threads.submit(_step, group.env, group.request.problem, step.sample, turn)
        step.reply.add_done_callback(lambda _: self._post(step))

    def finish(self, step: EnvStep) -> bool:
        """On the engine thread: False for a step already given up on (its episode has ended)."""
        return self._steps.pop(id(step.sample), None) is step

    def expired(self) -> list[EnvStep]:
        """The steps past their deadline, given up on."""
        now = time.monotonic()
        late = [step for step in self._steps.values() if step.deadline < now]
        for step in late:
            del self._steps[id(step.sample)]
        return late

    def __len__(self) -> int:
        return len(self._steps)

    def close(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
        for env in self._envs.values():
            env.close()


def _step(env: Environment, problem: Problem, sample: Sample, turn: str) -> Reply:
    """On an environment thread: start the episode at its first turn, then step it."""
    if sample.turns == 1:
        sample.env_state = env.start(problem)
    return env.step(sample.env_state, turn)
