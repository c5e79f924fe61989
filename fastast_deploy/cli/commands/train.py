"""Commands on training: make-dataset synthetic, train."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click

from fastast_deploy.audio.synthetic import DATASET_FILES, SyntheticConfig
from fastast_deploy.cli.commands.options import FRAMES, FiniteFloat, given_options, parse_r
from fastast_deploy.errors import ConfigError, UsageError
from fastast_deploy.training.config import (
    ARCHS,
    AUTO_KD_MODE,
    KD_MODES,
    KD_RECIPES,
    RECIPE_NAMES,
    RECIPES,
    SOFT_KD_MODES,
    TEACHER_INPUTS,
    TrainConfig,
)

_S = SyntheticConfig()
_T = TrainConfig()
RESUME_KEEPS = ("output", "resume", "stop_after", "device", "threads", "quiet")  # the only options a resume may give
KD_OPTIONS = ("kd_mode", "kd_lambda", "kd_tau", "kd_standardize", "teacher_inputs")  # meaningful only with a teacher


class OpenFloat(FiniteFloat):
    """A finite float strictly inside (min, max), or above min: click's ranges let NaN through."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        number = super().convert(value, param, ctx)
        if number in (self.min, self.max):
            self.fail(f"{value!r} must lie strictly between {self.min:g} and {self.max:g}"
                      if self.max is not None else f"{value!r} must be greater than {self.min:g}", param, ctx)
        return number


