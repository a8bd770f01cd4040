"""Ray Jobs submission: run `ponder train` on a Ray cluster from a laptop.

The working directory is shipped with the job (minus the virtual environment, local outputs and caches); the job's
entrypoint is the same `ponder train` command with the same config files and overrides. On the cluster, set
`tracking.uri` to a tracking server (a local SQLite store would live in the job's scratch directory).
"""

from __future__ import annotations

import shlex
import time

from ponder.platform.config import PonderConfig

EXCLUDES = [".venv", ".git", "mlruns", "outputs", "artifacts", "**/__pycache__", "*.egg-info"]


def build_entrypoint(items: list[str]) -> str:
    """The job's command line: the same `ponder train` as a local run.

    >>> build_entrypoint(["configs/default.yaml", "trainer.steps=2"])
    'ponder train configs/default.yaml trainer.steps=2'
    """
    return " ".join(["ponder", "train", *map(shlex.quote, items)])


def submit(address: str, items: list[str], *, working_dir: str, follow: bool, pip: list[str] | None,
           job_id: str | None, cfg: PonderConfig) -> str:
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(address)
    runtime_env: dict = {"working_dir": working_dir, "excludes": EXCLUDES}
    if pip:
        runtime_env["pip"] = pip
    if cfg.tracking.uri.startswith("sqlite:///") or "://" not in cfg.tracking.uri:
        print(f"note: tracking.uri={cfg.tracking.uri} is local to the job's node; set tracking.uri to an MLflow "
              "server to see the run from here")
    submission_id = client.submit_job(entrypoint=build_entrypoint(items), runtime_env=runtime_env,
                                      submission_id=job_id)
    print(f"submitted job {submission_id} to {address}")
    if follow:
        offset = 0
        while True:
            logs = client.get_job_logs(submission_id)
            print(logs[offset:], end="", flush=True)
            offset = len(logs)
            status = client.get_job_status(submission_id)
            if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
                break
            time.sleep(2)
        print(f"job {submission_id}: {status.value}")
        if status != JobStatus.SUCCEEDED:
            raise SystemExit(1)
    return submission_id
