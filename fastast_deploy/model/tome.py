"""Token Merging (ToMe, Bolya et al. 2023) for AST as pure tensor functions.

Layouts: tokens (B, N, C); sizes (B, N, 1) float32, the number of original patches each token stands for.
Token 0 is the cls token and token 1 the distillation token: both are protected (cls is never merged away,
dist never receives a merge), so they stay at positions 0 and 1 after every merge.

Everything but index values is static: with a fixed input length and a fixed per-block r, every shape is known
before export. The matching and merge are written with ops that ONNX Runtime and TensorRT run natively (no
scatter, no masked writes), with ties broken to the lower index as ONNX defines ArgMax and TopK.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor

from fastast_deploy.errors import ConfigError
from fastast_deploy.model.config import MERGE_IMPLS

MergeImpl = Literal["matmul", "scatter"]


class Matching(NamedTuple):
    """One layer's merge decisions; A = even-indexed tokens, B = odd-indexed tokens.

    src_idx: (B, r) A-indices merged away, by descending score (ties: lower index first).
    dst_idx: (B, r) B-index each source merges into.
    unm_idx: (B, ceil(N/2) - r) A-indices kept, ascending.
    """

    src_idx: Tensor
    dst_idx: Tensor
    unm_idx: Tensor


def bipartite_match(metric: Tensor, r: int) -> Matching:
    """ToMe's bipartite soft matching with cls (A[0]) and dist (B[0]) protected.

    metric: (B, N, C) keys averaged over heads. Computed in float32 whatever the input dtype, because the
    decisions are discrete and a rounding difference can flip a near-tie. ``r`` must already be clipped.
    Ties break to the lower index: ``argmax`` takes the first maximum (as ONNX ArgMax does), and the ranking is a
    stable sort, which exports as TopK, whose ONNX definition also puts the lower index first among equals.
    """
    metric = metric.float()
    metric = metric / metric.norm(dim=-1, keepdim=True)
    # A tokens but cls, B tokens but dist: the cls row and the dist column are left out rather than masked (cls is
    # never a source, dist never a destination), so no Where over the whole score matrix is needed.
    a, b = metric[:, 2::2], metric[:, 3::2]  # (B, t1 - 1, C), (B, t2 - 1, C)
    scores = a @ b.transpose(-1, -2)  # (B, t1 - 1, t2 - 1)
    node_idx = scores.argmax(dim=-1)  # (B, t1 - 1): best partner of each A token but cls (first maximum)
    node_max = scores.gather(dim=-1, index=node_idx[..., None])[..., 0]  # one pass less than a separate max
    if torch.compiler.is_exporting():  # TopK; ONNX defines it to put the lower index first among equal values
        order = torch.topk(node_max, node_max.shape[-1], dim=-1, largest=True, sorted=True).indices
    else:
        order = node_max.argsort(dim=-1, descending=True, stable=True)  # (B, t1 - 1)
    src = order[:, :r]
    src_idx = src + 1  # back to A indices (A[0] is cls)
    dst_idx = node_idx.gather(dim=-1, index=src) + 1  # back to B indices (B[0] is dist)
    kept = order[:, r:]  # (B, t1 - 1 - r): empty when r takes every A token but cls
    if kept.shape[-1] > 0:
        kept = torch.topk(kept, kept.shape[-1], dim=-1, largest=False, sorted=True).values + 1  # ascending, unique
    unm_idx = torch.cat([torch.zeros_like(order[:, :1]), kept], dim=-1)  # cls first
    return Matching(src_idx, dst_idx, unm_idx)


def take_rows(x: Tensor, idx: Tensor) -> Tensor:
    """x (B, N, C), idx (B, k) -> (B, k, C): row idx[b, j] of x[b]. One Gather over the flattened batch, rather
    than GatherElements with a (B, k, C) index tensor that would be larger than the rows it picks."""
    batch, n, c = x.shape
    offsets = torch.arange(batch, device=x.device)[:, None] * n  # (B, 1)
    return x.reshape(batch * n, c)[(idx + offsets).reshape(-1)].reshape(batch, idx.shape[1], c)


def merge_wavg(x: Tensor, size: Tensor | None, matching: Matching, impl: MergeImpl = "matmul") -> tuple[Tensor, Tensor]:
    """Size-weighted merge of tokens x (B, N, C) -> (B, N - r, C) and sizes (None: all ones) -> (B, N - r, 1).

    Sources are added into their destination: x_dst <- (s_dst x_dst + sum s_src x_src) / (s_dst + sum s_src).
    ``impl="matmul"`` does the scatter-add as a one-hot (B, t2 - 1, r) batched MatMul, which needs no plugin in
    TensorRT; ``impl="scatter"`` uses scatter_add (ScatterElements with reduction=add in ONNX). The weighted sums
    run in float32 whatever the model dtype: sizes grow to hundreds and s * x overflows fp16.
    Output order: cls, dist, kept A tokens (ascending), then B tokens 1.. (original order). Kept tokens are copied,
    not weighted and unweighted, and only the B tokens are touched by the merge arithmetic.
    """
    unm_pos = 2 * matching.unm_idx[:, 1:]  # (B, t1 - 1 - r) token positions of kept A tokens, cls excluded
    src_pos = 2 * matching.src_idx  # (B, r)
    dst = matching.dst_idx - 1  # (B, r) index among the B tokens after dist, which never receives a merge
    unm = take_rows(x, unm_pos)  # (B, t1 - 1 - r, C)
    src = take_rows(x, src_pos).float()  # (B, r, C)
    dst_x = x[:, 3::2].float()  # (B, t2 - 1, C)
    if size is None:
        s_src = torch.ones_like(src[..., :1])  # (B, r, 1)
        s_dst = torch.ones_like(dst_x[..., :1])  # (B, t2 - 1, 1)
    else:
        s_src = size.gather(dim=1, index=src_pos[..., None])
        s_dst = size[:, 3::2]
        src = src * s_src
        dst_x = dst_x * s_dst
    if impl == "matmul":
        cols = torch.arange(dst_x.shape[1], device=x.device)
        onehot_t = (dst[:, None, :] == cols[:, None]).float()  # (B, t2 - 1, r)
        dst_x = dst_x + onehot_t @ src  # (B, t2 - 1, C)
        s_dst = s_dst + onehot_t @ s_src  # (B, t2 - 1, 1)
    elif impl == "scatter":
        dst_x = dst_x.scatter_add(1, dst[..., None].expand(-1, -1, x.shape[-1]), src)
        s_dst = s_dst.scatter_add(1, dst[..., None], s_src)
    else:
        raise ConfigError(f"unknown merge implementation {impl!r}; available: {list(MERGE_IMPLS)}")
    merged = torch.cat([x[:, :2], unm, (dst_x / s_dst).to(x.dtype)], dim=1)  # (B, N - r, C)
    if size is None:
        kept_size = torch.ones_like(x[:, : 2 + unm.shape[1], :1], dtype=torch.float32)  # (B, N - r - t2 + 1, 1)
    else:
        kept_size = torch.cat([size[:, :2], size.gather(dim=1, index=unm_pos[..., None])], dim=1)
    return merged, torch.cat([kept_size, s_dst], dim=1)


def _merge_eager(x: Tensor, size: Tensor | None, metric: Tensor, r: int, impl: MergeImpl) -> tuple[Tensor, ...]:
    matching = bipartite_match(metric, r)
    merged, new_size = merge_wavg(x, size, matching, impl)
    return merged, new_size, *matching


@torch.library.custom_op("fastast::tome_merge", mutates_args=())
def _tome_merge(x: Tensor, size: Tensor | None, metric: Tensor,
                r: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One block's matching and matmul-mode merge as one op, so that ONNX export can write it as a short graph
    (fastast_deploy.exporters.merge_graph); in PyTorch it is ``bipartite_match`` then ``merge_wavg``."""
    return tuple(t.clone() for t in _merge_eager(x, size, metric, r, "matmul"))  # type: ignore[return-value]


