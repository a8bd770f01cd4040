"""The real parts together: a local Ray cluster, a vLLM CPU engine, a reward pool and a DeepSpeed learner."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import ray

from ponder.actors.rollout import Sampling, Thinking
from ponder.data.datasets import load_problems
from ponder.data.stream import make_requests
from ponder.data.template import chat_prompt
from ponder.data.tiny_model import build_tokenizer
from ponder.platform.cluster import Cluster
from ponder.platform.config import EnvConfig, load_config

pytestmark = pytest.mark.integration

SAMPLING = Sampling(n=4, temperature=1.0, top_p=1.0, max_tokens=24)
LOGPROB_TOLERANCE = 1e-4  # float32 on both sides; seen here: max abs difference a few 1e-6


@pytest.fixture(scope="module")
def parts(tiny_model_dir, tmp_path_factory):
    cfg = load_config([], ["rollout.max_model_len=4096", "rollout.kv_cache_gb=0.25", "trainer.prompts_per_step=4",
                           f"rollout.samples_per_prompt={SAMPLING.n}", "learner.micro_batch_size=8",
                           "learner.lr=1e-3", "cluster.num_cpus=4",
                           # random weights solve nothing, so every advantage is 0: the entropy bonus makes each
                           # update move the weights, so that "the engine serves the new weights" can fail
                           "algo.entropy_coef=0.01",
                           # a random model verifies nothing, so the replay term is 0 unless a test marks samples
                           "algo.replay_coef=1.0"])
    weights_dir = str(tmp_path_factory.mktemp("shm"))
    cluster = Cluster(cfg)
    try:
        rollout = cluster.rollout_pool(tiny_model_dir)[0]
        reward = cluster.reward_pool()[0]
        group = cluster.learner_group(tiny_model_dir)
        assert cluster.connect_weight_sync(group, [rollout], weights_dir) == "shm"  # one node: shared memory
        learner = group.ranks[0]
        problems = load_problems("embedded:arithmetic", "train", cfg.data.task)[:4]
        yield cfg, rollout, reward, learner, problems
    finally:
        cluster.shutdown()


def one_step(parts, step: int):
    cfg, rollout, reward, learner, problems = parts
    generated = rollout.generate.remote(make_requests(problems, "think", 0, step), SAMPLING)
    scored, counts = reward.score.options(num_returns=2).remote(generated)
    metrics = ray.get(learner.train.remote(scored))
    handle = ray.get(learner.publish_weights.remote(step))
    assert ray.get(rollout.load_weights.remote(handle)) == step
    return ray.get(scored), ray.get(counts).counts, metrics, handle


def push(parts, version: int) -> None:
    """The learner's current weights onto the engine (a test that compares the two starts from here)."""
    _, rollout, _, learner, _ = parts
    assert ray.get(rollout.load_weights.remote(ray.get(learner.publish_weights.remote(version)))) == version


def test_full_training_step_and_version_stamps(parts):
    trajectories, counts, metrics, handle = one_step(parts, step=1)
    assert len(trajectories) == 4 * SAMPLING.n
    assert {t.policy_version for t in trajectories} == {0}  # generated before the first push
    assert all(len(t.logprobs) == len(t.response_ids) > 0 for t in trajectories)
    assert counts.get("reward/errors", 0) == 0
    for key in ("train/loss", "train/entropy", "train/logprob_mismatch", "train/clip_frac", "grad_norm",
                "rollout/reward_mean", "rollout/accuracy", "rollout/response_len_mean"):
        assert math.isfinite(metrics[key]), key
    # freshly initialised weights: the engine's and the learner's logprobs agree before any update
    assert metrics["train/logprob_mismatch"] < LOGPROB_TOLERANCE
    assert handle.version == 1 and handle.num_bytes > 0

    cfg, rollout, *_ = parts
    later = ray.get(rollout.generate.remote(make_requests(parts[4], "think", 0, 2), SAMPLING))
    assert {t.policy_version for t in later} == {1}


