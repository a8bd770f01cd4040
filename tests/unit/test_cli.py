"""The command line: help with examples, and bad input stopped early with a message that says the fix."""

import subprocess
import sys

import pytest

from ponder.platform.cli import EXAMPLES, build_parser


@pytest.mark.parametrize("command", sorted(EXAMPLES))
def test_every_command_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and EXAMPLES[command] in out


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "ponder.platform.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def fake_model(path):
    """What the pre-flight looks for in a model directory (it loads nothing)."""
    path.mkdir()
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"")


def test_missing_model_says_how_to_build_one(tmp_path):
    proc = run_cli("train", f"model.path={tmp_path}/nothing", cwd=tmp_path)
    assert proc.returncode == 2
    assert "ponder init-model" in proc.stderr and "nothing" in proc.stderr


def test_bad_dataset_row_is_named_before_anything_starts(tmp_path):
    fake_model(tmp_path / "model")
    (tmp_path / "d.jsonl").write_text('{"prompt": "1+1", "answer": "2"}\n{"answer": "3"}\n')
    proc = run_cli("train", f"model.path={tmp_path}/model", f"data.train={tmp_path}/d.jsonl", cwd=tmp_path)
    assert proc.returncode == 2
    assert "d.jsonl: row 1 is missing required field(s) ['prompt']" in proc.stderr


def test_unknown_reward_is_refused_with_suggestion(tmp_path):
    fake_model(tmp_path / "model")
    (tmp_path / "r.yaml").write_text("reward:\n  functions:\n    - {name: maths, weight: 1.0}\n")
    proc = run_cli("train", str(tmp_path / "r.yaml"), f"model.path={tmp_path}/model", cwd=tmp_path)
    assert proc.returncode == 2
    assert "unknown reward 'maths'; did you mean 'math'?" in proc.stderr


def test_accuracy_from_must_name_a_configured_reward(tmp_path):
    fake_model(tmp_path / "model")
    proc = run_cli("train", f"model.path={tmp_path}/model", "reward.accuracy_from=code", cwd=tmp_path)
    assert proc.returncode == 2
    assert "reward.accuracy_from = 'code' names no configured reward; use one of math, format" in proc.stderr


def test_config_show_prints_resolved_yaml(tmp_path):
    proc = run_cli("config", "show", "rollout.samples_per_prompt=3", cwd=tmp_path)
    assert proc.returncode == 0 and "samples_per_prompt: 3" in proc.stdout
