"""A training run's directory: what a new run may be written into, what a resumed run reads and checks first
(config, state pair, RUN/last, metrics lines), and the temps of a save cut short."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from torch import nn

from fastast_deploy.errors import CheckpointError, ConfigError, error_summary
from fastast_deploy.files import write_bytes_atomic
from fastast_deploy.pairs import JOURNAL, recover_commit
from fastast_deploy.training.config import TrainConfig
from fastast_deploy.training.setup import TEACHER_LOGITS_FILE, Log
from fastast_deploy.training.state import DAMAGED_FIX, read_run_json

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
STAGED = ".staged"  # suffix of the temps a save writes before committing them
# What a run directory holds (hidden temps and the commit journal aside); a new run refuses a folder with more.
RUN_FILES = (CONFIG_FILE, METRICS_FILE, "last", "best", "last-state.json", "last-state.safetensors",
             TEACHER_LOGITS_FILE)



def run_config(run: Path, config: TrainConfig, resume: bool, log: Log) -> TrainConfig:
    """A new run needs a fresh directory; a resumed one takes the saved config (only ``stop_after``, ``device`` and
    ``threads`` may change). Either way, the lr, warm-up and epochs left None come from the run kind's recipe."""
    saved = run / CONFIG_FILE
    if resume:
        if saved.is_file() and not _has_checkpoint(run):
            raise ConfigError(f"cannot resume: {run} holds a run that stopped before its first checkpoint (only "
                              f"{CONFIG_FILE}); start it anew: the same command without --resume")
        if saved.is_file() and not (run / "last").is_file():
            raise CheckpointError(f"cannot resume: {run / 'last'} is missing; {DAMAGED_FIX}")
        if not saved.is_file() or not (run / "last").is_file():
            raise ConfigError(f"cannot resume: {run} holds no run ({CONFIG_FILE} and last expected); "
                              f"start a new one without --resume")
        data = read_run_json(saved, "run settings")
        try:
            saved_config = TrainConfig.from_dict(data)
        except (ConfigError, TypeError, ValueError) as err:
            raise CheckpointError(f"cannot resume: run settings {saved} are invalid ({error_summary(err)}); "
                                  f"{DAMAGED_FIX}") from None
        _check_resumable(run)
        return replace(saved_config, stop_after=config.stop_after, device=config.device,
                       threads=config.threads).resolved()
    if saved.exists() and not _has_checkpoint(run):
        log(f"{run} holds a run that stopped before its first checkpoint; starting it anew")
    elif (run / "last").exists() or saved.exists():
        raise ConfigError(f"{run} already holds a run; continue it with --resume or choose another -o")
    held = run.iterdir() if run.is_dir() else ()  # DDP ranks other than 0 may look before rank 0 creates it
    foreign = sorted(p.name for p in held if not p.name.startswith(".") and p.name not in RUN_FILES)
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise ConfigError(f"{run} holds files that are not a training run's ({shown}); a run needs a new or empty "
                          f"folder: choose another -o")
    resolved = config.resolved()
    note = resolved.short_run_note()
    if note:
        log(f"note: {note}")
    return resolved


def _has_checkpoint(run: Path) -> bool:
    """Whether a run directory holds anything an epoch's save writes (a commit cut short counts: it is finished on
    resume); a run with none stopped in its first epoch and can only start again."""
    from fastast_deploy.training.state import state_paths

    return any(p.exists() for p in (run / "last", run / "best", run / METRICS_FILE, run / JOURNAL, *state_paths(run)))


def clean_staged(run: Path) -> None:
    """Temps of a save that was killed before its commit started (a cut commit is finished first)."""

    recover_commit(run)
    for stale in run.glob(f".*{STAGED}"):
        stale.unlink(missing_ok=True)


def check_last(run: Path, model: nn.Module) -> None:
    """Load RUN/last into ``model``, checking that it and the state pair come from the same step."""
    from fastast_deploy.checkpoints.loading import load_weights
    from fastast_deploy.training.state import read_state

    state_step = read_state(run).get("step")
    saved_step = load_weights(model, run / "last").get("step")
    if saved_step != state_step:
        raise ConfigError(f"cannot resume: {run / 'last'} is from step {saved_step} but its state pair from step "
                          f"{state_step}; the run was interrupted while saving")


def _check_resumable(run: Path) -> None:
    """The files a resume reads, checked before the slow preparation: the state pair's JSON, RUN/last's header
    (and its size) and the metrics lines."""
    from fastast_deploy.checkpoints.loading import checkpoint_metadata
    from fastast_deploy.training.state import read_state

    read_state(run)
    try:
        checkpoint_metadata(run / "last")
    except CheckpointError as err:
        raise CheckpointError(f"cannot resume: {err}".split("; save it again")[0] + f"; {DAMAGED_FIX}") from None
    _metric_rows(run)


def truncate_metrics(run: Path, epoch: int) -> None:
    """Drop metric lines of epochs after the one being resumed from (written before an interruption)."""
    rows = _metric_rows(run)
    kept = [line for line, row_epoch in rows if row_epoch <= epoch]
    if len(kept) != len(rows):
        write_bytes_atomic(run / METRICS_FILE, "".join(line + "\n" for line in kept).encode())


def _metric_rows(run: Path) -> list[tuple[str, int]]:
    """Each line of RUN/metrics.jsonl with its epoch ([] without the file); a damaged line is a one-line
    CheckpointError."""
    path = run / METRICS_FILE
    if not path.is_file():
        return []
    fix = "it holds one JSON object per epoch: delete the damaged lines (and the epochs after) and resume again"
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as err:
        raise CheckpointError(f"cannot resume: {path} is not UTF-8 text (byte {err.start}); {fix}") from None
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        epoch = row.get("epoch", 0) if isinstance(row, dict) else None
        if not isinstance(epoch, int):
            raise CheckpointError(f"cannot resume: line {number} of {path} is not a metrics row (a JSON object "
                                  f"with an integer epoch); {fix}")
        rows.append((line, epoch))
    return rows


