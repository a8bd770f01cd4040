"""B3, network half: a weight push to another node (learner rank 0 serving it over TCP), against a raw TCP transfer
of the same bytes on the same link.

Two Ray nodes on this machine with their own loopback addresses (127.0.0.2 and 127.0.0.3, `ponder.platform.
local_nodes`); an actor on each. One push = `NetworkSender.publish` on the first node (the safetensors file's bytes
copied once into the sender's memory, XXH3-128) then `NetworkReceiver.fetch` on the second (streamed over TCP into a
file in its /dev/shm for the engine's reload, XXH3-128 of each chunk as it lands) — everything up to the engine's reload, which costs the same for every transport (B3's shared-memory
table has it). The baseline: the same number of bytes sent over one TCP connection between the two addresses
(`sendall` from a prepared buffer into `recv_into` a preallocated one), nothing else. Both are timed from the driver
around the same two actor calls; one untimed warm-up each, then `--repeats` interleaved pairs; medians. Usage:

    .venv/bin/python benchmarks/weight_push_network.py [--repeats 5] [--sizes tiny,large]
"""

from __future__ import annotations

import socket
import statistics
import tempfile
import time

import ray
import torch
from weight_push import SIZES, parse_args  # this script's directory; the actors below use none of it

from ponder.data.tiny_model import build_tiny_model
from ponder.platform.config import TinyModelConfig
from ponder.platform.local_nodes import local_nodes
from ponder.transport.network import NetworkReceiver, NetworkSender


class Side:
    """One end: the learner's sender and state dict, or the engine's receiver; and a raw socket either way."""

    def __init__(self, model_dir: str | None):
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(1)
        self.state = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).state_dict() \
            if model_dir else None
        self.sender, self.receiver = NetworkSender(), NetworkReceiver()
        self.listener: socket.socket | None = None

    def publish(self, version: int):
        handle = self.sender.publish(version, self.state)
        self.blob = bytes(handle.num_bytes)  # the raw baseline sends as many bytes
        return handle

    def fetch(self, handle) -> int:
        return len(self.receiver.fetch(handle).name)

    def listen(self) -> tuple[str, int]:
        self.listener = socket.create_server((ray.util.get_node_ip_address(), 0))
        return self.listener.getsockname()[:2]

    def receive(self, num_bytes: int) -> int:
        conn, _ = self.listener.accept()
        buffer, got = bytearray(num_bytes), 0
        view = memoryview(buffer)
        with conn:
            while got < num_bytes:
                got += conn.recv_into(view[got:])
        return got

    def send(self, address: tuple[str, int]) -> None:
        with socket.create_connection(address) as conn:
            conn.sendall(self.blob)

    def close(self) -> None:
        self.sender.close()
        self.receiver.close()


def bench_size(name: str, repeats: int, tmp: str, nodes: dict) -> dict[str, float]:
    model = str(build_tiny_model(TinyModelConfig(out_dir=f"{tmp}/{name}", **SIZES[name])))
    side = ray.remote(num_cpus=0)(Side)
    learner = side.options(resources={"node_0": 1}).remote(model)
    engine = side.options(resources={"node_1": 1}).remote(None)
    push_times, publish_times, raw_times, size = [], [], [], 0
    for version in range(repeats + 1):
        started = time.perf_counter()
        handle = ray.get(learner.publish.remote(version))
        publish = time.perf_counter() - started
        ray.get(engine.fetch.remote(handle))
        push = time.perf_counter() - started
        address = ray.get(engine.listen.remote())
        started = time.perf_counter()
        got = ray.get([engine.receive.remote(handle.num_bytes), learner.send.remote(address)])[0]
        raw = time.perf_counter() - started
        assert got == handle.num_bytes
        size = handle.num_bytes
        if version:  # the first pair warms both paths
            push_times.append(push)
            publish_times.append(publish)
            raw_times.append(raw)
            print(f"  {name} rep {version}: push {push * 1e3:.1f} ms (publish {publish * 1e3:.1f}), raw TCP "
                  f"{raw * 1e3:.1f} ms", flush=True)
    ray.get([learner.close.remote(), engine.close.remote()])
    for actor in (learner, engine):
        ray.kill(actor)
    return {"bytes": size, "push": statistics.median(push_times), "publish": statistics.median(publish_times),
            "raw": statistics.median(raw_times)}


def main() -> None:
    args = parse_args(__doc__)
    results = {}
    with tempfile.TemporaryDirectory() as tmp, local_nodes(2) as nodes:
        for name in args.sizes.split(","):
            results[name] = bench_size(name, args.repeats, tmp, nodes)
    print(f"\nB3 (network) — push to another node over TCP vs raw TCP of the same bytes, medians of "
          f"{args.repeats}\n")
    print("| model | MB | push (ms) | of which publish | of which fetch | raw TCP (ms) | push / raw |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['bytes'] / 1e6:.1f} | {r['push'] * 1e3:.1f} | {r['publish'] * 1e3:.1f} | "
              f"{(r['push'] - r['publish']) * 1e3:.1f} | {r['raw'] * 1e3:.1f} | {r['push'] / r['raw']:.2f}x |")


if __name__ == "__main__":
    main()
