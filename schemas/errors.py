"""The error family. Every user-facing failure is one of these, with a one-line message that says
what is wrong, the offending value, and how to fix it. CLIs print `error: <message>` and exit with
`EXIT_USAGE` (2); no traceback for user mistakes."""

EXIT_OK = 0
EXIT_FAILED = 1  # the command ran and found a problem (e.g. a `cpt-prep check` rule failed)
EXIT_USAGE = 2  # the input could not be used at all (bad config, unreadable manifest, missing file)


class CptError(Exception):
    """Base class: a user-facing error with a one-line message (problem, value, fix)."""


class ConfigError(CptError):
    """A config key or CLI flag is unknown or has a bad value."""


class InputError(CptError):
    """An input file or folder is missing, unreadable or of an unknown format."""


class TokenizerError(CptError):
    """A tokenizer cannot be loaded, or does not match the data or the model."""


class ManifestError(CptError):
    """A manifest or one of its shards is unreadable, unknown, missing or altered."""


class DataError(CptError):
    """The data cannot be used (e.g. nothing left after filtering, too few tokens for one window)."""


class TrainingError(CptError):
    """Training ran but cannot go on (e.g. too many optimizer steps skipped in a row); exit 1."""
