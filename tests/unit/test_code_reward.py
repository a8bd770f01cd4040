"""The pure half of the code reward: test plans, which statements count, and the trusted evaluation's semantics.

`evaluate` is driven here by an in-process stand-in for a sandbox job (pure logic: how replies become values,
exceptions and verdicts); the real sandbox is exercised in tests/integration/test_code_integrity.py."""

import pytest

from ponder.rewards import code as code_module
from ponder.rewards.code import ProgramError, check_options, evaluate
from ponder.rewards.extract import last_code_block
from ponder.rewards.code_tests import plan_tests as plan_of
from ponder.rewards.plain import decode, encode
from ponder.rewards.registry import check_options as registry_check_options
from ponder.rewards.sandbox import Reply, SandboxError


class InProcessJob:
    """Answers calls like the sandbox's runner would, from functions defined here; `replies` overrides by name."""

    def __init__(self, functions: dict, replies: dict | None = None):
        self.functions, self.replies, self.calls = functions, replies or {}, []

    def call(self, name: str, args: str, kwargs: str) -> Reply:
        self.calls.append((name, decode(args), decode(kwargs)))
        if name in self.replies:
            reply = self.replies[name]
            if isinstance(reply, Exception):
                raise reply
            return reply
        try:
            value = self.functions[name](*decode(args), **decode(kwargs))
        except Exception as e:  # noqa: BLE001
            return Reply("error", type(e).__name__)
        return Reply("ok", encode(value))


def test_last_code_block_takes_the_final_fenced_block():
    assert last_code_block("```python\na = 1\n```\nthen\n```py\nb = 2\n```") == "b = 2\n"
    assert last_code_block("no code here") is None
    assert last_code_block("```\nplain = True\n```") == "plain = True\n"


def test_mbpp_tests_name_the_programs_functions_and_the_modules_they_use():
    plan = plan_of({"tests": ["assert math.isclose(area(2), 12.56, rel_tol=0.01)", "assert add(1, 2) == 3"]})
    assert plan.kind == "call" and plan.remote == {"add": "add", "area": "area"}
    assert plan.modules == ("math",) and plan.count == 2


def test_statements_count_only_when_they_involve_the_program():
    plan = plan_of({"tests": ["assert True", "x = f(1)", "y = [1, 2]", "assert x == 2", "assert y == [1, 2]",
                              "assert g(y)", "if f(2) != 3:\n    raise AssertionError"]})
    assert plan.tests == (False, False, False, True, False, True, True)  # a call that only has to run is no test
    with pytest.raises(ValueError, match="never check the program"):
        plan_of({"tests": ["assert True", "import math", "f(1)"]})


def test_humaneval_check_becomes_statements_with_candidate_standing_for_the_entry_point():
    test = ("import math\nMETADATA = {}\n\ndef check(candidate):\n    '''doc'''\n    assert candidate(2) == 4\n"
            "    for i in range(3):\n        assert candidate(i) == 2 * i\n    assert True, 'not a test'\n"
            "    print('done')\n")
    plan = plan_of({"test": test, "entry_point": "double", "setup": "def helper(x):\n    return x\n"})
    assert plan.remote == {"candidate": "double", "double": "double"}
    assert plan.tests == (True, True, False, False)
    assert "def helper" in plan.setup and "METADATA" in plan.setup and "def check" not in plan.setup


def test_a_check_whose_statements_cannot_stand_alone_is_one_statement():
    test = "def check(candidate):\n    if candidate(1) != 2:\n        return\n    assert candidate(2) == 4\n"
    plan = plan_of({"test": test, "entry_point": "double"})
    assert plan.statements == ("check(candidate)",) and plan.tests == (True,)
    assert "def check" in plan.setup


def test_results_kept_in_containers_count_as_the_programs():
    plan = plan_of({"tests": ["out = {}", "out['a'] = f(1)", "res = []", "res.append(f(1))", "assert out['a'] == 2",
                              "assert res == [2]", "assert math.floor(2.5) == 2"]})
    assert plan.tests == (False, False, False, False, True, True, False) and plan.modules == ("math",)
    assert evaluate(plan, InProcessJob({"f": lambda x: x * 3})) == [False, False]
    assert evaluate(plan, InProcessJob({"f": lambda x: x * 2})) == [True, True]


