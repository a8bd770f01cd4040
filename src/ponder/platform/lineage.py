"""What a run was made of, for MLflow to record: datasets (source and content hash), reward functions and their
versions, the Ponder version and the git commit. Plain strings; platform/tracking.py writes them as run tags.

A reward's version is the hash of the source of the module that defines it (for a critic: its module and the model it
serves), so two runs whose rewards scored differently never show the same version.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import subprocess
from importlib import metadata
from pathlib import Path

from ponder.platform.config import PonderConfig, RewardSpec
from ponder.types import Problem


def problems_digest(problems: list[Problem]) -> str:
    """SHA-256 of the problems as trained on (prompt, answer, reward, metadata, in order): the same for the same
    data whichever file format or generator it came from.

    >>> problems_digest([Problem("1+1", "2")]) == problems_digest([Problem("1+1", "2", solution="ignored")])
    True
    """
    digest = hashlib.sha256()
    for p in problems:
        row = {"prompt": p.prompt, "answer": p.answer, "reward": p.reward, "metadata": p.metadata}
        digest.update(json.dumps(row, sort_keys=True, default=str).encode() + b"\n")
    return digest.hexdigest()


def reward_version(spec: RewardSpec) -> str:
    """12 hex digits of the hash of the reward's defining module (and a critic's model path)."""
    from ponder.rewards import critic
    from ponder.rewards.registry import resolve

    if spec.name in critic.KINDS:
        source = inspect.getsource(critic) + str(spec.options.get("path", ""))
    else:
        source = inspect.getsource(inspect.getmodule(resolve(spec.name)))
    return hashlib.sha256(source.encode()).hexdigest()[:12]


def git_commit() -> str:
    """The checkout's commit (with `-dirty` if it has uncommitted changes), PONDER_GIT_COMMIT in images built
    without .git, or 'unknown'."""
    if os.environ.get("PONDER_GIT_COMMIT"):
        return os.environ["PONDER_GIT_COMMIT"]
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def lineage_tags(cfg: PonderConfig, train_set: list[Problem], eval_set: list[Problem]) -> dict[str, str]:
    tags = {"ponder.version": metadata.version("ponder"), "mlflow.source.git.commit": git_commit(),
            "ponder.dataset.train": cfg.data.train, "ponder.dataset.train.sha256": problems_digest(train_set),
            "ponder.dataset.train.rows": str(len(train_set)), "ponder.dataset.eval": cfg.data.eval,
            "ponder.dataset.eval.sha256": problems_digest(eval_set), "ponder.dataset.eval.rows": str(len(eval_set))}
    for spec in cfg.reward.functions:
        tags[f"ponder.reward.{spec.name.replace(':', '/')}"] = f"weight={spec.weight} version={reward_version(spec)}"
    return tags
