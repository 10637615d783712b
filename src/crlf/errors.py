"""Exceptions the command line turns into clear messages and exit codes, and the checks that raise them."""


class UsageError(Exception):
    """Bad input from the user (flags, config, paths, data): printed without a traceback, exit code 2."""


class TrainingStopped(Exception):
    """Training cannot go on (non-finite loss, out of memory); the last good checkpoint is kept. Exit 1."""


class Interrupted(Exception):
    """SIGINT/SIGTERM: the current step finished and a checkpoint was written."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def did_you_mean(word: str, choices, otherwise: str = "", prefix: str = "") -> str:
    """`` Did you mean 'X'?`` for the choice closest to a mistyped ``word`` (difflib's ratio at least 0.6), spelled
    with ``prefix`` in front (``timm:``); ``otherwise`` when none is close. The one "did you mean" of every message:
    unknown flags, config sections and keys, choices, architectures, data sources."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{prefix}{close[0]}'?" if close else otherwise


def check(condition: bool, message: str) -> None:
    """A usage error (exit 2) unless ``condition``; ``message`` names the key and the fix."""
    if not condition:
        raise UsageError(message)


def check_choice(value: str, choices: tuple[str, ...], key: str) -> None:
    """``key`` must be one of ``choices``: a usage error listing them, with a "did you mean"."""
    if value not in choices:
        raise UsageError(f"{key} must be one of {', '.join(choices)}; got '{value}'.{did_you_mean(value, choices)}")
