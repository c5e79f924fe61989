"""`fastast-deploy quickstart`: the whole pipeline on the built-in model."""

from __future__ import annotations

from pathlib import Path

import click

from fastast_deploy.contract import INPUT_NAME, INPUT_NAMES
from fastast_deploy.files import removed_on_failure


@click.command()
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=Path("fastast-quickstart"),
              show_default=True, help="Folder for every file the run writes; a file there that quickstart did not "
              "write itself is not replaced without --force.")
@click.option("--source", default="default", show_default=True,
              help="The checkpoint to run: the built-in model, or any SOURCE.")
@click.option("--backend", type=click.Choice(["auto", "tensorrt", "onnxruntime"]), default="auto", show_default=True,
              help="auto: TensorRT where it and a GPU are present, else ONNX Runtime on the CPU.")
@click.option("--clips-per-class", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--iterations", type=click.IntRange(min=1), default=30, show_default=True,
              help="Timed calls per batch size in the speed section (too few read the speed-up low; see "
              "docs/benchmarks.md).")
@click.option("--input", "graph_input", type=click.Choice(list(INPUT_NAMES)), default=INPUT_NAME, show_default=True,
              help="The exported graph's input; waveform: the Kaldi fbank is computed inside the graph.")
@click.option("--force", is_flag=True, help="Replace files in -o that quickstart did not write there itself.")
def quickstart(output: Path, source: str, backend: str, clips_per_class: int, iterations: int,
               graph_input: str, force: bool) -> None:
    """Export -> build-engine -> verify (parity and speed) on the built-in FastAST, then a summary."""
    from fastast_deploy.cli.quickstart import format_summary
    from fastast_deploy.cli.quickstart import quickstart as run

    with removed_on_failure(output):  # a run that breaks leaves no half a quickstart folder behind
        report = run(output, source, backend, clips_per_class, iterations=iterations, say=click.echo,
                     graph_input=graph_input, force=force)
    click.echo(format_summary(report))
    if not report["passed"]:
        raise SystemExit(1)
