"""User-facing errors.

Every mistake a user can make (bad data, bad flags, bad checkpoint) raises a subclass of
`ReptorchError` whose message is one line naming the file, field or value and how to fix it.
The CLI prints that line and exits non-zero, without a traceback.
"""


class ReptorchError(Exception):
    """A user-facing error: one line that names the problem and the fix."""


class ConfigError(ReptorchError):
    """An invalid option or combination of options."""


class DataError(ReptorchError):
    """Missing, incomplete or corrupt data."""


class CheckpointError(ReptorchError):
    """A missing, corrupt or incompatible checkpoint."""


class RunStopped(ReptorchError):
    """A run stopped by a signal, its checkpoint written; exits with 128 + the signal number."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum
