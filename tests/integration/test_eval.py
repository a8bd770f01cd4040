"""`ponder eval MODEL_DIR`: greedy pass@1, sampled pass@k and maj@k on the held-out split, and the test-time scaling
sweep over k and thinking budgets, on the real engine, logged to a real MLflow store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_eval_sweeps_k_and_budgets_into_an_mlflow_run(tiny_model_dir, tmp_path):
    """One run of `ponder eval` with 4 samples per problem and two thinking budgets: the metrics, the scaling table
    and its pictures land in a new MLflow run."""
    import csv

    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ponder"), "eval", tiny_model_dir, "eval.k=4", "eval.prompts=8",
         "eval.thinking_budgets=[2,6]", "rollout.max_tokens=24", "rollout.max_model_len=512",
         "rollout.kv_cache_gb=0.25", f"tracking.uri={uri}", f"tracking.artifact_location={tmp_path}/artifacts",
         f"trainer.output_dir={tmp_path}/out"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    values = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].replace(".", "", 1).isdigit():
            values[parts[0]] = float(parts[1])
    for prefix in ("", "budget_2/", "budget_6/"):
        assert {f"{prefix}greedy/accuracy", f"{prefix}sampled/pass@4", f"{prefix}sampled/maj@4"} <= set(values)
    assert values["sampled/pass@4"] >= values["sampled/accuracy"]  # pass@k can only add to pass@1

    with open(tmp_path / "out" / "eval" / "scaling.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(r["method"], r["budget"], r["k"]) for r in rows} == (
        {("greedy", b, "1") for b in ("none", "2", "6")}
        | {(m, b, k) for m in ("pass", "maj") for b in ("none", "2", "6") for k in ("1", "2", "4")})
    # a forced answer: at most the budget, the closing text and prefix (16 tokens), and what fits after it
    greedy_tokens = {r["budget"]: float(r["tokens_per_problem"]) for r in rows if r["method"] == "greedy"}
    assert 2 + 16 <= greedy_tokens["2"] <= 24 and greedy_tokens["2"] <= greedy_tokens["6"]

    run_id = proc.stdout.split("MLflow run ")[1].split()[0]
    client = mlflow.tracking.MlflowClient(uri)
    assert client.get_run(run_id).data.metrics["budget_6/greedy/accuracy"] == values["budget_6/greedy/accuracy"]
    logged = {a.path for a in client.list_artifacts(run_id, "eval")}
    assert logged == {f"eval/{name}" for name in ("scaling.csv", "scaling.json", "scaling_tokens.png",
                                                   "scaling_budget.png")}
