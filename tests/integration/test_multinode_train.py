"""`ponder train` as a user runs it, on two Ray nodes with addresses of their own (127.0.0.4 and 127.0.0.5): learner
ranks on both nodes, weights over the network transport, a checkpoint from every rank, and a resume from it that goes
on in the same run. tests/integration/test_multinode.py checks the parts one by one (placement-chosen transport,
logprobs after a push, bitwise resume, node loss)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray

from ponder.platform.config import load_config
from ponder.platform.driver import train
from ponder.platform.local_nodes import local_nodes
from ponder.storage.checkpoints import CheckpointTarget

pytestmark = pytest.mark.integration


def test_ponder_train_across_two_nodes_then_resume(tiny_model_dir, tmp_path):
    prompts, n = 4, 4

    def config(steps: int):
        return load_config([], [
            f"model.path={tiny_model_dir}", f"trainer.steps={steps}", f"trainer.prompts_per_step={prompts}",
            f"rollout.samples_per_prompt={n}", "rollout.max_tokens=16", "rollout.max_model_len=512",
            "rollout.kv_cache_gb=0.25", "rollout.num_cpus=0.5", "rollout.weight_sync=network",
            "learner.num_ranks=2", "learner.placement=spread", "learner.num_cpus=1", "learner.num_threads=1",
            "learner.micro_batch_size=16", "reward.num_cpus=0.25", "trainer.eval_every=0", "trainer.eval_prompts=8",
            "trainer.save_final_model=false", "checkpoint.every=1", f"checkpoint.dir={tmp_path}/ckpt",
            f"trainer.output_dir={tmp_path}/out", f"tracking.uri=sqlite:///{tmp_path}/m.db",
            f"tracking.artifact_location={tmp_path}/a"])

    with local_nodes(2, first=4) as nodes:
        first = train(config(2))  # joins the nodes' cluster (this process is their driver); leaves it at the end
        assert [h["step"] for h in first.history] == [1, 2]
        assert first.accounting["samples/trained"] == 2 * prompts * n
        target = CheckpointTarget(f"{tmp_path}/ckpt")
        latest = target.store().latest()
        assert latest == "step_00000002"
        files = target.store().manifest(latest)["files"]
        # each rank wrote its own part from its own node (spread: one rank per node, as test_multinode.py checks)
        assert {"rng/rank_0.pt", "rng/rank_1.pt", "driver.json"} <= files.keys()

        nodes.join()  # the first run's cluster shutdown disconnected this driver
        second = train(config(3), start=latest, run_id=first.run_id)
        assert second.run_id == first.run_id and [h["step"] for h in second.history] == [1, 2, 3]
        assert second.accounting["samples/trained"] == 3 * prompts * n
        driver_state = json.loads((Path(tmp_path) / "ckpt" / "step_00000003" / "driver.json").read_text())
        assert driver_state["step"] == 3
    assert not ray.is_initialized()
