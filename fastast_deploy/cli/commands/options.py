"""Options and value parsing shared by several commands."""

from __future__ import annotations

from typing import Any

import click

from fastast_deploy.errors import ConfigError, FastASTError
from fastast_deploy.model.schedule import check_r


def parse_sizes(value: str, option: str, error: type[FastASTError] = ConfigError, minimum: int = 1) -> tuple[int, ...]:
    """``"1,8"`` -> (1, 8): comma-separated ints >= ``minimum`` for ``option``; ``error`` names the exit code."""
    try:
        sizes = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise error(f"{option} takes comma-separated ints, got {value!r}") from None
    if not sizes or min(sizes) < minimum:
        raise error(f"{option} takes values >= {minimum}, got {value!r}")
    return sizes


def parse_r(value: str | None) -> int | list[int] | None:
    """``"16"`` -> 16, ``"16,8,0"`` -> [16, 8, 0], None stays None (the checkpoint's own schedule)."""
    if value is None:
        return None
    try:
        parts = [int(p) for p in value.split(",") if p.strip()]
    except ValueError:
        raise ConfigError(f"ToMe r must be an int or a comma-separated list of ints, got {value!r}") from None
    if not parts:
        raise ConfigError("ToMe r needs at least one value")
    check_r(parts)
    return parts[0] if len(parts) == 1 and "," not in value else parts


def tome_options(func: Any) -> Any:
    """--tome-r / --tome-inflection / --frames, shared by the commands that build a model."""
    func = click.option("--frames", type=click.IntRange(min=1), default=None,
                        help="Input length in frames (positional embeddings adapted); default: the checkpoint's.")(func)
    func = click.option("--tome-inflection", type=click.FloatRange(-1.0, 1.0), default=0.0, show_default=True,
                        help="Linear r ramp: -1 goes from 2r down to 0, +1 from 0 up to 2r.")(func)
    func = click.option("--tome-r", "tome_r", default=None, metavar="R|R1,R2,...",
                        help="Tokens merged per block: one int, or one value per block. Default: the checkpoint's "
                        "schedule, else 0.")(func)
    return func
