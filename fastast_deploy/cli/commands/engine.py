"""Commands on engines: build-engine, inspect."""

from __future__ import annotations

import os
from pathlib import Path

import click

from fastast_deploy.cli.commands.options import BATCH, THREADS, given_options
from fastast_deploy.contract import BACKENDS, PRECISIONS, PROVIDERS, sidecar_path
from fastast_deploy.engines.base import BackendUnavailableError
from fastast_deploy.engines.ort_engine import LEVELS, OrtBuildOptions
from fastast_deploy.engines.trt_engine import TrtBuildOptions
from fastast_deploy.errors import ConfigError
from fastast_deploy.files import check_outputs_apart, json_text

TRT_ONLY = ("precision", "tf32", "workspace", "builder_optimization_level", "timing_cache", "verbose")


def select_device(device: int) -> None:
    """Make GPU ``device`` (an index among the visible ones) the only visible one, before CUDA starts: TensorRT
    and ONNX Runtime's GPU providers then use it as their device 0."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else None
    if ids is not None and device >= len(ids):
        raise ConfigError(f"--device {device} requested, but CUDA_VISIBLE_DEVICES={visible} leaves {len(ids)} visible")
    os.environ["CUDA_VISIBLE_DEVICES"] = ids[device] if ids is not None else str(device)
ORT_ONLY = ("provider", "optimization", "threads", "optimize")


def _refuse_foreign_options(ctx: click.Context, backend: str) -> None:
    """Options of the other backend, given on the command line, are an error rather than silently ignored."""
    foreign = ORT_ONLY if backend == "tensorrt" else TRT_ONLY
    given = given_options(ctx, foreign)
    if given:
        other = "onnxruntime" if backend == "tensorrt" else "tensorrt"
        verb = "applies" if len(given) == 1 else "apply"
        raise ConfigError(f"{', '.join(given)} {verb} to --backend {other} only, not to {backend}")


@click.command("build-engine")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The engine to write (a plan for TensorRT, an .onnx for ONNX Runtime); its JSON sidecar is "
              "written beside it as OUTPUT.json.")
@click.option("--backend", type=click.Choice(BACKENDS), default="tensorrt", show_default=True,
              help="tensorrt needs TensorRT and an NVIDIA GPU; onnxruntime builds anywhere ONNX Runtime runs.")
@click.option("--min-batch", type=BATCH, default=None,
              help="Smallest batch the engine accepts [default: 1; a static-batch model: its batch].")
@click.option("--opt-batch", type=BATCH, default=None,
              help="Batch TensorRT tunes its kernels for [default: 8, kept within the range].")
@click.option("--max-batch", type=BATCH, default=None,
              help="Largest batch [default: 32 for TensorRT, unbounded for ONNX Runtime].")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="TensorRT: engine precision [default: the graph's]. fp16 from an fp32 graph uses TensorRT 10's "
              "builder flag (deprecated since 10.12); TensorRT 11 takes precision from the graph only, so export "
              "with --precision fp16 instead.")
@click.option("--tf32", is_flag=True, help="TensorRT: allow TF32 in fp32 layers (faster; near-tie merge decisions "
              "may flip).")
@click.option("--workspace", type=click.IntRange(min=1), default=None, metavar="MIB",
              help="TensorRT: workspace memory limit in MiB [default: TensorRT's, the GPU's memory].")
@click.option("--opt-level", "--builder-optimization-level", "builder_optimization_level", type=click.IntRange(0, 5),
              default=TrtBuildOptions.builder_optimization_level, show_default=True,
              help="TensorRT: how hard the builder searches for fast kernels.")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="TensorRT: timing cache file, read when present and updated after the build.")
@click.option("--verbose", is_flag=True, help="TensorRT: show Polygraphy's and TensorRT's log.")
@click.option("--device", type=click.IntRange(min=0), default=None,
              help="GPU index among the visible ones (narrows CUDA_VISIBLE_DEVICES for this process) [default: 0].")
@click.option("--provider", type=click.Choice(list(PROVIDERS)), default=OrtBuildOptions.provider, show_default=True,
              help="ONNX Runtime: execution provider the model is optimised for and runs on.")
@click.option("--optimization", type=click.Choice(list(LEVELS)), default=None,
              help="ONNX Runtime: graph optimisation level [default: all; basic with --provider tensorrt].")
@click.option("--threads", type=THREADS, default=OrtBuildOptions.threads, show_default=True,
              help="ONNX Runtime: intra-op threads (0: ONNX Runtime's default).")
@click.option("--optimize", is_flag=True, default=OrtBuildOptions.optimize,
              help="ONNX Runtime: apply ONNX Runtime's transformer fusions first (SkipLayerNormalization, BiasGelu, "
              "see engines/ort_fusion.py), parity-checked against the plain model and recorded in the sidecar. "
              "Opt-in, as it is not faster everywhere (measurements: docs/benchmarks.md).")
@click.pass_context
def build_engine(ctx: click.Context, model: Path, output: Path, backend: str, min_batch: int | None,
                 opt_batch: int | None, max_batch: int | None, precision: str | None, tf32: bool,
                 workspace: int | None, builder_optimization_level: int, timing_cache: Path | None, verbose: bool,
                 device: int | None, provider: str, optimization: str | None, threads: int,
                 optimize: bool) -> None:
    """Build MODEL (an exported .onnx) into a TensorRT plan or an offline-optimised ONNX Runtime model.

    TensorRT needs `pip install "fastast-deploy[tensorrt]"` and an NVIDIA GPU (the one CUDA_VISIBLE_DEVICES makes
    device 0); plans run only on the TensorRT version and GPU compute capability that built them. Nothing is
    written when the build fails.
    """
    _refuse_foreign_options(ctx, backend)
    check_outputs_apart({"-o": output, "-o's sidecar": sidecar_path(output)},
                        {"MODEL": model, "MODEL's sidecar": sidecar_path(model), "--timing-cache": timing_cache})
    if device is not None:
        select_device(device)
    from fastast_deploy.engines.build import BuildOptions, build_engine

    batches = {"min_batch": min_batch, "opt_batch": opt_batch, "max_batch": max_batch}
    options: BuildOptions
    if backend == "tensorrt":
        options = TrtBuildOptions(precision=precision, tf32=tf32, workspace_mib=workspace,
                                  builder_optimization_level=builder_optimization_level, timing_cache=timing_cache,
                                  verbose=verbose, **batches)
    else:
        options = OrtBuildOptions(provider=provider, optimization=optimization, threads=threads, optimize=optimize,
                                  **batches)
    try:
        result = build_engine(model, output, backend, options)
    except BackendUnavailableError as err:
        if backend != "tensorrt" or "TensorRT is not available" not in str(err):
            raise
        raise BackendUnavailableError(f"{err}; or build for ONNX Runtime (installed, CPU or GPU) with --backend "
                                      "onnxruntime") from None
    if backend == "tensorrt":
        trt, gpu = result.metadata["tensorrt"], result.metadata["tensorrt"]["gpu"]
        how = f"TensorRT {trt['version']} on {gpu['name']} (compute capability {gpu['compute_capability']})"
    else:
        ort = result.metadata["onnxruntime"]
        how = f"ONNX Runtime {ort['version']}, provider {ort['provider']}, optimisation {ort['optimization_level']}"
        if "optimize" in ort:
            how += f", fused {ort['optimize']['fused_ops']} (max diff {ort['optimize']['parity']['max_abs_diff']:.2g})"
    for note in result.notes:
        click.echo(f"warning: {note}", err=True)
    batch = result.metadata["batch"]
    upper = batch["max"] if batch["max"] is not None else "any"
    click.echo(f"wrote {result.path} ({result.path.stat().st_size / 2**20:.1f} MiB, {how}, "
               f"{result.metadata['precision']}, batch {batch['min']}..{upper}) and {result.sidecar.name}")


@click.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def inspect(path: Path, as_json: bool) -> None:
    """Show an engine's or exported model's inputs, outputs, precision, ToMe schedule and token counts, backend,
    versions and labels, and whether it can run on this machine. Reads sidecars and metadata only."""
    from fastast_deploy.engines.description import describe, format_description

    report = describe(path)
    click.echo(json_text(report) if as_json else format_description(report))
