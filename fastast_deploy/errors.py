"""The one exception family users see: the CLI prints it on one line and exits non-zero."""


class FastASTError(Exception):
    """A user-facing error: what failed, what was found vs expected, how to fix it."""

    exit_code = 1


class CheckpointError(FastASTError):
    """A checkpoint could not be read, recognised or matched to the model."""


class AudioError(FastASTError):
    """An audio file could not be read or turned into features."""


class ConfigError(FastASTError):
    """A model, ToMe or export setting is out of range."""
