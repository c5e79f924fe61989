"""Recordings at scale: every audio file under the inputs cut into windows, scored through the one runner, and
written as detections (`serving.detections`), one result file per recording mirroring the input tree.

Decoding, resampling and features run in ``workers`` processes (spawned; 0: in this process), each streaming
one file at a time in blocks of windows over a bounded queue (`audio.streaming`: memory bounded per worker
whatever the file's length); this process batches the windows of every file (`inference.scoring.WindowBatches`)
while the workers decode the next ones, and keeps only each window's hits, not its scores.

A result is written whole or not at all (a temp beside it, renamed), so a killed run leaves whole results and
temps that the next run removes. ``OUT/.fastast-analyze.json`` records the model and settings the results were
made with: a rerun with the same ones skips the files whose results exist, and one with others is refused
rather than mixing the two (``skip_existing=False`` redoes every file under the new record).
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import os
import queue
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fastast_deploy.audio.frames import hop_frames, window_seconds
from fastast_deploy.errors import ConfigError, FastASTError, UsageError, error_summary
from fastast_deploy.files import clean_stale_temps, read_json_object, shown_path, write_bytes_atomic, write_json_atomic
from fastast_deploy.inference.runner import Runner
from fastast_deploy.inference.scoring import WindowBatches, batch_size, failure_reason, file_windows, window_hits
from fastast_deploy.serving.detections import (
    COMBINABLE,
    FORMATS,
    SUFFIXES,
    combined_text,
    detections,
    table_text,
)

RECORD = ".fastast-analyze.json"  # in OUT: the model and settings its results were made with
COMBINED = "combined-detections"  # OUT/COMBINED + the format's suffix: every recording's detections
BLOCK = 16  # windows per message from a worker
_TEMP = re.compile(r"^\.(.+)\.\d+\.[^.]+\.tmp$")  # files.temp_beside's names


@dataclass(frozen=True)
class AnalyzeOptions:
    """``hop_s=None``: windows do not overlap. ``top_k=None``: every label at least ``min_score``. ``batch=None``:
    the engine's largest batch. ``workers=0``: decode in this process."""

    hop_s: float | None = None
    min_score: float = 0.25
    top_k: int | None = 3
    fmt: str = "csv"
    merge_events: bool = False
    batch: int | None = None
    workers: int = 1
    combined: bool = False
    skip_existing: bool = True

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            raise ConfigError(f"unknown format {self.fmt!r}; available: {list(FORMATS)}")
        if not (math.isfinite(self.min_score) and 0 <= self.min_score <= 1):
            raise ConfigError(f"min-score must be from 0 to 1, got {self.min_score}")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"top-k must be >= 1, got {self.top_k}")
        if self.workers < 0:
            raise ConfigError(f"workers must be >= 0, got {self.workers}")
        if self.combined and self.fmt not in COMBINABLE:
            raise UsageError(f"a combined table is written as {', '.join(COMBINABLE)}; an Audacity label track "
                             "belongs to one recording (drop --combined or choose another --format)")


@dataclass(frozen=True)
class Job:
    """One recording: its file, how it is named in tables (its path under its input folder) and its result."""

    path: Path
    name: str
    result: Path


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)  # "path: reason"
    audio_s: float = 0.0
    wall_s: float = 0.0
    combined: Path | None = None

    @property
    def realtime_factor(self) -> float:
        """Audio hours analysed per wall-clock hour."""
        return self.audio_s / self.wall_s if self.wall_s > 0 else math.nan

    def line(self) -> str:
        hours = self.audio_s / 3600
        return (f"{self.done} files done, {self.skipped} skipped, {len(self.failed)} failed; {hours:.3f} audio "
                f"hours in {self.wall_s:.1f} s: {self.realtime_factor:.0f} audio hours per hour")