def test_a_call_that_fails_outside_an_assert_costs_a_test():
    tests = ["x = f(1)", "assert f(2) == 4"]
    assert evaluate(plan_of({"tests": tests}), InProcessJob({"f": lambda x: 1 // (x - 1) if x == 1 else 2 * x})) \
        == [False, True]
    assert evaluate(plan_of({"tests": tests}), InProcessJob({"f": lambda x: 2 * x})) == [True]


def test_the_verifiers_own_time_on_the_tests_is_capped():
    job = InProcessJob({"f": lambda: 10 ** 6})
    tests = ["assert f() > 0", "total = 0\nfor i in range(f() * 1000):\n    total += i\nassert total > 0",
             "assert f() == 10 ** 6"]
    # the loop runs past 0.3 s of CPU: the tests from there on (the assert on its total, the last) fail
    assert evaluate(plan_of({"tests": tests}), job, cpu_s=0.3) == [True, False, False]


def test_a_test_that_exercises_nothing_of_the_program_is_not_counted():
    job = InProcessJob({"f": lambda: 1})
    tests = ["assert callable(f)", "for x in []:\n    assert f() == x", "assert f() == 1"]
    assert evaluate(plan_of({"tests": tests}), job) == [True]
    with pytest.raises(ValueError, match="no test statement called the program"):
        evaluate(plan_of({"tests": ["assert f is not None"]}), job)


def test_expected_values_stay_in_the_parent():
    job = InProcessJob({"solve": lambda s: s[::-1]})
    verdicts = evaluate(plan_of({"tests": ["assert solve('abc') == 'secret-answer'"]}), job)
    assert verdicts == [False]
    assert job.calls == [("solve", ["abc"], {})]  # only the arguments went to the program


def test_every_comparison_form_is_evaluated_on_rebuilt_values():
    job = InProcessJob({"f": lambda: 3, "g": lambda: {2, 4}, "h": lambda: 0.1 + 0.2})
    tests = ["assert 3 == f()", "assert f() in (1, 3)", "assert 0 < f() < 4", "assert not f() - 3",
             "assert isinstance(f(), int) and not isinstance(f(), bool)", "assert g() == {4, 2}",
             "assert abs(h() - 0.3) < 1e-9", "assert f() != 3"]
    assert evaluate(plan_of({"tests": tests}), job) == [True] * 7 + [False]


def test_a_raised_builtin_exception_is_raised_again_in_the_test():
    job = InProcessJob({"f": lambda x: int(x)})
    tests = ["try:\n    f('x')\n    raised = False\nexcept ValueError:\n    raised = True\nassert raised",
             "assert f('4') == 4"]
    assert evaluate(plan_of({"tests": tests}), job) == [True, True]  # the assert after the try, and the last
    assert isinstance(code_module._exception("MyError"), ProgramError)
    assert isinstance(code_module._exception("StopIteration"), ProgramError)  # never steers a generator


@pytest.mark.parametrize("status", ["timeout", "died", "output_limit", "not_plain"])
def test_a_call_that_does_not_return_fails_its_statement_even_inside_a_bare_except(status):
    job = InProcessJob({}, {"f": Reply(status, "")})
    tests = ["try:\n    assert f() == 1\nexcept BaseException:\n    pass", "try:\n    f()\nexcept BaseException:\n    pass",
             "assert f() == 1"]
    assert evaluate(plan_of({"tests": tests}), job) == [False, False, False]


def test_a_program_that_does_not_load_fails_every_call_however_the_test_catches():
    job = InProcessJob({}, {"f": Reply("error", "load: SyntaxError")})
    assert evaluate(plan_of({"tests": ["try:\n    assert f()\nexcept Exception:\n    pass"]}), job) == [False]


def test_an_infrastructure_failure_is_raised_even_if_the_test_catches_everything():
    job = InProcessJob({}, {"f": SandboxError("starved")})
    with pytest.raises(SandboxError, match="starved"):
        evaluate(plan_of({"tests": ["try:\n    assert f()\nexcept BaseException:\n    pass"]}), job)


def test_a_non_plain_argument_asks_for_the_whole_test_in_the_sandbox():
    job = InProcessJob({"apply": lambda g: g(1)})
    with pytest.raises(code_module._NeedsWhole):
        evaluate(plan_of({"tests": ["assert apply(lambda x: x + 1) == 2"]}), job)
    assert job.calls == []


def test_arguments_are_passed_by_value():
    job = InProcessJob({"clear": lambda xs: xs.clear()})
    assert evaluate(plan_of({"tests": ["xs = [1]", "assert clear(xs) is None and xs == [1]"]}), job) == [True]


def test_a_statement_that_fails_before_the_program_ran_is_a_broken_row():
    job = InProcessJob({"f": lambda: 1})
    with pytest.raises(ValueError, match="fails without involving the program"):
        evaluate(plan_of({"tests": ["assert 1 == 2", "assert f() == 1"]}), job)
    # after the program ran, it may hold the program's values in ways the plan does not follow: a failed test
    assert evaluate(plan_of({"tests": ["a = b = []", "b.append(f())", "assert a == [2]", "assert f() == 1"]}),
                    job) == [False, True]
    with pytest.raises(ValueError, match="setup fails"):
        evaluate(plan_of({"tests": ["assert f() == 1"], "setup": "import not_a_module_anywhere"}), job)


def test_stdio_cases_compare_outputs_ignoring_trailing_whitespace():
    plan = plan_of({"cases": [{"input": "1 2\n", "output": "3\n"}]})
    assert plan.kind == "stdio" and plan.cases == (("1 2\n", "3\n"),)
    assert code_module._normalise("3   \n\n") == code_module._normalise("3\n")
    assert code_module._normalise("3\nAll tests passed\n") != code_module._normalise("3\n")


@pytest.mark.parametrize("meta, message", [
    ({}, "needs metadata 'tests'"),
    ({"tests": ["x = 1"]}, "never check the program"),
    ({"tests": ["assert f(("]}, "not valid Python"),
    ({"cases": [{"input": "1"}]}, "metadata.cases must be"),
    ({"test": "def other(c):\n    pass", "entry_point": "f"}, "must define check"),
    ({"tests": ["assert f() == 1"], "setup": "def ("}, "metadata.setup"),
])
def test_bad_test_rows_say_what_to_fix(meta, message):
    with pytest.raises(ValueError, match=message):
        plan_of(meta)


def test_code_reward_options_are_checked_before_anything_runs():
    check_options({"mode": "all", "timeout_s": 20.0, "case_cpu_s": 0.5, "warm": 0})
    with pytest.raises(ValueError, match="no option"):
        check_options({"tiemout_s": 2.0})
    with pytest.raises(ValueError, match="fraction' or 'all"):
        check_options({"mode": "most"})
    with pytest.raises(ValueError, match="positive"):
        check_options({"memory_mb": -1})
    with pytest.raises(ValueError, match="quarter of timeout_s"):
        check_options({"timeout_s": 4.0, "case_timeout_s": 2.0})
    with pytest.raises(ValueError, match="below case_timeout_s"):
        check_options({"case_cpu_s": 5.0})


def test_the_code_rewards_time_bound_must_fit_under_the_hard_limit():
    registry_check_options("code", {"timeout_s": 16.0, "case_timeout_s": 4.0}, 40.0)
    with pytest.raises(ValueError, match="raise reward.timeout_s to at least 36"):
        registry_check_options("code", {"timeout_s": 16.0, "case_timeout_s": 4.0}, 30.0)
    with pytest.raises(ValueError, match="at least 53"):  # the defaults: 30 s of sandbox time
        registry_check_options("code", {}, 5.0)
    registry_check_options("math", {}, 5.0)  # a reward without a time bound of its own: the hard limit is its bound


def test_registry_checks_options_by_signature_or_hook():
    registry_check_options("code", {"mode": "all"})
    with pytest.raises(ValueError, match="has no option"):
        registry_check_options("math", {"strict": True})
    with pytest.raises(ValueError, match="no option"):
        registry_check_options("code", {"bogus": 1})


def test_critic_options_are_checked_like_reward_options():
    assert registry_check_options("judge", {"path": "/models/judge", "per_step": True}) is None
    with pytest.raises(ValueError, match="needs options.path"):
        registry_check_options("reward_model", {})
    with pytest.raises(ValueError, match="no option"):
        registry_check_options("judge", {"path": "x", "temprature": 0.5})
