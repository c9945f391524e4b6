"""The project's user-facing errors.

Everything a user can get wrong (a setting, a data file, a workdir) raises a
subclass of `UserError` with one message that names the setting or file and
what is allowed. The command line catches `UserError` only: it prints the
message on one line and exits with status 2. Any other
exception is a bug in the code and keeps its traceback.

The library's constructors (`get_schedule`, `get_sampler`, the losses, ...)
raise plain `ValueError`s naming their arguments; config validation builds
those components and re-raises their errors as `ConfigError` with the
setting's config path (`configuration.py`).
"""

from __future__ import annotations

__all__ = ["UserError", "ConfigError", "DataError", "NonFiniteError"]


class UserError(Exception):
  """Something the user can fix; the CLI prints its message as one line."""


class ConfigError(UserError, ValueError):
  """A setting (a config field, a flag or a workdir) is not valid."""


class DataError(UserError, ValueError):
  """A data source cannot be read: a missing or empty folder, a corrupt file."""


class NonFiniteError(UserError, RuntimeError):
  """Training stopped after too many consecutive non-finite updates."""
