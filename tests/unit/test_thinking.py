"""Thinking budgets and length control, as pure logic: the search task, budget forcing's segment rules (on the real
embedded tokenizer, without an engine), per-prompt budgets, masking of environment tokens, and length shaping."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from ponder.actors.rollout import RolloutWorker, Sampling, Thinking
from ponder.actors.samples import Group as _Group, Sample as _Sample
from ponder.data.datasets import load_problems
from ponder.data.stream import make_requests
from ponder.data.tasks import SearchTask, digit_sum_line, generate_search_problems
from ponder.data.template import THINK_CLOSE, render_completion
from ponder.data.tiny_model import build_tokenizer
from ponder.learner.advantages import length_shaping
from ponder.learner.batching import pack
from ponder.platform.config import AlgoConfig, ConfigError, TaskConfig, load_config
from ponder.rewards.format import format_reward
from ponder.rewards.math import math_reward
from ponder.types import Problem, RolloutRequest, Trajectory


def test_search_problems_are_right_disjoint_and_long_tailed():
    task = TaskConfig(num_train=3000, num_eval=200)
    train, held = load_problems("embedded:search", "train", task), load_problems("embedded:search", "eval", task)
    assert len(train) == 3000 and len(held) == 200 and not {p.prompt for p in train} & {p.prompt for p in held}
    for p in train[:500]:
        start, target = int(p.prompt.split(">=")[1].split()[0]), int(p.prompt.split()[-1])
        first = next(n for n in range(start, 10_000) if sum(map(int, str(n))) == target)
        assert p.answer == str(first)
        assert p.solution.splitlines()[-1].endswith(" yes") and p.solution.count("yes") == 1
        completion = render_completion(p.solution, p.answer)
        assert math_reward(completion, p) == 1.0 and format_reward(completion, p) == 1.0
    lengths = sorted(len(render_completion(p.solution, p.answer)) for p in train)  # one token per character
    median, p90 = statistics.median(lengths), lengths[int(0.9 * len(lengths))]
    assert p90 >= 3 * median and lengths[-1] >= 1000


def test_search_line_counts_down_to_zero():
    assert digit_sum_line(907, 16) == "907 16-9=7-0=7-7=0 yes"
    assert digit_sum_line(100, 2) == "100 2-1=1-0=1-0=1 no"


def test_too_many_search_problems_is_a_clear_error():
    with pytest.raises(ValueError, match="widen it"):
        generate_search_problems(50, 0, SearchTask(min_start=100, max_start=102, max_steps=2))


def test_budgets_are_drawn_per_prompt_from_the_seed():
    problems = [Problem(f"q{i}", "1") for i in range(64)]
    requests = make_requests(problems, "think", 7, step=3, budgets=[16, 64, 256])
    drawn = [r.thinking_budget for r in requests]
    assert set(drawn) == {16, 64, 256}
    assert drawn == [r.thinking_budget for r in make_requests(problems, "think", 7, step=3, budgets=[16, 64, 256])]
    assert {r.thinking_budget for r in make_requests(problems, "think", 7, 3, budgets=[32])} == {None}  # fixed


def test_a_stated_budget_is_each_prompts_own():
    problems = [Problem(f"q{i}", "1") for i in range(16)]
    stated = make_requests(problems, "think", 7, step=3, budgets=[16, 64], budget_prompt=" (think <= {budget})")
    assert {r.prompt_text for r in stated} == {f"q{i} (think <= {r.thinking_budget})\n<think>\n"
                                               for i, r in enumerate(stated)}
    fixed = make_requests(problems[:1], "think", 7, 3, budgets=[32], budget_prompt=" (think <= {budget})")
    assert fixed[0].prompt_text == "q0 (think <= 32)\n<think>\n"
    assert make_requests(problems[:1], "think", 7, 3, budget_prompt=" ({budget})")[0].prompt_text == "q0\n<think>\n"


def test_budget_config_is_checked():
    with pytest.raises(ConfigError, match="thinking_budget"):
        load_config([], ["rollout.max_tokens=100", "rollout.thinking_budget=[50,100]"])
    with pytest.raises(ConfigError, match="overlong_buffer"):
        load_config([], ["rollout.max_tokens=100", "algo.overlong_buffer=100"])
    with pytest.raises(ConfigError, match="budget_prompt.*no other"):
        load_config([], ["rollout.thinking_budget=[32]", "rollout.budget_prompt=' (think <= {tokens})'"])
    with pytest.raises(ConfigError, match="budget_prompt states a thinking budget, but none is set"):
        load_config([], ["rollout.budget_prompt=' ({budget})'"])
    with pytest.raises(ConfigError, match="budget_penalty"):
        load_config([], ["algo.budget_penalty=0.5"])
    cfg = load_config([], ["rollout.thinking_budget=[32]", "rollout.thinking_extend=2"])
    assert Thinking.of(cfg.rollout) == Thinking(budget=32, extend=2)
    assert Thinking.of(load_config([], []).rollout) is None


class _Segments:
    """Drives RolloutWorker's segment rules without an engine: the real embedded tokenizer, text in, text out."""

    def __init__(self, thinking: Thinking, max_tokens: int = 200, budget: int | None = None):
        self.worker = object.__new__(RolloutWorker)
        self.worker.tokenizer, self.worker.version = build_tokenizer(), 3
        request = RolloutRequest(0, Problem("q", "1"), "q\n<think>\n", seed=1, thinking_budget=budget)
        self.group = _Group(request, Sampling(1, 1.0, 1.0, max_tokens, thinking=thinking), [1], [_Sample(thinking=True)],
                            1, lambda _: None)
        self.sample = self.group.samples[0]

    def generated(self, text: str, reason: str, closed: bool = False) -> bool:
        """The engine finished a segment with `text`: returns whether the sample goes on."""
        ids = self.worker._ids_of(text)
        self.sample.segment_start = len(self.sample.token_ids)
        self.sample.append(ids, [-0.5] * len(ids), [2] * len(ids), sampled=1)
        self.sample.finish_reason = reason
        return self.worker._next_segment(self.group, self.sample, closed)

    @property
    def text(self) -> str:
        return self.worker.tokenizer.decode(self.sample.token_ids)


