"""Exact resume: 4 steps straight versus 2 steps, the whole process group killed, then `--resume auto` for 2 more.

The straight run checkpoints to a local directory, the interrupted one to a real HTTP S3 endpoint (moto's server on
loopback). On these CPUs everything the learner does is deterministic, so the resumed weights are expected to be
bitwise equal to the straight run's; the tolerance below is what the test holds them to. vLLM's samples are seeded
per (run seed, step, prompt, sample) and the engines load the same weights, so the responses are expected to agree
too; the test asserts the data order (prompts of every step) and reports how many responses matched. The straight
run is also checked as MLflow's record of itself: lineage tags, checkpoint URI, registered model, `ponder eval --run`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
REPO = Path(__file__).resolve().parents[2]
PONDER = str(Path(sys.executable).parent / "ponder")
WEIGHT_TOLERANCE = 1e-6  # max |difference| of any parameter; measured here: 0.0 (bitwise)


def overrides(model: str, out: Path) -> list[str]:
    return [f"model.path={model}", "trainer.steps=4", "trainer.prompts_per_step=4", "trainer.eval_prompts=8",
            "trainer.eval_every=0", "trainer.log_samples_every=1", "rollout.max_tokens=16",
            "rollout.max_model_len=512", "rollout.kv_cache_gb=0.25", "learner.micro_batch_size=32",
            "learner.lr=1e-3", "algo.entropy_coef=0.01",  # random weights earn no reward: make every step move them
            "checkpoint.every=2", f"trainer.output_dir={out}", f"tracking.uri=sqlite:///{out}/m.db",
            f"tracking.artifact_location={out}/artifacts"]


@pytest.fixture
def s3_env(monkeypatch):
    """A real HTTP S3 endpoint; the environment that points boto3 at it, here and in the training processes."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}"}.items():
        monkeypatch.setenv(key, value)
    import boto3

    boto3.client("s3").create_bucket(Bucket="ckpt")
    yield dict(os.environ)
    server.stop()


def run(args: list[str], env=None) -> subprocess.CompletedProcess:
    proc = subprocess.run([PONDER, "train", *args], cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def kill_after_checkpoint(args: list[str], env: dict, checkpoint_url: str, step: int, log: Path) -> None:
    """Start training in its own process group and SIGKILL the whole group (driver, Ray, engines, learner) as soon as
    the checkpoint of `step` is complete: what a preempted node looks like."""
    from ponder.storage.checkpoints import CheckpointTarget, checkpoint_name

    with open(log, "w") as sink:
        proc = subprocess.Popen([PONDER, "train", *args], cwd=REPO, env=env, stdout=sink, stderr=sink,
                                start_new_session=True)
    store = CheckpointTarget(checkpoint_url, env["AWS_ENDPOINT_URL"]).store()
    deadline = time.monotonic() + 600
    while checkpoint_name(step) not in store.complete():
        assert proc.poll() is None, f"training ended before its step-{step} checkpoint: {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def samples(store: Path, run_id: str, step: int, dest: Path) -> list[dict]:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{store}")
    path = mlflow.tracking.MlflowClient().download_artifacts(run_id, f"samples/step_{step:06d}.jsonl", str(dest))
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def the_run(out: Path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{out}/m.db")
    runs = mlflow.search_runs(experiment_names=["ponder"])
    assert len(runs) == 1, runs  # the resumed job went on in the same run
    return runs.iloc[0]


def test_killed_and_resumed_equals_straight(tiny_model_dir, tmp_path, s3_env):
    from safetensors.torch import load_file

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    proc = run(overrides(tiny_model_dir, straight) + ["tracking.registered_model=tiny-policy"])
    check_system_of_record(straight, proc.stdout)

    bucket = "s3://ckpt/resume-test"
    interrupted = overrides(tiny_model_dir, resumed) + [f"checkpoint.dir={bucket}"]
    kill_after_checkpoint(interrupted, s3_env, bucket, step=2, log=tmp_path / "killed.log")
    proc = run(interrupted + ["--resume", "auto"], env=s3_env)
    assert f"from {bucket}/step_00000002 (step 2)" in proc.stdout and "last checkpoint: " + bucket in proc.stdout

    a = load_file(straight / "final_model" / "model.safetensors")
    b = load_file(resumed / "final_model" / "model.safetensors")
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= WEIGHT_TOLERANCE, f"resumed weights differ from the straight run's by up to {worst:.3e}"
    first = load_file(Path(tiny_model_dir) / "model.safetensors")
    assert max(float((a[k] - first[k]).abs().max()) for k in a) > 1e-4  # training did move the weights

    run_a, run_b = the_run(straight), the_run(resumed)
    assert run_b.status == "FINISHED"
    import mlflow

    client = mlflow.tracking.MlflowClient()
    assert sorted({m.step for m in client.get_metric_history(run_b.run_id, "train/loss")}) == [1, 2, 3, 4]
    matched = 0
    for step in (1, 2, 3, 4):
        sa = samples(straight / "m.db", run_a.run_id, step, tmp_path / f"a{step}")
        sb = samples(resumed / "m.db", run_b.run_id, step, tmp_path / f"b{step}")
        assert [s["prompt"] for s in sa] == [s["prompt"] for s in sb], f"data order differs at step {step}"
        matched += sum(x["response"] == y["response"] for x, y in zip(sa, sb))
    print(f"responses equal in the straight and the resumed run: {matched}/{4 * 8}; max weight difference {worst}")


def check_system_of_record(out: Path, stdout: str) -> None:
    """Lineage tags, the checkpoint's URI and the registered model are on the run; `ponder eval --run` finds it."""
    import mlflow

    run_id = the_run(out).run_id
    assert f"registered model: tiny-policy/1 (`ponder eval --run {run_id}`)" in stdout
    tags = mlflow.tracking.MlflowClient().get_run(run_id).data.tags
    assert tags["ponder.dataset.train"] == "embedded:arithmetic" and len(tags["ponder.dataset.train.sha256"]) == 64
    assert tags["ponder.dataset.eval.rows"] == "8"
    assert re.fullmatch(r"weight=1.0 version=[0-9a-f]{12}", tags["ponder.reward.math"])
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?|unknown", tags["mlflow.source.git.commit"])
    assert tags["ponder.version"] and tags["ponder.checkpoint.latest"] == f"{out}/checkpoints/step_00000004"
    versions = mlflow.tracking.MlflowClient().search_model_versions(f"run_id = '{run_id}'")
    assert [(v.name, str(v.version)) for v in versions] == [("tiny-policy", "1")]

    evaluated = subprocess.run([PONDER, "eval", "--run", run_id, f"tracking.uri=sqlite:///{out}/m.db",
                                "eval.prompts=8", "eval.k=2", "rollout.max_tokens=16", "rollout.max_model_len=512",
                                "rollout.kv_cache_gb=0.25"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert f"model of run {run_id}:" in evaluated.stdout and "greedy/accuracy" in evaluated.stdout
