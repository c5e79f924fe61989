"""An exported model as engines see it: the graph contract (``fbank`` (batch, T, F) or ``waveform`` (batch,
samples) in, ``logits`` out, only the batch dynamic), its export metadata and its sha256. Needs onnx, not torch."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastast_deploy.contract import (
    BATCH,
    EXPORT_FORMAT_VERSION,
    INPUT_NAME,
    INPUT_NAMES,
    METADATA_KEY,
    OUTPUT_NAME,
    WAVEFORM_NAME,
)
from fastast_deploy.errors import error_summary
from fastast_deploy.files import prepare_output, sha256_file

from .base import EngineError, Shape, format_shape
from .schema import EXPORT, check_fields

# Node domains that only ONNX Runtime runs: an ORT-optimised model holds them and is no input for TensorRT.
ORT_ONLY_DOMAINS = frozenset({"com.microsoft", "com.microsoft.nchwc", "com.microsoft.experimental"})
HINT = "export it with `fastast-deploy export`"


@dataclass(frozen=True)
class OnnxModelInfo:
    """What an engine build needs to know about its source model."""

    path: Path
    input_shape: Shape  # (batch, T, F) or (batch, samples): BATCH or an int, then ints
    output_names: tuple[str, ...]
    metadata: dict[str, Any]  # the exporter's metadata (exporters.onnx_export.build_metadata), format-checked
    sha256: str
    ort_only_domains: tuple[str, ...] = ()
    input_name: str = INPUT_NAME  # INPUT_NAME, or WAVEFORM_NAME for a graph that computes its fbank

    @property
    def batch_dim(self) -> int | str:
        return self.input_shape[0]

    @property
    def precision(self) -> str:
        return str(self.metadata.get("precision", "fp32"))


def _dims(value: Any) -> Shape:
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                 for d in value.type.tensor_type.shape.dim)


def export_metadata(proto: Any, path: Path) -> dict[str, Any]:
    """The export metadata stored in ``proto`` (``metadata_props[METADATA_KEY]``), checked: valid JSON, a format
    version this package reads, the fields engines use of their types; a one-line EngineError otherwise."""
    props = {p.key: p.value for p in proto.metadata_props}
    if METADATA_KEY not in props:
        raise EngineError(f"{path} has no fastast-deploy metadata; {HINT}")
    try:
        metadata = json.loads(props[METADATA_KEY])
    except json.JSONDecodeError as err:
        raise EngineError(f"{path}: its fastast-deploy metadata is not valid JSON ({err.msg}); {HINT}") from None
    if not isinstance(metadata, dict):
        raise EngineError(f"{path}: its fastast-deploy metadata is not a JSON object; {HINT}")
    version = metadata.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version > EXPORT_FORMAT_VERSION:
        raise EngineError(f"{path}: its fastast-deploy metadata has format_version {version!r}; this fastast-deploy "
                          f"reads up to {EXPORT_FORMAT_VERSION}; upgrade fastast-deploy or re-export it")
    return check_fields(metadata, EXPORT, f"{path} (fastast-deploy metadata)", HINT)


def _check_logits(output: Any, batch: int | str, metadata: dict[str, Any], path: Path) -> None:
    """The graph's ``logits`` is (batch, num_labels) float32: the input's batch, the metadata's label count."""
    import onnx

    labels = metadata["model"]["num_labels"]
    found, kind = _dims(output), output.type.tensor_type.elem_type
    if found != (batch, labels) or kind != onnx.TensorProto.FLOAT:
        raise EngineError(f"{path}: output {OUTPUT_NAME!r} is {format_shape(found)} "
                          f"{onnx.TensorProto.DataType.Name(kind).lower()}, but the input's batch and the metadata's "
                          f"{labels} labels make it ({batch}, {labels}) float; {HINT}")


def read_onnx_model(path: str | os.PathLike) -> OnnxModelInfo:
    """Load ``path`` (without external data) and check the contract; a one-line EngineError naming what is
    wrong otherwise."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise EngineError(f"{path} does not exist or is not a file; expected an exported .onnx model")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf raises DecodeError, RuntimeError or ValueError depending on the bytes
        raise EngineError(f"{path} is not a readable ONNX model ({error_summary(err)}); {HINT}") from None
    if not proto.graph.node:
        raise EngineError(f"{path} is not a readable ONNX model (no graph nodes); {HINT}")
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [v for v in proto.graph.input if v.name not in initializers]
    float32 = onnx.TensorProto.FLOAT
    if len(inputs) != 1 or inputs[0].name not in INPUT_NAMES:
        raise EngineError(f"{path} has inputs {[v.name for v in inputs]}, expected one input {INPUT_NAME!r} "
                          f"(batch, T, F) or {WAVEFORM_NAME!r} (batch, samples) float32; {HINT}")
    name = inputs[0].name
    layout = "(batch, T, F)" if name == INPUT_NAME else "(batch, samples)"
    shape = _dims(inputs[0])
    if len(shape) != len(layout.split(",")) or inputs[0].type.tensor_type.elem_type != float32:
        raise EngineError(f"{path}: input {name!r} is {shape} of ONNX type "
                          f"{inputs[0].type.tensor_type.elem_type}, expected {layout} float32")
    batch_ok = shape[0] == BATCH or isinstance(shape[0], int) and shape[0] > 0
    if not batch_ok or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
        raise EngineError(f"{path}: input {name!r} has shape {shape}; only the batch (named {BATCH!r}) may "
                          f"be dynamic; {HINT}")
    outputs = tuple(v.name for v in proto.graph.output)
    if not outputs or outputs[0] != OUTPUT_NAME:
        raise EngineError(f"{path} has outputs {list(outputs)}, expected {OUTPUT_NAME!r} first; {HINT}")
    metadata = export_metadata(proto, path)
    _check_logits(proto.graph.output[0], shape[0], metadata, path)
    recorded = metadata.get("inputs", {}).get(name, {}).get("shape")
    if recorded != list(shape) or set(metadata.get("outputs", {})) != set(outputs):
        raise EngineError(f"{path}: its metadata (input {recorded}, outputs {sorted(metadata.get('outputs', {}))}) "
                          f"disagrees with the graph (input {list(shape)}, outputs {sorted(outputs)}); {HINT}")
    domains = sorted({n.domain for n in proto.graph.node} & ORT_ONLY_DOMAINS)
    return OnnxModelInfo(path, shape, outputs, metadata, sha256_file(path), tuple(domains), name)


def read_build_source(model: str | os.PathLike) -> OnnxModelInfo:
    """`read_onnx_model` for an engine build, which starts from the exported model: EngineError for a model
    already optimised by ONNX Runtime (its contrib ops are neither TensorRT's nor to be optimised twice)."""
    info = read_onnx_model(model)
    if info.ort_only_domains:
        raise EngineError(f"{info.path} holds ONNX Runtime-only ops ({list(info.ort_only_domains)}): it was already "
                          "optimised by ONNX Runtime; build from the exported model")
    return info


def prepare_engine_output(output: str | os.PathLike, info: OnnxModelInfo) -> Path:
    """The engine's output path, its folder created (`files.prepare_output`); EngineError when it is the source
    model itself."""
    path = prepare_output(output)
    if path.resolve() == info.path.resolve():
        raise EngineError(f"output {path} is the model itself; write the engine to another file")
    return path
