"""The GPU path: CUDA vLLM engine, DeepSpeed on CUDA with NCCL, and NCCL weight sync. Skipped without a CUDA device."""

from __future__ import annotations

import pytest
import ray

from ponder.actors.rollout import Sampling
from ponder.data.datasets import load_problems
from ponder.data.stream import make_requests
from ponder.platform.cluster import Cluster
from ponder.platform.config import load_config

pytestmark = [pytest.mark.gpu, pytest.mark.integration]


def test_nccl_push_reaches_the_engine_and_logprobs_match(tiny_model_dir, tmp_path):
    cfg = load_config([], ["rollout.num_gpus=0.4", "learner.num_gpus=0.4", "rollout.weight_sync=auto",
                           "rollout.gpu_memory_utilization=0.2", "rollout.max_model_len=512",
                           "trainer.prompts_per_step=4", "rollout.samples_per_prompt=4", "learner.micro_batch_size=8",
                           "cluster.num_cpus=4"])
    sampling = Sampling(4, 1.0, 1.0, 24)
    with Cluster(cfg) as cluster:
        rollout = cluster.rollout_pool(tiny_model_dir)[0]
        reward = cluster.reward_pool()[0]
        learners = cluster.learner_group(tiny_model_dir)
        assert cluster.connect_weight_sync(learners, [rollout], str(tmp_path)) == "nccl"
        problems = load_problems("embedded:arithmetic", "train", cfg.data.task)[:4]
        generated = rollout.generate.remote(make_requests(problems, "think", 0, 1), sampling)
        scored, _ = reward.score.options(num_returns=2).remote(generated)
        learners.train(scored)
        handle = learners.publish(1)
        assert ray.get(rollout.load_weights.remote(handle)) == 1
        trajectories = ray.get(rollout.generate.remote(make_requests(problems[:1], "think", 0, 2), sampling))
        assert {t.policy_version for t in trajectories} == {1}
        ours = ray.get(learners.ranks[0].forward_logprobs.remote(trajectories[0].prompt_ids, trajectories[0].response_ids))
        assert max(abs(a - b) for a, b in zip(ours, trajectories[0].logprobs)) < 1e-3  # fp32, different kernels


def test_critics_score_on_the_gpu(tiny_model_dir, tmp_path):
    """The reward model on CUDA agrees with itself on CPU; the judge's CUDA engine returns parseable scores."""
    import torch

    from ponder.actors.critic import JudgeWorker, RewardModelWorker
    from ponder.data.tiny_model import build_tiny_reward_model
    from ponder.platform.config import RolloutConfig
    from ponder.types import CriticRequest

    rm_dir = str(build_tiny_reward_model(tiny_model_dir, tmp_path / "rm"))
    on_gpu = RewardModelWorker({"path": rm_dir, "num_gpus": 1.0}, tiny_model_dir)
    on_cpu = RewardModelWorker({"path": rm_dir}, tiny_model_dir)
    assert on_gpu.model.device.type == "cuda"
    requests = [CriticRequest("1+1\n<think>\n", text, on_cpu.tokenizer(text, add_special_tokens=False)["input_ids"])
                for text in ("1+1=2\n</think>\n\\boxed{2}", "no idea")]
    gpu_values = [s.value for s in on_gpu.score(requests)]
    assert gpu_values == pytest.approx([s.value for s in on_cpu.score(requests)], abs=1e-3)
    del on_gpu
    torch.cuda.empty_cache()
    judge = JudgeWorker({"path": tiny_model_dir, "max_tokens": 24, "constrained": True, "num_gpus": 1.0},
                        tiny_model_dir, RolloutConfig(num_gpus=1.0, gpu_memory_utilization=0.2, max_model_len=512))
    try:
        assert all(s.value is not None for s in judge.score(requests))
    finally:
        judge.close()
