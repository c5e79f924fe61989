"""Commands on models: info, export, lint."""

from __future__ import annotations

import json
from pathlib import Path

import click

from fastast_deploy.cli.commands.options import parse_r, tome_options
from fastast_deploy.errors import ConfigError


@click.command()
@click.argument("source")
@tome_options
@click.option("--labels", type=click.Path(dir_okay=False), default=None,
              help="AST class_labels_indices.csv giving label names (for an original .pth).")
@click.option("--mel-bins", type=click.IntRange(min=16), default=None,
              help="Mel bins of a new model (tiny / small / base) [default: 128].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def info(source: str, tome_r: str | None, tome_inflection: float, frames: int | None, labels: str | None,
         mel_bins: int | None, as_json: bool) -> None:
    """Show a model's config, parameters, token count per layer and FLOPs with and without merging.

    SOURCE may be tiny / small / base for a new model, of --frames x --mel-bins inputs."""
    from fastast_deploy.cli.info import describe_model, format_description, model_for_info

    model = model_for_info(source, parse_r(tome_r), tome_inflection, frames, labels, mel_bins)
    report = describe_model(model)
    click.echo(json.dumps(report, indent=2) if as_json else format_description(report))


@click.command()
@click.argument("source")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="The .onnx file to write (a JSON sidecar is written beside it as OUTPUT.json).")
@tome_options
@click.option("--tome-schedule", default=None, metavar="R1,R2,...",
              help="Explicit r for each block (same as a list given to --tome-r).")
@click.option("--no-prop-attn", is_flag=True, help="Turn proportional attention off.")
@click.option("--merge-impl", type=click.Choice(["matmul", "scatter"]), default="matmul", show_default=True,
              help="matmul: one-hot MatMul scatter-add, native in TensorRT; scatter: ScatterElements(add), which "
              "TensorRT runs only through a plugin.")
@click.option("--batch", type=click.IntRange(min=1), default=None,
              help="A static batch size; by default the batch dimension is dynamic.")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="fp16: fp16 weights and compute, merge decisions and weighted merges in fp32, float32 I/O.")
@click.option("--opset", type=click.IntRange(18, 23), default=18, show_default=True)
@click.option("--debug-merges", is_flag=True, help="Add each merging block's source / destination positions as "
              "outputs merge{i}_src / merge{i}_dst, for parity debugging.")
@click.option("--no-check", is_flag=True, help="Skip the ONNX Runtime parity check against PyTorch.")
@click.option("--labels", type=click.Path(dir_okay=False), default=None,
              help="AST class_labels_indices.csv giving label names (for an original .pth).")
def export(source: str, output: Path, tome_r: str | None, tome_inflection: float, frames: int | None,
           tome_schedule: str | None, no_prop_attn: bool, merge_impl: str, batch: int | None, precision: str,
           opset: int, debug_merges: bool, no_check: bool, labels: str | None) -> None:
    """Export SOURCE to a static-shape, plugin-free ONNX model and check it against PyTorch."""
    from fastast_deploy.checkpoints.native import load_model
    from fastast_deploy.exporters.lint import format_report, lint_model
    from fastast_deploy.exporters.onnx_export import ExportOptions, export_onnx, parity_summary
    from fastast_deploy.files import prepare_output

    if tome_r is not None and tome_schedule is not None:
        raise ConfigError("give either --tome-r or --tome-schedule, not both")
    options = ExportOptions(opset=opset, batch=batch, precision=precision, debug_merges=debug_merges)
    prepare_output(output)  # fail on a bad output path before the slow part
    r = parse_r(tome_schedule) if tome_schedule is not None else parse_r(tome_r)
    if isinstance(r, int) and tome_schedule is not None:
        r = [r]
    model = load_model(source, tome_r=r, tome_inflection=tome_inflection, prop_attn=False if no_prop_attn else None,
                       input_frames=frames, merge_impl=merge_impl, labels=labels)
    requested = model.tome.per_block(model.config.depth)
    if requested != model.schedule:
        pairs = enumerate(zip(requested, model.schedule, strict=True))
        clipped = [f"block {i}: {a} -> {b}" for i, (a, b) in pairs if a != b]
        click.echo(f"note: r clipped to what each block's token count allows ({'; '.join(clipped)})", err=True)
    result = export_onnx(model, output, options, check=not no_check)
    report = lint_model(result.path, tensorrt=10)
    if report.errors or report.warnings:
        click.echo(format_report(report), err=True)
    counts = model.token_counts
    click.echo(f"wrote {result.path} ({result.path.stat().st_size / 2**20:.1f} MiB, {precision}, opset {opset}, "
               f"batch {batch or 'dynamic'}) and {result.sidecar.name}")
    click.echo(f"tokens {counts[0]} -> {counts[-1]} with r per block {list(model.schedule)}, merge {merge_impl}")
    if result.parity:
        click.echo(f"parity vs PyTorch on ONNX Runtime CPU: {parity_summary(result.parity)}")


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--tensorrt", type=click.Choice(["10", "11"]), default="10", show_default=True,
              help="TensorRT major version whose ONNX parser table to check against.")
@click.option("--allow-plugins", is_flag=True, help="Report nodes that need a TensorRT plugin as warnings.")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
def lint(model: str, tensorrt: str, allow_plugins: bool, as_json: bool) -> None:
    """Check MODEL.onnx against what TensorRT's ONNX parser runs natively; exit 1 where a build would fail."""
    from dataclasses import asdict

    from fastast_deploy.exporters.lint import format_report, lint_model

    report = lint_model(model, tensorrt=int(tensorrt), allow_plugins=allow_plugins)
    if as_json:
        click.echo(json.dumps({"tensorrt": report.tensorrt, "failed": report.failed,
                               "findings": [asdict(f) for f in report.findings]}, indent=2))
    else:
        click.echo(format_report(report))
    if report.failed:
        raise SystemExit(1)
