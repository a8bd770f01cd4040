"""Shared-memory weight sync: for engines on learner rank 0's node (the CPU default there).

The sender writes the weights file (from the tensors' own memory) and a manifest into a per-version directory under
a shared directory (/dev/shm), renamed into place atomically, so a receiver never sees a half-written version; the
last `keep` versions stay. The receiver checks the manifest's version and the file's checksum against the handle, and
only then lets the engine reload from that directory. Engines on another node cannot see the directory:
`transport.choose` refuses that placement.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Optional

from ponder.transport.base import MANIFEST_FILE, WEIGHTS_FILE, Blob, WeightsIntegrityError, check, file_digest, \
    prune_versions, write_version
from ponder.types import WeightsVersion


class ShmSender:
    def __init__(self, root: str, keep: int = 2):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep = keep

    def publish(self, version: int, state: Optional[Mapping[str, Any]]) -> WeightsVersion:
        blob = Blob(state or {}, version)
        final, staging = self.root / f"v{version:08d}", self.root / f".staging-v{version:08d}"
        shutil.rmtree(staging, ignore_errors=True)
        write_version(staging, blob.parts, version, blob.checksum)
        shutil.rmtree(final, ignore_errors=True)
        os.rename(staging, final)  # atomic: a receiver never sees a half-written version
        prune_versions(self.root, self.keep)
        return WeightsVersion(version, "shm", str(final), blob.checksum, blob.size, blob.tensors)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class ShmReceiver:
    def fetch(self, handle: WeightsVersion) -> Path:
        """The directory to load from, once its manifest and file match the handle."""
        directory = Path(handle.location)
        manifest = json.loads((directory / MANIFEST_FILE).read_text())
        if manifest["version"] != handle.version or manifest["checksum"] != handle.checksum:
            raise WeightsIntegrityError(f"{directory}: manifest says version {manifest['version']}, expected "
                                        f"{handle.version} with the published checksum")
        check(handle, file_digest(directory / WEIGHTS_FILE), str(directory))
        return directory

    def close(self) -> None:
        pass
