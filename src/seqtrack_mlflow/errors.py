"""The project's own error types.

Every failure a user can cause (bad parameter, bad data file, bad checkpoint, missing token)
raises a subclass of `SeqTrackError` with a message that says what was wrong and what to do.
The CLI prints such an error as one line and exits with code 2; anything else is a bug and
keeps its traceback.
"""


class SeqTrackError(Exception):
    """Base class: a problem the user can fix, reported as one clear line."""


class ConfigError(SeqTrackError):
    """A configuration key, type or value is not allowed."""


class DataError(SeqTrackError):
    """A dataset file is missing, malformed or unreadable (the message names file and line)."""


class CheckpointError(SeqTrackError):
    """A checkpoint is missing, truncated, of the wrong format or not trusted."""


class StorageError(SeqTrackError, OSError):
    """A file could not be written or read: disk full, read-only or missing folder, a path
    through a regular file. The message names the path and the system's reason. Also an
    OSError, so callers that catch OSError keep working."""


def first_line(exc: BaseException) -> str:
    """An exception as one line of at most 300 characters (its type name if it has no text)."""
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def describe_os_error(exc: OSError, action: str = "write", path=None) -> str:
    """'cannot write /a/b: No space left on device (ENOSPC)': one line naming path and reason
    (`path` names the file when the error itself does not)."""
    import errno
    import os

    where = exc.filename if exc.filename is not None else (path if path is not None else "a file")
    reason = exc.strerror or str(exc) or type(exc).__name__
    code = f" ({errno.errorcode.get(exc.errno, exc.errno)})" if exc.errno else ""
    extra = f" -> {exc.filename2}" if exc.filename2 is not None else ""
    return f"cannot {action} {os.fspath(where)}{extra}: {reason}{code}"


class HubError(SeqTrackError):
    """A Hugging Face Hub operation failed (never contains the token)."""


class TrackingError(SeqTrackError):
    """An MLflow run or artifact that was asked for does not exist, or the tracking store
    cannot be reached or refused a write (the message names the store and the action)."""
