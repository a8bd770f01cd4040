"""The data flywheel's data: the traces a run scored, and the datasets exported from them.

A *trace* is one scored sample as the driver logs it every step (`trace_record`; MLflow artifacts
`traces/step_N.jsonl`, trainer.save_traces). An *export* (`ponder export RUN_ID`) selects traces (`select`: masked and
multi-turn ones never, then the filters, then one per distinct prompt and response) and writes them as a dataset any
`data.train` reads (`export_rows`, `write_dataset`): `prompt`, `answer`, the row's `reward`, and `metadata` holding the
problem's own metadata, the response as `completion` (what `ponder sft` trains toward) and the trace (reward and its
terms, critic step scores, policy version, step, run id, dataset lineage, the group's pass rate). JSONL, Parquet or a
Hugging Face dataset directory, on a local path or `s3://` (storage/backends.py). Plain Python; pyarrow and `datasets`
only when those formats are written.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ponder.types import Trajectory


@dataclass(frozen=True)
class TraceFilter:
    """Which traces an export keeps. Masked samples (infrastructure failures) and multi-turn episodes (their
    responses hold the environment's text) are never exported."""

    correct_only: bool = True
    min_reward: Optional[float] = None
    pass_rate: Optional[tuple[float, float]] = None  # (lo, hi): keep groups with lo < pass rate < hi
    max_tokens: Optional[int] = None  # response tokens


def trace_record(t: Trajectory, step: int) -> dict[str, Any]:
    """One scored sample as logged by the driver (JSON-ready)."""
    return {"step": step, "group_id": t.group_id, "sample_index": t.sample_index, "prompt": t.problem.prompt,
            "answer": t.problem.answer, "problem_reward": t.problem.reward, "metadata": t.problem.metadata,
            "response": t.response_text, "response_tokens": len(t.response_ids), "finish_reason": t.finish_reason,
            "reward": t.reward, "terms": t.reward_terms, "correct": t.correct, "masked": t.masked,
            "critic": [list(s) for s in t.step_scores], "policy_version": t.policy_version, "turns": t.turns}


def traces_jsonl(trajectories: list[Trajectory], step: int) -> str:
    return "".join(json.dumps(trace_record(t, step)) + "\n" for t in trajectories)


def pass_rates(traces: list[dict]) -> dict[tuple[int, int], float]:
    """(step, group id) -> the fraction of the group's unmasked samples that were correct.

    >>> pass_rates([{"step": 1, "group_id": 0, "correct": c, "masked": False} for c in (True, False)])
    {(1, 0): 0.5}
    """
    counts: dict[tuple[int, int], list[int]] = defaultdict(lambda: [0, 0])
    for t in traces:
        if not t["masked"]:
            entry = counts[(t["step"], t["group_id"])]
            entry[0] += bool(t["correct"])
            entry[1] += 1
    return {key: right / total for key, (right, total) in counts.items()}


def select(traces: list[dict], keep: TraceFilter) -> tuple[list[dict], dict[str, int]]:
    """The traces an export keeps, in their order, and how many each rule left out. Every trace carries its group's
    `pass_rate` afterwards. Duplicates (same prompt and response) keep the one with the highest reward, earliest first
    on ties."""
    rates = pass_rates(traces)
    left_out: dict[str, int] = defaultdict(int)
    chosen: dict[tuple[str, str], dict] = {}
    for t in traces:
        t = {**t, "pass_rate": rates.get((t["step"], t["group_id"]), 0.0)}
        rule = _left_out_by(t, keep)
        if rule:
            left_out[rule] += 1
            continue
        key = (t["prompt"], t["response"])
        if key in chosen:
            left_out["duplicate"] += 1
            if t["reward"] <= chosen[key]["reward"]:
                continue
        chosen[key] = t
    return list(chosen.values()), dict(left_out)


def _left_out_by(t: dict, keep: TraceFilter) -> str:
    if t["masked"]:
        return "masked"
    if t.get("turns", 1) > 1:
        return "multi_turn"
    if keep.correct_only and not t["correct"]:
        return "incorrect"
    if keep.min_reward is not None and t["reward"] < keep.min_reward:
        return "min_reward"
    if keep.pass_rate is not None and not keep.pass_rate[0] < t["pass_rate"] < keep.pass_rate[1]:
        return "pass_rate"
    if keep.max_tokens is not None and t["response_tokens"] > keep.max_tokens:
        return "max_tokens"
    return ""


def export_rows(traces: list[dict], run_id: str, lineage: dict[str, str]) -> list[dict]:
    """Dataset rows of selected traces; `lineage`: the run's dataset tags (source and SHA-256)."""
    rows = []
    for t in traces:
        trace = {k: t[k] for k in ("reward", "terms", "critic", "correct", "policy_version", "step", "group_id",
                                   "sample_index", "response_tokens", "finish_reason", "pass_rate")}
        trace.update(run_id=run_id, **lineage)
        rows.append({"prompt": t["prompt"], "answer": t["answer"], "reward": t["problem_reward"],
                     "metadata": {**t["metadata"], "completion": t["response"], "trace": trace}})
    return rows


def source_runs(problems: list) -> list[str]:
    """The runs a dataset's rows were exported from (their traces' run ids), sorted."""
    return sorted({p.metadata["trace"]["run_id"] for p in problems
                   if isinstance(p.metadata.get("trace"), dict) and "run_id" in p.metadata["trace"]})


def dataset_format(uri: str) -> str:
    """jsonl, parquet or hf (a directory), from the target's name."""
    return "jsonl" if uri.endswith(".jsonl") else "parquet" if uri.endswith(".parquet") else "hf"


def write_dataset(rows: list[dict], uri: str, endpoint_url: Optional[str] = None) -> str:
    """`rows` as JSONL, Parquet or a Hugging Face dataset directory (by `uri`'s name) at a local path or s3:// URI.
    Parquet and HF rows carry `metadata` as JSON text (its keys vary from row to row); every reader here takes
    both. Returns `uri`."""
    if not uri.startswith("s3://"):
        _write_local(rows, Path(uri))
        return uri
    from ponder.storage.backends import open_storage

    with tempfile.TemporaryDirectory(prefix="ponder-export-") as tmp:
        name = uri.rstrip("/").rpartition("/")[2]
        local = Path(tmp) / name
        _write_local(rows, local)
        if local.is_dir():
            store = open_storage(uri.rstrip("/"), endpoint_url)
            for path in sorted(p for p in local.rglob("*") if p.is_file()):
                store.put_file(path, str(path.relative_to(local)))
        else:
            open_storage(uri.rpartition("/")[0], endpoint_url).put_file(local, name)
    return uri


def _write_local(rows: list[dict], path: Path) -> None:
    kind = dataset_format(str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        return
    flat = [{**row, "metadata": json.dumps(row["metadata"])} for row in rows]
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(flat), path)
        return
    import datasets

    shutil.rmtree(path, ignore_errors=True)
    datasets.Dataset.from_list(flat).save_to_disk(str(path))


def fetch_dataset(uri: str, endpoint_url: Optional[str] = None) -> Path:
    """A local copy of an s3:// dataset (a .jsonl/.parquet object, or a directory's objects) in a fresh temporary
    directory; a local path as it is."""
    if not uri.startswith("s3://"):
        return Path(uri)
    from ponder.storage.backends import open_storage

    name = uri.rstrip("/").rpartition("/")[2]
    local = Path(tempfile.mkdtemp(prefix="ponder-dataset-")) / name
    if dataset_format(uri) != "hf":
        open_storage(uri.rpartition("/")[0], endpoint_url).get_file(name, local)
        return local
    store = open_storage(uri.rstrip("/"), endpoint_url)
    keys = store.list("")
    if not keys:
        raise FileNotFoundError(f"nothing under {uri}")
    for key in keys:
        store.get_file(key, local / key)
    return local