def collect_jobs(inputs: Sequence[Path], out: Path, fmt: str, pattern: str | None = None) -> list[Job]:
    """The recordings of the INPUT files and folders (folders recursively: AUDIO_SUFFIXES, or the files matching
    ``pattern``), each with its result under ``out`` mirroring its folder; UsageError for an input that does not
    exist, a folder with no audio, or two recordings whose results would be one file."""
    from fastast_deploy.audio.datasets import AUDIO_SUFFIXES

    jobs: list[Job] = []
    for given in inputs:
        if given.is_file():
            found = [(given, Path(given.name))]
        elif given.is_dir():
            files = sorted(p for p in given.rglob(pattern or "*") if p.is_file() and
                           (pattern is not None or p.suffix.lower() in AUDIO_SUFFIXES))
            if not files:
                what = f"files matching {pattern!r}" if pattern else f"audio files ({', '.join(AUDIO_SUFFIXES)})"
                raise UsageError(f"no {what} under the folder {shown_path(given)}; give a folder of recordings")
            found = [(p, p.relative_to(given)) for p in files]
        else:
            raise UsageError(f"INPUT {shown_path(given)} does not exist; give audio files or folders")
        jobs += [Job(p, shown_path(rel), out / rel.parent / (rel.stem + SUFFIXES[fmt])) for p, rel in found]
    seen: dict[Path, Job] = {}
    for job in jobs:
        if job.result in seen:
            raise UsageError(f"{shown_path(seen[job.result].path)} and {shown_path(job.path)} would both be written "
                             f"to {shown_path(job.result)}; analyse them into separate -o folders")
        seen[job.result] = job
    return jobs


def settings_record(model: str, runner: Runner, options: AnalyzeOptions) -> dict[str, Any]:
    """What a result depends on: the model (as given, its backend, labels, features) and the settings."""
    hop = hop_frames(options.hop_s, runner.features.frames)
    named = str(Path(model).resolve()) if Path(model).exists() else model
    return {"model": named, "backend": runner.backend, "labels": list(runner.labels),
            "features": dataclasses.asdict(runner.features), "window_s": window_seconds(runner.features),
            "hop_s": hop * window_seconds(runner.features) / runner.features.frames, "min_score": options.min_score,
            "top_k": options.top_k, "merge_events": options.merge_events, "format": options.fmt}


