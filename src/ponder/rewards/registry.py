"""Reward functions by name: a plain dict of the built-ins, plus any function by import path `pkg.module:function`."""

from __future__ import annotations

import difflib
import importlib
from typing import Callable

from ponder.rewards.base import RewardFn
from ponder.rewards.format import format_reward
from ponder.rewards.math import math_reward

REGISTRY: dict[str, RewardFn] = {
    "math": math_reward,
    "format": format_reward,
}


def resolve(name: str) -> RewardFn:
    """A registered name or an import path; raises ValueError that says what exists."""
    if name in REGISTRY:
        return REGISTRY[name]
    if ":" not in name:
        close = difflib.get_close_matches(name, REGISTRY, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown reward {name!r}; {hint}built-ins are {sorted(REGISTRY)}, or give an import path "
                         "'package.module:function'")
    module_name, _, attr = name.partition(":")
    try:
        fn: Callable = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"reward {name!r} cannot be imported: {e}") from None
    if not callable(fn):
        raise ValueError(f"reward {name!r} is not callable")
    return fn
