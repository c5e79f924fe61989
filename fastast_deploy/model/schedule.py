"""ToMe r schedules: per-block r, clipped to what each block's token count allows, and the static token counts
that follow. Plain Python (no torch): the CLI, FLOP counts and reports use it as well as the model."""

from __future__ import annotations

from collections.abc import Sequence

from fastast_deploy.errors import ConfigError

PROTECTED_TOKENS = 2  # cls + dist


def check_r(values: Sequence[int]) -> tuple[int, ...]:
    """The one check of requested r values: ints >= 0."""
    values = tuple(int(v) for v in values)
    if any(v < 0 for v in values):
        raise ConfigError(f"ToMe r must be >= 0, got {list(values)}")
    return values


def pad_schedule(schedule: Sequence[int], depth: int) -> tuple[int, ...]:
    """A requested per-block schedule checked and padded with zeros to ``depth`` blocks."""
    values = check_r(schedule)
    if len(values) > depth:
        raise ConfigError(f"ToMe schedule has {len(values)} values but the model has {depth} blocks")
    return values + (0,) * (depth - len(values))


def make_schedule(r: int | Sequence[int], depth: int, inflection: float = 0.0) -> tuple[int, ...]:
    """Per-block r, as ToMe's ``parse_r``: an int with an inflection, or an explicit list.

    An int r with inflection 0 is constant; otherwise a linear ramp from ``int(r * (1 - inflection))`` to
    ``2r - that`` over the blocks (inflection -1: 2r down to 0; +1: 0 up to 2r). A list gives one value per block,
    exactly ``depth`` of them (a shorter one is refused, not padded: "8,8" for 4 blocks is more likely a mistake
    than "8,8,0,0").
    """
    if depth < 1:
        raise ConfigError(f"model depth must be >= 1, got {depth}")
    if isinstance(r, int):
        check_r([r])
        if not -1.0 <= inflection <= 1.0:
            raise ConfigError(f"ToMe inflection must be in [-1, 1], got {inflection}")
        if depth == 1:
            return (r,)
        lo = int(r * (1.0 - inflection))
        hi = 2 * r - lo
        step = (hi - lo) / (depth - 1)
        return tuple(int(lo + step * i) for i in range(depth))
    values = check_r(r)
    if len(values) != depth:
        example = ",".join(str(v) for v in (values + (0,) * depth)[:depth])
        raise ConfigError(f"ToMe r list has {len(values)} values but the model has {depth} blocks; give one value "
                          f"per block (such as {example}) or one int for every block")
    return values


def clip_schedule(num_tokens: int, schedule: Sequence[int]) -> tuple[int, ...]:
    """Clip each block's r to ``(N - 2) // 2`` for the N tokens that reach it, as ToMe does at run time."""
    clipped = []
    n = num_tokens
    for r in schedule:
        r = min(int(r), max((n - PROTECTED_TOKENS) // 2, 0))
        clipped.append(r)
        n -= r
    return tuple(clipped)


def token_counts(num_tokens: int, schedule: Sequence[int]) -> tuple[int, ...]:
    """Static token count entering each block and leaving the last: length ``len(schedule) + 1``."""
    counts = [num_tokens]
    for r in clip_schedule(num_tokens, schedule):
        counts.append(counts[-1] - r)
    return tuple(counts)
