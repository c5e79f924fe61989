"""The one exception family users see: the CLI prints it on one line and exits with its ``exit_code``; and the
one way to quote a library's exception inside such a message (``error_summary``)."""

from __future__ import annotations


class FastASTError(Exception):
    """A user-facing error: what failed, what was found vs expected, how to fix it."""

    exit_code = 1


class CheckpointError(FastASTError):
    """A checkpoint could not be read, recognised or matched to the model."""


class AudioError(FastASTError):
    """An audio file could not be read or turned into features."""


class ConfigError(FastASTError):
    """A model, ToMe or export setting is out of range."""


class DatasetError(FastASTError):
    """A dataset, label file or teacher-logits file does not fit what training needs."""


class UsageError(FastASTError):
    """Inputs, references and engines that cannot be used together as asked (exit code 2, click's usage code)."""

    exit_code = 2


class VerifyUsageError(UsageError):
    """Inputs, reference and engine that cannot be compared (exit code 2)."""


SUMMARY_LIMIT = 300  # characters of a library's message kept in one of ours


def error_summary(err: BaseException, *, with_type: bool = False, limit: int = SUMMARY_LIMIT) -> str:
    """A library's exception as one short line: its first non-empty line with whitespace collapsed (exporters
    and parsers write multi-page reports), cut to ``limit`` characters; the type name when the message is
    empty. ``with_type`` prefixes the type name ("DecodeError: ...")."""
    lines = [" ".join(line.split()) for line in str(err).splitlines()]
    text = next((line for line in lines if line), "")
    if len(text) > limit:
        text = text[: limit - 3].rstrip() + "..."
    name = type(err).__name__
    if not text:
        return name
    return f"{name}: {text}" if with_type else text


class UnreadableClipsError(AudioError):
    """Some clips of a data set or input folder could not be read, and the run was not told to go on without
    them (``--skip-unreadable``)."""


def unreadable_clips(failed: list[str], total: int, readable: int) -> UnreadableClipsError:
    """The one message of evaluate and verify when clips cannot be read: how many, the first (``path: reason``)
    and the fix. ``failed`` holds one ``path: reason`` per unreadable clip."""
    fix = ("fix or remove them" if not readable else
           f"fix or remove them, or pass --skip-unreadable to go on with the other {readable}")
    return UnreadableClipsError(f"{len(failed)} of {total} clips could not be read (first: {failed[0]}); {fix}")
