"""The contract between an exported graph, the engines built from it and everything that runs them: tensor names,
where metadata and sidecars live, the debug merge outputs, precisions and providers. Plain Python, no torch or
onnx: exporters write to it, engines read it, and a deployment box needs nothing else."""

from __future__ import annotations

import os
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

try:
    PACKAGE_VERSION = version("fastast-deploy")  # recorded in every metadata, sidecar and report this package writes
except PackageNotFoundError:  # running from a source tree that is not installed
    PACKAGE_VERSION = "0.0.0+unknown"

INPUT_NAME = "fbank"  # (batch, frames, mel bins) float32, normalised Kaldi fbank
WAVEFORM_NAME = "waveform"  # (batch, samples) float32 mono at the model's rate, NaN past a clip's end
INPUT_NAMES = (INPUT_NAME, WAVEFORM_NAME)  # what `export --input` offers; a graph has one of them
OUTPUT_NAME = "logits"  # (batch, labels) float32
METADATA_KEY = "fastast_deploy"  # metadata_props key of exported ONNX models, and safetensors header key

# Graph precisions an export writes and a TensorRT build may ask for. int8: Q/DQ nodes around the weighted ops
# (calibrated at export), everything else float32.
PRECISIONS = ("fp32", "fp16", "int8")

# --provider names -> ONNX Runtime provider chains (the first is the one asked for; the rest are fallbacks
# for nodes it does not take, used where installed).
PROVIDERS: dict[str, tuple[str, ...]] = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}

BACKENDS = ("tensorrt", "onnxruntime")


def sidecar_path(path: str | os.PathLike) -> Path:
    """Where the JSON sidecar of a written model or engine lives: ``PATH.json``."""
    return Path(f"{path}.json")


def merge_output_names(schedule: Sequence[int]) -> list[str]:
    """Names of the debug merge outputs for an effective r schedule, in output order: ``merge{i}_src`` then
    ``merge{i}_dst`` for every block i that merges. Each is (batch, r_i) int64: the token positions (in the
    block's input order) of the r_i sources and of the destination each one is added into."""
    return [f"merge{i}_{kind}" for i, r in enumerate(schedule) if r > 0 for kind in ("src", "dst")]


def merge_positions(src_idx: object, dst_idx: object) -> tuple[object, object]:
    """Bipartite indices -> token positions: side A holds the even positions, side B the odd ones. Works on
    numpy arrays and torch tensors alike (only ``*`` and ``+``)."""
    return 2 * src_idx, 2 * dst_idx + 1  # type: ignore[operator]
