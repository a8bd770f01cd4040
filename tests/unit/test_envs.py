"""Multi-turn episodes as pure logic: the tool and self-revision environments, the registry and config checks, the
rollout actor's episode rules (on the real embedded tokenizer, without an engine), scoring of an episode's answers,
worked episodes for SFT, and the exactness of the loss mask over environment tokens."""

from __future__ import annotations

import queue
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
import torch

from ponder.actors.episodes import EnvironmentSteps
from ponder.actors.reward import RewardWorker
from ponder.actors.rollout import RolloutWorker, Sampling
from ponder.actors.samples import Group, Sample
from ponder.data.datasets import load_problems
from ponder.data.template import completion_segments, render_prompt
from ponder.data.tiny_model import build_tokenizer
from ponder.envs.base import Reply
from ponder.envs.registry import check_options, make
from ponder.envs.revision import RevisionEnv
from ponder.envs.stats import episode_stats
from ponder.envs.tools import ToolEnv, calculate, parse_call
from ponder.learner.batching import pack
from ponder.learner.losses import policy_loss, token_logprobs
from ponder.learner.sft import _batch
from ponder.platform.cli import UsageError, preflight
from ponder.platform.config import AlgoConfig, ConfigError, EnvConfig, RewardConfig, RewardSpec, TaskConfig, load_config
from ponder.types import Problem, RolloutRequest, Trajectory


class Exploding:
    stop: tuple[str, ...] = ()

    def start(self, problem):
        return None

    def step(self, state, turn):
        raise RuntimeError("the environment broke")

    def close(self):
        pass


class Sleepy(Exploding):
    def step(self, state, turn):
        time.sleep(1.0)
        return Reply("late")


# -- the environments ---------------------------------------------------------------------------------------------
def test_tool_calls_parse_at_the_end_of_a_turn_only():
    assert parse_call("so <calc>1+2</calc>") == ("calc", "1+2")
    assert parse_call("<calc>1</calc> then <python>print(2)</python>\n") == ("python", "print(2)")
    assert parse_call("<calc>1+2</calc> and more text") is None  # a call must end the turn
    assert parse_call("<python>print(1)</python>", tools=("calc",)) is None  # not offered
    assert parse_call("<calc>1+<calc>2+3</calc>") == ("calc", "2+3")  # the last opener


def test_the_calculator_refuses_what_is_not_small_arithmetic():
    assert calculate("99999999+1") == "100000000" and calculate("-(3)") == "-3"
    for bad in ("__import__('os')", "x+1", "9**9**9", "10**150*10**150", "1/0", "(-1)**0.5", "1" * 600, "[1]"):
        with pytest.raises(ValueError):
            calculate(bad)


def test_the_tool_environment_answers_calls_and_ends_on_an_answer():
    env = ToolEnv(tools=["calc"], max_calls=1)
    state = env.start(Problem("12+30", "42"))
    reply = env.step(state, "<calc>12+30</calc>")
    assert reply.observation == "<out>42</out>" and not reply.answer
    assert reply.metrics["tool/calls"] == 1.0 and reply.metrics["tool/errors"] == 0.0
    assert env.step(state, "<calc>1+1</calc>").observation == "<out>error: no more than 1 calls</out>"
    assert env.step(state, "<calc>oops</calc>").metrics["tool/errors"] == 1.0
    assert env.step(state, "\\boxed{42}") == Reply(None, answer=True)
    assert env.stop == ("</calc>",)
    with pytest.raises(ValueError, match="tools"):
        ToolEnv(tools=["shell"])
    with pytest.raises(ValueError, match="tiemout_s"):
        ToolEnv(tiemout_s=3)  # a sandbox limit that does not exist


def test_self_revision_with_the_verifier_critiques_only_wrong_answers():
    """On a thread, as the rollout actor steps environments (math-verify's own timeout works only on a main thread)."""
    env = RevisionEnv(critique="verifier", revisions=1)
    try:
        with ThreadPoolExecutor(1) as thread:
            def step(state, turn):
                return thread.submit(env.step, state, turn).result()

            state = env.start(Problem("2+2", "4"))
            reply = step(state, "</think>\n\\boxed{5}")
            assert reply.answer and reply.observation.startswith("\nThe answer 5 is wrong.")
            assert "4" not in reply.observation
            assert step(state, "</think>\n\\boxed{4}") == Reply(None, answer=True)  # the revision: the last answer
            right = env.start(Problem("2+2", "4"))
            assert step(right, "</think>\n\\boxed{4}") == Reply(None, answer=True)  # right at once: no critique
    finally:
        env.close()
    review = RevisionEnv(critique="self", revisions=2)
    state = review.start(Problem("2+2", "4"))
    assert [review.step(state, "\\boxed{4}").done for _ in range(3)] == [False, False, True]
    with pytest.raises(ValueError, match="critique"):
        RevisionEnv(critique="oracle")
    with pytest.raises(ValueError, match="critic actor"):
        RevisionEnv(check="judge")


