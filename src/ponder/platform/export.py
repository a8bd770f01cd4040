"""`ponder export`: a run's verified traces as a dataset (the data flywheel), and `ponder sft`'s MLflow run.

The export reads the traces the run logged (data/traces.py), keeps those the filters pass, one per distinct prompt and
response, writes them where asked (local or s3://; JSONL, Parquet or a Hugging Face directory) and tags the run with
it. A run that trains on the export — `ponder sft` into a fresh model, or `ponder train` — logs it as a dataset input
and links itself and the exporting run both ways (`Tracker.log_dataset`).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, replace
from typing import Callable, Optional

from ponder.data.datasets import load_problems
from ponder.data.traces import TraceFilter, export_rows, select, source_runs, write_dataset
from ponder.platform.config import PonderConfig, flatten, to_yaml
from ponder.platform.lineage import lineage_tags, problems_digest
from ponder.platform.tracking import Tracker, record_export, traces_of_run


@dataclass
class Export:
    uri: str
    rows: int
    traces: int  # traces the run logged
    left_out: dict[str, int]  # by the rule that left them out (masked, incorrect, pass_rate, duplicate, ...)
    digest: str  # SHA-256 of the rows as written


def export_run(cfg: PonderConfig, run_id: str, uri: str, keep: TraceFilter) -> Export:
    """Run `run_id`'s traces that `keep` passes, deduplicated, written to `uri`; the exporting run is tagged."""
    with tempfile.TemporaryDirectory(prefix="ponder-traces-") as tmp:
        traces, tags = traces_of_run(cfg.tracking, run_id, tmp)
    chosen, left_out = select(traces, keep)
    if not chosen:
        raise LookupError(f"none of run {run_id}'s {len(traces)} traces passes the filters (left out: "
                          f"{', '.join(f'{k} {v}' for k, v in sorted(left_out.items()))}); loosen them")
    lineage = {"dataset": tags.get("ponder.dataset.train", ""), "dataset_sha256": tags.get("ponder.dataset.train.sha256", "")}
    rows = export_rows(chosen, run_id, lineage)
    digest = hashlib.sha256("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode()).hexdigest()
    write_dataset(rows, uri, cfg.checkpoint.endpoint_url)
    record_export(cfg.tracking, run_id, uri, digest, len(rows))
    return Export(uri, len(rows), len(traces), left_out, digest)


def sft_logger(cfg: PonderConfig) -> tuple[Callable[[dict[str, float], int], None], Callable[[str], Optional[str]]]:
    """(log, finish) for `ponder sft`: its MLflow run begins at the first logged metrics (a cached warm start logs
    nothing), with the training data as its input and lineage; `finish(status)` ends it and returns its id (None if
    it never began)."""
    tracker: Optional[Tracker] = None

    def log(metrics: dict[str, float], step: int) -> None:
        nonlocal tracker
        if tracker is None:
            tracker = Tracker(replace(cfg.tracking, run_name=cfg.tracking.run_name or "sft"), flatten(cfg),
                              to_yaml(cfg))
            problems = load_problems(cfg.data.train, "train", cfg.data.task)
            tags = {k: v for k, v in lineage_tags(cfg, problems, []).items() 
                    if not k.startswith(("ponder.reward.", "ponder.dataset.eval"))}
            tracker.set_tags({**tags, "ponder.sft.out_dir": cfg.sft.out_dir})
            tracker.log_dataset(cfg.data.train, problems_digest(problems), len(problems), "sft", source_runs(problems))
        tracker.log_metrics(metrics, step)

    def finish(status: str) -> Optional[str]:
        if tracker is None:
            return None
        tracker.finish(status)
        return tracker.run_id

    return log, finish
