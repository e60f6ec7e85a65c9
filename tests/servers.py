"""Real servers on 127.0.0.1 for the tests: `mlflow server`, PostgreSQL databases, an S3 endpoint (moto).

Each helper is a context manager that starts the real process (in its own process group), waits until it
answers, and stops it (SIGTERM, then SIGKILL) on exit. The fixtures in conftest.py share them per session.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
STARTUP_TIMEOUT_S = 180  # a PostgreSQL-backed server runs its schema migrations first: ~25 s on 2 busy cores


@dataclass
class Server:
    url: str
    log: Path
    client_env: dict[str, str] = field(default_factory=dict)  # what a client sets to use it (URI, credentials)
    backend_uri: str = ""
    artifacts: str = ""
    s3_env: dict[str, str] = field(default_factory=dict)  # the S3 endpoint behind it, if any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def background(command: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """The command in its own process group, output to `log`; the whole group is stopped on exit."""
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, **(env or {})})
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_until_up(url: str, process: subprocess.Popen, log: Path, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
    """Poll `url` until it answers (any HTTP status counts: an auth server answers 401); fail with the log."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not come up; last log lines:\n{log.read_text()[-3000:]}") from None
            time.sleep(0.5)


@contextlib.contextmanager
def mlflow_server(workdir: Path, backend_uri: str, artifacts: str, *, args: tuple[str, ...] = (),
                  env: dict[str, str] | None = None) -> Iterator[Server]:
    """`mlflow server` with proxied artifacts (`--artifacts-destination`), one worker, on a free port."""
    port = free_port()
    log = workdir / f"mlflow-server-{port}.log"
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
               "--artifacts-destination", artifacts, "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               *args]
    # Without the GenAI job runner (seven huey consumer processes): faster start, nothing we need.
    with background(command, log, {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})}) as process:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(f"{url}/health", process, log)
        yield Server(url, log, {"MLFLOW_TRACKING_URI": url}, backend_uri, artifacts)


# ---- PostgreSQL: the machine's cluster, a throwaway role and databases per test session ------------------------

def _as_postgres(*command: str) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return ["sudo", "-n", "-u", "postgres", *command]


def ensure_postgres_running() -> str:
    """Start the first PostgreSQL cluster (`pg_ctlcluster VERSION NAME start`) when it is down; return its port."""
    if shutil.which("pg_lsclusters") is None:
        raise RuntimeError("PostgreSQL is not installed: apt-get install -y postgresql (see docs/servers.md)")
    listing = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=True).stdout
    if not listing.strip():
        raise RuntimeError("no PostgreSQL cluster: pg_createcluster 15 main --start")
    version, name, port, status = listing.split()[:4]
    if status != "online":
        subprocess.run(["pg_ctlcluster", version, name, "start"], check=True, capture_output=True)
    return port


@contextlib.contextmanager
def postgres_databases(*names: str) -> Iterator[dict[str, str]]:
    """A new login role and one new database per name, owned by it; dropped on exit. name -> SQLAlchemy URI."""
    port = ensure_postgres_running()
    tag = secrets.token_hex(4)
    role, password = f"rain_test_{tag}", secrets.token_hex(12)

    def psql(sql: str) -> None:
        subprocess.run(_as_postgres("psql", "-p", port, "-v", "ON_ERROR_STOP=1", "-qc", sql), check=True,
                       capture_output=True, cwd="/")

    psql(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    databases = {name: f"{role}_{name}" for name in names}
    try:
        for database in databases.values():
            subprocess.run(_as_postgres("createdb", "-p", port, "-O", role, database), check=True,
                           capture_output=True, cwd="/")
        yield {name: f"postgresql+psycopg2://{role}:{password}@127.0.0.1:{port}/{database}"
               for name, database in databases.items()}
    finally:
        for database in databases.values():
            psql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        psql(f"DROP ROLE IF EXISTS {role}")


# ---- S3: moto in server mode --------------------------------------------------------------------------------------

S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "rain-test", "AWS_SECRET_ACCESS_KEY": "rain-test-secret",
                  "AWS_DEFAULT_REGION": "us-east-1"}


