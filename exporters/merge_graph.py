"""The ONNX form of one block's Token Merging (``fastast::tome_merge``, see fastast_deploy.model.tome): 20 nodes
(19 in the first merging block, where every size is 1).

The dynamo exporter writes the PyTorch merge as ~60 nodes, most of them Shape / Slice / Unsqueeze / Reshape /
Expand plumbing for the batch offsets of row gathers. This translation, handed to ``torch.onnx.export`` through
``custom_translation_table``, writes the same algorithm (model.tome: bipartite_match, merge_tokens) with every
dim but the batch fixed at export time, in ops that ONNX Runtime and TensorRT both run natively (no Scatter, If,
Loop or NonZero):

- the matching works in token-position space: scores of every token (B, N, |B| - 1) against the B tokens but
  dist, one TopK(k=1) for each token's best partner and its score together, then a constant bias ranks
  cls and dist below every A token and the B tokens below those, so one descending TopK over all N positions,
  split in three, gives the sources (best first), the kept tokens (cls and dist among them) and the B tokens;
  an ascending TopK puts the kept positions back in order. ONNX defines TopK to put the lower index first among
  equal values, as PyTorch's stable sort and first-maximum argmax do, so ties break the same way;
- tokens and sizes travel as one tensor z = [x * s, s] (B, N, C + 1): one GatherND (batch_dims=1, so no batch
  offsets) takes the sources' rows, and one more takes every row the output keeps, already in output order (cls,
  dist, kept A tokens ascending, then the B tokens); the sources are added into their destinations' output rows by
  one OneHot and one MatMul over z, which adds both weighted sums at once; one Split and one Div at the end.
  The one-hot product is a MatMul rather than an Einsum, which ONNX Runtime's CPU kernel runs slower. A constant
  table maps each destination to its output row and drops the trailing dim that the MatMul layout cannot have, in
  one GatherND.
  The scores stay one Einsum (a MatMul would need a Transpose too: the 21st node), and TopK(k=1) stays (ArgMax +
  ReduceMax is one node more). The timings behind these choices: docs/benchmarks.md (benchmarks/bench_merge_ops.py).
The matching and the sums run in float32 whatever the model dtype (Cast nodes only in fp16 / bf16 graphs).
"""

from __future__ import annotations

import re

import numpy as np
import onnx_ir as ir
from onnxscript import opset18 as op

FLOAT = ir.DataType.FLOAT.value
NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"
# Rank keys: cls and dist below every A token (cosine scores lie in [-1, 1]), B tokens below those. The bias is
# added to a score in [-1, 1]: the sums round to exactly -1e30 / -2e30, so each group ties and keeps index order.
PROTECTED_KEY = -1e30
B_TOKEN_KEY = -2e30


def _const(values: object, dtype: type = np.int64) -> ir.Value:
    return op.Constant(value=ir.tensor(np.asarray(values, dtype=dtype)))


def _float(value: ir.Value) -> ir.Value:
    return value if value.dtype == ir.DataType.FLOAT else op.Cast(value, to=FLOAT)


def rank_bias(n: int) -> np.ndarray:
    """(N, 1) float32: 0 for A tokens but cls (even positions >= 2), PROTECTED_KEY for cls and dist, B_TOKEN_KEY
    for B tokens but dist (odd positions >= 3)."""
    bias = np.where(np.arange(n) % 2 == 0, 0.0, B_TOKEN_KEY).astype(np.float32)
    bias[:2] = PROTECTED_KEY
    return bias[:, None]


