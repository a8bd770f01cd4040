"""Weights over the network: through Ray's object store, for engines on other nodes than learner rank 0 (no shared
filesystem needed).

The sender puts the weights file's parts (`Blob`: the header and each tensor's bytes) in its node's object store,
one copy; each receiver's `ray.get` pulls them to its own node (Ray's object manager moves them once per node, in
parallel chunks) and reads them there without a copy. The receiver checks it
against the handle's checksum, then writes it into a per-version directory of its own node's shared memory for the
engine to reload from (a memory copy; the bytes on the wire are the ones checked). The sender keeps the last `keep`
versions alive; the driver's handle keeps the newest alive for an engine that Ray restarts elsewhere.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import deque
from pathlib import Path
from typing import Any, Mapping, Optional

from ponder.transport.base import Blob, check, digest, prune_versions, write_version
from ponder.types import WeightsVersion


class NetworkSender:
    def __init__(self, keep: int = 2):
        self.kept: deque = deque(maxlen=keep)

    def publish(self, version: int, state: Optional[Mapping[str, Any]]) -> WeightsVersion:
        import ray

        blob = Blob(state or {}, version)
        ref = ray.put(blob.parts)  # the header and one array per tensor: copied once, read in place by receivers
        self.kept.append(ref)
        return WeightsVersion(version, "network", ref, blob.checksum, blob.size, blob.tensors)

    def close(self) -> None:
        self.kept.clear()


class NetworkReceiver:
    def __init__(self, keep: int = 2):
        sweep_stale()
        self.root = _PARENT / f"ponder-weights-in-{os.getpid()}"
        self.root.mkdir(exist_ok=True)
        self.keep = keep

    def fetch(self, handle: WeightsVersion) -> Path:
        import ray

        parts = ray.get(handle.location)
        check(handle, digest(parts), f"weights version {handle.version} from the object store")
        directory = self.root / f"v{handle.version:08d}"
        shutil.rmtree(directory, ignore_errors=True)
        write_version(directory, parts, handle.version, handle.checksum)
        prune_versions(self.root, self.keep)
        return directory

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


_PARENT = Path("/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir())


def sweep_stale() -> None:
    """Remove the directories of receivers whose engine was killed before it could close (their process is gone)."""
    for stale in _PARENT.glob("ponder-weights-in-*"):
        if not _alive(int(stale.name.rsplit("-", 1)[1])):
            shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
