"""Training benchmarks: the training-step time of FastAST with ToMe against r = 0, and the accuracy pipeline.

Step time (default): forward + CMKD loss + backward + AdamW step at T = 512 frames, tiny and small, r = 32 against
r = 0 built from the same weights, timed interleaved (median of repeats after a warm-up); the speed-up is printed
next to the FLOP ratio of a forward pass (fastast_deploy.model.flops.flop_ratio). On CUDA the step runs under AMP.

    python benchmarks/bench_train.py                                   # CPU: tiny and small, batch 8, r 0 vs 32
    python benchmarks/bench_train.py --sizes tiny --batch 4 --repeats 5
    python benchmarks/bench_train.py --device cuda --batch 32          # GPU: batch 32 with AMP (bf16 / fp16)

Accuracy (--accuracy DIR): the CLI pipeline below, run as subprocesses and timed, then the best validation
accuracy of each run beside the chance level (always predicting the most frequent class). These are the exact
commands; DIR is the working directory:

    fastast-deploy make-dataset synthetic -o DIR/data --classes 10 --clips-per-class 50 --seconds 1.3 --seed 0
    fastast-deploy train --train DIR/data/train.json --val DIR/data/val.json --labels DIR/data/labels.csv \\
        -o DIR/teacher --arch compact-cnn --cnn-width 16 --frames 128 --epochs 15 --lr 1e-3 --quiet
    fastast-deploy train --train DIR/data/train.json --val DIR/data/val.json --labels DIR/data/labels.csv \\
        -o DIR/student-kd --model tiny --depth 6 --tome-r 8 --frames 128 --mel-bins 64 --epochs 30 \\
        --batch-size 16 --lr 1e-3 --quiet --teacher DIR/teacher
    fastast-deploy train --train DIR/data/train.json --val DIR/data/val.json --labels DIR/data/labels.csv \\
        -o DIR/student --model tiny --depth 6 --tome-r 8 --frames 128 --mel-bins 64 --epochs 30 \\
        --batch-size 16 --lr 1e-3 --quiet

The teacher (128 mel bins) computes its logits on its own features; the students take 64 mel bins.

    python benchmarks/bench_train.py --accuracy /tmp/bench-train      # DIR must not hold earlier runs
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import torch

from fastast_deploy.engines.base import CPU_REWARM_S
from fastast_deploy.evaluation.timing import cpu_name, time_interleaved
from fastast_deploy.model.config import ModelConfig, TomeConfig
from fastast_deploy.model.fastast import build_model
from fastast_deploy.model.flops import flop_ratio
from fastast_deploy.model.schedule import make_schedule
from fastast_deploy.training.cmkd import cmkd_loss, teacher_targets

DATA = ("--classes", "10", "--clips-per-class", "50", "--seconds", "1.3", "--seed", "0")
TEACHER = ("--arch", "compact-cnn", "--cnn-width", "16", "--frames", "128", "--epochs", "15", "--lr", "1e-3", "--quiet")
STUDENT = ("--model", "tiny", "--depth", "6", "--tome-r", "8", "--frames", "128", "--mel-bins", "64", "--epochs", "30",
           "--batch-size", "16", "--lr", "1e-3", "--quiet")


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
         kd: torch.Tensor, device: str) -> None:
    """One training step, complete on return (the GPU synchronised), as time_interleaved needs."""
    with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        logits = model(x)
    loss = cmkd_loss(logits.float(), y, kd, "singlelabel", 0.5, 1.0).total
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    optimizer.step()
    sync(device)


def bench_steps(args: argparse.Namespace) -> list[dict]:
    machine = torch.cuda.get_device_name() if args.device == "cuda" else cpu_name()
    print(f"# training step (forward + loss + backward + AdamW), {args.device} ({machine}), "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, T={args.frames}, batch {args.batch}"
          f"{', AMP bf16' if args.device == 'cuda' else ', fp32'}")
    print(f"{'size':>5} {'r':>4} {'tokens':>12} {'ms/step':>9} {'clips/s':>8} {'speedup':>8} {'flop ratio':>10}")
    rows = []
    for size in args.sizes:
        config = ModelConfig.from_size(size, input_frames=args.frames, num_labels=args.labels)
        torch.manual_seed(0)
        base = build_model(config)
        models, optimizers = {}, {}
        for r in args.r:
            model = build_model(config, TomeConfig(make_schedule(r, config.depth)))
            model.load_state_dict(base.state_dict())
            models[r] = model.to(args.device).train()
            optimizers[r] = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x = torch.randn(args.batch, args.frames, config.num_mel_bins, device=args.device) * 0.5
        y = torch.eye(args.labels, device=args.device)[torch.randint(args.labels, (args.batch,))]
        kd = teacher_targets(torch.randn(args.batch, args.labels, device=args.device), "singlelabel", 1.0)
        # interleaved: drifting machine load hits every r alike
        timed = time_interleaved({r: partial(step, models[r], optimizers[r], x, y, kd, args.device) for r in args.r},
                                 batch=args.batch, warmup=1, rounds=args.repeats,
                                 rewarm_s=CPU_REWARM_S if args.device == "cpu" else 0.0)
        base_time = timed[args.r[0]].latency_ms_p50 / 1e3
        for r in args.r:
            t = timed[r].latency_ms_p50 / 1e3
            counts = models[r].token_counts
            ratio = flop_ratio(config, models[r].schedule)
            rows.append({"size": size, "r": r, "frames": args.frames, "batch": args.batch, "ms_per_step": 1e3 * t,
                         "clips_per_s": args.batch / t, "speedup": base_time / t, "flop_ratio": ratio,
                         "tokens": [counts[0], counts[-1]], "device": args.device, "machine": machine,
                         "latency_ms": timed[r].as_dict()})
            print(f"{size:>5} {r:>4} {f'{counts[0]}->{counts[-1]}':>12} {1e3 * t:>9.0f} {args.batch / t:>8.2f} "
                  f"{base_time / t:>7.2f}x {ratio:>9.2f}x")
    return rows


def run(cmd: list[str]) -> float:
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start


def best(run_dir: Path) -> tuple[float, int]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    top = max(rows, key=lambda r: r["val_acc"])
    return top["val_acc"], top["epoch"]


def bench_accuracy(root: Path) -> dict:
    cli = shutil.which("fastast-deploy") or str(Path(sys.executable).parent / "fastast-deploy")
    data = root / "data"
    files = ("--train", str(data / "train.json"), "--val", str(data / "val.json"), "--labels", str(data / "labels.csv"))
    seconds = {"dataset": run([cli, "make-dataset", "synthetic", "-o", str(data), *DATA])}
    seconds["teacher"] = run([cli, "train", *files, "-o", str(root / "teacher"), *TEACHER])
    seconds["student_kd"] = run([cli, "train", *files, "-o", str(root / "student-kd"), *STUDENT,
                                 "--teacher", str(root / "teacher")])
    seconds["student"] = run([cli, "train", *files, "-o", str(root / "student"), *STUDENT])
    val = json.loads((data / "val.json").read_text())["data"]
    counts: dict[str, int] = {}
    for entry in val:
        counts[entry["labels"]] = counts.get(entry["labels"], 0) + 1
    result = {"chance_val_acc": max(counts.values()) / len(val), "val_clips": len(val), "seconds": seconds,
              "threads": torch.get_num_threads(), "machine": cpu_name()}
    for name in ("teacher", "student-kd", "student"):
        result[name] = dict(zip(("best_val_acc", "epoch"), best(root / name), strict=True))
    print(json.dumps(result, indent=2))
    print(f"chance {result['chance_val_acc']:.3f} | teacher (compact CNN) {result['teacher']['best_val_acc']:.3f} | "
          f"tiny FastAST r=8 + KD {result['student-kd']['best_val_acc']:.3f} | without KD "
          f"{result['student']['best_val_acc']:.3f} | dataset + teacher + student-KD "
          f"{seconds['dataset'] + seconds['teacher'] + seconds['student_kd']:.0f} s")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=lambda s: s.split(","), default=["tiny", "small"])
    parser.add_argument("--frames", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--r", type=ints, default=[0, 32])
    parser.add_argument("--labels", type=int, default=50, help="classifier outputs (ESC-50: 50)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per setting (after one warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--accuracy", type=Path, default=None, metavar="DIR",
                        help="run the accuracy pipeline in DIR instead of timing steps")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = bench_accuracy(args.accuracy) if args.accuracy else bench_steps(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
