"""Weight sync, both halves: the learner publishes versioned, checksummed weights; rollout engines verify and load.

CPU path (here): the sender writes the full state dict as one safetensors file plus a manifest into a per-version
directory in shared memory (/dev/shm), renamed into place atomically. The receiver checks the SHA-256 of the file
against the manifest and the version it was told to expect, and only then asks vLLM to `reload_weights` from that
directory. A mismatch raises `WeightsIntegrityError` and the engine keeps serving the previous version.

GPU path: see `ponder.transport.nccl` (vLLM's NCCL weight-transfer engine) behind the same `WeightsVersion` handle.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from ponder.types import WeightsVersion

WEIGHTS_FILE, MANIFEST_FILE = "model.safetensors", "manifest.json"


class WeightsIntegrityError(RuntimeError):
    """Published weights failed verification; the engine refused them."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


class ShmWeightSender:
    """Learner side. `publish(state_dict, version)` -> a small `WeightsVersion` handle to pass to the receivers."""

    def __init__(self, root: str, keep: int = 2):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep = keep

    def publish(self, state_dict: dict, version: int) -> WeightsVersion:
        from safetensors.torch import save_file

        final = self.root / f"v{version:08d}"
        staging = self.root / f".staging-v{version:08d}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        tensors = {name: t.detach().to("cpu").contiguous() for name, t in state_dict.items()}
        save_file(tensors, str(staging / WEIGHTS_FILE), metadata={"ponder_version": str(version)})
        handle = WeightsVersion(
            version=version, path=str(final), checksum=file_sha256(staging / WEIGHTS_FILE),
            num_bytes=(staging / WEIGHTS_FILE).stat().st_size,
            tensors={n: (str(t.dtype).removeprefix("torch."), tuple(t.shape)) for n, t in tensors.items()},
        )
        (staging / MANIFEST_FILE).write_text(json.dumps({"version": version, "checksum": handle.checksum,
                                                         "tensors": handle.tensors}))
        shutil.rmtree(final, ignore_errors=True)
        os.rename(staging, final)  # atomic: a receiver never sees a half-written version
        self._prune(version)
        return handle

    def _prune(self, newest: int) -> None:
        versions = sorted(p for p in self.root.glob("v*") if p.is_dir())
        for old in versions[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def verify(handle: WeightsVersion) -> Path:
    """Receiver side: the directory to load from, once the manifest and file match the handle."""
    directory = Path(handle.path)
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    if manifest["version"] != handle.version:
        raise WeightsIntegrityError(f"{directory}: manifest says version {manifest['version']}, expected "
                                    f"{handle.version}")
    actual = file_sha256(directory / WEIGHTS_FILE)
    if actual != handle.checksum or manifest["checksum"] != handle.checksum:
        raise WeightsIntegrityError(f"{directory}: checksum {actual[:12]}… does not match the published "
                                    f"{handle.checksum[:12]}… for version {handle.version}; refusing to load")
    return directory
