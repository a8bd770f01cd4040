import time

import pytest

from ponder.actors.reward import compose
from ponder.platform.config import RewardSpec
from ponder.rewards.extract import last_boxed
from ponder.rewards.format import format_reward
from ponder.rewards.math import math_reward
from ponder.rewards.pool import HardTimeoutPool, Result, Task
from ponder.rewards.registry import resolve
from ponder.rewards.steps import steps_reward
from ponder.types import Problem

GOLD = Problem("347+85", "432")


def test_math_reward_checks_the_last_boxed_answer():
    assert math_reward("</think>\n\\boxed{432}", GOLD) == 1.0
    assert math_reward("\\boxed{432} wait \\boxed{431}", GOLD) == 0.0
    assert math_reward("432", GOLD) == 0.0
    assert math_reward("\\boxed{\\frac{864}{2}}", GOLD) == 1.0


def test_steps_reward_is_earned_only_by_following_the_solution():
    """Partial credit for the policy to chase: each way of raising it without doing the search fails."""
    from ponder.data.tasks import search_problem

    problem = search_problem(137, 13)  # three lines: 137 … no / 138 … no / 139 … yes
    lines = problem.solution.splitlines()
    right = "\n".join(lines) + "\n</think>\n\\boxed{139}"
    assert steps_reward(right, problem) == 1.0
    assert steps_reward("  \n".join(lines) + "\n\n</think>", problem) == 1.0  # layout does not matter
    first = steps_reward(lines[0] + "\n138 13-1=12-3=9-8=2 no", problem)
    assert 1 / 3 < first < 2 / 3  # the first line and the start of the slipped second
    assert steps_reward("\n".join([lines[0]] * 10), problem) < 2 / 3  # repeating a right line adds nothing
    assert steps_reward("139 13-1=12-3=9-9=0 yes\n" + "\n".join(lines), problem) < 0.1  # a wrong start: ~nothing
    assert steps_reward("guess\n</think>\n" + "\n".join(lines), problem) == 0.0  # after </think>: not thinking
    assert steps_reward(right, Problem(problem.prompt, problem.answer)) == 0.0  # no worked solution, no credit
    assert resolve("steps") is steps_reward


def test_last_boxed_balances_braces():
    assert last_boxed("\\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{unclosed") is None


def test_format_reward():
    assert format_reward("7+5\n</think>\n\\boxed{12}", GOLD) == 1.0
    assert format_reward("no think close \\boxed{12}", GOLD) == 0.0


def test_registry_by_name_and_import_path():
    assert resolve("math") is math_reward
    assert resolve("ponder.rewards.format:format_reward") is format_reward
    with pytest.raises(ValueError, match="did you mean 'math'"):
        resolve("mth")
    with pytest.raises(ValueError, match="cannot be imported"):
        resolve("ponder.nope:fn")


def test_compose_weights_timeouts_and_errors():
    specs = [RewardSpec("math", 1.0), RewardSpec("format", 0.5)]
    ok = compose(specs, [Result("ok", 1.0), Result("ok", 1.0)])
    assert (ok.reward, ok.masked) == (1.5, False)
    hung = compose(specs, [Result("timeout"), Result("ok", 1.0)])
    assert (hung.reward, hung.timeouts, hung.masked) == (0.5, ["math"], False)
    broken = compose(specs, [Result("error", error="boom"), Result("ok", 1.0)])
    assert broken.masked


@pytest.fixture(scope="module")
def pool():
    p = HardTimeoutPool(num_processes=2, timeout_s=2.0, prepare=(("math", {}),))
    yield p
    p.close()


def test_pool_scores_in_order(pool):
    results = pool.map([Task("math", f"\\boxed{{{a}}}", GOLD, {}) for a in (432, 1, 432)])
    assert [r.value for r in results] == [1.0, 0.0, 1.0]


@pytest.mark.timeout(30)  # a guard against hanging the suite, not a speed check: the kill is asserted below
def test_input_that_hangs_sympy_is_killed_at_the_timeout(pool):
    """9^(9^(9^(9^9))) makes sympy evaluate a tower that never finishes; the pool kills it and moves on."""
    hang = "\\boxed{9^{9^{9^{9^{9}}}}}"
    restarts = pool.restarts
    results = pool.map([Task("math", hang, GOLD, {}), Task("math", "\\boxed{432}", GOLD, {})])
    assert results[0] == Result("timeout", 0.0, "killed after 2.0s")  # the outside deadline fired, not sympy
    assert pool.restarts == restarts + 1  # the hung worker was killed and replaced
    assert results[1] == Result("ok", 1.0)
    assert pool.map([Task("math", "\\boxed{432}", GOLD, {})])[0].value == 1.0  # the pool still works


def test_reward_that_raises_is_an_error_not_a_zero(pool):
    result = pool.map([Task("ponder.rewards.registry:resolve", "x", GOLD, {})])[0]
    assert result.status == "error" and "TypeError" in result.error


def test_pool_survives_a_killed_worker(pool):
    import os
    import signal

    os.kill(pool.pids()[0], signal.SIGKILL)
    time.sleep(0.2)
    results = pool.map([Task("math", "\\boxed{432}", GOLD, {}) for _ in range(4)])
    assert all(r.status in ("ok", "error") for r in results)
    assert pool.map([Task("math", "\\boxed{432}", GOLD, {}) for _ in range(4)]) == [Result("ok", 1.0)] * 4


def eat_memory(completion, problem):
    """A verifier blown up by its input: it asks for more memory than the worker may have."""
    return float(len(bytearray(8 << 30)))


def test_verifier_over_its_memory_cap_scores_0_and_is_counted():
    small = HardTimeoutPool(num_processes=1, timeout_s=10.0, memory_mb=512)
    try:
        results = small.map([Task(f"{__name__}:eat_memory", "x", GOLD, {}), Task("math", "\\boxed{432}", GOLD, {})])
    finally:
        small.close()
    assert results == [Result("over_limit", error="MemoryError"), Result("ok", 1.0)]
    outcome = compose([RewardSpec("math", 1.0)], results[:1])
    assert (outcome.reward, outcome.over_limit, outcome.masked) == (0.0, ["math"], False)


@pytest.mark.timeout(60)
def test_a_hang_inside_a_chunk_times_out_alone_and_the_rest_are_scored(pool):
    """Tasks travel in chunks; the hung one is killed with its worker, and its chunk's later tasks are rescheduled."""
    tasks = [Task("math", f"\\boxed{{{432 if i % 3 else 1}}}", GOLD, {}) for i in range(24)]
    tasks[7] = Task("math", "\\boxed{9^{9^{9^{9^{9}}}}}", GOLD, {})
    results = pool.map(tasks)
    assert results[7].status == "timeout"
    assert [r.value for i, r in enumerate(results) if i != 7] == [0.0 if i % 3 == 0 else 1.0 for i in range(24)
                                                                   if i != 7]
