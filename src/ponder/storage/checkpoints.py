"""Atomic checkpoints on any `Storage` (local or s3://): data first, a manifest last, `latest` only ever complete.

Layout under the checkpoint root:

    step_00000010/<files...>          the checkpoint's data, uploaded first
    step_00000010/MANIFEST.json      written after every file: step, each file's size and SHA-256, metadata
    latest                           "step_00000010", written after the manifest

A checkpoint exists only once its manifest does, so an upload that dies halfway (preemption, a network error) leaves
data without a manifest, which no reader takes; `latest` is written after the manifest and, should it be missing or
name an incomplete checkpoint, readers fall back to the newest complete one. Loading verifies every file's size and
hash. Retention keeps the newest `keep_last` complete checkpoints and removes incomplete ones older than the newest.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

from ponder.platform.config import CheckpointConfig
from ponder.storage.backends import Storage, open_storage
from ponder.transport.base import file_digest

MANIFEST = "MANIFEST.json"
LATEST = "latest"
_NAME = re.compile(r"^step_(\d{8})$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, incomplete, or corrupted in storage."""


def checkpoint_name(step: int) -> str:
    """The storage name of step's checkpoint: sorts by step as text.

    >>> checkpoint_name(42)
    'step_00000042'
    """
    return f"step_{step:08d}"


@dataclass(frozen=True)
class CheckpointTarget:
    """Where a run's checkpoints live, small enough to hand to any actor: the learner uploads, the driver reads."""

    url: str  # the checkpoint root: a local directory or s3://bucket/prefix
    endpoint_url: Optional[str] = None
    keep_last: int = 2

    @classmethod
    def of(cls, cfg: CheckpointConfig, output_dir: str) -> "CheckpointTarget":
        """The configured root; by default `<output_dir>/checkpoints`. Local roots are made absolute: MLflow records
        them for `--resume RUN_ID` from anywhere."""
        root = cfg.dir or f"{output_dir}/checkpoints"
        return cls(root if root.startswith("s3://") else str(Path(root).resolve()), cfg.endpoint_url, cfg.keep_last)

    def store(self) -> "CheckpointStore":
        return CheckpointStore(open_storage(self.url, self.endpoint_url), self.keep_last)

    def uri(self, name: str) -> str:
        return f"{self.url.rstrip('/')}/{name}"

    def under(self, name: str) -> "CheckpointTarget":
        """A root of its own inside this one, for a second model's checkpoints (PPO's value model: `critic/`); this
        root's listing and retention see only its own step_* entries."""
        return replace(self, url=self.uri(name))


def locate(spec: str, endpoint_url: Optional[str] = None, keep_last: int = 2) -> tuple[CheckpointTarget, str]:
    """A checkpoint root (its latest complete checkpoint) or one checkpoint (`.../step_00000010`), local or s3://.

    Raises CheckpointError if there is no complete checkpoint there."""
    root, _, last = spec.rstrip("/").rpartition("/")
    if _NAME.match(last):
        target = CheckpointTarget(root or ".", endpoint_url, keep_last)
        if last not in target.store().complete():
            raise CheckpointError(f"{spec} is not a complete checkpoint (no {MANIFEST}); complete ones under "
                                  f"{target.url}: {target.store().complete() or 'none'}")
        return target, last
    target = CheckpointTarget(spec.rstrip("/"), endpoint_url, keep_last)
    name = target.store().latest()
    if name is None:
        raise CheckpointError(f"no complete checkpoint under {spec}; give a checkpoint root (the checkpoint.dir of a "
                              "run), one checkpoint (…/step_00000010), an MLflow run id, or `auto`")
    return target, name


