"""Everything a training run needs before its first step, checked up front: processes (DDP), datasets and labels,
cached features, the student, and the teacher's logits. Every user error surfaces here, before training starts."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import soundfile as sf
import torch
from torch import Tensor, nn

from fastast_deploy.audio.datasets import (
    Dataset,
    check_label_sets,
    fbank_cache,
    fbank_stats,
    handle_missing,
    load_dataset,
    normalize_cache,
)
from fastast_deploy.audio.frames import frame_count
from fastast_deploy.audio.labels import LabelSet, read_label_csv
from fastast_deploy.errors import ConfigError, DatasetError
from fastast_deploy.model.config import LIMITS, PRESETS, SIZES, FeatureConfig, ModelConfig, TomeConfig
from fastast_deploy.model.schedule import make_schedule
from fastast_deploy.training.config import SOFT_KD_MODES
from fastast_deploy.training.teachers import first_differences, read_teacher_logits, write_teacher_logits

if TYPE_CHECKING:
    from fastast_deploy.training.config import TrainConfig

Log = Callable[[str], None]
TEACHER_LOGITS_FILE = "teacher_logits.npz"


@dataclass
class Distributed:
    """This process's place in a (possibly one-process) run."""

    rank: int
    world: int
    device: torch.device
    initialised: bool = False

    def barrier(self) -> None:
        if self.initialised:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.initialised:
            torch.distributed.destroy_process_group()
            self.initialised = False


def init_distributed(device: str = "auto") -> Distributed:
    """One process, or torchrun's WORLD_SIZE processes (NCCL on GPUs, gloo on CPUs); each GPU is LOCAL_RANK."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} requested, but torch sees no CUDA GPU; use --device cpu")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed(0, 1, torch.device(device))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        dev, backend = torch.device("cuda", local), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    torch.distributed.init_process_group(backend)
    return Distributed(torch.distributed.get_rank(), torch.distributed.get_world_size(), dev, True)


@dataclass
class Prepared:
    task: str
    labels: LabelSet
    features: FeatureConfig
    model: nn.Module
    train_x: Tensor  # (N, T, F) normalised
    train_y: Tensor  # (N, labels) multi-hot
    val_x: Tensor
    val_y: Tensor
    chance: float  # the validation metric of the best constant prediction
    teacher_logits: Tensor | None = None  # (N, labels), rows in training-set order
    teacher_info: dict[str, Any] = field(default_factory=dict)
    teacher_metric: float | None = None
    online_teacher: nn.Module | None = None  # --teacher-inputs augmented: runs on every training batch

    @property
    def has_teacher(self) -> bool:
        return self.teacher_logits is not None or self.online_teacher is not None

    def save(self, model: nn.Module, path: Path, extra: dict[str, Any]) -> None:
        """A checkpoint in the project's format, carrying labels, features and (FastAST) the ToMe schedule."""
        from fastast_deploy.checkpoints.cnn import save_cnn
        from fastast_deploy.checkpoints.native import save_checkpoint
        from fastast_deploy.model.fastast import FastAST

        if isinstance(model, FastAST):
            save_checkpoint(model, path, label_names=self.labels.names, feature_config=self.features, extra=extra)
        else:
            save_cnn(model, path, label_names=self.labels.names, feature_config=self.features, extra=extra)


