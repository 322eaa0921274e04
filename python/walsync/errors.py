"""The exceptions walsync raises. Each mirrors an exit code of the
``walsync`` command and carries the message it prints::

    try:
        ws.restore("app", "app.db")
    except walsync.RestoreError as e:     # exit code 6: e.g. the output exists
        print(e.exit_code, e)

Catch :class:`WalSyncError` for all of them. Ctrl-C during a call raises
Python's own ``KeyboardInterrupt`` (the call was cancelled and left nothing
half-written).
"""

from __future__ import annotations


class WalSyncError(Exception):
    """Base class of walsync's errors; raised itself for an unexpected
    error (exit code 1)."""

    #: The exit code of the ``walsync`` command for this class of error.
    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        #: The message, as the ``walsync`` command prints it.
        self.message = message


class ConfigError(WalSyncError):
    """A bad argument, config file or URL (exit code 2)."""

    exit_code = 2


class DatabaseError(WalSyncError):
    """A database is missing, not in WAL mode, or SQLite failed (exit
    code 3)."""

    exit_code = 3


class StorageError(WalSyncError):
    """Storage could not be reached or refused a request after retries:
    network, endpoint, bucket access (exit code 4)."""

    exit_code = 4


class CredentialsError(StorageError):
    """Storage refused the credentials: wrong, expired, or not allowed on
    the bucket. Retrying cannot help (exit code 4, a storage error)."""

    exit_code = 4


class IntegrityError(WalSyncError):
    """A replica is damaged: checksum mismatch, malformed LTX file, gap in
    the TXIDs (exit code 5)."""

    exit_code = 5


class RestoreError(WalSyncError):
    """Nothing to restore, nothing at that point in time, the output
    exists, or the replica changed under the call (exit code 6)."""

    exit_code = 6


class LocalFileError(WalSyncError):
    """A local file walsync writes cannot be written: a restore's output,
    walsync's own state or temporary files (exit code 7)."""

    exit_code = 7


__all__ = [
    "WalSyncError",
    "ConfigError",
    "DatabaseError",
    "StorageError",
    "CredentialsError",
    "IntegrityError",
    "RestoreError",
    "LocalFileError",
]