@_tome_merge.register_fake
def _(x: Tensor, size: Tensor | None, metric: Tensor, r: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    batch, n, c = x.shape
    ids = {"dtype": torch.int64, "device": x.device}
    return (x.new_empty(batch, n - r, c), x.new_empty(batch, n - r, 1, dtype=torch.float32),
            x.new_empty(batch, r, **ids), x.new_empty(batch, r, **ids), x.new_empty(batch, (n + 1) // 2 - r, **ids))


def merge_tokens(x: Tensor, size: Tensor | None, metric: Tensor, r: int,
                 impl: MergeImpl = "matmul") -> tuple[Tensor, Tensor, Matching]:
    """``bipartite_match`` then ``merge_wavg``: x (B, N, C), size (B, N, 1) or None, metric (B, N, hd) ->
    x (B, N - r, C), size (B, N - r, 1), the decisions. Under ONNX export the matmul form is one custom op, which
    the exporter translates into a merge block of 20 nodes; eager PyTorch and plain torch.export run the functions
    above."""
    if impl == "matmul" and torch.compiler.is_exporting() and torch.onnx.is_in_onnx_export():  # not torch.export
        merged, new_size, src, dst, unm = torch.ops.fastast.tome_merge(x, size, metric, r)
    else:
        merged, new_size, src, dst, unm = _merge_eager(x, size, metric, r, impl)
    return merged, new_size, Matching(src, dst, unm)
