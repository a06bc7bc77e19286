"""User-facing data errors."""

from lightning_nmt.errors import UserError


class DataError(UserError):
    """A problem with the data the user can fix (missing file, malformed corpus, bad option).

    The message is a single line; the command-line entry points print it as ``error: <msg>``.
    """
