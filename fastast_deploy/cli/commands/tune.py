"""`fastast-deploy tune`: the per-block r schedule with the highest measured throughput within an accuracy budget."""

from __future__ import annotations

from pathlib import Path

import click

from fastast_deploy.cli.commands.options import BATCH, FRAMES, SOME_THREADS, FiniteFloat
from fastast_deploy.contract import INPUT_NAME, INPUT_NAMES, PROVIDERS
from fastast_deploy.errors import FastASTError, UsageError
from fastast_deploy.files import (
    check_outputs_apart,
    check_replaceable,
    prepare_output,
    record_written,
    write_json_atomic,
)
from fastast_deploy.scoped import torch_threads

NAMES = ["tune.json", "tune.png"]


@click.command()
@click.argument("source")
@click.option("--data", required=True, metavar="DATA",
              help="Labelled clips: a folder per class, an AST data .json (with --labels) or an ESC-50-style .csv. "
              "Part is held out (--holdout) unless --test is given.")
@click.option("--labels", type=click.Path(dir_okay=False), default=None, help="Label CSV for an AST data .json.")
@click.option("--test", default=None, metavar="DATA",
              help="Clips to report the choice on (none of them seen by the search); default: --holdout of DATA.")
@click.option("--max-drop", type=FiniteFloat(0, 100), default=None, metavar="POINTS",
              help="Accuracy (single-label) or mAP (multi-label) points below r=0 allowed on the search clips: "
              "the schedule with the highest measured speed-up within it wins.")
@click.option("--speedup", type=FiniteFloat(1, 1000), default=None, metavar="X",
              help="The most accurate schedule whose measured speed-up over r=0 reaches X wins.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for tune.json, tune.png and the measurements a rerun resumes from (candidates.jsonl, "
              "cache/).")
@click.option("--budget", default="40", show_default=True, metavar="N|Mm",
              help="Candidates scored at most (N), or minutes of search (e.g. 10m); timing the front comes after.")
@click.option("--holdout", type=FiniteFloat(0.05, 0.9), default=0.3, show_default=True,
              help="Share of each class of DATA held out of the search, to report the choice on.")
@click.option("--seed", type=click.IntRange(0, 2**31), default=0, show_default=True,
              help="Seed of the held-out split and the bootstrap.")
@click.option("--backend", type=click.Choice(["onnxruntime", "tensorrt", "pytorch"]), default="onnxruntime",
              show_default=True, help="What the front is built on and timed with (scores are PyTorch's).")
@click.option("--provider", type=click.Choice(list(PROVIDERS)), default="cpu", show_default=True,
              help="ONNX Runtime provider.")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="Precision of the timed engines (fp16: an fp16 export; PyTorch: on a CUDA GPU).")
@click.option("--batch", type=BATCH, default=8, show_default=True,
              help="Clips per timed call, and windows per scoring call.")
@click.option("--timed", type=click.IntRange(1, 32), default=5, show_default=True,
              help="Schedules of the front built and timed at most (r=0 and the best constant r besides).")
@click.option("--rounds", type=click.IntRange(1, 1000), default=10, show_default=True,
              help="Timed calls per schedule, interleaved across schedules.")
@click.option("--warmup", type=click.IntRange(0, 1000), default=2, show_default=True)
@click.option("--frames", type=FRAMES, default=None, help="Input length [default: the checkpoint's].")
@click.option("--input", "graph_input", type=click.Choice(list(INPUT_NAMES)), default=INPUT_NAME, show_default=True,
              help="The timed engines' input; waveform: the fbank computed inside each graph.")
@click.option("--threads", type=SOME_THREADS, default=None,
              help="Torch threads for scoring, ONNX Runtime intra-op threads for timing [default: their own].")