def prepare(config: TrainConfig, dist: Distributed, log: Log, progress: bool, resume: bool = False) -> Prepared:
    """Check and load everything; a resumed run reuses the teacher logits it saved."""
    from fastast_deploy.training.steps import check_task, seed_everything

    seed_everything(config.seed)
    labels = read_label_csv(config.labels) if config.labels else None
    train_ds, val_ds = _datasets(config, labels, log)
    labels = train_ds.labels
    task = check_task(config.task, train_ds, val_ds)
    # Teachers are checked before any slow step.
    saved_logits = Path(config.output) / TEACHER_LOGITS_FILE
    teacher_logits, teacher, teacher_info = None, None, {}
    if config.teacher_logits is not None:
        teacher_logits = read_teacher_logits(config.teacher_logits, train_ds)
        teacher_info = {"logits": config.teacher_logits}
    elif (config.teacher is not None and config.teacher_inputs == "clean" and resume
          and saved_logits.is_file()):  # the logits this run trained with
        teacher_logits = read_teacher_logits(saved_logits, train_ds)
        teacher_info = {"source": config.teacher, "logits": str(saved_logits)}
    elif config.teacher is not None:
        teacher = _load_teacher(config.teacher, labels)
    source = _source(config)
    sample_rate = FeatureConfig().sample_rate  # every run's features are at the default rate (16 kHz)
    frames = _frames(config, source, train_ds, sample_rate)
    mel_bins = source.config.num_mel_bins if source is not None else config.mel_bins
    geometry = FeatureConfig(sample_rate=sample_rate, num_mel_bins=mel_bins, frames=frames)
    _check_geometry(config, source, labels, frames, mel_bins)
    train_raw = fbank_cache([e.path for e in train_ds.examples], geometry,
                            _counter(len(train_ds), "features (train)", progress))
    val_raw = fbank_cache([e.path for e in val_ds.examples], geometry,
                          _counter(len(val_ds), "features (val)", progress))
    features = _feature_stats(config, source, geometry, train_raw)
    log(f"features: {frames} frames x {mel_bins} mel bins, mean {features.mean:.4f}, std {features.std:.4f}")
    model = _student(config, source, labels, features, log)
    prep = Prepared(task, labels, features, model, normalize_cache(train_raw, features), train_ds.targets(),
                    normalize_cache(val_raw, features), val_ds.targets(), 0.0, teacher_logits, teacher_info)
    prep.chance = chance_level(prep.val_y, task)
    name = "val_acc" if task == "singlelabel" else "val_map"
    log(f"train {len(train_ds)} clips, val {len(val_ds)} clips, {len(labels)} labels, {task}; chance {name} "
        f"{prep.chance:.4f}")
    if teacher is not None:
        _teacher_logits(config, teacher, prep, train_ds, val_ds, train_raw, val_raw, dist)
        tau = f", --kd-tau {config.kd_tau:g}" if config.kd_mode in SOFT_KD_MODES else ""
        if config.kd_mode in SOFT_KD_MODES and config.kd_standardize and task == "singlelabel":
            tau += ", standardised logits"
        log(f"teacher {config.teacher}: {name} {prep.teacher_metric:.4f}; --kd-mode {config.kd_mode}, --kd-lambda "
            f"{config.kd_lambda:g}{tau}, teacher on the {config.teacher_inputs} "
            f"{'batches' if config.teacher_inputs == 'augmented' else 'clips'}")
        if config.teacher_inputs == "augmented":
            prep.online_teacher = _online_teacher(teacher, prep.features, config.teacher).to(dist.device)
        if dist.rank == 0:
            write_teacher_logits(saved_logits, prep.teacher_logits, train_ds.clips, labels.names)
    return prep


def chance_level(targets: Tensor, task: str) -> float:
    """Single-label: accuracy of always predicting the most frequent label. Multi-label: expected mAP of random
    scores, the mean prevalence of the labels present."""
    counts = targets.sum(dim=0)
    if task == "singlelabel":
        return float(counts.max() / len(targets))
    present = counts > 0
    return float((counts[present] / len(targets)).mean())


def _datasets(config: TrainConfig, labels: LabelSet | None, log: Log) -> tuple[Dataset, Dataset]:
    fold = config.val_fold
    if fold is not None and Path(config.train).suffix.lower() != ".csv":
        raise ConfigError("--val-fold applies to an ESC-50-style CSV given as --train")
    train_ds = load_dataset(config.train, labels, folds=None if fold is None else (lambda f: f != fold))
    if labels is None:
        labels = train_ds.labels
    if config.val:
        val_ds = load_dataset(config.val, labels)
    elif fold is not None:
        val_ds = load_dataset(config.train, labels, folds=lambda f: f == fold)
    else:
        raise ConfigError("give a validation set with --val (or --val-fold for an ESC-50-style CSV)")
    check_label_sets(train_ds, val_ds)
    train_ds = handle_missing(train_ds, config.skip_missing, log)
    val_ds = handle_missing(val_ds, config.skip_missing, log)
    if not len(val_ds):
        raise DatasetError(f"{val_ds.source} has no clips to validate on")
    return train_ds, val_ds


def _source(config: TrainConfig) -> Any:
    """The checkpoint to fine-tune (a FastAST after `load_model`), or None for a new model of a DeiT size."""
    if config.arch != "fastast" or (config.model in SIZES and not Path(config.model).exists()):
        return None
    from fastast_deploy.checkpoints.loading import resolve_run
    from fastast_deploy.checkpoints.native import load_model

    if config.depth is not None:
        raise ConfigError("--depth applies to a new model (tiny / small / base), not to a checkpoint")
    return load_model(resolve_run(config.model), tome_r=config.tome_r, tome_inflection=config.tome_inflection,
                      prop_attn=config.prop_attn, input_frames=config.frames)


