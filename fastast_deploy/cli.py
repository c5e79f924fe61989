"""The ``fastast-deploy`` command line. Heavy and optional packages are imported inside commands, so that
``--help`` of every command works with only the core dependencies installed."""

from __future__ import annotations

import json
from typing import Any

import click

from . import __version__
from .errors import FastASTError


class _Group(click.Group):
    """Prints project errors on one line (``Error: ...``, exit 1); anything else is a bug and keeps its traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FastASTError as err:
            raise click.ClickException(str(err)) from None


def parse_r(value: str | None) -> int | list[int] | None:
    """``"16"`` -> 16, ``"16,8,0"`` -> [16, 8, 0], None stays None (the checkpoint's own schedule)."""
    if value is None:
        return None
    try:
        parts = [int(p) for p in value.split(",") if p.strip()]
    except ValueError:
        raise click.BadParameter(f"expected an int or a comma-separated list of ints, got {value!r}") from None
    if not parts:
        raise click.BadParameter("expected at least one value")
    if any(p < 0 for p in parts):
        raise click.BadParameter(f"r must be >= 0, got {value!r}")
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


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fastast-deploy")
def cli() -> None:
    """FastAST (AST + Token Merging) from a PyTorch checkpoint to verified TensorRT and ONNX Runtime engines.

    SOURCE, wherever a command takes one, is an original AST .pth, a Hugging Face AST directory, or this
    project's .safetensors checkpoint; `info` also takes tiny / small / base for an untrained model.
    """


@cli.command()
@click.argument("source")
@tome_options
@click.option("--labels", type=click.Path(dir_okay=False), default=None,
              help="AST class_labels_indices.csv giving label names (for an original .pth).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def info(source: str, tome_r: str | None, tome_inflection: float, frames: int | None, labels: str | None,
         as_json: bool) -> None:
    """Show a model's config, parameters, token count per layer and FLOPs with and without merging."""
    from .inspection import describe_model, format_description, model_for_info

    model = model_for_info(source, parse_r(tome_r), tome_inflection, frames, labels)
    report = describe_model(model)
    click.echo(json.dumps(report, indent=2) if as_json else format_description(report))


def main() -> None:
    cli(prog_name="fastast-deploy")
