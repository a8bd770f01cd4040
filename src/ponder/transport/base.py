"""What every weight transport shares: the sender/receiver pair it implements, the bytes it moves, and their check.

A push is `sender.publish(version, state)` on learner rank 0, which returns a small `WeightsVersion` handle; the driver
hands the handle to every engine, whose `receiver.fetch(handle)` returns the verified directory to reload from (or
None when the transport already wrote the weights into the engine, as NCCL does). Nothing outside `ponder.transport`
looks at a handle's kind: the learner, the rollout actors, the critics and recovery go through this pair only.

The CPU transports move one safetensors blob, checksummed with XXH3-128 in one pass on each side (a few GB/s, far
below the cost of the copy it guards); a mismatch raises `WeightsIntegrityError` and the engine keeps its weights.
"""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path
from typing import Any, Mapping, Optional, Protocol

import xxhash

from ponder.types import WeightsVersion

WEIGHTS_FILE, MANIFEST_FILE = "model.safetensors", "manifest.json"


class WeightsIntegrityError(RuntimeError):
    """Published weights failed verification; the engine refused them."""


class WeightSender(Protocol):
    def publish(self, version: int, state: Optional[Mapping[str, Any]]) -> WeightsVersion: ...

    def close(self) -> None: ...


class WeightReceiver(Protocol):
    def fetch(self, handle: WeightsVersion) -> Optional[Path]: ...

    def close(self) -> None: ...


def encode(state: Mapping[str, Any], version: int) -> tuple[bytes, dict[str, tuple[str, tuple[int, ...]]]]:
    """The state dict as one safetensors blob (CPU tensors), and each tensor's (dtype, shape) for the handle."""
    from safetensors.torch import save

    tensors = {name: t.detach().to("cpu").contiguous() for name, t in state.items()}
    shapes = {n: (str(t.dtype).removeprefix("torch."), tuple(t.shape)) for n, t in tensors.items()}
    return save(tensors, metadata={"ponder_version": str(version)}), shapes


def digest(data) -> str:
    """XXH3-128 of a bytes-like object."""
    return xxhash.xxh3_128_hexdigest(data)


def file_digest(path: Path, hasher=None) -> str:
    """XXH3-128 of a file (or `hasher`'s digest, e.g. hashlib.sha256()), read in 16 MB blocks."""
    hasher = hasher or xxhash.xxh3_128()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            hasher.update(block)
    return hasher.hexdigest()


def write_version(directory: Path, data, handle_version: int, checksum: str) -> None:
    """The blob and its manifest into `directory` (which the caller renames into place)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / WEIGHTS_FILE).open("wb") as f:
        f.write(data)
    (directory / MANIFEST_FILE).write_text(json.dumps({"version": handle_version, "checksum": checksum}))


def prune_versions(root: Path, keep: int) -> None:
    """Remove all but the newest `keep` per-version directories (`v00000012`, …) under `root`."""
    for old in sorted(p for p in root.glob("v*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def check(handle: WeightsVersion, actual: str, where: str) -> None:
    if actual != handle.checksum:
        raise WeightsIntegrityError(f"{where}: checksum {actual[:12]}… does not match the published "
                                    f"{handle.checksum[:12]}… for version {handle.version}; refusing to load")


def node_address() -> tuple[str, int]:
    """This node's address as Ray knows it (what other nodes reach it by), and a TCP port free on it now."""
    import ray

    address = ray.util.get_node_ip_address()
    with socket.socket() as s:
        s.bind((address, 0))
        return address, s.getsockname()[1]


def this_node() -> str:
    """The Ray node id of the calling actor's node: the transport is chosen from these."""
    import ray

    return ray.get_runtime_context().get_node_id()
