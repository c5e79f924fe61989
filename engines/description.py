"""What ``fastast-deploy inspect`` shows about an engine or an exported model: read from sidecars and model
metadata only, so it works where the engine itself cannot run (e.g. a TensorRT plan on a CPU box)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastast_deploy.contract import WAVEFORM_NAME
from fastast_deploy.errors import FastASTError

from .base import format_shape
from .onnx_model import read_onnx_model
from .sidecar import check_engine_file, check_sidecar, read_sidecar

SHOWN_LABELS = 8


def _runs_here(path: Path, data: dict[str, Any]) -> str:
    """"yes", or why this machine cannot run the engine (checks only; nothing is loaded)."""
    try:
        check_engine_file(path, data)
        if data["backend"] == "tensorrt":
            from .gpu import query_gpu
            from .trt_policy import check_plan_compatible, import_tensorrt

            trt = import_tensorrt()
            notes = check_plan_compatible(data["tensorrt"], trt.__version__, query_gpu(), path.name)
            return "yes" + (f" ({notes[0]})" if notes else "")
        import onnxruntime as ort

        from .ort_engine import check_ort_sidecar

        check_ort_sidecar(data, ort.__version__, ort.get_available_providers(), path.name)
        return "yes"
    except FastASTError as err:
        return f"no: {err}"


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON-ready summary of an engine (from its sidecar) or an exported .onnx (from its metadata)."""
    path = Path(path)
    data = read_sidecar(path) if path.is_file() else None
    if data is not None:
        check_sidecar(data, path)
        export = data["export"]
        backend = data["backend"]
        report: dict[str, Any] = {
            "file": str(path), "kind": "TensorRT plan" if backend == "tensorrt" else "ONNX Runtime engine",
            "backend": backend, "inputs": data["inputs"], "outputs": data["outputs"], "batch": data["batch"],
            "precision": data["precision"], backend: data[backend], "source": data["source"],
            "versions": data["versions"], "runs_here": _runs_here(path, data),
        }
    else:
        info = read_onnx_model(path)
        export = info.metadata
        report = {
            "file": str(path), "kind": "exported ONNX model", "backend": "onnx",
            "inputs": export["inputs"], "outputs": export["outputs"], "batch": {"static": export.get("batch")},
            "precision": info.precision, "source": {"file": str(path), "sha256": info.sha256},
            "versions": {},
        }
    report["export_versions"] = export.get("versions", {})
    tome = export.get("tome", {})
    report["tome"] = {"schedule": tome.get("effective_schedule"), "token_counts": tome.get("token_counts"),
                      "merge_impl": tome.get("merge_impl"), "prop_attn": tome.get("prop_attn"),
                      "merge_nodes": tome.get("merge_nodes")}
    report["model"] = export.get("model")
    report["labels"] = export.get("labels")
    report["features"] = export.get("features")
    report["bytes"] = path.stat().st_size
    return report


def _tensors(tensors: dict[str, Any]) -> str:
    return "; ".join(f"{name} {format_shape(tuple(t['shape']))} {t['dtype']}" for name, t in tensors.items())


def format_description(report: dict[str, Any]) -> str:
    """The text form of ``describe``: one aligned line per topic."""
    lines = [("file", f"{report['file']} ({report['kind']}, {report['bytes'] / 2**20:.1f} MiB)")]
    backend = report["backend"]
    if backend == "tensorrt":
        trt = report["tensorrt"]
        # strongly_typed and tf32 are shown, not needed to run: a sidecar without them still describes the plan
        typing = trt.get("strongly_typed")
        mode = {True: "strongly typed", False: "weakly typed, fp16 builder flag"}.get(typing, "typing not recorded")
        tf32 = {True: "on", False: "off"}.get(trt.get("tf32"), "not recorded")
        lines.append(("backend", f"TensorRT {trt['version']}, built on {trt['gpu']['name']} (compute capability "
                                 f"{trt['gpu']['compute_capability']}), {mode}, tf32 {tf32}"))
    elif backend == "onnxruntime":
        ort = report["onnxruntime"]
        lines.append(("backend", f"ONNX Runtime {ort['version']}, provider {ort['provider']} "
                                 f"{ort.get('providers', '')}, optimisation {ort.get('optimization_level', '?')}, "
                                 f"intra-op threads {ort.get('intra_op_threads') or 'default'}"))
    else:
        lines.append(("backend", "none: an exported model (runs on ONNX Runtime or builds into an engine)"))
    lines += [("inputs", _tensors(report["inputs"])), ("outputs", _tensors(report["outputs"]))]
    batch = report["batch"]
    if "min" in batch:
        lines.append(("batch", f"{batch['min']}..{batch['max'] if batch['max'] is not None else 'any'} "
                               f"(opt {batch['opt']})"))
    else:
        lines.append(("batch", "dynamic" if batch["static"] is None else f"static {batch['static']}"))
    lines.append(("precision", report["precision"]))
    tome = report["tome"]
    if tome["schedule"] is not None:
        counts = tome["token_counts"] or []
        tokens = f"{counts[0]} -> {counts[-1]}" if counts else "?"
        lines.append(("tome", f"r per block {tome['schedule']}, tokens {tokens}, merge {tome['merge_impl']}, "
                              f"proportional attention {'on' if tome['prop_attn'] else 'off'}"))
        if counts:
            lines.append(("tokens", " ".join(str(c) for c in counts)))
        nodes = tome.get("merge_nodes")
        if nodes:  # recorded at export (absent from exports older than the count)
            lines.append(("merge nodes", f"{sum(nodes)} ONNX nodes in {len(nodes)} merging blocks, "
                                         f"{min(nodes)}-{max(nodes)} per merge"))
    features = report.get("features")
    if features:
        where = "inside the graph (float32), from the waveform" if WAVEFORM_NAME in report["inputs"] else "fed in"
        lines.append(("features", f"Kaldi fbank {where}: {features['sample_rate']} Hz mono, 25 ms frames every "
                                  f"10 ms, {features['num_mel_bins']} mel bins, mean {features['mean']:.4g}, std "
                                  f"{features['std']:.4g}"))
    model = report["model"] or {}
    if model:
        lines.append(("model", f"embed {model.get('embed_dim')}, depth {model.get('depth')}, heads "
                               f"{model.get('num_heads')}, {model.get('input_frames')} frames x "
                               f"{model.get('num_mel_bins')} mel bins, {model.get('num_labels')} labels"))
    labels = report["labels"]
    if labels:
        more = f", ... ({len(labels)} in all)" if len(labels) > SHOWN_LABELS else ""
        lines.append(("labels", ", ".join(labels[:SHOWN_LABELS]) + more))
    else:
        lines.append(("labels", "none recorded (indices only)"))
    lines.append(("source", f"{report['source']['file']} (sha256 {report['source']['sha256'][:16]}...)"))
    for key, name in (("versions", "built with"), ("export_versions", "exported with")):
        if report[key]:
            lines.append((name, ", ".join(f"{k} {v}" for k, v in sorted(report[key].items()))))
    if "runs_here" in report:
        lines.append(("runs here", report["runs_here"]))
    width = max(len(k) for k, _ in lines) + 2
    return "\n".join(f"{k:<{width}}{v}" for k, v in lines)
