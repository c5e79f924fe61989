"""`fastast-deploy bench`: throughput and accuracy per r, as a table, JSON and a PNG plot."""

from __future__ import annotations

from pathlib import Path

import click

from fastast_deploy.cli.commands.options import BATCH, FRAMES, SOME_THREADS, parse_r
from fastast_deploy.contract import INPUT_NAME, INPUT_NAMES, PROVIDERS
from fastast_deploy.errors import ConfigError
from fastast_deploy.files import (
    check_outputs_apart,
    check_replaceable,
    prepare_output,
    record_written,
    removed_on_failure,
    write_json_atomic,
)
from fastast_deploy.scoped import torch_threads


@click.command()
@click.argument("source")
@click.option("--tome-r", "tome_r", default="0,8,16,32,50", show_default=True, metavar="R1,R2,...",
              help="The r values to compare (one r for every block each); an item @DIR/tune.json (or @DIR) is the "
              "per-block schedule `tune` chose there.")
@click.option("--backend", type=click.Choice(["onnxruntime", "tensorrt"]), default="onnxruntime",
              show_default=True)
@click.option("--provider", type=click.Choice(list(PROVIDERS)), default="cpu", show_default=True,
              help="ONNX Runtime provider.")
@click.option("--batch", type=BATCH, default=8, show_default=True, help="Clips per timed call.")
@click.option("--rounds", type=click.IntRange(min=1), default=10, show_default=True,
              help="Timed calls per engine, interleaved across engines.")
@click.option("--warmup", type=click.IntRange(min=0), default=2, show_default=True)
@click.option("--frames", type=FRAMES, default=None, help="Input length [default: the checkpoint's].")
@click.option("--input", "graph_input", type=click.Choice(list(INPUT_NAMES)), default=INPUT_NAME, show_default=True,
              help="The engines' input; waveform: the fbank is computed inside each graph.")
@click.option("--data", default=None, metavar="DIR|FILE",
              help="Labelled audio: a folder per class, an AST data .json (with --labels) or an ESC-50-style .csv; "
              "each clip is scored as evaluate scores it (every window, pooled by mean).")
@click.option("--labels", type=click.Path(dir_okay=False), default=None, help="Label CSV for an AST data .json.")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=Path("bench"),
              show_default=True, help="Folder for the engines, bench.json and bench.png; made only once the "
              "inputs are checked, and removed again (or what the run added to it) if the run fails.")
@click.option("--force", is_flag=True, help="Replace files in -o that bench did not write there itself (without it "
              "such a file stops bench before it starts).")
@click.option("--threads", type=SOME_THREADS, default=None,
              help="ONNX Runtime intra-op threads of every engine, and torch threads for the export [default: "
              "their own choice].")
def bench(source: str, tome_r: str, backend: str, provider: str, batch: int, rounds: int, warmup: int,
          frames: int | None, graph_input: str, data: str | None, labels: str | None, output: Path,
          threads: int | None, force: bool) -> None:
    """Export and build SOURCE at each r, then time them side by side (and score them on --data)."""
    from fastast_deploy.engines.build import check_ready
    from fastast_deploy.evaluation.bench import BenchOptions, check_inputs, format_table, plot, r_label, r_name
    from fastast_deploy.evaluation.bench import bench as run_bench

    rs = _compared(tome_r)
    if len(set(rs)) != len(rs):
        raise ConfigError(f"--tome-r lists a value twice: {', '.join(map(r_label, rs))}")
    options = BenchOptions(rs=rs, backend=backend, provider=provider, batch=batch, warmup=warmup, rounds=rounds,
                           frames=frames, input=graph_input, threads=threads or 0)
    names = ["bench.json", "bench.png"]
    for r in rs:  # the exports and engines bench writes into -o, each with its sidecar
        names += [n for suffix in (".onnx", ".ort.onnx", ".plan") for n in (f"{r_name(r)}{suffix}",
                                                                          f"{r_name(r)}{suffix}.json")]
    check_outputs_apart({f"-o's {name}": output / name for name in names},
                        {"SOURCE": source if Path(source).exists() else None, "--data": data, "--labels": labels})
    check_replaceable(output, names, "bench", force)
    check_ready(options.backend, data=data, labels=labels)  # before the slow exports
    with torch_threads(threads):  # torch threads for the exports, put back after
        labelled = check_inputs(source, options, data, labels)  # source, --frames, data and labels: before -o
        with removed_on_failure(output):  # a failed or interrupted run leaves -o as it was (or absent)
            prepare_output(output / "bench.json")
            report = run_bench(source, options, output, labelled)
            write_json_atomic(output / "bench.json", report)
            png = plot(report, output / "bench.png")
    record_written(output, names, "bench")
    click.echo(format_table(report))
    click.echo(f"\nwrote {output / 'bench.json'}" + (f" and {png}" if png else
               ' (no plot: pip install "fastast-deploy[plot]" for bench.png)'))


def _compared(value: str) -> tuple[int | tuple[int, ...], ...]:
    """--tome-r's items: each one r for every block (``16``) or ``@DIR/tune.json``, a tuned per-block schedule."""
    items = []
    for item in value.split(","):
        r = parse_r(item.strip())  # one int, or an @ item's schedule; an empty item is refused there
        items.append(tuple(r) if isinstance(r, list) else r)
    return tuple(items)
