"""Token Merging against a second, literal implementation of ToMe's bipartite soft matching."""

from __future__ import annotations

import math

import pytest
import torch

from fastast_deploy.errors import ConfigError
from fastast_deploy.model.config import ModelConfig
from fastast_deploy.model.schedule import clip_schedule, make_schedule, token_counts
from fastast_deploy.model.tome import bipartite_match, merge_wavg


def reference_merge(metric: torch.Tensor, x: torch.Tensor, size: torch.Tensor, r: int):
    """ToMe's bipartite_soft_matching + merge_wavg (facebookresearch/ToMe tome/merge.py), cls and dist protected."""
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = metric[..., ::2, :], metric[..., 1::2, :]
    scores = a @ b.transpose(-1, -2)
    scores[..., 0, :] = -math.inf
    scores[..., :, 0] = -math.inf
    node_max, node_idx = scores.max(dim=-1)
    edge_idx = node_max.argsort(dim=-1, descending=True, stable=True)[..., None]
    unm_idx = edge_idx[..., r:, :].sort(dim=1)[0]
    src_idx = edge_idx[..., :r, :]
    dst_idx = node_idx[..., None].gather(dim=-2, index=src_idx)

    def merge(t: torch.Tensor) -> torch.Tensor:
        src, dst = t[..., ::2, :], t[..., 1::2, :]
        n, t1, c = src.shape
        unm = src.gather(dim=-2, index=unm_idx.expand(n, t1 - r, c))
        src = src.gather(dim=-2, index=src_idx.expand(n, r, c))
        dst = dst.scatter_reduce(-2, dst_idx.expand(n, r, c), src, reduce="sum")
        return torch.cat([unm[:, :1], dst[:, :1], unm[:, 1:], dst[:, 1:]], dim=1)

    merged_x = merge(x * size)
    merged_size = merge(size)
    return merged_x / merged_size, merged_size, (src_idx[..., 0], dst_idx[..., 0], unm_idx[..., 0])


def test_constant_and_list_schedules() -> None:
    assert make_schedule(16, 12) == (16,) * 12
    assert make_schedule([4, 3, 0, 0], 4) == (4, 3, 0, 0)
    with pytest.raises(ConfigError, match="one value per block"):
        make_schedule([4, 3], 4)  # a shorter list is refused, not padded (issue 23, item 15)
    assert make_schedule(0, 3) == (0, 0, 0)


def test_inflection_schedule_hand_computed() -> None:
    # r=8, inflection -1: int(16 - 16/11 * i) for i in 0..11
    assert make_schedule(8, 12, -1.0) == (16, 14, 13, 11, 10, 8, 7, 5, 4, 2, 1, 0)
    # inflection +1 ramps the other way: int(0 + 16/11 * i)
    assert make_schedule(8, 12, 1.0) == (0, 1, 2, 4, 5, 7, 8, 10, 11, 13, 14, 16)


@pytest.mark.parametrize("bad", [-1, [2, -3]])
def test_negative_r_is_rejected(bad) -> None:
    with pytest.raises(ConfigError, match=">= 0"):
        make_schedule(bad, 12)


def test_schedule_longer_than_model_is_rejected() -> None:
    with pytest.raises(ConfigError, match="13 values but the model has 12 blocks"):
        make_schedule([1] * 13, 12)


@pytest.mark.parametrize(
    ("frames", "r", "final"),
    # Hand-computed from the clipping rule r <= (N - 2) // 2 (ToMe, Bolya et al. 2023).
    [(1024, 16, 1022), (1024, 50, 614), (1024, 100, 58), (512, 8, 506), (512, 50, 27), (128, 8, 50), (128, 16, 3)],
)
def test_static_token_counts(frames: int, r: int, final: int) -> None:
    n0 = ModelConfig(input_frames=frames).num_tokens
    counts = token_counts(n0, make_schedule(r, 12))
    assert counts[-1] == final
    assert len(counts) == 13


def test_clipping_at_the_last_layers() -> None:
    # AST-1024 at r=100: 1214 - 11*100 = 114 tokens reach block 12, which may merge (114 - 2) // 2 = 56.
    assert clip_schedule(1214, (100,) * 12) == (100,) * 11 + (56,)