def prepare_out(out: Path, record: dict[str, Any], jobs: Sequence[Job], skip_existing: bool) -> None:
    """Check ``out`` against the record of an earlier run, remove the temps of killed runs, and write the
    record; UsageError when its results were made otherwise and would be mixed with these."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {shown_path(out)} is a file; give a folder for the results")
    if skip_existing and out.is_dir():
        earlier = read_json_object(out / RECORD, UsageError, "analyze record") if (out / RECORD).exists() else None
        if earlier is None and any(job.result.exists() for job in jobs):
            raise UsageError(f"{shown_path(out)} holds result files that analyze has no record of; give another -o, "
                             "or --no-skip-existing to replace them")
        if earlier is not None and earlier != record:
            changed = sorted(k for k in record.keys() | earlier.keys() if record.get(k) != earlier.get(k))
            raise UsageError(f"{shown_path(out)} holds results made with other settings ({', '.join(changed)} "
                             "differ); give another -o, or --no-skip-existing to redo every file with these")
    if out.is_dir():
        for temp in out.rglob(".*.tmp"):
            if (match := _TEMP.match(temp.name)) is not None:
                clean_stale_temps(temp.parent / match.group(1))
    write_json_atomic(out / RECORD, record)


def analyze(runner: Runner, model: str, jobs: Sequence[Job], out: Path, options: AnalyzeOptions, *,
            on_error: Callable[[str, str], None] = lambda path, reason: None,
            on_progress: Callable[[float, float], None] | None = None) -> Summary:
    """Analyse ``jobs`` into ``out``: their results written one by one as they finish, failures reported through
    ``on_error(path, reason)`` and skipped, audio seconds done and in total through ``on_progress``."""
    size = batch_size(runner.batch, options.batch)  # settings the model cannot take fail before any work
    hop = hop_frames(options.hop_s, runner.features.frames)
    prepare_out(out, settings_record(model, runner, options), jobs, options.skip_existing)
    summary = Summary()
    pending = []
    for job in jobs:
        if options.skip_existing and job.result.exists():
            summary.skipped += 1
        else:
            pending.append(job)
    total_s = sum(_duration(job.path) for job in pending) if on_progress else 0.0
    spec = dataclasses.replace(runner, runtime=None, model=None)  # what the workers need to cut windows
    started = time.perf_counter()
    writer = _Writer(runner, options, pending, summary, on_error)
    messages = (_local_messages(spec, pending, hop) if options.workers == 0 or not pending else
                _worker_messages(spec, pending, hop, options.workers))
    batches = WindowBatches(runner, size)
    try:
        for kind, index, payload in messages:
            scored: list[tuple[Any, np.ndarray]] = []
            if kind == "idle":
                scored = batches.flush()
            elif kind == "windows":
                for window in payload:
                    scored += batches.add(index, window)
            elif kind == "end":
                writer.end(index, payload)
            else:
                batches.drop(index)
                writer.fail(index, payload)
            writer.scored(scored)
            writer.finish(batches.waiting())
            if on_progress is not None:
                on_progress(summary.audio_s, total_s)
        writer.scored(batches.flush())
        writer.finish(set())
    finally:
        messages.close()
    summary.wall_s = time.perf_counter() - started
    if options.combined:
        summary.combined = _write_combined(jobs, out, options.fmt)
    return summary


class _Writer:
    """Each recording's hits as its windows are scored, and its result written once all are."""

    def __init__(self, runner: Runner, options: AnalyzeOptions, jobs: Sequence[Job], summary: Summary,
                 on_error: Callable[[str, str], None]) -> None:
        self.labels, self.options, self.jobs, self.summary, self.on_error = runner.labels, options, jobs, summary, \
            on_error
        self.window_s = window_seconds(runner.features)
        self.hop_s = hop_frames(options.hop_s, runner.features.frames) * self.window_s / runner.features.frames
        self.nyquist = runner.features.sample_rate / 2
        self.state: dict[int, list[Any]] = {}  # index -> [windows scored, hits, duration once ended]

    def _entry(self, index: int) -> list[Any]:
        return self.state.setdefault(index, [0, [], None])

    def scored(self, rows: list[tuple[Any, np.ndarray]]) -> None:
        for index, row in rows:
            entry = self._entry(index)
            entry[1] += [(entry[0], label, score)
                         for label, score in window_hits(row, self.options.min_score, self.options.top_k)]
            entry[0] += 1

    def end(self, index: int, duration: float) -> None:
        self._entry(index)[2] = duration

    def fail(self, index: int, reason: str) -> None:
        self.state.pop(index, None)
        job = self.jobs[index]
        job.result.unlink(missing_ok=True)  # a result of earlier settings (--no-skip-existing) is not this run's
        self.summary.failed.append(f"{shown_path(job.path)}: {reason}")
        self.on_error(shown_path(job.path), reason)

    def finish(self, waiting: set[Any]) -> None:
        for index in [i for i, e in self.state.items() if e[2] is not None and i not in waiting]:
            _, hits, duration = self.state.pop(index)
            job = self.jobs[index]
            found = detections(hits, self.labels, hop_s=self.hop_s, window_s=self.window_s, duration_s=duration,
                               merge=self.options.merge_events)
            write_bytes_atomic(job.result, table_text(found, self.options.fmt, job.name, self.nyquist).encode())
            self.summary.done += 1
            self.summary.audio_s += duration


def _write_combined(jobs: Sequence[Job], out: Path, fmt: str) -> Path:
    path = out / (COMBINED + SUFFIXES[fmt])
    if any(job.result == path for job in jobs):
        raise UsageError(f"a recording's result is {shown_path(path)}, the combined table's name; analyse it "
                         "into another -o or drop --combined")
    tables = (job.result.read_text(encoding="utf-8") for job in jobs if job.result.exists())
    return write_bytes_atomic(path, combined_text(tables, fmt).encode())


