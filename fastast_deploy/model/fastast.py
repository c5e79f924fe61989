"""FastAST in PyTorch: the Audio Spectrogram Transformer (Gong et al. 2021) with Token Merging in every block.

With every r = 0 this is exactly AST: no merge op runs. Parameter names follow the original AST/timm layout
(``blocks.{i}.attn.qkv`` fused q|k|v rows, ``dist_token``, ``head_norm`` / ``head`` for ``mlp_head.0/1``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastast_deploy.errors import ConfigError
from fastast_deploy.model.config import FeatureConfig, ModelConfig, TomeConfig
from fastast_deploy.model.tome import Matching, merge_tokens


class Attention(nn.Module):
    """Multi-head self-attention that also returns the ToMe metric (keys averaged over heads)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, size: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x (B, N, C), size (B, N, 1) or None -> out (B, N, C), metric (B, N, C / heads)."""
        batch, n, c = x.shape
        qkv = self.qkv(x).reshape(batch, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, N, hd)
        # Proportional attention: a token standing for s patches counts s times among the keys.
        bias = None if size is None else size.log()[:, None, None, :, 0].to(q.dtype)  # (B, 1, 1, N)
        if torch.compiler.is_exporting():
            # Written out for export: the decomposed fused kernel traces to views that ONNX export rejects.
            logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)  # (B, H, N, N)
            out = (logits if bias is None else logits + bias).softmax(dim=-1) @ v  # (B, H, N, hd)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, H, N, hd)
        out = out.transpose(1, 2).reshape(batch, n, c)  # (B, N, C)
        return self.proj(out), k.mean(dim=1)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        if torch.compiler.is_exporting():
            # Exact GELU written as (h * (1 + erf(h / sqrt 2))) * 0.5, the order ONNX Runtime's Gelu fusion matches
            # (with fc1's bias it becomes one BiasGelu); the exporter's own decomposition multiplies by 0.5 first,
            # which no fusion matches, and runs as five elementwise passes.
            h = h * (1.0 + torch.erf(h / math.sqrt(2.0))) * 0.5
        else:
            h = F.gelu(h)
        return self.fc2(h)


class Block(nn.Module):
    """Pre-norm transformer block: attention -> residual -> merge r tokens -> MLP -> residual."""

    def __init__(self, config: ModelConfig, r: int = 0, prop_attn: bool = True, merge_impl: str = "matmul") -> None:
        super().__init__()
        dim, eps = config.embed_dim, config.layer_norm_eps
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, config.num_heads, config.qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, config.mlp_dim)
        self.r = r  # already clipped to what this block's token count allows
        self.prop_attn = prop_attn
        self.merge_impl = merge_impl

    def forward(self, x: Tensor, size: Tensor | None) -> tuple[Tensor, Tensor | None, Matching | None]:
        """x (B, N, C), size (B, N, 1) or None -> x (B, N - r, C), size, this block's merge decisions."""
        attn_out, metric = self.attn(self.norm1(x), size if self.prop_attn else None)
        x = x + attn_out
        matching = None
        if self.r > 0:
            x, size, matching = merge_tokens(x, size, metric, self.r, self.merge_impl)
        x = x + self.mlp(self.norm2(x))
        return x, size, matching


class FastAST(nn.Module):
    """AST with per-block Token Merging. ``model(fbank)`` maps (B, T, F) normalised fbank to logits (B, labels)."""

    def __init__(self, config: ModelConfig, tome: TomeConfig | None = None) -> None:
        super().__init__()
        self.config = config
        self.tome = tome or TomeConfig()
        # Set by checkpoint loading; carried into exports and new checkpoints.
        self.label_names: tuple[str, ...] | None = None
        self.feature_config: FeatureConfig | None = None
        self.source_info: dict[str, Any] = {}
        self.schedule = self.tome.effective(config)  # clipped r per block
        dim = config.embed_dim
        stride = (config.fstride, config.tstride)
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(1, dim, kernel_size=config.patch_size, stride=stride)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_tokens, dim))
        self.blocks = nn.ModuleList(
            Block(config, r, self.tome.prop_attn, self.tome.merge_impl) for r in self.schedule
        )
        self.norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.head_norm = nn.LayerNorm(dim, eps=config.head_norm_eps)
        self.head = nn.Linear(dim, config.num_labels)
        self._init_weights()

    def set_tome(self, tome: TomeConfig) -> None:
        """Merge as ``tome`` says from now on, clipped per block as at construction; merging has no weights, so
        the model is not rebuilt."""
        self.tome = tome
        self.schedule = tome.effective(self.config)
        for block, r in zip(self.blocks, self.schedule, strict=True):
            block.r, block.prop_attn, block.merge_impl = r, tome.prop_attn, tome.merge_impl

    def _init_weights(self) -> None:
        for p in (self.cls_token, self.dist_token, self.pos_embed):
            nn.init.trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:  # qkv has none where qkv_bias is off
                    nn.init.zeros_(m.bias)

    @property
    def token_counts(self) -> tuple[int, ...]:
        """Tokens entering each block, and leaving the last one."""
        return self.tome.counts(self.config)

    def embed(self, fbank: Tensor) -> Tensor:
        """(B, T, F) normalised fbank -> tokens (B, P + 2, C) with positions added."""
        expected = (self.config.input_frames, self.config.num_mel_bins)
        if fbank.dim() != 3 or tuple(fbank.shape[1:]) != expected:
            raise ConfigError(
                f"model input must be (batch, {expected[0]} frames, {expected[1]} mel bins), got {tuple(fbank.shape)}"
            )
        x = fbank.unsqueeze(1).transpose(2, 3)  # (B, 1, F, T)
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)  # (B, P, C)
        prefix = torch.cat([self.cls_token, self.dist_token], dim=1).expand(x.shape[0], -1, -1)  # (B, 2, C)
        return torch.cat([prefix, x], dim=1) + self.pos_embed

    def final_tokens(self, fbank: Tensor) -> tuple[Tensor, list[Matching]]:
        """(B, T, F) normalised fbank -> the last block's tokens after the final norm (B, N', C), cls at 0 and dist
        at 1, and the merge decisions of every block that merges."""
        x, size = self.embed(fbank), None
        merges = []
        for block in self.blocks:
            x, size, matching = block(x, size)
            if matching is not None:
                merges.append(matching)
        return self.norm(x), merges

    def forward_with_merges(self, fbank: Tensor) -> tuple[Tensor, list[Matching]]:
        """Logits (B, labels) and the merge decisions of every block that merges."""
        x, merges = self.final_tokens(fbank)
        pooled = (x[:, 0] + x[:, 1]) / 2  # (B, C): cls and dist averaged, as AST does
        return self.head(self.head_norm(pooled)), merges

    def token_logits(self, fbank: Tensor) -> Tensor:
        """(B, 3, labels): the model's output (cls and dist averaged), and the head applied to the cls token alone
        and to the dist token alone, which DeiT-style distillation trains apart."""
        x, _ = self.final_tokens(fbank)
        tokens = torch.stack([(x[:, 0] + x[:, 1]) / 2, x[:, 0], x[:, 1]], dim=1)  # (B, 3, C)
        return self.head(self.head_norm(tokens))

    def forward(self, fbank: Tensor) -> Tensor:
        return self.forward_with_merges(fbank)[0]


def build_model(config: ModelConfig, tome: TomeConfig | None = None) -> FastAST:
    """A randomly initialised FastAST in eval mode."""
    return FastAST(config, tome).eval()