@pytest.mark.parametrize("n", [9, 10, 37])
def test_matching_equals_reference(n: int) -> None:
    g = torch.Generator().manual_seed(n)
    metric = torch.randn(3, n, 8, generator=g)
    x = torch.randn(3, n, 16, generator=g)
    size = torch.randint(1, 5, (3, n, 1), generator=g).float()
    r = (n - 2) // 2
    want_x, want_size, (src, dst, unm) = reference_merge(metric.clone(), x, size, r)
    m = bipartite_match(metric, r)
    assert torch.equal(m.src_idx, src)
    assert torch.equal(m.dst_idx, dst)
    assert torch.equal(m.unm_idx, unm)
    for impl in ("matmul", "scatter"):
        got_x, got_size = merge_wavg(x, size, m, impl)
        assert got_x.shape == (3, n - r, 16)
        torch.testing.assert_close(got_x, want_x, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(got_size, want_size, atol=0, rtol=0)


def test_sizes_are_conserved_and_protected_tokens_stay_first() -> None:
    g = torch.Generator().manual_seed(0)
    n = 30
    metric = torch.randn(2, n, 8, generator=g)
    # cls (0) is identical to token 3 and dist (1) to token 2: the best possible pairs, which must not be taken.
    metric[:, 0] = metric[:, 3]
    metric[:, 1] = metric[:, 2]
    x = torch.randn(2, n, 4, generator=g)
    m = bipartite_match(metric, 14)
    assert not (m.src_idx == 0).any()  # cls (A[0]) never merged away
    assert not (m.dst_idx == 0).any()  # dist (B[0]) never a destination
    merged, size = merge_wavg(x, None, m)
    assert torch.equal(merged[:, 0], x[:, 0]) and torch.equal(merged[:, 1], x[:, 1])
    assert torch.equal(size.sum(dim=1), torch.full((2, 1), float(n)))


def test_ties_break_to_the_lower_index() -> None:
    # All tokens identical: every score ties, so sources are A[1..r] and all merge into B[1].
    metric = torch.ones(1, 12, 4)
    m = bipartite_match(metric, 3)
    assert m.src_idx.tolist() == [[1, 2, 3]]
    assert m.dst_idx.tolist() == [[1, 1, 1]]
    assert m.unm_idx.tolist() == [[0, 4, 5]]


def test_matching_runs_in_float32_for_half_inputs() -> None:
    # Token 2 (A-index 1) scores cos = 1/sqrt(1 + 2**-10) = 0.99951 against token 3 (B-index 1) and
    # 1/sqrt(1 + 2**-12) = 0.99988 against token 5 (B-index 2). In bfloat16 (8-bit mantissa) both are 1.0, and a
    # tie goes to the lower index; in float32 token 5 wins. Keys given in bfloat16 must still pick token 5.
    metric = torch.tensor([[[0.0, 1.0], [0.0, -1.0], [1.0, 0.0], [1.0, 2.0**-5], [-1.0, 0.0], [1.0, 2.0**-6]]])
    half = metric.to(torch.bfloat16)
    assert half.float().equal(metric)  # the keys themselves are exact in bfloat16
    b = half[0, [3, 5]]
    tied = (half[0, 2] / half[0, 2].norm()) @ (b / b.norm(dim=-1, keepdim=True)).T
    assert tied[0] == tied[1]  # what a bfloat16 computation would see
    m = bipartite_match(half, 1)
    assert m.src_idx.tolist() == [[1]] and m.dst_idx.tolist() == [[2]]
    assert bipartite_match(metric, 1).dst_idx.tolist() == [[2]]


def test_weighted_merge_runs_in_float32_for_half_tokens() -> None:
    # Three float16 tokens of 40000 merged into one: s * x sums to 120000, past float16's 65504. Summed in float32
    # the average is 40000 again; summed in float16 it would be inf.
    x = torch.full((1, 8, 2), 40000.0, dtype=torch.float16)
    m = bipartite_match(torch.ones(1, 8, 4), 2)  # all ties: A-tokens 1 and 2 merge into B-index 1 (token 3)
    assert m.dst_idx.tolist() == [[1, 1]]
    merged, size = merge_wavg(x, None, m)
    assert merged.dtype == torch.float16 and size.dtype == torch.float32
    assert torch.isfinite(merged).all() and merged.float().eq(40000.0).all()
    assert size.squeeze(-1).tolist() == [[1.0, 1.0, 1.0, 3.0, 1.0, 1.0]]
