"""Two Ray nodes on one machine, with addresses of their own (a head on 127.0.0.2, a worker on 127.0.0.3): learner
ranks on both, the rollout engine on the node learner rank 0 is not on, weights over the network (chosen from that
placement), a checkpoint uploaded by every rank from its own node, a resume from it that trains bitwise alike, and the
loss of the worker node reported."""

from __future__ import annotations

import socket
import struct
import threading
from contextlib import contextmanager
from dataclasses import replace

import pytest
import ray

from ponder.actors.rollout import Sampling
from ponder.data.datasets import load_problems
from ponder.data.stream import make_requests
from ponder.storage.checkpoints import CheckpointTarget
from ponder.platform.cluster import Cluster
from ponder.platform.config import load_config
from ponder.platform.local_nodes import local_nodes
from ponder.platform.pools import LearnerLost
from ponder.transport.network import sweep_stale

pytestmark = pytest.mark.integration

SAMPLING = Sampling(n=4, temperature=1.0, top_p=1.0, max_tokens=24)
LOGPROB_TOLERANCE = 1e-4


@contextmanager
def corrupting_server(handle):
    """A stand-in sender on the head's address that serves the published bytes of `handle` with one byte flipped."""
    address, port, token = handle.location
    with socket.create_connection((address, port)) as conn:  # the real bytes, from the real sender
        conn.sendall(bytes.fromhex(token) + struct.pack(">Q", handle.version))
        size = struct.unpack(">Q", conn.recv(8, socket.MSG_WAITALL))[0]
        data = bytearray(conn.recv(size, socket.MSG_WAITALL))
    data[-10] ^= 0xFF
    server = socket.create_server((address, 0))

    def serve():
        conn, _ = server.accept()
        with conn:
            conn.recv(24, socket.MSG_WAITALL)
            conn.sendall(struct.pack(">Q", size) + bytes(data))
    threading.Thread(target=serve, daemon=True).start()
    try:
        yield (*server.getsockname(), token)
    finally:
        server.close()


@pytest.fixture(scope="module")
def two_nodes():
    """A head node on 127.0.0.2 and a worker node on 127.0.0.3, 3 CPUs each; this process joins as a driver."""
    with local_nodes(2) as nodes:
        yield nodes


def test_learner_ranks_on_two_nodes_and_weights_over_the_network(two_nodes, tiny_model_dir, tmp_path):
    cfg = load_config([], ["rollout.max_model_len=512", "rollout.kv_cache_gb=0.25", "trainer.prompts_per_step=4",
                           f"rollout.samples_per_prompt={SAMPLING.n}", "learner.micro_batch_size=8",
                           "learner.num_ranks=2", "learner.placement=spread", "learner.num_cpus=1",
                           "learner.num_threads=1", "rollout.num_cpus=0.5", "reward.num_cpus=0.25",
                           "learner.lr=1e-3", "algo.entropy_coef=0.01"])
    cluster = Cluster(cfg)  # joins the running cluster
    try:
        learners = cluster.learner_group(tiny_model_dir)
        rank_nodes = ray.get([rank.node_id.remote() for rank in learners.ranks])
        assert {two_nodes[n] for n in rank_nodes} == {"node_0", "node_1"}  # one rank on each node
        # the engine goes where learner rank 0 is not: only the network can reach it
        elsewhere = "node_1" if two_nodes[rank_nodes[0]] == "node_0" else "node_0"
        cluster.cfg = replace(cfg, rollout=replace(cfg.rollout, resources={elsewhere: 1.0}))
        rollout = cluster.rollout_pool(tiny_model_dir)[0]
        assert two_nodes[ray.get(rollout.node_id.remote())] == elsewhere
        reward = cluster.reward_pool()[0]
        assert cluster.connect_weight_sync(learners, [rollout], str(tmp_path / "shm")) == "network"
        assert not (tmp_path / "shm").exists()  # nothing went through a shared directory

        problems = load_problems("embedded:arithmetic", "train", cfg.data.task)[:4]

        def train_step(step: int, batch=None):
            if batch is None:
                generated = rollout.generate.remote(make_requests(problems, "think", 0, step), SAMPLING)
                batch, _ = reward.score.options(num_returns=2).remote(generated)
            return batch, learners.train(batch), learners.publish(step)

        _, _, handle = train_step(1)
        assert handle.num_bytes > 0 and ray.get(rollout.load_weights.remote(handle)) == 1
        fresh = ray.get(rollout.generate.remote(make_requests(problems[:1], "think", 0, 9), SAMPLING))
        assert {t.policy_version for t in fresh} == {1}
        ours = ray.get(learners.ranks[0].forward_logprobs.remote(fresh[0].prompt_ids, fresh[0].response_ids))
        assert max(abs(a - b) for a, b in zip(ours, fresh[0].logprobs)) < LOGPROB_TOLERANCE
        # bytes that are not the published ones (corrupted on the way) are refused; the engine keeps version 1
        with corrupting_server(handle) as location:
            with pytest.raises(ray.exceptions.RayTaskError, match="does not match the published"):
                ray.get(rollout.load_weights.remote(replace(handle, version=5, location=location)))
        assert ray.get(rollout.stats.remote())["version"] == 1

        # a checkpoint each rank uploads from its own node; training on from it twice gives the same weights
        target = CheckpointTarget(str(tmp_path / "checkpoints"))
        state = {"anything": "the caller's", "step": 1}
        uri = learners.save(target, 1, state, {}, False)
        files = target.store().manifest("step_00000001")["files"]
        assert {"rng/rank_0.pt", "rng/rank_1.pt", "driver.json"} <= files.keys()
        batch, first, after = train_step(2)
        assert learners.load(target, "step_00000001") == state
        _, again, replayed = train_step(2, batch)
        assert replayed.checksum == after.checksum  # bitwise: the same weights after the same step
        assert again["train/loss"] == first["train/loss"]
        assert uri.endswith("step_00000001")

        # the worker node is lost (its raylet and every process on it killed): the rank there is reported dead, with
        # the cause, rather than leaving the survivor waiting in a collective
        two_nodes.kill(1)
        with pytest.raises(LearnerLost, match="died"):
            train_step(3, batch)
    finally:
        cluster.shutdown()  # engines and verifier processes closed, placement groups removed, driver disconnected
        sweep_stale()  # what the engine killed with its node left in /dev/shm
