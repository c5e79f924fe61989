"""Does training learn with its defaults, and does distillation pay? On real speech, scored on a held-out split.

Builds a ten-word spoken-command set with espeak-ng (benchmarks/speech_words.py: many accents, voice variants,
rates, pitches, background noise; 420 train / 90 val / 90 test one-second clips), trains a compact CNN teacher, then
for each seed, with the default training settings except the epoch budget:

    ast              a new tiny AST (r = 0), no teacher
    fastast          the same with Token Merging (--tome-r R), no teacher
    fastast_kd_MODE  the same FastAST, distilled from the CNN teacher with --kd-mode MODE, for each of --kd-modes
                     (default: the mode `--kd-mode auto` picks for FastAST; the claims read that one)

Every run is scored by `fastast-deploy evaluate` on the held-out test split (its best-on-val checkpoint), and the
throughput of r = 0 against r = R is measured at batch 8 on one thread, rounds interleaved, medians, both in PyTorch
eager and on the ONNX Runtime engines that `fastast-deploy export` writes of them. It reports the three claims:
(1) the AST learns well above chance; (2) FastAST + KD beats fastast by >= 10 points; (3) and is not below ast, at
>= 1.5x its throughput (on the engines: what is deployed; eager PyTorch spends a larger share of a small model's
time outside the merged matrix products). `--clean-baseline` adds the old recipe (soft KD from teacher logits of the
clean clips, `--kd-mode soft --teacher-inputs clean`).

The commands are the CLI's own, run as subprocesses with --threads 1 (several at once with --jobs):

    python benchmarks/bench_distill.py --workdir /tmp/bench-distill --jobs 2

(defaults: 70 epochs, a width-32 CNN teacher trained 20 epochs; about 50 min on two cores). `--kd-modes deit-hard`
adds the other modes for comparison.

The input geometry (--mel-bins, default 64 here, --tome-r) and the teacher's size (--teacher-width) are the
models', not training settings; every training setting is the default but --epochs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fastast_deploy.evaluation.timing import cpu_name
from fastast_deploy.training.config import AUTO_KD_MODE  # noqa: E402

CLI = [sys.executable, "-c", "from fastast_deploy.cli.main import main; main()"]


def cli(*args: str, log: Path | None = None) -> str:
    """Run one fastast-deploy command; its output (also written to ``log``) or a SystemExit with its tail."""
    start = time.perf_counter()
    result = subprocess.run([*CLI, *args], capture_output=True, text=True)
    out = result.stdout + result.stderr
    if log is not None:
        log.write_text(f"$ fastast-deploy {' '.join(args)}\n{out}\n[{time.perf_counter() - start:.0f} s]\n")
    if result.returncode != 0:
        raise SystemExit(f"fastast-deploy {' '.join(args[:3])} ... failed:\n{out[-2000:]}")
    return out


def data_args(data: Path) -> list[str]:
    return ["--train", str(data / "train.json"), "--val", str(data / "val.json"), "--labels",
            str(data / "labels.csv")]


def train_run(work: Path, data: Path, name: str, extra: list[str]) -> Path:
    run = work / name
    if not (run / "best").is_file():
        cli("train", *data_args(data), "-o", str(run), "--threads", "1", "--quiet", *extra,
            log=work / f"{name}.log")
    return run


def test_accuracy(work: Path, data: Path, run: Path) -> float:
    out = cli("evaluate", str(run), "--data", str(data / "test.json"), "--labels", str(data / "labels.csv"),
              "--threads", "1", "--json")
    report = json.loads(out)
    (work / f"{run.name}.test.json").write_text(json.dumps(report, indent=1))
    return float(report["value"])


def throughput(work: Path, ast: Path, fastast: Path, batch: int, rounds: int) -> dict[str, float]:
    """Clips per second of both models at batch ``batch``, one thread, interleaved rounds (medians): in PyTorch
    (eager), and as ONNX Runtime engines exported by `fastast-deploy export` (the form a user deploys)."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from fastast_deploy.checkpoints.native import load_model
    from fastast_deploy.engines.base import CPU_REWARM_S
    from fastast_deploy.evaluation.timing import time_interleaved

    torch.set_num_threads(1)
    models = {"ast": load_model(ast / "best").eval(), "fastast": load_model(fastast / "best").eval()}
    cfg = models["ast"].config
    x = torch.randn(batch, cfg.input_frames, cfg.num_mel_bins) * 0.5
    with torch.inference_mode():
        eager = time_interleaved({k: (lambda m=m: m(x)) for k, m in models.items()}, batch=batch, warmup=3,
                                 rounds=rounds, rewarm_s=CPU_REWARM_S)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    sessions = {}
    for kind, run in (("ast", ast), ("fastast", fastast)):
        onnx_path = work / f"{kind}.onnx"
        cli("export", str(run / "best"), "-o", str(onnx_path), log=work / f"{kind}.export.log")
        sessions[kind] = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    feed = {sessions["ast"].get_inputs()[0].name: x.numpy().astype(np.float32)}
    engine = time_interleaved({k: (lambda s=s: s.run(None, feed)) for k, s in sessions.items()}, batch=batch,
                              warmup=3, rounds=rounds, rewarm_s=CPU_REWARM_S)
    out: dict[str, float] = {}
    for where, timings in (("pytorch", eager), ("onnxruntime", engine)):
        for kind, timing in timings.items():
            out[f"{where}_{kind}_clips_per_s"] = timing.clips_per_s
        out[f"{where}_speedup"] = timings["fastast"].clips_per_s / timings["ast"].clips_per_s
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="Data and runs; finished runs are reused.")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--epochs", type=int, default=70, help="Epochs of every transformer run.")
    parser.add_argument("--teacher-epochs", type=int, default=20)
    parser.add_argument("--teacher-width", type=int, default=32, help="--cnn-width of the teacher.")
    parser.add_argument("--mel-bins", type=int, default=64)
    parser.add_argument("--tome-r", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=1, help="Training runs at once (each on one thread).")
    parser.add_argument("--kd-modes", default=AUTO_KD_MODE["fastast"], help="Comma-separated --kd-mode values.")
    parser.add_argument("--clean-baseline", action="store_true")
    parser.add_argument("--compare-seeds", default=None,
                        help="Seeds of the runs beyond the three of the claims [default: --seeds].")
    parser.add_argument("--batch", type=int, default=8, help="Batch of the throughput measurement.")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()

    from speech_words import make_speech_words

    work, data = args.workdir, args.workdir / "data"
    work.mkdir(parents=True, exist_ok=True)
    if not (data / "test.json").is_file():
        print("data:", make_speech_words(data), flush=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    geometry = ["--mel-bins", str(args.mel_bins)]
    teacher = train_run(work, data, "teacher", ["--arch", "cnn", "--cnn-width", str(args.teacher_width), *geometry,
                                                "--epochs", str(args.teacher_epochs)])
    common = [*geometry, "--epochs", str(args.epochs)]
    kinds: dict[str, list[str]] = {
        "ast": common,
        "fastast": [*common, "--tome-r", str(args.tome_r)],
    }
    distilled = [*common, "--tome-r", str(args.tome_r), "--teacher", str(teacher)]
    modes = [m for m in args.kd_modes.split(",") if m]
    if AUTO_KD_MODE["fastast"] not in modes:
        modes.insert(0, AUTO_KD_MODE["fastast"])
    for mode in modes:
        kinds[f"fastast_kd_{mode}"] = [*distilled, "--kd-mode", mode]
    if args.clean_baseline:
        kinds["fastast_kd_soft_clean"] = [*distilled, "--kd-mode", "soft", "--teacher-inputs", "clean"]
    kd = f"fastast_kd_{AUTO_KD_MODE['fastast']}"  # what a user gets by default
    compare = [int(s) for s in args.compare_seeds.split(",")] if args.compare_seeds else seeds
    claimed = ("ast", "fastast", kd)
    jobs = [(kind, seed) for seed in seeds for kind in kinds if kind in claimed or seed in compare]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        runs = dict(zip(jobs, pool.map(lambda j: train_run(work, data, f"{j[0]}_s{j[1]}",
                                                           [*kinds[j[0]], "--seed", str(j[1])]), jobs),
                        strict=True))
    teacher_acc = test_accuracy(work, data, teacher)
    acc = {job: test_accuracy(work, data, run) for job, run in runs.items()}
    mean = {kind: statistics.mean(v for (k, _), v in acc.items() if k == kind) for kind in kinds}
    speed = throughput(work, runs[("ast", seeds[0])], runs[("fastast", seeds[0])], args.batch, args.rounds)

    print(f"\nmachine: {cpu_name()}, torch 1 thread per run; seeds {seeds}; {args.epochs} epochs "
          f"(teacher {args.teacher_epochs}); {args.mel_bins} mel bins; FastAST r = {args.tome_r}")
    print(f"teacher (CNN) test accuracy {teacher_acc:.4f}; chance 0.1000")
    print(f"{'run':<24} " + " ".join(f"seed {s:<5}" for s in seeds) + "  mean")
    for kind in kinds:
        cells = [f"{acc[(kind, s)]:<10.4f}" if (kind, s) in acc else f"{'-':<10}" for s in seeds]
        print(f"{kind:<24} " + " ".join(cells) + f"  {mean[kind]:.4f}")
    for where, name in (("onnxruntime", "ONNX Runtime engine"), ("pytorch", "PyTorch eager")):
        print(f"throughput at batch {args.batch} ({name}, 1 thread, median of {args.rounds} interleaved rounds): "
              f"ast {speed[f'{where}_ast_clips_per_s']:.1f} clips/s, fastast "
              f"{speed[f'{where}_fastast_clips_per_s']:.1f} clips/s, {speed[f'{where}_speedup']:.2f}x")
    claims = {
        "(1) ast learns well above chance (>= 0.3, chance 0.1)": mean["ast"] >= 0.3,
        f"(2) {kd} - fastast >= 0.10": mean[kd] - mean["fastast"] >= 0.10,
        f"(3) {kd} >= ast": mean[kd] >= mean["ast"],
        "(3) fastast engine throughput >= 1.5x ast": speed["onnxruntime_speedup"] >= 1.5,
    }
    for claim, ok in claims.items():
        print(f"{'met   ' if ok else 'MISSED'} {claim}")
    summary = {"machine": cpu_name(), "seeds": seeds, "epochs": args.epochs, "teacher_epochs": args.teacher_epochs,
               "mel_bins": args.mel_bins, "tome_r": args.tome_r, "teacher_test_accuracy": teacher_acc,
               "test_accuracy": {f"{k}_s{s}": v for (k, s), v in acc.items()}, "mean": mean, "throughput": speed,
               "claims": claims}
    (work / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
