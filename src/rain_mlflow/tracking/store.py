"""The tracking store: which one, whether it answers, and one clear sentence when it does not.

Every command reaches the store through `use_store()`, which checks it once per process before anything is
written, so a wrong or unreachable `MLFLOW_TRACKING_URI` costs one `error:` line that names it, within
`RAIN_MLFLOW_STORE_TIMEOUT_S` (default 20 s), instead of MLflow's retries: by default 7 HTTP retries with
exponential backoff (about 4 minutes) and, for a database it cannot open, 10 engine attempts (about 100 s).

- HTTP(S) and database servers: the first contact runs with 2 retries, a 5 s timeout per request and an overall
  deadline. After it, the process keeps MLflow's own environment variables, with bounded defaults set by the
  command line (`bound_http_retries`): a long artifact upload keeps the normal 120 s timeout.
- sqlite: the file is checked first (a directory, not a database, a folder that cannot be written), then the
  first contact creates or upgrades the schema under a lock file beside the database, because several processes
  migrating one new file at once corrupt each other ("duplicate column name", "Online migration expected...").
- Writes that meet sqlite's "database is locked" (several trainings on one file) are retried with backoff by
  `retry_locked`; the Tracker sends every write through it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from rain_mlflow.errors import UserError

log = logging.getLogger(__name__)
T = TypeVar("T")
NETWORK_SCHEMES = ("http", "https", "postgresql", "mysql", "mssql")
PROBE_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
              "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
# (MLflow is imported inside the functions: the command line imports this module before it knows it needs MLflow.)
# For the rest of a command: about 2 + 4 + 8 = 14 s of retries per failing request instead of about 4 minutes;
# the per-request timeout stays MLflow's 120 s so a large checkpoint upload is not cut off.
COMMAND_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2"}
DEFAULT_EXPERIMENT = "rain-timerxl"  # the experiment when neither --experiment nor MLFLOW_EXPERIMENT_NAME names one
LOCKED_RETRY_S = 60.0   # how long a write waits for other sqlite writers, on top of sqlite's own 20 s busy timeout

# (uri, user, password) -> None when it answered, else the problem: other credentials get their own answer
_checked: dict[tuple[str, str | None, str | None], str | None] = {}
lock_waits = 0                         # writes that waited for another sqlite writer (bench_sqlite_writers.py)


class StoreError(UserError):
    """The tracking store is unreachable, refuses us, or is not a store."""


def tracking_uri() -> str:
    """Where runs go: MLFLOW_TRACKING_URI, else `sqlite:///<cwd>/mlflow.db` (MLflow 3's default, made absolute)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return uri if uri else f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def shown(uri: str) -> str:
    """The URI without a password (`http://user:***@host`)."""
    return re.sub(r"//([^/@:]+):[^/@]*@", r"//\1:***@", uri)


def bound_http_retries() -> None:
    """Bounded MLflow HTTP retries for this process, unless the user set their own."""
    for key, value in COMMAND_HTTP.items():
        os.environ.setdefault(key, value)


def use_store() -> str:
    """Point MLflow at the store and make sure it answers (once per process); return the URI."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    key = _key(uri)
    if key not in _checked:
        _checked[key] = _first_contact(uri)
    if _checked[key]:
        raise StoreError(_checked[key])
    return uri


def reachable(uri: str | None = None) -> bool:
    """False when this process already found the store unreachable (then nobody should wait on it again)."""
    return not _checked.get(_key(uri or tracking_uri()))


def _key(uri: str) -> tuple[str, str | None, str | None]:
    return uri, os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")


def check_sqlite_file(uri: str) -> None:
    """The sqlite file checks of `use_store` alone, without importing MLflow (compare reads sqlite directly)."""
    problem = _sqlite_file_problem(uri)
    if problem:
        raise StoreError(f"tracking store {shown(uri)} {problem}; set MLFLOW_TRACKING_URI to a usable store")


def _first_contact(uri: str) -> str | None:
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme == "sqlite":
        problem = _sqlite_file_problem(uri)
        if problem:
            return f"tracking store {shown(uri)} {problem}; set MLFLOW_TRACKING_URI to a usable store"
        with _init_lock(uri):
            error = _contact(uri, deadline=None, attempts=3)
    elif scheme in NETWORK_SCHEMES:
        with _temporary_env(PROBE_HTTP):
            error = _contact(uri, deadline=float(os.environ.get("RAIN_MLFLOW_STORE_TIMEOUT_S", "20")), attempts=1)
    else:
        error = _contact(uri, deadline=None, attempts=1)
    return None if error is None else f"tracking store {shown(uri)} {error}"


def _contact(uri: str, deadline: float | None, attempts: int) -> str | None:
    """Ask the store for one experiment, in a thread so a silent host cannot hold us past `deadline`."""
    from mlflow.tracking import MlflowClient

    for attempt in range(attempts):
        outcome: dict[str, BaseException | None] = {}

        def ask() -> None:
            try:
                MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
                outcome["error"] = None
            except BaseException as exc:  # reported to the caller, never raised in the thread
                outcome["error"] = exc

        worker = threading.Thread(target=ask, daemon=True, name="rain-mlflow-store-check")
        worker.start()
        worker.join(deadline)
        if "error" not in outcome:
            return (f"did not answer within {deadline:g} s; check that the server is up and "
                    "MLFLOW_TRACKING_URI is right (RAIN_MLFLOW_STORE_TIMEOUT_S sets the wait)")
        if outcome["error"] is None:
            return None
        if attempt + 1 < attempts:  # sqlite: another process may have been mid-migration
            time.sleep(0.5 * (attempt + 1))
    return describe(outcome["error"])


def describe(exc: BaseException) -> str:
    """What went wrong with the store, in one sentence a user can act on."""
    text = " ".join(" ".join(str(e) for e in exception_chain(exc)).split())
    lowered = text.lower()
    if "connection refused" in lowered or "failed to establish a new connection" in lowered:
        return "is unreachable (connection refused); start the server or set MLFLOW_TRACKING_URI to a running one"
    if "timed out" in lowered or "timeout" in lowered:
        return "did not answer in time; check that the server is up and MLFLOW_TRACKING_URI is right"
    if "name or service not known" in lowered or "nodename nor servname" in lowered or "getaddrinfo" in lowered:
        return "has a host name that does not resolve; check MLFLOW_TRACKING_URI"
    if re.search(r"\b401\b|unauthorized|unauthenticated", lowered):
        return _credentials_problem()
    if re.search(r"\b403\b|permission denied", lowered):
        return "refused access (HTTP 403); this user lacks permission for the experiment or the store"
    if "unsupported uri" in lowered or "could not find a registered" in lowered:
        return ("is not a tracking URI MLflow understands; use sqlite:///mlflow.db, http(s)://host:port, "
                "postgresql://... or mysql://...")
    if "filesystem tracking backend" in lowered or "maintenance mode" in lowered:
        return ("is a file store (./mlruns), which MLflow 3 no longer opens; migrate it with "
                "`mlflow migrate-filestore` or use sqlite:///mlflow.db")
    if isinstance(exc, ModuleNotFoundError):
        return f"needs the Python package {exc.name!r}, which is not installed"
    if "out-of-date database schema" in lowered:
        return "has an old database schema; upgrade it with `mlflow db upgrade <uri>`"
    first = text[:300] or type(exc).__name__
    return f"cannot be used: {first}"


def _credentials_problem() -> str:
    """A server with basic-auth refuses every request without valid credentials: say which ones it got."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if user:
        return (f"refused user {user!r} (HTTP 401): MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD must be "
                f"valid credentials for it; got user {user!r}")
    got = "no user name" if os.environ.get("MLFLOW_TRACKING_PASSWORD") else "neither"
    return ("requires a login (HTTP 401): MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD must be set; "
            f"got {got}")


def store_error(exc: BaseException) -> StoreError | None:
    """A StoreError for a failed request to the store (gone, silent, refusing us); None for anything else."""
    from requests.exceptions import RequestException

    chain = list(exception_chain(exc))
    request_failed = any(isinstance(e, RequestException) or str(e).startswith("API request to") for e in chain)
    problem = describe(exc)
    if not request_failed or problem.startswith("cannot be used"):
        return None
    uri = tracking_uri()
    _checked[_key(uri)] = f"tracking store {shown(uri)} {problem}"
    return StoreError(_checked[_key(uri)])


def retry_locked(write: Callable[[], T], what: str) -> T:
    """Run a store write, waiting out sqlite's "database is locked" from other writers (with backoff)."""
    global lock_waits
    waited, delay = 0.0, 0.2
    while True:
        try:
            return write()
        except Exception as exc:
            if "database is locked" not in str(exc) or waited >= LOCKED_RETRY_S:
                raise
            lock_waits += 1
            log.debug("%s: database is locked, retrying in %.1f s", what, delay)
            time.sleep(delay)
            waited += delay
            delay = min(delay * 2, 5.0) * random.uniform(0.8, 1.2)


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and its causes / contexts, each once (the chain may loop)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _sqlite_path(uri: str) -> Path | None:
    path = uri.split("://", 1)[1] if "://" in uri else ""
    path = path[1:] if path.startswith("/") else path  # sqlite:///rel and sqlite:////abs
    return None if path in ("", ":memory:") else Path(path.split("?", 1)[0])


def _sqlite_file_problem(uri: str) -> str | None:
    path = _sqlite_path(uri)
    if path is None:
        return None
    if path.exists():
        if not path.is_file():
            return f"points at {str(path)!r}, which is not a file"
        with open(path, "rb") as fh:
            header = fh.read(16)
        if header and header != b"SQLite format 3\x00":
            return f"points at {str(path)!r}, which is not an SQLite database"
        if not os.access(path, os.R_OK | os.W_OK):
            return f"points at {str(path)!r}, which this user cannot read and write"
        return None
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        return f"cannot be created: {str(folder)!r} is a file, not a folder"
    try:  # os.access says yes to root everywhere; only a real file says whether the folder takes one
        fd, probe = tempfile.mkstemp(prefix=".rain-mlflow-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return f"cannot be created in {str(folder)!r}: {exc.strerror or exc}"
    return None


@contextlib.contextmanager
def _init_lock(uri: str) -> Iterator[None]:
    """Serialise the first contact (schema creation / migration) of processes sharing one sqlite file."""
    path = _sqlite_path(uri)
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; the retries in _contact cover the race
        fcntl = None  # type: ignore[assignment]
    if path is None or fcntl is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.init-lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def _temporary_env(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
