"""`algo.name=ppo` as a user runs it: the policy's learner and the value model's own ranks on a local Ray cluster, the
value model's warm-up, checkpoints holding both models, and a resume that restores both."""

from __future__ import annotations

import pytest

from ponder.platform.config import load_config
from ponder.platform.driver import train
from ponder.storage.checkpoints import CheckpointTarget

pytestmark = pytest.mark.integration


def test_ppo_warms_up_its_value_model_checkpoints_both_and_resumes(tiny_model_dir, tmp_path):
    def config(steps: int):
        return load_config([], [
            f"model.path={tiny_model_dir}", "algo.name=ppo", "algo.ppo.warmup_steps=1", f"trainer.steps={steps}",
            "trainer.prompts_per_step=4", "rollout.samples_per_prompt=4", "rollout.max_tokens=16",
            "rollout.max_model_len=512", "rollout.kv_cache_gb=0.25", "rollout.num_cpus=0.5", "learner.num_cpus=0.5",
            "critic.num_cpus=0.5", "reward.num_cpus=0.25", "learner.micro_batch_size=16", "critic.num_minibatches=2",
            "trainer.eval_every=0", "trainer.save_final_model=false", "checkpoint.every=1",
            f"checkpoint.dir={tmp_path}/ckpt", f"trainer.output_dir={tmp_path}/out",
            f"tracking.uri=sqlite:///{tmp_path}/m.db", f"tracking.artifact_location={tmp_path}/a"])

    first = train(config(2))
    warmup, trained = first.history
    assert warmup["critic/warmup"] == 1.0 and "train/pg_loss" not in warmup  # the policy waited
    assert trained["critic/warmup"] == 0.0 and "train/pg_loss" in trained
    for h in first.history:
        assert h["critic/value_loss"] >= 0 and "critic/explained_variance" in h
    root = CheckpointTarget(f"{tmp_path}/ckpt")
    assert root.store().latest() == "step_00000002"  # the value model's checkpoints are not the policy's
    assert root.under("critic").store().latest() == "step_00000002"
    assert "rng/rank_0.pt" in root.under("critic").store().manifest("step_00000002")["files"]

    second = train(config(3), start="step_00000002", run_id=first.run_id)
    assert [h["step"] for h in second.history] == [1, 2, 3] and "critic/value_loss" in second.history[-1]
