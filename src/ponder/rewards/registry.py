"""Reward functions by name: a plain dict of the built-ins, plus any function by import path `pkg.module:function`.

A reward function may carry optional hooks: `check_options(options)` raises ValueError on options it does not take
(otherwise its signature decides; run before any actor starts), `self_test(options)` checks where the reward actor
runs that it can score at all (the code sandbox: isolation in force), `prepare(options)` readies each verifier process
before its first call (warm sandboxes), and `time_bound(options)` says in how many seconds the function ends whatever
the completion does: reward.timeout_s must exceed it, and a verifier process that still hangs past reward.timeout_s is
then an infrastructure failure (masked), not the completion's doing (0).
"""

from __future__ import annotations

import inspect
from typing import Any, Optional

from ponder.plugins import lookup
from ponder.rewards import critic
from ponder.rewards.base import RewardFn
from ponder.rewards.code import code_reward
from ponder.rewards.format import format_reward
from ponder.rewards.math import math_reward
from ponder.rewards.steps import steps_reward

REGISTRY: dict[str, RewardFn] = {
    "math": math_reward,
    "format": format_reward,
    "code": code_reward,
    "steps": steps_reward,
}


def resolve(name: str) -> RewardFn:
    """A registered name or an import path; raises ValueError that says what exists."""
    return lookup(name, REGISTRY, "reward", also=f"critics are {list(critic.KINDS)}, ")


def check_options(name: str, options: dict[str, Any], call_timeout_s: Optional[float] = None) -> Optional[RewardFn]:
    """The reward function, once its options are known to be ones it takes; ValueError names the unknown ones, and
    (given `call_timeout_s`, reward.timeout_s) a reward whose own time bound does not fit under the hard limit.
    Critics (`reward_model`, `judge`) are actors, not functions: their options are checked and None comes back."""
    if name in critic.KINDS:
        critic.check_options(name, options)
        return None
    fn = resolve(name)
    _check_known(name, fn, options)
    if call_timeout_s is not None and hasattr(fn, "time_bound"):
        _check_time_bound(name, fn.time_bound(options), call_timeout_s)
    return fn


def _check_known(name: str, fn: RewardFn, options: dict[str, Any]) -> None:
    if hasattr(fn, "check_options"):
        fn.check_options(options)
        return
    params = list(inspect.signature(fn).parameters.values())
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return  # takes any option: it checks them itself
    known = [p.name for p in params[2:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"reward {name!r} has no option(s) {unknown}; it takes {known or 'none'}")


def _check_time_bound(name: str, bound: float, call_timeout_s: float) -> None:
    if bound >= call_timeout_s:
        raise ValueError(f"reward {name!r} may take up to {bound:.0f}s with these options (its timeout_s, the "
                         f"verifier's own work, clean-up), more than reward.timeout_s ({call_timeout_s:g}s): raise "
                         f"reward.timeout_s to at least {int(bound) + 1}, or lower the reward's timeout_s")
