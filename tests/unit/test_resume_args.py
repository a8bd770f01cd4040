"""`--resume` resolves before anything starts: what it continues, and what it refuses (real stores in tmp dirs)."""

from __future__ import annotations

import pytest

from ponder.storage.checkpoints import CheckpointTarget
from ponder.platform.cli import NothingToDo, UsageError, resolve_resume
from ponder.platform.config import load_config


@pytest.fixture
def cfg(tmp_path):
    return load_config([], [f"trainer.output_dir={tmp_path}/out", f"tracking.uri=sqlite:///{tmp_path}/m.db",
                            f"tracking.artifact_location={tmp_path}/a"])


def save(root, step: int, last_step: int, tmp_path, run_id: str = "run-a") -> None:
    data = tmp_path / f"data-{step}"
    data.mkdir()
    (data / "weights.bin").write_bytes(b"w" * 10)
    CheckpointTarget(str(root)).store().save(step, data, {"run_id": run_id, "step": step, "last_step": last_step})


def test_a_new_run_in_an_empty_directory(cfg, tmp_path):
    target, start, run_id = resolve_resume(cfg, None)
    assert target.url == f"{tmp_path}/out/checkpoints" and start is None and run_id is None
    assert resolve_resume(cfg, "auto")[1:] == (None, None)  # auto with nothing there: a new run


def test_auto_continues_the_latest(cfg, tmp_path):
    root = tmp_path / "out" / "checkpoints"
    save(root, 2, 10, tmp_path)
    save(root, 4, 10, tmp_path)
    assert resolve_resume(cfg, "auto")[1:] == ("step_00000004", "run-a")
    assert resolve_resume(cfg, str(root / "step_00000002"))[1:] == ("step_00000002", "run-a")


def test_an_unfinished_run_is_never_overwritten(cfg, tmp_path):
    save(tmp_path / "out" / "checkpoints", 4, 10, tmp_path)
    with pytest.raises(UsageError, match=r"unfinished run \(run-a, at step 4 of 10\); continue it with --resume auto"):
        resolve_resume(cfg, None)


def test_a_finished_runs_checkpoints_are_replaced(cfg, tmp_path):
    root = tmp_path / "out" / "checkpoints"
    save(root, 10, 10, tmp_path)
    assert resolve_resume(cfg, None)[1] is None
    assert CheckpointTarget(str(root)).store().complete() == []


def test_bad_resume_targets_say_what_to_give(cfg, tmp_path):
    root = tmp_path / "out" / "checkpoints"
    save(root, 2, 10, tmp_path)
    (root / "step_00000004").mkdir()  # an upload that never completed
    with pytest.raises(UsageError, match="step_00000004 is not a complete checkpoint"):
        resolve_resume(cfg, str(root / "step_00000004"))
    with pytest.raises(UsageError, match="no complete checkpoint under"):
        resolve_resume(cfg, str(tmp_path))
    with pytest.raises(UsageError, match="no MLflow run 'f00d'"):
        resolve_resume(cfg, "f00d")
    with pytest.raises(UsageError, match="/nope: no such checkpoint directory"):
        resolve_resume(cfg, "/nope")  # a path, not read as a run id


def test_resuming_a_finished_run_has_nothing_to_do_unless_given_more_steps(cfg, tmp_path):
    save(tmp_path / "out" / "checkpoints", 60, 60, tmp_path)  # the schema's trainer.steps is 60
    with pytest.raises(NothingToDo, match=r"run run-a is already at step 60 .* raise trainer.steps above 60"):
        resolve_resume(cfg, "auto")
    more = load_config([], [f"trainer.output_dir={tmp_path}/out", "trainer.steps=80"])
    assert resolve_resume(more, "auto")[1:] == ("step_00000060", "run-a")
