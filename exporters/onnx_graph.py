"""An index over one ONNX graph for static checks: producers, consumers, shapes, element types, and the values of
tensors that are known before a build (initializers, Constant nodes, and what folds from them)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import AttributeProto, TensorProto, numpy_helper
from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

from fastast_deploy.errors import FastASTError

RANDOM_OPS = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli",
                         "Multinomial"})
FOLDABLE_OPS = frozenset({"Identity", "Cast", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Concat", "Gather",
                           "Slice", "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Min", "Max", "Range", "Expand",
                           "ConstantOfShape", "ReduceProd", "ReduceSum", "Floor", "Ceil"})
FOLD_MAX_ELEMENTS = 1 << 16




@dataclass(frozen=True)
class ConstInfo:
    """How a tensor's value is known before building: as written, foldable from constants, or only at run time."""

    kind: Literal["literal", "folded", "runtime"]
    value: np.ndarray | None = None


class GraphIndex:
    """Name indexes over one (shape-inferred) graph, plus constant resolution for K / axes / depth inputs."""

    def __init__(self, model: onnx.ModelProto, base_dir: Path | None) -> None:
        graph = model.graph
        self.model, self.base_dir = model, base_dir
        self.nodes = list(graph.node)
        self.names = [node.name or f"{node.op_type}_{i}" for i, node in enumerate(self.nodes)]
        self.initializers = {t.name: t for t in graph.initializer}
        self.inputs = [vi for vi in graph.input if vi.name not in self.initializers]
        self.outputs = list(graph.output)
        self.producer = {out: i for i, node in enumerate(self.nodes) for out in node.output if out}
        self.consumers: dict[str, list[int]] = {}
        for i, node in enumerate(self.nodes):
            for name in node.input:
                self.consumers.setdefault(name, []).append(i)
        self.values = {vi.name: vi for vi in (*graph.input, *graph.value_info, *graph.output)}
        self.elem_types = {name: vi.type.tensor_type.elem_type for name, vi in self.values.items()
                           if vi.type.HasField("tensor_type")}
        self.elem_types.update({t.name: t.data_type for t in graph.initializer})
        self.kinds: dict[str, str] = dict.fromkeys(self.initializers, "literal")
        for node in self.nodes:  # ONNX graphs are topologically sorted
            self.kinds.update(dict.fromkeys(node.output, self._node_kind(node)))
        self._values: dict[str, np.ndarray | None] = {}

    def shape(self, name: str) -> list[int | str | None] | None:
        """Dims of a tensor: int, symbol, or None where unknown; None when even the rank is unknown."""
        if name in self.initializers:
            return list(self.initializers[name].dims)
        vi = self.values.get(name)
        if vi is None or not vi.type.tensor_type.HasField("shape"):
            return None
        dims = vi.type.tensor_type.shape.dim
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]

    def where(self, name: str) -> tuple[str, str]:
        """(node name, op type) to report a tensor under."""
        if name in self.producer:
            i = self.producer[name]
            return self.names[i], self.nodes[i].op_type
        return name, "initializer" if name in self.initializers else "input"

    def resolve(self, name: str) -> ConstInfo:
        kind = self.kinds.get(name, "runtime")
        return ConstInfo(kind, self._value(name, depth=0) if kind != "runtime" else None)

    def _node_kind(self, node: onnx.NodeProto) -> str:
        if node.op_type == "Constant":
            return "literal"
        if node.op_type in ("Shape", "Size"):
            return "folded" if static_dims(self._shape_slice(node)) else "runtime"
        inputs = [name for name in node.input if name]
        has_body = any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for a in node.attribute)
        if node.op_type in RANDOM_OPS or not inputs or has_body:
            return "runtime"
        return "runtime" if any(self.kinds.get(name, "runtime") == "runtime" for name in inputs) else "folded"

    def _shape_slice(self, node: onnx.NodeProto) -> list[int | str | None] | None:
        dims = self.shape(node.input[0])
        if dims is None or node.op_type == "Size":
            return dims
        attrs = {a.name: a.i for a in node.attribute}
        return dims[attrs.get("start", 0): attrs.get("end", len(dims))]

    def _value(self, name: str, depth: int) -> np.ndarray | None:
        if name not in self._values:
            self._values[name] = self._compute_value(name, depth)
        return self._values[name]

    def _compute_value(self, name: str, depth: int) -> np.ndarray | None:
        if name in self.initializers:
            return tensor_value(self.initializers[name], self.base_dir)
        if name not in self.producer or depth > 64:
            return None
        node = self.nodes[self.producer[name]]
        if node.op_type == "Constant":
            return constant_value(node)
        if node.op_type in ("Shape", "Size"):
            dims = self._shape_slice(node)
            return np.array(dims if node.op_type == "Shape" else np.prod(dims), dtype=np.int64)
        if node.op_type not in FOLDABLE_OPS:
            return None
        feeds = {n: self._value(n, depth + 1) for n in node.input if n}
        if any(v is None or v.size > FOLD_MAX_ELEMENTS for v in feeds.values()):
            return None
        return evaluate_node(node, feeds, self.model.opset_import)[list(node.output).index(name)]


def load_onnx(model: onnx.ModelProto | str | Path) -> tuple[onnx.ModelProto, str, Path | None]:
    if isinstance(model, onnx.ModelProto):
        proto, source, base_dir = model, "<ModelProto>", None
    else:
        path = Path(model)
        try:
            proto = onnx.load(path, load_external_data=False)  # weights stay on disk; only small constants are read
        except (OSError, DecodeError) as err:
            raise FastASTError(f"cannot read ONNX model {path}: {err}") from None
        source, base_dir = str(path), path.parent
    if not proto.ir_version or not proto.HasField("graph"):
        raise FastASTError(f"{source} is not an ONNX model (no ir_version or graph); expected a .onnx file")
    return proto, source, base_dir


def default_opset(model: onnx.ModelProto) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def tensor_value(tensor: TensorProto, base_dir: Path | None) -> np.ndarray | None:
    if uses_external_data(tensor):
        if base_dir is None:
            return None
        tensor = _copied(tensor)
        try:
            load_external_data_for_tensor(tensor, str(base_dir))
        except (OSError, ValueError, onnx.checker.ValidationError):
            return None
    return numpy_helper.to_array(tensor)


def _copied(tensor: TensorProto) -> TensorProto:
    out = TensorProto()
    out.CopyFrom(tensor)
    return out


def constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name in ("value_int", "value_ints"):
            return np.array(attr.i if attr.name == "value_int" else list(attr.ints), dtype=np.int64)
        if attr.name in ("value_float", "value_floats"):
            return np.array(attr.f if attr.name == "value_float" else list(attr.floats), dtype=np.float32)
    return None


def evaluate_node(node: onnx.NodeProto, feeds: dict[str, np.ndarray],
              opsets: Sequence[onnx.OperatorSetIdProto]) -> list[np.ndarray | None]:
    from onnx.reference import ReferenceEvaluator  # imported here: only graphs with computed K/axes need it

    inputs = [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
              for n, v in feeds.items()]
    outputs = [onnx.helper.make_tensor_value_info(n, TensorProto.UNDEFINED, None) for n in node.output if n]
    model = onnx.helper.make_model(onnx.helper.make_graph([node], "fold", inputs, outputs), opset_imports=opsets)
    try:
        return list(ReferenceEvaluator(model).run(None, feeds))
    except Exception:  # a fold that fails only means the value stays unknown
        return [None] * len(node.output)


def static_dims(dims: list[int | str | None] | None) -> bool:
    return dims is not None and all(isinstance(d, int) for d in dims)
