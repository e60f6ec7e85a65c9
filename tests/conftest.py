"""Shared fixtures: a real sqlite MLflow store per test, small synthetic data, the CLI run in-process, and real
servers (`mlflow server` with sqlite or PostgreSQL, S3 through moto, basic-auth) shared per session."""

from __future__ import annotations

import base64
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest


def _share_the_cores_between_workers() -> None:
    """Give each xdist worker (and the training processes it starts) its share of the cores.

    torch otherwise runs one OpenMP thread per core in every worker: two workers on two cores then fight over
    them and spin, which took 65 s where 35 s do for two `smoke` runs side by side. Runs before torch is imported;
    an explicit OMP_NUM_THREADS wins."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))


_share_the_cores_between_workers()

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


# ---- real servers on 127.0.0.1, shared per session by test_servers.py and test_browser.py --------------------------
# The helpers live in tests/servers.py; every process is started here and stopped when the session ends.

SERVER_EXPERIMENT = "rain-servers"
ADMIN_PASSWORD = "admin-password-for-tests"  # basic-auth wants 12 characters or more
ALICE = ("alice", "alice-password-for-tests")


def pytest_addoption(parser):
    parser.addoption("--artifacts", default=None, metavar="DIR",
                     help="keep test artifacts (browser screenshots) here [default: pytest's tmp directory]")


# ---- test lanes (pyproject: markers; docs/testing.md) ---------------------------------------------------------------

LANES = ("unit", "e2e", "server", "cuda")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: an unmarked test must not vanish silently from every lane
def pytest_collection_modifyitems(config, items):
    unmarked = [item.nodeid for item in items if not any(item.get_closest_marker(lane) for lane in LANES)]
    if unmarked:
        listed = "\n  ".join(unmarked[:20]) + (f"\n  ... and {len(unmarked) - 20} more" if len(unmarked) > 20 else "")
        raise pytest.UsageError(f"every test must be marked with one of the lanes {', '.join(LANES)} (module-level "
                                f"`pytestmark = pytest.mark.unit` or per test); unmarked:\n  {listed}")
    cuda_tests = [item for item in items if item.get_closest_marker("cuda")]
    if cuda_tests:
        import torch

        if not torch.cuda.is_available():
            skip = pytest.mark.skip(reason="needs a CUDA device; torch.cuda.is_available() is False here")
            for item in cuda_tests:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory) -> Path:
    """A few months of the synthetic record: a 2-epoch smoke run on it takes seconds."""
    from rain_mlflow.synth import SynthConfig, write_synthetic

    path = tmp_path_factory.mktemp("tiny") / "tiny.csv"
    write_synthetic(str(path), SynthConfig(years=0.3))
    return path


@pytest.fixture(scope="session")
def local_server(tmp_path_factory):
    """`mlflow server`: sqlite backend, artifacts proxied by the server into a local directory."""
    from tests import servers

    tmp = tmp_path_factory.mktemp("local-server")
    with servers.mlflow_server(tmp, f"sqlite:///{tmp / 'mlflow.db'}", str(tmp / "artifacts")) as server:
        yield server


@pytest.fixture(scope="session")
def team_server(tmp_path_factory):
    """The shape of docker/compose.yaml on this machine: PostgreSQL backend (a throwaway database), artifacts
    proxied into S3 (moto in server mode), basic-auth on with an admin and a user `alice` who trains."""
    import urllib.request

    from tests import servers

    tmp = tmp_path_factory.mktemp("team-server")
    auth_ini = tmp / "basic_auth.ini"
    auth_ini.write_text("[mlflow]\ndefault_permission = EDIT\n"
                        f"database_uri = sqlite:///{tmp / 'basic_auth.db'}\nadmin_username = admin\n"
                        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                        # without it every request pays a PBKDF2 password hash: ~1 s each on 2 busy cores
                        "auth_cache_ttl_seconds = 60\n")
    with servers.postgres_databases("tracking") as databases, servers.s3_endpoint(tmp, "mlflow") as s3:
        env = {**s3, "MLFLOW_AUTH_CONFIG_PATH": str(auth_ini), "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
               "MLFLOW_FLASK_SERVER_SECRET_KEY": "rain-test-secret-key"}
        with servers.mlflow_server(tmp, databases["tracking"], "s3://mlflow/artifacts",
                                   args=("--app-name", "basic-auth"), env=env) as server:
            request = urllib.request.Request(
                f"{server.url}/api/2.0/mlflow/users/create", method="POST",
                data=json.dumps({"username": ALICE[0], "password": ALICE[1]}).encode(),
                headers={"Content-Type": "application/json",
                         "Authorization": "Basic " + base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()})
            urllib.request.urlopen(request, timeout=30).close()
            server.client_env.update(MLFLOW_TRACKING_USERNAME=ALICE[0], MLFLOW_TRACKING_PASSWORD=ALICE[1])
            server.s3_env = s3
            yield server


@pytest.fixture(scope="session")
def local_stack(local_server, tiny_csv, tmp_path_factory):
    from tests import servers

    return servers.train_compare_promote_test(local_server, tiny_csv, SERVER_EXPERIMENT,
                                              tmp_path_factory.mktemp("local-stack"))


@pytest.fixture(scope="session")
def team_stack(team_server, tiny_csv, tmp_path_factory):
    from tests import servers

    return servers.train_compare_promote_test(team_server, tiny_csv, SERVER_EXPERIMENT,
                                              tmp_path_factory.mktemp("team-stack"))