def _frames(config: TrainConfig, source: Any, train: Dataset, sample_rate: int) -> int:
    """The input length: given, else the checkpoint's, else the longest training clip's at ``sample_rate`` (at least
    16 frames)."""
    if source is not None:
        return source.config.input_frames
    if config.frames is not None:
        return config.frames
    longest = 0
    for e in train.examples:
        info = sf.info(str(e.path))
        longest = max(longest, frame_count(round(info.frames * sample_rate / info.samplerate), sample_rate))
    return max(16, longest)


def _check_geometry(config: TrainConfig, source: Any, labels: LabelSet, frames: int, mel_bins: int) -> None:
    """A new FastAST's input size checked against the model's bounds before the features are cached (their memory
    grows with it): the same ConfigError `ModelConfig` gives everywhere."""
    if frames > LIMITS["input_frames"]:
        raise ConfigError(f"the longest training clip is {frames} frames; at most {LIMITS['input_frames']} are "
                          f"supported: give --frames")
    if source is None and config.arch == "fastast":
        depth = {"depth": config.depth} if config.depth is not None else {}
        cfg = ModelConfig.from_size(config.model, input_frames=frames, num_mel_bins=mel_bins,
                                    num_labels=len(labels), **depth)
        if config.tome_r is not None:
            make_schedule(config.tome_r, cfg.depth, config.tome_inflection)


def _feature_stats(config: TrainConfig, source: Any, geometry: FeatureConfig, train_raw: Tensor) -> FeatureConfig:
    spec = config.feature_stats
    if spec == "auto":
        if source is not None and source.feature_config is not None:
            mean, std = source.feature_config.mean, source.feature_config.std
        else:
            mean, std = fbank_stats(train_raw)
    elif spec in PRESETS:
        mean, std = PRESETS[spec].mean, PRESETS[spec].std
    else:
        try:
            mean, std = (float(v) for v in spec.split(","))
        except ValueError:
            raise ConfigError(f"--feature-stats must be auto, {', '.join(PRESETS)} or MEAN,STD; got {spec!r}") from None
    return replace(geometry, mean=mean, std=std)


def _student(config: TrainConfig, source: Any, labels: LabelSet, features: FeatureConfig, log: Log) -> nn.Module:
    from fastast_deploy.model.fastast import build_model

    torch.manual_seed(config.seed)
    if config.arch != "fastast":
        from fastast_deploy.model.cnn import CNNClassifier, CNNConfig, default_cnn_arch

        arch = default_cnn_arch() if config.arch == "cnn" else "compact"
        model: nn.Module = CNNClassifier(CNNConfig(len(labels), features.frames, features.num_mel_bins, arch,
                                                   config.cnn_width))
        why = ""
        if config.arch == "cnn":  # say which network --arch cnn chose, and why
            why = (" (--arch cnn: timm is installed; --arch compact-cnn for the compact CNN)" if arch != "compact"
                   else " (--arch cnn: timm is not installed, so not EfficientNet-B2)")
        name = "EfficientNet-B2 (timm, random init)" if arch == "efficientnet_b2" else f"{arch} CNN"
        log(f"student: {name}{why}, {_count(model)} parameters")
    elif source is None:
        depth = {"depth": config.depth} if config.depth is not None else {}
        cfg = ModelConfig.from_size(config.model, input_frames=features.frames, num_mel_bins=features.num_mel_bins,
                                    num_labels=len(labels), **depth)
        schedule = make_schedule(config.tome_r if config.tome_r is not None else 0, cfg.depth, config.tome_inflection)
        model = build_model(cfg, TomeConfig(schedule, True if config.prop_attn is None else config.prop_attn))
    else:
        model = _new_head(source, labels, log)
    if config.arch == "fastast":
        log(f"student: FastAST {model.config.embed_dim}-dim x {model.config.depth} blocks, {_count(model)} "
            f"parameters, r per block {list(model.schedule)}, tokens {model.token_counts[0]} -> "
            f"{model.token_counts[-1]}")
    model.label_names = labels.names
    model.feature_config = features
    return model.train()


def _new_head(model: Any, labels: LabelSet, log: Log) -> nn.Module:
    """The checkpoint's model, with a new classifier when its labels are not the dataset's."""
    from fastast_deploy.model.fastast import build_model

    same = model.config.num_labels == len(labels) and (model.label_names in (None, labels.names))
    if same:
        return model
    new = build_model(replace(model.config, num_labels=len(labels)), model.tome)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    missing, unexpected = new.load_state_dict(state, strict=False)
    if sorted(missing) != ["head.bias", "head.weight"] or unexpected:
        raise ConfigError(f"cannot give the checkpoint a new head: missing {missing}, unexpected {unexpected}")
    log(f"student: new {len(labels)}-label classifier on the checkpoint ({model.config.num_labels} labels)")
    return new


