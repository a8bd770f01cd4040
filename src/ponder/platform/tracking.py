"""Experiment tracking: the only module that imports mlflow.

Default store: a SQLite database and an artifact directory under the working directory (no server needed); set
`tracking.uri` to use a tracking server. One run per training job: flattened config as params, resolved YAML as an
artifact, per-step metrics, sample rollouts, plots and the final model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ponder.platform.config import TrackingConfig


class Tracker:
    def __init__(self, cfg: TrackingConfig, params: dict[str, Any], config_yaml: str):
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
        self.run = mlflow.start_run(run_name=cfg.run_name)
        self.run_id = self.run.info.run_id
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

    def artifact_uri(self) -> str:
        return self.run.info.artifact_uri

    def finish(self, status: str = "FINISHED") -> None:
        self.mlflow.end_run(status=status)
