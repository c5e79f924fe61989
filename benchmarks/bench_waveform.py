"""Waveform-in graphs (the Kaldi fbank inside the ONNX graph) on ONNX Runtime CPU, measured side by side in one run.

1. Accuracy of the in-graph fbank against the project's features on tone, chirp, noise and speech (espeak-ng,
   where installed): max |diff| of the log-mel and of the normalised model input.
2. Time of the in-graph features against the rest of the graph: ORT profiling of the waveform-in model (node time
   by part: nodes tagged ``fastast_deploy.part = features`` at export vs the rest), and a features-only graph
   timed beside the fbank-in model.
3. End to end, clips/s at batch 1 and 8: the waveform-in model fed waveforms, against the project's CPU feature
   extraction (`features.waveform_to_input`, per clip, as predict and verify run it) plus the fbank-in model.
   Interleaved rounds (`time_interleaved`), medians.

Weights are random (the work depends only on geometry and schedule).

    python benchmarks/bench_waveform.py                              # AST-tiny, T = 1024, r = 0
    python benchmarks/bench_waveform.py --size small --frames 512 --tome-r 32 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from collections import defaultdict
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from fastast_deploy.audio.features import waveform_to_input
from fastast_deploy.contract import INPUT_NAME, WAVEFORM_NAME
from fastast_deploy.engines.base import CPU_REWARM_S
from fastast_deploy.evaluation.timing import time_interleaved
from fastast_deploy.exporters.fbank_graph import WaveformFbank, waveform_samples
from fastast_deploy.exporters.onnx_export import PART_KEY, ExportOptions, export_onnx
from fastast_deploy.metrics import waveform_like
from fastast_deploy.model.config import FeatureConfig, ModelConfig, TomeConfig
from fastast_deploy.model.fastast import build_model
from fastast_deploy.model.schedule import make_schedule


def session(path: Path, threads: int, profile: bool = False) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.enable_profiling = profile
    options.profile_file_prefix = str(Path(tempfile.gettempdir()) / "fastast-wave-profile")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def clips(samples: int, rate: int) -> dict[str, np.ndarray]:
    """Tone, chirp, noise, and speech from espeak-ng where installed (repeated to the window)."""
    import shutil
    import subprocess

    rng = np.random.default_rng(0)
    t = np.arange(samples) / rate
    out = {"tone": 0.5 * np.sin(2 * np.pi * 440 * t),
           "chirp": 0.3 * np.sin(2 * np.pi * (100 * t + (7000 - 100) * t**2 / (2 * t[-1]))),
           "noise": 0.1 * rng.standard_normal(samples)}
    if shutil.which("espeak-ng"):
        from fastast_deploy.audio.features import read_audio, resample

        with tempfile.TemporaryDirectory() as tmp:
            wav = Path(tmp) / "speech.wav"
            subprocess.run(["espeak-ng", "-w", str(wav), "The quick brown fox jumps over the lazy dog"], check=True,
                           capture_output=True)
            wave, sr = read_audio(wav)
        out["speech"] = np.resize(resample(wave, sr, rate).numpy(), samples)
    return {k: v.astype(np.float32) for k, v in out.items()}


def export_features(config: FeatureConfig, path: Path) -> Path:
    """The feature module alone, exported as `export --input waveform` exports it."""
    example = torch.zeros(2, waveform_samples(config))
    with torch.no_grad():
        program = torch.onnx.export(WaveformFbank(config).eval(), (example,), dynamo=True,
                                    input_names=[WAVEFORM_NAME],
                                    dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
                                    opset_version=18, external_data=False, optimize=True, verbose=False)
    onnx.save_model(program.model_proto, str(path))
    return path


def accuracy(features_path: Path, config: FeatureConfig, threads: int) -> dict[str, dict[str, float]]:
    x = clips(waveform_samples(config), config.sample_rate)
    got = session(features_path, threads).run(None, {WAVEFORM_NAME: np.stack(list(x.values()))})[0]
    rows = {}
    for (name, clip), g in zip(x.items(), got, strict=True):
        want = waveform_to_input(torch.from_numpy(clip), config.sample_rate, config).numpy()
        diff = np.abs(g - want)
        rows[name] = {"normalised_max_abs": float(diff.max()), "logmel_max_abs": float(diff.max() * 2 * config.std)}
    return rows


def profile_parts(path: Path, feed: dict[str, np.ndarray], threads: int, runs: int) -> dict[str, float]:
    """Share of node time per part over ``runs`` profiled calls (after one warm-up)."""
    parts = {n.name: next((p.value for p in n.metadata_props if p.key == PART_KEY), "model")
             for n in onnx.load(str(path)).graph.node}
    sess = session(path, threads, profile=True)
    sess.run(None, feed)
    for _ in range(runs):
        sess.run(None, feed)
    trace = Path(sess.end_profiling())
    totals: dict[str, float] = defaultdict(float)
    for event in json.loads(trace.read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            node = event["name"][: -len("_kernel_time")]
            totals["features" if parts.get(node) == "features" else "model"] += event["dur"]
    trace.unlink()
    total = sum(totals.values()) or 1.0
    return {part: value / total for part, value in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny", choices=["tiny", "small", "base"])
    parser.add_argument("--frames", type=int, default=1024)
    parser.add_argument("--tome-r", type=int, default=0)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (torch uses as many)")
    parser.add_argument("--out", type=Path, default=None, help="Folder for the exports [default: a temporary one].")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = ModelConfig.from_size(args.size, input_frames=args.frames, num_labels=527)
    torch.manual_seed(0)
    model = build_model(config, TomeConfig(make_schedule(args.tome_r, config.depth)))
    features = FeatureConfig(frames=args.frames)
    model.feature_config = features
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        wave_path = export_onnx(model, out / "wave.onnx", ExportOptions(input=WAVEFORM_NAME), check=False).path
        fbank_path = export_onnx(model, out / "fbank.onnx", ExportOptions(), check=False).path
        feat_path = export_features(features, out / "features.onnx")
        report = {"machine": {"platform": platform.platform(), "cpu_threads": args.threads,
                              "onnxruntime": ort.__version__, "torch": torch.__version__},
                  "model": {"size": args.size, "frames": args.frames, "tome_r": args.tome_r},
                  "accuracy": accuracy(feat_path, features, args.threads), "batches": {}}
        wave_sess, fbank_sess, feat_sess = (session(p, args.threads) for p in (wave_path, fbank_path, feat_path))
        samples = waveform_samples(features)
        for batch in (int(b) for b in args.batches.split(",")):
            waves = waveform_like(batch, samples, seed=batch)
            full = np.nan_to_num(waves, nan=0.0)  # whole clips: the host path below takes every sample
            fbank = np.stack([waveform_to_input(torch.from_numpy(w), features.sample_rate, features).numpy()
                              for w in full])

            def host_features_then_model(full: np.ndarray = full) -> object:
                x = np.stack([waveform_to_input(torch.from_numpy(w), features.sample_rate, features).numpy()
                              for w in full])
                return fbank_sess.run(None, {INPUT_NAME: x})

            runs = {
                "waveform-in model": partial(wave_sess.run, None, {WAVEFORM_NAME: full}),
                "host features + fbank-in model": host_features_then_model,
                "fbank-in model alone": partial(fbank_sess.run, None, {INPUT_NAME: fbank}),
                "in-graph features alone": partial(feat_sess.run, None, {WAVEFORM_NAME: full}),
                "host features alone": partial(lambda f: [waveform_to_input(torch.from_numpy(w), 16000, features)
                                                          for w in f], full),
            }
            timed = time_interleaved(runs, batch=batch, warmup=1, rounds=args.rounds, rewarm_s=CPU_REWARM_S)
            row = {name: t.as_dict() for name, t in timed.items()}
            row["speedup_end_to_end"] = (timed["waveform-in model"].clips_per_s
                                         / timed["host features + fbank-in model"].clips_per_s)
            row["features_share_of_waveform_model"] = (timed["in-graph features alone"].latency_ms_p50
                                                       / timed["waveform-in model"].latency_ms_p50)
            row["profile_share"] = profile_parts(wave_path, {WAVEFORM_NAME: full}, args.threads,
                                                 max(2, args.rounds // 3))
            report["batches"][str(batch)] = row
    print(json.dumps(report, indent=2))
    print(f"\nin-graph fbank vs the project's features ({args.size}, T = {args.frames}):")
    for name, row in report["accuracy"].items():
        print(f"  {name:>7}: log-mel max |diff| {row['logmel_max_abs']:.2e}, "
              f"normalised {row['normalised_max_abs']:.2e}")
    print(f"\nONNX Runtime CPU, {args.threads} thread(s), {args.rounds} interleaved rounds, medians:")
    for batch, row in report["batches"].items():
        print(f"batch {batch}:")
        for name in runs:
            print(f"  {name:>31}: {row[name]['clips_per_s']:8.2f} clips/s  p50 {row[name]['latency_ms_p50']:8.2f} ms")
        print(f"  waveform-in vs host features + fbank-in: {row['speedup_end_to_end']:.2f}x end to end")
        print(f"  in-graph features: {100 * row['features_share_of_waveform_model']:.1f} % of the waveform-in model's "
              f"latency (timed alone); {100 * row['profile_share'].get('features', 0):.1f} % of its node time "
              "(ORT profile)")


if __name__ == "__main__":
    main()
