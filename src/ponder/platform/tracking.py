"""Experiment tracking: the only module that imports mlflow.

Default store: a SQLite database and an artifact directory under the working directory (no server needed); set
`tracking.uri` to use a tracking server. One run per training job, and the system of record for it: flattened config
as params, resolved YAML as an artifact, lineage tags (datasets and their hashes, reward versions, git commit, Ponder
version; platform/lineage.py), per-step metrics, sample rollouts, plots, the checkpoints' URIs (tags
`ponder.checkpoint.dir` / `ponder.checkpoint.latest`, so that `--resume RUN_ID` finds them) and the final model, as an
artifact and registered as a model version (so that `ponder eval --run RUN_ID` finds it). A resumed job continues its
run: same run id, metrics from the checkpoint's step on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ponder.platform.config import TrackingConfig


CHECKPOINT_DIR_TAG, LATEST_CHECKPOINT_TAG = "ponder.checkpoint.dir", "ponder.checkpoint.latest"
FINAL_MODEL = "final_model"


class Tracker:
    def __init__(self, cfg: TrackingConfig, params: dict[str, Any], config_yaml: str, run_id: str | None = None):
        """A new run, or with `run_id` the run of a job being resumed (its params and config are already there)."""
        import mlflow

        self.mlflow = mlflow
        if cfg.uri.startswith("sqlite:///") and not cfg.uri.startswith("sqlite:////"):
            Path(cfg.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(cfg.uri)
        experiment = mlflow.get_experiment_by_name(cfg.experiment)
        if experiment is None:
            location = cfg.artifact_location
            if location and "://" not in location:
                location = Path(location).resolve().as_uri()
            mlflow.create_experiment(cfg.experiment, artifact_location=location or None)
        mlflow.set_experiment(cfg.experiment)
        self.cfg = cfg
        self.run = mlflow.start_run(run_id=run_id) if run_id else mlflow.start_run(run_name=cfg.run_name)
        self.run_id = self.run.info.run_id
        if run_id:
            return
        items = [(k, str(v)[:500]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per call
            mlflow.log_params(dict(items[i : i + 100]))
        mlflow.log_text(config_yaml, "config.yaml")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics({k.replace("@", "_at_"): float(v) for k, v in metrics.items()}, step=step)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.mlflow.log_text(text, artifact_file)

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        if Path(path).is_dir():
            self.mlflow.log_artifacts(path, artifact_path)
        else:
            self.mlflow.log_artifact(path, artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.mlflow.set_tags(tags)

    def register_model(self, name: str) -> str:
        """The run's final_model artifact as a new version of registered model `name`; returns the version."""
        client = self.mlflow.tracking.MlflowClient()
        if not client.search_registered_models(filter_string=f"name = '{name}'"):
            client.create_registered_model(name, description="Policies trained by Ponder")
        version = client.create_model_version(name, source=f"{self.run.info.artifact_uri}/{FINAL_MODEL}",
                                              run_id=self.run_id, tags={"ponder.run_id": self.run_id})
        self.mlflow.set_tag("ponder.registered_model", f"{name}/{version.version}")
        return version.version

    def log_dataset(self, source: str, digest: str, rows: int, context: str, source_runs: list[str]) -> None:
        """A file or s3:// dataset as an MLflow dataset input of this run (`context`: train, eval, sft), and, for a
        dataset exported from other runs (`source_runs`, from its rows' traces), lineage both ways: this run is
        tagged with them and each of them with this run (`ponder.consumed_by.<run id>`)."""
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.exceptions import MlflowException

        try:
            dataset = MetaDataset(resolve_dataset_source(source), name=Path(source.rstrip("/")).name, digest=digest[:12])
        except MlflowException:  # not a path or URI MLflow knows (an embedded generator): the lineage tags say it
            return
        self.mlflow.log_input(dataset, context=context, tags={"ponder.rows": str(rows)})
        if source_runs:
            self.mlflow.set_tag(f"ponder.dataset.{context}.source_runs", ",".join(source_runs))
        client = self.mlflow.tracking.MlflowClient()
        for run_id in source_runs:
            client.set_tag(run_id, f"ponder.consumed_by.{self.run_id}", f"{context} {source}")

    def artifact_uri(self) -> str:
        return self.run.info.artifact_uri

    def finish(self, status: str = "FINISHED") -> None:
        self.mlflow.end_run(status=status)


def _client(cfg: TrackingConfig):
    import mlflow

    mlflow.set_tracking_uri(cfg.uri)
    return mlflow.tracking.MlflowClient()


def _run(cfg: TrackingConfig, run_id: str):
    from mlflow.exceptions import MlflowException

    try:
        return _client(cfg).get_run(run_id)
    except MlflowException as e:
        raise LookupError(f"no MLflow run {run_id!r} in {cfg.uri} ({str(e).splitlines()[0]}); check the id and "
                          "tracking.uri") from None


def checkpoint_of_run(cfg: TrackingConfig, run_id: str) -> str:
    """The run's checkpoint root (its store knows the latest complete checkpoint better than a tag written after it)."""
    tags = _run(cfg, run_id).data.tags
    uri = tags.get(CHECKPOINT_DIR_TAG) or tags.get(LATEST_CHECKPOINT_TAG)
    if not uri:
        raise LookupError(f"MLflow run {run_id} has no checkpoints recorded (tag {LATEST_CHECKPOINT_TAG})")
    return uri


def download_model_of_run(cfg: TrackingConfig, run_id: str, dest: str) -> str:
    """The run's registered model version (or, if none was registered, its final_model artifact), downloaded into
    `dest`; returns the local directory."""
    import mlflow

    _run(cfg, run_id)
    client = _client(cfg)
    versions = client.search_model_versions(f"run_id = '{run_id}'")
    source = max(versions, key=lambda v: int(v.version)).source if versions else None
    if source is None:
        if FINAL_MODEL not in {a.path for a in client.list_artifacts(run_id)}:
            raise LookupError(f"MLflow run {run_id} has no registered model and no {FINAL_MODEL} artifact "
                              "(trainer.save_final_model was false, or the run did not finish)")
        source = f"{_run(cfg, run_id).info.artifact_uri}/{FINAL_MODEL}"
    return mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=dest)


TRACES_DIR = "traces"


def traces_of_run(cfg: TrackingConfig, run_id: str, dest: str) -> tuple[list[dict], dict[str, str]]:
    """Every trace the run logged (`traces/step_N.jsonl`, in step order) and the run's tags."""
    import json

    run = _run(cfg, run_id)
    client = _client(cfg)
    names = [a.path for a in client.list_artifacts(run_id, TRACES_DIR)]
    if not names:
        raise LookupError(f"MLflow run {run_id} logged no traces (trainer.save_traces was false, or it trained no "
                          "step yet)")
    traces = []
    for name in sorted(names):
        path = client.download_artifacts(run_id, name, dest)
        traces += [json.loads(line) for line in Path(path).read_text().splitlines() if line]
    return traces, dict(run.data.tags)


def record_export(cfg: TrackingConfig, run_id: str, uri: str, digest: str, rows: int) -> None:
    """Tag the exporting run with what was exported from it (`ponder.export.<digest>`)."""
    _client(cfg).set_tag(run_id, f"ponder.export.{digest[:12]}", f"{uri} rows={rows}")
