"""`analyze` throughput: audio hours analysed per wall-clock hour (the real-time factor), on ONNX Runtime CPU, for
the built-in model and for AST-small with merging (r = 8 per block, random weights: speed depends only on the
geometry and schedule), with 1 and 2 decoding workers (and 0, decoding in the engine's process, for reference).

Each round analyses the same folder of recordings (synthetic sound events, ``--files`` x ``--seconds``) into a
fresh output folder through `serving.analyze.analyze`, as the command does once the model is open; the time is
the analysis's own (workers started, every file decoded, scored and written). Rounds are interleaved across the
configurations, the order rotating; the figure is the median.

    python benchmarks/bench_analyze.py                          # 8 files x 60 s, 3 rounds
    python benchmarks/bench_analyze.py --files 16 --seconds 120 --rounds 5 --workers 0,1,2,4 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from fastast_deploy.audio.synthetic import SAMPLE_RATE, make_classes, render_clip
from fastast_deploy.checkpoints.native import load_model
from fastast_deploy.exporters.onnx_export import ExportOptions, export_onnx
from fastast_deploy.inference.runner import open_runner
from fastast_deploy.model.config import FeatureConfig, ModelConfig, TomeConfig
from fastast_deploy.model.fastast import build_model
from fastast_deploy.model.schedule import make_schedule
from fastast_deploy.serving.analyze import AnalyzeOptions, analyze, collect_jobs


def recordings(folder: Path, files: int, seconds: float) -> float:
    """``files`` recordings of ``seconds``: 1.3 s sound events of random classes over silence; their hours."""
    classes = make_classes(10, 0)
    clip = int(1.3 * SAMPLE_RATE)
    for i in range(files):
        rng = np.random.default_rng([11, i])
        audio = np.zeros(int(seconds * SAMPLE_RATE), np.float32)
        for start in range(0, len(audio) - clip, 2 * clip):
            audio[start : start + clip] = render_clip([classes[int(rng.integers(10))]], clip, rng)
        sf.write(folder / f"rec{i:02d}.wav", audio, SAMPLE_RATE, subtype="PCM_16")
    return files * seconds / 3600


def models(folder: Path) -> dict[str, Path]:
    """The built-in model and an untrained AST-small (1024 frames x 128 mel bins, 527 labels) at r = 8, as .onnx."""
    default = export_onnx(load_model("default"), folder / "default.onnx", check=False).path
    config = ModelConfig.from_size("small")
    small = build_model(config, TomeConfig(make_schedule(8, config.depth)))
    small.feature_config = FeatureConfig(num_mel_bins=config.num_mel_bins, frames=config.input_frames)
    return {"default": default, "ast-small r8": export_onnx(small, folder / "small.onnx", ExportOptions(),
                                                            check=False).path}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads of the engine")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "in").mkdir()
        hours = recordings(root / "in", args.files, args.seconds)
        paths = models(root)
        runners = {name: open_runner(path, threads=args.threads) for name, path in paths.items()}
        configs = [(name, w) for name in runners for w in counts]
        factors: dict[tuple[str, int], list[float]] = {c: [] for c in configs}
        for round_ in range(args.rounds):
            order = configs[round_ % len(configs):] + configs[: round_ % len(configs)]
            for name, workers in order:
                out = root / f"out-{round_}-{name}-{workers}".replace(" ", "_")
                jobs = collect_jobs([root / "in"], out, "csv")
                summary = analyze(runners[name], str(paths[name]), jobs, out, AnalyzeOptions(workers=workers))
                assert summary.done == args.files and not summary.failed, summary
                factors[(name, workers)].append(summary.realtime_factor)
        for runner in runners.values():
            runner.close()
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}"
    print(f"{args.files} recordings x {args.seconds:g} s = {hours:.3f} audio hours; ONNX Runtime CPU, engine threads "
          f"{args.threads}; medians of {args.rounds} interleaved rounds; {machine}")
    print(f"{'model':<14} {'workers':>7} {'audio h / h':>12} {'rounds':>24}")
    for (name, workers), values in factors.items():
        shown = ", ".join(f"{v:.0f}" for v in values)
        print(f"{name:<14} {workers:>7} {statistics.median(values):>12.0f} {shown:>24}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "hours": hours, "threads": args.threads,
                                         "figures": {f"{n} / {w}": v for (n, w), v in factors.items()}}, indent=2))


if __name__ == "__main__":
    main()
