"""Errors a user can act on.

Every exception derived from :class:`UserError` is caught by the command line, printed as one line
(``muomni: error: ...``) and turned into exit code 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix: a config value, a path, an input. The message says what to do."""


class ConfigError(UserError):
    """A bad config file, key or value."""


class DataError(UserError):
    """A missing, empty, too small or undecodable corpus."""


class CheckpointError(UserError):
    """A missing, incomplete, corrupt or incompatible checkpoint."""


class InputError(UserError):
    """A bad prompt or sampling option given to generation."""