def test_engine_serves_exactly_the_learner_weights_after_a_push(parts):
    """After a real update and push, vLLM's logprobs of its own samples equal the learner's forward logprobs."""
    one_step(parts, step=2)
    _, rollout, _, learner, problems = parts
    trajectories = ray.get(rollout.generate.remote(make_requests(problems[:2], "think", 0, 3), SAMPLING))
    worst = 0.0
    for t in trajectories[:4]:
        ours = ray.get(learner.forward_logprobs.remote(t.prompt_ids, t.response_ids))
        worst = max(worst, max(abs(a - b) for a, b in zip(ours, t.logprobs)))
    assert worst < LOGPROB_TOLERANCE, f"max |logprob difference| {worst:.2e}"


def test_corrupted_push_is_refused_and_old_weights_stay(parts):
    from ponder.transport.base import WEIGHTS_FILE

    _, rollout, _, learner, problems = parts
    handle = ray.get(learner.publish_weights.remote(99))
    path = Path(handle.location) / WEIGHTS_FILE
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # flip bits inside the last tensor
    path.write_bytes(bytes(data))
    with pytest.raises(ray.exceptions.RayTaskError, match="does not match the published"):
        ray.get(rollout.load_weights.remote(handle))
    after = ray.get(rollout.generate.remote(make_requests(problems[:1], "think", 0, 4), SAMPLING))
    assert {t.policy_version for t in after} == {2}  # still the last verified version


def test_long_chains_of_thought_flow_through_engine_and_learner(parts):
    """Thousands of tokens per sample: generated, stamped, scored and trained on without truncation."""
    _, rollout, reward, learner, problems = parts
    long = Sampling(n=2, temperature=1.0, top_p=1.0, max_tokens=3000, min_tokens=2500)
    generated = rollout.generate.remote(make_requests(problems[:2], "think", 0, 5), long)
    scored, _ = reward.score.options(num_returns=2).remote(generated)
    trajectories = ray.get(scored)
    assert all(len(t.response_ids) >= 2500 and len(t.logprobs) == len(t.response_ids) for t in trajectories)
    metrics = ray.get(learner.train.remote(scored))
    assert metrics["rollout/response_len_mean"] >= 2500 and math.isfinite(metrics["train/loss"])
    push(parts, 5)
    # Before min_tokens the engine samples from the EOS-suppressed distribution (its logprobs say so); past it the
    # two distributions are the same, and the engine must still agree with the learner thousands of tokens in.
    fresh = ray.get(rollout.generate.remote(make_requests(problems[:1], "think", 0, 6), long))[0]
    ours = ray.get(learner.forward_logprobs.remote(fresh.prompt_ids, fresh.response_ids))
    tail = [abs(a - b) for a, b in zip(ours[2500:], fresh.logprobs[2500:])]
    assert tail and max(tail) < LOGPROB_TOLERANCE, f"max |difference| past token 2500: {max(tail):.2e}"


def test_thinking_budget_forces_the_answer_and_keeps_logprobs_exact(parts):
    """Budget forcing on the real engine, the budget stated in the prompt: thinking stops at exactly the budget, the
    closing text and answer prefix follow as environment tokens (masked from the loss), and the policy's tokens after
    them still carry the logprobs the learner computes for them."""
    _, rollout, reward, learner, problems = parts
    push(parts, 7)
    forced = "\n</think>\n\\boxed{"
    forced_ids = build_tokenizer()(forced, add_special_tokens=False)["input_ids"]
    budgeted = Sampling(n=2, temperature=1.0, top_p=1.0, max_tokens=60, min_tokens=20, thinking=Thinking(budget=20))
    requests = make_requests(problems[:2], "think", 0, 7, budgets=[20], budget_prompt=" (think <= {budget})")
    generated = rollout.generate.remote(requests, budgeted)
    scored, _ = reward.score.options(num_returns=2).remote(generated)
    trajectories = ray.get(scored)
    for t in trajectories:
        assert build_tokenizer().decode(t.prompt_ids).endswith(" (think <= 20)\n<think>\n")  # the budget, stated
        assert t.forced_answer and t.thinking_tokens == 20
        assert t.response_ids[20 : 20 + len(forced)] == forced_ids and forced in t.response_text
        assert t.sampled_mask == [1] * 20 + [0] * len(forced) + [1] * (len(t.response_ids) - 20 - len(forced))
        assert len(t.logprobs) == len(t.token_versions) == len(t.response_ids) > 20 + len(forced)
        ours = ray.get(learner.forward_logprobs.remote(t.prompt_ids, t.response_ids))
        after = [abs(a - b) for a, b in zip(ours[20 + len(forced):], t.logprobs[20 + len(forced):])]
        assert max(after) < LOGPROB_TOLERANCE, f"max |difference| after the forced text: {max(after):.2e}"
    metrics = ray.get(learner.train.remote(scored))
    assert metrics["rollout/forced_answer_frac"] == 1.0 and metrics["rollout/thinking_tokens_mean"] == 20
    assert metrics["rollout/environment_tokens"] == len(trajectories) * len(forced)
    assert math.isfinite(metrics["train/loss"]) and metrics["train/logprob_mismatch"] < 1.0


