"""Options and value parsing shared by several commands."""

from __future__ import annotations

import math
from typing import Any

import click
from click.core import ParameterSource

from fastast_deploy.contract import MAX_BATCH, MAX_CLIPS, MAX_THREADS, PROVIDERS
from fastast_deploy.errors import ConfigError, FastASTError, UsageError
from fastast_deploy.inference.scoring import DEFAULT_BATCH
from fastast_deploy.model.config import LIMITS
from fastast_deploy.model.schedule import check_r

# Bounded option types, one per kind of value, for every command that takes one (limits: contract.py).
BATCH = click.IntRange(1, MAX_BATCH)  # export --batch, build-engine --min/opt/max-batch, verify --batch, bench --batch
CLIPS = click.IntRange(1, MAX_CLIPS)  # generated inputs: verify --num
THREADS = click.IntRange(0, MAX_THREADS)  # intra-op threads, 0 the runtime's default: build-engine
# An input length in frames: the bound of every model (ModelConfig); a model's own lower bound (one patch) is checked
# with the model, whose message says which patch: export, info, bench, train --frames.
FRAMES = click.IntRange(1, LIMITS["input_frames"])
SOME_THREADS = click.IntRange(1, MAX_THREADS)  # threads where leaving the option out means the default: predict, ...


class FiniteFloat(click.ParamType):
    """A finite float within [min, max]: FloatRange lets NaN through (it compares false with every bound), and a
    threshold of NaN fails every check it sets, one of inf passes every one."""

    name = "float"

    def __init__(self, min: float | None = None, max: float | None = None) -> None:
        self.min, self.max = min, max

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        number = click.FLOAT.convert(value, param, ctx)
        low = -math.inf if self.min is None else self.min
        high = math.inf if self.max is None else self.max
        if not math.isfinite(number) or not low <= number <= high:
            self.fail(f"{value!r} is not a finite number from {low:g} to {high:g}", param, ctx)
        return number


def given_options(ctx: click.Context, names: Any = None) -> list[str]:
    """The options of ``ctx``'s command that were set on the command line (of ``names``, parameter names, when
    given), as their longest flag (``--speed-batches``): for a command to refuse options that would be ignored."""
    return [max(p.opts, key=len) for p in ctx.command.params
            if (names is None or p.name in names) and ctx.get_parameter_source(p.name) == ParameterSource.COMMANDLINE]


def parse_sizes(value: str, option: str, error: type[FastASTError] = ConfigError, minimum: int = 1,
                maximum: int = MAX_BATCH) -> tuple[int, ...]:
    """``"1,8"`` -> (1, 8): comma-separated ints in ``minimum..maximum`` for ``option``; ``error`` names the exit
    code."""
    parts = value.split(",")
    if len(parts) > 1 and not all(p.strip() for p in parts):
        raise error(f"{option} has an empty value in {value!r}; give comma-separated ints such as 1,8")
    try:
        sizes = tuple(int(v) for v in parts if v.strip())
    except ValueError:
        raise error(f"{option} takes comma-separated ints, got {value!r}") from None
    if not sizes or min(sizes) < minimum or max(sizes) > maximum:
        raise error(f"{option} takes values from {minimum} to {maximum}, got {value!r}")
    return sizes


def parse_r(value: str | None) -> int | list[int] | None:
    """``"16"`` -> 16, ``"16,8,0"`` -> [16, 8, 0], None stays None (the checkpoint's own schedule). An empty value
    ("8,,8", "8,") is an error; a list's length is checked against the model's blocks where it is built.
    ``"@DIR/tune.json"`` (or ``"@DIR"``) -> the per-block schedule `tune` chose there."""
    if value is None:
        return None
    if value.startswith("@"):
        from fastast_deploy.evaluation.tune_report import tuned_schedule

        return tuned_schedule(value[1:])
    if "," in value and not all(p.strip() for p in value.split(",")):
        raise UsageError(f"ToMe r has an empty value in {value!r}; give one int, or one int per block such as "
                          "8,8,0,0")
    try:
        parts = [int(p) for p in value.split(",") if p.strip()]
    except ValueError:
        raise UsageError(f"ToMe r must be an int or a comma-separated list of ints, got {value!r}") from None
    if not parts:
        raise UsageError("ToMe r needs at least one value")
    try:
        check_r(parts)
    except ConfigError as err:
        raise UsageError(str(err)) from None
    return parts[0] if len(parts) == 1 and "," not in value else parts


def tome_options(func: Any) -> Any:
    """--tome-r / --tome-inflection / --frames, shared by the commands that build a model."""
    func = click.option("--frames", type=FRAMES, default=None,
                        help="Input length in frames (positional embeddings adapted); default: the checkpoint's.")(func)
    func = click.option("--tome-inflection", type=click.FloatRange(-1.0, 1.0), default=0.0, show_default=True,
                        help="Linear r ramp: -1 goes from 2r down to 0, +1 from 0 up to 2r.")(func)
    func = click.option("--tome-r", "tome_r", default=None, metavar="R|R1,R2,...",
                        help="Tokens merged per block: one int, or one value per block. Default: the checkpoint's "
                        "schedule, else 0.")(func)
    return func


def runner_options(func: Any) -> Any:
    """--batch (windows per call), --provider and --threads of the commands that score audio windows through one
    runner (predict, analyze)."""
    func = click.option("--threads", type=SOME_THREADS, default=None,
                        help="ONNX Runtime intra-op threads for an engine, torch threads for a checkpoint [default: "
                        "their own choice].")(func)
    func = click.option("--provider", type=click.Choice(list(PROVIDERS)), default=None,
                        help="ONNX Runtime provider for an exported .onnx [default: cpu].")(func)
    return click.option("--batch", type=BATCH, default=None,
                        help=f"Windows per inference call [default: the engine's largest batch, {DEFAULT_BATCH} "
                        "where it has none].")(func)
