"""Errors a user can cause or meet (bad input, bad config, bad checkpoint, a full disk, a diverging run): the
entry points print them as one line and exit with status 2, never as a traceback."""

from __future__ import annotations

import errno
import os

WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG})
"""The errors of a write that the user can fix: a full disk or quota, a directory that cannot be written."""


class UserError(Exception):
    """Base class of every error caused by the user's input or environment rather than by a bug."""


class CheckpointError(UserError):
    """A checkpoint is missing, corrupt, or does not match the configuration."""


class ConfigError(UserError):
    """A configuration value is invalid in a way the schema cannot express (e.g. an accelerator this machine
    does not have)."""


class WriteError(UserError):
    """A file could not be written (no space, permission denied, read-only file system).

    `intact` says which complete checkpoint the failure left behind, when there is one to name."""

    def __init__(self, path: str | os.PathLike | None, cause: OSError, intact: str | None = None) -> None:
        self.path, self.cause, self.intact = path, cause, intact
        super().__init__(self._message())

    def _message(self) -> str:
        what = str(self.path) if self.path else "an output file"
        reason = self.cause.strerror or str(self.cause)
        return f"could not write {what}: {reason}" + (f"; {self.intact}" if self.intact else "")

    def with_intact(self, intact: str) -> WriteError:
        """The same error, naming the checkpoint that is intact."""
        return WriteError(self.path, self.cause, intact)


class TrainingDiverged(UserError):
    """The loss or gradient norm stayed NaN/inf for too many consecutive steps; no update of those steps was
    applied."""


def is_write_error(err: BaseException) -> bool:
    """True for an OSError of a write the user can fix (see `WRITE_ERRNOS`)."""
    return isinstance(err, OSError) and err.errno in WRITE_ERRNOS
