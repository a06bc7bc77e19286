"""Errors a user can cause (bad input, bad config, bad checkpoint): the entry points print them as one
line and exit with status 2, never as a traceback."""


class UserError(Exception):
    """Base class of every error caused by the user's input rather than by a bug."""


class CheckpointError(UserError):
    """A checkpoint is missing, corrupt, or does not match the configuration."""


class ConfigError(UserError):
    """A configuration value is invalid in a way the schema cannot express."""
