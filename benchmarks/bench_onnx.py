"""ONNX Runtime CPU benchmark of exported FastAST, every comparison measured side by side in one run.

1. Our r = 0 export vs Hugging Face's AST exported with torch.onnx.export (what users do today), same weights.
2. AST-small geometry: r = 50 at T = 512 and r = 100 at T = 1024 against our r = 0 export, next to the FLOP ratio.
3. Share of run time spent in merge nodes (ORT profiling; nodes tagged fastast_deploy.part = merge at export).
4. The ONNX FastAST in ORT vs eager PyTorch at the same r, batch 1.

Weights are random (token counts, and so the work, depend only on geometry and schedule).

    python benchmarks/bench_onnx.py --out /tmp/bench            # all parts; exports land in --out
    python benchmarks/bench_onnx.py --size tiny --repeats 3     # quicker
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from fastast_deploy.checkpoints.native import load_model
from fastast_deploy.engines.base import CPU_REWARM_S
from fastast_deploy.evaluation.timing import time_interleaved
from fastast_deploy.exporters.onnx_export import PART_KEY, ExportOptions, export_onnx
from fastast_deploy.exporters.parity import fbank_like
from fastast_deploy.model.config import SIZES
from fastast_deploy.model.flops import flop_ratio


def session(path: Path, threads: int | None, profile: bool = False) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.enable_profiling = profile
    options.profile_file_prefix = str(Path(tempfile.gettempdir()) / "fastast-ort-profile")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def median_times(runners: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per call of each runner; one warm-up each, then repetitions interleaved across runners."""
    timed = time_interleaved(runners, warmup=1, rounds=repeats, rewarm_s=CPU_REWARM_S)
    return {name: t.latency_ms_p50 / 1e3 for name, t in timed.items()}


def hf_directory(size: str, frames: int, out: Path) -> Path:
    """A random Hugging Face AST of a DeiT size, saved with save_pretrained."""
    import transformers

    dim, depth, heads = SIZES[size]
    config = transformers.ASTConfig(hidden_size=dim, num_hidden_layers=depth, num_attention_heads=heads,
                                    intermediate_size=4 * dim, max_length=frames, num_mel_bins=128, num_labels=527)
    torch.manual_seed(0)
    model = transformers.ASTForAudioClassification(config).eval()
    with torch.no_grad():  # HF zero-initialises these; random values make merging non-trivial
        for name, p in model.named_parameters():
            if "position_embeddings" in name or "distillation_token" in name or "cls_token" in name:
                p.normal_(0, 0.02)
    path = out / f"hf-{size}-{frames}"
    model.save_pretrained(path)
    return path


def export_hf_like_users_do(hf_dir: Path, path: Path) -> Path:
    """HF's model exported with plain torch.onnx.export, dynamic batch, opset 18."""
    import transformers

    model = transformers.ASTForAudioClassification.from_pretrained(hf_dir).eval()
    config = model.config
    x = torch.zeros(2, config.max_length, config.num_mel_bins)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=True, input_names=["input_values"], output_names=["logits"],
                          dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},), opset_version=18,
                          external_data=False)
    return path


