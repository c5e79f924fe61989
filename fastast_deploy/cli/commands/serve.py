"""Commands that use a model: predict (label scores for audio files), triton (a Triton model repository)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from click.core import ParameterSource

from fastast_deploy.audio.frames import hop_frames, window_seconds
from fastast_deploy.cli.commands.options import parse_sizes, runner_options
from fastast_deploy.errors import ConfigError
from fastast_deploy.files import check_outputs_apart, json_text
from fastast_deploy.inference.scoring import POOLS
from fastast_deploy.serving.predict import PredictOptions
from fastast_deploy.serving.triton import KINDS, SERVE_BACKENDS, TritonOptions


@click.command()
@click.argument("model", metavar="ENGINE|MODEL.onnx|SOURCE")
@click.argument("audio", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top-k", type=click.IntRange(min=1), default=PredictOptions.top_k, show_default=True,
              help="Labels shown per file.")
@click.option("--hop", "hop_s", type=click.FloatRange(min=0, min_open=True), default=None, metavar="S",
              help="Seconds between the starts of windows cut from files longer than the model's input "
              "[default: the window length, no overlap].")
@click.option("--pool", type=click.Choice(POOLS), default=PredictOptions.pool, show_default=True,
              help="How the scores of a file's windows are combined.")
@runner_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option("--all-scores", is_flag=True, help="Every label's score: in the JSON, and as the text listing.")
def predict(model: str, audio: tuple[Path, ...], top_k: int, hop_s: float | None, pool: str, batch: int | None,
            provider: str | None, threads: int | None, as_json: bool, all_scores: bool) -> None:
    """Label names and scores for each AUDIO file, from an engine, an exported .onnx or a checkpoint SOURCE
    (run in PyTorch).

    Features follow the model's recorded settings. Every file is scored as `evaluate` scores it: cut into
    windows of the model's input length (no overlap unless --hop is given), each window scored, and the scores
    pooled (mean unless --pool max). Scores are softmax for a model trained single-label, sigmoid otherwise. A
    file that cannot be read gets one `error: PATH: reason` line on stderr, the others are still predicted, and
    the exit code is 1.
    """
    from fastast_deploy.inference.runner import open_runner
    from fastast_deploy.inference.scoring import batch_size
    from fastast_deploy.serving.predict import format_prediction, predict_files, prediction_dict

    options = PredictOptions(top_k=top_k, hop_s=hop_s, pool=pool, batch=batch)
    entries, failed = [], 0
    with open_runner(model, provider, threads) as runner:
        for note in runner.notes:
            click.echo(f"warning: {note}", err=True)
        labels = runner.labels
        k = len(labels) if all_scores and not as_json else top_k
        window_s = window_seconds(runner.features)
        batch_size(runner.batch, batch)  # settings the model cannot take fail before any output
        hop = hop_frames(hop_s, runner.features.frames) * window_s / runner.features.frames  # as used
        if not as_json:
            click.echo(f"{model} ({runner.backend}): {runner.scoring} scores, {pool} over windows of "
                       f"{window_s:g} s every {hop:g} s")
        for result in predict_files(runner, [str(a) for a in audio], options):
            if result.error is not None:
                failed += 1
                click.echo(f"error: {result.path}: {result.error}", err=True)
            elif not as_json:
                click.echo("\n" + format_prediction(result, labels, k))
            entries.append(prediction_dict(result, labels, top_k, all_scores))
    if as_json:
        report = {"model": model, "backend": runner.backend, "task": runner.task,
                  "activation": runner.activation, "pool": pool, "window_s": window_s, "hop_s": hop,
                  "labels": labels if all_scores else None, "files": entries, "failed": failed}
        click.echo(json_text(report))
    if failed:
        raise SystemExit(1)


@click.command()
@click.argument("model", metavar="ENGINE|MODEL.onnx", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", "repo", required=True, type=click.Path(file_okay=False, path_type=Path),
              metavar="REPO", help="The model repository (created if missing; may hold other models).")
@click.option("--name", default=None, help="Model name and folder in REPO [default: the model file's stem].")
@click.option("--max-batch", type=click.IntRange(min=1), default=None,
              help="max_batch_size, within the engine's batch range [default: the engine's largest, 32 where it "
              "has none; 0 for a static-batch model].")
@click.option("--instances", type=click.IntRange(min=1), default=TritonOptions.instances, show_default=True,
              help="Model instances (instance_group count).")
@click.option("--dynamic-batching/--no-dynamic-batching", default=None,
              help="Triton's dynamic batcher [default: on, off for a static-batch model].")
@click.option("--preferred-batch", default=None, metavar="B1,B2,...",
              help="Batch sizes the dynamic batcher prefers [default: none, as large as max_batch_size allows].")
@click.option("--max-queue-delay-us", type=click.IntRange(min=0), default=TritonOptions.max_queue_delay_us,
              show_default=True,
              help="How long the dynamic batcher waits to fill a batch.")
@click.option("--kind", type=click.Choice(list(KINDS)), default=None,
              help="Instance kind [default: gpu for TensorRT plans and GPU-provider ONNX Runtime engines, else cpu].")
@click.option("--gpus", default=None, metavar="I1,I2,...",
              help="GPU indices the instances run on (an explicit gpus list) [default: every GPU Triton sees].")
@click.option("--backend", "serve_backend", type=click.Choice(SERVE_BACKENDS), default=TritonOptions.backend,
              show_default=True,
              help="platform: Triton's tensorrt_plan / onnxruntime_onnx backend; python: Triton's Python backend "
              "running fastast_deploy.engines (1/model.py; waveform-in models take raw audio).")
@click.option("--site-packages", default=None, metavar="DIR[:DIR...]",
              help="python backend: site-packages model.py adds before importing fastast_deploy ('none': none) "
              "[default: this interpreter's].")
@click.option("--force", is_flag=True, help="Replace REPO/NAME if it exists.")
@click.pass_context
def triton(ctx: click.Context, model: Path, repo: Path, name: str | None, max_batch: int | None, instances: int,
           dynamic_batching: bool | None, preferred_batch: str | None, max_queue_delay_us: int, kind: str | None,
           gpus: str | None, serve_backend: str, site_packages: str | None, force: bool) -> None:
    """Write a Triton Inference Server model repository for MODEL (a TensorRT plan, an ONNX Runtime engine or
    an exported .onnx): REPO/NAME/config.pbtxt, REPO/NAME/1/model.plan or model.onnx with its sidecar, and
    REPO/NAME/labels.txt for Triton's classification extension. With --backend python, also REPO/NAME/1/model.py
    and REPO/NAME/README.md (how the backend's stub finds its packages). Nothing is written when a check fails.
    """
    from fastast_deploy.serving.triton import read_served_model
    from fastast_deploy.serving.triton_repo import default_name, write_repository

    given = ctx.get_parameter_source("max_queue_delay_us") not in (ParameterSource.DEFAULT, None)
    if dynamic_batching is False and given:
        raise ConfigError("--max-queue-delay-us applies with dynamic batching; drop --no-dynamic-batching")
    preferred = parse_sizes(preferred_batch, "--preferred-batch") if preferred_batch else ()
    options = TritonOptions(name=name, max_batch=max_batch, instances=instances, dynamic_batching=dynamic_batching,
                            preferred_batch=preferred, max_queue_delay_us=max_queue_delay_us, kind=kind,
                            backend=serve_backend, site_packages=_site_packages(site_packages),
                            gpus=parse_sizes(gpus, "--gpus", minimum=0) if gpus else ())
    check_outputs_apart({"-o": repo / (name or default_name(model))}, {"ENGINE": model},
                        replaced_folders=("-o",))
    result = write_repository(read_served_model(model), repo, options, force=force)
    for note in result.config.notes:
        click.echo(f"note: {note}", err=True)
    config = result.config
    batching = "dynamic batching" if config.dynamic_batching else "no dynamic batching"
    click.echo(f"wrote {result.path} (max_batch_size {config.max_batch_size}, {batching}, {instances} x "
               f"{config.kind.upper()}): {', '.join(result.files)}")
    if serve_backend == "python":  # the stub takes its environment from the first python3 on PATH
        click.echo(f"serve it with: PATH={Path(sys.executable).parent}:$PATH tritonserver --model-repository {repo}")
    else:
        click.echo(f"serve it with: tritonserver --model-repository {repo}")


def _site_packages(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    if text == "none":
        return ()
    return tuple(p for p in text.split(os.pathsep) if p)

