"""ZeRO stages 0 to 3 on two learner ranks (Ray actors, one process group): the same step leaves the same weights
under every stage — ZeRO-3's sharded parameters gathered for the weight push included — and the published weights
are what the ranks train with."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest
import ray
from safetensors.torch import load_file

from ponder.platform.cluster import Cluster
from ponder.platform.config import load_config
from ponder.types import Problem, Trajectory

pytestmark = pytest.mark.integration


def crafted_batch(vocab: int) -> list[Trajectory]:
    """4 groups of 4 with long-tailed lengths, half of each group rewarded; behaviour logprobs are made up (the
    correction is off), so the batch is the same for every stage."""
    rng = random.Random(0)
    out = []
    for g in range(4):
        prompt = [rng.randrange(4, vocab) for _ in range(6)]
        for i in range(4):
            response = [rng.randrange(4, vocab) for _ in range(rng.choice([3, 8, 30]))]
            out.append(Trajectory(g, i, Problem("q", "a"), prompt, response, "", [-4.0] * len(response), "stop", 0,
                                  reward=float(i % 2 == 0)))
    return out


def test_zero_stages_give_the_same_step_on_two_ranks(tiny_model_dir, tmp_path):
    from ponder.transport.base import WEIGHTS_FILE

    cfg = load_config([], [f"model.path={tiny_model_dir}", "learner.num_ranks=2", "learner.num_cpus=1",
                           "learner.num_threads=1", "learner.micro_batch_size=4", "learner.lr=1e-3",
                           "trainer.prompts_per_step=4", "rollout.samples_per_prompt=4", "algo.off_policy=none",
                           "cluster.num_cpus=4"])
    weights = {}
    with Cluster(cfg) as cluster:
        samples = ray.put(crafted_batch(vocab=100))
        for stage in (0, 1, 2, 3):
            cluster.cfg = replace(cfg, learner=replace(cfg.learner, zero_stage=stage))
            group = cluster.learner_group(tiny_model_dir)
            cluster.connect_weight_sync(group, [], str(tmp_path / f"shm{stage}"))
            metrics = group.train(samples)
            assert metrics["train/loss"] == metrics["train/loss"]  # finite, not NaN
            handle = group.publish(1)  # ZeRO-3: every rank takes part in the gather, rank 0 publishes
            weights[stage] = load_file(f"{handle.location}/{WEIGHTS_FILE}")
            cluster.retire(group)
    initial = load_file(next(Path(tiny_model_dir).glob("*.safetensors")))
    moved = max(float((weights[0][k] - initial[k]).abs().max()) for k in initial)
    assert moved > 1e-4  # the step changed the weights
    for stage in (1, 2, 3):
        assert weights[stage].keys() == weights[0].keys()
        worst = max(float((weights[stage][k] - weights[0][k]).abs().max()) for k in weights[0])
        assert worst < 1e-5, f"ZeRO-{stage} differs from ZeRO-0 by {worst:.2e}"
