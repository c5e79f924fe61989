"""``build-engine --backend onnxruntime --optimize``: ONNX Runtime's own transformer fusions on an exported FastAST.

Two steps, both from well-kept tools rather than hand-written kernels:
1. ``onnxruntime.transformers.optimizer.optimize_model`` with model type "vit" (python fusions only,
   ``opt_level=0``; the session's own optimisation runs after, when the engine is written): it fuses
   SkipLayerNormalization and BiasGelu on this graph. Its attention fusion looks for separate q / k / v
   projections and finds none in our fused-qkv blocks.
2. Attention, with or without the proportional-attention bias, rewritten by onnxscript's pattern rewriter into
   ONNX's own ``Attention`` (opset 23), which ONNX Runtime runs as one kernel: Softmax((q * scale) @ k^T + log s) @ v
   becomes Attention(q, k, v, attn_mask). ONNX Runtime 1.2x-1.3x's Attention (ai.onnx 23) and contrib
   MultiHeadAttention (``attention_bias``) both take an additive bias, but only of shape (B or 1, H or 1, S, L):
   the (B, 1, 1, N) log-size row is expanded to (B, 1, N, N) for it. The model's opset is raised to 23 with
   onnx.version_converter first.
Step 2 is kept only when ``fuse_attention`` is set (off by default; measurements: docs/benchmarks.md).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from fastast_deploy.scoped import logging_disabled

from .base import EngineError

ATTENTION_OPSET = 23


def _attention_rules() -> list[Any]:
    import onnx_ir as ir
    from onnxscript.rewriter import pattern

    def logits(op: Any, q: Any, k: Any, scale: Any) -> Any:
        return op.MatMul(op.Mul(q, scale), op.Transpose(k, perm=[0, 1, 3, 2]))

    def with_bias(op: Any, q: Any, k: Any, v: Any, scale: Any, bias: Any) -> Any:
        return op.MatMul(op.Softmax(op.Add(logits(op, q, k, scale), bias), axis=-1), v)

    def without_bias(op: Any, q: Any, k: Any, v: Any, scale: Any) -> Any:
        return op.MatMul(op.Softmax(logits(op, q, k, scale), axis=-1), v)

    def scalar(value: Any) -> float | None:
        const = value.const_value
        if const is None or const.numpy().size != 1:
            return None
        return float(const.numpy().reshape(-1)[0])

    def is_attention(context: Any, q: Any, k: Any, scale: Any, bias: Any = None, **_: Any) -> bool:
        shapes = [getattr(t, "shape", None) for t in (q, k)]
        if scalar(scale) is None or any(s is None or len(s) != 4 for s in shapes):
            return False
        if bias is None:
            return True
        shape = bias.shape
        return shape is not None and len(shape) == 4 and shape[1] == 1 and shape[2] == 1

    def fused_with_bias(op: Any, q: Any, k: Any, v: Any, scale: Any, bias: Any) -> Any:
        n = int(q.shape[2])  # static token count
        mask = op.Expand(bias, op.Constant(value=ir.tensor(np.array([1, 1, n, 1], np.int64))))  # (B, 1, N, N)
        return op.Attention(q, k, v, mask, scale=scalar(scale))

    def fused(op: Any, q: Any, k: Any, v: Any, scale: Any) -> Any:
        return op.Attention(q, k, v, scale=scalar(scale))

    return [pattern.RewriteRule(with_bias, fused_with_bias, is_attention, name="attention_with_size_bias"),
            pattern.RewriteRule(without_bias, fused, is_attention, name="attention")]


def fuse_attention(model: Any) -> tuple[Any, int]:
    """Rewrite every attention of ``model`` (onnx.ModelProto) into ai.onnx Attention; returns the model and how
    many were fused."""
    import onnx
    import onnx_ir as ir
    from onnx import version_converter
    from onnxscript import rewriter

    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < ATTENTION_OPSET:
        model = version_converter.convert_version(model, ATTENTION_OPSET)
    before = sum(1 for n in model.graph.node if n.op_type == "Softmax")
    ir_model = ir.serde.deserialize_model(model)
    rewritten = rewriter.rewrite(ir_model, pattern_rewrite_rules=_attention_rules())
    proto = ir.serde.serialize_model(rewritten)
    fused = sum(1 for n in proto.graph.node if n.op_type == "Attention")
    if before and not fused:
        return model, 0
    onnx.checker.check_model(proto)
    return proto, fused


def fuse_for_onnxruntime(model: Any, export: dict[str, Any], use_gpu: bool, attention: bool) -> tuple[Any, dict]:
    """The fused model and what was fused (op counts), for the sidecar."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    cfg = export.get("model") or {}
    if not cfg.get("num_heads") or not cfg.get("embed_dim"):
        raise EngineError("--optimize needs the model's heads and width from the export metadata; re-export it")
    fused_attention = 0
    if attention:
        model, fused_attention = fuse_attention(model)
    options = FusionOptions("vit")
    options.enable_attention = False  # step 2 did what it could; its own pattern does not match this graph
    # ORT's symbolic shape inference fails on the merge ops (OneHot, GatherND with batch_dims), and without it the
    # SkipLayerNormalization fusion gives up; without the shape check it fuses, taking the Add's second input as
    # the skip: residual adds of equal shapes here, or the (1, N, C) position table, which SkipLayerNormalization
    # broadcasts. The parity check after the build guards either way.
    options.enable_shape_inference = False
    with logging_disabled(logging.WARNING):  # its fusions warn about the shape inference switched off above
        optimized = optimize_model(model, model_type="vit", num_heads=int(cfg["num_heads"]),
                                   hidden_size=int(cfg["embed_dim"]), optimization_options=options, opt_level=0,
                                   use_gpu=use_gpu)
    proto = optimized.model
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        if node.domain == "com.microsoft" or node.op_type == "Attention":
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return proto, {"tool": "onnxruntime.transformers.optimizer (vit)", "fused_ops": dict(sorted(counts.items())),
                   "attention_fused": fused_attention}
