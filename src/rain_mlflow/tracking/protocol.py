"""What the library needs of a run's tracker (`RunTracker`), and a tracker that writes nowhere (`NullTracker`).

`tracker.Tracker` is the real one (MLflow). Library code (the trainer, resume, `test`) is typed against
`RunTracker`, so it never reaches into MLflow itself. `NullTracker` keeps what it is given in memory: reads
(`tags`, `params`, `logged_steps`) answer as a store would, which lets the per-epoch tracking run without one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from rain_mlflow.diagnostics.rules import Finding
from rain_mlflow.diagnostics.tags import diagnosis_tags, tag_changes
from rain_mlflow.diagnostics.thresholds import Thresholds


@runtime_checkable
class RunTracker(Protocol):
    """One run's record: params, per-step metrics, tags, artifacts and the serving model."""

    run_id: str
    experiment_id: str

    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def set_tags(self, tags: dict[str, str]) -> None: ...

    def set_note(self, text: str) -> None: ...

    def set_diagnosis(self, findings: list[Finding], thresholds: Thresholds | None = None) -> None: ...

    def current_diagnosis(self) -> str: ...

    def tags(self) -> dict[str, str]: ...

    def params(self) -> dict[str, str]: ...

    def logged_steps(self, key: str) -> set[int]: ...

    def log_artifact(self, path: str | os.PathLike, artifact_dir: str | None = None) -> None: ...

    def log_dict(self, obj: Any, artifact_file: str) -> None: ...

    def log_text(self, text: str, artifact_file: str) -> None: ...

    def log_figure(self, figure: Any, artifact_file: str) -> None: ...

    def log_input(self, frame: Any, source: str, name: str, context: str) -> str: ...

    def log_model(self, checkpoint_path: Path, window: int, n_vars: int, input_example: Any,
                  step: int) -> str | None: ...

    def download_artifact(self, artifact_path: str, dst_dir: str | None = None) -> Path: ...


class NullTracker:
    """A `RunTracker` that writes nowhere and remembers what it was given (for library use and tests)."""

    def __init__(self, run_id: str = "", experiment_id: str = ""):
        self.run_id, self.experiment_id = run_id, experiment_id
        self.logged_params: dict[str, str] = {}
        self.metrics: dict[str, dict[int, float]] = {}        # key -> step -> value
        self._tags: dict[str, str] = {}
        self.artifacts: list[str] = []                         # artifact paths, as the store would list them

    def log_params(self, params: dict[str, Any]) -> None:
        self.logged_params.update({k: str(v) for k, v in params.items() if k not in self.logged_params})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            if value is not None:
                self.metrics.setdefault(key, {})[int(step)] = float(value)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._tags.update({k: str(v) for k, v in tags.items()})

    def set_note(self, text: str) -> None:
        self.set_tags({"mlflow.note.content": text})

    def set_diagnosis(self, findings: list[Finding], thresholds: Thresholds | None = None) -> None:
        changed, stale = tag_changes(self._tags, diagnosis_tags(findings, thresholds))
        self._tags.update(changed)
        for key in stale:
            self._tags.pop(key, None)

    def current_diagnosis(self) -> str:
        return self._tags.get("diagnosis", "ok")

    def tags(self) -> dict[str, str]:
        return dict(self._tags)

    def params(self) -> dict[str, str]:
        return dict(self.logged_params)

    def logged_steps(self, key: str) -> set[int]:
        return set(self.metrics.get(key, {}))

    def log_artifact(self, path: str | os.PathLike, artifact_dir: str | None = None) -> None:
        self._artifact(artifact_dir, Path(path).name)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        self.artifacts.append(artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.artifacts.append(artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self.artifacts.append(artifact_file)

    def log_input(self, frame: Any, source: str, name: str, context: str) -> str:
        return ""  # no dataset is recorded, so there is no digest to report

    def log_model(self, checkpoint_path: Path, window: int, n_vars: int, input_example: Any,
                  step: int) -> str | None:
        return None

    def download_artifact(self, artifact_path: str, dst_dir: str | None = None) -> Path:
        raise FileNotFoundError(f"a NullTracker keeps no files; {artifact_path!r} was never stored")

    def _artifact(self, folder: str | None, name: str) -> None:
        self.artifacts.append(f"{folder}/{name}" if folder else name)
