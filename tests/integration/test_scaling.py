"""Post-training compute scales on its own axis: the same driver runs the streaming pipeline with two rollout engines,
two reward actors and two learner ranks, and still accounts for every sample and respects the staleness bound."""

from __future__ import annotations

import pytest

from ponder.platform.config import load_config
from ponder.platform.driver import train

pytestmark = pytest.mark.integration


def test_async_training_with_independently_sized_pools(tiny_model_dir, tmp_path):
    steps, prompts, n = 3, 4, 4
    cfg = load_config([], [
        f"model.path={tiny_model_dir}", "pipeline.mode=async", "pipeline.max_staleness=1",
        "rollout.num_workers=2", "reward.num_workers=2", "learner.num_ranks=2",
        f"trainer.steps={steps}", f"trainer.prompts_per_step={prompts}", f"rollout.samples_per_prompt={n}",
        "rollout.max_tokens=24", "rollout.kv_cache_gb=0.25", "rollout.num_cpus=0.5", "learner.num_cpus=0.5",
        "learner.num_threads=1", "trainer.eval_every=0", "trainer.eval_prompts=8", "trainer.save_final_model=false",
        "cluster.num_cpus=8", f"trainer.output_dir={tmp_path}/out", f"tracking.uri=sqlite:///{tmp_path}/m.db",
        f"tracking.artifact_location={tmp_path}/a"])
    result = train(cfg)

    a = result.accounting
    dropped = sum(v for k, v in a.items() if k.startswith("samples/dropped_"))
    assert a["samples/trained"] + a["samples/dropped_reward_error"] == steps * prompts * n
    assert a["samples/generated"] == a["samples/trained"] + dropped
    assert all(h["pipeline/staleness_max"] <= 1 for h in result.history)
    assert all(h["time/train"] > 0 for h in result.history)
