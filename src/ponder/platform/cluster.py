"""Placement: the only place Ray actors are created (ray.remote is applied here, at the edge).

Rollout, reward and learner pools are sized independently from their own sub-configs, and the driver code does not
change with their sizes. On a 2-core machine actors take fractional `num_cpus`. On a cluster each pool's `resources`
(Ray custom resources that only its nodes advertise, e.g. {ponder_rollout: 1}) keeps its actors on its own nodes. Rollout actors and the trajectory
buffer are threaded actors: a rollout actor's engine thread keeps decoding while its other threads take weights and
new prompts; the buffer answers `put` while a `take` waits. Rollout and reward actors are restarted by Ray after a
death (`ft.max_actor_restarts`; platform/pools.py re-issues their work); learner ranks and the buffer are not.
"""

from __future__ import annotations

import os
from dataclasses import replace

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ponder.actors.buffer import TrajectoryBuffer
from ponder.actors.critic import JudgeWorker, RewardModelWorker
from ponder.actors.reward import RewardWorker
from ponder.actors.rollout import RolloutWorker
from ponder.learner.value import ValueWorker
from ponder.learner.worker import LearnerWorker
from ponder.platform.config import LearnerConfig, PonderConfig
from ponder.platform.pools import LearnerGroup
from ponder.rewards.critic import KINDS, with_defaults
from ponder.transport import TransportSpec, choose, preselect


# Quiet engines: per-request INFO lines from vLLM would bury the progress bar; warnings and errors still show.
ACTOR_ENV = {"VLLM_LOGGING_LEVEL": "WARNING", "TOKENIZERS_PARALLELISM": "false"}
PLACEMENT_TIMEOUT_S = 600  # an autoscaling cluster may take minutes to bring up the nodes


class Cluster:
    def __init__(self, cfg: PonderConfig):
        self.cfg = cfg
        joining = cfg.cluster.address is not None or "RAY_ADDRESS" in os.environ
        if not ray.is_initialized():
            ray.init(address=cfg.cluster.address, num_cpus=None if joining else cfg.cluster.num_cpus,
                     include_dashboard=False, configure_logging=False, log_to_driver=cfg.cluster.log_to_driver,
                     runtime_env={"env_vars": ACTOR_ENV})
        self.actors: list = []
        self.groups: list = []  # the learner groups' placement groups, removed at retire/shutdown
        r, lr = cfg.rollout, cfg.learner
        self.weight_sync = preselect(r.weight_sync, r.num_gpus > 0 and lr.num_gpus > 0, lr.zero_stage)

    def rollout_pool(self, model_path: str) -> list:
        c = replace(self.cfg.rollout, weight_sync=self.weight_sync)
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

    def learner_group(self, model_path: str) -> LearnerGroup:
        """The learner ranks in one placement group (`learner.placement`: pack or spread over nodes), met at rank 0's
        node address on a port free there, each with its DeepSpeed engine built; with algo.name=ppo the value model's
        ranks too, a group of their own (the `critic` section)."""
        cfg = self.cfg
        samples = cfg.trainer.prompts_per_step * cfg.rollout.samples_per_prompt
        ranks, group = self._ranks(LearnerWorker, "learner", temperature=cfg.rollout.temperature,
                                   model_path=model_path, samples_per_step=samples)
        critic = None
        if cfg.algo.name == "ppo":
            critic = LearnerGroup(*self._ranks(ValueWorker, "critic", model_path=model_path, samples_per_step=samples))
        return LearnerGroup(ranks, group, critic=critic, warmup_steps=cfg.algo.ppo.warmup_steps)

    def _ranks(self, cls, section: str, model_path: str, samples_per_step: int, **extra) -> tuple[list, object]:
        """The config `section`'s (learner, critic) ranks: actors of the DeepSpeed rank class `cls` in one placement
        group, set up as one process group; (ranks, placement group)."""
        c: LearnerConfig = getattr(self.cfg, section)
        group = self._placement_group({"CPU": c.num_cpus, "GPU": c.num_gpus, **c.resources}, c.num_ranks, c.placement,
                                      section)
        place = (lambda rank: PlacementGroupSchedulingStrategy(group, rank)) if group is not None else (lambda _: None)
        ranks = self._track([
            ray.remote(cls).options(num_cpus=c.num_cpus, num_gpus=c.num_gpus, resources=dict(c.resources),
                                    scheduling_strategy=place(rank))
            .remote(model_path, self.cfg.model.dtype, c, self.cfg.algo, rank=rank, samples_per_step=samples_per_step,
                    seed=self.cfg.seed, **extra)
            for rank in range(c.num_ranks)])
        address = ray.get(ranks[0].rendezvous_address.remote())
        ray.get([rank.setup.remote(*address) for rank in ranks])
        return ranks, group

    def connect_weight_sync(self, learners: LearnerGroup, rollouts: list, shm_dir: str) -> str:
        """Open the weight transport from where the actors landed (`transport.choose`) and return its kind;
        shared-memory versions go under `shm_dir`. Raises `TransportError` for a forced kind that cannot work there
        (shm with an engine on another node)."""
        nodes = ray.get([learners.ranks[0].node_id.remote()] + [r.node_id.remote() for r in rollouts])
        kind = choose(self.weight_sync, nodes[0], nodes[1:])
        spec = TransportSpec(kind, shm_dir=shm_dir, rollouts=tuple(rollouts),
                             tp_size=self.cfg.rollout.tensor_parallel_size)
        ray.get([rank.open_transport.remote(spec) for rank in learners.ranks])
        return kind

    def _placement_group(self, bundle: dict[str, float], count: int, placement: str, section: str):
        """`count` bundles reserved at once, packed or spread over nodes; None when a bundle asks for nothing (such
        actors fit anywhere, and Ray refuses empty bundles)."""
        bundle = {k: v for k, v in bundle.items() if v > 0}
        if not bundle:
            return None
        group = placement_group([bundle] * count, strategy=placement.upper())
        if not group.wait(timeout_seconds=PLACEMENT_TIMEOUT_S):
            remove_placement_group(group)
            raise RuntimeError(f"{count} {section} rank(s) of {bundle} each could not be placed in "
                               f"{PLACEMENT_TIMEOUT_S} s: the cluster lacks those resources (see `ray status`); lower "
                               f"{section}.num_ranks / num_cpus / num_gpus or add nodes")
        self.groups.append(group)
        return group

    def retire(self, learners: LearnerGroup) -> None:
        """Stop a learner group (and its value model's) and free its placement group (benchmarks and tests make one
        after another)."""
        for rank in learners.ranks:
            ray.kill(rank, no_restart=True)
        if learners.placement_group is not None:
            self.groups.remove(learners.placement_group)
            remove_placement_group(learners.placement_group)
        if learners.critic is not None:
            self.retire(learners.critic)

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
        for group in self.groups:
            remove_placement_group(group)
        self.groups.clear()
        ray.shutdown()

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
