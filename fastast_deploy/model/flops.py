"""Analytic FLOP count of a FastAST forward pass (multiply-adds count 2), the speed of light for a speed-up."""

from __future__ import annotations

from collections.abc import Sequence

from fastast_deploy.model.config import ModelConfig
from fastast_deploy.model.schedule import clip_schedule, pad_schedule


def block_flops(config: ModelConfig, n: int, r: int) -> int:
    """FLOPs of one block for one clip: n tokens enter, r are merged away between attention and MLP."""
    d, m = config.embed_dim, config.mlp_dim
    hd = d // config.num_heads
    attn = 2 * n * d * 3 * d + 2 * 2 * n * n * d + 2 * n * d * d  # qkv, q @ k^T and attn @ v, proj
    match = 0
    if r > 0:
        t1, t2 = (n + 1) // 2, n // 2
        match = 2 * t1 * t2 * hd + 2 * r * t2 * (d + 1)  # similarity scores, one-hot scatter-add MatMul
    mlp = 2 * 2 * (n - r) * d * m
    return attn + match + mlp


def model_flops(config: ModelConfig, schedule: Sequence[int] = ()) -> int:
    """FLOPs of a forward pass for one clip with the given per-block r (clipped as at run time)."""
    d = config.embed_dim
    schedule = pad_schedule(schedule, config.depth)
    total = 2 * config.num_patches * d * config.patch_size**2  # patch embedding
    n = config.num_tokens
    for r in clip_schedule(n, schedule):
        total += block_flops(config, n, r)
        n -= r
    return total + 2 * d * config.num_labels


def flop_ratio(config: ModelConfig, schedule: Sequence[int]) -> float:
    """FLOPs without merging over FLOPs with this schedule: the ideal speed-up."""
    return model_flops(config, ()) / model_flops(config, schedule)
