"""Settings of one training run, as a frozen dataclass (plain JSON round-trip); importing it loads no torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from fastast_deploy.errors import ConfigError

ARCHS = ("fastast", "cnn", "compact-cnn")
TASKS = ("multilabel", "singlelabel")


@dataclass(frozen=True)
class TrainConfig:
    """One training run. ``batch_size`` is the global batch, split across DDP processes."""

    train: str = ""
    val: str = ""
    output: str = ""
    labels: str | None = None
    val_fold: int | None = None  # ESC-50-style CSV: validate on this fold, train on the others
    skip_missing: bool = False
    model: str = "tiny"  # tiny | small | base | SOURCE (a checkpoint to fine-tune)
    arch: str = "fastast"  # fastast | cnn (EfficientNet-B2 with timm, else compact) | compact-cnn
    depth: int | None = None  # blocks of a new FastAST; None: the size's 12
    frames: int | None = None  # None: the checkpoint's, else the longest training clip's
    mel_bins: int = 128
    feature_stats: str = "auto"  # auto: the checkpoint's, else the training data's | audioset | esc50 | ... | MEAN,STD
    tome_r: int | list[int] | None = None  # None: the checkpoint's schedule, else no merging
    tome_inflection: float = 0.0
    prop_attn: bool | None = None  # None: the checkpoint's setting, else on
    cnn_width: int = 32
    teacher: str | None = None
    teacher_logits: str | None = None
    kd_lambda: float = 0.5
    kd_tau: float = 1.0
    task: str = "auto"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    grad_clip: float = 5.0  # max global gradient norm; 0: off
    freqm: int | None = None  # SpecAugment widest frequency mask; None: a fifth of the mel bins
    timem: int | None = None  # widest time mask; None: a fifth of the frames
    mixup: float = 0.0  # probability that a clip is mixed with another
    mixup_alpha: float = 10.0  # Beta(alpha, alpha) mixing weight, as AST
    seed: int = 0
    amp: bool = True  # on CUDA only
    device: str = "auto"
    stop_after: int | None = None  # stop after this many epochs (the schedule still spans `epochs`)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ConfigError(f"unknown --arch {self.arch!r}; available: {list(ARCHS)}")
        if self.task not in ("auto", *TASKS):
            raise ConfigError(f"unknown --task {self.task!r}; available: auto, {', '.join(TASKS)}")
        if self.teacher and self.teacher_logits:
            raise ConfigError("give either --teacher or --teacher-logits, not both")
        if self.arch != "fastast" and self.tome_r is not None:
            raise ConfigError(f"--tome-r applies to FastAST students, not --arch {self.arch}")
        if not 0.0 <= self.kd_lambda <= 1.0:
            raise ConfigError(f"--kd-lambda must be in [0, 1], got {self.kd_lambda}")
        if self.kd_tau <= 0:
            raise ConfigError(f"--kd-tau must be > 0, got {self.kd_tau}")
        if not 0.0 <= self.mixup <= 1.0:
            raise ConfigError(f"--mixup must be a probability in [0, 1], got {self.mixup}")
        for name in ("epochs", "batch_size", "mel_bins", "cnn_width"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        if self.stop_after is not None and self.stop_after < 1:
            raise ConfigError(f"--stop-after must be >= 1, got {self.stop_after}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
