"""Exceptions the command line turns into clear messages and exit codes."""


class UsageError(Exception):
    """Bad input from the user (flags, config, paths, data): printed without a traceback, exit code 2."""


class TrainingStopped(Exception):
    """Training cannot go on (non-finite loss, out of memory); the last good checkpoint is kept. Exit 1."""


class Interrupted(Exception):
    """SIGINT/SIGTERM: the current step finished and a checkpoint was written."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