def _duration(path: Path) -> float:
    """Seconds of audio in the file by its header; 0 when it cannot be read (its windows say why)."""
    import soundfile as sf

    try:
        info = sf.info(os.fsencode(path))
    except Exception:  # noqa: BLE001 (any decoder failure: the file is reported when its windows are read)
        return 0.0
    return info.frames / info.samplerate if info.samplerate > 0 else 0.0


def _file_messages(spec: Runner, index: int, path: str | os.PathLike, hop: int) -> Iterator[tuple[str, int, Any]]:
    """("windows", index, (n, T, F) or (n, samples)) blocks of one file, then ("end", index, seconds), or
    ("error", index, reason) where it cannot be read (after any blocks already sent)."""
    block: list[np.ndarray] = []
    try:
        for window in file_windows(spec, path, hop):
            block.append(window)
            if len(block) == BLOCK:
                yield "windows", index, np.stack(block)
                block = []
        if block:
            yield "windows", index, np.stack(block)
    except FastASTError as err:
        yield "error", index, failure_reason(err, shown_path(path))
        return
    except Exception as err:  # noqa: BLE001 (a file that breaks the decoder is reported, the run goes on)
        yield "error", index, error_summary(err, with_type=True)
        return
    yield "end", index, _duration(Path(path))


def _local_messages(spec: Runner, jobs: Sequence[Job], hop: int) -> Iterator[tuple[str, int, Any]]:
    for index, job in enumerate(jobs):
        yield from _file_messages(spec, index, job.path, hop)


def _worker(spec: Runner, hop: int, tasks: Any, results: Any, parent: int) -> None:
    """A decoding process: files from ``tasks`` until None, their messages onto the bounded ``results``; it
    leaves when its parent is gone (killed) rather than wait on a queue nobody reads."""
    import torch

    torch.set_num_threads(1)
    while (task := tasks.get()) is not None:
        index, path = task
        for message in _file_messages(spec, index, path, hop):
            while True:
                try:
                    results.put(message, timeout=1.0)
                    break
                except queue.Full:
                    if os.getppid() != parent:
                        os._exit(0)
    results.put(("exit", -1, None))


def _worker_messages(spec: Runner, jobs: Sequence[Job], hop: int, workers: int) -> Iterator[tuple[str, int, Any]]:
    """Messages of the ``workers`` processes as they come, and ("idle", -1, None) whenever none waits (the
    batch is then run rather than wait); the processes are stopped when the iterator is closed."""
    context = multiprocessing.get_context("spawn")
    tasks, results = context.Queue(), context.Queue(maxsize=2 * workers + 2)
    for index, job in enumerate(jobs):
        tasks.put((index, str(job.path)))
    workers = max(1, min(workers, len(jobs)))
    for _ in range(workers):
        tasks.put(None)
    processes = [context.Process(target=_worker, args=(spec, hop, tasks, results, os.getpid()), daemon=True)
                 for _ in range(workers)]
    for process in processes:
        process.start()
    running = workers
    try:
        while running:
            try:
                message = results.get_nowait()
            except queue.Empty:
                yield "idle", -1, None
                message = _next(results, processes)
            if message[0] == "exit":
                running -= 1
            else:
                yield message
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(timeout=5)
        tasks.cancel_join_thread()
        results.cancel_join_thread()


def _next(results: Any, processes: Sequence[Any]) -> tuple[str, int, Any]:
    while True:
        try:
            return results.get(timeout=2.0)
        except queue.Empty:
            dead = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
            if dead:
                raise FastASTError(f"a decoding worker stopped (exit code {dead[0]}); the files it held were not "
                                   "analysed: run again to finish them, or use --workers 0") from None
