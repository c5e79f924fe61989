"""`fastast-deploy quickstart`: the whole pipeline on the built-in model in one command. Export (r from the
checkpoint) -> build the best engine present -> verify against PyTorch on synthetic clips of the model's own
classes, with speed against the unmerged baseline -> a summary of figures and files."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fastast_deploy.checkpoints.native import load_model
from fastast_deploy.files import (
    check_outputs_apart,
    check_replaceable,
    prepare_output,
    record_written,
    write_json_atomic,
)
from fastast_deploy.model.fastast import FastAST


def best_backend() -> tuple[str, str]:
    """("tensorrt", why) where TensorRT and a GPU are present, else ("onnxruntime", why)."""
    if importlib.util.find_spec("tensorrt") is None:
        return "onnxruntime", "TensorRT is not installed"
    from fastast_deploy.engines import BackendUnavailableError
    from fastast_deploy.engines.gpu import query_gpu

    try:
        gpu = query_gpu()
    except BackendUnavailableError as err:
        return "onnxruntime", str(err)
    return "tensorrt", f"TensorRT and {gpu.name}"


def write_clips(model: FastAST, folder: Path, per_class: int, seed: int) -> int:
    """Synthetic clips of the model's classes, in a folder per class, when the checkpoint records the synthetic
    dataset it was trained on; returns how many were written (0: the model is not a synthetic-data model)."""
    import soundfile as sf

    from fastast_deploy.audio.labels import label_folder
    from fastast_deploy.audio.synthetic import SAMPLE_RATE, make_classes, render_clip

    dataset = (model.source_info.get("extra") or {}).get("dataset") or {}
    if dataset.get("kind") != "synthetic" or not model.label_names:
        return 0
    classes = make_classes(int(dataset["classes"]), int(dataset["seed"]))
    if [c.name for c in classes] != list(model.label_names):
        return 0
    samples = int(round(float(dataset["seconds"]) * SAMPLE_RATE))
    for cls in classes:
        target = folder / label_folder(cls.name)
        target.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            rng = np.random.default_rng([seed, 99, cls.index, k])  # clips the model never saw
            sf.write(target / f"{k:02d}.wav", render_clip([cls], samples, rng), SAMPLE_RATE, subtype="PCM_16")
    return len(classes) * per_class


def quickstart(output: Path, source: str = "default", backend: str = "auto", per_class: int = 4, *,
               iterations: int, say: Callable[[str], None] = print,
               graph_input: str = "fbank", force: bool = False) -> dict[str, Any]:
    """Run every step, reporting each through ``say``; returns the verify report plus the files written.
    ``graph_input="waveform"`` exports with the fbank inside the graph. A file in ``output`` that quickstart
    would replace and did not write itself stops it before it starts, unless ``force``."""
    from fastast_deploy.engines.build import build_engine, check_ready, engine_path
    from fastast_deploy.evaluation.verify import SpeedOptions, verify
    from fastast_deploy.exporters.onnx_export import ExportOptions, export_onnx

    names = ["model.onnx", "model.onnx.json", "model.ort.onnx", "model.ort.onnx.json", "model.plan",
             "model.plan.json", "verify.json", "summary.json"]
    check_outputs_apart({**{f"-o's {name}": output / name for name in names}, "-o's clips": output / "clips"},
                        {"--source": source if Path(source).exists() else None}, replaced_folders=("-o's clips",))
    clips_there = [str(p.relative_to(output)) for p in sorted((output / "clips").rglob("*")) if not p.is_dir()]
    check_replaceable(output, names + clips_there, "quickstart", force)
    if backend != "auto":
        check_ready(backend)  # before the slow export
    prepare_output(output / "summary.json")
    started = time.perf_counter()

    def step(text: str) -> None:
        say(f"[{time.perf_counter() - started:6.1f}s] {text}")

    model = load_model(source)
    counts = model.token_counts
    step(f"model: {source} ({model.config.embed_dim}-dim, {model.config.depth} blocks, "
         f"{model.config.input_frames} frames, {model.config.num_labels} labels), r per block {list(model.schedule)}, "
         f"tokens {counts[0]} -> {counts[-1]}")
    exported = export_onnx(model, output / "model.onnx", ExportOptions(input=graph_input))
    step(f"exported {exported.path} (parity on ONNX Runtime CPU: max |diff| "
         f"{exported.parity['max_abs_diff']:.2g})")
    if backend == "auto":
        backend, why = best_backend()
        step(f"backend: {backend} ({why})")
    built = build_engine(exported.path, engine_path(output, "model", backend), backend)
    step(f"built {built.path}")
    clips = write_clips(model, output / "clips", per_class, seed=1)
    inputs = str(output / "clips") if clips else "random"
    step(f"inputs: {clips} synthetic clips of the model's classes in {output / 'clips'}" if clips
         else f"inputs: 32 random {graph_input}-like arrays (the model records no synthetic dataset)")
    step("verifying against PyTorch and timing against the r = 0 baseline built the same way ...")
    report, _, _, _ = verify(built.path, source, inputs_spec=inputs, num=32, batch=8,
                             speed=SpeedOptions(batches=(1, 8), warmup=2, iterations=iterations))
    report["files"] = {"onnx": str(exported.path), "engine": str(built.path),
                       "engine_sidecar": str(built.sidecar), "clips": str(output / "clips") if clips else None,
                       "report": str(output / "verify.json")}
    write_json_atomic(output / "verify.json", report)
    clip_files = [str(p.relative_to(output)) for p in sorted((output / "clips").rglob("*.wav"))]
    record_written(output, names + clip_files, "quickstart")
    step("done")
    return report


def format_summary(report: dict[str, Any]) -> str:
    p, speed = report["parity"], report.get("speed") or {}
    lines = ["", "summary", f"  parity     max |logit diff| {p['max_abs_diff']:.3g}, cosine >= {p['cosine_min']:.6f}, "
                           f"top-1 agreement {p['top1_agreement']:.3f}"]
    if "accuracy" in p:
        lines.append(f"  accuracy   PyTorch {p['accuracy']['reference']:.3f}, engine {p['accuracy']['engine']:.3f} "
                     f"on {report['inputs']['clips']} synthetic clips")
    for batch, row in (speed.get("batches") or {}).items():
        base = row.get("baseline")
        extra = f", r = 0 baseline {base['clips_per_s']:.1f} clips/s, speed-up {row['speedup']:.2f}x" if base else ""
        lines.append(f"  speed      batch {batch}: {row['engine']['clips_per_s']:.1f} clips/s{extra}")
    if speed:
        if not speed.get("baseline"):
            lines.append(f"  baseline   {speed.get('baseline_note', 'none')}")
        lines.append(f"  FLOP ratio {speed['flop_ratio']:.2f}x (the ideal speed-up of this r schedule)")
    lines.append(f"  verdict    {'PASSED' if report['passed'] else 'FAILED'} (thresholds: {report['thresholds']})")
    lines.append("  files")
    lines += [f"    {name:<15}{path}" for name, path in report["files"].items() if path]
    return "\n".join(lines)
