"""Names to objects, for everything a user may plug in (reward functions, environments): a built-in by name, or an
import path `package.module:attribute`. Errors say what exists."""

from __future__ import annotations

import difflib
import importlib
from typing import Any, Callable


def lookup(name: str, builtins: dict[str, Callable[..., Any]], what: str, also: str = "") -> Callable[..., Any]:
    """`builtins[name]`, or the callable at import path `name`; ValueError otherwise. `also`: other valid names, for
    the message (e.g. "critics are [...], ").

    >>> lookup("maht", {"math": len}, "reward")
    Traceback (most recent call last):
    ...
    ValueError: unknown reward 'maht'; did you mean 'math'? built-ins are ['math'], or give an import path 'package.module:name'
    """
    if name in builtins:
        return builtins[name]
    if ":" not in name:
        close = difflib.get_close_matches(name, builtins, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown {what} {name!r}; {hint}built-ins are {sorted(builtins)}, {also}or give an import "
                         "path 'package.module:name'")
    module_name, _, attr = name.partition(":")
    try:
        found = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{what} {name!r} cannot be imported: {e}") from None
    if not callable(found):
        raise ValueError(f"{what} {name!r} is not callable")
    return found
