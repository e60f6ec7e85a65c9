"""Errors the user can fix. The CLI turns each into exit code 2 and one `error:` line, no traceback."""


class UserError(Exception):
    """Bad input, bad parameter, incompatible file, unknown run or model: the user can fix it."""


class ConfigError(UserError):
    """A configuration value is invalid (names the field, the value and what is allowed)."""


class DataError(UserError):
    """The input data cannot be used (missing file, wrong columns, unusable values)."""


class CheckpointError(UserError):
    """A checkpoint file cannot be loaded into the model it was meant for."""