def test_budget_reached_closes_thinking_and_forces_the_answer():
    run = _Segments(Thinking(budget=10))
    assert run.generated("0123456789", "length")  # the budget ran out: goes on to answer
    forced = "\n</think>\n\\boxed{"
    assert run.text == "0123456789" + forced and run.sample.forced and run.sample.thinking_tokens == 10
    assert run.sample.sampled == [1] * 10 + [0] * len(forced)
    assert run.sample.logprobs[10:] == [0.0] * len(forced) and run.sample.versions[10:] == [3] * len(forced)
    assert not run.generated("42}", "stop")  # the answer: finished
    assert run.text.endswith("\\boxed{42}") and math_reward(run.text, Problem("q", "42")) == 1.0


def test_a_request_budget_overrides_and_no_room_to_answer_ends_truncated():
    run = _Segments(Thinking(budget=500), max_tokens=20, budget=12)
    assert run.group.budget == 12
    # 12 thinking tokens + 16 forced would pass the 20-token cap: no forcing, the sample ends truncated
    assert not run.generated("x" * 12, "length") and not run.sample.forced and 0 not in run.sample.sampled


def test_a_model_that_closes_thinking_itself_is_not_forced():
    run = _Segments(Thinking(budget=100))
    assert run.generated("3+4=7\n" + THINK_CLOSE, "stop", closed=True)  # goes on to the answer segment
    assert run.sample.thinking_tokens == len("3+4=7\n") and not run.sample.forced and 0 not in run.sample.sampled
    assert not run.generated("\n\\boxed{7}", "stop")


