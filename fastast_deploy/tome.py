"""Token Merging (ToMe, Bolya et al. 2023) for AST as pure tensor functions.

Layouts: tokens (B, N, C); sizes (B, N, 1) float32, the number of original patches each token stands for.
Token 0 is the cls token and token 1 the distillation token: both are protected (cls is never merged away,
dist never receives a merge), so they stay at positions 0 and 1 after every merge.

Everything but index values is static: with a fixed input length and a fixed per-block r, every shape is known
before export. The matching is written with ops that ONNX Runtime and TensorRT run natively (no sort of tied
values, no scatter) and that break ties the same way on every backend: lower index first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from .errors import ConfigError

PROTECTED_TOKENS = 2  # cls + dist
MergeImpl = Literal["matmul", "scatter"]
MERGE_IMPLS: tuple[str, ...] = ("matmul", "scatter")
# Replaces protected scores; cosine similarities lie in [-1, 1], so this is below any real score.
_NEG = -1.0e4


class Matching(NamedTuple):
    """One layer's merge decisions; A = even-indexed tokens, B = odd-indexed tokens.

    src_idx: (B, r) A-indices merged away, by descending score (ties: lower index first).
    dst_idx: (B, r) B-index each source merges into.
    unm_idx: (B, ceil(N/2) - r) A-indices kept, ascending.
    """

    src_idx: Tensor
    dst_idx: Tensor
    unm_idx: Tensor


def make_schedule(r: int | Sequence[int], depth: int, inflection: float = 0.0) -> tuple[int, ...]:
    """Per-block r, as ToMe's ``parse_r``: an int with an inflection, or an explicit list.

    An int r with inflection 0 is constant; otherwise a linear ramp from ``int(r * (1 - inflection))`` to
    ``2r - that`` over the blocks (inflection -1: 2r down to 0; +1: 0 up to 2r). A list shorter than ``depth``
    is padded with zeros.
    """
    if depth < 1:
        raise ConfigError(f"model depth must be >= 1, got {depth}")
    if isinstance(r, int):
        if r < 0:
            raise ConfigError(f"ToMe r must be >= 0, got {r}")
        if not -1.0 <= inflection <= 1.0:
            raise ConfigError(f"ToMe inflection must be in [-1, 1], got {inflection}")
        if depth == 1:
            return (r,)
        lo = int(r * (1.0 - inflection))
        hi = 2 * r - lo
        step = (hi - lo) / (depth - 1)
        return tuple(int(lo + step * i) for i in range(depth))
    values = [int(v) for v in r]
    if any(v < 0 for v in values):
        raise ConfigError(f"ToMe schedule values must be >= 0, got {values}")
    if len(values) > depth:
        raise ConfigError(f"ToMe schedule has {len(values)} values but the model has {depth} blocks")
    return tuple(values) + (0,) * (depth - len(values))


def clip_schedule(num_tokens: int, schedule: Sequence[int]) -> tuple[int, ...]:
    """Clip each block's r to ``(N - 2) // 2`` for the N tokens that reach it, as ToMe does at run time."""
    clipped = []
    n = num_tokens
    for r in schedule:
        r = min(int(r), max((n - PROTECTED_TOKENS) // 2, 0))
        clipped.append(r)
        n -= r
    return tuple(clipped)


def token_counts(num_tokens: int, schedule: Sequence[int]) -> tuple[int, ...]:
    """Static token count entering each block and leaving the last: length ``len(schedule) + 1``."""
    counts = [num_tokens]
    for r in clip_schedule(num_tokens, schedule):
        counts.append(counts[-1] - r)
    return tuple(counts)


def bipartite_match(metric: Tensor, r: int) -> Matching:
    """ToMe's bipartite soft matching with cls (A[0]) and dist (B[0]) protected.

    metric: (B, N, C) keys averaged over heads. Computed in float32 whatever the input dtype, because the
    decisions are discrete and a rounding difference can flip a near-tie. ``r`` must already be clipped.
    """
    metric = metric.float()
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = metric[:, ::2], metric[:, 1::2]  # (B, t1, C), (B, t2, C)
    scores = a @ b.transpose(-1, -2)  # (B, t1, t2)
    t1, t2 = scores.shape[-2], scores.shape[-1]
    rows = torch.arange(t1, device=metric.device)
    cols = torch.arange(t2, device=metric.device)
    protected = (rows[:, None] == 0) | (cols[None, :] == 0)  # (t1, t2): cls row, dist column
    scores = torch.where(protected, torch.full_like(scores, _NEG), scores)

    node_max = scores.amax(dim=-1)  # (B, t1)
    # Best partner: the lowest index among equal maxima (ArgMax tie-breaking differs between backends).
    is_best = scores == node_max[..., None]
    node_idx = torch.where(is_best, cols, t2).amin(dim=-1)  # (B, t1)

    # Rank of each A token by descending score, ties by ascending index: a permutation of 0..t1-1.
    # Written as pairwise comparisons so that every backend gets the same order (TopK on tied values need not).
    si, sj = node_max[:, :, None], node_max[:, None, :]  # (B, t1, 1), (B, 1, t1)
    before = (sj > si) | ((sj == si) & (rows[None, :] < rows[:, None]))  # (B, t1, t1): j ranks before i
    rank = before.sum(dim=-1).float()  # (B, t1), exact in float32 for t1 < 2**24

    src_idx = torch.topk(rank, r, dim=-1, largest=False, sorted=True).indices  # (B, r)
    dst_idx = node_idx.gather(dim=-1, index=src_idx)  # (B, r)
    is_src = (rank < r).float()
    keep_key = rows.float() + t1 * is_src  # unique keys: kept tokens first, ascending
    unm_idx = torch.topk(keep_key, t1 - r, dim=-1, largest=False, sorted=True).indices  # (B, t1 - r)
    return Matching(src_idx, dst_idx, unm_idx)


def merge_wavg(x: Tensor, size: Tensor | None, matching: Matching, impl: MergeImpl = "matmul") -> tuple[Tensor, Tensor]:
    """Size-weighted merge of tokens x (B, N, C) -> (B, N - r, C) and sizes -> (B, N - r, 1).

    Sources are added into their destination: x_dst <- (s_dst x_dst + sum s_src x_src) / (s_dst + sum s_src).
    ``impl="matmul"`` does the scatter-add as a one-hot (B, r, t2) batched MatMul, which needs no plugin in
    TensorRT; ``impl="scatter"`` uses scatter_add (ScatterElements with reduction=add in ONNX). The weighted sums
    run in float32 whatever the model dtype: sizes grow to hundreds and s * x overflows fp16.
    Output order: cls, dist, kept A tokens (ascending), then B tokens 1.. (original order).
    """
    batch, n, c = x.shape
    if size is None:
        size = torch.ones(batch, n, 1, dtype=torch.float32, device=x.device)
    xs = torch.cat([x.float() * size, size], dim=-1)  # (B, N, C + 1): weighted tokens and their sizes
    a, b = xs[:, ::2], xs[:, 1::2]  # (B, t1, C + 1), (B, t2, C + 1)
    t2 = b.shape[1]
    unm = a.gather(dim=1, index=matching.unm_idx[..., None].expand(-1, -1, c + 1))  # (B, t1 - r, C + 1)
    src = a.gather(dim=1, index=matching.src_idx[..., None].expand(-1, -1, c + 1))  # (B, r, C + 1)
    if impl == "matmul":
        cols = torch.arange(t2, device=x.device)
        onehot = (matching.dst_idx[..., None] == cols).float()  # (B, r, t2)
        b = b + onehot.transpose(1, 2) @ src  # (B, t2, C + 1)
    elif impl == "scatter":
        b = b.scatter_add(1, matching.dst_idx[..., None].expand(-1, -1, c + 1), src)
    else:
        raise ConfigError(f"unknown merge implementation {impl!r}; available: {list(MERGE_IMPLS)}")
    out = torch.cat([unm[:, :1], b[:, :1], unm[:, 1:], b[:, 1:]], dim=1)  # (B, N - r, C + 1)
    size = out[..., c:]
    return (out[..., :c] / size).to(x.dtype), size
