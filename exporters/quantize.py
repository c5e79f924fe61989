"""INT8 post-training static quantisation of an exported FastAST graph: Q/DQ nodes calibrated on real clips, with
the Token Merging decisions and the size-weighted merges kept in float32.

Library: ONNX Runtime's quantisation tool (``onnxruntime.quantization.quantize_static``, ``QuantFormat.QDQ``).
NVIDIA ModelOpt's ONNX int8 PTQ is the other kept tool, but its int8 mode is itself a wrapper over this same
quantize_static with TensorRT-guided options (modelopt/onnx/quantization/int8.py, ``trt_guided_options``), and its
``[onnx]`` extra pins onnxruntime-gpu ~= 1.24, onnx ~= 1.21, torch and cupy-cuda12x (pip resolution of
nvidia-modelopt[onnx] 0.47 here): installing it would replace the CPU onnxruntime this project runs everywhere.
So the project calls ORT's tool directly and spells the TensorRT rules out below.

TensorRT's explicit quantisation (TensorRT docs "Explicit Quantization"; onnx-tensorrt docs/operators.md:
QuantizeLinear "`y_zero_point` must be 0", DequantizeLinear "`x_zero_point` must be zero"): signed int8, symmetric
(zero points 0), weights per output channel (Conv axis 0, MatMul B axis 1, Gemm by transB), activations per tensor,
Q/DQ on the inputs of the weighted ops (MatMul, Gemm, Conv) that TensorRT fuses into int8 kernels, outputs float.
LayerNorm, Softmax, GELU and the residual adds are never quantised (not in ``QUANTIZED_OPS``).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fastast_deploy.contract import INPUT_NAME, PART_KEY, merge_output_names
from fastast_deploy.errors import ConfigError, FastASTError
from fastast_deploy.scoped import logging_disabled

if TYPE_CHECKING:  # onnx is imported where used: the CLI imports this module for its option defaults
    import onnx

QUANTIZED_OPS = ("MatMul", "Gemm", "Conv")
CALIB_METHODS = ("minmax", "percentile", "entropy")


@dataclass(frozen=True)
class QuantizeOptions:
    """How to quantise. ``clips``: calibration clips used (the rest, up to ``parity_clips``, check the result).
    ``method``: how activation ranges are taken from the calibration run; ``percentile`` clips the rare outliers
    that transformer activations have (ORT's default percentile 99.999). ``attention``: also quantise the two
    activation-by-activation MatMuls of attention (q k^T and softmax v), as TensorRT's int8 MHA fusion expects.
    ``float_keys``: keep the qkv layers float too, so that the keys the matching compares carry no int8 rounding
    (more merge decisions kept, less speed)."""

    clips: int = 64
    method: str = "minmax"
    attention: bool = True
    parity_clips: int = 32
    float_keys: bool = False  # also keep the layers the matching metric (the keys) comes from in float

    def __post_init__(self) -> None:
        if self.clips < 1:
            raise ConfigError(f"--calib-clips must be >= 1, got {self.clips}")
        if self.method not in CALIB_METHODS:
            raise ConfigError(f"unknown calibration method {self.method!r}; available: {list(CALIB_METHODS)}")


# ---------------------------------------------------------------------------------------------------------------
# Calibration data (read by exporters.calibration)
# ---------------------------------------------------------------------------------------------------------------
HELD_SHARE = 4  # with no clips beyond --calib-clips, 1 in this many is held out to check the result


def split_clips(fbank: np.ndarray, options: QuantizeOptions) -> tuple[np.ndarray, np.ndarray, str]:
    """Calibration clips and the clips the export's parity check uses: those after the calibration clips when the
    data has more, else the calibration clips themselves (said in the returned note)."""
    calib = fbank[: options.clips]
    held = fbank[options.clips : options.clips + options.parity_clips]
    if len(held):
        return calib, held, f"{len(held)} held-out clips (after the {len(calib)} calibration clips)"
    if len(fbank) >= 2:  # --calib-clips takes every clip: a share is held out all the same, and said so
        share = min(max(1, len(fbank) // HELD_SHARE), options.parity_clips)
        calib, held = fbank[: len(fbank) - share], fbank[len(fbank) - share :]
        return calib, held, (f"{share} held-out clips (the data has {len(fbank)} clips, not more than --calib-clips "
                             f"{options.clips}: the last 1/{HELD_SHARE} check, {len(calib)} calibrate)")
    return calib, calib[: options.parity_clips], "the one calibration clip (no clip to hold out in the data)"


# ---------------------------------------------------------------------------------------------------------------
# Which nodes stay float
# ---------------------------------------------------------------------------------------------------------------
def merge_nodes(proto: onnx.ModelProto) -> tuple[set[int], set[int]]:
    """Indices of the nodes that stay float: those tagged ``fastast_deploy.part = merge`` (matching and weighted
    merge), and every node whose outputs feed only the matching (e.g. the mean of the keys over heads, the
    metric). The matching is the tagged nodes that lead to a TopK / ArgMax: the residual stream feeds the weighted
    merge, not the matching, so the blocks' layers stay quantised. Returns (all of them, the matching part)."""
    nodes = list(proto.graph.node)
    tagged = {i for i, n in enumerate(nodes) if any(p.key == PART_KEY and p.value == "merge" for p in n.metadata_props)}
    producer = {out: i for i, n in enumerate(nodes) for out in n.output}
    matching = {i for i in tagged if nodes[i].op_type in ("TopK", "ArgMax", "ArgMin")}
    frontier = list(matching)
    while frontier:  # back from the decisions, inside the tagged nodes
        frontier = [p for j in frontier for x in nodes[j].input if (p := producer.get(x)) in tagged
                    and p not in matching]
        matching.update(frontier)
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            consumers.setdefault(name, []).append(i)
    outputs = {o.name for o in proto.graph.output}
    feeds_matching = set(matching)
    changed = True
    while changed:
        changed = False
        for i in range(len(nodes) - 1, -1, -1):  # graphs are sorted: walk back from the consumers
            if i in feeds_matching:
                continue
            users = [c for out in nodes[i].output for c in consumers.get(out, [])]
            if users and all(c in feeds_matching for c in users) and not outputs & set(nodes[i].output):
                feeds_matching.add(i)
                changed = True
    return tagged | feeds_matching, feeds_matching


def _name_nodes(proto: onnx.ModelProto) -> None:
    for i, node in enumerate(proto.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"


def _metric_layers(proto: onnx.ModelProto, matching: set[str]) -> set[str]:
    """The weighted nodes the matching's inputs come from, through non-weighted ops (the qkv layers)."""
    nodes = {n.name: n for n in proto.graph.node}
    producer = {out: n.name for n in proto.graph.node for out in n.output}
    found, seen, frontier = set(), set(matching), list(matching)
    while frontier:
        nxt = []
        for name in frontier:
            for x in nodes[name].input:
                p = producer.get(x)
                if p is None or p in seen:
                    continue
                seen.add(p)
                if nodes[p].op_type in QUANTIZED_OPS:
                    found.add(p)
                elif nodes[p].op_type not in ("LayerNormalization", "Softmax"):
                    nxt.append(p)
        frontier = nxt
    return found


def _attention_matmuls(proto: onnx.ModelProto) -> set[str]:
    """MatMuls whose two inputs are both computed at run time (attention's q k^T and softmax v)."""
    constants = {t.name for t in proto.graph.initializer}
    constants |= {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    return {n.name for n in proto.graph.node if n.op_type == "MatMul" and not constants & set(n.input[:2])}


# ---------------------------------------------------------------------------------------------------------------
# Quantisation
# ---------------------------------------------------------------------------------------------------------------
class _Reader:
    """ORT's CalibrationDataReader protocol over (N, T, F) clips, in batches the graph accepts."""

    def __init__(self, fbank: np.ndarray, batch: int | None) -> None:
        size = batch or min(8, len(fbank))
        if len(fbank) % size:  # whole batches only: the histogram calibrators stack equal shapes
            fbank = np.resize(fbank, (len(fbank) + size - len(fbank) % size, *fbank.shape[1:]))
        self._feeds = [{INPUT_NAME: fbank[i : i + size]} for i in range(0, len(fbank), size)]
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self._feeds):
            return None
        self._next += 1
        return self._feeds[self._next - 1]

    def rewind(self) -> None:
        self._next = 0


def quantize_int8(proto: onnx.ModelProto, calibration: np.ndarray, options: QuantizeOptions,
                  batch: int | None) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Q/DQ int8 graph of an fp32 export (nodes already tagged), calibrated on ``calibration`` (N, T, F); returns
    it and a summary of what was quantised and what was kept float."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    proto = _copy(proto)
    _name_nodes(proto)
    keep, matching = merge_nodes(proto)
    float_nodes = {proto.graph.node[i].name for i in keep}
    exclude = set(float_nodes)
    if not options.attention:
        exclude |= _attention_matmuls(proto)
    if options.float_keys:
        exclude |= _metric_layers(proto, {proto.graph.node[i].name for i in matching})
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[options.method]
    extra = {
        "ActivationSymmetric": True, "WeightSymmetric": True,  # TensorRT: zero points must be 0
        "QuantizeBias": False,  # biases stay float: TensorRT adds them in the fused kernel's epilogue
        "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1, "Conv": 0},  # per output channel
        "CalibMaxIntermediateOutputs": 64,  # bounds the memory of the calibration run
    }
    if options.method == "percentile":
        extra["CalibPercentile"] = 99.999
    with tempfile.TemporaryDirectory(prefix="fastast-int8-") as tmp:
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save_model(proto, source)
        # ORT's tool logs advice (pre-processing) on the root logger
        with logging_disabled(logging.WARNING):
            try:
                quantize_static(
                    str(source), str(target), _Reader(calibration, batch), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, nodes_to_exclude=sorted(exclude), calibrate_method=method,
                    extra_options=extra,
                )
            except Exception as err:  # ORT's errors come from deep inside its calibrator
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise FastASTError(f"int8 quantisation failed: {first}") from err
        quantized = onnx.load(str(target))
    restored = restore_float_inputs(quantized, float_nodes)
    ops = [n.op_type for n in quantized.graph.node]
    summary = {
        "tool": "onnxruntime.quantization.quantize_static (QDQ)", "calibration": options.method,
        "calibration_clips": int(len(calibration)), "weights": "int8, symmetric, per output channel",
        "activations": "int8, symmetric, per tensor", "quantized_ops": list(QUANTIZED_OPS),
        "attention_matmuls": options.attention, "float_keys": options.float_keys, "float_merge_nodes": len(float_nodes),
        "quantize_nodes": ops.count("QuantizeLinear"), "dequantize_nodes": ops.count("DequantizeLinear"),
        "restored_float_inputs": restored,
    }
    return quantized, summary


def restore_float_inputs(proto: onnx.ModelProto, keep_float: set[str]) -> int:
    """ORT quantises a tensor for all its consumers; give every node that is not a quantised MatMul / Gemm / Conv
    (the merge nodes, Softmax, LayerNorm, adds) back the float tensor wherever it was handed a DQ(Q(tensor)), then
    drop Q/DQ nodes nothing reads. Returns how many inputs were restored."""
    producer = {out: n for n in proto.graph.node for out in n.output}
    restored = 0
    for node in proto.graph.node:
        quantized = node.op_type in QUANTIZED_OPS and node.name not in keep_float
        if quantized or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for k, name in enumerate(node.input):
            dq = producer.get(name)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[k] = q.input[0]
                restored += 1
    _prune(proto)
    return restored


def _prune(proto: onnx.ModelProto) -> None:
    """Drop nodes none of whose outputs is read (and initializers nothing reads), until nothing changes."""
    graph = proto.graph
    while True:
        used = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {name for n in graph.node for name in n.input}
    for init in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(init)


def drop_outputs(proto: onnx.ModelProto, names: set[str]) -> None:
    """Remove graph outputs (the debug merge positions the parity check used) and the nodes only they needed."""
    for value in [o for o in proto.graph.output if o.name in names]:
        proto.graph.output.remove(value)
    _prune(proto)


def _copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    return out


def export_int8(model: Any, traced: Any, options: Any, metadata: dict[str, Any], calibration: np.ndarray | None,
                quantize: QuantizeOptions | None, check: bool) -> tuple[Any, dict[str, Any] | None]:
    """The int8 branch of ``export_onnx``, given the fp32 graph ``traced`` with the merge positions as outputs and
    its merge nodes tagged: quantise, check parity against the fp32 model (top-1 and merge decisions), drop the
    debug outputs unless asked for. Returns the quantised graph (``metadata`` gains a "quantization" entry) and
    the parity figures."""

    from .parity import check_parity_int8

    if calibration is None or len(calibration) == 0:
        raise ConfigError("an int8 export needs calibration clips: give --calib DATA (audio, a data file or an "
                          ".npz of model inputs)")
    quantize = quantize or QuantizeOptions()
    calib, held, note = split_clips(calibration, quantize)
    quantized, summary = quantize_int8(traced, calib, quantize, options.batch)
    metadata["quantization"] = summary
    parity = check_parity_int8(model, quantized, held, note, options.batch) if check else None
    if not options.debug_merges:
        drop_outputs(quantized, set(merge_output_names(model.schedule)))
    return quantized, parity
