"""Moved to `rain_mlflow.config.presets`; this old path is the same module object, kept while code still imports it
from here."""

import sys
from typing import TYPE_CHECKING

from rain_mlflow.config import presets as _presets

if TYPE_CHECKING:  # what the type checker reads at this path
    from rain_mlflow.config.presets import *  # noqa: F403

sys.modules[__name__] = _presets
