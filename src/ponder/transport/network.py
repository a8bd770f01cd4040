"""Weights over the network: learner rank 0 serves each version over TCP, for engines on other nodes (no shared
filesystem needed).

The sender copies the weights file's bytes (`Blob`) once into memory it owns (the learner goes on changing its
tensors), hashes that copy, and serves it to any receiver that asks for the version, from a thread listening on its
node's address; it keeps the last `keep` versions. A receiver streams the bytes straight into a file in its own
node's shared memory (mapped, so the socket writes into the page cache: one copy), hashing each chunk as it lands,
and refuses the file unless size and checksum match the handle. What travels is checked end to end, as with the
other transports; the wire itself is trusted no further than that. A request must carry the sender's random token,
which only handles carry (they travel through Ray, which authenticates its own traffic): nothing else that reaches
the port can read the weights. Against Ray's object store (this transport's
first form) it saves the copy into the store and the one out of it: 3.3x raw TCP to 1.2x (docs/benchmarks.md, B3).
"""

from __future__ import annotations

import hmac
import mmap
import os
import secrets
import shutil
import socket
import struct
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping, Optional

import xxhash

from ponder.transport.base import WEIGHTS_FILE, Blob, WeightsIntegrityError, check, digest, node_address, \
    prune_versions, write_manifest
from ponder.types import WeightsVersion

CHUNK = 4 << 20  # bytes per recv: hashed while still in cache
TIMEOUT_S = 60.0  # a stalled connection, either side
TOKEN_BYTES = 16


class NetworkSender:
    def __init__(self, keep: int = 2, address: Optional[str] = None):
        """Serves on `address` (default: this node's, as Ray knows it), at a port free there."""
        self.keep = keep
        self.versions: OrderedDict[int, Any] = OrderedDict()  # version -> its bytes (a numpy array)
        self.lock = threading.Lock()
        address = address or node_address()[0]
        self.token = secrets.token_bytes(TOKEN_BYTES)
        self.server = socket.create_server((address, 0), backlog=64)
        self.location = (address, self.server.getsockname()[1], self.token.hex())
        threading.Thread(target=self._serve, name="weights-server", daemon=True).start()

    def publish(self, version: int, state: Optional[Mapping[str, Any]]) -> WeightsVersion:
        import numpy as np

        blob = Blob(state or {}, version)
        data, start = np.empty(blob.size, dtype=np.uint8), 0
        for part in blob.parts:  # a copy of our own: the learner's tensors change at its next step
            data[start:start + len(part)] = np.frombuffer(part, dtype=np.uint8)
            start += len(part)
        checksum = digest([data])  # of the bytes served, not of the tensors they were copied from
        with self.lock:
            self.versions[version] = data
            while len(self.versions) > self.keep:
                self.versions.popitem(last=False)
        return WeightsVersion(version, "network", self.location, checksum, blob.size, blob.tensors)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._send, args=(conn,), daemon=True).start()

    def _send(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(TIMEOUT_S)
            try:
                request = _receive_exactly(conn, TOKEN_BYTES + 8)
                if not hmac.compare_digest(request[:TOKEN_BYTES], self.token):
                    return
                (version,) = struct.unpack(">Q", request[TOKEN_BYTES:])
                with self.lock:
                    data = self.versions.get(version)
                conn.sendall(struct.pack(">Q", 0 if data is None else data.nbytes))
                if data is not None:
                    conn.sendall(memoryview(data))
            except (OSError, ConnectionError):
                pass  # the receiver went away; it will say so on its side

    def close(self) -> None:
        try:
            self.server.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked in the serving thread
        except OSError:
            pass
        self.server.close()
        with self.lock:
            self.versions.clear()


class NetworkReceiver:
    def __init__(self, keep: int = 2):
        sweep_stale()
        self.root = _PARENT / f"ponder-weights-in-{os.getpid()}"
        self.root.mkdir(exist_ok=True)
        self.keep = keep

    def fetch(self, handle: WeightsVersion) -> Path:
        address, port, token = handle.location
        where = f"weights version {handle.version} from {address}:{port}"
        directory = self.root / f"v{handle.version:08d}"
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        with socket.create_connection((address, port), timeout=TIMEOUT_S) as conn:
            conn.sendall(bytes.fromhex(token) + struct.pack(">Q", handle.version))
            (size,) = struct.unpack(">Q", _receive_exactly(conn, 8))
            if size != handle.num_bytes:
                raise WeightsIntegrityError(
                    f"{where}: the sender no longer holds it (it keeps the newest few)" if size == 0 else
                    f"{where}: {size} bytes offered, {handle.num_bytes} published; refusing to load")
            checksum = _receive_into(conn, directory / WEIGHTS_FILE, size, where)
        check(handle, checksum, where)
        write_manifest(directory, handle.version, handle.checksum)
        prune_versions(self.root, self.keep)
        return directory

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _receive_exactly(conn: socket.socket, n: int) -> bytes:
    buffer = bytearray(n)
    view, got = memoryview(buffer), 0
    while got < n:
        k = conn.recv_into(view[got:], n - got)
        if k == 0:
            raise ConnectionError(f"connection closed after {got} of {n} bytes")
        got += k
    return bytes(buffer)


def _receive_into(conn: socket.socket, path: Path, size: int, where: str) -> str:
    """`size` bytes from `conn` into a new file at `path` (mapped: the socket writes into the page cache), hashed
    chunk by chunk as they land; their XXH3-128."""
    hasher = xxhash.xxh3_128()
    with path.open("w+b") as f:
        f.truncate(size)
        if size == 0:
            return hasher.hexdigest()
        with mmap.mmap(f.fileno(), size) as mapped:
            view, got = memoryview(mapped), 0
            try:
                while got < size:
                    k = conn.recv_into(view[got:], min(CHUNK, size - got))
                    if k == 0:
                        raise WeightsIntegrityError(f"{where}: the connection closed after {got} of {size} bytes")
                    hasher.update(view[got:got + k])
                    got += k
            finally:
                view.release()
    return hasher.hexdigest()


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
