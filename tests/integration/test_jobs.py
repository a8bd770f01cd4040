"""`ponder submit` against a real Ray head started on loopback for this test (and stopped after it)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    gcs, dashboard = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's Unix socket paths must fit 107 bytes
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [f"{bin_dir}/ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--include-dashboard=true",
         "--num-cpus=4", f"--temp-dir={temp_dir}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline or head.poll() is not None:
                head.kill()
                pytest.fail("Ray head did not come up")
            time.sleep(1)
    yield address, env
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=60)
    finally:
        os.killpg(head.pid, signal.SIGKILL) if head.poll() is None else None
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_submit_runs_one_training_step_on_the_cluster(ray_head, tiny_model_dir, tmp_path):
    address, env = ray_head
    store = tmp_path / "mlflow.db"
    proc = subprocess.run(
        [f"{Path(sys.executable).parent}/ponder", "submit", "--address", address, "--follow",
         f"model.path={tiny_model_dir}", "trainer.steps=1", "trainer.prompts_per_step=4", "trainer.eval_prompts=8",
         "trainer.save_final_model=false", "rollout.max_tokens=16", "rollout.max_model_len=512",
         "rollout.kv_cache_gb=0.25", "learner.micro_batch_size=32", f"tracking.uri=sqlite:///{store}",
         f"tracking.artifact_location={tmp_path / 'artifacts'}", "tracking.run_name=from-a-job"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "submitted job" in proc.stdout and "SUCCEEDED" in proc.stdout
    assert "MLflow run:" in proc.stdout  # the job's own summary, streamed back through --follow

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{store}")
    runs = mlflow.search_runs(experiment_names=["ponder"])
    assert list(runs["tags.mlflow.runName"]) == ["from-a-job"]
    assert runs["status"].iloc[0] == "FINISHED"
