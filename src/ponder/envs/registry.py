"""Environments by name: the built-ins, plus any class or factory by import path `pkg.module:Name`. Options from
`rollout.env.options` are its keyword arguments, checked against its signature before any actor starts."""

from __future__ import annotations

import inspect
from typing import Any, Callable

from ponder.envs.base import Environment
from ponder.envs.revision import RevisionEnv
from ponder.envs.tools import ToolEnv
from ponder.plugins import lookup

REGISTRY: dict[str, Callable[..., Environment]] = {"tools": ToolEnv, "revision": RevisionEnv}


def resolve(name: str) -> Callable[..., Environment]:
    """A registered name or an import path; ValueError says what exists."""
    return lookup(name, REGISTRY, "environment")


def check_options(name: str, options: dict[str, Any]) -> Callable[..., Environment]:
    """The environment's factory, once `options` are known to be keyword arguments it takes."""
    factory = resolve(name)
    params = inspect.signature(factory).parameters.values()
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        known = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"environment {name!r} has no option(s) {unknown}; it takes {known or 'none'}")
    return factory


def make(name: str, options: dict[str, Any]) -> Environment:
    environment = check_options(name, options)(**options)
    if not isinstance(getattr(environment, "stop", None), tuple):
        raise ValueError(f"environment {name!r} must have a `stop` tuple of strings that end a model turn")
    return environment
