"""Views of the schema for people and for tools: docs/config.md (`python -m ponder.platform.config_reference >
docs/config.md`) and the JSON Schema of a config file, which `--chart-schema helm/ponder/values.schema.json` writes
into the Helm chart so that `helm install` refuses a misspelt key, a wrong type or an out-of-range value in its
`config` block before anything is created (`make config-reference` does both)."""

from __future__ import annotations

import inspect
import json
import sys
from dataclasses import fields, is_dataclass

from ponder.platform.config import PonderConfig
from ponder.platform.validation import field_default


def _comments(cls) -> dict[str, str]:
    """Each field's comment as written in config.py: the trailing `# ...` on its line, else the comment lines right
    above it."""
    out, above = {}, []
    for line in inspect.getsource(cls).splitlines():
        if line.strip().startswith("# "):
            above.append(line.strip()[2:])
            continue
        code, _, comment = line.partition("  # ")
        if ":" in code and (comment or above):
            out[code.strip().split(":")[0]] = comment.strip() or " ".join(above)
        above = []
    return out


def render(cls=PonderConfig, prefix: str = "", defaults=None) -> list[str]:
    """docs/config.md's sections, with the defaults of `defaults` (the schema's default instance: a section may
    default differently from its class, as `critic` does from `learner`)."""
    defaults = cls() if defaults is None else defaults
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
            lines.append(f"| `{prefix}{f.name}` | `{kind}` | `{getattr(defaults, f.name)!r}` | {valid} | "
                         f"{notes.get(f.name, '')} |")
        lines.append("")
    for f in fields(cls):
        if is_dataclass(field_default(f)):
            lines += render(type(field_default(f)), f"{prefix}{f.name}.", getattr(defaults, f.name))
    return lines


_JSON_TYPES = {"int": "integer", "float": "number", "bool": "boolean", "str": "string"}


def json_schema(cls=PonderConfig) -> dict:
    """A config file's JSON Schema: every section and key (no others), each value's type and its `valid` range.
    Cross-field rules are not expressible here; they are checked when Ponder loads the config."""
    properties = {}
    for f in fields(cls):
        default = field_default(f)
        properties[f.name] = json_schema(type(default)) if is_dataclass(default) else _value_schema(f)
    return {"type": "object", "additionalProperties": False, "properties": properties}


def _value_schema(f) -> dict:
    kind, nullable = f.type, f.type.startswith("Optional[")
    kind = kind.removeprefix("Optional[").removesuffix("]") if nullable else kind
    if kind in _JSON_TYPES:
        out: dict = {"type": _JSON_TYPES[kind]}
    elif kind == "list[int]":
        out = {"type": "array", "items": {"type": "integer"}}
    elif kind == "dict[str, float]":
        out = {"type": "object", "additionalProperties": {"type": "number"}}
    elif kind == "list[RewardSpec]":
        from ponder.platform.config import RewardSpec

        out = {"type": "array", "items": json_schema(RewardSpec)}
    elif kind == "dict[str, Any]":
        out = {"type": "object"}
    else:
        raise TypeError(f"no JSON Schema for {f.name}: {f.type}; add it to config_reference._value_schema")
    valid = f.metadata.get("valid")
    if valid is not None and valid.choices:
        out["enum"] = list(valid.choices)
    elif valid is not None:
        if valid.lo is not None:
            out["exclusiveMinimum" if valid.lo_open else "minimum"] = valid.lo
        if valid.hi is not None:
            out["maximum"] = valid.hi
    if nullable:
        out = {"anyOf": [out, {"type": "null"}]}
    return out


def update_chart_schema(path: str) -> None:
    """Write `json_schema()` into a Helm chart's values.schema.json as the first rule of its `config` block (the rest
    are the chart's own rules)."""
    with open(path) as f:
        values = json.load(f)
    values["properties"]["config"]["allOf"][0] = json_schema()
    with open(path, "w") as f:
        f.write(json.dumps(values, indent=2) + "\n")


def main() -> None:
    if sys.argv[1:2] == ["--chart-schema"]:
        update_chart_schema(sys.argv[2])
        return
    print("# Configuration reference\n")
    print("Generated from `src/ponder/platform/config.py` by `make config-reference`; do not edit by hand. YAML files"
          " in `configs/` and `key=value` arguments override these defaults. A value outside its `valid` range fails"
          " at load, before anything starts; cross-field rules (e.g. `rollout.max_tokens` < `rollout.max_model_len`)"
          " are checked there too.\n")
    print("\n".join(render()))


if __name__ == "__main__":
    main()
