"""Self-revision: the model answers, receives a critique, and answers again.

The critique comes from
  - `verifier`: the problem's checker (a reward function, `math` by default) run on the answer in a verifier process
    of its own with a hard timeout, as the reward actor runs it (`rewards/pool.py`: an environment step runs on a
    thread, where math-verify's own timeout cannot work, and a hostile answer must not hang it). A right answer
    ends the episode; a wrong one is sent back with `wrong` ("The answer 12 is wrong."), naming the model's own
    answer, never the right one.
  - `self`: the model critiques itself: every answer is followed by `review`, a cue to check it, and the model's
    next turn is its review and revised answer.
Every answer turn is marked as an answer, so the reward actor scores the first and the final one: the episode's
reward is the final answer's, plus `reward.revision_bonus` when a wrong first answer was fixed; first-attempt and
final accuracy and how often a revision fixes or breaks an answer are logged (`learner/worker.rollout_stats`).
"""

from __future__ import annotations

import threading
from typing import Any

from ponder.data.template import THINK_OPEN
from ponder.envs.base import Reply
from ponder.rewards.extract import last_boxed
from ponder.types import Problem

CRITIQUES = ("verifier", "self")


class RevisionEnv:
    """Options: `critique` (verifier or self), `check` (the reward function the verifier critique runs: a registered
    name or import path), `revisions` (critiques per episode), and the critique texts: `wrong` ({answer} is the
    model's answer) and `review`; each reopens the think block so the model reasons before answering again.
    `check_timeout_s`: the verifier's hard limit per answer (past it the answer counts as wrong, as in scoring)."""

    stop: tuple[str, ...] = ()

    def __init__(self, critique: str = "verifier", check: str = "math", revisions: int = 1,
                 wrong: str = "\nThe answer {answer} is wrong.\n" + THINK_OPEN + "\n",
                 review: str = "\nCheck the answer.\n" + THINK_OPEN + "\n", check_timeout_s: float = 5.0):
        from ponder.rewards import critic
        from ponder.rewards.registry import check_options

        if critique not in CRITIQUES:
            raise ValueError(f"critique {critique!r}: use one of {list(CRITIQUES)}")
        if revisions < 1:
            raise ValueError(f"revisions must be >= 1, got {revisions}")
        self.critique, self.revisions, self.wrong, self.review = critique, revisions, wrong, review
        if critique == "verifier" and check in critic.KINDS:
            raise ValueError(f"check {check!r} is a critic actor; the verifier critique runs a reward function such "
                             "as 'math' or an import path")
        if critique == "verifier":
            check_options(check, {})
        self.check, self.check_timeout_s = check, check_timeout_s
        self._verifier = None  # a HardTimeoutPool of one process, started at the first critique
        self._lock = threading.Lock()

    def start(self, problem: Problem) -> dict[str, Any]:
        return {"problem": problem, "critiques": 0}

    def step(self, state: dict[str, Any], turn: str) -> Reply:
        if state["critiques"] >= self.revisions:
            return Reply(None, answer=True)
        if self.critique == "verifier":
            if self._correct(turn, state["problem"]):
                return Reply(None, answer=True)
            observation = self.wrong.format(answer=last_boxed(turn) or "(none)")
        else:
            observation = self.review
        state["critiques"] += 1
        return Reply(observation, answer=True, metrics={"revision/critiques": 1.0})

    def _correct(self, turn: str, problem: Problem) -> bool:
        from ponder.rewards.pool import HardTimeoutPool, Task

        with self._lock:
            if self._verifier is None:
                self._verifier = HardTimeoutPool(1, self.check_timeout_s, prepare=((self.check, {}),))
            result = self._verifier.map([Task(self.check, turn, problem, {})])[0]
        if result.status == "error":  # the verifier itself failed: the episode is masked, never critiqued wrongly
            raise RuntimeError(f"the verifier {self.check!r} failed: {result.error}")
        return result.status == "ok" and result.value >= 1.0

    def close(self) -> None:
        if self._verifier is not None:
            self._verifier.close()