def test_environments_resolve_by_name_or_path_and_their_options_are_checked():
    assert isinstance(make("tools", {}), ToolEnv)
    with pytest.raises(ValueError, match="did you mean 'tools'"):
        make("tool", {})
    with pytest.raises(ValueError, match="no option"):
        check_options("revision", {"critic": "self"})
    with pytest.raises(ValueError, match="cannot be imported"):
        make("no_such_module:Env", {})
    assert isinstance(make(f"{__name__}:Exploding", {}), Exploding)


def test_bad_environment_configs_fail_before_anything_starts(tiny_model_dir):
    with pytest.raises(ConfigError, match="cannot be combined"):
        load_config([], ["rollout.env.name=tools", "rollout.thinking_budget=[32]"])
    with pytest.raises(ConfigError, match="max_turn_tokens"):
        load_config([], ["rollout.env.name=tools", "rollout.env.max_turn_tokens=256"])
    with pytest.raises(ConfigError, match="revision_bonus"):
        load_config([], ["reward.revision_bonus=0.5"])
    for override, message in (("rollout.env.name=tool", "did you mean 'tools'"),
                              ("rollout.env.options={max_call: 2}", "no option")):
        cfg = load_config([], ["rollout.env.name=tools", override])
        with pytest.raises(UsageError, match=message):
            preflight(cfg, tiny_model_dir)


# -- the rollout actor's episode rules ------------------------------------------------------------------------------
class _Episode:
    """Drives RolloutWorker's episode rules without an engine: the real tokenizer and environment, text in, text out.
    Submissions of a next turn are recorded instead of reaching an engine."""

    def __init__(self, env: EnvConfig, max_tokens: int = 200, chat: bool = False):
        self.worker = object.__new__(RolloutWorker)
        self.inbox: queue.Queue = queue.Queue()
        self.worker.tokenizer, self.worker.version, self.worker.tokens_generated = build_tokenizer(), 5, 0
        self.worker._env_steps = EnvironmentSteps(post=self.inbox.put)
        self.submitted, self.finished = 0, []
        self.worker._submit = lambda group, k: setattr(self, "submitted", self.submitted + 1)
        sampling = Sampling(1, 1.0, 1.0, max_tokens, env=env)
        request = RolloutRequest(0, Problem("12+30", "42"), "12+30\n<think>\n", seed=1, chat=chat)
        self.group = Group(request, sampling, [1], [Sample()], 1, self.finished.append,
                           env=self.worker._env_steps.environment(env))
        self.sample = self.group.samples[0]

    def turn(self, text: str, reason: str = "stop") -> None:
        """The engine finished a turn with `text`; the environment's answer is applied as the engine thread would."""
        ids = self.worker._ids_of(text)
        self.sample.segment_start = len(self.sample.token_ids)
        self.sample.append(ids, [-0.5] * len(ids), [4] * len(ids), sampled=1)
        self.sample.finish_reason = reason
        self.worker._env_turn(self.group, 0)
        if not self.finished:
            self.worker._env_replied(self.inbox.get(timeout=10))

    @property
    def trajectory(self) -> Trajectory:
        return self.finished[0][0]


def test_an_episode_alternates_policy_and_environment_tokens():
    run = _Episode(EnvConfig(name="tools"))
    run.turn("<calc>12+30</calc>")
    observation = "<out>42</out>"
    assert run.submitted == 1 and not run.finished
    assert run.worker.tokenizer.decode(run.sample.token_ids) == "<calc>12+30</calc>" + observation
    assert run.sample.sampled == [1] * 18 + [0] * len(observation)
    assert run.sample.logprobs[18:] == [0.0] * len(observation) and run.sample.versions[18:] == [5] * len(observation)
    run.turn("\n</think>\n\\boxed{42}")
    t = run.trajectory
    assert (t.turns, t.episode_end, t.attempts, t.masked) == (2, "done", ["\n</think>\n\\boxed{42}"], False)
    assert t.sampled_mask == run.sample.sampled and t.env_metrics["tool/calls"] == 1.0
    assert len(t.sampled_mask) == len(t.response_ids) == len(t.logprobs) == len(t.token_versions)


