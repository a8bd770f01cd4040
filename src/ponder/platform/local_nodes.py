"""Several Ray nodes on one machine, each with its own loopback address (127.0.0.2, 127.0.0.3, …): what the multi-node
tests and the network weight-push benchmark run on. Traffic between the nodes never leaves the machine, but it goes
through each node's own raylet, object store and TCP endpoints, as between machines.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class LocalNodes(dict):
    """{Ray node id: "node_<i>"} of the running nodes, and `kill(i)`: node i's raylet and everything on it die at once,
    as when a machine is lost. `join()` connects this process to them again as a driver (after a `ray.shutdown()`)."""

    def __init__(self, names: dict[str, str], procs: list[subprocess.Popen], gcs: str):
        super().__init__(names)
        self.procs, self.gcs = procs, gcs

    def join(self) -> None:
        import ray

        from ponder.platform.cluster import ACTOR_ENV

        ray.init(address=self.gcs, _node_ip_address=self.gcs.rsplit(":", 1)[0], configure_logging=False,
                 log_to_driver=False, runtime_env={"env_vars": ACTOR_ENV})

    def kill(self, index: int) -> None:
        _kill_tree(self.procs[index])


@contextmanager
def local_nodes(count: int = 2, cpus: int = 3, first: int = 2) -> Iterator[LocalNodes]:
    """Start `count` nodes (a head on 127.0.0.`first`, workers on the next addresses), each advertising `cpus` CPUs
    and a custom resource `node_<i>` (100 units) that pins an actor to it; join this process to them as a driver.
    Stops every node on exit."""
    import ray

    addresses = [f"127.0.0.{first + i}" for i in range(count)]
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's Unix socket paths must fit 107 bytes
    # Authentication as Ray's own local `ray.init()` sets it up (these are the calls it makes): token mode for this
    # process and its children unless RAY_AUTH_MODE says otherwise, the process's cached config refreshed, and a token
    # in ~/.ray/auth_token made if there is none. The nodes and this driver then agree.
    from ray._private.authentication.authentication_token_setup import (enable_token_auth_by_default,
                                                                          ensure_token_if_auth_enabled)

    enable_token_auth_by_default()
    ensure_token_if_auth_enabled({}, create_token_if_missing=True)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with socket.socket() as s:
        s.bind((addresses[0], 0))
        gcs = s.getsockname()[1]
    procs = []
    try:
        for i, address in enumerate(addresses):
            role = ["--head", f"--port={gcs}", "--include-dashboard=false"] if i == 0 else \
                [f"--address={addresses[0]}:{gcs}"]
            procs.append(subprocess.Popen(
                [str(Path(sys.executable).parent / "ray"), "start", "--block", "--disable-usage-stats", *role,
                 f"--node-ip-address={address}", f"--num-cpus={cpus}", f"--resources={{\"node_{i}\": 100}}",
                 f"--temp-dir={temp_dir}"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
            if i == 0:
                _wait_for_port(addresses[0], gcs, procs[0])
        nodes = LocalNodes({}, procs, f"{addresses[0]}:{gcs}")
        nodes.join()
        deadline = time.monotonic() + 120
        while len(alive := [n for n in ray.nodes() if n["Alive"]]) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(alive)} of {count} local Ray nodes came up")
            time.sleep(1)
        nodes.update({n["NodeID"]: next(k for k in n["Resources"] if k.startswith("node_")) for n in alive})
        yield nodes
    finally:
        ray.shutdown()
        for proc in reversed(procs):  # throwaway nodes: no graceful stop (it takes Ray ~30 s)
            _kill_tree(proc)
            proc.wait(timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _kill_tree(proc: subprocess.Popen) -> None:
    """`ray start` and everything under it: GCS, raylet, object store, and the workers the raylet started (which
    leave its process group)."""
    import psutil

    try:
        root = psutil.Process(proc.pid)
        family = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:  # already gone (killed on purpose)
        return
    for member in family:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass


def _wait_for_port(host: str, port: int, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Ray head on {host}:{port} did not come up") from None
            time.sleep(0.5)
