"""What a CUDA GPU answers that a CPU cannot: PyTorch parity on the GPU against the CPU, and the ToMe speed-up on the
GPU, eager and CUDA-graph-captured, with the FLOP ratio beside it. Writes one JSON of figures.

Parity: the same random-weight model and the same fbank-like inputs on the CPU in float32 (the reference) and on
the device in float32 (TF32 off) and in float16 (``model.half()``; ToMe's matching and weighted merges stay float32
inside the model): max |diff|, cosine, top-1 agreement, merge-decision agreement per merging block.

Speed: per batch and mode, every r is timed round-robin (drifting load hits every r alike), after warm-up; on CUDA
each forward is timed with CUDA events on the stream (device time; the input is already on the GPU, so there are no
host transfers in it), on the CPU with the wall clock. Medians and p90 in ms, clips/s, speed-up over r = 0 and
the FLOP ratio (the speed of light for the speed-up) beside it. CUDA-graph mode captures one forward per (r, batch)
with torch.cuda.graph and replays it: launch overhead gone, which is what batch 1 needs.

    python benchmarks/bench_gpu.py --json gpu.json                       # AST-base, T 1024, batch 1/8/32, r 0/16/50
    python benchmarks/bench_gpu.py --device cpu --size tiny --frames 128 --batch 1,2 --r 0,8 --repeats 2 --json x.json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastast_deploy.metrics import compare_logits, fbank_like, merge_agreement
from fastast_deploy.model.config import ModelConfig, TomeConfig
from fastast_deploy.model.fastast import FastAST, build_model
from fastast_deploy.model.flops import flop_ratio
from fastast_deploy.model.schedule import make_schedule


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def words(text: str) -> list[str]:
    return [v for v in text.split(",") if v]


def machine(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {"device": device, "torch": torch.__version__, "python": platform.python_version()}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, compute_capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    else:
        info.update(cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    return info


def models_for(config: ModelConfig, rs: list[int]) -> dict[int, FastAST]:
    """One random-weight model per r, all with the same weights (r changes the schedule only)."""
    torch.manual_seed(0)
    base = build_model(config)
    out = {}
    for r in rs:
        model = build_model(config, TomeConfig(make_schedule(r, config.depth)))
        model.load_state_dict(base.state_dict())
        out[r] = model.eval()
    return out


def run_with_merges(model: FastAST, x: np.ndarray, device: str, dtype: torch.dtype) -> tuple[np.ndarray, list]:
    """Logits (float32 numpy) and merge positions (src, dst per merging block) on ``device`` in ``dtype``."""
    with torch.inference_mode():
        logits, merges = model.forward_with_merges(torch.from_numpy(x).to(device, dtype))
    positions = []
    for m in merges:
        positions += [(2 * m.src_idx).cpu().numpy(), (2 * m.dst_idx + 1).cpu().numpy()]
    return logits.float().cpu().numpy(), positions


def parity(config: ModelConfig, r: int, device: str, dtypes: list[str], clips: int, batch: int) -> dict[str, Any]:
    """The model on ``device`` in each dtype against the same model on the CPU in float32."""
    model = models_for(config, [r])[r]
    x = fbank_like(clips, config.input_frames, config.num_mel_bins, seed=1)
    chunks = [x[i:i + batch] for i in range(0, clips, batch)]
    reference = [run_with_merges(model, c, "cpu", torch.float32) for c in chunks]
    results: dict[str, Any] = {"r": r, "clips": clips, "reference": "cpu float32"}
    if device == "cuda":  # TF32 would make "fp32" a 10-bit-mantissa matmul; parity asks for real fp32
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    for name in dtypes:
        dtype = getattr(torch, name)
        moved = copy.deepcopy(model).to(device, dtype)
        got = [run_with_merges(moved, c, device, dtype) for c in chunks]
        figures = compare_logits(np.concatenate([g[0] for g in reference]), np.concatenate([g[0] for g in got]))
        blocks = [merge_agreement(ref[1], cand[1]) for ref, cand in zip(reference, got, strict=True)]
        sizes = [len(c) for c in chunks]
        per_block = [float(np.average([b[i] for b in blocks], weights=sizes)) for i in range(len(blocks[0]))]
        results[name] = {**{k: figures[k] for k in ("max_abs_diff", "mean_abs_diff", "cosine_min", "cosine_mean",
                                                       "top1_agreement", "non_finite_clips")},
                         "merge_agreement_per_block": per_block}
        del moved
    return results


def eager_step(model: FastAST, x: torch.Tensor) -> Callable[[], Any]:
    return lambda: model(x)


def graph_step(model: FastAST, x: torch.Tensor, warmup: int) -> Callable[[], Any]:
    """Capture one forward into a CUDA graph (after warm-up on a side stream, as torch.cuda.graphs asks) and
    return its replay."""
    static = x.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(max(warmup, 1)):
            model(static)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode():
        model(static)
    return graph.replay


def time_step(step: Callable[[], Any], device: str) -> float:
    """Seconds for one call: CUDA events around it on the current stream (device time), else wall clock."""
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        with torch.inference_mode():
            step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    begin = time.perf_counter()
    with torch.inference_mode():
        step()
    return time.perf_counter() - begin


def speed(config: ModelConfig, rs: list[int], batches: list[int], modes: list[str], device: str, dtype_name: str,
          warmup: int, repeats: int) -> list[dict[str, Any]]:
    dtype = getattr(torch, dtype_name)
    models = {r: m.to(device, dtype) for r, m in models_for(config, rs).items()}
    rows = []
    for batch in batches:
        x = torch.from_numpy(fbank_like(batch, config.input_frames, config.num_mel_bins, seed=2)).to(device, dtype)
        for mode in modes:
            steps, errors = {}, {}
            for r in rs:
                try:
                    steps[r] = graph_step(models[r], x, warmup) if mode == "graph" else eager_step(models[r], x)
                except RuntimeError as err:  # e.g. an op that cannot be captured: recorded, not hidden
                    errors[r] = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            for _ in range(warmup):
                for step in steps.values():
                    time_step(step, device)
            times: dict[int, list[float]] = {r: [] for r in steps}
            for _ in range(repeats):  # round-robin over r
                for r, step in steps.items():
                    times[r].append(time_step(step, device))
            base = statistics.median(times[rs[0]]) if rs[0] in times else None
            for r in rs:
                row: dict[str, Any] = {"frames": config.input_frames, "batch": batch, "mode": mode, "r": r,
                                       "dtype": dtype_name, "tokens_out": models[r].token_counts[-1],
                                       "flop_ratio": flop_ratio(config, models[r].schedule)}
                if r in errors:
                    rows.append({**row, "error": errors[r]})
                    continue
                median = statistics.median(times[r])
                row.update(ms_median=median * 1e3, ms_p90=float(np.percentile(times[r], 90)) * 1e3,
                           clips_per_s=batch / median, speedup=None if base is None else base / median,
                           timing="cuda events (device)" if device == "cuda" else "wall clock")
                rows.append(row)
            del steps
            if device == "cuda":
                torch.cuda.empty_cache()
    return rows


def print_speed(rows: list[dict[str, Any]]) -> None:
    print(f"{'mode':>5} {'dtype':>8} {'batch':>5} {'r':>4} {'tokens':>6} {'ms':>9} {'clips/s':>9} {'speedup':>8} "
          f"{'flop ratio':>10}")
    for row in rows:
        if "error" in row:
            print(f"{row['mode']:>5} {row['dtype']:>8} {row['batch']:>5} {row['r']:>4}  error: {row['error']}")
            continue
        speedup = f"{row['speedup']:.2f}x" if row["speedup"] is not None else "-"
        print(f"{row['mode']:>5} {row['dtype']:>8} {row['batch']:>5} {row['r']:>4} {row['tokens_out']:>6} "
              f"{row['ms_median']:>9.2f} {row['clips_per_s']:>9.1f} {speedup:>8} {row['flop_ratio']:>9.2f}x")


def tests_summary(log: str | None, rc: int | None) -> dict[str, Any] | None:
    """The pytest run gpu_check.sh made: exit code, last line, and the skip reasons (-rs lines)."""
    if log is None:
        return None
    lines = Path(log).read_text(errors="replace").splitlines() if Path(log).is_file() else []
    skipped = [line for line in lines if line.startswith("SKIPPED")]
    return {"exit_code": rc, "summary": lines[-1] if lines else "", "skipped": skipped}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--size", default="base", choices=["tiny", "small", "base"])
    parser.add_argument("--frames", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=None, help="fewer blocks than the size has (smoke runs)")
    parser.add_argument("--batch", type=ints, default=[1, 8, 32])
    parser.add_argument("--r", type=ints, default=[0, 16, 50], help="the first is the speed-up's baseline")
    parser.add_argument("--modes", type=words, default=None, help="eager,graph (default: both on CUDA, eager on CPU)")
    parser.add_argument("--speed-dtype", default=None, help="default: float16 on CUDA, float32 on the CPU")
    parser.add_argument("--parity-dtypes", type=words, default=["float32", "float16"])
    parser.add_argument("--parity-r", type=int, default=16)
    parser.add_argument("--parity-clips", type=int, default=32)
    parser.add_argument("--parity-batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", required=True, help="where to write the figures")
    parser.add_argument("--tests-log", default=None, help="pytest output to summarise in the JSON (gpu_check.sh)")
    parser.add_argument("--tests-rc", type=int, default=None)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA GPU (a CPU build of torch, or no driver)")
    modes = args.modes or (["eager", "graph"] if args.device == "cuda" else ["eager"])
    if "graph" in modes and args.device != "cuda":
        parser.error("CUDA-graph mode needs --device cuda")
    speed_dtype = args.speed_dtype or ("float16" if args.device == "cuda" else "float32")
    extra = {"depth": args.depth} if args.depth else {}
    config = ModelConfig.from_size(args.size, input_frames=args.frames, **extra)
    report: dict[str, Any] = {"machine": machine(args.device), "size": args.size, "frames": args.frames,
                              "tests": tests_summary(args.tests_log, args.tests_rc)}
    print(f"# {args.size}, T={args.frames}, {report['machine']}")
    report["parity"] = parity(config, args.parity_r, args.device, args.parity_dtypes, args.parity_clips,
                              args.parity_batch)
    for name in args.parity_dtypes:
        p = report["parity"][name]
        print(f"parity {args.device} {name} vs cpu float32 (r={args.parity_r}, {args.parity_clips} clips): max|diff| "
              f"{p['max_abs_diff']:.3g}, cosine min {p['cosine_min']:.6f}, top-1 {p['top1_agreement']:.3f}, merges "
              f"{[round(v, 3) for v in p['merge_agreement_per_block']]}")
    report["speed"] = speed(config, args.r, args.batch, modes, args.device, speed_dtype, args.warmup, args.repeats)
    print_speed(report["speed"])
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
