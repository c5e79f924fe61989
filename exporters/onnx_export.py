"""FastAST -> one self-contained, static-shape, plugin-free ONNX file (every dim but the batch is fixed).

Graph contract: input ``fbank`` (batch, T, F) float32, output ``logits`` (batch, labels) float32; with
``debug_merges`` also ``merge{i}_src`` / ``merge{i}_dst`` (batch, r_i) int64 for every merging block i: the token
positions, in that block's input sequence, of each merged token and of the token it merged into.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import Tensor, nn

from fastast_deploy.contract import (
    BATCH,
    EXPORT_FORMAT_VERSION,
    INPUT_NAME,
    INPUT_NAMES,
    METADATA_KEY,
    OUTPUT_NAME,
    PACKAGE_VERSION,
    PART_KEY,
    PRECISIONS,
    WAVEFORM_NAME,
    merge_output_names,
    merge_output_specs,
    merge_positions,
    sidecar_path,
)
from fastast_deploy.errors import ConfigError, FastASTError, error_summary
from fastast_deploy.files import prepare_output
from fastast_deploy.model.fastast import FastAST
from fastast_deploy.pairs import atomic_pair
from fastast_deploy.scoped import interrupts_kept, logger_level

from .fbank_graph import (
    FEATURE_FUNCTION,
    check_prepended,
    graph_features,
    input_shape,
    join_features,
    waveform_features,
)
from .merge_graph import drop_split_counts, merge_node_counts, translation_table
from .precision import compute_in_fp32
from .trt_ops import CONTRACT_CONSTANT_INPUTS, STATIC_CONTRACT, TOPK_MAX_K

__all__ = ["ExportOptions", "ExportResult", "export_onnx"]

STACK_TRACE_KEY = "pkg.torch.onnx.stack_trace"
# The exporter's stack traces stop at the calling module's forward: merge ops show the call into model.tome.
MERGE_SOURCE = re.compile(r"\b(bipartite_match|merge_wavg|merge_tokens)\(")
FEATURE_SOURCE = re.compile(rf"\b{FEATURE_FUNCTION}\(")
BATCH_DIM = re.compile(rf"{BATCH}|\d+\*{BATCH}|{BATCH}\*\d+")  # the batch, or a flattened batch x tokens


@dataclass(frozen=True)
class ExportOptions:
    """How to export. ``batch=None`` makes the batch dimension dynamic; an int fixes it."""

    opset: int = 18
    batch: int | None = None
    precision: str = "fp32"
    debug_merges: bool = False
    input: str = INPUT_NAME  # "waveform": the model's Kaldi fbank computed inside the graph (see fbank_graph)

    def __post_init__(self) -> None:
        if self.input not in INPUT_NAMES:
            raise ConfigError(f"unknown graph input {self.input!r}; available: {list(INPUT_NAMES)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; available: {list(PRECISIONS)}")
        if self.batch is not None and self.batch < 1:
            raise ConfigError(f"--batch must be >= 1, got {self.batch}")
        if not 18 <= self.opset <= 23:
            raise ConfigError(f"opset {self.opset} is not supported; use 18 to 23 (LayerNormalization, folded axes)")


@dataclass
class ExportResult:
    path: Path
    sidecar: Path
    metadata: dict[str, Any]
    parity: dict[str, Any] | None = None


class _ExportGraph(nn.Module):
    """What is traced: float32 fbank in, float32 logits (and merge positions) out, compute in the model's dtype."""

    def __init__(self, model: FastAST, debug_merges: bool, features: nn.Module | None = None) -> None:
        super().__init__()
        self.model = model
        self.dtype = next(model.parameters()).dtype
        self.debug_merges = debug_merges
        self.features = features  # waveform -> fbank in float32 (fbank_graph.WaveformFbank), or None

    def forward(self, fbank: Tensor) -> tuple[Tensor, ...]:
        if self.features is not None:
            fbank = self.features(fbank)
        logits, merges = self.model.forward_with_merges(fbank.to(self.dtype))
        outputs = [logits.float()]
        if self.debug_merges:
            for m in merges:
                outputs += merge_positions(m.src_idx, m.dst_idx)
        return tuple(outputs)


