"""Critic scores on real models: a reward-model actor (transformers) and an LLM judge (vLLM CPU engine), whole
responses and per step, alone and through the reward actor on a local Ray cluster."""

from __future__ import annotations

import re

import pytest

from ponder.actors.critic import JudgeWorker, RewardModelWorker
from ponder.data.tiny_model import build_tiny_reward_model
from ponder.platform.config import RewardConfig, RewardSpec, RolloutConfig
from ponder.rewards.critic import score_regex
from ponder.types import CriticRequest, Problem, Trajectory

pytestmark = pytest.mark.integration

RESPONSES = ["7+5+0=12 d2 c1\n4+8+1=13 d3 c1\n</think>\n\\boxed{132}", "no steps at all", "a\n\nb\nc"]


@pytest.fixture(scope="module")
def reward_model_dir(tiny_model_dir, tmp_path_factory) -> str:
    return str(build_tiny_reward_model(tiny_model_dir, tmp_path_factory.mktemp("rm")))


def _requests(tokenizer) -> list[CriticRequest]:
    return [CriticRequest("47+85\n<think>\n", r, tokenizer(r, add_special_tokens=False)["input_ids"])
            for r in RESPONSES]


def test_reward_model_scores_a_batch_and_each_step(reward_model_dir, tiny_model_dir):
    whole = RewardModelWorker({"path": reward_model_dir, "batch_size": 2}, tiny_model_dir)
    requests = _requests(whole.tokenizer)
    scores = whole.score(requests)
    assert len(scores) == 3 and all(isinstance(s.value, float) for s in scores)
    assert len({s.value for s in scores}) == 3  # different responses, different scores
    reversed_values = [s.value for s in whole.score(requests[::-1])][::-1]  # other batches, other padding
    assert reversed_values == pytest.approx([s.value for s in scores], abs=1e-5)

    stepwise = RewardModelWorker({"path": reward_model_dir, "per_step": True}, tiny_model_dir)
    per_step = stepwise.score(requests)
    # steps end after each newline token: the char tokenizer makes the token index the character index
    assert [[end for end, _ in s.steps] for s in per_step] == [[15, 30, 39, 50], [15], [3, 5, 6]]
    for request, score in zip(requests, per_step):
        assert score.value == min(v for _, v in score.steps)
        last_end, last_value = score.steps[-1]
        assert last_end == len(request.response_ids)
        assert last_value == pytest.approx(whole.score([request])[0].value, abs=1e-5)  # the last prefix is all of it


def test_judge_scores_parse_or_are_counted_unparseable(tiny_model_dir):
    """A random tiny judge writes noise: unconstrained, its scores are unparseable (None); constrained to end in
    'Score: N', every judgement parses to N/10."""
    rollout = RolloutConfig(max_model_len=1024, kv_cache_gb=0.25)
    free = JudgeWorker({"path": tiny_model_dir, "max_tokens": 40, "temperature": 1.0}, tiny_model_dir, rollout)
    try:
        requests = _requests(free.engine.tokenizer)
        assert [s.value for s in free.score(requests)] == [None, None, None]
    finally:
        free.close()
    constrained = JudgeWorker({"path": tiny_model_dir, "max_tokens": 40, "constrained": True, "per_step": True},
                              tiny_model_dir, rollout)
    try:
        texts = constrained.judgements(requests)
        assert all(re.fullmatch(score_regex(40), t) for t in texts), texts
        scores = constrained.score(requests)
        assert all(s.value is not None and 0.0 <= s.value <= 1.0 for s in scores)
        assert [len(s.steps) for s in scores] == [4, 1, 3]
    finally:
        constrained.close()


def test_reward_actor_combines_functions_and_a_per_step_critic(reward_model_dir, tiny_model_dir):
    """Through Ray, as in training: format (a function) + reward_model (a critic actor), per step."""
    import ray

    from dataclasses import replace

    from ponder.platform.cluster import Cluster
    from ponder.platform.config import load_config

    functions = [RewardSpec("format", 0.1), RewardSpec("reward_model", 0.5, {"path": reward_model_dir,
                                                                          "per_step": True, "num_cpus": 0.1})]
    cfg = load_config([], [f"model.path={tiny_model_dir}"])
    cfg = replace(cfg, reward=RewardConfig(functions=functions, accuracy_from="format"))
    with Cluster(cfg) as cluster:
        reward = cluster.reward_pool()[0]
        tokenizer = RewardModelWorker({"path": reward_model_dir}, tiny_model_dir).tokenizer
        batch = [Trajectory(0, i, Problem("47+85", "132"), [1], tokenizer(r, add_special_tokens=False)["input_ids"], r,
                            [0.0], "stop", 0) for i, r in enumerate(RESPONSES)]
        scored, report = ray.get(reward.score.options(num_returns=2).remote(batch))
    assert [len(t.step_scores) for t in scored] == [4, 1, 3]
    for t in scored:
        rm = t.reward_terms["reward_model"]
        assert rm == pytest.approx(min(s for _, s in t.step_scores) / 0.5, abs=1e-5)  # steps carry the weight
        assert t.reward == pytest.approx(0.1 * t.reward_terms["format"] + 0.5 * rm, abs=1e-5)
    assert scored[0].reward_terms["format"] == 1.0 and report.masked == 0
