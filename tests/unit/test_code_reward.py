"""The pure half of the code reward: test parsing, what enters the sandbox, and the comparison in the parent."""

import pytest

from ponder.rewards.code import check_options, code_tests, last_code_block
from ponder.rewards.registry import check_options as registry_check_options
from ponder.types import Problem


def _problem(**meta) -> Problem:
    return Problem("p", "", metadata=meta)


def test_last_code_block_takes_the_final_fenced_block():
    assert last_code_block("```python\na = 1\n```\nthen\n```py\nb = 2\n```") == "b = 2\n"
    assert last_code_block("no code here") is None
    assert last_code_block("```\nplain = True\n```") == "plain = True\n"


def test_mbpp_asserts_split_into_call_and_expected_value():
    tests = code_tests(_problem(tests=["assert f(1) == [1, (2, 3)]", "assert is_ok(4)", "assert g(2) == h(3)"]))
    assert tests.kind == "call"
    assert tests.cases == ["f(1)", "is_ok(4)", "g(2) == h(3)"]
    assert tests.expected == [[1, (2, 3)], True, True]


def test_expected_values_never_reach_the_sandbox():
    tests = code_tests(_problem(tests=["assert solve('abc') == 'secret-answer'"]))
    assert all("secret-answer" not in case for case in tests.cases)


def test_humaneval_check_function_becomes_asserts_on_the_entry_point():
    test = 'METADATA = {}\n\ndef check(candidate):\n    """doc"""\n    assert candidate(2) == 4\n' \
           '    assert candidate(0) == 0\n'
    tests = code_tests(_problem(test=test, entry_point="double"))
    assert tests.cases == ["double(2)", "double(0)"]
    assert tests.expected == [4, 0]


def test_comparison_happens_on_rebuilt_plain_values():
    tests = code_tests(_problem(tests=["assert f() == (1, 2)", "assert f() == 2", "assert f() == 'x'"]))
    assert tests.passed(0, "ok", "(1, 2)")
    assert not tests.passed(0, "ok", "[1, 2]")  # Python's == : a list is not a tuple
    assert tests.passed(1, "ok", "2.0")
    assert not tests.passed(1, "exit 1", "2")  # a crash never passes, whatever it printed
    assert not tests.passed(2, "ok", "__import__('os').system('true')")  # never evaluated, only literals
    assert not tests.passed(2, "ok", "")  # exited before sending a value
    assert not tests.passed(2, "ok", "(" * 5000 + ")" * 5000)  # too deep to rebuild: refused, not a crash


def test_stdio_cases_compare_outputs_ignoring_trailing_whitespace():
    tests = code_tests(_problem(cases=[{"input": "1 2\n", "output": "3\n"}]))
    assert tests.kind == "stdio" and tests.cases == ["1 2\n"]
    assert tests.passed(0, "ok", "3   \n\n")
    assert not tests.passed(0, "ok", "3\nAll tests passed\n")


@pytest.mark.parametrize("meta, message", [
    ({}, "needs metadata 'tests'"),
    ({"tests": ["x = 1"]}, "must be assert statements"),
    ({"tests": ["assert f(("]}, "not valid Python"),
    ({"cases": [{"input": "1"}]}, "metadata.cases must be"),
    ({"test": "def other(c):\n    pass", "entry_point": "f"}, "must define check"),
])
def test_bad_test_rows_say_what_to_fix(meta, message):
    with pytest.raises(ValueError, match=message):
        code_tests(_problem(**meta))


def test_code_reward_options_are_checked_before_anything_runs():
    check_options({"mode": "all", "timeout_s": 2.0, "warm": 0})
    with pytest.raises(ValueError, match="no option"):
        check_options({"tiemout_s": 2.0})
    with pytest.raises(ValueError, match="fraction' or 'all"):
        check_options({"mode": "most"})
    with pytest.raises(ValueError, match="positive"):
        check_options({"memory_mb": -1})


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
