"""`fastast-deploy evaluate`: accuracy or mAP of a checkpoint or engine on a labelled data list."""

from __future__ import annotations

import json

import click

from fastast_deploy.cli.commands.options import BATCH, SOME_THREADS
from fastast_deploy.evaluation.evaluate import EvaluateOptions

_E = EvaluateOptions()


@click.command()
@click.argument("model", metavar="SOURCE|ENGINE")
@click.option("--data", required=True, metavar="DATA",
              help="Labelled clips: an AST data .json (with --labels), an ESC-50-style .csv or a folder per class.")
@click.option("--labels", type=click.Path(dir_okay=False), default=None,
              help="Label CSV (index,mid,display_name); required for an AST data .json.")
@click.option("--batch", type=BATCH, default=_E.batch, show_default=True,
              help="Windows per inference call (the nearest size an engine's batch range takes).")
@click.option("--threads", type=SOME_THREADS, default=None,
              help="Torch threads for a checkpoint, ONNX Runtime intra-op threads for an engine [default: their "
              "own choice].")
@click.option("--provider", type=click.Choice(["cpu", "cuda", "tensorrt"]), default=None,
              help="ONNX Runtime provider for an exported .onnx [default: cpu].")
@click.option("--skip-unreadable", is_flag=True,
              help="Score the clips that can be read when some cannot (they are listed in the report); without it "
              "an unreadable clip fails the run (exit 1) once every clip has been tried.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object, per-class figures "
              "included.")
def evaluate(model: str, data: str, labels: str | None, batch: int, threads: int | None, provider: str | None,
             skip_unreadable: bool, as_json: bool) -> None:
    """Score MODEL on DATA: accuracy for single-label data (and per class the share right), mAP for multi-label
    data (and per class its AP).

    MODEL is a checkpoint SOURCE run in PyTorch (FastAST, AST, a CNN from `train --arch cnn`, or a training run
    directory, meaning its best checkpoint), or an engine or exported .onnx. Clips are featurised with the
    model's recorded feature settings; data labels are matched to the model's outputs by name (by index, in the
    --labels CSV's order, for a model whose outputs are unnamed or Hugging Face's LABEL_0.. placeholders). Each clip is
    scored as `predict` scores a file: every window of the model's input length (no overlap), the window scores
    (softmax for a single-label model, else sigmoid) averaged; a clip no longer than the window is one window.

    A clip that cannot be read gets one `error: PATH: reason` line on stderr (`warning:` with --skip-unreadable)
    and the others are still scored; then the run fails with exit code 1 unless --skip-unreadable is given, when
    the metric is of the readable clips.
    """
    from fastast_deploy.evaluation.evaluate import evaluate as run_evaluate
    from fastast_deploy.evaluation.evaluate import format_report

    kind = "warning" if skip_unreadable else "error"
    options = EvaluateOptions(batch=batch, threads=threads, provider=provider, skip_unreadable=skip_unreadable)
    report = run_evaluate(model, data, labels, options,
                          lambda path, reason: click.echo(f"{kind}: {path}: {reason}", err=True))
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))
