"""analyze: detections in recordings at scale (folders of audio files, or a live stream on standard input)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from fastast_deploy.cli.commands.options import FiniteFloat, given_options, runner_options
from fastast_deploy.errors import UsageError
from fastast_deploy.serving.analyze import AnalyzeOptions
from fastast_deploy.serving.detections import FORMATS

MAX_WORKERS = 64
_FILE_ONLY = ("output", "fmt", "merge_events", "combined", "pattern", "skip_existing", "workers", "batch")


def default_workers() -> int:
    """Decoding processes by default: the cores but one (the engine's), at least 1, at most 4."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


@click.command()
@click.argument("model", metavar="ENGINE|MODEL.onnx|SOURCE")
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="OUT",
              help="Folder of results: one per recording, mirroring the input folders (required for files).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=AnalyzeOptions.fmt, show_default=True,
              help="Result tables: CSV, JSON lines, Raven selection tables or Audacity label tracks.")
@click.option("--min-score", type=FiniteFloat(0, 1), default=AnalyzeOptions.min_score, show_default=True,
              help="Lowest score reported.")
@click.option("--top-k", type=click.IntRange(min=1), default=AnalyzeOptions.top_k, show_default=True,
              help="Labels reported per window at most.")
@click.option("--hop", "hop_s", type=click.FloatRange(min=0, min_open=True), default=None, metavar="S",
              help="Seconds between window starts [default: the window length, no overlap].")
@click.option("--overlap", type=click.FloatRange(min=0), default=None, metavar="S",
              help="Seconds consecutive windows share (the hop is the window length less this); not with --hop.")
@click.option("--merge-events", is_flag=True,
              help="One detection for a label found in consecutive windows, scored by its best window.")
@click.option("--combined", is_flag=True,
              help="Also every recording's detections in one table, OUT/combined-detections (csv, jsonl, raven).")
@click.option("--glob", "pattern", default=None, metavar="PATTERN",
              help="Files taken from folders (e.g. '*.mp3') [default: .wav, .flac, .ogg].")
@click.option("--skip-existing/--no-skip-existing", default=AnalyzeOptions.skip_existing, show_default=True,
              help="Skip recordings whose results are in OUT (made with the same model and settings).")
@click.option("--workers", type=click.IntRange(0, MAX_WORKERS), default=None,
              help="Processes decoding audio and computing features beside the engine; 0: in this process "
              "[default: the CPU cores but one, 1 to 4].")
@runner_options
@click.option("--rate", type=click.IntRange(1000, 384000), default=None, metavar="HZ",
              help="Sample rate of raw PCM on standard input (INPUT -; a WAV stream gives its own) [default: the "
              "model's].")