def test_multi_turn_episodes_keep_exact_logprobs_and_train_on_policy_tokens_only(parts):
    """Self-revision episodes on the real engine after a push: the model answers, is told to check, and answers again,
    twice. The cues are environment tokens; every policy token of every turn carries the learner's own logprob and the
    version that sampled it; and the learner trains on the policy's tokens only (an environment token's behaviour
    logprob is a placeholder 0, so training on one would show in train/logprob_mismatch)."""
    _, rollout, reward, learner, problems = parts
    one_step(parts, step=8)
    cue = "\nCheck.\n"
    env = EnvConfig(name="revision", options={"critique": "self", "revisions": 2, "review": cue}, max_turns=3,
                    max_turn_tokens=8)
    episodes = Sampling(n=2, temperature=1.0, top_p=1.0, max_tokens=60, env=env)
    generated = rollout.generate.remote(make_requests(problems[:2], "think", 0, 9), episodes)
    scored, _ = reward.score.options(num_returns=2).remote(generated)
    trajectories = ray.get(scored)
    for t in trajectories:
        assert (t.turns, t.episode_end, len(t.attempts), len(t.attempts_correct)) == (3, "done", 3, 3)
        assert len(t.sampled_mask) - sum(t.sampled_mask) == 2 * len(cue) and t.response_text.count(cue) >= 2
        assert set(t.token_versions) == {8} and t.policy_version == 8
        policy = [i for i, s in enumerate(t.sampled_mask) if s]
        assert policy[0] == 0 and len(policy) >= 3  # at least one token a turn
        ours = ray.get(learner.forward_logprobs.remote(t.prompt_ids, t.response_ids))
        worst = max(abs(ours[i] - t.logprobs[i]) for i in policy)
        assert worst < LOGPROB_TOLERANCE, f"max |logprob difference| on policy tokens across turns: {worst:.2e}"
    metrics = ray.get(learner.train.remote(scored))
    assert metrics["episode/turns_mean"] == 3 and metrics["episode/end_done"] == 1.0
    assert metrics["rollout/environment_tokens"] == len(trajectories) * 2 * len(cue)
    assert metrics["train/logprob_mismatch"] < LOGPROB_TOLERANCE


def test_chat_template_episodes_on_the_real_engine(parts):
    """`data.template=chat`: the engine renders the prompt with the model's own chat template (the tiny tokenizer
    carries a ChatML one) and each observation as a message of that template; policy logprobs stay exact."""
    _, rollout, _, learner, problems = parts
    push(parts, 10)
    tokenizer = build_tokenizer()
    env = EnvConfig(name="revision", options={"critique": "self", "revisions": 1, "review": "Check."},
                    max_turns=2, max_turn_tokens=6)
    generated = ray.get(rollout.generate.remote(make_requests(problems[:1], "chat", 0, 10),
                                                Sampling(n=2, temperature=1.0, top_p=1.0, max_tokens=60, env=env)))
    for t in generated:
        assert tokenizer.decode(t.prompt_ids) == chat_prompt(tokenizer, problems[0].prompt)
        environment = tokenizer.decode([i for i, s in zip(t.response_ids, t.sampled_mask) if not s])
        assert environment.endswith("<|im_start|>user\nCheck.<|endoftext|>\n<|im_start|>assistant\n")
        ours = ray.get(learner.forward_logprobs.remote(t.prompt_ids, t.response_ids))
        worst = max(abs(a - b) for a, b, s in zip(ours, t.logprobs, t.sampled_mask) if s)
        assert worst < LOGPROB_TOLERANCE and t.turns == 2


