"""The command line's side of the terminal: results and progress on stdout, warnings and the one `error:` line
on stderr, and the exit codes (README "When something fails")."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterable

import click

from rain_mlflow.errors import UserError
from rain_mlflow.progress import Progress
from rain_mlflow.tracking import interrupts
from rain_mlflow.tracking.store import bound_http_retries, store_error


def run(group: click.Group, argv: list[str] | None) -> None:
    """Run the command line and exit with what the package promises on failure.

    User errors and an unreachable store: exit code 2 and a single `error:` line. Ctrl-C / SIGTERM: exit 130 / 143,
    the run ended KILLED. Under `mlflow run`, a failure before our code attached to the launched run ends that run
    FAILED (KILLED) with the reason, so it is never left RUNNING.
    """
    setup_logging()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep logs readable
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # we print links to the training view
    bound_http_retries()
    try:
        with interrupts.handling():
            code = group.main(args=argv, prog_name="rain-mlflow", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:  # click wraps KeyboardInterrupt in Abort
        cause = exc.__cause__ if isinstance(exc, click.exceptions.Abort) and exc.__cause__ else exc
        reason = f"interrupted by {interrupts.signal_name(cause)}"
        _end_launched_run("KILLED", reason)
        fail(reason, interrupts.exit_code(cause))
    except click.ClickException as exc:
        _end_launched_run("FAILED", exc.format_message())
        fail(exc.format_message(), 2)
    except UserError as exc:
        _end_launched_run("FAILED", str(exc))
        fail(str(exc), 2)
    except Exception as exc:
        error = store_error(exc)
        if error is None:  # a bug: keep the traceback, but do not leave a launched run RUNNING
            _end_launched_run("FAILED", f"{type(exc).__name__}: {exc}")
            raise
        fail(str(error), 2)
    sys.exit(code if isinstance(code, int) else 0)


def _end_launched_run(status: str, reason: str) -> None:
    if os.environ.get("MLFLOW_RUN_ID"):
        from rain_mlflow.tracking.tracker import end_launched_run  # imports MLflow: only when launched by it

        end_launched_run(status, " ".join(reason.split()))


class ConsoleProgress(Progress):
    """A long operation's progress, printed as it happens."""

    def line(self, text: str) -> None:
        click.echo(text)

    def heading(self, text: str) -> None:
        click.secho(text, bold=True)

    def warn(self, text: str) -> None:
        click.echo(text, err=True)


def echo_lines(lines: Iterable[str]) -> None:
    """A command's result, one line each."""
    for line in lines:
        click.echo(line)


def setup_logging() -> None:
    """Our warnings and notes as `warning: ...` / `info: ...` lines on stderr; MLflow keeps its own format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LowercaseLevel("%(levelname)s: %(message)s"))
    ours = logging.getLogger("rain_mlflow")
    ours.handlers[:] = [handler]
    ours.setLevel(logging.INFO)
    ours.propagate = False
    # MLflow resolves a local path through two equivalent source classes and warns about it on every run.
    warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")


class _LowercaseLevel(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return super().format(logging.makeLogRecord({**record.__dict__, "levelname": record.levelname.lower()}))


def fail(message: str, code: int) -> None:
    """The one `error:` line (whitespace folded) and the exit code."""
    click.echo(f"error: {' '.join(message.split())}", err=True)
    sys.exit(code)
