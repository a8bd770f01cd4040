import json

import pytest

from ponder.data.datasets import DatasetError, load_problems
from ponder.data.stream import PromptStream, make_requests
from ponder.data.tasks import worked_solution
from ponder.data.template import render_completion, render_prompt
from ponder.platform.config import TaskConfig
from ponder.rewards.format import format_reward
from ponder.rewards.math import math_reward

TASK = TaskConfig(num_train=500, num_eval=50)


def test_embedded_splits_are_fixed_and_disjoint():
    train, held = load_problems("embedded:arithmetic", "train", TASK), load_problems("embedded:arithmetic", "eval", TASK)
    assert len(train) == 500 and len(held) == 50
    assert not {p.prompt for p in train} & {p.prompt for p in held}
    assert load_problems("embedded:arithmetic", "eval", TASK) == held


def test_worked_solutions_are_correct_and_score_full_marks():
    for p in load_problems("embedded:arithmetic", "train", TASK)[:200]:
        assert eval(p.prompt) == int(p.answer)
        completion = render_completion(p.solution, p.answer)
        assert math_reward(completion, p) == 1.0 and format_reward(completion, p) == 1.0


def test_worked_solution_subtraction_borrows():
    assert worked_solution(302, "-", 45).splitlines() == ["2-5-0=-3 d7 c1", "0-4-1=-5 d5 c1", "3-0-1=2 d2 c0"]


def test_template():
    assert render_prompt("1+2") == "1+2\n<think>\n"
    assert render_prompt("1+2", "none") == "1+2"


def test_jsonl_and_parquet_and_hf(tmp_path):
    rows = [{"prompt": "1+1", "answer": "2"}, {"prompt": "2+2", "answer": "4", "reward": "math", "metadata": {"a": 1}}]
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(map(json.dumps, rows)))
    got = load_problems(str(f), "train", TASK)
    assert [p.answer for p in got] == ["2", "4"] and got[1].reward == "math" and got[1].metadata == {"a": 1}
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows[:1]), tmp_path / "d.parquet")
    assert load_problems(str(tmp_path / "d.parquet"), "train", TASK)[0].prompt == "1+1"
    datasets.Dataset.from_list(rows[:1]).save_to_disk(str(tmp_path / "hf"))
    assert load_problems(str(tmp_path / "hf"), "train", TASK)[0].answer == "2"


def test_bad_rows_are_named(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"prompt": "1+1", "answer": "2"}\n{"prompt": "x"}\n')
    with pytest.raises(DatasetError, match=r"bad.jsonl: row 1 is missing required field\(s\) \['answer'\]"):
        load_problems(str(f), "train", TASK)
    f.write_text('{"prompt": "1+1", "answer": "2"}\n{not json\n')
    with pytest.raises(DatasetError, match=r"bad.jsonl: line 2 is not valid JSON"):
        load_problems(str(f), "train", TASK)
    with pytest.raises(DatasetError, match="not found"):
        load_problems(str(tmp_path / "missing.jsonl"), "train", TASK)


def test_prompt_stream_is_seeded_and_covers_an_epoch():
    problems = load_problems("embedded:arithmetic", "train", TASK)[:10]
    a, b = PromptStream(problems, 5, seed=3), PromptStream(problems, 5, seed=3)
    first = a.next() + a.next()
    assert first == b.next() + b.next()
    assert sorted(p.prompt for p in first) == sorted(p.prompt for p in problems)
    reqs = make_requests(problems[:3], "think", seed=0, step=1, first_group=30)
    assert [r.group_id for r in reqs] == [30, 31, 32] and len({r.seed for r in reqs}) == 3


def test_prompt_stream_resumes_at_a_position_with_the_same_order():
    problems = load_problems("embedded:arithmetic", "train", TASK)[:11]  # 2 batches of 5 per epoch, one left over
    walked = PromptStream(problems, 5, seed=3)
    order = [walked.next() for _ in range(7)]  # three epochs and a bit
    resumed = PromptStream(problems, 5, seed=3, position=4)
    assert [resumed.next() for _ in range(3)] == order[4:]
    assert order[0] != order[2]  # each epoch its own shuffle