def to_onnx(model: FastAST, options: ExportOptions) -> onnx.ModelProto:
    """The model (and, for ``--input waveform``, its fbank in front) as ONNX, through `trace`."""
    model = copy.deepcopy(model).eval()
    if options.precision == "fp16":
        model = model.half()  # matching and weighted merges still run in float32 (see fastast_deploy.model.tome)
    features = waveform_features(model) if options.input == WAVEFORM_NAME else None
    graph = _ExportGraph(model, options.debug_merges, features)
    output_names = [OUTPUT_NAME] + (merge_output_names(model.schedule) if options.debug_merges else [])
    proto = trace(graph, input_shape(model, options.input), options.input, output_names, options.batch,
                  options.opset)
    drop_split_counts(proto)
    if options.precision == "fp16":  # LayerNorm / Softmax compute in fp32 between Casts (trt_ops.FP32_COMPUTE_OPS)
        compute_in_fp32(proto)
    return proto


def trace(module: nn.Module, shape: tuple[int, ...], input_name: str, output_names: list[str], batch: int | None,
          opset: int) -> onnx.ModelProto:
    """``module`` on inputs (batch, *shape) traced with torch.export and converted by the dynamo exporter,
    constants folded by its optimizer; ``batch`` None: a dynamic batch, named `contract.BATCH` on every graph
    input and output. FastASTError with the gist of the exporter's report when it fails."""
    example = torch.zeros(batch or 2, *shape)  # 2, not 1: an example batch of 1 would be specialised away
    dynamic = None if batch else ({0: torch.export.Dim(BATCH, min=1, max=4096)},)
    # The exporter logs a warning for every optional torchvision op it cannot register: noise for this model.
    quiet = logger_level("torch.onnx._internal.exporter._registration", logging.ERROR)
    with quiet, warnings.catch_warnings(), torch.no_grad(), interrupts_kept():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                module, (example,), dynamo=True, input_names=[input_name], output_names=output_names,
                dynamic_shapes=dynamic, opset_version=opset, external_data=False, optimize=True,
                verbose=False, custom_translation_table=translation_table(),
            )
        except Exception as err:  # the exporter's own errors are long multi-page reports
            raise FastASTError(f"torch.onnx.export failed: {error_summary(err)}") from err
    proto = program.model_proto
    produced = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if produced != opset:
        raise FastASTError(f"the exporter produced opset {produced}, not the requested {opset}")
    if batch is None:  # name the symbolic dim BATCH on every graph input and output
        for value in list(proto.graph.input) + list(proto.graph.output):
            dim = value.type.tensor_type.shape.dim[0]
            if not dim.HasField("dim_value"):
                dim.dim_param = BATCH
    return proto


def check_graph(proto: onnx.ModelProto, merge_impl: str, merging_blocks: int) -> None:
    """The static, plugin-free contract; raises FastASTError naming what broke it."""
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as err:
        raise FastASTError(f"exported graph fails onnx.checker: {error_summary(err)}") from None
    ops: dict[str, int] = {}
    for node in proto.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    bad = sorted(STATIC_CONTRACT.keys() & ops.keys())  # the one table lint also applies
    if bad:
        raise FastASTError(f"exported graph breaks the static-shape contract with {bad} "
                           f"({STATIC_CONTRACT[bad[0]]}); expected none")
    scatters = {op: n for op, n in ops.items() if op.startswith("Scatter")}
    if merge_impl == "matmul" and scatters:
        raise FastASTError(f"matmul merge export still has scatter nodes {scatters}; expected none")
    if merge_impl == "scatter":
        adds = [n for n in proto.graph.node if n.op_type == "ScatterElements"
                and any(a.name == "reduction" and a.s == b"add" for a in n.attribute)]
        expected = 2 * merging_blocks  # tokens and sizes
        if len(adds) != expected or sum(scatters.values()) != expected:
            raise FastASTError(f"scatter merge export should have {expected} ScatterElements(add) nodes, "
                               f"found {len(adds)} among {scatters}")
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True, data_prop=True)
    # The batch may sit on any axis of an intermediate tensor (also flattened with the token axis for row
    # gathers), but every symbolic dim must be the one BATCH symbol or a fixed multiple of it.
    symbolic = []
    for value in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        dims = value.type.tensor_type.shape.dim
        for axis, dim in enumerate(dims):
            if not dim.HasField("dim_value") and not BATCH_DIM.fullmatch(dim.dim_param):
                symbolic.append(f"{value.name}[{axis}]")
    if symbolic:
        raise FastASTError(f"exported graph has {len(symbolic)} non-batch dynamic dims (e.g. {symbolic[:3]}); "
                           "expected only the batch dimension to be symbolic")
    constants = {t.name: t for t in inferred.graph.initializer}
    constants.update({n.output[0]: a.t for n in inferred.graph.node if n.op_type == "Constant" for a in n.attribute
                      if a.name == "value"})
    for node in inferred.graph.node:
        if node.op_type not in CONTRACT_CONSTANT_INPUTS:
            continue
        index, label = CONTRACT_CONSTANT_INPUTS[node.op_type]
        k = constants.get(node.input[index])
        if k is None:
            raise FastASTError(f"{node.op_type} {node.name} has a {label} computed at run time; expected a folded "
                               "constant")
        value = int(onnx.numpy_helper.to_array(k).reshape(-1)[0])
        if value >= TOPK_MAX_K:
            raise FastASTError(f"TopK {node.name} has K = {value}; TensorRT needs K < {TOPK_MAX_K}")


