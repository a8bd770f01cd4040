"""End to end on the embedded task: tiny model → SFT warm start → GRPO on the real stack; held-out reward goes up.

Fixed seeds throughout (model init, SFT batches, data order, per-sample sampling seeds). The bar is set well below
what this configuration gains (see docs/benchmarks.md), so that the test does not flake.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
REPO = Path(__file__).resolve().parents[2]
PONDER = str(Path(sys.executable).parent / "ponder")


@pytest.fixture(scope="module")
def warm_start(tmp_path_factory) -> list[str]:
    """init-model + SFT once for both modes: the overrides that point `train` at that checkpoint."""
    root = tmp_path_factory.mktemp("warm")
    overrides = [f"tiny_model.out_dir={root}/init", f"sft.init_dir={root}/init", f"sft.out_dir={root}/sft",
                 f"model.path={root}/sft"]
    for command in ("init-model", "sft"):
        subprocess.run([PONDER, command, "configs/default.yaml", *overrides, f"tracking.uri=sqlite:///{root}/m.db",
                        f"tracking.artifact_location={root}/artifacts"], cwd=REPO, check=True, timeout=900)
    return overrides


# (extra config files, steps, the versions step 6's samples may come from). The streaming run gets more steps: its
# learner has one core instead of two, and the bar is the same.
MODES = {"sync": ([], 12, {5}), "async": (["configs/async.yaml"], 16, {3, 4, 5})}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_grpo_raises_heldout_reward(mode, warm_start, tmp_path):
    files, steps, versions = MODES[mode]
    overrides = [
        *warm_start, f"trainer.steps={steps}", f"trainer.eval_every={steps}", "trainer.eval_prompts=128",
        "trainer.log_samples_every=6", f"trainer.output_dir={tmp_path}/run", f"tracking.uri=sqlite:///{tmp_path}/m.db",
        f"tracking.artifact_location={tmp_path}/artifacts",
    ]
    proc = subprocess.run([PONDER, "train", "configs/default.yaml", *files, *overrides], cwd=REPO, capture_output=True,
                          text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "held-out accuracy:" in proc.stdout and "MLflow run:" in proc.stdout and "samples:" in proc.stdout

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/m.db")
    run = mlflow.search_runs(experiment_names=["ponder"]).iloc[0]
    client = mlflow.tracking.MlflowClient()
    reward = {m.step: m.value for m in client.get_metric_history(run.run_id, "eval/reward_mean")}
    assert set(reward) == {0, steps}
    assert reward[steps] > reward[0] + 0.05, reward  # held-out reward (math + 0.1 * format) goes up

    artifacts = {a.path for a in client.list_artifacts(run.run_id)}
    assert {"config.yaml", "curves.png", "final_model", "samples"} <= artifacts
    samples = client.download_artifacts(run.run_id, "samples/step_000006.jsonl", str(tmp_path))
    rows = [json.loads(line) for line in Path(samples).read_text().splitlines()]
    assert rows and {r["version"] for r in rows} <= versions  # sync: step 5's weights; async: at most 2 older


def test_code_task_trains_with_the_sandbox_reward(tmp_path):
    """configs/code.yaml end to end: the code reward runs every sample in the bubblewrap sandbox, each step.
    The plumbing is what is checked (every sample scored, none masked, per-reward metrics logged, programs that pass);
    three steps of this tiny model show no reliable learning gain, so none is asserted."""
    overrides = [f"tiny_model.out_dir={tmp_path}/init", f"sft.init_dir={tmp_path}/init", f"sft.out_dir={tmp_path}/sft",
                 f"model.path={tmp_path}/sft", "sft.steps=80", "trainer.steps=3", "trainer.eval_every=3",
                 "trainer.eval_prompts=32", "trainer.prompts_per_step=16", "trainer.save_final_model=false",
                 f"trainer.output_dir={tmp_path}/run", f"tracking.uri=sqlite:///{tmp_path}/m.db",
                 f"tracking.artifact_location={tmp_path}/artifacts"]
    files = ["configs/default.yaml", "configs/code.yaml"]
    for command in ("init-model", "sft", "train"):
        proc = subprocess.run([PONDER, command, *files, *overrides], cwd=REPO, capture_output=True, text=True,
                              timeout=1500)
        assert proc.returncode == 0, proc.stderr[-4000:]
    assert "samples: 384 generated, 384 trained, dropped: none" in proc.stdout

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/m.db")
    run = mlflow.search_runs(experiment_names=["ponder"]).iloc[0]
    client = mlflow.tracking.MlflowClient()
    for step in range(3):
        assert client.get_metric_history(run.run_id, "reward/masked")[step].value == 0.0
    code_term = [m.value for m in client.get_metric_history(run.run_id, "rollout/reward/code")]
    assert len(code_term) == 3 and all(0.0 <= v <= 1.0 for v in code_term)
    # Sandboxed programs pass tests: greedy held-out answers do, through the same reward actors. (Samples at
    # temperature 1 from this 80-step warm start pass rarely, ~0.5 % of test cases per step here: a step may see none.)
    assert client.get_metric_history(run.run_id, "eval/accuracy")[0].value > 0.05


def test_star_iterations_then_the_flywheel_export_and_distillation(warm_start, tmp_path):
    """STaR on the real stack (2 iterations with rationalization), its verified traces exported, and a fresh model
    distilled on the export by `ponder sft`; MLflow links the exporting and the consuming run both ways."""
    tracking = [f"tracking.uri=sqlite:///{tmp_path}/m.db", f"tracking.artifact_location={tmp_path}/artifacts"]
    train = [*warm_start, "algo.name=star", "trainer.steps=2", "trainer.eval_every=2", "trainer.eval_prompts=32",
             "trainer.prompts_per_step=16", "rollout.samples_per_prompt=4", "trainer.save_final_model=false",
             "checkpoint.every=0", f"trainer.output_dir={tmp_path}/run", *tracking]
    proc = subprocess.run([PONDER, "train", "configs/default.yaml", *train], cwd=REPO, capture_output=True, text=True,
                          timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/m.db")
    client = mlflow.tracking.MlflowClient()
    star_run = mlflow.search_runs(experiment_names=["ponder"]).iloc[0].run_id
    history = {key: [m.value for m in client.get_metric_history(star_run, key)]
               for key in ("star/kept", "star/solved_frac", "star/rationalized_frac", "train/sft_loss", "train/tokens")}
    assert all(len(v) == 2 for v in history.values()), history
    assert min(history["star/kept"]) > 0 and min(history["train/tokens"]) > 0  # a ~50 % warm start solves some
    assert "samples:" in proc.stdout and "dropped: " in proc.stdout

    export = tmp_path / "export.jsonl"
    proc = subprocess.run([PONDER, "export", star_run, str(export), "configs/default.yaml", *tracking], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in export.read_text().splitlines()]
    assert rows and all(r["metadata"]["trace"]["correct"] and r["metadata"]["trace"]["run_id"] == star_run
                        for r in rows)
    assert len({(r["prompt"], r["metadata"]["completion"]) for r in rows}) == len(rows)  # deduplicated
    rationalized = sum(m.value for m in client.get_metric_history(star_run, "star/rationalized"))
    # the verified plain samples the iterations kept (rationalized ones were sampled with a hint: not traces), less
    # any duplicate across the two iterations
    assert 0 < len(rows) <= sum(history["star/kept"]) - rationalized

    init = [a for a in warm_start if a.startswith("sft.init_dir=")]
    proc = subprocess.run([PONDER, "sft", "configs/default.yaml", *init, f"data.train={export}", "sft.steps=3",
                           "sft.batch_size=8", f"sft.out_dir={tmp_path}/distilled", *tracking], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (tmp_path / "distilled" / "config.json").is_file()
    sft_run = client.get_run(mlflow.search_runs(experiment_names=["ponder"]).iloc[0].run_id)
    assert sft_run.info.run_id != star_run and sft_run.data.tags["ponder.dataset.sft.source_runs"] == star_run
    [given] = sft_run.inputs.dataset_inputs
    assert given.dataset.source and str(export) in given.dataset.source
    star_tags = client.get_run(star_run).data.tags
    assert star_tags[f"ponder.consumed_by.{sft_run.info.run_id}"] == f"sft {export}"
    assert any(k.startswith("ponder.export.") and str(export) in v for k, v in star_tags.items())