def merge_share(path: Path, x: np.ndarray, threads: int | None, runs: int = 3) -> tuple[float, int]:
    """Fraction of node kernel time spent in merge nodes, from ORT's profiler, over ``runs`` runs after one
    untimed warm-up run; and how many merge nodes ran."""
    merge_nodes = {n.name for n in onnx.load(str(path)).graph.node
                   if any(p.key == PART_KEY and p.value == "merge" for p in n.metadata_props)}
    sess = session(path, threads, profile=True)
    for _ in range(1 + runs):
        sess.run(None, {"fbank": x})
    profile = Path(sess.end_profiling())
    events = json.loads(profile.read_text())
    profile.unlink()
    warm_end = min((e["ts"] + e["dur"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run"),
                   default=0)  # the warm-up run (first allocations) ends here
    total = merged = 0.0
    seen = set()
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time") or event["ts"] < warm_end:
            continue
        name = event["name"][: -len("_kernel_time")]
        total += event["dur"]
        if name.split("/")[0] in merge_nodes:  # a node ORT fused is named "<first node>/<fusion>/"
            merged += event["dur"]
            seen.add(name)
    return merged / total, len(seen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small", choices=list(SIZES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=lambda v: [int(b) for b in v.split(",")], default=[1, 8],
                        help="batch sizes for parts 1-3")
    parser.add_argument("--threads", type=int, default=None, help="ORT intra-op threads (default: ORT's choice)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the exports (default: a temp folder)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="fastast-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    print(f"# ONNX Runtime {ort.__version__} CPU ({platform.processor() or platform.machine()}), {args.size}, "
          f"batches {args.batch}, threads {args.threads or 'default'}")

    results: dict[str, object] = {}
    for frames, r in ((1024, 100), (512, 50)):
        hf_dir = hf_directory(args.size, frames, out)
        ours = {}
        for rr in (0, r):
            model = load_model(hf_dir, tome_r=rr)
            ours[rr] = (model, export_onnx(model, out / f"ours-{frames}-r{rr}.onnx", ExportOptions()).path)
        sessions = {rr: session(path, args.threads) for rr, (_, path) in ours.items()}
        hf_sess = session(export_hf_like_users_do(hf_dir, out / f"hf-{frames}.onnx"), args.threads) \
            if frames == 1024 else None
        ratio = flop_ratio(ours[r][0].config, ours[r][0].schedule)
        entry: dict[str, object] = {"flop_ratio": ratio}
        for batch in args.batch:
            x = fbank_like(batch, frames, 128, seed=1)
            runners = {f"ours r={rr}": partial(s.run, None, {"fbank": x}) for rr, s in sessions.items()}
            if hf_sess is not None:
                runners["HF torch.onnx.export"] = partial(hf_sess.run, None, {"input_values": x})
            t = median_times(runners, args.repeats)
            speedup = t["ours r=0"] / t[f"ours r={r}"]
            print(f"\nT={frames}, batch {batch}: median latency per batch")
            for name, sec in t.items():
                print(f"  {name:<22} {1e3 * sec:9.1f} ms  {batch / sec:8.2f} clips/s")
            print(f"  (2) r={r} speed-up over r=0: {speedup:.2f}x, FLOP ratio {ratio:.2f}x, "
                  f"speed-up / FLOP ratio {speedup / ratio:.2f} (target >= 0.9)")
            row = {"latency_ms": {k: 1e3 * v for k, v in t.items()}, "speedup": speedup}
            if hf_sess is not None:
                row["ours_vs_hf"] = t["HF torch.onnx.export"] / t["ours r=0"]
                print(f"  (1) ours r=0 vs HF export: {row['ours_vs_hf']:.2f}x (HF time / ours; target >= 1.0)")
            share, count = merge_share(ours[r][1], x, args.threads)
            row["merge_share"] = share
            print(f"  (3) time in {count} merge nodes at r={r}: {100 * share:.1f}% of node time (target <= 5%)")
            entry[f"batch{batch}"] = row
        x1 = fbank_like(1, frames, 128, seed=2)
        with torch.inference_mode():
            t1 = median_times({"ort": partial(sessions[r].run, None, {"fbank": x1}),
                               "torch": partial(ours[r][0], torch.from_numpy(x1))}, args.repeats)
        print(f"  (4) batch 1, r={r}: ORT {1e3 * t1['ort']:.1f} ms, eager PyTorch {1e3 * t1['torch']:.1f} ms, "
              f"PyTorch / ORT = {t1['torch'] / t1['ort']:.2f}x")
        entry["ort_vs_torch_batch1"] = t1["torch"] / t1["ort"]
        results[f"T{frames}"] = entry
    (out / "bench_onnx.json").write_text(json.dumps(results, indent=2))
    print(f"\nexports and bench_onnx.json in {out}")


if __name__ == "__main__":
    main()