def build_metadata(model: FastAST, options: ExportOptions, source_info: dict[str, Any] | None) -> dict[str, Any]:
    """Everything a deployment needs to know about the graph, in plain JSON (no timestamps: re-exports are
    byte-identical)."""
    import onnxscript

    cfg = model.config
    features = graph_features(model) if options.input == WAVEFORM_NAME else getattr(model, "feature_config", None)
    labels = getattr(model, "label_names", None)
    batch: int | str = options.batch if options.batch else BATCH
    outputs: dict[str, Any] = {OUTPUT_NAME: {"shape": [batch, cfg.num_labels], "dtype": "float32"}}
    if options.debug_merges:
        outputs.update(merge_output_specs(model.schedule, batch))
    source = {k: str(v) if isinstance(v, os.PathLike) else v for k, v in (source_info or {}).items()}
    return {
        "format_version": EXPORT_FORMAT_VERSION,
        "source": source,
        "model": cfg.to_dict(),
        "tome": {**model.tome.to_dict(), "effective_schedule": list(model.schedule),
                 "token_counts": list(model.token_counts)},
        "labels": list(labels) if labels else None,
        "features": features.to_dict() if features is not None else None,
        "precision": options.precision,
        "opset": options.opset,
        "batch": options.batch,
        "inputs": {options.input: {"shape": [batch, *input_shape(model, options.input)], "dtype": "float32"}},
        "outputs": outputs,
        "debug_merges": options.debug_merges,
        "versions": {"fastast_deploy": PACKAGE_VERSION, "torch": torch.__version__, "onnx": onnx.__version__,
                     "onnxscript": onnxscript.__version__},
    }


def tag_nodes(proto: onnx.ModelProto) -> None:
    """Drop the exporter's per-node stack traces (they hold this machine's file paths) and tag the nodes that
    come from Token Merging with ``fastast_deploy.part = merge``, for profiling and debugging."""
    for node in proto.graph.node:
        props = {p.key: p.value for p in node.metadata_props}
        trace = props.pop(STACK_TRACE_KEY, "")
        if not trace:
            continue
        del node.metadata_props[:]
        if MERGE_SOURCE.search(trace):
            props[PART_KEY] = "merge"
        elif FEATURE_SOURCE.search(trace):
            props[PART_KEY] = "features"  # the in-graph fbank: keep it in float32
        for key, value in props.items():
            node.metadata_props.add(key=key, value=value)


def serialize(proto: onnx.ModelProto, metadata: dict[str, Any]) -> bytes:
    tag_nodes(proto)
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata, sort_keys=True)
    buffer = io.BytesIO()
    onnx.save_model(proto, buffer)
    return buffer.getvalue()


