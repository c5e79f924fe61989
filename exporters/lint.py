"""Static check of an ONNX graph against the TensorRT ONNX parser, before any GPU or TensorRT is involved.

It answers: does every node run natively (no plugin), is every dim but the batch fixed, are TopK's K and the
reduce axes build-time constants, and is anything typed in a way TensorRT lacks (fp64) or that makes merge
decisions fragile (fp16 comparisons in the matching subgraph)? The facts come from onnx-tensorrt's
``docs/operators.md`` for TensorRT 10.15 unless a comment names another source. TensorRT itself is never imported.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import TensorProto

from fastast_deploy.errors import FastASTError

from .onnx_graph import GraphIndex, default_opset, load_onnx
from .trt_ops import (
    NOT_SUPPORTED_TRT10,
    OPSET_OLD_TRT10_MAX,
    OPSET_RANGE,
    RESTRICTIONS,
    SINCE_TRT10,
    STATIC_CONTRACT,
    TENSORRT_OPS,
    TOPK_MAX_K,
    TRT_DOMAIN_OPS,
    TRT_PLUGINS,
    Restriction,
)

Severity = Literal["error", "warning", "info"]
Kind = Literal["unsupported", "plugin", "restriction", "static", "dtype", "precision", "opset", "note"]

# ONNX element types by the names the table uses; types TensorRT has no form of at all.
_TYPE_NAMES: dict[int, str] = {
    TensorProto.FLOAT: "FP32", TensorProto.FLOAT16: "FP16", TensorProto.BFLOAT16: "BF16",
    TensorProto.INT32: "INT32", TensorProto.INT64: "INT64", TensorProto.BOOL: "BOOL", TensorProto.UINT8: "UINT8",
    TensorProto.INT8: "INT8", TensorProto.INT4: "INT4", TensorProto.FLOAT4E2M1: "FP4",
    TensorProto.FLOAT8E4M3FN: "FP8", TensorProto.FLOAT8E4M3FNUZ: "FP8", TensorProto.FLOAT8E5M2: "FP8",
    TensorProto.FLOAT8E5M2FNUZ: "FP8", TensorProto.DOUBLE: "DOUBLE",
}
_QUANTIZED = frozenset({"INT8", "INT4", "FP8", "FP4"})  # only between Q/DQ; their placement is TensorRT's concern
_HALF = frozenset({TensorProto.FLOAT16, TensorProto.BFLOAT16})
_DECISION_OPS = frozenset({"TopK", "ArgMax", "ArgMin"})
_COMPARE_OPS = frozenset({"ReduceMax", "ReduceMin", "Equal"})
@dataclass(frozen=True)
class Finding:
    """One problem (or note). ``node`` is the node's name (a tensor's producer; the tensor itself for inputs and
    initializers; "(graph)" for the model), ``op`` its op type ("input"/"output" for graph I/O dims, "" for the
    model); ``detail`` holds what differs between repeats of the same message."""

    severity: Severity
    node: str
    op: str
    message: str
    detail: str = ""
    kind: Kind = "restriction"


@dataclass
class LintReport:
    """All findings for one graph and one TensorRT major version."""

    tensorrt: int
    source: str
    opset: int | None
    node_count: int
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def plugin_nodes(self) -> list[Finding]:
        """One finding per node that runs only as a TensorRT plugin."""
        return [f for f in self.findings if f.kind == "plugin"]

    @property
    def failed(self) -> bool:
        return any(f.severity == "error" for f in self.findings)


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


def format_report(report: LintReport) -> str:
    """Counts by op type per severity, each error/warning once per (op, message), then a one-line verdict."""
    lines = [f"TensorRT {report.tensorrt} lint of {report.source} (opset {report.opset}, {report.node_count} nodes)"]
    for severity in ("error", "warning", "info"):
        counts = Counter(f.op or "(graph)" for f in report.findings if f.severity == severity)
        if counts:
            lines.append(f"  {severity}s by op: " + ", ".join(f"{op} {n}" for op, n in counts.most_common()))
    groups: dict[tuple[str, str, str], list[Finding]] = {}
    for f in report.findings:
        if f.severity != "info":
            groups.setdefault((f.severity, f.op or "(graph)", f.message), []).append(f)
    for (severity, op, message), found in sorted(groups.items(), key=lambda kv: kv[0][0] != "error"):
        first = found[0]
        example = f"{first.node}: {first.detail}" if first.detail else first.node
        lines.append(f"  {severity.upper():<7} {op} x{len(found)}: {message} (e.g. {example})")
    lines.append(_verdict(report))
    return "\n".join(lines)


def _verdict(report: LintReport) -> str:
    head = (f"TensorRT {report.tensorrt}: {_count(len(report.errors), 'error')}, "
            f"{_count(len(report.warnings), 'warning')}, {_count(len(report.plugin_nodes), 'plugin node')}")
    plugins = Counter(f.op for f in report.plugin_nodes)
    plugin_text = [f"{_count(n, op + ' node')} need{'' if n > 1 else 's'} a plugin" for op, n in plugins.most_common()]
    if not report.failed:
        return f"{head} — " + ("builds with plugins: " + ", ".join(plugin_text) if plugins else "builds natively")
    others = Counter(f.op or "(graph)" for f in report.errors if f.kind != "plugin")
    reasons = (plugin_text if any(f.severity == "error" for f in report.plugin_nodes) else []) + [
        _count(n, f"{op} error") for op, n in others.most_common()]
    shown = ", ".join(reasons[:4]) + (f" and {len(reasons) - 4} more" if len(reasons) > 4 else "")
    return f"{head} — would fail: {shown}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _infer_shapes(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[Finding]]:
    try:
        # data_prop follows Shape -> Gather -> Concat -> Reshape chains, so batch-derived dims keep their symbol.
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True), []
    except (onnx.shape_inference.InferenceError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return model, [Finding("warning", "(graph)", "", "shape inference failed: only declared shapes were checked",
                               first, "note")]


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
    if op in TRT_PLUGINS:
        return [_plugin(name, op, f"custom op {domain}::{op} runs only as the TensorRT plugin {op!r} "
                        "(libnvinfer_plugin)", allow_plugins)]
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
    k = g.resolve(node.input[1]).value if len(node.input) > 1 else np.array(_attr_int(node, "k", 0))  # opset < 10
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
        elif elem == TensorProto.DOUBLE:
            findings.append(Finding("error", node, op, "DOUBLE tensor: TensorRT has no fp64 (the parser clamps it to "
                                    "fp32); cast to float32 in the model", f"tensor {name!r}", "dtype"))
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
    """fp16/bf16 values reaching the comparisons that pick merges (design.md section 5: keep them fp32)."""
    findings = []
    for i, node in enumerate(g.nodes):
        if node.input and _half_before(g, node.input[0]) and _in_matching_subgraph(g, i, node):
            findings.append(Finding("warning", g.names[i], node.op_type, "merge decisions computed in fp16 may flip "
                                    "near-ties; keep the matching subgraph in fp32", f"input {node.input[0]!r}",
                                    "precision"))
    if tensorrt >= 11:
        has_half = any(elem in _HALF for elem in g.elem_types.values())
        findings.append(Finding("info", "(graph)", "", "TensorRT 11 is strongly typed: precision comes from this "
                                "graph's types" + ("" if has_half else " (all fp32 here: for fp16, export an fp16 "
                                                   "ONNX; there is no builder flag)"), kind="note"))
    return findings


def _half_before(g: GraphIndex, name: str) -> bool:
    """fp16/bf16 itself, or a Cast up from fp16/bf16 (the values were already rounded)."""
    if g.elem_types.get(name) in _HALF:
        return True
    producer = g.nodes[g.producer[name]] if name in g.producer else None
    return producer is not None and producer.op_type == "Cast" and g.elem_types.get(producer.input[0]) in _HALF


def _in_matching_subgraph(g: GraphIndex, i: int, node: onnx.NodeProto, max_hops: int = 8) -> bool:
    """TopK/ArgMax/ArgMin, or a ReduceMax/ReduceMin/Equal whose result reaches one within a few nodes."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in _DECISION_OPS | _COMPARE_OPS:
        return False
    if node.op_type in _DECISION_OPS:
        return True
    frontier, seen = [i], {i}
    for _ in range(max_hops):
        nxt = [c for j in frontier for out in g.nodes[j].output for c in g.consumers.get(out, []) if c not in seen]
        if any(g.nodes[c].op_type in _DECISION_OPS for c in nxt):
            return True
        seen.update(nxt)
        frontier = nxt
    return False


def _attr_int(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _attr_str(node: onnx.NodeProto, name: str, default: str | None) -> str | None:
    return next((a.s.decode() for a in node.attribute if a.name == name), default)
