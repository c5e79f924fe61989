"""FastAST model: AST at r = 0, ToMe's invariants inside the network, both merge implementations."""

from __future__ import annotations

import pytest
import torch

from fastast_deploy.errors import ConfigError
from fastast_deploy.model.config import ModelConfig, TomeConfig
from fastast_deploy.model.fastast import FastAST, build_model
from fastast_deploy.model.schedule import make_schedule

TINY = ModelConfig.from_size("tiny", depth=4, input_frames=128, num_mel_bins=64, num_labels=10)


def with_schedule(base: FastAST, r: int | list[int], **tome: object) -> FastAST:
    model = build_model(base.config, TomeConfig(make_schedule(r, base.config.depth), **tome))
    model.load_state_dict(base.state_dict())
    return model


@pytest.fixture(scope="module")
def base() -> FastAST:
    torch.manual_seed(0)
    return build_model(TINY)


@pytest.fixture(scope="module")
def fbank() -> torch.Tensor:
    return torch.randn(3, TINY.input_frames, TINY.num_mel_bins, generator=torch.Generator().manual_seed(1))


def plain_ast(model: FastAST, x: torch.Tensor) -> torch.Tensor:
    """AST's forward written out with torch.nn.functional only: the r = 0 reference."""
    import torch.nn.functional as F

    c = model.config
    h = model.embed(x)
    for blk in model.blocks:
        y = F.layer_norm(h, (c.embed_dim,), blk.norm1.weight, blk.norm1.bias, c.layer_norm_eps)
        b, n, d = y.shape
        q, k, v = F.linear(y, blk.attn.qkv.weight, blk.attn.qkv.bias).split(d, dim=-1)
        heads = [t.reshape(b, n, c.num_heads, -1).transpose(1, 2) for t in (q, k, v)]
        att = (heads[0] @ heads[1].transpose(-1, -2)) * heads[0].shape[-1] ** -0.5
        o = (att.softmax(-1) @ heads[2]).transpose(1, 2).reshape(b, n, d)
        h = h + F.linear(o, blk.attn.proj.weight, blk.attn.proj.bias)
        y = F.layer_norm(h, (c.embed_dim,), blk.norm2.weight, blk.norm2.bias, c.layer_norm_eps)
        hidden = F.gelu(F.linear(y, blk.mlp.fc1.weight, blk.mlp.fc1.bias))
        h = h + F.linear(hidden, blk.mlp.fc2.weight, blk.mlp.fc2.bias)
    h = model.norm(h)
    return model.head(model.head_norm((h[:, 0] + h[:, 1]) / 2))


@torch.no_grad()
def test_r0_is_plain_ast(base: FastAST, fbank: torch.Tensor) -> None:
    torch.testing.assert_close(base(fbank), plain_ast(base, fbank), atol=1e-6, rtol=0)
    # An explicit all-zero schedule is the same model.
    assert torch.equal(with_schedule(base, 0)(fbank), base(fbank))


def test_r0_adds_no_merge_ops(base: FastAST, fbank: torch.Tensor) -> None:
    def ops(model: FastAST) -> set[str]:
        graph = torch.export.export(model, (fbank,)).graph
        return {str(node.target) for node in graph.nodes if node.op == "call_function"}

    assert not any("topk" in op or "gather" in op for op in ops(base))
    assert any("topk" in op for op in ops(with_schedule(base, 4)))


@torch.no_grad()
@pytest.mark.parametrize("schedule", [4, [10, 0, 7, 3], 100])
def test_token_counts_sizes_and_protected_tokens(base: FastAST, fbank: torch.Tensor, schedule) -> None:
    model = with_schedule(base, schedule)
    x, size = model.embed(fbank), None
    seen = [x.shape[1]]
    for block in model.blocks:
        x, size, matching = block(x, size)
        seen.append(x.shape[1])
        if matching is not None:
            assert not (matching.src_idx == 0).any() and not (matching.dst_idx == 0).any()
            assert matching.unm_idx[:, 0].eq(0).all()  # cls stays first among the kept A tokens
            assert torch.equal(size.sum(dim=1), torch.full((3, 1), float(TINY.num_tokens)))
            assert torch.equal(size[:, :2], torch.ones(3, 2, 1))  # cls and dist are never merged with anything
    assert tuple(seen) == model.token_counts


@torch.no_grad()
@pytest.mark.parametrize("prop_attn", [True, False])
def test_matmul_and_scatter_merges_agree(base: FastAST, fbank: torch.Tensor, prop_attn: bool) -> None:
    a, merges_a = with_schedule(base, 8, merge_impl="matmul", prop_attn=prop_attn).forward_with_merges(fbank)
    b, merges_b = with_schedule(base, 8, merge_impl="scatter", prop_attn=prop_attn).forward_with_merges(fbank)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert len(merges_a) == TINY.depth
    for x, y in zip(merges_a, merges_b, strict=True):
        assert torch.equal(x.src_idx, y.src_idx) and torch.equal(x.dst_idx, y.dst_idx)


@torch.no_grad()
def test_merging_identical_tokens_changes_nothing(base: FastAST) -> None:
    model = build_model(TINY)
    model.load_state_dict(base.state_dict())
    model.pos_embed.zero_()  # every patch of a constant input becomes the same token
    x = torch.full((2, TINY.input_frames, TINY.num_mel_bins), 0.3)
    want = model(x)
    merged = with_schedule(model, 10)
    assert merged.token_counts[-1] < TINY.num_tokens // 2
    torch.testing.assert_close(merged(x), want, atol=1e-5, rtol=1e-5)
    # Without proportional attention, merged duplicates lose weight among the keys: the output moves.
    unweighted = with_schedule(model, 10, prop_attn=False)
    assert (unweighted(x) - want).abs().max() > 1e-3


@torch.no_grad()
def test_merging_changes_the_output_but_not_much_at_small_r(base: FastAST, fbank: torch.Tensor) -> None:
    full = base(fbank)
    diff = (with_schedule(base, 2)(fbank) - full).abs().max()
    assert 0 < diff < full.abs().max()


def test_wrong_input_shape_is_a_clear_error(base: FastAST) -> None:
    with pytest.raises(ConfigError, match=r"\(batch, 128 frames, 64 mel bins\), got \(1, 100, 64\)"):
        base(torch.zeros(1, 100, 64))


def test_input_too_short_for_one_patch() -> None:
    with pytest.raises(ConfigError, match="smaller than one 16x16 patch"):
        ModelConfig(input_frames=8)


@pytest.mark.parametrize("size", ["tiny", "small", "base"])
def test_deit_sizes(size: str) -> None:
    cfg = ModelConfig.from_size(size)
    assert (cfg.embed_dim, cfg.num_heads, cfg.mlp_dim) == {
        "tiny": (192, 3, 768), "small": (384, 6, 1536), "base": (768, 12, 3072)
    }[size]
    assert cfg.grid == (12, 101) and cfg.num_tokens == 1214