def check_feature_settings(model: FastAST) -> None:
    """The feature settings a model carries (what turns audio into its input) give the mel bins it takes; a
    ConfigError otherwise: its export would take audio features of the wrong width."""
    features = getattr(model, "feature_config", None)
    if features is not None and features.num_mel_bins != model.config.num_mel_bins:
        source = (getattr(model, "source_info", None) or {}).get("path", "the checkpoint")
        raise ConfigError(f"{source}: its feature settings give {features.num_mel_bins} mel bins, its model takes "
                          f"{model.config.num_mel_bins}; the checkpoint is inconsistent: save it again from a model "
                          "with matching feature settings")


def export_onnx(
    model: FastAST,
    output: str | os.PathLike,
    options: ExportOptions = ExportOptions(),
    *,
    source_info: dict[str, Any] | None = None,
    check: bool = True,
    parity_inputs: int = 4,
    calibration: Any = None,
    quantize: Any = None,
) -> ExportResult:
    """Export, check the graph contract, optionally check parity on ONNX Runtime, then write the model and its
    JSON sidecar atomically. Nothing is written when any step fails. int8 needs ``calibration`` clips (N, T, F)
    and takes ``quantize`` (exporters.quantize.QuantizeOptions)."""
    from .fbank_graph import check_waveform_parity
    from .parity import check_parity

    check_feature_settings(model)
    output = prepare_output(output)
    metadata = build_metadata(model, options, source_info or getattr(model, "source_info", None))
    merging = sum(1 for r in model.schedule if r > 0)
    if options.precision == "int8":
        from .quantize import export_int8

        # Waveform-in: the fbank-in graph is quantised on fbank clips, then the float32 features go in front.
        traced = to_onnx(model, replace(options, precision="fp32", debug_merges=True, input=INPUT_NAME))
        check_graph(traced, model.tome.merge_impl, merging)
        traced = onnx.load_from_string(serialize(traced, metadata))  # tags the merge nodes
        proto, parity = export_int8(model, traced, options, metadata, calibration, quantize, check)
        if options.input == WAVEFORM_NAME:
            front = trace(waveform_features(model).eval(), input_shape(model, WAVEFORM_NAME), WAVEFORM_NAME,
                          [INPUT_NAME], options.batch, options.opset)
            fbank_in, proto = proto, join_features(front, proto)
            if check and parity is not None:
                parity["waveform"] = check_prepended(fbank_in, proto, model, options.batch)
        check_graph(proto, model.tome.merge_impl, merging)
        data = serialize(proto, metadata)
    else:
        proto = to_onnx(model, options)
        check_graph(proto, model.tome.merge_impl, merging)
        tag_nodes(proto)
        metadata["tome"]["merge_nodes"] = merge_node_counts(proto, PART_KEY, model.schedule)  # per merging block
        data = serialize(proto, metadata)
    if len(data) >= 2**31:
        raise FastASTError(f"exported model is {len(data) / 2**30:.1f} GiB; one self-contained file must be < 2 GiB")
    if check:
        check_lint(proto, allow_plugins=model.tome.merge_impl == "scatter")
    if options.precision != "int8":
        parity = None
        if check:
            compare = check_waveform_parity if options.input == WAVEFORM_NAME else check_parity
            parity = compare(model, data, options, num=parity_inputs)
    with atomic_pair(output) as pair:
        pair.tmp.write_bytes(data)
        pair.sidecar = {**metadata, "sha256": _sha256(data), "parity": parity}
    return ExportResult(output, sidecar_path(output), metadata, parity)


def check_lint(proto: onnx.ModelProto, allow_plugins: bool = False) -> None:
    """The TensorRT lint of both majors on the exported graph; its errors fail the export (FastASTError)."""
    from .lint import lint_model
    from .lint_report import verdict

    for major in (10, 11):
        report = lint_model(proto, tensorrt=major, allow_plugins=allow_plugins)
        if report.failed:
            raise FastASTError(f"the exported graph fails the TensorRT lint: {verdict(report)}; export with "
                               "--no-check and run `fastast-deploy lint` on it for the details")


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def parity_summary(parity: dict[str, Any]) -> str:
    keys = ("max_abs_diff", "cosine_min", "top1_agreement", "merge_agreement")
    return ", ".join(f"{k} {parity[k]:.3g}" for k in keys if parity.get(k) is not None)

