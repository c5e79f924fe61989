"""fp16 graphs: the transform that keeps LayerNorm and Softmax in float32 between explicit Casts, and the checks
``lint`` runs on half-precision values (which ops compute in fp16, which comparisons pick merges in fp16).

Why by hand: onnxconverter-common / ORT's float16 converters convert a whole fp32 graph with a block list; this
graph is already fp16 (the model was traced in half) and needs islands of fp32 around a few ops, which neither
converter does on an fp16 input. The ops and the reason sit in trt_ops.FP32_COMPUTE_OPS.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper, numpy_helper

from .onnx_graph import GraphIndex
from .trt_ops import FP32_COMPUTE_OPS

HALF = frozenset({TensorProto.FLOAT16, TensorProto.BFLOAT16})
DECISION_OPS = frozenset({"TopK", "ArgMax", "ArgMin"})
COMPARE_OPS = frozenset({"ReduceMax", "ReduceMin", "Equal"})
SUFFIX = "__fp32"


def _elem_types(proto: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    graph = inferred.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in (*graph.input, *graph.value_info, *graph.output)
             if vi.type.HasField("tensor_type")}
    types.update({t.name: t.data_type for t in proto.graph.initializer})
    return types


def compute_in_fp32(proto: onnx.ModelProto, ops: frozenset[str] = FP32_COMPUTE_OPS) -> int:
    """Rewrite ``proto`` in place: every default-domain node of ``ops`` whose data input is FLOAT16 reads float32
    inputs (fp16 initializers used only by such nodes are widened in place, anything else goes through
    Cast(to=FLOAT)) and its first output goes back to FLOAT16 through a Cast, so the rest of the graph is
    unchanged. Returns the number of nodes rewritten."""
    types = _elem_types(proto)
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    chosen = [n for n in graph.node if n.op_type in ops and n.domain in ("", "ai.onnx") and n.input
              and types.get(n.input[0]) == TensorProto.FLOAT16]
    chosen_ids = {id(n) for n in chosen}
    outputs = {vi.name for vi in graph.output}
    nodes: list[onnx.NodeProto] = []
    for index, node in enumerate(graph.node):
        if id(node) not in chosen_ids:
            nodes.append(node)
            continue
        label = node.name or f"{node.op_type}_{index}"
        for i, name in enumerate(node.input):
            if not name or types.get(name) != TensorProto.FLOAT16:
                continue
            if name in inits and name not in outputs and all(id(c) in chosen_ids for c in consumers[name]):
                tensor = inits[name]
                tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype("float32"), name))
                types[name] = TensorProto.FLOAT
                continue
            wide = f"{name}{SUFFIX}_{label}"
            nodes.append(helper.make_node("Cast", [name], [wide], name=f"{label}/to_fp32_{i}", to=TensorProto.FLOAT))
            node.input[i] = wide
        out = node.output[0]
        node.output[0] = out + SUFFIX
        nodes += [node, helper.make_node("Cast", [out + SUFFIX], [out], name=f"{label}/to_fp16",
                                         to=TensorProto.FLOAT16)]
    del graph.node[:]
    graph.node.extend(nodes)
    for vi in graph.value_info:  # the exporter also lists initializers there: keep their types in step
        if vi.name in inits and vi.type.HasField("tensor_type"):
            vi.type.tensor_type.elem_type = inits[vi.name].data_type
    return len(chosen)


def half_compute(g: GraphIndex, ops: frozenset[str] = FP32_COMPUTE_OPS) -> list[tuple[int, str]]:
    """(node index, data input) of each node of ``ops`` that computes in fp16/bf16 (its data input is half)."""
    return [(i, node.input[0]) for i, node in enumerate(g.nodes)
            if node.op_type in ops and node.domain in ("", "ai.onnx") and node.input
            and g.elem_types.get(node.input[0]) in HALF]


def half_decisions(g: GraphIndex) -> list[tuple[int, str]]:
    """(node index, input) of each merge-deciding comparison fed with values that were rounded to fp16/bf16."""
    return [(i, node.input[0]) for i, node in enumerate(g.nodes)
            if node.input and _half_before(g, node.input[0]) and _in_matching_subgraph(g, i, node)]


def has_half(g: GraphIndex) -> bool:
    return any(elem in HALF for elem in g.elem_types.values())


def _half_before(g: GraphIndex, name: str) -> bool:
    """fp16/bf16 itself, or a Cast up from fp16/bf16 (the values were already rounded)."""
    if g.elem_types.get(name) in HALF:
        return True
    producer = g.nodes[g.producer[name]] if name in g.producer else None
    return producer is not None and producer.op_type == "Cast" and g.elem_types.get(producer.input[0]) in HALF


def _in_matching_subgraph(g: GraphIndex, i: int, node: onnx.NodeProto, max_hops: int = 8) -> bool:
    """TopK/ArgMax/ArgMin, or a ReduceMax/ReduceMin/Equal whose result reaches one within a few nodes."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in DECISION_OPS | COMPARE_OPS:
        return False
    if node.op_type in DECISION_OPS:
        return True
    frontier, seen = [i], {i}
    for _ in range(max_hops):
        nxt = [c for j in frontier for out in g.nodes[j].output for c in g.consumers.get(out, []) if c not in seen]
        if any(g.nodes[c].op_type in DECISION_OPS for c in nxt):
            return True
        seen.update(nxt)
        frontier = nxt
    return False
