"""Prompt sources: the embedded generator, JSONL, Parquet, or a Hugging Face `datasets` directory, local or on
`s3://` (fetched to a temporary directory; the endpoint from AWS_ENDPOINT_URL).

Every row needs `prompt` and `answer`; `reward` (a reward name for that row) and `metadata` are optional. A bad row is
reported with its file and index. No network.
"""

from __future__ import annotations

import json
from pathlib import Path
from functools import partial
from typing import Any, Callable, Iterable

from ponder.data.tasks import (ArithmeticTask, SearchTask, generate_code_problems, generate_problems,
                               generate_search_problems, with_tool_episode)
from ponder.data.traces import fetch_dataset
from ponder.platform.config import TaskConfig
from ponder.types import Problem

EMBEDDED = "embedded:arithmetic"
EMBEDDED_CODE = "embedded:code"  # write f(x) from its formula, scored by the code sandbox
EMBEDDED_SEARCH = "embedded:search"  # long chain of thought: a search with checks, long-tailed lengths
EMBEDDED_TOOLS = "embedded:tools"  # long additions worked with the calculator tool (multi-turn, rollout.env=tools)
EMBEDDED_SOURCES = (EMBEDDED, EMBEDDED_CODE, EMBEDDED_SEARCH, EMBEDDED_TOOLS)


class DatasetError(ValueError):
    """A dataset the user must fix; names the file and the row."""


def load_problems(source: str, split: str, task: TaskConfig) -> list[Problem]:
    """`split` is "train" or "eval"; only the embedded generator uses it (file sources are one split each)."""
    if source in EMBEDDED_SOURCES:
        return embedded_split(split, task, source)
    path = fetch_dataset(source) if source.startswith("s3://") else Path(source)
    if not path.exists():
        raise DatasetError(f"dataset {source!r} not found; give a .jsonl/.parquet file, a saved HF dataset "
                           f"directory, or one of {', '.join(EMBEDDED_SOURCES)}")
    if path.is_dir():
        rows = _hf_rows(path)
    elif path.suffix == ".jsonl":
        rows = _jsonl_rows(path)
    elif path.suffix == ".parquet":
        import pyarrow
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except (pyarrow.ArrowException, OSError) as e:
            raise DatasetError(f"dataset {source!r} is not a readable Parquet file ({e})") from None
    else:
        raise DatasetError(f"dataset {source!r}: unknown format {path.suffix!r}; use .jsonl, .parquet or a directory")
    problems = [_to_problem(row, source, i) for i, row in enumerate(rows)]
    if not problems:
        raise DatasetError(f"dataset {source!r} has no rows")
    return problems


def embedded_split(split: str, task: TaskConfig, source: str = EMBEDDED) -> list[Problem]:
    """Fixed-seed, disjoint held-out and train splits of an embedded task: the held-out split is drawn first (seed + 1)
    and the train split from what is left (the code task has 3,564 problems in all: its train split is at most that
    less the held-out ones)."""
    num_train = task.num_train
    if source == EMBEDDED_CODE:
        generate: Callable[..., list[Problem]] = generate_code_problems
        num_train = min(num_train, 3564 - task.num_eval)
    elif source == EMBEDDED_SEARCH:
        generate = partial(generate_search_problems,
                           task=SearchTask(task.search_min_start, task.search_max_start, task.search_max_steps))
    else:
        generate = partial(generate_problems, task=ArithmeticTask(task.min_digits, task.max_digits, task.ops))
    if source == EMBEDDED_TOOLS:
        arithmetic = generate
        generate = lambda *args, **kwargs: [with_tool_episode(p) for p in arithmetic(*args, **kwargs)]  # noqa: E731
    held_out = generate(task.num_eval, task.seed + 1)
    if split == "eval":
        return held_out
    return generate(num_train, task.seed, exclude=frozenset(p.prompt for p in held_out))


def _jsonl_rows(path: Path) -> Iterable[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as f:
        try:
            for i, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DatasetError(f"{path}: line {i + 1} is not valid JSON ({e.msg})") from None
        except UnicodeDecodeError:
            raise DatasetError(f"{path}: not UTF-8 text (line {len(rows) + 1}); JSONL files are UTF-8") from None
    return rows


def _hf_rows(path: Path) -> Iterable[dict[str, Any]]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as e:
        raise DatasetError(f"dataset directory {str(path)!r} is not a saved Hugging Face dataset "
                           f"(`Dataset.save_to_disk`): {str(e).splitlines()[0]}") from None
    if isinstance(loaded, datasets.DatasetDict):
        raise DatasetError(f"{path} holds splits {list(loaded)}; point at one split's directory, e.g. {path}/train")
    return loaded.to_list()


def _to_problem(row: Any, source: str, index: int) -> Problem:
    if not isinstance(row, dict):
        raise DatasetError(f"{source}: row {index} is not an object")
    missing = [k for k in ("prompt", "answer") if row.get(k) in (None, "")]
    if missing:
        raise DatasetError(f"{source}: row {index} is missing required field(s) {missing}; every row needs "
                           "'prompt' and 'answer'")
    metadata = row.get("metadata") or {}
    if isinstance(metadata, str):  # Parquet and HF exports carry it as JSON text (data/traces.py)
        try:
            metadata = json.loads(metadata)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{source}: row {index}: 'metadata' is text but not JSON ({e.msg})") from None
    if not isinstance(metadata, dict):
        raise DatasetError(f"{source}: row {index}: 'metadata' must be an object, not {type(metadata).__name__}")
    return Problem(prompt=str(row["prompt"]), answer=str(row["answer"]), solution=row.get("solution"),
                   reward=row.get("reward"), metadata=metadata)