def mean_logprob(learner, trajectories) -> float:
    values = [v for t in trajectories for v in ray.get(learner.forward_logprobs.remote(t.prompt_ids, t.response_ids))]
    return sum(values) / len(values)


def test_replay_of_verified_successes_trains_on_them(parts):
    """With algo.replay_coef, samples marked correct are also demonstrations: a supervised term with its own metric,
    and their likelihood goes up (every reward is equal here, so GRPO alone would leave them nearly alone)."""
    from dataclasses import replace

    _, rollout, _, learner, problems = parts
    samples = ray.get(rollout.generate.remote(make_requests(problems, "think", 0, 20), SAMPLING))
    successes = [replace(t, correct=True, reward=1.0) for t in samples]
    before = mean_logprob(learner, successes[:4])
    metrics = ray.get(learner.train.remote(ray.put(successes)))
    assert metrics["train/replay_loss"] > 0 and math.isfinite(metrics["train/pg_loss"])
    assert mean_logprob(learner, successes[:4]) > before + 0.01


def test_replay_of_a_dataset_of_worked_solutions_alongside_the_grpo_step(parts):
    """algo.replay_data: demonstrations (worked solutions) ride along a GRPO step with the replay term only; their
    likelihood rises, the step's policy metrics stay those of the samples, and later steps train as before."""
    from ponder.data.tiny_model import build_tokenizer
    from ponder.learner.sft import encode_example, render_example

    _, rollout, _, learner, problems = parts
    demos = load_problems("embedded:arithmetic", "train", load_config([], []).data.task)[100:108]
    tokenizer = build_tokenizer()
    encoded = [encode_example(tokenizer, *render_example(tokenizer, p, "think")) for p in demos[:3]]

    def demo_logprob() -> float:
        values = [v for prompt, ids, _ in encoded for v in ray.get(learner.forward_logprobs.remote(prompt, ids))]
        return sum(values) / len(values)

    before = demo_logprob()
    samples = ray.get(rollout.generate.remote(make_requests(problems, "think", 0, 23), SAMPLING))
    metrics = ray.get(learner.train.remote(ray.put(samples), demos=("think", demos)))
    assert metrics["train/replay_data_loss"] > 0 and math.isfinite(metrics["train/clip_frac"])
    assert demo_logprob() > before + 0.05
    later = ray.get(learner.train.remote(ray.put(samples)))  # DeepSpeed counts its own boundaries again
    assert "train/replay_data_loss" not in later and math.isfinite(later["train/loss"])


def test_supervised_training_on_kept_examples_and_reset_to_the_initial_model(parts, tiny_model_dir):
    """STaR's learner calls: `train_supervised` raises the likelihood of its examples; `reset` goes back to the
    initial weights exactly (the learner's logprobs equal a fresh load of the initial model's)."""
    import torch
    from transformers import AutoModelForCausalLM

    _, rollout, _, learner, problems = parts
    examples = ray.get(rollout.generate.remote(make_requests(problems, "think", 0, 21), SAMPLING))
    before = mean_logprob(learner, examples[:4])
    metrics = ray.get(learner.train_supervised.remote(ray.put(examples), epochs=2, seed=0))
    assert metrics["train/sft_steps"] == 2 and metrics["train/sft_loss"] > 0  # 16 examples, mini-batches of 16
    assert mean_logprob(learner, examples[:4]) > before + 0.05

    ray.get(learner.reset.remote())
    t = examples[0]
    ours = torch.tensor(ray.get(learner.forward_logprobs.remote(t.prompt_ids, t.response_ids)))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        logits = model(torch.tensor([t.prompt_ids + t.response_ids])).logits[0, :-1].float()
    initial = torch.log_softmax(logits, -1)[len(t.prompt_ids) - 1 :].gather(
        -1, torch.tensor(t.response_ids).unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(ours, initial, atol=LOGPROB_TOLERANCE), float((ours - initial).abs().max())
    handle = ray.get(learner.publish_weights.remote(22))  # the rebuilt engine publishes as before
    assert ray.get(rollout.load_weights.remote(handle)) == 22
