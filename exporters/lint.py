"""Static check of an ONNX graph against the TensorRT ONNX parser, before any GPU or TensorRT is involved.

It answers: does every node run natively (no plugin), is every dim but the batch fixed, are TopK's K and the
reduce axes build-time constants, and is anything typed in a way TensorRT lacks (fp64) or that makes merge
decisions fragile (fp16 comparisons in the matching subgraph, LayerNorm / Softmax computing in fp16)? The facts
come from exporters/trt_ops.py, whose tables cite their sources per TensorRT major (operators.md for 10.15 and
11.1, plugin/README.md for 10.16 and 11.1). TensorRT itself is never imported.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from fastast_deploy.errors import FastASTError, error_summary

from .lint_report import Finding, LintReport, format_report
from .onnx_graph import GraphIndex, default_opset, load_onnx
from .precision import half_compute, half_decisions, has_half
from .trt_ops import (
    DOUBLE_NOTE,
    NOT_SUPPORTED_TRT10,
    OPSET_OLD_TRT10_MAX,
    OPSET_RANGE,
    PLUGIN_SOURCES,
    RESTRICTIONS,
    SINCE_TRT10,
    STATIC_CONTRACT,
    TENSORRT_OPS,
    TOPK_MAX_K,
    TRT_DOMAIN_OPS,
    TRT_PLUGINS,
    Restriction,
)

# ONNX element types by the names the table uses; types TensorRT has no form of at all.
_TYPE_NAMES: dict[int, str] = {
    TensorProto.FLOAT: "FP32", TensorProto.FLOAT16: "FP16", TensorProto.BFLOAT16: "BF16",
    TensorProto.INT32: "INT32", TensorProto.INT64: "INT64", TensorProto.BOOL: "BOOL", TensorProto.UINT8: "UINT8",
    TensorProto.INT8: "INT8", TensorProto.INT4: "INT4", TensorProto.FLOAT4E2M1: "FP4",
    TensorProto.FLOAT8E4M3FN: "FP8", TensorProto.FLOAT8E4M3FNUZ: "FP8", TensorProto.FLOAT8E5M2: "FP8",
    TensorProto.FLOAT8E5M2FNUZ: "FP8", TensorProto.DOUBLE: "DOUBLE",
}
_QUANTIZED = frozenset({"INT8", "INT4", "FP8", "FP4"})  # only between Q/DQ; their placement is TensorRT's concern
__all__ = ["Finding", "LintReport", "format_report", "lint_model"]


# ---------------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------------
def lint_model(model: onnx.ModelProto | str | Path, tensorrt: int = 10, *, allow_plugins: bool = False) -> LintReport:
    """Check a graph against TensorRT ``tensorrt`` (10 or 11) and this project's static-shape contract.

    With ``allow_plugins`` a node that needs a TensorRT plugin is a warning instead of an error (the engine then
    needs libnvinfer_plugin loaded). Nodes inside If/Loop/Scan bodies are not visited: the node itself fails.
    """
    if tensorrt not in TENSORRT_OPS:
        raise FastASTError(f"unknown TensorRT major version {tensorrt}; known: {sorted(TENSORRT_OPS)}")
    proto, source, base_dir = load_onnx(model)
    inferred, findings = _infer_shapes(proto)
    graph = GraphIndex(inferred, base_dir)
    opset = default_opset(proto)
    findings += _check_opset(opset, tensorrt)
    for i, node in enumerate(graph.nodes):
        findings += _check_node(graph, i, node, tensorrt, allow_plugins)
    findings += _check_dims(graph)
    findings += _check_dtypes(graph)
    findings += _check_precision(graph, tensorrt)
    from .lint_qdq import check_qdq  # Q/DQ placement (int8 exports); it builds on Finding, hence imported here
    findings += check_qdq(graph, tensorrt)
    return LintReport(tensorrt, source, opset, len(graph.nodes), findings)


def _infer_shapes(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[Finding]]:
    try:
        # data_prop follows Shape -> Gather -> Concat -> Reshape chains, so batch-derived dims keep their symbol.
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True), []
    except (onnx.shape_inference.InferenceError, ValueError) as err:
        return model, [Finding("warning", "(graph)", "", "shape inference failed: only declared shapes were checked",
                               error_summary(err), "note")]


# ---------------------------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------------------------
def _check_opset(opset: int | None, tensorrt: int) -> list[Finding]:
    low, high = OPSET_RANGE[tensorrt]
    if opset is None:
        return [Finding("error", "(graph)", "", "no default-domain opset import", "", "opset")]
    if not low <= opset <= high:
        return [Finding("error", "(graph)", "", f"opset {opset} is outside TensorRT {tensorrt}'s range {low}-{high}",
                        "re-export with opset_version in range", "opset")]
    if tensorrt == 10 and opset > OPSET_OLD_TRT10_MAX:
        return [Finding("warning", "(graph)", "", f"opset {opset} needs a recent TensorRT 10.x (10.0/10.1 read "
                        f"opsets up to {OPSET_OLD_TRT10_MAX}; 10.15 reads up to 24)", "", "opset")]
    return []


def _check_node(g: GraphIndex, i: int, node: onnx.NodeProto, tensorrt: int, allow_plugins: bool) -> list[Finding]:
    name, op = g.names[i], node.op_type
    if node.domain not in ("", "ai.onnx"):
        return _check_custom(name, node, tensorrt, allow_plugins)
    if op in STATIC_CONTRACT:
        return [Finding("error", name, op, f"breaks the static-shape contract: {STATIC_CONTRACT[op]}",
                        kind="static")]
    table = TENSORRT_OPS[tensorrt]
    if op not in table:
        why = "marked not supported in" if op in NOT_SUPPORTED_TRT10 else "not in"
        return [Finding("error", name, op, f"unsupported: {why} the TensorRT ONNX parser's operator table",
                        kind="unsupported")]
    findings = []
    if tensorrt == 10 and op in SINCE_TRT10:
        findings.append(Finding("warning", name, op, f"needs TensorRT {SINCE_TRT10[op]} or later", kind="opset"))
    findings += _check_types(g, name, node, table[op])
    findings += _check_restriction(g, name, node, RESTRICTIONS.get(op, {}), allow_plugins)
    if op == "TopK":
        findings += _check_topk_k(g, name, node)
    elif op == "ScatterND" and tensorrt == 10 and _attr_str(node, "reduction", None) == "none":
        # onnx-tensorrt PR #972: the 10.1 importer rejected any `reduction` attribute; "Fixed support for opset
        # 18+ ScatterND" in 10.9 (NVIDIA/TensorRT CHANGELOG.md).
        findings.append(Finding("warning", name, op, "an explicit reduction='none' is rejected before TensorRT 10.9"))
    elif op in ("ArgMax", "ArgMin"):  # importerUtils.cpp argMinMaxHelper (onnx-tensorrt 10.x) builds TopK(k=1)
        findings.append(Finding("info", name, op, "built as TopK(k=1): ties may break differently from PyTorch",
                                kind="note"))
    return findings


def _check_custom(name: str, node: onnx.NodeProto, tensorrt: int, allow_plugins: bool) -> list[Finding]:
    op, domain = node.op_type, node.domain
    if domain == "trt" and op in TRT_DOMAIN_OPS[tensorrt]:
        return []
    if op in TRT_PLUGINS[tensorrt]:
        return [_plugin(name, op, f"custom op {domain}::{op} runs only as the TensorRT plugin {op!r} "
                        "(libnvinfer_plugin)", allow_plugins)]
    if gone := [m for m, names in TRT_PLUGINS.items() if op in names and m != tensorrt]:
        # e.g. BatchedNMS_TRT, NMS_TRT, ProposalDynamic, CustomGeluPluginDynamic: in 10.16's plugin/README.md, not in
        # 11.1's (trt_ops.PLUGIN_SOURCES); not buildable there, plugins allowed or not.
        return [Finding("error", name, op, f"the TensorRT plugin {op!r} is not shipped with TensorRT {tensorrt} "
                        f"(only with {', '.join(str(m) for m in gone)}; {PLUGIN_SOURCES[tensorrt]})",
                        kind="unsupported")]
    hint = " (an ONNX Runtime contrib op: never feed an ORT-optimised model to TensorRT)" \
        if domain == "com.microsoft" else ""
    return [Finding("error", name, op, f"unsupported: custom op of domain {domain!r}, not a TensorRT op or "
                    f"plugin{hint}", kind="unsupported")]


def _plugin(name: str, op: str, message: str, allow_plugins: bool) -> Finding:
    return Finding("warning" if allow_plugins else "error", name, op, message, kind="plugin")


def _check_types(g: GraphIndex, name: str, node: onnx.NodeProto, allowed: tuple[str, ...]) -> list[Finding]:
    """The table's types apply to the data tensor: input 0, Where's input 1, the output of input-less ops."""
    if node.op_type == "Where":
        tensors = node.input[1:2]
    elif node.op_type in ("Cast", "CastLike"):
        tensors = [node.input[0], node.output[0]]
    elif not node.input or node.op_type == "ConstantOfShape":
        tensors = node.output[:1]
    else:
        tensors = node.input[:1]
    findings = []
    for tensor in tensors:
        type_name = _TYPE_NAMES.get(g.elem_types.get(tensor, 0), "")
        if type_name and type_name not in allowed and type_name not in _QUANTIZED and type_name != "DOUBLE":
            findings.append(Finding("error", name, node.op_type, f"{type_name} data: TensorRT's {node.op_type} "
                                    f"takes {', '.join(allowed)}", f"tensor {tensor!r}", "dtype"))
    return findings


def _check_restriction(g: GraphIndex, name: str, node: onnx.NodeProto, rule: Restriction,
                       allow_plugins: bool) -> list[Finding]:
    op, findings = node.op_type, []
    for attr, required in rule.get("attrs", {}).items():
        if (found := _attr_int(node, attr, required)) != required:
            findings.append(Finding("error", name, op, f"{attr}={found}: TensorRT's {op} needs {attr}={required}"))
    for index, label in rule.get("build_time", {}).items():
        findings += _check_constant_input(g, name, node, index, label, fold_is_error=False)
    for index, label in rule.get("initializer", {}).items():
        findings += _check_constant_input(g, name, node, index, label, fold_is_error=True)
    if "unsupported_inputs" in rule and any(node.input[rule["unsupported_inputs"][0]:]):
        findings.append(Finding("error", name, op, f"unsupported inputs {rule['unsupported_inputs'][1]}"))
    if "unsupported_outputs" in rule:
        findings += _check_extra_outputs(g, name, node, *rule["unsupported_outputs"])
    if bad := [a.name for a in node.attribute if a.name in rule.get("unsupported_attrs", ())]:
        findings.append(Finding("error", name, op, f"unsupported attribute {bad[0]}"))
    reduction = _attr_str(node, "reduction", "none")
    if "reduction" in rule and reduction != "none":
        findings += _check_reduction(g, name, node, reduction, rule["reduction"], allow_plugins)
    return findings


def _check_constant_input(g: GraphIndex, name: str, node: onnx.NodeProto, index: int, label: str, *,
                          fold_is_error: bool) -> list[Finding]:
    """A K / axes / depth input: written as a constant is fine; computed from constants needs a fold first."""
    if len(node.input) <= index or not node.input[index]:
        return []  # absent: an attribute in older opsets, or the op's default
    tensor, op = node.input[index], node.op_type
    const = g.resolve(tensor)
    if const.kind == "runtime":
        return [Finding("error", name, op, f"{label} is computed at run time; fold constants (TensorRT needs a "
                        "build-time value)", f"{label} comes from {tensor!r}", "static")]
    if const.kind == "folded":
        value = "" if const.value is None else f" (= {const.value.tolist()})"
        return [Finding("error" if fold_is_error else "warning", name, op, f"{label} is computed from constants; "
                        "fold constants before building (polygraphy surgeon sanitize --fold-constants)",
                        f"{tensor!r}{value}", "static")]
    if const.value is None:
        return [Finding("warning", name, op, f"{label} is stored in external data that could not be read",
                        f"tensor {tensor!r}", "static")]
    return []


def _check_topk_k(g: GraphIndex, name: str, node: onnx.NodeProto) -> list[Finding]:
    const = g.resolve(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    if const is not None and const.kind == "runtime":
        # The 10.x importer passes K as a tensor (trt_ops.RESTRICTIONS["TopK"]); TensorRT checks K < 3840 only when
        # it runs (ITopKLayer, NvInfer.h: a larger dynamic K is "a runtime error").
        return [Finding("warning", name, "TopK", f"K is computed at run time: TensorRT accepts it, but checks K < "
                        f"{TOPK_MAX_K} only when it runs", f"K comes from {node.input[1]!r}", "static")]
    if const is not None and const.kind == "literal" and const.value is None:
        return [Finding("warning", name, "TopK", "K is stored in external data that could not be read",
                        f"tensor {node.input[1]!r}", "static")]
    k = const.value if const is not None else np.array(_attr_int(node, "k", 0))  # opset < 10: an attribute
    if k is None or k.size != 1 or int(k.reshape(-1)[0]) < TOPK_MAX_K:
        return []
    return [Finding("error", name, "TopK", f"K={int(k.reshape(-1)[0])}: TensorRT's TopK needs K < {TOPK_MAX_K}",
                    "split the sort or lower r")]


def _check_reduction(g: GraphIndex, name: str, node: onnx.NodeProto, reduction: str, needs: str,
                     allow_plugins: bool) -> list[Finding]:
    if needs == "unsupported":
        return [Finding("error", name, node.op_type, f"unsupported: reduction={reduction!r}", kind="unsupported")]
    findings = [_plugin(name, node.op_type, f"needs the ScatterElements plugin (reduction={reduction!r}; INT64 "
                        "indices, atomics: not bit-reproducible); use the one-hot MatMul merge instead",
                        allow_plugins)]
    # plugin/scatterElementsPlugin (NVIDIA/TensorRT, 10.x): supportsFormatCombination accepts INT64 indices only.
    index_type = g.elem_types.get(node.input[1], 0)
    if index_type not in (0, TensorProto.INT64):
        findings.append(Finding("error", name, node.op_type, "the ScatterElements plugin takes INT64 indices only, "
                                f"found {_TYPE_NAMES.get(index_type, index_type)}", kind="dtype"))
    return findings


def _check_extra_outputs(g: GraphIndex, name: str, node: onnx.NodeProto, first: int, label: str) -> list[Finding]:
    extra = [out for out in node.output[first:] if out]
    if not extra:
        return []
    graph_outputs = {vi.name for vi in g.outputs}
    if used := [out for out in extra if out in g.consumers or out in graph_outputs]:
        return [Finding("error", name, node.op_type, f"uses the {label} output(s), which TensorRT does not produce",
                        f"used: {used}")]
    return [Finding("warning", name, node.op_type, f"declares the {label} output(s), which TensorRT does not "
                    "produce (unused: drop them from the node)", f"{extra}")]


def _check_dims(g: GraphIndex) -> list[Finding]:
    """Only dim 0 of graph inputs/outputs may be symbolic (the batch); intermediates may carry batch expressions."""
    batch = {dims[0] for vi in g.inputs if (dims := g.shape(vi.name)) and isinstance(dims[0], str)}
    dynamic_batch = any((dims := g.shape(vi.name)) and not isinstance(dims[0], int) for vi in g.inputs)
    findings = []
    for role, values in (("input", g.inputs), ("output", g.outputs)):
        for vi in values:
            findings += _io_dims(g, vi.name, role, batch, dynamic_batch)
    io_names = {vi.name for vi in (*g.inputs, *g.outputs)}
    for name in g.values:
        if name not in io_names and (dims := g.shape(name)) is not None:
            findings += [_dim_finding(g, name, axis, dim, dynamic_batch)
                         for axis, dim in enumerate(dims) if not _fixed_or_batch(dim, batch)]
    return findings


def _io_dims(g: GraphIndex, name: str, role: str, batch: set[str], dynamic_batch: bool) -> list[Finding]:
    node, _ = g.where(name)
    dims = g.shape(name)
    if dims is None:
        return [Finding("error", node, role, "non-batch dynamic dim: the rank is unknown", f"{role} {name!r}",
                        "static")]
    findings = []
    for axis, dim in enumerate(dims):
        if isinstance(dim, int) or (axis == 0 and role == "input"):
            continue
        if axis == 0 and _fixed_or_batch(dim, batch):
            continue
        findings.append(_dim_finding(g, name, axis, dim, dynamic_batch, role))
    return findings


def _dim_finding(g: GraphIndex, name: str, axis: int, dim: int | str | None, dynamic_batch: bool,
                 role: str | None = None) -> Finding:
    node, op = g.where(name)
    unknown = dim is None or re.fullmatch(r"unk__\d+", str(dim)) is not None
    detail = f"{role + ' ' if role else ''}{name!r} dim {axis} is {'unknown' if unknown else repr(dim)}"
    if unknown and dynamic_batch and (role is None or axis == 0):
        # Shape inference lost track; with a dynamic batch this may be a batch expression, so not a hard error.
        return Finding("warning", node, op, "dim unknown after shape inference (may derive from the batch); "
                       "export with a fixed batch to prove it static", detail, "static")
    return Finding("error", node, role or op, "non-batch dynamic dim", detail, "static")


def _fixed_or_batch(dim: int | str | None, batch: set[str]) -> bool:
    """An int, or an expression like "2*batch" whose every name is a batch symbol."""
    if isinstance(dim, int):
        return True
    if not dim or not batch:
        return False
    names = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", dim))
    return bool(names) and names <= batch and re.fullmatch(r"[\w\s*+\-/()]+", dim) is not None


def _check_dtypes(g: GraphIndex) -> list[Finding]:
    """DOUBLE and other types TensorRT lacks are errors; INT64 use is summarised once."""
    findings, int64 = [], Counter()
    for name, elem in g.elem_types.items():
        node, op = g.where(name)
        if elem == TensorProto.INT64:
            int64[op] += 1
        elif elem == TensorProto.DOUBLE:  # trt_ops.DOUBLE_NOTE: cast down, so it builds
            findings.append(Finding("warning", node, op, f"DOUBLE tensor: {DOUBLE_NOTE}", f"tensor {name!r}", "dtype"))
        elif elem not in _TYPE_NAMES and elem != TensorProto.UNDEFINED:
            type_name = TensorProto.DataType.Name(elem)
            findings.append(Finding("error", node, op, f"{type_name} tensor: TensorRT has no such type",
                                    f"tensor {name!r}", "dtype"))
    if int64:
        # Since TensorRT 9.0 the parser keeps INT64 (onnx-tensorrt Changelog 9.0 EA); Gather*/OneHot importers still
        # cast their indices to INT32, so index values must fit in int32.
        summary = ", ".join(f"{op} {n}" for op, n in int64.most_common())
        findings.append(Finding("info", "(graph)", "", f"{sum(int64.values())} INT64 tensors: native since "
                                "TensorRT 9; Gather*/OneHot importers cast index inputs to INT32", summary, "note"))
    return findings


def _check_precision(g: GraphIndex, tensorrt: int) -> list[Finding]:
    """fp16/bf16 values reaching the comparisons that pick merges (keep them fp32: a near-tie rounded in fp16 picks
    another merge, and model.tome runs the matching in float32 for that reason), and
    LayerNorm / Softmax computing in fp16 (trt_ops.FP32_COMPUTE_OPS: strongly typed TensorRT computes them in
    their input type; the fp16 export casts their inputs to fp32)."""
    findings = [Finding("warning", g.names[i], g.nodes[i].op_type, "merge decisions computed in fp16 may flip "
                        "near-ties; keep the matching subgraph in fp32", f"input {tensor!r}", "precision")
                for i, tensor in half_decisions(g)]
    findings += [Finding("warning", g.names[i], g.nodes[i].op_type, "computes in fp16 under strong typing (TensorRT "
                         "takes its compute precision from the input type); cast its inputs to fp32 as "
                         "`fastast-deploy export --precision fp16` does", f"input {tensor!r}", "precision")
                 for i, tensor in half_compute(g)]
    if tensorrt >= 11:
        findings.append(Finding("info", "(graph)", "", "TensorRT 11 is strongly typed: precision comes from this "
                                "graph's types" + ("" if has_half(g) else " (all fp32 here: for fp16, export an "
                                                   "fp16 ONNX; there is no builder flag)"), kind="note"))
    return findings


def _attr_int(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _attr_str(node: onnx.NodeProto, name: str, default: str | None) -> str | None:
    return next((a.s.decode() for a in node.attribute if a.name == name), default)
