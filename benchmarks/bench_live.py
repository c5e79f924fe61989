"""Live input at real-time speed: synthetic audio of the built-in model's classes piped into `fastast-deploy analyze
MODEL -` (or, with --driver, into a driver process calling `inference.live.analyze_stream`) in 10 ms blocks, each
written once its 10 ms have passed, as a sound card delivers them.

The audio is one clip per window (a class of the model's synthetic dataset, clips it never saw), so each line's
top label can be checked. Reported: lines against the complete windows, the latency each line reports (from the
read of its window's last sample to the line), the latency seen from outside (from the moment the writer had
the window's last sample to the line's arrival, through both pipes), median and p99 of each, the real-time
factor of the closing note (features and model seconds per second of audio), and top-1 agreement.

    python benchmarks/bench_live.py                      # 60 s into `fastast-deploy analyze default -`
    python benchmarks/bench_live.py --driver --threads 1
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from fastast_deploy.audio.frames import frame_sizes, waveform_samples
from fastast_deploy.audio.synthetic import SAMPLE_RATE, make_classes, render_clip

BLOCK_S = 0.01


def serve(model: str, threads: int | None) -> None:
    """The driver: standard input through `analyze_stream`, lines on stdout, the closing note on stderr."""
    from fastast_deploy.inference.live import analyze_stream, closing_note
    from fastast_deploy.inference.runner import open_runner

    def emit(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    with open_runner(model, threads=threads) as runner:
        summary = analyze_stream(runner, sys.stdin.buffer, rate=None, hop_s=None, min_score=0.0, top_k=1, emit=emit)
    if summary["warning"]:
        print(f"warning: {summary['warning']}", file=sys.stderr)
    print(closing_note(summary), file=sys.stderr)


def synthetic_stream(model: str, seconds: float) -> tuple[np.ndarray, list[str], int, int]:
    """(audio at 16 kHz, the class of each window, window samples, hop samples) for the model's classes."""
    from fastast_deploy.inference.runner import open_runner

    with open_runner(model) as runner:
        labels, features = list(runner.labels), runner.features
    classes = make_classes(len(labels), 0)
    if [c.name for c in classes] != labels or features.sample_rate != SAMPLE_RATE:
        raise SystemExit(f"{model} is not a model of the built-in synthetic classes at {SAMPLE_RATE} Hz")
    hop = features.frames * frame_sizes(SAMPLE_RATE)[1]
    count = int(seconds * SAMPLE_RATE) // hop + 1
    order = np.random.default_rng(7).integers(0, len(classes), count)
    clips = [render_clip([classes[k]], hop, np.random.default_rng([25, 99, int(k), i])) for i, k in enumerate(order)]
    audio = np.concatenate(clips)[: int(seconds * SAMPLE_RATE)]
    return audio, [classes[k].name for k in order], waveform_samples(features), hop


def write_paced(pipe, pcm: bytes, t0: float) -> None:
    block = int(SAMPLE_RATE * BLOCK_S) * 2
    try:
        for k, at in enumerate(range(0, len(pcm), block)):
            time.sleep(max(0.0, t0 + (k + 1) * BLOCK_S - time.monotonic()))
            pipe.write(pcm[at : at + block])
            pipe.flush()
    finally:
        pipe.close()


def stats(values: list[float]) -> dict[str, float]:
    return {"median": round(float(np.median(values)), 1), "p99": round(float(np.percentile(values, 99)), 1),
            "max": round(float(np.max(values)), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--driver", action="store_true", help="a driver calling analyze_stream, not the command")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.model, args.threads)

    audio, truth, span, hop = synthetic_stream(args.model, args.seconds)
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    threads = [] if args.threads is None else ["--threads", str(args.threads)]
    if args.driver:
        command = [sys.executable, __file__, "--serve", "--model", args.model, *threads]
    else:
        command = [str(Path(sys.executable).with_name("fastast-deploy")), "analyze", args.model, "-", "--top-k", "1",
                   "--min-score", "0", *threads]
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(3.0)  # the model loads before the first block is written, as a microphone started after it
    t0 = time.monotonic()
    writer = threading.Thread(target=write_paced, args=(child.stdin, pcm, t0), daemon=True)
    writer.start()
    arrived = [(time.monotonic(), json.loads(line)) for line in child.stdout]
    writer.join()
    stderr = child.stderr.read().decode()
    child.wait()

    expected = (len(audio) - span) // hop + 1
    reported = [line["latency_ms"] for _, line in arrived]
    outside = [(at - t0 - (i * hop + span) / SAMPLE_RATE) * 1000 for i, (at, _) in enumerate(arrived)]
    top1 = sum(bool(line["labels"]) and line["labels"][0]["label"] == truth[i] for i, (_, line) in enumerate(arrived))
    factor = re.search(r"real-time factor ([0-9.]+)", stderr)
    result = {
        "command": " ".join(Path(c).name if i == 0 else c for i, c in enumerate(command)),
        "machine": f"{platform.processor() or platform.machine()}, {platform.python_version()}",
        "audio_s": len(audio) / SAMPLE_RATE, "lines": len(arrived), "complete_windows": expected,
        "exit_code": child.returncode,
        "reported_latency_ms": stats(reported) if reported else None,
        "outside_latency_ms": stats(outside) if outside else None,
        "real_time_factor": float(factor.group(1)) if factor else None,
        "top1_agreement": f"{top1}/{len(arrived)}",
        "stderr": stderr.strip().splitlines()[-3:],
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