def tome_merge(x: ir.Value, size: ir.Value | None, metric: ir.Value, r: int) -> tuple[ir.Value, ...]:
    """x (B, N, C), size (B, N, 1) float32 or None (all ones), metric (B, N, hd) -> merged x (B, N - r, C),
    sizes (B, N - r, 1), src_idx / dst_idx (B, r) and unm_idx (B, ceil(N / 2) - r) as ``bipartite_match``
    defines them (the last three are only computed when the graph uses them)."""
    n, c = int(x.shape[1]), int(x.shape[2])
    t1, t2 = (n + 1) // 2, n // 2  # A tokens (with cls), B tokens (with dist)
    kept = t1 + 1 - r  # cls, dist and the A tokens that stay
    one = _const([1])
    odd_from_3 = (_const([3]), _const([n]), one, _const([2]))  # starts, ends, axes, steps of the B tokens but dist

    # Matching, in float32.
    metric = op.LpNormalization(_float(metric), axis=-1, p=2)  # (B, N, hd)
    scores = op.Einsum(metric, op.Slice(metric, *odd_from_3), equation="bnd,bmd->bnm")  # (B, N, t2 - 1)
    best, partner = op.TopK(scores, one, axis=-1, largest=1, sorted=1)  # (B, N, 1) each
    keys = op.Add(best, op.Constant(value=ir.tensor(rank_bias(n))))  # (B, N, 1)
    _, order = op.TopK(keys, _const([n]), axis=1, largest=1, sorted=1)  # (B, N, 1) positions, best first
    src, kept_pos, b_pos = op.Split(order, _const([r, kept, t2 - 1]), axis=1, num_outputs=3)
    kept_pos, _ = op.TopK(kept_pos, _const([kept]), axis=1, largest=0, sorted=1)  # (B, kept, 1) ascending
    dst = op.GatherElements(partner, src, axis=1)  # (B, r, 1): index among the B tokens but dist
    # Where B token k lands in the output (cls, dist, kept A tokens, then the B tokens in order): row kept + k.
    # A GatherND into that table also drops the trailing 1, which the one-hot MatMul below needs gone.
    dst_row = op.GatherND(_const(np.arange(kept, kept + t2 - 1)), dst)  # (B, r)

    # Weighted merge of z = [x * s, s]: the kept rows and the B tokens gathered in output order, plus the
    # sources added into their destinations as one one-hot MatMul.
    xf = _float(x)
    if size is None:
        z = op.Pad(xf, _const([0, 0, 0, 0, 0, 1]), op.Constant(value=ir.tensor(np.float32(1.0))))
    else:
        z = op.Concat(op.Mul(xf, size), size, axis=-1)  # (B, N, C + 1)
    onehot = op.OneHot(dst_row, _const([n - r]), op.Constant(value=ir.tensor(np.array([0, 1], np.float32))),
                       axis=1)  # (B, N - r, r): column k marks the output row source k adds into
    rows = op.GatherND(z, op.Concat(kept_pos, b_pos, axis=1), batch_dims=1)  # (B, N - r, C + 1)
    merged = op.Add(rows, op.MatMul(onehot, op.GatherND(z, src, batch_dims=1)))  # (B, N - r, C + 1)
    sums, new_size = op.Split(merged, _const([c, 1]), axis=-1, num_outputs=2)
    merged_x = op.Div(sums, new_size)
    if x.dtype != ir.DataType.FLOAT:  # a Cast to float32 itself would survive: the exporter cannot type Splits
        merged_x = op.Cast(merged_x, to=x.dtype.value)

    # The decisions in bipartite_match's index spaces (A: even positions, B: odd positions).
    two = _const(2)
    src_idx = op.Div(op.Squeeze(src, _const([2])), two)
    dst_idx = op.Add(op.Squeeze(dst, _const([2])), one)
    unm_positions = op.Gather(op.Squeeze(kept_pos, _const([2])), _const([0, *range(2, kept)]), axis=1)
    return merged_x, new_size, src_idx, dst_idx, op.Div(unm_positions, two)


def translation_table() -> dict[object, object]:
    """For ``torch.onnx.export(custom_translation_table=...)``."""
    import torch

    import fastast_deploy.model.tome  # noqa: F401  (registers the op)

    return {torch.ops.fastast.tome_merge.default: tome_merge}


def drop_split_counts(proto: object) -> None:
    """The exporter needs ``num_outputs`` on every Split it builds, but ONNX allows it only without a ``split``
    input: drop it from Splits that have both (the sizes given decide the outputs)."""
    for node in proto.graph.node:  # type: ignore[attr-defined]
        if node.op_type == "Split" and len(node.input) > 1 and node.input[1]:
            keep = [a for a in node.attribute if a.name != "num_outputs"]
            del node.attribute[:]
            node.attribute.extend(keep)


BLOCK_SCOPE = re.compile(r"\bblocks\.(\d+)\b")


def merge_node_counts(proto: object, part_key: str, schedule: tuple[int, ...]) -> list[int]:
    """Nodes tagged ``part_key = merge`` in each block that merges (in block order), read from the exporter's
    name scopes; nodes of a merge whose scope is missing are counted in none."""
    counts = dict.fromkeys((i for i, r in enumerate(schedule) if r > 0), 0)
    for node in proto.graph.node:  # type: ignore[attr-defined]
        props = {p.key: p.value for p in node.metadata_props}
        if props.get(part_key) != "merge":
            continue
        found = BLOCK_SCOPE.findall(props.get(NAME_SCOPES_KEY, "") or props.get("namespace", ""))
        if found and int(found[-1]) in counts:
            counts[int(found[-1])] += 1
    return list(counts.values())