class CheckpointStore:
    def __init__(self, storage: Storage, keep_last: int = 3):
        if keep_last < 1:
            raise ValueError("keep_last must be >= 1")
        self.storage, self.keep_last = storage, keep_last

    def save(self, step: int, local_dir: Path, meta: dict[str, Any]) -> str:
        """Upload every file under `local_dir` as the checkpoint of `step`; returns its name once it is complete."""
        self.begin(step)
        return self.commit(step, [self.upload(step, local_dir)], meta)

    def begin(self, step: int) -> None:
        """Before any upload of `step`: a step saved again (resumed from an earlier one) starts incomplete."""
        self.storage.delete_prefix(f"{checkpoint_name(step)}/")

    def upload(self, step: int, local_dir: Path) -> dict[str, dict]:
        """One writer's part (every learner rank uploads its own files, from its own node): each file's size and
        SHA-256 for the manifest."""
        name, files = checkpoint_name(step), {}
        for path in sorted(p for p in Path(local_dir).rglob("*") if p.is_file()):
            relative = path.relative_to(local_dir).as_posix()
            files[relative] = {"bytes": path.stat().st_size, "sha256": file_digest(path, hashlib.sha256())}
            self.storage.put_file(path, f"{name}/{relative}")
        return files

    def commit(self, step: int, parts: list[dict[str, dict]], meta: dict[str, Any]) -> str:
        """After every writer's upload: the manifest of all their files, then `latest`; returns the name."""
        name, files = checkpoint_name(step), {}
        for part in parts:
            if files.keys() & part.keys():
                raise CheckpointError(f"two writers uploaded {sorted(files.keys() & part.keys())} to {name}")
            files.update(part)
        manifest = {"step": step, "files": files, "meta": meta}
        self.storage.put_text(f"{name}/{MANIFEST}", json.dumps(manifest, indent=1, sort_keys=True))
        self.storage.put_text(LATEST, name)
        self._retain(name)
        return name

    def complete(self) -> list[str]:
        """Names of the checkpoints whose manifest exists, oldest first."""
        names = {key.split("/")[0] for key in self.storage.list("") if key.endswith(f"/{MANIFEST}")}
        return sorted(n for n in names if _NAME.match(n))

    def latest(self) -> Optional[str]:
        """The checkpoint `latest` names if it is complete, else the newest complete one; None if there is none."""
        named = (self.storage.get_text(LATEST) or "").strip()
        complete = self.complete()
        if named in complete:
            return named
        return complete[-1] if complete else None

    def manifest(self, name: str) -> dict[str, Any]:
        text = self.storage.get_text(f"{name}/{MANIFEST}")
        if text is None:
            raise CheckpointError(f"{self.storage.url}/{name} is not a complete checkpoint (no {MANIFEST}); "
                                  f"complete ones: {self.complete() or 'none'}")
        return json.loads(text)

    def load(self, name: str, local_dir: Path, only: str = "") -> dict[str, Any]:
        """Download checkpoint `name` into `local_dir`, verifying each file; returns its manifest. `only`: just the
        files under that folder of the checkpoint (e.g. "hf/"), written relative to it."""
        manifest = self.manifest(name)
        for relative, expected in manifest["files"].items():
            if not relative.startswith(only):
                continue
            target = Path(local_dir) / relative[len(only):]
            self.storage.get_file(f"{name}/{relative}", target)
            size, digest = target.stat().st_size, file_digest(target, hashlib.sha256())
            if (size, digest) != (expected["bytes"], expected["sha256"]):
                raise CheckpointError(f"{self.storage.url}/{name}/{relative} is corrupted: {size} bytes, sha256 "
                                      f"{digest[:12]}…, the manifest says {expected['bytes']} bytes, "
                                      f"{expected['sha256'][:12]}…")
        return manifest

    def discard_after(self, name: str) -> list[str]:
        """Delete the checkpoints newer than `name` (a run resumed from an earlier one abandons them); their names."""
        newer = [n for n in self.complete() if n > name]
        for n in newer:
            self.storage.delete_prefix(f"{n}/")
        if newer:
            self.storage.put_text(LATEST, name)
        return newer

    def clear(self) -> None:
        """Remove every checkpoint under the root (complete or not) and the `latest` pointer."""
        for name in {key.split("/")[0] for key in self.storage.list("") if _NAME.match(key.split("/")[0])}:
            self.storage.delete_prefix(f"{name}/")
        self.storage.put_text(LATEST, "")

    def _retain(self, newest: str) -> None:
        complete = self.complete()
        for old in complete[: -self.keep_last]:
            if old != newest:
                self.storage.delete_prefix(f"{old}/")
        started = {key.split("/")[0] for key in self.storage.list("") if _NAME.match(key.split("/")[0])}
        for partial in started - set(complete):
            if partial < newest:  # an upload that died before this one: never completed, never will
                self.storage.delete_prefix(f"{partial}/")
