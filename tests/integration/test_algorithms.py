"""The learner's algorithms and memory tools on the real DeepSpeed engine (one rank, in this process; the Ray actor
wraps this same class): each algorithm takes a real step, the clip acts once updates are off-policy, and every batch
layout (token budgets, packing, gradient checkpointing) gives the update of the plain one."""

from __future__ import annotations

import math
import random
from contextlib import contextmanager
from dataclasses import replace

import pytest
import torch

from ponder.learner.value import ValueWorker
from ponder.learner.worker import LearnerWorker
from ponder.platform.config import AlgoConfig, LearnerConfig
from ponder.transport import node_address
from ponder.types import Problem, Trajectory

pytestmark = pytest.mark.integration

GROUPS, GROUP_SIZE = 4, 4


@pytest.fixture(scope="module", autouse=True)
def process_group():
    """One single-rank process group for the module's learners (DeepSpeed joins it once), gone afterwards."""
    yield
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def set_up(cls, model_dir: str, algo: AlgoConfig = AlgoConfig(), dtype: str = "float32", **cfg):
    """A one-rank DeepSpeed worker of `cls` (the policy's learner or the value model), set up in this process."""
    extra = {"temperature": 1.0} if cls is LearnerWorker else {}
    worker = cls(model_dir, dtype, LearnerConfig(**(dict(zero_stage=2, lr=1e-3, micro_batch_size=8) | cfg)), algo,
                 rank=0, samples_per_step=GROUPS * GROUP_SIZE, seed=0, **extra)
    worker.setup(*node_address())
    try:
        yield worker
    finally:
        worker.engine.destroy()
        worker.close()


def learner(model_dir: str, algo: AlgoConfig = AlgoConfig(), **cfg):
    return set_up(LearnerWorker, model_dir, algo, **cfg)


def batch(worker: LearnerWorker, seed: int = 0, groups: int = GROUPS) -> list[Trajectory]:
    """Groups of random responses of long-tailed lengths; reward 1 for the samples of even index in each group.
    Behaviour logprobs are the learner's own (on-policy)."""
    rng = random.Random(seed)
    vocab = worker.tokenizer.vocab_size
    out = []
    for g in range(groups):
        prompt = [rng.randrange(4, vocab) for _ in range(6)]
        for i in range(GROUP_SIZE):
            response = [rng.randrange(4, vocab) for _ in range(rng.choice([3, 5, 8, 30]))]
            out.append(Trajectory(g, i, Problem("q", "a"), prompt, response, "", worker.forward_logprobs(prompt, response),
                                  "stop", 0, reward=float(i % 2 == 0), correct=i % 2 == 0))
    return out


def mean_logprob(worker: LearnerWorker, samples: list[Trajectory]) -> float:
    values = [v for t in samples for v in worker.forward_logprobs(t.prompt_ids, t.response_ids)]
    return sum(values) / len(values)


@pytest.mark.parametrize("algo", [AlgoConfig(), AlgoConfig(name="rloo"), AlgoConfig(name="gspo"),
                                  AlgoConfig(name="reinforce_pp", kl_coef=0.05, kl_in_reward=True),
                                  AlgoConfig(name="grpo", kl_coef=0.05), AlgoConfig(name="grpo", off_policy="seq_mask")],
                         ids=["grpo", "rloo", "gspo", "reinforce_pp_kl_in_reward", "grpo_kl_reference",
                              "grpo_seq_mask"])
def test_each_algorithm_takes_a_real_step_towards_the_rewarded_samples(tiny_model_dir, algo):
    with learner(tiny_model_dir, algo) as worker:
        samples = batch(worker)
        good, bad = samples[0::2], samples[1::2]
        before = mean_logprob(worker, good) - mean_logprob(worker, bad)
        metrics = worker.train(samples)
        assert all(math.isfinite(v) for v in metrics.values()), metrics
        assert metrics["train/is_rejected_frac"] == 0.0  # on-policy: nothing to reject
        assert mean_logprob(worker, good) - mean_logprob(worker, bad) > before + 1e-3
        if algo.kl_coef:  # the reference model is the initial weights: no KL before the first update, some after
            assert metrics["train/kl"] == pytest.approx(0.0, abs=1e-6)
            assert worker.train(batch(worker, seed=1))["train/kl"] > 1e-6


@pytest.mark.parametrize("name", ["grpo", "gspo"])
def test_later_minibatches_and_epochs_are_off_policy_and_clipped(tiny_model_dir, name):
    """Two mini-batches holding the same groups, two epochs: the first update moves the policy, so the later ones see
    ratios away from 1 against the step's starting weights, and the clip acts (a single update never clips)."""
    algo = AlgoConfig(name=name, clip_low=0.01, clip_high=0.01, seq_clip_low=1e-3, seq_clip_high=1e-3)
    with learner(tiny_model_dir, algo, lr=1e-2, num_minibatches=2) as worker:
        first = batch(worker, groups=2)
        twice = first + [replace(t, group_id=t.group_id + 2) for t in first]
        one = worker.train(twice)
    with learner(tiny_model_dir, algo, lr=1e-2, num_minibatches=2, ppo_epochs=2) as worker:
        two = worker.train(twice)
    with learner(tiny_model_dir, algo, lr=1e-2) as worker:
        single = worker.train(twice)
    assert single["train/clip_frac"] == 0.0 and single["train/ratio_mean"] == pytest.approx(1.0)
    assert 0.0 < one["train/clip_frac"] < two["train/clip_frac"]
    assert one["train/ratio_mean"] != pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("stage", [2, 3])
