"""Training FastAST (ToMe on in the loop) or a CNN teacher, with optional CMKD distillation.

`train(config)` runs a whole training: datasets and labels checked, fbank cached in memory, the teacher's logits
computed once on clean clips (or read from a file), then epochs of SpecAugment / mixup / AdamW with warm-up and
cosine decay / gradient clipping (AMP on CUDA), evaluation each epoch, ``RUN/metrics.jsonl`` and the checkpoints
``RUN/last`` and ``RUN/best`` in the project's format. Launched by torchrun (WORLD_SIZE > 1) it trains with DDP;
only rank 0 writes.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fastast_deploy.errors import FastASTError, error_summary
from fastast_deploy.files import write_json_atomic
from fastast_deploy.pairs import JOURNAL, commit_files, exclusive_folder
from fastast_deploy.scoped import torch_threads
from fastast_deploy.training.cmkd import TOKEN_MODES, TokenHeads, cmkd_loss, teacher_targets
from fastast_deploy.training.config import ARCHS, TrainConfig
from fastast_deploy.training.rundir import (
    CONFIG_FILE,
    METRICS_FILE,
    STAGED,
    check_last,
    clean_staged,
    run_config,
    truncate_metrics,
)
from fastast_deploy.training.setup import Distributed, Prepared, init_distributed, prepare
from fastast_deploy.training.state import Progress, load_state, save_state
from fastast_deploy.training.steps import evaluate, predict

__all__ = ["ARCHS", "TrainConfig", "TrainResult", "train"]

@dataclass(frozen=True)
class TrainResult:
    run: Path
    task: str
    metric: str
    best: float | None
    best_epoch: int | None
    history: list[dict[str, Any]]
    teacher_metric: float | None


Log = Callable[[str], None]


class TrainingError(FastASTError):
    """Training cannot go on: its loss stopped being a finite number (exit code 1)."""


def train(config: TrainConfig, *, resume: bool = False, log: Log = print, progress: bool = True) -> TrainResult:
    """Run (or, with ``resume``, continue) the training ``config`` describes; see the module docstring."""
    with torch_threads(config.threads):  # the caller's thread count returns afterwards
        dist = init_distributed(config.device)
        run = Path(config.output)
        try:
            if dist.rank != 0:
                return _train(config, run, dist, resume, log, progress)
            with exclusive_folder(run, "train"):  # one training per run directory; held until it ends
                clean_staged(run)
                return _train(config, run, dist, resume, log, progress)
        finally:
            dist.close()


def _train(config: TrainConfig, run: Path, dist: Distributed, resume: bool, log: Log, progress: bool) -> TrainResult:
    if dist.rank != 0:
        log = _silent
    config = run_config(run, config, resume, log)
    prep = prepare(config, dist, log, progress and dist.rank == 0, resume)
    if not resume:
        dist.barrier()  # every process has checked the run directory before rank 0 writes into it
        if dist.rank == 0:
            write_json_atomic(run / CONFIG_FILE, config.to_dict())
    return _fit(config, prep, dist, run, resume, log, progress and dist.rank == 0)


def _silent(_: str) -> None:
    pass


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up from 0 over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def spec_augment(x: Tensor, freqm: int, timem: int, rng: np.random.Generator) -> Tensor:
    """One frequency mask (width 0..freqm) and one time mask (width 0..timem) per clip, set to 0; x (B, T, F)."""
    batch, frames, bins = x.shape
    out = x.clone()
    for i in range(batch):
        f = int(rng.integers(0, freqm + 1)) if freqm > 0 else 0
        t = int(rng.integers(0, timem + 1)) if timem > 0 else 0
        f0 = int(rng.integers(0, bins - f + 1))
        t0 = int(rng.integers(0, frames - t + 1))
        out[i, :, f0 : f0 + f] = 0
        out[i, t0 : t0 + t, :] = 0
    return out


def mixup(x: Tensor, targets: list[Tensor | None], p: float, alpha: float,
          rng: np.random.Generator) -> tuple[Tensor, list[Tensor | None]]:
    """Mix each clip, with probability ``p``, with another clip of the batch (weight ~ Beta(alpha, alpha));
    inputs and every target tensor (labels, teacher probabilities) are mixed alike."""
    batch = x.shape[0]
    if p <= 0 or batch < 2:
        return x, targets
    partner = torch.from_numpy(rng.integers(0, batch, size=batch))
    lam = rng.beta(alpha, alpha, size=batch)
    lam = np.where(rng.random(batch) < p, lam, 1.0)
    w = torch.from_numpy(lam).to(x.dtype).to(x.device)
    mixed_x = w[:, None, None] * x + (1 - w[:, None, None]) * x[partner]
    out = [None if t is None else w[:, None] * t + (1 - w[:, None]) * t[partner] for t in targets]
    return mixed_x, out


def _fit(config: TrainConfig, prep: Prepared, dist: Distributed, run: Path, resume: bool, log: Log,
         progress: bool) -> TrainResult:
    from torch.utils.data import DistributedSampler

    device, model = dist.device, prep.model.to(dist.device)
    train_x, train_y = prep.train_x, prep.train_y
    per_rank = max(1, config.batch_size // dist.world)
    sampler = DistributedSampler(range(len(train_x)), num_replicas=dist.world, rank=dist.rank, shuffle=True,
                                 seed=config.seed, drop_last=dist.world > 1)
    steps_per_epoch = math.ceil(len(sampler) / per_rank)
    total = steps_per_epoch * config.epochs
    warmup = min(total, max(1, round(config.warmup_epochs * steps_per_epoch)))
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup))
    amp_dtype = _amp_dtype(config, device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    state = Progress(aug_state=np.random.default_rng([config.seed, 7]).bit_generator.state)
    if resume:
        check_last(run, model)
        state = load_state(run, optimizer, scheduler, scaler)
        if dist.rank == 0:
            truncate_metrics(run, state.epoch)
        log(f"resuming {run} after epoch {state.epoch} (step {state.step})")
    rng = np.random.default_rng()
    rng.bit_generator.state = state.aug_state
    tokens = prep.has_teacher and config.kd_mode in TOKEN_MODES
    net: nn.Module = TokenHeads(model) if tokens else model
    teacher = prep.online_teacher
    if dist.world > 1:
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    freqm = config.freqm if config.freqm is not None else prep.features.num_mel_bins // 5
    timem = config.timem if config.timem is not None else prep.features.frames // 5
    history: list[dict[str, Any]] = []
    last_epoch = config.epochs if config.stop_after is None else min(config.epochs, config.stop_after)
    for epoch in range(state.epoch, last_epoch):
        start = time.perf_counter()
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler))
        batches = [order[i : i + per_rank] for i in range(0, len(order), per_rank)]
        sums = {"loss": 0.0, "task_loss": 0.0, "kd_loss": 0.0}
        net.train()
        bar = _bar(batches, f"epoch {epoch + 1}/{config.epochs}", progress)
        for idx in bar:
            x = spec_augment(train_x[idx], freqm, timem, rng)
            kd = None if prep.teacher_logits is None else teacher_targets(
                prep.teacher_logits[idx], prep.task, config.kd_tau, config.kd_mode, config.kd_standardize)
            x, (y, kd) = mixup(x, [train_y[idx], kd], config.mixup, config.mixup_alpha, rng)
            x, y = x.to(device, non_blocking=True), y.to(device)
            kd = None if kd is None else kd.to(device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                if teacher is not None:  # the teacher answers on exactly the batch the student sees
                    with torch.no_grad():
                        kd = teacher_targets(teacher(x).float(), prep.task, config.kd_tau, config.kd_mode,
                                             config.kd_standardize)
                out = net(x).float()
            logits, heads = (out[:, 0], (out[:, 1], out[:, 2])) if tokens else (out, None)
            parts = cmkd_loss(logits, y, kd, prep.task, config.kd_lambda, config.kd_tau, config.kd_mode, heads,
                              bool(config.kd_standardize))
            loss = float(parts.total.detach())
            if not math.isfinite(loss):
                raise _diverged(run, config, f"loss {loss}", (epoch, state.step + 1, scheduler.get_last_lr()[0]),
                                state.epoch)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(parts.total).backward()
                scaler.unscale_(optimizer)
            else:
                parts.total.backward()
            if config.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            state.step += 1
            sums["loss"] += loss
            sums["task_loss"] += float(parts.task.detach())
            sums["kd_loss"] += float(parts.kd.detach()) if parts.kd is not None else 0.0
            if progress:
                bar.set_postfix(loss=f"{loss:.4f}")
        logits = predict(model, prep.val_x, 2 * per_rank, device)
        if not bool(torch.isfinite(logits).all()):  # weights too large or not finite: nothing worth saving
            raise _diverged(run, config, "validation logits not finite",
                            (epoch, state.step, scheduler.get_last_lr()[0]), state.epoch)
        name, value = evaluate(logits, prep.val_y, prep.task)
        state.epoch = epoch + 1
        improved = state.best is None or value > state.best
        if improved:
            state.best, state.best_epoch = value, state.epoch
        state.aug_state = rng.bit_generator.state
        row = {"epoch": state.epoch, "step": state.step, "lr": scheduler.get_last_lr()[0],
               **{k: v / len(batches) for k, v in sums.items() if k != "kd_loss" or prep.has_teacher},
               name: value, "seconds": time.perf_counter() - start}
        history.append(row)
        if dist.rank == 0:
            _save(run, prep, model, optimizer, scheduler, scaler, state, row, improved)
        log(f"epoch {state.epoch}/{config.epochs}: loss {row['loss']:.4f}, {name} {value:.4f}"
            f"{' (best)' if improved else ''}, {row['seconds']:.1f} s")
    metric = "val_acc" if prep.task == "singlelabel" else "val_map"
    return TrainResult(run, prep.task, metric, state.best, state.best_epoch, history, prep.teacher_metric)


def _diverged(run: Path, config: TrainConfig, what: str, where: tuple[int, int, float], saved: int) -> TrainingError:
    """The error that stops a run at its first non-finite loss (before the step that would spread it into the
    weights) or validation output (before the epoch is saved): where it happened, what is kept, a lower lr to try."""
    epoch, step, lr = where  # epoch index (from 0), optimizer step (from 1), learning rate at it
    lower = f"a lower --lr, such as {config.lr / 10:.3g}"
    if saved == 0:
        fix = f"no checkpoint was written: run the same command again with {lower}"
    else:
        fix = (f"{run / 'last'} (epoch {saved}) is kept: start a new run in another -o with {lower} "
               f"(--model {run / 'last'} goes on from its weights)")
    return TrainingError(f"training diverged: {what} in epoch {epoch + 1}, step {step} (lr {lr:.3g}); "
                         f"{fix}")


def _save(run: Path, prep: Prepared, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
          scaler: Any, state: Progress, row: dict[str, Any], improved: bool) -> None:
    """State pair, RUN/last (whose step ties it to the pair), RUN/best when improved and the metrics line, written
    whole to temps and then committed as one (``pairs.commit_files``): a run killed at any point resumes from the
    previous epoch or from this one, never from a mix."""
    from fastast_deploy.training.state import state_paths

    extra = {"epoch": state.epoch, "step": state.step, "task": prep.task, "metrics": row,
             "teacher": prep.teacher_info}
    tensors, meta = state_paths(run)
    names = (tensors.name, meta.name, "last", METRICS_FILE, *(["best"] if improved else []))
    staged = {name: run / f".{name}.{os.getpid()}{STAGED}" for name in names}
    try:
        save_state(run, optimizer, scheduler, state, scaler, to=(staged[tensors.name], staged[meta.name]))
        prep.save(model, staged["last"], extra)
        if improved:
            prep.save(model, staged["best"], extra)
        metrics = run / METRICS_FILE
        before = metrics.read_bytes() if metrics.is_file() else b""
        staged[METRICS_FILE].write_bytes(before + (json.dumps(row) + "\n").encode())
        commit_files(run, staged)
    except (OSError, FastASTError) as err:
        if (run / JOURNAL).exists():  # the commit had begun: the next run finishes it
            raise
        for tmp in staged.values():  # nothing of this epoch is kept; the previous one is intact
            tmp.unlink(missing_ok=True)
        reason = err.strerror if isinstance(err, OSError) and err.strerror else error_summary(err)
        kept = (f"{run / 'last'} is still epoch {state.epoch - 1}: free some space, then continue with --resume"
                if state.epoch > 1 else "nothing was saved: free some space, then run the same command again")
        raise FastASTError(f"cannot save epoch {state.epoch} in {run} ({reason}); {kept}") from None


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices and kernels only; none on biases, norms, tokens and positional embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.dim() < 2 or name.endswith(("cls_token", "dist_token", "pos_embed"))
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    if not config.amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _bar(items: list[Any], desc: str, enabled: bool) -> Any:
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, leave=False, dynamic_ncols=True, disable=None)  # off when not a terminal


