"""ONNX Runtime CPU: optimum-onnx's AST export against our r = 0 and FastAST exports, measured in one run.

What a user would pick instead of this project is Hugging Face's AST exported by
``optimum-cli export onnx --task audio-classification``. optimum-onnx 0.1.0 pins transformers 4.57.6, which clashes
with this project's transformers, so it lives in its own venv and is driven by subprocess:

    python3 -m venv /tmp/optimum-venv && /tmp/optimum-venv/bin/pip install torch==2.13.0 optimum-onnx==0.1.0

Same random weights for all three (one Hugging Face directory per input length, see bench_onnx.hf_directory);
AST-small geometry; T = 512 with r = 50 and T = 1024 with r = 100; batch 1 and 8; rounds interleaved across the
models (fastast_deploy.evaluation.timing.time_interleaved), medians printed. Also printed: the share of node time
spent in merge nodes (ORT profiling) and, with --optimize, our exports built with
``build-engine --backend onnxruntime --optimize``.

    python benchmarks/bench_optimum.py --threads 2 --repeats 30 --out /tmp/bench-optimum
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

import onnxruntime as ort
import torch
from bench_onnx import hf_directory, median_times, merge_share, session

from fastast_deploy.checkpoints.native import load_model
from fastast_deploy.engines.ort_engine import OrtBuildOptions, build_onnxruntime_engine
from fastast_deploy.exporters.onnx_export import ExportOptions, export_onnx
from fastast_deploy.exporters.parity import fbank_like
from fastast_deploy.model.flops import flop_ratio

CASES = ((512, 50), (1024, 100))


def export_with_optimum(cli: Path, hf_dir: Path, out: Path) -> Path:
    """``optimum-cli export onnx --task audio-classification`` into ``out``; its model.onnx."""
    command = [str(cli), "export", "onnx", "--model", str(hf_dir), "--task", "audio-classification", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not (out / "model.onnx").is_file():
        sys.exit(f"optimum-cli failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return out / "model.onnx"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small")
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds per case (interleaved)")
    parser.add_argument("--batch", type=lambda v: [int(b) for b in v.split(",")], default=[1, 8])
    parser.add_argument("--threads", type=int, default=2, help="ORT intra-op threads")
    parser.add_argument("--optimum-cli", type=Path, default=Path("/tmp/optimum-venv/bin/optimum-cli"))
    parser.add_argument("--optimize", action="store_true", help="also time our exports built with --optimize")
    parser.add_argument("--cases", default="512:50,1024:100", help="T:r pairs")
    parser.add_argument("--out", type=Path, default=None, help="folder for the exports (default: a temp folder)")
    parser.add_argument("--reuse", action="store_true", help="reuse exports already in --out (same code only)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="fastast-bench-optimum-"))
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    cases = [tuple(int(v) for v in case.split(":")) for case in args.cases.split(",")]
    print(f"# ONNX Runtime {ort.__version__} CPU ({platform.processor() or platform.machine()}, "
          f"{platform.node()}), AST-{args.size}, batches {args.batch}, {args.threads} threads, "
          f"{args.repeats} interleaved rounds, medians")
    results: dict[str, object] = {}
    for frames, r in cases:
        hf_dir = hf_directory(args.size, frames, out)
        peer = out / f"optimum-{frames}"
        paths: dict[str, Path] = {"optimum": peer / "model.onnx" if args.reuse and (peer / "model.onnx").is_file()
                                  else export_with_optimum(args.optimum_cli, hf_dir, peer)}
        ratio = 1.0
        for rr in (0, r):
            model = load_model(hf_dir, tome_r=rr)
            if rr:
                ratio = flop_ratio(model.config, model.schedule)
            path = out / f"ours-{frames}-r{rr}.onnx"
            if not (args.reuse and path.is_file()):  # the export checks parity with PyTorch on one batch
                export_onnx(model, path, ExportOptions(), parity_inputs=1)
            paths[f"ours r={rr}"] = path
            if args.optimize:
                built = build_onnxruntime_engine(path, out / f"ours-{frames}-r{rr}-opt.onnx",
                                                 OrtBuildOptions(threads=args.threads, optimize=True))
                paths[f"ours r={rr} --optimize"] = built.path
        sessions = {name: session(path, args.threads) for name, path in paths.items()}
        entry: dict[str, object] = {"flop_ratio": ratio}
        for batch in args.batch:
            x = fbank_like(batch, frames, 128, seed=1)
            runners = {name: partial(s.run, None, {s.get_inputs()[0].name: x}) for name, s in sessions.items()}
            t = median_times(runners, args.repeats)
            fast, base, peer = t[f"ours r={r}"], t["ours r=0"], t["optimum"]
            row: dict[str, object] = {"latency_ms": {k: 1e3 * v for k, v in t.items()}}
            print(f"\nT={frames}, r={r} (FLOP ratio {ratio:.2f}x), batch {batch}: median latency per batch")
            for name, sec in t.items():
                print(f"  {name:<24} {1e3 * sec:9.1f} ms  {batch / sec:8.2f} clips/s")
            row["speedup"], row["r0_vs_optimum"], row["fast_vs_optimum"] = base / fast, peer / base, peer / fast
            print(f"  FastAST r={r} over our r=0: {base / fast:.2f}x = {base / fast / ratio:.2f} of the FLOP ratio "
                  "(target >= 0.90)")
            print(f"  our r=0 over optimum: {peer / base:.2f}x (target >= 1.00)")
            print(f"  FastAST r={r} over optimum: {peer / fast:.2f}x = {peer / fast / ratio:.2f} of the FLOP ratio "
                  "(target >= 0.90 at r=50)")
            if args.optimize:
                for rr in (0, r):
                    gain = t[f"ours r={rr}"] / t[f"ours r={rr} --optimize"]
                    row[f"optimize_gain_r{rr}"] = gain
                    print(f"  --optimize on r={rr}: {gain:.2f}x faster than without")
            share, count = merge_share(paths[f"ours r={r}"], x, args.threads)
            row["merge_share"] = share
            print(f"  time in the {count} merge nodes at r={r}: {100 * share:.1f}% of node time (target <= 5%)")
            entry[f"batch{batch}"] = row
        results[f"T{frames}"] = entry
    (out / "bench_optimum.json").write_text(json.dumps(results, indent=2))
    print(f"\nexports and bench_optimum.json in {out}")


if __name__ == "__main__":
    main()
