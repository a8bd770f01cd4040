"""What every weight transport shares: the sender/receiver pair it implements, the bytes it moves, and their check.

A push is `sender.publish(version, state)` on learner rank 0, which returns a small `WeightsVersion` handle; the driver
hands the handle to every engine, whose `receiver.fetch(handle)` returns the verified directory to reload from (or
None when the transport already wrote the weights into the engine, as NCCL does). Nothing outside `ponder.transport`
looks at a handle's kind: the learner, the rollout actors, the critics and recovery go through this pair only.

The CPU transports move one safetensors file's bytes (`Blob`: laid out from the tensors' own memory, never built in
one piece first), checksummed with XXH3-128 in one pass on each side (tens of GB/s, far below the copy it guards); a
mismatch raises `WeightsIntegrityError` and the engine keeps its weights.
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
import socket
import struct
from functools import cache, cached_property
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


class Blob:
    """A state dict as one safetensors file, laid out without being built: the header and each tensor's own bytes as
    views, so a transport writes them straight into their destination (one copy) and hashes them in place.

    `checksum` is the XXH3-128 of the file those parts make, taken part by part; `tensors` is each tensor's (dtype,
    shape) for the handle. The file reads back with any safetensors reader.
    """

    def __init__(self, state: Mapping[str, Any], version: int):
        import torch

        header: dict[str, Any] = {"__metadata__": {"ponder_version": str(version)}}
        views, offset = [], 0
        self.tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
        for name, tensor in state.items():
            tensor = tensor.detach().to("cpu").contiguous()
            view = tensor.reshape(-1).view(torch.uint8).numpy()  # the tensor's memory, no copy
            header[name] = {"dtype": _dtypes()[tensor.dtype], "shape": list(tensor.shape),
                            "data_offsets": [offset, offset + view.nbytes]}
            self.tensors[name] = (str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape))
            views.append(view)
            offset += view.nbytes
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
        self.parts = [struct.pack("<Q", len(text)) + text, *views]
        self.size = len(self.parts[0]) + offset

    @cached_property
    def checksum(self) -> str:
        return digest(self.parts)


@cache
def _dtypes() -> dict:  # torch's dtypes by their safetensors names
    import torch

    return {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
            torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
            torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2"}


def digest(parts) -> str:
    """XXH3-128 of the concatenation of bytes-like `parts`, hashed where they lie."""
    hasher = xxhash.xxh3_128()
    for part in parts:
        hasher.update(part)
    return hasher.hexdigest()


def file_digest(path: Path, hasher=None) -> str:
    """XXH3-128 of a file (or `hasher`'s digest, e.g. hashlib.sha256()), hashed through a read-only map: no copy."""
    hasher = hasher or xxhash.xxh3_128()
    with path.open("rb") as f:
        if os.fstat(f.fileno()).st_size:  # an empty file cannot be mapped (and adds nothing)
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                hasher.update(mapped)
    return hasher.hexdigest()


def write_version(directory: Path, parts, handle_version: int, checksum: str) -> None:
    """The weights file (the concatenation of the bytes-like `parts`) and its manifest into `directory` (which the
    caller renames into place)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / WEIGHTS_FILE).open("wb") as f:
        for part in parts:
            f.write(part)
    write_manifest(directory, handle_version, checksum)


def write_manifest(directory: Path, handle_version: int, checksum: str) -> None:
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