@click.option("--restart", is_flag=True, help="Forget the measurements in -o and start the search afresh.")
@click.option("--force", is_flag=True, help="Replace a tune.json or tune.png in -o that tune did not write.")
def tune(source: str, data: str, labels: str | None, test: str | None, max_drop: float | None,
         speedup: float | None, output: Path, budget: str, holdout: float, seed: int, backend: str, provider: str,
         precision: str, batch: int, timed: int, rounds: int, warmup: int, frames: int | None, graph_input: str,
         threads: int | None, restart: bool, force: bool) -> None:
    """Find the per-block ToMe r schedule of SOURCE with the highest measured throughput whose accuracy (or mAP)
    on DATA stays within --max-drop points of r=0, or the most accurate one reaching --speedup.

    \b
    The search, each candidate scored in PyTorch on features computed once:
    1. sweep constant r (1 up to the r that merges all it can) and ToMe's (r, inflection) ramps;
    2. refine around the best: raise r one block at a time while the drop stays within --max-drop (step halving
       to 1), or, for --speedup, move r between neighbouring blocks while the metric rises;
    3. build the Pareto front (FLOP ratio against metric, at most --timed of it), the best constant r and r=0 on
       --backend and time them side by side (interleaved steady-state timing, as bench);
    4. choose by measured speed-up: the choice is never slower than the best constant r within the budget.

    The search sees only its own clips; the choice is reported on held-out clips (--holdout, or --test) with a
    95% bootstrap interval over clips. Results land in -o as they are measured: an interrupted run resumes where
    it stopped (--restart starts clean); tune.json is written once, at the end. Use the choice with
    `--tome-r @DIR/tune.json` in export, info and bench.
    """
    from fastast_deploy.engines.build import check_ready
    from fastast_deploy.evaluation.tune import Budget, Target
    from fastast_deploy.evaluation.tune_measure import CACHE, JOURNAL, TuneOptions
    from fastast_deploy.evaluation.tune_report import format_table, plot
    from fastast_deploy.evaluation.tune_run import tune as run_tune

    if (max_drop is None) == (speedup is None):
        raise UsageError("give one of --max-drop POINTS and --speedup X")
    target = Target(max_drop=max_drop, speedup=speedup)
    limit = Budget.parse(budget)
    options = TuneOptions(backend=backend, provider=provider, batch=batch, threads=threads, precision=precision,
                          input=graph_input, frames=frames, timed=timed, rounds=rounds, warmup=warmup,
                          holdout=holdout, seed=seed)
    check_outputs_apart({f"-o's {n}": output / n for n in [*NAMES, JOURNAL, CACHE]},
                        {"SOURCE": source if Path(source).exists() else None, "--data": data, "--labels": labels,
                         "--test": test})
    check_replaceable(output, NAMES, "tune", force)
    if backend != "pytorch":
        check_ready(backend, data=data, labels=labels)
    prepare_output(output / "tune.json")
    bar = _Progress(limit.candidates)
    try:
        with torch_threads(threads):
            report = run_tune(source, data, labels, test, target, limit, options, output, restart=restart,
                              say=lambda text: click.echo(text, err=True), progress=bar.update)
    finally:
        bar.close()
    write_json_atomic(output / "tune.json", report)
    png = plot(report, output / "tune.png")
    record_written(output, NAMES, "tune")
    click.echo(format_table(report))
    click.echo(f"\nwrote {output / 'tune.json'}" + (f" and {png}" if png else
               ' (plot skipped: pip install "fastast-deploy[plot]" for tune.png)'))
    if report["chosen"] is not None:
        click.echo(f"use it: fastast-deploy export {source} --tome-r @{output / 'tune.json'} -o model.onnx")
    else:
        closest = report["closest"]
        named = (f"; the closest is {closest['label']} (r per block {closest['schedule']}, drop "
                 f"{closest['drop']:+.2f} points, speed-up {closest['speedup']:.2f}x)" if closest else "")
        wanted = (f"a drop within {max_drop:g} points" if max_drop is not None else f"a measured speed-up of "
                  f"{speedup:g}x")
        raise FastASTError(f"no schedule reached {wanted}{named}; {output / 'tune.json'} holds every candidate")


class _Progress:
    """A progress bar on stderr over the candidates scored (a count where the budget is in minutes)."""

    def __init__(self, total: int | None) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="candidate", desc="search", leave=False, dynamic_ncols=True)

    def update(self, candidate: object, count: int) -> None:
        self.bar.update(count - self.bar.n)
        label = getattr(candidate, "label", "")
        metric = getattr(candidate, "metric", float("nan"))
        self.bar.set_postfix_str(f"{label}: {metric:.2f}")

    def close(self) -> None:
        self.bar.close()