def test_extension_replaces_an_early_close_with_the_cue():
    run = _Segments(Thinking(budget=None, extend=1, cue="Wait"))
    assert run.generated("a=1\n" + THINK_CLOSE, "stop", closed=True)
    assert run.text == "a=1\nWait" and run.sample.sampled == [1] * 4 + [0] * 4 and run.sample.extensions == 1
    assert run.generated(", a=2\n" + THINK_CLOSE, "stop", closed=True)  # the second close stands
    assert run.text == "a=1\nWait, a=2\n" + THINK_CLOSE and run.sample.thinking_tokens == len("a=1\nWait, a=2\n")


def test_environment_tokens_and_filtered_samples_leave_the_loss():
    problem = Problem("q", "a")
    forced = Trajectory(0, 0, problem, [5, 6], [7, 8, 9, 10], "", [-1.0] * 4, "stop", 0, sampled_mask=[1, 0, 0, 1])
    plain = Trajectory(0, 1, problem, [5, 6], [7, 8], "", [-1.0] * 2, "length", 0)
    packed = pack([forced, plain], torch.tensor([1.0, -1.0]), pad_id=0)
    assert packed.response_mask.tolist() == [[0, 1, 0, 0, 1], [0, 1, 1, 0, 0]]
    packed = pack([forced, plain], torch.tensor([1.0, -1.0]), pad_id=0, trained=[True, False])
    assert packed.response_mask.tolist() == [[0, 1, 0, 0, 1], [0, 0, 0, 0, 0]]


def test_length_shaping_by_hand():
    lengths, caps = torch.tensor([10.0, 80.0, 90.0, 100.0]), torch.tensor([100.0] * 4)
    # buffer 20: no penalty up to 80 tokens, then linear to -0.5 at the cap; length penalty 0.2 x length / cap
    forced = torch.tensor([0.0, 1.0, 0.0, 0.0])
    shaped = length_shaping(lengths, caps, forced, AlgoConfig(overlong_buffer=20, overlong_penalty=0.5,
                                                              length_penalty=0.2, budget_penalty=0.3))
    # budget penalty 0.3 on the one sample whose answer was forced
    assert shaped.tolist() == pytest.approx([-0.02, -0.16 - 0.3, -0.18 - 0.25, -0.2 - 0.5])
    assert length_shaping(lengths, caps, forced, AlgoConfig()).tolist() == [0.0] * 4
    assert not any(math.isnan(x) for x in shaped.tolist())


def test_learner_applies_length_control_before_group_advantages():
    from ponder.learner.advantages import grpo_advantages
    from ponder.learner.worker import LearnerWorker

    def traj(i: int, reward: float, length: int, reason: str = "stop") -> Trajectory:
        return Trajectory(0, i, Problem("q", "a"), [1], [2] * length, "", [0.0] * length, reason, 0, reward=reward,
                          max_tokens=100)

    batch = [traj(0, 1.0, 50), traj(1, 0.0, 95), traj(2, 1.0, 100, "length"), traj(3, 0.0, 20)]
    learner = object.__new__(LearnerWorker)
    learner.algo = AlgoConfig(overlong_filter=True)
    advantages, _, trained = learner._advantages(batch)
    assert trained == [True, True, False, True] and advantages[2] == 0.0
    assert advantages[[0, 1, 3]].tolist() == pytest.approx(grpo_advantages(torch.tensor([1.0, 0.0, 0.0]),
                                                                           torch.tensor([0, 0, 0])).tolist())
    learner.algo = AlgoConfig(overlong_buffer=10, overlong_penalty=1.0)  # 95 tokens: -0.5; 100: -1
    advantages, _, trained = learner._advantages(batch)
    assert all(trained)
    shaped = torch.tensor([1.0, -0.5, 0.0, 0.0])
    assert advantages.tolist() == pytest.approx(grpo_advantages(shaped, torch.tensor([0, 0, 0, 0])).tolist())
    batch[0].forced_answer = True  # right, but only because the answer was forced at the budget
    learner.algo = AlgoConfig(budget_penalty=0.25)
    advantages, _, _ = learner._advantages(batch)
    shaped = torch.tensor([0.75, 0.0, 1.0, 0.0])
    assert advantages.tolist() == pytest.approx(grpo_advantages(shaped, torch.tensor([0, 0, 0, 0])).tolist())
