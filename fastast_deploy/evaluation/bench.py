"""`fastast-deploy bench`: throughput (and, with labelled data, accuracy) of one checkpoint at several r, each
exported and built the same way, timed side by side, so that r can be picked from a measured trade-off."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from fastast_deploy.contract import INPUT_NAME, INPUT_NAMES, MAX_BATCH
from fastast_deploy.engines import Engine, load_engine
from fastast_deploy.errors import ConfigError, DatasetError
from fastast_deploy.evaluation.timing import time_interleaved
from fastast_deploy.metrics import accuracy, mean_average_precision
from fastast_deploy.model.config import ModelConfig
from fastast_deploy.model.schedule import check_r

R = int | tuple[int, ...]  # one r for every block, or a per-block schedule (`tune`'s choice)


def r_label(r: int | Sequence[int]) -> str:
    """How a compared r is shown: ``16``, or a schedule (a tuple, or a report's list) as ``30,15,7,4``."""
    return str(r) if isinstance(r, int) else ",".join(map(str, r))


def r_name(r: R) -> str:
    """The file stem of its export and engine in bench's folder: ``r16``, or ``r30-15-7-4`` for a schedule."""
    return f"r{r}" if isinstance(r, int) else "r" + "-".join(map(str, r))


@dataclass(frozen=True)
class BenchOptions:
    rs: tuple[R, ...] = (0, 8, 16, 32, 50)
    backend: str = "onnxruntime"
    provider: str = "cpu"
    batch: int = 8
    warmup: int = 2
    rounds: int = 10
    frames: int | None = None
    input: str = INPUT_NAME  # "waveform": engines that compute their fbank in the graph
    threads: int = 0  # ONNX Runtime intra-op threads; 0: its default

    def __post_init__(self) -> None:
        if self.input not in INPUT_NAMES:
            raise ConfigError(f"unknown graph input {self.input!r}; available: {list(INPUT_NAMES)}")
        if not self.rs:
            raise ConfigError("--tome-r needs at least one value")
        for r in self.rs:
            check_r([r] if isinstance(r, int) else r)
        if not 1 <= self.batch <= MAX_BATCH or self.rounds < 1 or self.warmup < 0:
            raise ConfigError(f"--batch must be 1 to {MAX_BATCH}, --rounds >= 1 and --warmup >= 0")


def build_engines(source: str, options: BenchOptions, workdir: Path) -> dict[R, Engine]:
    """One engine per r: load, export (static shapes, dynamic batch), build with the chosen backend."""
    from fastast_deploy.checkpoints.native import load_model
    from fastast_deploy.engines.build import BuildOptions, OrtBuildOptions, TrtBuildOptions, build_engine, engine_path
    from fastast_deploy.exporters.onnx_export import ExportOptions, export_onnx

    build_options: BuildOptions
    if options.backend == "tensorrt":
        build_options = TrtBuildOptions(opt_batch=options.batch, max_batch=max(options.batch, 32))
    else:
        build_options = OrtBuildOptions(provider=options.provider, threads=options.threads)
    engines = {}
    for r in options.rs:
        model = load_model(source, tome_r=r if isinstance(r, int) else list(r), input_frames=options.frames)
        onnx_path = export_onnx(model, workdir / f"{r_name(r)}.onnx", ExportOptions(input=options.input),
                                check=False).path
        built = build_engine(onnx_path, engine_path(workdir, r_name(r), options.backend), options.backend,
                             build_options)
        engines[r] = load_engine(built.path)
    return engines


def time_round_robin(engines: dict[R, Engine], options: BenchOptions) -> dict[R, dict[str, float]]:
    """Latency per batch of each engine, the engines timed side by side round by round."""
    from fastast_deploy.evaluation.verify import engine_feed

    feed = engine_feed(next(iter(engines.values())), options.batch, seed=3)
    runs = {r: partial(engine.infer, feed) for r, engine in engines.items()}
    timed = time_interleaved(runs, batch=options.batch, warmup=options.warmup, rounds=options.rounds,
                             rewarm_s=max(engine.rewarm_s for engine in engines.values()))
    return {r: t.as_dict() for r, t in timed.items()}


Labelled = tuple[list[Path], np.ndarray, str]  # audio files, multi-hot targets (N, labels), task


def check_inputs(source: str, options: BenchOptions, data: str | None = None,
                 labels_csv: str | None = None) -> Labelled | None:
    """Everything bench reads, checked before it writes anything: SOURCE loads at --frames, and --data /
    --labels match the model's labels (`labelled_data`, None without --data)."""
    from fastast_deploy.checkpoints.native import load_model

    names = load_model(source, input_frames=options.frames).label_names
    return None if data is None else labelled_data(data, labels_csv, list(names) if names else None)


def labelled_data(data: str, labels_csv: str | None, names: list[str] | None) -> Labelled:
    """The audio files of labelled data, their multi-hot targets (N, labels) in the model's label order
    (``names``), and the task; a DatasetError when a listed file is missing (as evaluate)."""
    from fastast_deploy.audio.datasets import detect_task, load_dataset
    from fastast_deploy.audio.labels import LabelSet, read_label_csv

    labels = read_label_csv(labels_csv) if labels_csv else (LabelSet(tuple(names), tuple(names)) if names else None)
    dataset = load_dataset(data, labels)
    if names and list(dataset.labels.names) != list(names):
        raise DatasetError(f"{data} has labels {list(dataset.labels.names)[:3]}...; the model's are {names[:3]}...")
    missing = dataset.missing()
    if missing:
        raise DatasetError(f"{len(missing)} of {len(dataset)} audio files listed in {dataset.source} are missing "
                           f"(e.g. {missing[0].path}); fix the paths or remove them from the data list")
    return [e.path for e in dataset.examples], dataset.targets().numpy(), detect_task(dataset)


def bench(source: str, options: BenchOptions, workdir: Path, labelled: Labelled | None = None) -> dict[str, Any]:
    """Build every engine, time them side by side, and score them on labelled data (`check_inputs`) when
    given."""
    from fastast_deploy.evaluation.evaluate import clip_scores
    from fastast_deploy.inference.runner import engine_runner
    from fastast_deploy.model.flops import flop_ratio

    engines = build_engines(source, options, workdir)
    try:
        timing = time_round_robin(engines, options)
        scored = None
        if labelled is not None:
            files, targets, task = labelled
            metric = accuracy if task == "singlelabel" else mean_average_precision
            # each clip scored as evaluate and predict score it (every window, mean); the runner is not closed
            # here, the engines are below
            values = {r: metric(clip_scores(engine_runner(e, e.path), files, options.batch)[0], targets)
                      for r, e in engines.items()}
            scored = {"task": task, "metric": "accuracy" if task == "singlelabel" else "mAP", "clips": len(files),
                      "values": values}
        first = next(iter(engines.values())).metadata
        base_rate = timing[0]["clips_per_s"] if 0 in options.rs else None
        rows = []
        for r, engine in engines.items():
            export = engine.metadata["export"]
            config = ModelConfig.from_dict(export["model"])
            row = {"r": r if isinstance(r, int) else list(r),
                   "effective_schedule": export["tome"]["effective_schedule"],
                   "tokens_out": export["tome"]["token_counts"][-1], **timing[r],
                   "flop_ratio": flop_ratio(config, export["tome"]["effective_schedule"])}
            if base_rate is not None:
                row["speedup"] = timing[r]["clips_per_s"] / base_rate
            if scored is not None:
                row[scored["metric"]] = scored["values"][r]
            rows.append(row)
    finally:
        for engine in engines.values():
            engine.close()
    return {"source": source, "backend": first["backend"], "precision": first["precision"], "batch": options.batch,
            "rounds": options.rounds, "rows": rows, "data": None if scored is None else
            {k: v for k, v in scored.items() if k != "values"}}


def plot(report: dict[str, Any], path: Path) -> Path | None:
    """Throughput vs r, and accuracy vs throughput when measured, as a PNG; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = report["rows"]
    metric = report["data"]["metric"] if report["data"] else None
    fig, axes = plt.subplots(1, 2 if metric else 1, figsize=(10 if metric else 5, 4), squeeze=False)
    ax = axes[0][0]
    mean_r = [float(np.mean(row["r"])) for row in rows]  # a schedule at its mean r per block
    ax.plot(mean_r, [row["clips_per_s"] for row in rows], "o-")
    ax.set_xlabel("r (tokens merged per block; a schedule at its mean)")
    ax.set_ylabel("clips/s")
    ax.set_title(f"{report['backend']}, {report['precision']}, batch {report['batch']}")
    ax.grid(alpha=0.3)
    if metric:
        ax = axes[0][1]
        ax.plot([row["clips_per_s"] for row in rows], [row[metric] for row in rows], "o-")
        for row in rows:
            ax.annotate(f"r={r_label(row['r'])}", (row["clips_per_s"], row[metric]), textcoords="offset points",
                        xytext=(4, 4))
        ax.set_xlabel("clips/s")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} vs throughput")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def format_table(report: dict[str, Any]) -> str:
    metric = report["data"]["metric"] if report["data"] else None
    labels = [r_label(row["r"]) for row in report["rows"]]
    width = max(4, *map(len, labels))
    head = f"{'r':>{width}} {'tokens out':>10} {'clips/s':>9} {'p50 ms':>8} {'speed-up':>9} {'FLOP ratio':>10}"
    lines = [head + (f" {metric:>9}" if metric else "")]
    for label, row in zip(labels, report["rows"], strict=True):
        speedup = f"{row['speedup']:.2f}x" if "speedup" in row else "-"
        line = (f"{label:>{width}} {row['tokens_out']:>10} {row['clips_per_s']:>9.2f} {row['latency_ms_p50']:>8.2f} "
                f"{speedup:>9} {row['flop_ratio']:>9.2f}x")
        lines.append(line + (f" {row[metric]:>9.4f}" if metric else ""))
    return "\n".join(lines)
