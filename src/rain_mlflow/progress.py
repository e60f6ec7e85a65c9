"""Progress of a long operation (a training run's epochs, a study's trials, the pipeline's steps).

Library functions never print: they return their results, and the command line prints them. A long operation
also reports while it runs, through the `Progress` its caller hands it. This one is silent (library callers and
tests); the command line hands `console.ConsoleProgress`, which prints to the terminal.
"""

from __future__ import annotations


class Progress:
    """Where a long operation's progress goes: nowhere, unless a subclass prints it."""

    def line(self, text: str) -> None:
        """A line of progress (standard output on a console)."""

    def heading(self, text: str) -> None:
        """A line that starts a section (printed in bold on a console)."""
        self.line(text)

    def warn(self, text: str) -> None:
        """A line about something that went wrong but did not stop the operation (standard error on a console)."""

    def lines(self, texts: list[str]) -> None:
        for text in texts:
            self.line(text)


SILENT = Progress()
