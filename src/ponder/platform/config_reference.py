"""Writes docs/config.md from the schema: `python -m ponder.platform.config_reference > docs/config.md`."""

from __future__ import annotations

import inspect
from dataclasses import fields, is_dataclass

from ponder.platform.config import PonderConfig
from ponder.platform.validation import field_default


def _comments(cls) -> dict[str, str]:
    """Trailing `# ...` comments on field lines, as written in config.py."""
    out = {}
    for line in inspect.getsource(cls).splitlines():
        code, _, comment = line.partition("  # ")
        if comment and ":" in code:
            out[code.strip().split(":")[0]] = comment.strip()
    return out


def render(cls=PonderConfig, prefix: str = "") -> list[str]:
    lines: list[str] = []
    scalars = [f for f in fields(cls) if not is_dataclass(field_default(f))]
    if scalars:
        doc = inspect.getdoc(cls) or ""
        lines += [f"## `{prefix.rstrip('.') or '(top level)'}`", "", " ".join(doc.split()), "",
                  "| key | type | default | valid | note |", "| --- | --- | --- | --- | --- |"]
        notes = _comments(cls)
        for f in scalars:
            kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            valid = f.metadata.get("valid", "")
            default = field_default(f)
            lines.append(f"| `{prefix}{f.name}` | `{kind}` | `{default!r}` | {valid} | {notes.get(f.name, '')} |")
        lines.append("")
    for f in fields(cls):
        if is_dataclass(field_default(f)):
            lines += render(type(field_default(f)), f"{prefix}{f.name}.")
    return lines


def main() -> None:
    print("# Configuration reference\n")
    print("Generated from `src/ponder/platform/config.py` by `make config-reference`; do not edit by hand. YAML files"
          " in `configs/` and `key=value` arguments override these defaults. A value outside its `valid` range fails"
          " at load, before anything starts; cross-field rules (e.g. `rollout.max_tokens` < `rollout.max_model_len`)"
          " are checked there too.\n")
    print("\n".join(render()))


if __name__ == "__main__":
    main()
