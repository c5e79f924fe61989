"""Settings of one training run, as a frozen dataclass (plain JSON round-trip); importing it loads no torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from fastast_deploy.errors import ConfigError
from fastast_deploy.model.config import SIZES

ARCHS = ("fastast", "cnn", "compact-cnn")
TASKS = ("multilabel", "singlelabel")
KD_MODES = ("soft", "hard", "deit-soft", "deit-hard")  # see training/cmkd.py
SOFT_KD_MODES = ("soft", "deit-soft")  # the modes that soften the teacher by tau; the others take its decision
AUTO_KD_MODE = {"fastast": "soft", "cnn": "hard"}  # what --kd-mode auto means for each kind of student
TEACHER_INPUTS = ("auto", "augmented", "clean")  # auto: augmented with --teacher, clean with --teacher-logits


@dataclass(frozen=True)
class Recipe:
    """Learning rate, warm-up and length that one kind of run takes unless given (`TrainConfig` None fields)."""

    lr: float
    warmup_epochs: float
    epochs: int


@dataclass(frozen=True)
class KDRecipe:
    """Label weight and temperature that one distillation mode takes unless given (`TrainConfig` None fields)."""

    kd_lambda: float
    kd_tau: float
    standardize: bool = False  # z-score teacher and student logits before tau (soft modes, single-label)


# Chosen on val by benchmarks/bench_distill.py over two spoken-word sets and the synthetic set (docs/benchmarks.md,
# "The distillation protocol"): standardised logits at tau 1, lambda 0.5 against the earlier tau 4, lambda 0.1.
KD_RECIPES: dict[str, KDRecipe] = {
    "soft": KDRecipe(kd_lambda=0.5, kd_tau=1.0, standardize=True),
    "deit-soft": KDRecipe(kd_lambda=0.5, kd_tau=1.0, standardize=True),  # as soft
    "hard": KDRecipe(kd_lambda=0.5, kd_tau=1.0),  # tau is unused by the hard modes
    "deit-hard": KDRecipe(kd_lambda=0.5, kd_tau=1.0),
}

# A new FastAST needs a long run at a low peak lr; fine-tuning follows AST's recipes (1e-5 to 1e-4). Chosen with
# benchmarks/bench_distill.py (see docs/benchmarks.md, "Training recipes").
RECIPES: dict[str, Recipe] = {
    "scratch": Recipe(lr=1e-4, warmup_epochs=2.0, epochs=70),  # a new FastAST (tiny / small / base)
    "finetune": Recipe(lr=5e-5, warmup_epochs=1.0, epochs=10),  # a checkpoint: AST's recipes fine-tune at 1e-5..1e-4
    "cnn": Recipe(lr=1e-3, warmup_epochs=1.0, epochs=20),  # a new CNN
}
RECIPE_NAMES = {"scratch": "a new FastAST", "finetune": "fine-tuning a checkpoint", "cnn": "a new CNN"}
SHORT_RUN = 0.25  # a run shorter than this share of its recipe's epochs is told at its start that it may learn little
# Fields added after runs were first saved, with the meaning a saved config without them had: a resumed run goes
# on as it started, whatever the defaults are now.
SAVED_BEFORE = {"kd_standardize": False}


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
    kd_mode: str = "auto"  # AUTO_KD_MODE
    teacher_inputs: str = "auto"  # augmented: the teacher runs on the student's batch; clean: logits once
    kd_lambda: float | None = None  # None, kd_tau None: the mode's KD_RECIPES
    kd_tau: float | None = None
    kd_standardize: bool | None = None  # None: the mode's KD_RECIPES
    task: str = "auto"
    epochs: int | None = None  # None, lr None, warmup_epochs None: the recipe of the run's kind (RECIPES)
    batch_size: int = 32
    lr: float | None = None
    weight_decay: float = 0.05
    warmup_epochs: float | None = None
    grad_clip: float = 5.0  # max global gradient norm; 0: off
    freqm: int | None = None  # SpecAugment widest frequency mask; None: a fifth of the mel bins
    timem: int | None = None  # widest time mask; None: a fifth of the frames
    mixup: float = 0.0  # probability that a clip is mixed with another
    mixup_alpha: float = 10.0  # Beta(alpha, alpha) mixing weight, as AST
    seed: int = 0
    threads: int | None = None  # torch intra-op threads; None: torch's default
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
        if self.kd_mode not in ("auto", *KD_MODES):
            raise ConfigError(f"unknown --kd-mode {self.kd_mode!r}; available: auto, {', '.join(KD_MODES)}")
        if self.teacher_inputs not in TEACHER_INPUTS:
            raise ConfigError(f"unknown --teacher-inputs {self.teacher_inputs!r}; available: {list(TEACHER_INPUTS)}")
        if self.teacher_logits and self.teacher_inputs == "augmented":
            raise ConfigError("--teacher-logits are fixed logits of the clean clips: give --teacher-inputs clean, or "
                              "--teacher SOURCE for a teacher that sees the student's augmented batch")
        if self.arch != "fastast" and self.kd_mode.startswith("deit") and (self.teacher or self.teacher_logits):
            raise ConfigError(f"--kd-mode {self.kd_mode} distils through the distillation token of a FastAST; "
                              f"a CNN student takes --kd-mode soft or hard")
        if self.arch != "fastast" and self.tome_r is not None:
            raise ConfigError(f"--tome-r applies to FastAST students, not --arch {self.arch}")
        if self.kd_lambda is not None and not 0.0 <= self.kd_lambda <= 1.0:
            raise ConfigError(f"--kd-lambda must be in [0, 1], got {self.kd_lambda}")
        if self.kd_tau is not None and self.kd_tau <= 0:
            raise ConfigError(f"--kd-tau must be > 0, got {self.kd_tau}")
        if not 0.0 <= self.mixup <= 1.0:
            raise ConfigError(f"--mixup must be a probability in [0, 1], got {self.mixup}")
        for name in ("epochs", "batch_size", "mel_bins", "cnn_width", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        if self.warmup_epochs is not None and self.warmup_epochs < 0:
            raise ConfigError(f"--warmup-epochs must be >= 0, got {self.warmup_epochs}")
        if self.stop_after is not None and self.stop_after < 1:
            raise ConfigError(f"--stop-after must be >= 1, got {self.stop_after}")

    def kind(self) -> str:
        """Which recipe applies: "cnn", "finetune" (a FastAST from a checkpoint) or "scratch" (a new FastAST)."""
        from pathlib import Path


        if self.arch != "fastast":
            return "cnn"
        return "scratch" if self.model in SIZES and not Path(self.model).exists() else "finetune"

    def resolved(self) -> TrainConfig:
        """This config with lr, warm-up and epochs that were left None taken from the run kind's recipe, --kd-mode
        auto made the student's best mode, and the KD weight and temperature left None taken from that mode's."""
        recipe = RECIPES[self.kind()]
        epochs = recipe.epochs if self.epochs is None else self.epochs
        # warm-up is the recipe's share of the run: its own epochs at the recipe's length, less in a shorter run
        warmup = recipe.warmup_epochs * epochs / recipe.epochs if self.warmup_epochs is None else self.warmup_epochs
        mode = AUTO_KD_MODE["fastast" if self.arch == "fastast" else "cnn"] if self.kd_mode == "auto" else self.kd_mode
        kd = KD_RECIPES[mode]
        inputs = self.teacher_inputs
        if inputs == "auto":
            inputs = "clean" if self.teacher_logits else "augmented"
        return replace(self, kd_mode=mode, teacher_inputs=inputs, lr=recipe.lr if self.lr is None else self.lr,
                       kd_lambda=kd.kd_lambda if self.kd_lambda is None else self.kd_lambda,
                       kd_tau=kd.kd_tau if self.kd_tau is None else self.kd_tau,
                       kd_standardize=kd.standardize if self.kd_standardize is None else self.kd_standardize,
                       warmup_epochs=warmup, epochs=epochs)

    def short_run_note(self) -> str | None:
        """For a resolved config: a note when its run is much shorter (below SHORT_RUN of the epochs) than the
        recipe of its kind was measured with, else None."""
        kind = self.kind()
        recipe = RECIPES[kind]
        if self.epochs is None or self.epochs >= SHORT_RUN * recipe.epochs:
            return None
        return (f"{self.epochs} epochs is a short run for {RECIPE_NAMES[kind]}, whose recipe (lr {recipe.lr:g}, "
                f"warm-up {recipe.warmup_epochs:g} of {recipe.epochs} epochs) was measured at {recipe.epochs}: it "
                f"may learn little (warm-up here {self.warmup_epochs:.2g} epochs)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """The config saved as ``to_dict`` (a field it lacks takes its `SAVED_BEFORE` value); a ConfigError naming
        the first field whose value has the wrong type."""
        known = {f.name: f.type for f in fields(cls)}
        for name, value in data.items():
            if name in known and not _fits(value, str(known[name])):
                raise ConfigError(f"field {name!r} holds {value!r}, expected {known[name]}")
        return cls(**{**SAVED_BEFORE, **{k: v for k, v in data.items() if k in known}})


def _fits(value: Any, annotation: str) -> bool:
    """Whether a JSON value fits a field annotation such as ``int | list[int] | None``."""
    for kind in (a.strip() for a in annotation.split("|")):
        if (kind == "None" and value is None or kind == "bool" and isinstance(value, bool)
                or kind == "str" and isinstance(value, str)
                or kind == "int" and isinstance(value, int) and not isinstance(value, bool)
                or kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool)
                or kind == "list[int]" and isinstance(value, list) and all(_fits(v, "int") for v in value)):
            return True
    return False
