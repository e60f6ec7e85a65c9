"""Reading station CSVs with clear errors, and writing files atomically (temp name, then rename)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from rain_mlflow.errors import DataError

# Placeholders station exports use for "no reading", on top of pandas' defaults ("", "NA", "NaN", "null", ...).
EXTRA_NA_TOKENS = ("-", "--", "---", "?", "S/D", "s/d")


def read_csv(path: str | os.PathLike, na_values: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a CSV as strings-or-numbers; every way it can be unusable is one DataError naming the file."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"data file {str(path)!r} does not exist")
    if not p.is_file():
        raise DataError(f"data file {str(path)!r} is not a file")
    if p.stat().st_size == 0:
        raise DataError(f"data file {str(path)!r} is empty")
    with open(p, "rb") as fh:
        head = fh.read(8192)
    if b"\x00" in head:
        raise DataError(f"data file {str(path)!r} is not a CSV text file (it contains binary data)")
    try:
        frame = pd.read_csv(p, na_values=list(EXTRA_NA_TOKENS) + list(na_values), low_memory=False,
                            skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise DataError(f"data file {str(path)!r} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"data file {str(path)!r} is not a readable CSV file: {reason}") from None
    if frame.empty:
        raise DataError(f"data file {str(path)!r} has a header but no rows")
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it onto `path` only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_csv_atomic(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, date_format="%Y-%m-%d %H:%M:%S")


def write_json_atomic(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