@click.pass_context
def analyze(ctx: click.Context, model: str, inputs: tuple[str, ...], output: Path | None, fmt: str, min_score: float,
            top_k: int, hop_s: float | None, overlap: float | None, merge_events: bool, combined: bool,
            pattern: str | None, skip_existing: bool, workers: int | None, batch: int | None, provider: str | None,
            threads: int | None, rate: int | None) -> None:
    """Detections (file, start, end, label, score) in every recording of the INPUT files and folders (folders
    recursively), from an engine, an exported .onnx or a checkpoint SOURCE.

    Each recording is cut into windows of the model's input length every --hop seconds, each window scored
    (softmax for a single-label model, else sigmoid), and its --top-k labels scoring at least --min-score are
    written to OUT, one result per recording mirroring the input folders. Results are written whole; a rerun
    skips the recordings done with the same settings, so a killed run picks up where it stopped. A recording that
    cannot be read gets one `error: PATH: reason` line, the others go on, and the exit code is 1. INPUT - reads
    raw 16-bit PCM (mono, at --rate) or a WAV stream from standard input and prints one JSON line per window as
    it completes.
    """
    from fastast_deploy.inference.runner import open_runner

    if hop_s is not None and overlap is not None:
        raise UsageError("give --hop or --overlap, not both")
    live = "-" in inputs
    if live:
        return _analyze_live(ctx, model, inputs, provider, threads, rate, hop_s, overlap, min_score, top_k)
    if rate is not None:
        raise UsageError("--rate applies to INPUT - (raw audio on standard input)")
    if output is None:
        raise UsageError("give -o OUT, the folder for the results")
    from fastast_deploy.files import check_outputs_apart
    from fastast_deploy.serving.analyze import analyze as run_analysis
    from fastast_deploy.serving.analyze import collect_jobs

    paths = [Path(i) for i in inputs]
    check_outputs_apart({"-o": output}, {"MODEL": model, **{f"INPUT {i}": p for i, p in enumerate(inputs, 1)}})
    jobs = collect_jobs(paths, output, fmt, pattern)
    with open_runner(model, provider, threads) as runner:
        for note in runner.notes:
            click.echo(f"warning: {note}", err=True)
        hop_s = _hop(runner, hop_s, overlap)
        options = AnalyzeOptions(hop_s=hop_s, min_score=min_score, top_k=top_k, fmt=fmt, merge_events=merge_events,
                                 batch=batch, workers=default_workers() if workers is None else workers,
                                 combined=combined, skip_existing=skip_existing)
        click.echo(f"{model} ({runner.backend}): {len(jobs)} recordings -> {output} ({fmt}), {runner.scoring} "
                   f"scores >= {min_score:g}, top {top_k} per window, {options.workers} decoding workers")
        progress = _progress if sys.stderr.isatty() else None
        summary = run_analysis(runner, model, jobs, output, options,
                               on_error=lambda path, reason: click.echo(f"error: {path}: {reason}", err=True),
                               on_progress=progress)
    if progress is not None:
        click.echo("", err=True)
    if summary.combined is not None:
        click.echo(f"combined table: {summary.combined}")
    click.echo(summary.line())
    if summary.failed:
        raise SystemExit(1)


def _hop(runner: object, hop_s: float | None, overlap: float | None) -> float | None:
    """The hop in seconds from --hop or --overlap (None: no overlap)."""
    from fastast_deploy.audio.frames import window_seconds

    if overlap is None:
        return hop_s
    window = window_seconds(runner.features)  # type: ignore[attr-defined]
    if overlap >= window:
        raise UsageError(f"--overlap {overlap:g} s must be shorter than the model's window of {window:g} s")
    return window - overlap


def _progress(done_s: float, total_s: float) -> None:
    share = f" ({100 * done_s / total_s:.0f}%)" if total_s > 0 else ""
    click.echo(f"\ranalysed {done_s / 3600:.3f} of {total_s / 3600:.3f} audio hours{share}", err=True, nl=False)


def _analyze_live(ctx: click.Context, model: str, inputs: tuple[str, ...], provider: str | None,
                  threads: int | None, rate: int | None, hop_s: float | None, overlap: float | None,
                  min_score: float, top_k: int) -> None:
    """INPUT -: detections of the raw audio on standard input, one line each as they come."""
    from fastast_deploy.inference.runner import open_runner

    if inputs != ("-",):
        raise UsageError("INPUT - (standard input) is analysed alone; give it without other inputs")
    ignored = given_options(ctx, _FILE_ONLY)
    if ignored:
        raise UsageError(f"{', '.join(ignored)} apply to files, not to INPUT - (standard input)")
    try:
        from fastast_deploy.inference.live import analyze_stream
    except ModuleNotFoundError as err:
        if err.name != "fastast_deploy.inference.live":
            raise
        raise UsageError("live input is not available in this installation; analyse files instead") from None
    from fastast_deploy.inference.live import closing_note

    with open_runner(model, provider, threads) as runner:
        hop = _hop(runner, hop_s, overlap)
        summary = analyze_stream(runner, sys.stdin.buffer, rate=rate, hop_s=hop, min_score=min_score, top_k=top_k,
                                 emit=click.echo)
    if summary.get("warning"):
        click.echo(f"warning: {summary['warning']}", err=True)
    click.echo(closing_note(summary), err=True)
    if summary.get("interrupted"):  # Ctrl-C: what was printed stands; the shell's code for SIGINT
        raise SystemExit(130)
