"""Failures surface with their cause, and the run is recorded as failed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_an_actor_that_cannot_start_is_reported_with_its_cause(tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}))
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")  # passes the pre-flight, fails to load
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ponder"), "train", f"model.path={broken}", "trainer.steps=1",
         f"tracking.uri=sqlite:///{tmp_path}/m.db", f"tracking.artifact_location={tmp_path}/a"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "a Ray actor failed; all actors were stopped. Cause:" in proc.stderr
    assert re.search(r"\w+Worker\.(__init__|setup)", proc.stderr)  # which actor, and its own traceback follows

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/m.db")
    assert list(mlflow.search_runs(experiment_names=["ponder"])["status"]) == ["FAILED"]