def test_bf16_steps_keep_fp32_master_weights(tiny_model_dir, stage):
    """model.dtype=bfloat16: the module computes in bf16 while ZeRO's optimizer keeps and updates fp32 master
    weights (ZeRO-3: partitioned), and the step moves towards the rewarded samples."""
    with set_up(LearnerWorker, tiny_model_dir, dtype="bfloat16", zero_stage=stage) as worker:
        samples = batch(worker)
        good, bad = samples[0::2], samples[1::2]
        before = mean_logprob(worker, good) - mean_logprob(worker, bad)
        worker.train(samples)
        optimizer = worker.engine.optimizer
        masters = optimizer.fp32_partitioned_groups_flat if stage == 3 else optimizer.single_partition_of_fp32_groups
        assert {p.dtype for p in worker.engine.module.parameters()} == {torch.bfloat16}
        assert masters and {t.dtype for t in masters} == {torch.float32}
        assert mean_logprob(worker, good) - mean_logprob(worker, bad) > before + 1e-3


def updated_logprobs(model_dir: str, **cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """Logprobs of a few samples before and after one training step on the batch."""
    with learner(model_dir, **cfg) as worker:
        samples = batch(worker)
        probe = lambda: torch.tensor([v for t in samples[:6]  # noqa: E731
                                      for v in worker.forward_logprobs(t.prompt_ids, t.response_ids)])
        before = probe()
        if cfg.get("gradient_checkpointing"):  # on for real: it acts only on a module in training mode
            assert worker.engine.module.is_gradient_checkpointing and worker.engine.module.training
        worker.train(samples)
        return before, probe()


def test_packed_logprobs_equal_unpacked(tiny_model_dir):
    """The model's logprobs of sequences packed back to back in one row (position ids restarting) are those of the
    same sequences padded one per row, target by target."""
    from ponder.learner.batching import pack

    with learner(tiny_model_dir) as worker:
        samples = batch(worker)
        padded = pack(samples, torch.zeros(len(samples)), worker.tokenizer.pad_token_id)
        packed = pack(samples, torch.zeros(len(samples)), worker.tokenizer.pad_token_id, packed=True)
        a = worker._logprobs(padded, grad=False)[0][padded.response_mask != 0]
        b = worker._logprobs(packed, grad=False)[0][packed.response_mask != 0]
    assert len(a) == len(b) == sum(len(t.response_ids) for t in samples)
    assert torch.allclose(a, b, atol=1e-5), float((a - b).abs().max())


@pytest.mark.parametrize("layout", [dict(micro_batch_size=1), dict(micro_batch_tokens=120),
                                    dict(packing=True, micro_batch_tokens=150),
                                    dict(gradient_checkpointing=True)],
                         ids=["one_sequence_micro_batches", "token_budget", "packed", "gradient_checkpointing"])
def test_every_batch_layout_gives_the_same_update(tiny_model_dir, layout):
    """Micro-batches by token budget, packed rows and recomputed activations change how the step is computed, not
    the step: the weights after it equal those after the plain layout's (compared through the logprobs)."""
    before, plain = updated_logprobs(tiny_model_dir)
    _, other = updated_logprobs(tiny_model_dir, **layout)
    assert (plain - before).abs().max() > 1e-3  # the step moves these logprobs far more than the tolerance
    assert torch.allclose(plain, other, atol=2e-5), float((plain - other).abs().max())


def test_ppo_value_model_fits_the_returns_and_the_policy_follows_gae(tiny_model_dir):
    """PPO on the real parts: the value model's values cover every response token; fitted to the GAE returns step
    after step, its loss falls and it explains more of their variance; the policy's step, with GAE advantages over
    those values, moves towards the rewarded samples."""
    algo = AlgoConfig(name="ppo")
    with learner(tiny_model_dir, algo) as policy, set_up(ValueWorker, tiny_model_dir, algo, packing=True,
                                                         micro_batch_tokens=256) as critic:
        samples = batch(policy)
        values = critic.values(samples)
        assert {k: len(v) for k, v in values.items()} == {(t.group_id, t.sample_index): len(t.response_ids)
                                                          for t in samples}
        fits = [critic.train(samples, values=critic.values(samples)) for _ in range(8)]
        assert fits[-1]["critic/value_loss"] < 0.5 * fits[0]["critic/value_loss"]
        assert fits[-1]["critic/explained_variance"] > fits[0]["critic/explained_variance"] + 0.1
        good, bad = samples[0::2], samples[1::2]
        before = mean_logprob(policy, good) - mean_logprob(policy, bad)
        metrics = policy.train(samples, values=critic.values(samples))
        assert math.isfinite(metrics["train/pg_loss"]) and metrics["train/clip_frac"] == 0.0
        assert mean_logprob(policy, good) - mean_logprob(policy, bad) > before + 1e-3
        # the warm-up call trains nothing and still reports the samples
        weights = mean_logprob(policy, good)
        assert policy.train(samples, values=values, update=False)["rollout/reward_mean"] == 0.5
        assert mean_logprob(policy, good) == weights
