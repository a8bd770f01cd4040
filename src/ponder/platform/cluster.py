"""Placement: the only place Ray actors are created (ray.remote is applied here, at the edge).

Rollout, reward and learner pools are sized independently from their own sub-configs, and the driver code does not
change with their sizes. On a 2-core machine actors take fractional `num_cpus`. On a cluster each pool's `resources`
(Ray custom resources that only its nodes advertise, e.g. {ponder_rollout: 1}) keeps its actors on its own nodes. Rollout actors and the trajectory
buffer are threaded actors: a rollout actor's engine thread keeps decoding while its other threads take weights and
new prompts; the buffer answers `put` while a `take` waits. Rollout and reward actors are restarted by Ray after a
death (`ft.max_actor_restarts`; platform/recovery.py re-issues their work); learner ranks and the buffer are not.
"""

from __future__ import annotations

import os
import socket

import ray

from ponder.actors.buffer import TrajectoryBuffer
from ponder.actors.critic import JudgeWorker, RewardModelWorker
from ponder.actors.reward import RewardWorker
from ponder.actors.rollout import RolloutWorker
from ponder.learner.worker import LearnerWorker
from ponder.platform.config import PonderConfig
from ponder.rewards.critic import KINDS, with_defaults


# Quiet engines: per-request INFO lines from vLLM would bury the progress bar; warnings and errors still show.
ACTOR_ENV = {"VLLM_LOGGING_LEVEL": "WARNING", "TOKENIZERS_PARALLELISM": "false"}


class Cluster:
    def __init__(self, cfg: PonderConfig):
        self.cfg = cfg
        joining = cfg.cluster.address is not None or "RAY_ADDRESS" in os.environ
        if not ray.is_initialized():
            ray.init(address=cfg.cluster.address, num_cpus=None if joining else cfg.cluster.num_cpus,
                     include_dashboard=False, configure_logging=False, log_to_driver=cfg.cluster.log_to_driver,
                     runtime_env={"env_vars": ACTOR_ENV})
        self.actors: list = []

    def rollout_pool(self, model_path: str) -> list:
        c = self.cfg.rollout
        cls = ray.remote(num_cpus=c.num_cpus, num_gpus=c.num_gpus, resources=dict(c.resources), max_concurrency=8,
                         max_restarts=self.cfg.ft.max_actor_restarts)(RolloutWorker)
        if c.cpu_bind is not None:  # vLLM's CPU backend pins its OpenMP threads to these cores
            cls = cls.options(runtime_env={"env_vars": {**ACTOR_ENV, "VLLM_CPU_OMP_THREADS_BIND": c.cpu_bind}})
        return self._track([cls.remote(model_path, self.cfg.model.dtype, c, self.cfg.seed + i)
                            for i in range(c.num_workers)])

    def reward_pool(self) -> list:
        c = self.cfg.reward
        critics = self.critics()
        cls = ray.remote(num_cpus=c.num_cpus, resources=dict(c.resources),
                         max_restarts=self.cfg.ft.max_actor_restarts)(RewardWorker)
        return self._track([cls.remote(c, critics) for _ in range(c.num_workers)])

    def critics(self) -> dict:
        """One actor per critic in `reward.functions` (reward model, LLM judge), shared by every reward actor. Step
        boundaries are found with the policy's tokenizer (`model.path`)."""
        handles = {}
        for spec in self.cfg.reward.functions:
            if spec.name not in KINDS:
                continue
            opts = with_defaults(spec.name, dict(spec.options))
            cls = ray.remote(num_cpus=opts["num_cpus"], num_gpus=opts["num_gpus"])(
                RewardModelWorker if spec.name == "reward_model" else JudgeWorker)
            args = (self.cfg.rollout, self.cfg.model.dtype, self.cfg.seed) if spec.name == "judge" else \
                (self.cfg.model.dtype,)
            handles[spec.name] = self._track([cls.remote(dict(spec.options), self.cfg.model.path, *args)])[0]
        return handles

    def buffer(self, max_staleness: int, dynamic_sampling: bool):
        cls = ray.remote(num_cpus=0, max_concurrency=4)(TrajectoryBuffer)
        return self._track([cls.remote(max_staleness, dynamic_sampling)])[0]

    def learner_group(self, model_path: str, weights_dir: str) -> list:
        c, t = self.cfg.learner, self.cfg.trainer
        cls = ray.remote(num_cpus=c.num_cpus, num_gpus=c.num_gpus, resources=dict(c.resources))(LearnerWorker)
        port = _free_port()
        return self._track([
            cls.remote(model_path, self.cfg.model.dtype, c, self.cfg.algo, rank=rank, master_port=port,
                       samples_per_step=t.prompts_per_step * self.cfg.rollout.samples_per_prompt,
                       temperature=self.cfg.rollout.temperature, weights_dir=weights_dir, seed=self.cfg.seed)
            for rank in range(c.num_ranks)])

    def connect_weight_sync(self, learners: list, rollouts: list) -> None:
        """GPU path: open the NCCL group between learner rank 0 and every engine (rollout.weight_sync=nccl)."""
        if self.cfg.rollout.weight_sync == "nccl":
            ray.get(learners[0].connect_rollouts.remote(rollouts, self.cfg.rollout.tensor_parallel_size,
                                                        _free_port()))

    def _track(self, handles: list) -> list:
        self.actors.extend(handles)
        return handles

    def shutdown(self) -> None:
        """Ask every actor to close (engines and verifier processes stop), kill it, then leave Ray."""
        closing = [handle.close.remote() for handle in self.actors]
        ray.wait(closing, num_returns=len(closing), timeout=10)  # a busy actor (Ctrl-C mid-step) is just killed
        for handle in self.actors:
            ray.kill(handle, no_restart=True)
        self.actors.clear()
        ray.shutdown()

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
