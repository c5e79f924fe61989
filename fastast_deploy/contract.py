"""The export spec: the contract between an exported graph, the engines built from it and everything that runs them.
Tensor names and the batch symbol, the node tag and metadata key with its format version, the debug merge outputs,
precisions, parity tolerances per precision, where sidecars live, providers. Plain Python, no torch, onnx or numpy:
exporters write to it, engines read it, and a deployment box needs nothing else. (The seeded dummy inputs, being
array code, are `fastast_deploy.metrics.dummy_inputs`.)"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
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
BATCH = "batch"  # the name of the dynamic batch dimension in exported graphs, their metadata and engine specs
METADATA_KEY = "fastast_deploy"  # metadata_props key of exported ONNX models, and safetensors header key
EXPORT_FORMAT_VERSION = 1  # "format_version" of the export metadata; readers refuse a newer one
PART_KEY = "fastast_deploy.part"  # node metadata_props key: "merge" (Token Merging) or "features" (in-graph fbank)

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

# Bounds of option values, checked where they are parsed (cli.commands.options): a batch (export --batch, the
# build-engine batch range, verify --batch / --speed-batches, bench --batch), a clip count of generated inputs
# (verify --num), and intra-op threads (0: the runtime's default). Past these, memory or threads run out before
# any result; no real deployment of an audio transformer needs more.
MAX_BATCH = 1024
MAX_CLIPS = 1024
MAX_THREADS = 256


@dataclass(frozen=True)
class Tolerance:
    """Pass conditions of candidate logits against reference logits (N, labels); None: not checked. Every element
    within ``atol + rtol * |ref| + peak_rtol * max|ref|`` (when ``atol`` is set), every clip's cosine >=
    ``min_cosine``, the mean cosine >= ``min_mean_cosine``, top-1 labels agreeing on >= ``min_top1`` of the clips;
    and always: no NaN or inf on either side (`fastast_deploy.metrics.parity_checks`)."""

    atol: float | None = None
    rtol: float | None = None
    peak_rtol: float | None = None
    min_cosine: float | None = None
    min_mean_cosine: float | None = None
    min_top1: float | None = None

    def to_dict(self) -> dict[str, float]:
        """The conditions in force (those set)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def describe(self) -> str:
        """``atol 0.0001, rtol 0.001, ...``: the conditions in force, for help texts and messages."""
        return ", ".join(f"{k.replace('_', '-')} {v:g}" for k, v in self.to_dict().items())


# Tolerances by check and precision, the one table every parity check reads.
# - "export": the exported graph on ONNX Runtime CPU against the float32 PyTorch model it came from (export's
#   check, fbank and waveform input alike). fp32 to float rounding, relative to the largest logit; fp16 by the mean
#   cosine; int8 (Q/DQ, on real clips) by its labels.
# - "verify": an engine against its reference (`fastast-deploy verify` defaults, each overridable): fp32 to float
#   rounding, fp16 to fp16 rounding, int8 by its labels and cosine with a logit tolerance of a few quantisation steps.
# - "optimize": an ONNX Runtime engine fused by `build-engine --optimize` against the plain model (same precision;
#   merge decisions must be identical, checked apart).
TOLERANCES: dict[str, dict[str, Tolerance]] = {
    "export": {
        "fp32": Tolerance(atol=1e-4, peak_rtol=1e-4),
        "fp16": Tolerance(min_mean_cosine=0.999),
        "int8": Tolerance(min_top1=0.9),
    },
    "verify": {
        "fp32": Tolerance(atol=1e-4, rtol=1e-3, min_cosine=0.9999, min_top1=0.99),
        "fp16": Tolerance(atol=5e-2, rtol=5e-2, min_cosine=0.999, min_top1=0.98),
        "int8": Tolerance(atol=0.5, rtol=0.1, min_cosine=0.98, min_top1=0.97),
    },
    "optimize": {precision: Tolerance(atol=1e-4) for precision in PRECISIONS},
}


def tolerance(check: str, precision: str) -> Tolerance:
    """The tolerance of ``check`` ("export", "verify", "optimize") at ``precision`` (an unknown one: fp32's)."""
    table = TOLERANCES[check]
    return table.get(precision, table["fp32"])


def sidecar_path(path: str | os.PathLike) -> Path:
    """Where the JSON sidecar of a written model or engine lives: ``PATH.json``."""
    return Path(f"{path}.json")


def merge_output_names(schedule: Sequence[int]) -> list[str]:
    """Names of the debug merge outputs for an effective r schedule, in output order: ``merge{i}_src`` then
    ``merge{i}_dst`` for every block i that merges. Each is (batch, r_i) int64: the token positions (in the
    block's input order) of the r_i sources and of the destination each one is added into."""
    return [f"merge{i}_{kind}" for i, r in enumerate(schedule) if r > 0 for kind in ("src", "dst")]


def merge_output_specs(schedule: Sequence[int], batch: int | str = BATCH) -> dict[str, dict[str, object]]:
    """The debug merge outputs' entries of the export metadata, in output order: (batch, r_i) int64 each."""
    widths = [r for r in schedule if r > 0 for _ in ("src", "dst")]
    return {name: {"shape": [batch, r], "dtype": "int64"}
            for name, r in zip(merge_output_names(schedule), widths, strict=True)}


def merge_positions(src_idx: object, dst_idx: object) -> tuple[object, object]:
    """Bipartite indices -> token positions: side A holds the even positions, side B the odd ones. Works on
    numpy arrays and torch tensors alike (only ``*`` and ``+``)."""
    return 2 * src_idx, 2 * dst_idx + 1  # type: ignore[operator]
