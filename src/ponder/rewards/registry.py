"""Reward functions by name: a plain dict of the built-ins, plus any function by import path `pkg.module:function`.

A reward function may carry optional hooks: `check_options(options)` raises ValueError on options it does not take
(otherwise its signature decides; run before any actor starts), `self_test(options)` checks where the reward actor
runs that it can score at all (the code sandbox: isolation in force), `prepare(options)` readies each verifier process
before its first call (warm sandboxes), and `bounds_own_time = True` says that the function ends within its own
limits, so a verifier process it leaves hung is an infrastructure failure (masked) rather than the completion's (0).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Any, Callable, Optional

from ponder.rewards import critic
from ponder.rewards.base import RewardFn
from ponder.rewards.code import code_reward
from ponder.rewards.format import format_reward
from ponder.rewards.math import math_reward

REGISTRY: dict[str, RewardFn] = {
    "math": math_reward,
    "format": format_reward,
    "code": code_reward,
}


def resolve(name: str) -> RewardFn:
    """A registered name or an import path; raises ValueError that says what exists."""
    if name in REGISTRY:
        return REGISTRY[name]
    if ":" not in name:
        close = difflib.get_close_matches(name, REGISTRY, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown reward {name!r}; {hint}built-ins are {sorted(REGISTRY)}, critics are "
                         f"{list(critic.KINDS)}, or give an import path 'package.module:function'")
    module_name, _, attr = name.partition(":")
    try:
        fn: Callable = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"reward {name!r} cannot be imported: {e}") from None
    if not callable(fn):
        raise ValueError(f"reward {name!r} is not callable")
    return fn


def check_options(name: str, options: dict[str, Any]) -> Optional[RewardFn]:
    """The reward function, once its options are known to be ones it takes; ValueError names the unknown ones.
    Critics (`reward_model`, `judge`) are actors, not functions: their options are checked and None comes back."""
    if name in critic.KINDS:
        critic.check_options(name, options)
        return None
    fn = resolve(name)
    if hasattr(fn, "check_options"):
        fn.check_options(options)
        return fn
    params = list(inspect.signature(fn).parameters.values())
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return fn  # takes any option: it checks them itself
    known = [p.name for p in params[2:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"reward {name!r} has no option(s) {unknown}; it takes {known or 'none'}")
    return fn
