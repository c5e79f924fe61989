"""Lint rules for Q/DQ (QuantizeLinear / DequantizeLinear) graphs: where TensorRT's explicit quantisation accepts
them, and that none reaches the Token Merging decisions.

TensorRT facts (onnx-tensorrt docs/operators.md, 9.x-10.x: QuantizeLinear "`y_zero_point` must be 0",
DequantizeLinear "`x_zero_point` must be zero", INT8 "only through quantization from a type with higher precision";
TensorRT docs "Working with Quantized Types" / "Explicit Quantization"): quantisation is symmetric and signed (INT8,
not UINT8), scales are build-time constants, activations are quantised per tensor and weights per tensor or per
output channel (Conv axis 0, MatMul's constant B its last axis, Gemm's B by transB); a Q's output is read by DQs
only. The same rules hold for TensorRT 10 (built strongly typed, no int8 flag) and 11 (always strongly typed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from onnx import TensorProto

from fastast_deploy.contract import PART_KEY

from .lint_report import Finding

if TYPE_CHECKING:
    import onnx

    from .onnx_graph import GraphIndex

_QDQ = ("QuantizeLinear", "DequantizeLinear")
_DECISIONS = frozenset({"TopK", "ArgMax", "ArgMin"})
_KEEP_FLOAT = frozenset({"LayerNormalization", "Softmax"})


def check_qdq(g: GraphIndex, tensorrt: int) -> list[Finding]:
    """Findings for every Q/DQ node of the graph; nothing for a graph without any."""
    qdq = [i for i, n in enumerate(g.nodes) if n.op_type in _QDQ and n.domain in ("", "ai.onnx")]
    if not qdq:
        return []
    matching = _matching_nodes(g)
    findings: list[Finding] = []
    for i in qdq:
        findings += _check_one(g, i, matching)
    quantized = sorted({g.names[c] for i in qdq if g.nodes[i].op_type == "DequantizeLinear"
                        for c in g.consumers.get(g.nodes[i].output[0], [])})
    mode = "strongly typed, no int8 builder flag" if tensorrt == 10 else "always strongly typed"
    findings.append(Finding("info", "(graph)", "", f"{len(qdq)} Q/DQ nodes feed {len(quantized)} nodes: explicit "
                            f"int8 quantisation (TensorRT {tensorrt}: {mode})", kind="note"))
    return findings


def _check_one(g: GraphIndex, i: int, matching: set[int]) -> list[Finding]:
    node, name, op = g.nodes[i], g.names[i], g.nodes[i].op_type
    findings = []

    def error(message: str, detail: str = "", kind: str = "restriction") -> None:
        findings.append(Finding("error", name, op, message, detail, kind))  # type: ignore[arg-type]

    scale = g.resolve(node.input[1]) if len(node.input) > 1 else None
    if scale is None or scale.kind == "runtime" or scale.value is None:
        error("scale is not a build-time constant: TensorRT needs constant Q/DQ scales", kind="static")
    elif not (np.isfinite(scale.value).all() and (scale.value > 0).all()):
        error("scale holds zero, negative, NaN or inf values: TensorRT needs positive finite scales")
    if len(node.input) > 2 and node.input[2]:
        zero = g.resolve(node.input[2])
        if zero.value is not None and np.any(zero.value != 0):
            error("zero point is not 0: TensorRT quantisation is symmetric (operators.md: zero point must be 0)")
    int_type = g.elem_types.get(node.output[0] if op == "QuantizeLinear" else node.input[0], 0)
    if int_type == TensorProto.UINT8:
        error("UINT8 quantisation: TensorRT's int8 is signed (UINT8 only as a network input or output)",
              kind="dtype")
    per_channel = scale is not None and scale.value is not None and scale.value.size > 1
    weight = _is_weight(g, node)
    if per_channel and not weight:
        error("per-channel scale on an activation: TensorRT quantises activations per tensor",
              f"{scale.value.size} scales")
    if op == "QuantizeLinear":
        readers = [g.nodes[c].op_type for c in g.consumers.get(node.output[0], [])]
        if any(r != "DequantizeLinear" for r in readers):
            error("a Q output is read by non-DQ nodes; TensorRT takes int8 only into a DequantizeLinear",
                  f"read by {sorted(set(readers))}")
        return findings
    if per_channel and weight:
        findings += _check_axis(g, i, node)
    for c in g.consumers.get(node.output[0], []):
        consumer = g.nodes[c]
        if c in matching:
            findings.append(Finding("error", name, op, "a Q/DQ node feeds the Token Merging matching subgraph: "
                                    "merge decisions must be computed from float values",
                                    f"feeds {g.names[c]} ({consumer.op_type})", "precision"))
        elif consumer.op_type in _KEEP_FLOAT:
            findings.append(Finding("warning", name, op, f"DQ feeds {consumer.op_type}: keep LayerNorm and Softmax "
                                    "inputs float", g.names[c], "precision"))
    return findings


def _is_weight(g: GraphIndex, node: onnx.NodeProto) -> bool:
    """A DQ of a constant, or a Q of a constant (its pair's DQ), or a DQ of such a Q."""
    source = node.input[0]
    if g.resolve(source).kind != "runtime":
        return True
    producer = g.nodes[g.producer[source]] if source in g.producer else None
    return producer is not None and producer.op_type == "QuantizeLinear" and \
        g.resolve(producer.input[0]).kind != "runtime"


def _check_axis(g: GraphIndex, i: int, node: onnx.NodeProto) -> list[Finding]:
    """Per-channel weight scales must run along the consumer's output channels."""
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    dims = g.shape(node.output[0]) or g.shape(node.input[0]) or []
    rank = len(dims)
    findings = []
    for c in g.consumers.get(node.output[0], []):
        consumer = g.nodes[c]
        if list(consumer.input).index(node.output[0]) != 1:
            continue
        if consumer.op_type == "Conv":
            want = 0
        elif consumer.op_type == "MatMul":
            want = rank - 1
        elif consumer.op_type == "Gemm":
            want = 0 if next((a.i for a in consumer.attribute if a.name == "transB"), 0) else 1
        else:
            continue
        if rank and axis % rank != want:
            findings.append(Finding("error", g.names[i], node.op_type, f"per-channel weight axis {axis}: TensorRT "
                                    f"quantises {consumer.op_type} weights per output channel (axis {want})",
                                    f"weight of {g.names[c]}"))
    return findings


def _matching_nodes(g: GraphIndex) -> set[int]:
    """The nodes tagged as merge by the exporter; in an untagged graph, TopK/ArgMax/ArgMin and what feeds them
    without passing a weighted op (the matching's normalise / scores / max chain)."""
    tagged = {i for i, n in enumerate(g.nodes) if any(p.key == PART_KEY and p.value == "merge"
                                                       for p in n.metadata_props)}
    if tagged:
        return tagged
    found = {i for i, n in enumerate(g.nodes) if n.op_type in _DECISIONS}
    frontier = list(found)
    for _ in range(8):
        nxt = []
        for j in frontier:
            for name in g.nodes[j].input:
                p = g.producer.get(name)
                if p is None or p in found or _weighted(g, g.nodes[p]):
                    continue
                found.add(p)
                nxt.append(p)
        frontier = nxt
    return found


def _weighted(g: GraphIndex, node: onnx.NodeProto) -> bool:
    """Conv / Gemm / Q / DQ, or a MatMul with a constant or dequantised operand (a layer, not the scores)."""
    if node.op_type in ("Conv", "Gemm", *_QDQ):
        return True
    if node.op_type != "MatMul":
        return False
    return any(g.resolve(x).kind != "runtime" or (x in g.producer and g.nodes[g.producer[x]].op_type in _QDQ)
               for x in node.input)
