"""`ponder eval MODEL_DIR`: greedy pass@1, sampled pass@k and maj@k on the held-out split, on the real engine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_eval_reports_pass_at_k_and_maj_at_k(tiny_model_dir):
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ponder"), "eval", tiny_model_dir, "eval.k=3", "eval.prompts=8",
         "rollout.max_tokens=16", "rollout.max_model_len=512", "rollout.kv_cache_gb=0.25"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    values = dict(line.split() for line in proc.stdout.splitlines() if line.count(" ") >= 1 and "/" in line)
    assert set(values) == {"greedy/accuracy", "greedy/reward_mean", "sampled/accuracy", "sampled/reward_mean",
                           "sampled/pass@3", "sampled/maj@3"}
    numbers = {k: float(v) for k, v in values.items()}
    assert all(0.0 <= v <= 1.1 for v in numbers.values())
    assert numbers["sampled/pass@3"] >= numbers["sampled/accuracy"]  # pass@k can only add to pass@1