def _load_teacher(source: str, labels: LabelSet) -> nn.Module:
    """The teacher, refused unless it has the dataset's labels (by name where it names them, else by count)."""
    from fastast_deploy.checkpoints.loading import load_any

    teacher = load_any(source)
    outputs = teacher.config.num_labels
    names = getattr(teacher, "label_names", None)
    if outputs != len(labels):
        raise DatasetError(f"teacher {source} has {outputs} labels ({_preview(names)}) but the dataset has "
                           f"{len(labels)} ({_preview(labels.names)}); use a teacher trained on the same label CSV")
    if names is not None and tuple(names) != labels.names:
        differences = first_differences(names, labels.names)
        raise DatasetError(f"teacher {source} has other labels than the dataset ({differences}); use a teacher "
                           f"trained on the same label CSV")
    return teacher


def _teacher_logits(config: TrainConfig, teacher: nn.Module, prep: Prepared, train: Dataset, val: Dataset,
                    train_raw: Tensor, val_raw: Tensor, dist: Distributed) -> None:
    """The teacher's logits on the clean (unaugmented) training clips, and its validation metric, computed once with
    the teacher's own feature settings."""
    from fastast_deploy.training.steps import evaluate, predict

    tf = getattr(teacher, "feature_config", None) or prep.features
    shape = (teacher.config.input_frames, teacher.config.num_mel_bins)
    if shape == (prep.features.frames, prep.features.num_mel_bins) and tf.sample_rate == prep.features.sample_rate:
        train_x, val_x = normalize_cache(train_raw, tf), normalize_cache(val_raw, tf)
    else:
        geometry = replace(tf, frames=shape[0], num_mel_bins=shape[1])
        train_x = normalize_cache(fbank_cache([e.path for e in train.examples], geometry), geometry)
        val_x = normalize_cache(fbank_cache([e.path for e in val.examples], geometry), geometry)
    teacher = teacher.to(dist.device)
    prep.teacher_logits = predict(teacher, train_x, 64, dist.device)
    _, prep.teacher_metric = evaluate(predict(teacher, val_x, 64, dist.device), prep.val_y, prep.task)
    prep.teacher_info = {"source": str(config.teacher), "val_metric": prep.teacher_metric}


class _Renormalised(nn.Module):
    """A teacher fed the student's normalised fbank (B, T, F), renormalised to the teacher's own mean and std."""

    def __init__(self, teacher: nn.Module, student: FeatureConfig, own: FeatureConfig) -> None:
        super().__init__()
        self.teacher = teacher
        # (raw - m_s) / (2 s_s) -> (raw - m_t) / (2 s_t)
        self.scale = student.std / own.std
        self.shift = (student.mean - own.mean) / (2 * own.std)

    def forward(self, fbank: Tensor) -> Tensor:
        return self.teacher(fbank * self.scale + self.shift)


def _online_teacher(teacher: nn.Module, student: FeatureConfig, source: str) -> nn.Module:
    """The teacher in eval mode, frozen, taking the student's inputs; refused when it takes another input shape."""
    own = getattr(teacher, "feature_config", None) or student
    shape = (teacher.config.input_frames, teacher.config.num_mel_bins)
    if shape != (student.frames, student.num_mel_bins) or own.sample_rate != student.sample_rate:
        raise ConfigError(f"teacher {source} takes {shape[0]} frames x {shape[1]} mel bins, the student "
                          f"{student.frames} x {student.num_mel_bins}: it cannot see the student's batches; give "
                          f"--teacher-inputs clean (logits of the clean clips, computed once) or a teacher of the "
                          f"student's input size")
    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher = teacher.eval()
    if (own.mean, own.std) == (student.mean, student.std):
        return teacher
    return _Renormalised(teacher, student, own).eval()


def _preview(names: tuple[str, ...] | list[str] | None) -> str:
    if names is None:
        return "unnamed"
    return ", ".join(repr(n) for n in names[:3]) + (", ..." if len(names) > 3 else "")


def _count(model: nn.Module) -> str:
    n = sum(p.numel() for p in model.parameters())
    return f"{n / 1e6:.2f} M"


def _counter(total: int, desc: str, enabled: bool) -> Callable[[int], None] | None:
    if not enabled:
        return None
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, disable=None)  # off when not a terminal

    def update(n: int) -> None:
        bar.update(n)
        if bar.n >= total:
            bar.close()

    return update