def test_with_the_chat_template_observations_are_messages_of_the_models_own_template():
    run = _Episode(EnvConfig(name="tools", chat_role="tool"), chat=True)
    run.turn("<calc>12+30</calc>")  # a tool call: the model did not close its turn, the template's close comes first
    eos = run.worker.tokenizer.eos_token
    written = run.worker.tokenizer.decode(run.sample.token_ids[18:])
    assert written == f"{eos}\n<|im_start|>tool\n<out>42</out>{eos}\n<|im_start|>assistant\n"
    run.turn("\\boxed{42}" + eos)  # the answer, closed by the model itself
    assert run.trajectory.episode_end == "done" and run.trajectory.attempts == ["\\boxed{42}"]


def test_episodes_end_cleanly_at_the_turn_and_token_limits():
    run = _Episode(EnvConfig(name="tools", max_turns=2))
    run.turn("<calc>1+1</calc>")
    run.turn("<calc>2+2</calc>")  # the environment would answer, but the turns are spent
    assert run.trajectory.episode_end == "max_turns" and run.trajectory.turns == 2
    assert run.trajectory.attempts == ["<calc>2+2</calc>"]  # no answer was marked: the last turn is scored
    full = _Episode(EnvConfig(name="tools"), max_tokens=20)
    full.turn("<calc>12+30</calc>")  # 18 tokens: the observation does not fit under the episode's cap
    assert full.trajectory.episode_end == "max_tokens" and full.submitted == 0
    cut = _Episode(EnvConfig(name="tools"), max_tokens=10)
    cut.turn("x" * 10, reason="length")  # the turn itself used up the episode's tokens
    assert cut.trajectory.episode_end == "max_tokens" and not cut.trajectory.masked
    assert episode_stats([run.trajectory, full.trajectory, cut.trajectory])["episode/end_max_tokens"] == 2 / 3


def test_a_failing_or_hung_environment_masks_its_episode_with_the_reason():
    broken = _Episode(EnvConfig(name=f"{__name__}:Exploding"))
    broken.turn("anything")
    t = broken.trajectory
    assert t.masked and t.episode_end == "env_error" and "the environment broke" in t.mask_reason
    slow = _Episode(EnvConfig(name=f"{__name__}:Sleepy", step_timeout_s=0.2))
    slow.sample.append([7], [-0.1], [4], sampled=1)
    slow.worker._env_turn(slow.group, 0)
    time.sleep(0.3)
    for step in slow.worker._env_steps.expired():  # what the engine loop does with a step past its deadline
        step.sample.mask_reason = "too slow"
        slow.worker._end_episode(step.group, step.sample, "env_error", step.turn)
    assert slow.trajectory.masked and slow.trajectory.episode_end == "env_error"
    late = slow.inbox.get(timeout=5)  # the late answer arrives and is ignored
    assert not slow.worker._env_steps.finish(late) and len(slow.finished) == 1


# -- scoring an episode's answers -----------------------------------------------------------------------------------
def _traj(attempts: list[str], text: str = "", masked: str = "") -> Trajectory:
    return Trajectory(0, 0, Problem("2+2", "4"), [1], [2], text, [0.0], "stop", 0, attempts=attempts,
                      masked=bool(masked), mask_reason=masked, episode_end="env_error" if masked else "")


def test_the_reward_actor_scores_the_final_answer_and_rewards_a_fix():
    worker = RewardWorker(RewardConfig(functions=[RewardSpec("math", 1.0)], processes_per_worker=1,
                                       revision_bonus=0.5))
    try:
        wrong, right = "</think>\n\\boxed{5}", "</think>\n\\boxed{4}"
        fixed, broke, single, failed = _traj([wrong, right]), _traj([right, wrong]), _traj([], right), \
            _traj([right], masked="environment error: boom")
        scored, report = worker.score([fixed, broke, single, failed])
    finally:
        worker.close()
    assert [t.reward for t in scored[:3]] == [1.5, 0.0, 1.0]
    assert [t.attempts_correct for t in scored[:3]] == [[False, True], [True, False], [True]]
    assert scored[0].reward_terms["revision_bonus"] == 0.5 and scored[2].correct
    assert scored[3].masked and scored[3].mask_reason == "environment error: boom"
    assert (report.masked, report.env_masked) == (1, 1)  # counted as samples/dropped_env_error, not reward_error
    stats = episode_stats([replace(t, episode_end="done") for t in scored[:3]])
    assert (stats["revision/first_accuracy"], stats["revision/final_accuracy"]) == (2 / 3, 2 / 3)
    assert (stats["revision/fixed"], stats["revision/broken"]) == (1.0, 1.0)


