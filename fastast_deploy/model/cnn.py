"""CNN classifiers of (B, T, F) normalised fbank: teachers for distillation (and students of `train --arch cnn`).

The CNN is EfficientNet from timm where timm is installed (randomly initialised: no hub downloads), else a compact
VGG-style CNN. A CNN carries ``label_names`` and ``feature_config`` like FastAST, and maps (B, T, F) normalised
fbank to logits (B, labels).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from fastast_deploy.errors import ConfigError
from fastast_deploy.model.config import FeatureConfig

CNN_ARCHS = ("compact", "efficientnet_b0", "efficientnet_b2")


@dataclass(frozen=True)
class CNNConfig:
    """A CNN classifier of (frames, mel bins) fbank. ``width`` is the compact CNN's first stage's channels."""

    num_labels: int
    input_frames: int
    num_mel_bins: int
    arch: str = "compact"
    width: int = 32

    def __post_init__(self) -> None:
        if self.arch not in CNN_ARCHS:
            raise ConfigError(f"unknown CNN architecture {self.arch!r}; available: {list(CNN_ARCHS)}")
        for name in ("num_labels", "input_frames", "num_mel_bins", "width"):
            if getattr(self, name) < 1:
                raise ConfigError(f"CNN {name} must be >= 1, got {getattr(self, name)}")
        if min(self.input_frames, self.num_mel_bins) < 16:
            raise ConfigError(f"a CNN input needs at least 16 frames and 16 mel bins, got "
                              f"{self.input_frames} x {self.num_mel_bins}")


def default_cnn_arch() -> str:
    """EfficientNet-B2 (the CMKD paper's CNN) where timm is installed, else the compact CNN."""
    return "efficientnet_b2" if importlib.util.find_spec("timm") is not None else "compact"


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class CompactCNN(nn.Module):
    """Four stages of two 3x3 conv + BN + ReLU and 2x2 average pooling; frequency mean, time mean + max, linear."""

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        w = config.width
        stages, cin = [], 1
        for cout in (w, 2 * w, 4 * w, 8 * w):
            stages += [_conv(cin, cout), _conv(cout, cout), nn.AvgPool2d(2)]
            cin = cout
        self.features = nn.Sequential(*stages)
        self.head = nn.Linear(cin, config.num_labels)

    def forward(self, fbank: Tensor) -> Tensor:
        x = self.features(fbank.unsqueeze(1))  # (B, C, T / 16, F / 16)
        x = x.mean(dim=3)  # (B, C, T')
        return self.head(x.mean(dim=2) + x.amax(dim=2))  # (B, labels)


class TimmCNN(nn.Module):
    """A timm image model on one input channel: (B, T, F) -> (B, 1, T, F)."""

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        try:
            import timm
        except ImportError:
            raise ConfigError(f"CNN architecture {config.arch} needs timm (pip install timm); "
                              f"use the compact CNN instead") from None
        self.net = timm.create_model(config.arch, pretrained=False, in_chans=1, num_classes=config.num_labels)

    def forward(self, fbank: Tensor) -> Tensor:
        return self.net(fbank.unsqueeze(1))


class CNNClassifier(nn.Module):
    """A CNN teacher (or student) with the attributes the training loop and checkpoints expect."""

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        self.config = config
        self.body = CompactCNN(config) if config.arch == "compact" else TimmCNN(config)
        self.label_names: tuple[str, ...] | None = None
        self.feature_config: FeatureConfig | None = None
        self.extra: dict[str, Any] = {}  # what training recorded (task, metrics), set by `load_cnn`

    def forward(self, fbank: Tensor) -> Tensor:
        """(B, T, F) normalised fbank -> logits (B, labels)."""
        expected = (self.config.input_frames, self.config.num_mel_bins)
        if fbank.dim() != 3 or tuple(fbank.shape[1:]) != expected:
            raise ConfigError(f"CNN input must be (batch, {expected[0]} frames, {expected[1]} mel bins), "
                              f"got {tuple(fbank.shape)}")
        return self.body(fbank)
