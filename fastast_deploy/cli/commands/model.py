"""Commands on models: info, export, lint."""

from __future__ import annotations

import json
from pathlib import Path

import click

from fastast_deploy.cli.commands.options import BATCH, parse_r, tome_options
from fastast_deploy.contract import INPUT_NAME, INPUT_NAMES, PRECISIONS, sidecar_path
from fastast_deploy.errors import ConfigError
from fastast_deploy.exporters.quantize import QuantizeOptions
from fastast_deploy.files import check_outputs_apart, json_text, prepare_output


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
    click.echo(json_text(report) if as_json else format_description(report))


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
@click.option("--batch", type=BATCH, default=None,
              help="A static batch size; by default the batch dimension is dynamic.")
@click.option("--precision", type=click.Choice(list(PRECISIONS)), default="fp32", show_default=True,
              help="fp16: fp16 weights and compute, merge decisions and weighted merges in fp32, float32 I/O. "
              "int8: Q/DQ int8 MatMul/Gemm/Conv calibrated on --calib, everything else (merging included) fp32.")
@click.option("--calib", default=None, metavar="DATA",
              help="int8: calibration clips: an .npz with an fbank array of model inputs, a folder of audio (or one "
              "per class), an AST data .json or an ESC-50 style .csv. Clips beyond --calib-clips check the result; "
              "a set of no more than --calib-clips clips has its last quarter held out to check it.")
@click.option("--calib-clips", type=click.IntRange(min=1), default=QuantizeOptions.clips, show_default=True,
              help="int8: how many clips of --calib to calibrate on.")
@click.option("--opset", type=click.IntRange(18, 23), default=18, show_default=True)
@click.option("--input", "graph_input", type=click.Choice(list(INPUT_NAMES)), default=INPUT_NAME,
              show_default=True,
              help="The graph input. waveform: (batch, samples) float32 mono audio at the model's sample rate, NaN "
              "past a clip's end; the model's Kaldi fbank is computed inside the graph, in float32.")
@click.option("--debug-merges", is_flag=True, help="Add each merging block's source / destination positions as "
              "outputs merge{i}_src / merge{i}_dst, for parity debugging.")
@click.option("--no-check", is_flag=True,
              help="Skip the TensorRT lint gate and the ONNX Runtime parity check against PyTorch.")
@click.option("--labels", type=click.Path(dir_okay=False), default=None,
              help="AST class_labels_indices.csv giving label names (for an original .pth).")
def export(source: str, output: Path, tome_r: str | None, tome_inflection: float, frames: int | None,
           tome_schedule: str | None, no_prop_attn: bool, merge_impl: str, batch: int | None, precision: str,
           calib: str | None, calib_clips: int, opset: int, graph_input: str, debug_merges: bool, no_check: bool,
           labels: str | None) -> None:
    """Export SOURCE to a static-shape, plugin-free ONNX model and check it against PyTorch."""
    from fastast_deploy.checkpoints.native import load_model
    from fastast_deploy.exporters.lint import format_report, lint_model
    from fastast_deploy.exporters.onnx_export import ExportOptions, export_onnx, parity_summary

    if tome_r is not None and tome_schedule is not None:
        raise ConfigError("give either --tome-r or --tome-schedule, not both")
    check_outputs_apart({"-o": output, "-o's sidecar": sidecar_path(output)},
                        {"SOURCE": source if Path(source).exists() else None, "--labels": labels, "--calib": calib})
    if (precision == "int8") != (calib is not None):
        raise ConfigError("--precision int8 needs calibration clips (--calib DATA)" if calib is None else
                          f"--calib calibrates int8 exports only; add --precision int8 (asked for {precision})")
    quantize = QuantizeOptions(clips=calib_clips)
    options = ExportOptions(opset=opset, batch=batch, precision=precision, debug_merges=debug_merges,
                            input=graph_input)
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
    calibration = None
    if calib is not None:
        from fastast_deploy.exporters.calibration import load_calibration

        export = {"features": model.feature_config.to_dict() if model.feature_config else None,
                  "labels": list(model.label_names) if model.label_names else None}
        calibration = load_calibration(calib, model.config.input_frames, model.config.num_mel_bins, export,
                                       limit=quantize.clips + quantize.parity_clips)
    result = export_onnx(model, output, options, check=not no_check, calibration=calibration, quantize=quantize)
    report = lint_model(result.path, tensorrt=10)
    if report.errors or report.warnings:
        click.echo(format_report(report), err=True)
    counts = model.token_counts
    click.echo(f"wrote {result.path} ({result.path.stat().st_size / 2**20:.1f} MiB, {precision}, opset {opset}, "
               f"batch {batch or 'dynamic'}) and {result.sidecar.name}")
    click.echo(f"tokens {counts[0]} -> {counts[-1]} with r per block {list(model.schedule)}, merge {merge_impl}")
    if result.parity:
        click.echo(f"parity vs PyTorch on ONNX Runtime CPU: {parity_summary(result.parity)}")
    if result.parity and precision == "int8":
        blocks = ", ".join(f"{k} {v:.2f}" for k, v in result.parity["merge_agreement_per_block"].items())
        pairs = ", ".join(f"{v:.2f}" for v in result.parity["merge_pair_agreement_per_block"].values())
        click.echo(f"int8 vs fp32 on {result.parity['source']}: top-1 agreement "
                   f"{result.parity['top1_agreement']:.3f}; clips with identical merges per block: {blocks or 'none'}"
                   f"; share of merge pairs kept per block: {pairs or 'none'}")
        wave = result.parity.get("waveform")
        if wave:
            click.echo(f"in-graph features (float32) vs the project's fbank into the int8 model, {wave['inputs']} "
                       f"waveforms: top-1 agreement {wave['top1_agreement']:.3f}, max |logit diff| "
                       f"{wave['max_abs_diff']:.3g}")


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