# -- training on episodes -------------------------------------------------------------------------------------------
def test_sft_on_a_worked_episode_trains_on_the_policy_segments_only():
    tokenizer = build_tokenizer()
    problem = load_problems("embedded:tools", "train", TaskConfig(min_digits=6, max_digits=6, ops="+", num_train=4,
                                                                  num_eval=4))[0]
    prompt = render_prompt(problem.prompt)
    ids, labels = _batch(tokenizer, [(prompt, completion_segments(problem))])
    trained = tokenizer.decode([i for i, label in zip(ids[0].tolist(), labels[0].tolist()) if label != -100])
    assert trained == f"<calc>{problem.prompt}</calc>\n</think>\n\\boxed{{{problem.answer}}}" + tokenizer.eos_token
    assert f"<out>{problem.answer}</out>" in tokenizer.decode(ids[0])  # the observation is context


@pytest.mark.parametrize("algo", [AlgoConfig(),  # the prox ratio is e^0.1 here: GSPO's default band would clip it
                                  AlgoConfig(name="gspo", off_policy="seq_mask", is_cap=1e6, seq_clip_high=1.0),
                                  AlgoConfig(name="rloo", off_policy="token_mask", is_cap=1e6)],
                         ids=["grpo", "gspo", "rloo"])
def test_environment_tokens_never_receive_gradient(tiny_model_dir, algo):
    """On the tiny model and the learner's own loss (token- and sequence-level): the gradient at environment
    positions is exactly 0, and garbage in their behaviour logprobs and advantages (inf, NaN) leaves the loss and
    every parameter's gradient unchanged."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    ids = build_tokenizer()("<calc>1+2</calc><out>3</out>\\boxed{3}", add_special_tokens=False)["input_ids"]
    sampled = [1] * 16 + [0] * 12 + [1] * 9
    traj = Trajectory(0, 0, Problem("1+2", "3"), [5, 6, 7], ids, "", [-2.0] * len(ids), "stop", 0,
                      sampled_mask=sampled)

    def gradients(perturb: bool):
        p = pack([traj], torch.tensor([0.7]), pad_id=0)
        env = torch.zeros_like(p.response_mask, dtype=torch.bool)
        env[0, 2 : 2 + len(ids)] = torch.tensor(sampled) == 0
        if perturb:
            p.behaviour_logprobs[env] = float("inf")
            p.advantages[env] = float("nan")
        model.zero_grad()
        logits = model(input_ids=p.input_ids, attention_mask=p.attention_mask).logits[:, :-1]
        logits.retain_grad()
        logp = token_logprobs(logits, p.targets)
        loss, _ = policy_loss(logp, logp.detach() - 0.1, p.behaviour_logprobs, p.advantages, p.response_mask,
                              p.seq_ids, algo, tokens=float(p.response_mask.sum()), sequences=1.0)
        loss.backward()
        return loss.detach(), logits.grad[env], [q.grad.clone() for q in model.parameters()]

    loss, env_grad, grads = gradients(perturb=False)
    assert env_grad.abs().max() == 0.0 and torch.isfinite(loss)
    perturbed_loss, _, perturbed = gradients(perturb=True)
    assert torch.equal(loss, perturbed_loss)
    assert all(torch.equal(a, b) for a, b in zip(grads, perturbed))
    assert any(g.abs().sum() > 0 for g in grads)  # the policy's tokens do move the weights


def test_the_progress_bar_and_logged_samples_show_episodes():
    from ponder.platform.driver import progress_line, samples_jsonl

    metrics = {"rollout/reward_mean": 0.5, "rollout/accuracy": 0.4, "perf/tokens_per_s": 100.0, "time/generate": 1.0,
               "episode/turns_mean": 2.0, "episode/count": 128.0, "tool/calls": 120.0}
    line = progress_line(metrics, {})
    assert (line["turns"], line["calls"]) == ("2.0", "0.94")
    single_turn = {k: v for k, v in metrics.items() if not k.startswith(("episode/", "tool/"))}
    assert "turns" not in progress_line(single_turn, {})
    logged = samples_jsonl([_traj(["\\boxed{4}"], masked="environment error: boom")])
    assert '"end": "env_error"' in logged and '"masked": "environment error: boom"' in logged
