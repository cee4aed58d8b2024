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


class HubError(SeqTrackError):
    """A Hugging Face Hub operation failed (never contains the token)."""


class TrackingError(SeqTrackError):
    """An MLflow run or artifact that was asked for does not exist."""


class NotImplementedYet(SeqTrackError):
    """An entry point whose issue has not landed yet."""
