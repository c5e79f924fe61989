"""PyTorch forward throughput of FastAST at several r, measured side by side in one run.

Prints clips/s (median over interleaved repetitions), the speed-up over r = 0 and the FLOP ratio beside it.
Weights are random: token counts, and so the work done, depend only on the geometry and the schedule.

    python benchmarks/bench_pytorch.py                  # AST-small, T in {1024, 512}, batch {1, 8}, r {0, 16, 50}
    python benchmarks/bench_pytorch.py --size tiny --frames 512 --batch 8 --r 0,50 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import platform
from functools import partial

import torch

from fastast_deploy.engines.base import CPU_REWARM_S
from fastast_deploy.evaluation.timing import time_interleaved
from fastast_deploy.model.config import ModelConfig, TomeConfig
from fastast_deploy.model.fastast import build_model
from fastast_deploy.model.flops import flop_ratio
from fastast_deploy.model.schedule import make_schedule


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def run_once(model: torch.nn.Module, x: torch.Tensor, device: str) -> None:
    """One forward, complete on return (the GPU synchronised), as time_interleaved needs."""
    model(x)
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small", choices=["tiny", "small", "base"])
    parser.add_argument("--frames", type=ints, default=[1024, 512])
    parser.add_argument("--batch", type=ints, default=[1, 8])
    parser.add_argument("--r", type=ints, default=[0, 16, 50])
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per setting (after one warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    machine = torch.cuda.get_device_name() if args.device == "cuda" else f"{platform.processor() or 'cpu'}"
    print(f"# {args.size}, {args.device} ({machine}), {torch.get_num_threads()} threads, {args.dtype}, "
          f"torch {torch.__version__}")
    print(f"{'frames':>6} {'batch':>5} {'r':>4} {'tokens':>6} {'clips/s':>9} {'speedup':>8} {'flop ratio':>10} "
          f"{'speedup/flop':>12}")
    rows = []
    torch.manual_seed(0)
    for frames in args.frames:
        config = ModelConfig.from_size(args.size, input_frames=frames)
        base = build_model(config)
        models = {}
        for r in args.r:
            model = build_model(config, TomeConfig(make_schedule(r, config.depth)))
            model.load_state_dict(base.state_dict())
            models[r] = model.to(args.device, dtype)
        for batch in args.batch:
            x = torch.randn(batch, frames, config.num_mel_bins, device=args.device, dtype=dtype)
            with torch.inference_mode():  # interleaved, so drift in machine load hits every r alike
                timed = time_interleaved({r: partial(run_once, models[r], x, args.device) for r in args.r},
                                         batch=batch, warmup=1, rounds=args.repeats,
                                         rewarm_s=CPU_REWARM_S if args.device == "cpu" else 0.0)
            base_rate = timed[args.r[0]].clips_per_s
            for r in args.r:
                rate = timed[r].clips_per_s
                ratio = flop_ratio(config, models[r].schedule)
                speedup = rate / base_rate
                rows.append({"size": args.size, "frames": frames, "batch": batch, "r": r,
                             "tokens_out": models[r].token_counts[-1], "clips_per_s": rate,
                             "speedup": speedup, "flop_ratio": ratio, "device": args.device, "machine": machine})
                print(f"{frames:>6} {batch:>5} {r:>4} {models[r].token_counts[-1]:>6} {rate:>9.2f} {speedup:>7.2f}x "
                      f"{ratio:>9.2f}x {speedup / ratio:>12.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
