"""The command line's side of the terminal: results and progress on stdout, warnings and the one `error:` line
on stderr (README "When something fails")."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterable

import click

from rain_mlflow.progress import Progress


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