def _device(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if value in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", value):
        return value
    raise click.BadParameter(f"{value!r} is not a device torch trains on here: give auto, cpu, cuda or cuda:N")


def _kd_recipe(field: str) -> str:
    """The per-mode defaults of one KD setting, for help text, from KD_RECIPES."""
    modes = KD_RECIPES if field == "kd_lambda" else {m: r for m, r in KD_RECIPES.items() if m in SOFT_KD_MODES}
    shown = {mode: getattr(r, field) for mode, r in modes.items()}
    values = ", ".join(f"{mode} {('on' if v else 'off') if isinstance(v, bool) else f'{v:g}'}"
                       for mode, v in shown.items())
    return f"[default: {values}; see docs/benchmarks.md]"


def _recipe(field: str) -> str:
    """The recipe defaults of one setting, for help text, from RECIPES (a new FastAST, a checkpoint, a CNN)."""
    values = {kind: getattr(r, field) for kind, r in RECIPES.items()}
    return (f"[default: new FastAST {values['scratch']:g}, fine-tuning a checkpoint {values['finetune']:g}, "
            f"CNN {values['cnn']:g}]")


@click.group("make-dataset")
def make_dataset() -> None:
    """Write a dataset that `train` reads."""


@make_dataset.command("synthetic")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory to write: audio/, train.json, val.json, labels.csv, dataset.json.")
@click.option("--classes", type=click.IntRange(min=2), default=_S.classes, show_default=True)
@click.option("--clips-per-class", type=click.IntRange(min=2), default=_S.clips_per_class, show_default=True)
@click.option("--seconds", type=FiniteFloat(0.1, 60.0), default=_S.seconds, show_default=True,
              help="Length of every clip.")
@click.option("--seed", type=int, default=_S.seed, show_default=True)
@click.option("--val-fraction", type=OpenFloat(0.0, 1.0),
              default=_S.val_fraction, show_default=True, help="Share of each class's clips kept for validation.")
@click.option("--max-events", type=click.IntRange(min=1), default=_S.max_events, show_default=True,
              help="Up to this many classes per clip; above 1 the dataset is multi-label.")
@click.option("--absolute-paths", is_flag=True,
              help="List absolute wav paths (AST's loader opens paths relative to its working directory); by "
              "default they are relative to the JSON file's folder.")
@click.option("--force", is_flag=True, help="Write into a folder that already holds a dataset, replacing its files.")
def synthetic(output: Path, classes: int, clips_per_class: int, seconds: float, seed: int, val_fraction: float,
              max_events: int, absolute_paths: bool, force: bool) -> None:
    """A built-in sound-event dataset of real wav files: tones, chirps, noise bursts, click trains, AM / FM sounds,
    harmonic stacks and bells, randomised per clip and mixed with background noise, in the AST layout."""
    from fastast_deploy.audio.synthetic import make_synthetic

    config = SyntheticConfig(classes, clips_per_class, seconds, seed, val_fraction, max_events, absolute_paths)
    taken = [n for n in DATASET_FILES if (output / n).exists()]
    if taken and not force:
        raise UsageError(f"{output} already holds a dataset ({', '.join(taken)}); pass --force to replace it or "
                         f"choose another -o")
    from tqdm import tqdm

    with tqdm(total=classes * clips_per_class, desc="writing clips", leave=False, disable=None) as bar:
        summary = make_synthetic(output, config, lambda done, total: bar.update(1))
    click.echo(f"wrote {summary['train_clips']} training and {summary['val_clips']} validation clips of "
               f"{seconds:g} s, {classes} classes, to {output} (train.json, val.json, labels.csv)")


@click.command()
@click.option("--train", "train_data", default=None, metavar="DATA",
              help="Training data: an AST data .json, an ESC-50-style .csv, or a folder per class.")
@click.option("--val", "val_data", default=None, metavar="DATA", help="Validation data, in any of those forms.")
@click.option("--labels", type=click.Path(dir_okay=False), default=None,
              help="Label CSV (index,mid,display_name); required for AST data .json.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run directory: config.json, metrics.jsonl, checkpoints last and best.")
@click.option("--model", default=_T.model, show_default=True, metavar="tiny|small|base|SOURCE",
              help="A new FastAST of a DeiT size, or a checkpoint (or run) to fine-tune.")
@click.option("--arch", type=click.Choice(ARCHS), default=_T.arch, show_default=True,
              help="fastast: the transformer; cnn: EfficientNet-B2 where timm is installed, else the compact CNN; "
              "compact-cnn: always the compact CNN.")
@click.option("--depth", type=click.IntRange(min=1), default=None, help="Blocks of a new FastAST [default: 12].")
@click.option("--frames", type=FRAMES, default=None,
              help="Input length [default: the checkpoint's, else the longest training clip's].")
@click.option("--mel-bins", type=click.IntRange(min=16), default=_T.mel_bins, show_default=True,
              help="Mel bins of a new model.")
@click.option("--feature-stats", default=_T.feature_stats, show_default=True, metavar="auto|PRESET|MEAN,STD",
              help="Normalisation: auto takes the checkpoint's, else the training data's; or audioset, esc50, "
              "speechcommands, or two numbers.")
@click.option("--tome-r", default=None, metavar="R|R1,R2,...",
              help="Tokens merged per block while training: one int, or one value per block [default: the "
              "checkpoint's schedule, else 0].")
@click.option("--tome-inflection", type=FiniteFloat(-1.0, 1.0), default=_T.tome_inflection, show_default=True,
              help="Linear r ramp: -1 goes from 2r down to 0, +1 from 0 up to 2r.")
@click.option("--no-prop-attn", is_flag=True, help="Turn proportional attention off.")
@click.option("--cnn-width", type=click.IntRange(min=1), default=_T.cnn_width, show_default=True,
              help="Channels of the compact CNN's first stage.")
@click.option("--teacher", default=None, metavar="SOURCE",
              help="Online teacher: a CNN or FastAST run or checkpoint, or an AST checkpoint with the same labels.")
@click.option("--teacher-logits", type=click.Path(dir_okay=False), default=None,
              help=".npz with logits (N, labels) and clips (N,): the training clips' ids as the data lists them.")
@click.option("--kd-mode", type=click.Choice(["auto", *KD_MODES]), default=_T.kd_mode, show_default=True,
              help="soft: CMKD's KL to the teacher's softmax on the pooled output; hard: cross-entropy to the "
              "teacher's decision on the pooled output; deit-soft / deit-hard: the labels through the cls token, the "
              f"teacher (soft / its decision) through the distillation token, as DeiT. auto: "
              f"{AUTO_KD_MODE['fastast']} for FastAST, {AUTO_KD_MODE['cnn']} for a CNN student (see "
              "docs/benchmarks.md).")
@click.option("--teacher-inputs", type=click.Choice(TEACHER_INPUTS), default=_T.teacher_inputs, show_default=True,
              help="augmented: the teacher answers on the student's augmented batch each step; clean: its logits "
              "of the clean clips, computed once (the only choice with --teacher-logits). auto: augmented with "
              "--teacher, clean with --teacher-logits.")
@click.option("--kd-lambda", type=FiniteFloat(0.0, 1.0), default=None,
              help=f"Weight of the label loss; 1 - lambda weighs the distillation loss. {_kd_recipe('kd_lambda')}")
@click.option("--kd-tau", type=OpenFloat(0.0), default=None,
              help=f"Distillation temperature of the soft modes (on raw logits at tau 1 a confident teacher's "
              f"softmax is nearly its one-hot decision; on standardised logits over 10 labels at tau 1 its top "
              f"label gets at most about 0.76). {_kd_recipe('kd_tau')}")
@click.option("--kd-standardize/--no-kd-standardize", default=None,
              help="Soft modes, single-label: z-score the teacher's and the student's logits over the labels before "
              f"tau, so that the targets' sharpness is set by tau, not by the teacher's logit scale. "
              f"{_kd_recipe('standardize')}")
@click.option("--task", type=click.Choice(["auto", "multilabel", "singlelabel"]), default=_T.task,
              show_default=True, help="auto: single-label when every clip has one label.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help=f"Length. {_recipe('epochs')}")
@click.option("--batch-size", type=click.IntRange(min=1), default=_T.batch_size, show_default=True,
              help="Global batch, split across torchrun processes.")
@click.option("--lr", type=OpenFloat(0.0), default=None,
              help=f"Peak AdamW learning rate. {_recipe('lr')}")
@click.option("--weight-decay", type=FiniteFloat(0.0), default=_T.weight_decay, show_default=True)
@click.option("--warmup-epochs", type=FiniteFloat(0.0), default=None,
              help="Linear warm-up, then cosine decay [default: the recipe's share of the run: "
              + ", ".join(f"{RECIPE_NAMES[k]} {r.warmup_epochs:g} of {r.epochs} epochs" for k, r in RECIPES.items())
              + "].")
@click.option("--grad-clip", type=FiniteFloat(0.0), default=_T.grad_clip, show_default=True,
              help="Max gradient norm; 0 turns clipping off.")
@click.option("--freqm", type=click.IntRange(min=0), default=None,
              help="SpecAugment: widest frequency mask [default: a fifth of the mel bins].")
@click.option("--timem", type=click.IntRange(min=0), default=None,
              help="SpecAugment: widest time mask [default: a fifth of the frames].")
@click.option("--mixup", type=FiniteFloat(0.0, 1.0), default=_T.mixup, show_default=True,
              help="Probability that a clip is mixed with another (weight ~ Beta(alpha, alpha)).")
@click.option("--mixup-alpha", type=OpenFloat(0.0), default=_T.mixup_alpha, show_default=True)
@click.option("--val-fold", type=int, default=None,
              help="ESC-50-style CSV: validate on this fold and train on the others (no --val needed).")
@click.option("--skip-missing", is_flag=True, help="Train without missing audio files (counted in a warning).")
@click.option("--seed", type=int, default=_T.seed, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Torch CPU threads [default: torch's choice, all cores]; 1 on a shared machine.")
@click.option("--device", default=_T.device, show_default=True, callback=_device, help="auto, cpu, cuda or cuda:N.")
@click.option("--no-amp", is_flag=True, help="Train in float32 on CUDA too.")
@click.option("--stop-after", type=click.IntRange(min=1), default=None, metavar="EPOCHS",
              help="Stop after this many epochs; the schedule still spans --epochs; continue with --resume.")
@click.option("--resume", is_flag=True, help="Continue the run in -o from its last checkpoint, exactly.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.pass_context
def train(ctx: click.Context, train_data: str | None, val_data: str | None, labels: str | None, output: Path,
          model: str, arch: str, depth: int | None, frames: int | None, mel_bins: int, feature_stats: str,
          tome_r: str | None, tome_inflection: float, no_prop_attn: bool, cnn_width: int, teacher: str | None,
          teacher_logits: str | None, kd_mode: str, teacher_inputs: str, kd_lambda: float | None,
          kd_tau: float | None, kd_standardize: bool | None, task: str,
          epochs: int | None, batch_size: int, lr: float | None, weight_decay: float, warmup_epochs: float | None,
          grad_clip: float, freqm: int | None, timem: int | None, mixup: float, mixup_alpha: float,
          val_fold: int | None, skip_missing: bool, seed: int, threads: int | None, device: str, no_amp: bool,
          stop_after: int | None, resume: bool, quiet: bool) -> None:
    """Train FastAST with Token Merging in the loop (or a CNN teacher), optionally distilled from a teacher (CMKD).

    Writes RUN/metrics.jsonl (one line per epoch) and the checkpoints RUN/last and RUN/best, which every SOURCE
    option takes (FastAST ones carry the ToMe schedule, labels and feature settings). Under torchrun it trains on
    every process with DDP.

    The distillation defaults were chosen on val with benchmarks/bench_distill.py: 10-class sets of 420 one-second
    training clips (two espeak-ng spoken-word sets and the synthetic set), tiny FastAST students at r = 3, 12
    epochs, 3 seeds; measured again at 70 epochs on one spoken-word set (docs/benchmarks.md). There a new
    FastAST stayed near chance on speech for the first ~15 epochs (the CNN teacher reached 0.94); at 70 epochs it
    reached 0.37 and the defaults' teacher added 1.4 points; no setting lifted it above the same model without a
    teacher by 5 points.
    """
    from fastast_deploy.files import check_outputs_apart
    from fastast_deploy.training.loop import train as run_training

    if resume:
        given = given_options(ctx, [p.name for p in ctx.command.params if p.name not in RESUME_KEEPS])
        if given:
            raise ConfigError(f"--resume continues {output} with its saved settings; drop {', '.join(given)} "
                              f"(only --stop-after, --device and --threads may be given)")
        config = TrainConfig(output=str(output), stop_after=stop_after, device=device, threads=threads)
    else:
        if train_data is None:
            raise ConfigError("--train is required (an AST data .json, an ESC-50-style .csv or a folder per class)")
        if teacher is None and teacher_logits is None:
            given = given_options(ctx, KD_OPTIONS)
            if given:
                raise UsageError(f"{', '.join(given)} set the distillation, which needs --teacher or "
                                 f"--teacher-logits; give a teacher or drop {', '.join(given)}")
        check_outputs_apart({"-o": output}, {"--train": train_data, "--val": val_data, "--labels": labels,
                                             "--teacher-logits": teacher_logits, "--model": _path_or_none(model),
                                             "--teacher": teacher})
        r = parse_r(tome_r)
        config = TrainConfig(
            train=train_data, val=val_data or "", output=str(output), labels=labels, val_fold=val_fold,
            skip_missing=skip_missing, model=model, arch=arch, depth=depth, frames=frames, mel_bins=mel_bins,
            feature_stats=feature_stats, tome_r=r, tome_inflection=tome_inflection,
            prop_attn=False if no_prop_attn else None, cnn_width=cnn_width, teacher=teacher,
            teacher_logits=teacher_logits, kd_mode=kd_mode, teacher_inputs=teacher_inputs, kd_lambda=kd_lambda,
            kd_tau=kd_tau, kd_standardize=kd_standardize, task=task, epochs=epochs,
            batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup_epochs=warmup_epochs,
            grad_clip=grad_clip, freqm=freqm, timem=timem, mixup=mixup, mixup_alpha=mixup_alpha, seed=seed,
            threads=threads, amp=not no_amp, device=device, stop_after=stop_after)
    result = run_training(config, resume=resume, log=click.echo, progress=not quiet)
    if result.best is not None:
        click.echo(f"best {result.metric} {result.best:.4f} at epoch {result.best_epoch}; checkpoints "
                   f"{output / 'best'} and {output / 'last'}, metrics {output / 'metrics.jsonl'}")


def _path_or_none(model: str) -> str | None:
    """--model as a path when it names one (not a size such as tiny)."""
    return model if Path(model).exists() else None
