"""Shared fixtures: a real sqlite MLflow store per test, small synthetic data, and the CLI run in-process."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh sqlite tracking store in a temp dir; the working directory moves there too."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    while mlflow.active_run():
        mlflow.end_run()
    yield uri
    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture(scope="session")
def synthetic_csv(tmp_path_factory) -> Path:
    """Two years of the synthetic record (gaps, NaN runs and duplicates included)."""
    from rain_mlflow.synth import SynthConfig, write_synthetic

    path = tmp_path_factory.mktemp("data") / "synthetic.csv"
    write_synthetic(str(path), SynthConfig(years=2.0))
    return path


@pytest.fixture
def cli(capsys):
    """Run `rain-mlflow ARGS` in-process through the real entry point (exit code, stdout, stderr)."""
    from rain_mlflow.cli import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def assert_user_error(result: CliResult, *fragments: str) -> None:
    """Exit code 2, exactly one `error:` line mentioning every fragment, no traceback."""
    assert result.code == 2, (result.code, result.out, result.err)
    lines = error_lines(result.err)
    assert len(lines) == 1, result.err
    assert "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def run_env(tracking_uri: str) -> dict[str, str]:
    """Environment for a subprocess that uses this interpreter's rain-mlflow and the given store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env
