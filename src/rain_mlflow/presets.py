"""Moved to `rain_mlflow.config.presets`; this old path is the same module object, kept while code still imports it
from here."""

import sys

from rain_mlflow.config import presets as _presets

sys.modules[__name__] = _presets
