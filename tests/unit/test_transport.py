"""The bytes a CPU weight push moves: a safetensors file written from the tensors' own memory, its checksum, and the
shared-memory pair's refusals. No Ray, no engine (tests/integration/test_pipeline.py and test_multinode.py push
into real engines)."""

from dataclasses import replace

import pytest
import torch
import xxhash
from safetensors import safe_open
from safetensors.torch import load_file

from ponder.transport.base import MANIFEST_FILE, WEIGHTS_FILE, Blob, WeightsIntegrityError, file_digest
from ponder.transport.shm import ShmReceiver, ShmSender


def state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "model.embed_tokens.weight": torch.randn(17, 8, generator=g),
        "model.norm.weight": torch.randn(8, generator=g).to(torch.bfloat16),
        "lm_head.weight": torch.randn(8, 17, generator=g).t(),  # not contiguous
        "half": torch.randn(3, 5, generator=g).half(),
        "steps": torch.tensor(7, dtype=torch.int64),  # 0-d
        "mask": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 4),
    }


def test_blob_is_a_safetensors_file_with_every_tensor_and_its_checksum(tmp_path):
    tensors = state()
    blob = Blob(tensors, version=3)
    path = tmp_path / "w.safetensors"
    with path.open("wb") as f:
        for part in blob.parts:
            f.write(part)
    data = path.read_bytes()
    assert len(data) == blob.size and blob.checksum == xxhash.xxh3_128_hexdigest(data) == file_digest(path)
    loaded = load_file(str(path))
    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name
        assert blob.tensors[name] == (str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape))
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"ponder_version": "3"}
    assert Blob({**tensors, "half": tensors["half"] + 1}, 3).checksum != blob.checksum


def test_shm_push_round_trips_and_refuses_what_does_not_match(tmp_path):
    sender, receiver = ShmSender(str(tmp_path / "shm"), keep=2), ShmReceiver()
    tensors = state()
    handles = [sender.publish(version, tensors) for version in (1, 2, 3)]
    assert sorted(p.name for p in (tmp_path / "shm").iterdir()) == ["v00000002", "v00000003"]  # the newest `keep`
    directory = receiver.fetch(handles[-1])
    assert torch.equal(load_file(str(directory / WEIGHTS_FILE))["lm_head.weight"], tensors["lm_head.weight"])

    with pytest.raises(WeightsIntegrityError, match="manifest says version 3"):
        receiver.fetch(replace(handles[-1], version=4))  # a handle for a version this directory does not hold
    weights = directory / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(WeightsIntegrityError, match="does not match the published"):
        receiver.fetch(handles[-1])
    assert (directory / MANIFEST_FILE).exists()
    sender.close()
    assert not (tmp_path / "shm").exists()


def test_network_push_streams_the_published_bytes_and_refuses_anything_else(tmp_path, monkeypatch):
    """The TCP pair on loopback, without Ray: the file lands whole and verified; a version the sender no longer
    holds, a handle whose checksum is not the served bytes', and bytes corrupted on the way are each refused."""
    import socket
    import struct
    import threading

    from ponder.transport import network

    monkeypatch.setattr(network, "_PARENT", tmp_path)
    sender, receiver = network.NetworkSender(keep=2, address="127.0.0.1"), network.NetworkReceiver()
    try:
        tensors = state()
        handles = [sender.publish(version, tensors) for version in (1, 2, 3)]
        directory = receiver.fetch(handles[-1])
        loaded = load_file(str(directory / WEIGHTS_FILE))
        assert all(torch.equal(loaded[name], tensor) for name, tensor in tensors.items())
        assert file_digest(directory / WEIGHTS_FILE) == handles[-1].checksum
        tensors["half"].add_(1)  # the learner trains on: what was published is still what is served
        assert file_digest(receiver.fetch(handles[-1]) / WEIGHTS_FILE) == handles[-1].checksum

        with pytest.raises(WeightsIntegrityError, match="no longer holds it"):
            receiver.fetch(handles[0])  # keep=2: version 1 is gone
        with pytest.raises(WeightsIntegrityError, match="does not match the published"):
            receiver.fetch(replace(handles[-1], checksum="0" * 32))

        address, port, token = handles[-1].location
        with socket.create_connection((address, port)) as conn:  # without the token: nothing
            conn.sendall(bytes(16) + struct.pack(">Q", 3))
            assert conn.recv(8) == b""
        with pytest.raises(ConnectionError, match="closed after 0 of 8 bytes"):
            receiver.fetch(replace(handles[-1], location=(address, port, "00" * 16)))

        good = sender.versions[3].tobytes()  # a sender that flips one byte on the way
        bad = bytearray(good)
        bad[len(bad) // 2] ^= 0x10
        server = socket.create_server(("127.0.0.1", 0))

        def serve():
            conn, _ = server.accept()
            with conn:
                conn.recv(24)
                conn.sendall(struct.pack(">Q", len(bad)) + bytes(bad))
        threading.Thread(target=serve, daemon=True).start()
        with pytest.raises(WeightsIntegrityError, match="does not match the published"):
            receiver.fetch(replace(handles[-1], location=(*server.getsockname(), token)))
        server.close()
    finally:
        sender.close()
        receiver.close()
