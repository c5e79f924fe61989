"""ONNX Runtime CPU benchmark of the int8 (Q/DQ) FastAST export, every comparison measured side by side in one run.

AST-small geometry (384-dim, 12 blocks, 6 heads), T = 512 frames x 128 mel bins, random weights (the work depends
only on geometry and schedule; the calibration clips are fbank-like arrays, which set the scales but not the
speed). Three exports of the same weights: fp32 r = 16, int8 r = 16 (Q/DQ, calibrated at export) and fp32 r = 0.
Printed: int8 vs fp32 at the same r (the int8 speed-up), and int8 FastAST vs fp32 r = 0 next to the FLOP ratio of
r = 16 (merging alone; int8 adds to it), at batch 1 and 8, through ``time_interleaved`` (rounds rotate the order,
medians).

    python benchmarks/bench_int8.py --out /tmp/bench-int8
    python benchmarks/bench_int8.py --out /tmp/bench-int8 --reuse        # time those exports again
    python benchmarks/bench_int8.py --size tiny --frames 128 --rounds 5   # quicker
"""

from __future__ import annotations

import argparse
import json
import platform
from functools import partial
from pathlib import Path

import onnxruntime as ort
import torch

from fastast_deploy.engines.base import CPU_REWARM_S
from fastast_deploy.evaluation.timing import time_interleaved
from fastast_deploy.exporters.onnx_export import ExportOptions, export_onnx
from fastast_deploy.exporters.quantize import QuantizeOptions
from fastast_deploy.metrics import fbank_like
from fastast_deploy.model.config import ModelConfig, TomeConfig
from fastast_deploy.model.fastast import FastAST, build_model
from fastast_deploy.model.flops import flop_ratio
from fastast_deploy.model.schedule import make_schedule


def model_at(config: ModelConfig, r: int) -> FastAST:
    torch.manual_seed(0)  # same weights for every r
    return build_model(config, TomeConfig(make_schedule(r, config.depth)))


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/fastast-bench-int8"))
    parser.add_argument("--size", default="small")
    parser.add_argument("--frames", type=int, default=512)
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calib-clips", type=int, default=8)
    parser.add_argument("--reuse", action="store_true", help="Time the exports already in --out (skip exporting).")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    config = ModelConfig.from_size(args.size, input_frames=args.frames, num_mel_bins=128, num_labels=527)
    merged, plain = model_at(config, args.r), model_at(config, 0)
    calibration = fbank_like(args.calib_clips, config.input_frames, config.num_mel_bins, seed=1)
    quantize = QuantizeOptions(clips=args.calib_clips)
    fp32, int8 = f"fp32 r={args.r}", f"int8 r={args.r}"
    paths = {fp32: args.out / "fp32-r.onnx", int8: args.out / "int8-r.onnx", "fp32 r=0": args.out / "fp32-r0.onnx"}
    if not args.reuse:
        export_onnx(merged, paths[fp32], ExportOptions(), check=False)
        # check=False: random weights give near-tied logits, so top-1 agreement says nothing here
        export_onnx(merged, paths[int8], ExportOptions(precision="int8"), calibration=calibration,
                    quantize=quantize, check=False)
        export_onnx(plain, paths["fp32 r=0"], ExportOptions(), check=False)
    sessions = {name: session(path, args.threads) for name, path in paths.items()}
    ratio = flop_ratio(config, merged.schedule)
    results: dict[str, object] = {
        "machine": f"{platform.machine()} {platform.processor() or ''} ({args.threads} ORT threads)".strip(),
        "onnxruntime": ort.__version__, "geometry": f"{args.size}, T={args.frames}, r={args.r}",
        "flop_ratio_r_vs_r0": ratio, "batches": {},
    }
    print(f"{args.size} T={args.frames} r={args.r}: tokens {merged.token_counts[0]} -> {merged.token_counts[-1]}, "
          f"FLOP ratio r=0 / r={args.r}: {ratio:.2f}x; ORT {ort.__version__}, {args.threads} threads")
    for batch in (int(b) for b in args.batches.split(",")):
        feed = {"fbank": fbank_like(batch, config.input_frames, config.num_mel_bins, seed=7)}
        timed = time_interleaved({name: partial(s.run, None, feed) for name, s in sessions.items()}, batch=batch,
                                 warmup=2, rounds=args.rounds, rewarm_s=CPU_REWARM_S)
        ms = {name: t.latency_ms_p50 for name, t in timed.items()}
        row = {"latency_ms_p50": ms, "int8_vs_fp32_same_r": ms[fp32] / ms[int8],
               "int8_fastast_vs_fp32_r0": ms["fp32 r=0"] / ms[int8],
               "fp32_fastast_vs_fp32_r0": ms["fp32 r=0"] / ms[fp32]}
        results["batches"][str(batch)] = row
        print(f"batch {batch}: p50 ms " + ", ".join(f"{k} {v:.1f}" for k, v in ms.items()))
        print(f"  int8 vs fp32 at r={args.r}: {row['int8_vs_fp32_same_r']:.2f}x | int8 r={args.r} vs fp32 r=0: "
              f"{row['int8_fastast_vs_fp32_r0']:.2f}x (fp32 r={args.r} vs r=0: {row['fp32_fastast_vs_fp32_r0']:.2f}x, "
              f"FLOP ratio {ratio:.2f}x)")
    (args.out / "bench_int8.json").write_text(json.dumps(results, indent=2))
    sizes = {name: round(path.stat().st_size / 2**20, 1) for name, path in paths.items()}
    print(f"model files (MiB): {sizes}")


if __name__ == "__main__":
    main()