@contextlib.contextmanager
def s3_endpoint(workdir: Path, bucket: str) -> Iterator[dict[str, str]]:
    """moto's S3 server with `bucket` created; yields the environment an S3 client (the MLflow server) needs."""
    port = free_port()
    log = workdir / f"moto-{port}.log"
    with background([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], log) as process:
        endpoint = f"http://127.0.0.1:{port}"
        wait_until_up(endpoint, process, log, timeout_s=60)
        env = {"MLFLOW_S3_ENDPOINT_URL": endpoint, **S3_CREDENTIALS}
        s3_client(env).create_bucket(Bucket=bucket)
        yield env


def s3_client(env: dict[str, str]):
    import boto3

    return boto3.client("s3", endpoint_url=env["MLFLOW_S3_ENDPOINT_URL"], region_name=env["AWS_DEFAULT_REGION"],
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])


# ---- the CLI in-process against a server ---------------------------------------------------------------------------

@dataclass
class Outcome:
    code: int
    out: str
    err: str


def run_cli(env: dict[str, str], *args: str) -> Outcome:
    """`rain-mlflow ARGS` in this process (no 10 s import per call) with `env` set, stdout/stderr captured."""
    import mlflow

    from rain_mlflow.cli import main

    out, err = io.StringIO(), io.StringIO()
    previous_uri = mlflow.get_tracking_uri()
    clean = {key: None for key in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID",
                                   "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    with client_env({**clean, **env}), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            while mlflow.active_run():
                mlflow.end_run()
            mlflow.set_tracking_uri(previous_uri)
    return Outcome(code, out.getvalue(), err.getvalue())


# ---- one team's day against a server: train twice, compare, promote, test ------------------------------------------

@dataclass
class Stack:
    """What `train_compare_promote_test` did against one server: run ids by name and every command's output."""
    server: Server
    experiment: str
    runs: dict[str, str]
    outcomes: dict[str, Outcome]


def train_compare_promote_test(server: Server, csv: Path, experiment: str, workdir: Path) -> Stack:
    """Two tiny `smoke` runs (2 epochs, different seeds), then compare, promote and test, all through the CLI."""
    from mlflow.tracking import MlflowClient

    train = ["train", "--preset", "smoke", "--data", str(csv), "--train-epochs", "2", "--amp", "off",
             "--experiment", experiment]
    steps = {
        "train alpha": [*train, "--run-name", "alpha"],
        "train beta": [*train, "--run-name", "beta", "--seed", "7"],
        "compare": ["compare", "--experiment", experiment],
        # tiny data: the runs may carry flags (val/test divergence); which run wins is not the point here
        "promote": ["promote", "--experiment", experiment, "--allow-flagged", "true"],
        "test": ["test", "--experiment", experiment],
    }
    outcomes = {}
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        for name, args in steps.items():
            started = time.monotonic()
            outcomes[name] = outcome = run_cli(server.client_env, *args)
            # a transcript per command, kept with the session's tmp files (what a failing test looks at first)
            (workdir / f"{name.replace(' ', '-')}.txt").write_text(
                f"$ rain-mlflow {' '.join(args)}\n# exit {outcome.code} after {time.monotonic() - started:.1f} s"
                f"\n{outcome.out}\n--- stderr ---\n{outcome.err}")
            if outcome.code != 0:
                raise RuntimeError(f"{name} against {server.url} exited {outcome.code}:\n{outcome.out[-3000:]}\n"
                                   f"{outcome.err[-3000:]}\nserver log: {server.log}")
    finally:
        os.chdir(cwd)
    with client_env(server.client_env):
        client = MlflowClient(server.url)
        exp = client.get_experiment_by_name(experiment)
        runs = {run.info.run_name: run.info.run_id
                for run in client.search_runs([exp.experiment_id], "tags.`rain.step` = 'train'")}
    return Stack(server, experiment, runs, outcomes)


@contextlib.contextmanager
def client_env(env: dict[str, str | None]) -> Iterator[None]:
    """`env` set in os.environ for the block (None: unset); MLflow's client reads credentials from there."""
    saved = {key: os.environ.get(key) for key in env}
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
