"""What an environment is: the other side of a multi-turn episode.

An episode starts from a problem, whose rendered prompt is the first context. The model takes a turn (it ends at
EOS, at one of the environment's `stop` strings, or at the per-turn token cap); the environment answers with a
`Reply`: an observation to append, after which the model takes another turn, or the end of the episode. The
observation's tokens are the environment's: context for later turns, never trained on.

Scoring stays on the trusted side: the environment only marks which model turns are answers (`Reply.answer`); the
reward actor scores those turns' texts with the configured reward functions, in order, and the last one is the
episode's score (the first one too, for self-revision's metrics and bonus). An environment never sees a reward and
never hands one out, so a policy cannot reach its score through anything the environment echoes back.

Environments run in the rollout actor's process, on a few threads beside the engine thread (`step` of different
episodes may run at once; one episode's steps never overlap). `step` raising fails that episode only: it is masked
with the error as its reason and the run goes on. Environments import nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Protocol

from ponder.types import Problem


@dataclass(frozen=True)
class Reply:
    """The environment's answer to a model turn. `observation` None: the episode is over."""

    observation: Optional[str] = None
    answer: bool = False  # the turn just taken is an answer: it is scored (the last answer is the episode's score)
    metrics: Mapping[str, float] = field(default_factory=dict)  # summed over the episode (tool calls, tool seconds)

    @property
    def done(self) -> bool:
        return self.observation is None


class Environment(Protocol):
    stop: tuple[str, ...]  # strings that end a model turn (kept in its text), besides EOS and the token caps

    def start(self, problem: Problem) -> Any:
        """A new episode's state (anything; handed back to every `step` of that episode)."""

    def step(self, state: Any, turn: str) -> Reply:
        """The model's turn (its text since the last observation) -> the observation, or the end."""

    def close(self) -> None:
        """Release what the environment holds (sandboxes); called once, when the rollout actor closes."""
