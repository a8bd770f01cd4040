"""Self-improvement loops, pure parts: STaR's selection and rationalization rules, trace filters and deduplication,
and the export → reload round trip (local formats; S3 in tests/integration/test_storage.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ponder.data.datasets import load_problems
from ponder.data.template import completion_segments
from ponder.data.traces import TraceFilter, export_rows, select, source_runs, trace_record, write_dataset
from ponder.platform.config import ConfigError, TaskConfig, load_config
from ponder.platform.star import hint_words, hinted_requests, rationalized, verified
from ponder.types import Problem, RolloutRequest, Trajectory

HINT = "{prompt} (the answer is {answer})"


def traj(group: int, text: str, correct: bool, prompt: str = "12+30", prompt_ids=(1, 2, 3), **kw) -> Trajectory:
    return Trajectory(group, 0, Problem(prompt, "42", metadata={"k": group}), list(prompt_ids), [7] * len(text),
                      text, [0.0] * len(text), "stop", 3, correct=correct, **kw)


# -- STaR -----------------------------------------------------------------------------------------------------------
def test_hinted_requests_carry_the_gold_answer_and_keep_ids_and_seeds():
    plain = RolloutRequest(5, Problem("12+30", "42"), "12+30\n<think>\n", seed=11)
    [hinted] = hinted_requests([plain], HINT, "think")
    assert hinted.prompt_text == "12+30 (the answer is 42)\n<think>\n"
    assert (hinted.group_id, hinted.seed, hinted.problem.answer) == (5, 11, "42")


def test_rationalization_never_leaks_the_hint_into_a_kept_example():
    plain = traj(0, "whatever", False, prompt_ids=(1, 2, 3))
    hinted_prompt = "12+30 (the answer is 42)"
    hinted = [replace(traj(0, "2+0=2 carry 4 \\boxed{42}", True, prompt=hinted_prompt, prompt_ids=(9, 9, 9, 9))),
              replace(traj(0, "The answer is 42 as given \\boxed{42}", True, prompt=hinted_prompt)),  # quotes it
              replace(traj(0, "\\boxed{41}", False, prompt=hinted_prompt))]  # does not verify
    kept = rationalized(hinted, {0: plain}, HINT, set())
    assert [t.response_text for t in kept] == ["2+0=2 carry 4 \\boxed{42}"]
    example = kept[0]
    assert example.prompt_ids == [1, 2, 3]  # the plain prompt's tokens, not the hinted one's
    assert example.problem == plain.problem and "answer is" not in example.problem.prompt
    assert hint_words(HINT) == ["the answer is"]


def test_verified_keeps_correct_unmasked_distinct_samples():
    seen: set = set()
    batch = [traj(0, "a", True), traj(0, "a", True), traj(0, "b", False), traj(0, "c", True, masked=True),
             traj(1, "a", True, prompt="1+1")]
    assert [(t.problem.prompt, t.response_text) for t in verified(batch, seen)] == [("12+30", "a"), ("1+1", "a")]
    assert verified([traj(0, "a", True)], seen) == []  # seen before (restart: deduplicated across iterations)


@pytest.mark.parametrize("overrides, message", [
    (["algo.name=star", "pipeline.mode=async"], "pipeline.mode=sync"),
    (["algo.name=star", "rollout.env.name=tools"], "multi-turn"),
    (["algo.name=star", "algo.replay_coef=0.1"], "GRPO's"),
    (["algo.star.hint='{prompt} hint'"], "{answer}"),
    (["algo.replay_data=x.jsonl"], "replay_coef"),
])
def test_star_config_mistakes_fail_before_anything_starts(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("{", "\\{").replace("}", "\\}")):
        load_config([], overrides)


def test_star_takes_one_sample_per_prompt():
    assert load_config([], ["algo.name=star", "rollout.samples_per_prompt=1"]).algo.name == "star"


# -- traces and exports ---------------------------------------------------------------------------------------------
def record(step: int, group: int, text: str, correct: bool, reward: float = None, tokens: int = 5, **kw) -> dict:
    t = traj(group, text, correct, reward=1.0 if reward is None and correct else (reward or 0.0),
             reward_terms={"math": float(correct)}, step_scores=[(2, 0.5)], **kw)
    t.response_ids = [7] * tokens
    return trace_record(t, step)


def test_dedup_keeps_the_best_copy_and_each_filter_leaves_out_what_it_names():
    traces = [record(1, 0, "a", True, reward=1.0), record(2, 0, "a", True, reward=1.1),  # duplicate, better later
              record(1, 0, "b", False), record(1, 1, "c", True), record(1, 1, "d", True, tokens=50),
              record(1, 2, "e", True, masked=True), record(1, 2, "f", True, turns=3)]
    chosen, left_out = select(traces, TraceFilter())
    assert [(t["response"], t["step"]) for t in chosen] == [("a", 2), ("c", 1), ("d", 1)]
    assert left_out == {"duplicate": 1, "incorrect": 1, "masked": 1, "multi_turn": 1}

    chosen, left_out = select(traces, TraceFilter(pass_rate=(0.0, 1.0)))  # group 0 at step 1: 1 of 2 right
    assert [t["response"] for t in chosen] == ["a"] and chosen[0]["pass_rate"] == 0.5
    assert left_out["pass_rate"] == 3  # step 2's group 0 (1/1), group 1 (2/2) twice
    assert [t["response"] for t in select(traces, TraceFilter(max_tokens=10))[0]] == ["a", "c"]
    assert [t["response"] for t in select(traces, TraceFilter(min_reward=1.05))[0]] == ["a"]
    with_wrong = select(traces, TraceFilter(correct_only=False))[0]
    assert "b" in [t["response"] for t in with_wrong]


@pytest.mark.parametrize("name", ["export.jsonl", "export.parquet", "export_dir"])
def test_export_reload_round_trip_preserves_every_field(tmp_path, name):
    chosen, _ = select([record(3, 0, "12+30=42 </think> \\boxed{42}", True), record(3, 1, "x", True, tokens=9)],
                       TraceFilter())
    rows = export_rows(chosen, "run123", {"dataset": "embedded:arithmetic", "dataset_sha256": "ab" * 32})
    uri = write_dataset(rows, str(tmp_path / name))
    problems = load_problems(uri, "train", TaskConfig())
    assert [(p.prompt, p.answer, p.reward, p.metadata) for p in problems] == \
        [(r["prompt"], r["answer"], r["reward"], r["metadata"]) for r in rows]
    trace = problems[0].metadata["trace"]
    assert trace["run_id"] == "run123" and trace["policy_version"] == 3 and trace["critic"] == [[2, 0.5]]
    assert trace["terms"] == {"math": 1.0} and trace["dataset_sha256"] == "ab" * 32
    assert problems[0].metadata["k"] == 0  # the problem's own metadata rides along
    assert completion_segments(problems[0]) == [("12+30=42 </think> \\boxed{42}", True)]  # SFT trains on it verbatim
    assert source_runs(problems) == ["run123"]


def test_demonstrations_pack_into_the_replay_mask_only():
    """A demonstration trains through the replay term alone: no policy-loss tokens, replay tokens = its policy's."""
    import torch

    from ponder.learner.batching import pack

    demo = traj(-1, "abcd", True, sampled_mask=[1, 0, 1, 1])
    sample = traj(0, "xy", True)
    p = pack([demo, sample], torch.zeros(2), 0, trained=[False, True], replay=[True, False])
    assert p.response_mask[0].sum() == 0 and p.response_mask[1].sum() == 2
    assert p.replay_mask[0].tolist()[2:] == [1.0, 0.0, 1.0, 1.0] and p.replay_mask[1].sum() == 0


def test_a_replay_dataset_too_small_fails_before_ray(tiny_model_dir, tmp_path):
    from ponder.platform.cli import UsageError, preflight

    data = tmp_path / "demos.jsonl"
    data.write_text('{"prompt": "1+1", "answer": "2", "solution": "1+1=2"}\n{"prompt": "2+2", "answer": "4"}\n')
    cfg = load_config([], ["algo.replay_coef=0.1", f"algo.replay_data={data}", "algo.replay_per_step=2"])
    with pytest.raises(UsageError, match="has 1 rows with a worked"):
        preflight(cfg, tiny_model_dir)
