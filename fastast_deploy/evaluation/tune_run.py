"""`fastast-deploy tune` from end to end: check the inputs, split the data, search (`tune.Search`) with scores
measured in PyTorch (`tune_measure`), time the front on the target backend, choose, and report the choice on
clips it was not chosen on (held out of DATA, or ``--test``) with bootstrap intervals."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fastast_deploy.errors import ConfigError, DatasetError, UsageError
from fastast_deploy.evaluation.bench import labelled_data
from fastast_deploy.evaluation.tune import (
    Budget,
    Candidate,
    Search,
    Target,
    bootstrap_drop,
    choose,
    resample_indices,
    split_clips,
    to_time,
)
from fastast_deploy.evaluation.tune_measure import (
    Journal,
    TorchScorer,
    TuneOptions,
    Windows,
    data_digest,
    digest,
    metric_function,
    time_schedules,
)
from fastast_deploy.model.schedule import clip_schedule

REPORT_SCHEMA = "fastast-deploy/tune"
REPORT_VERSION = 1
MAP_DRAWS = 200  # bootstrap draws for mAP, whose every draw ranks every label's clips


def max_flop_ratio(config: Any) -> float:
    """The FLOP ratio of the largest r: every block merging all it can."""
    from fastast_deploy.model.flops import flop_ratio

    return flop_ratio(config, clip_schedule(config.num_tokens, (config.num_tokens,) * config.depth))


def load_tuned_model(source: str, frames: int | None) -> Any:
    """SOURCE as a FastAST without merging (a CNN has no tokens to merge)."""
    from fastast_deploy.checkpoints.loading import resolve_run
    from fastast_deploy.checkpoints.native import load_model
    from fastast_deploy.model.fastast import FastAST

    model = load_model(resolve_run(source), tome_r=0, input_frames=frames)
    if not isinstance(model, FastAST):
        raise ConfigError(f"{source} is not an AST / FastAST checkpoint; tune sets its token merging")
    return model


def check_target(model: Any, target: Target) -> None:
    """A --speedup above the FLOP ratio of the largest r cannot be reached: a usage error, before any work."""
    top = max_flop_ratio(model.config)
    if target.speedup is not None and target.speedup > top:
        raise UsageError(f"--speedup {target.speedup:g} is above {top:.2f}x, the FLOP ratio of the largest r (every "
                         "block merging all it can), the most merging can give this model at this input length")


def tune(source: str, data: str, labels_csv: str | None, test: str | None, target: Target, budget: Budget,
         options: TuneOptions, output: Path, *, restart: bool = False, say: Callable[[str], None] = print,
         progress: Callable[[Candidate, int], None] | None = None) -> dict[str, Any]:
    """Search, time, choose; the report that becomes DIR/tune.json (``chosen`` None when nothing meets the
    target, ``closest`` then names the nearest)."""
    import torch

    from fastast_deploy.checkpoints.loading import model_extra
    from fastast_deploy.inference.runner import ACTIVATIONS
    from fastast_deploy.model.config import FeatureConfig
    from fastast_deploy.model.flops import flop_ratio

    started = time.perf_counter()
    model = load_tuned_model(source, options.frames)
    check_target(model, target)
    names = list(model.label_names) if model.label_names else None
    files, targets, task = labelled_data(data, labels_csv, names)
    if not files:
        raise DatasetError(f"{data} lists no clips")
    if test is not None:
        test_files, test_targets, _ = labelled_data(test, labels_csv, names)
        if not test_files:
            raise DatasetError(f"--test {test} lists no clips")
        search_idx, held_idx = np.arange(len(files)), None
    else:
        search_idx, held_idx = split_clips(targets.argmax(axis=1), options.holdout, options.seed)
        if not len(held_idx):
            raise DatasetError(f"{data} has too few clips to hold any out ({len(files)}; at least two of a class); "
                               "give more, or a separate --test set")
        test_files, test_targets = [files[i] for i in held_idx], targets[held_idx]
        files, targets = [files[i] for i in search_idx], targets[search_idx]
    config = model.config
    features = model.feature_config or FeatureConfig(num_mel_bins=config.num_mel_bins, frames=config.input_frames)
    say(f"features of {len(files)} search and {len(test_files)} held-out clips ...")
    windows = {"search": Windows(files, features), "held_out": Windows(test_files, features)}
    truth = {"search": targets.astype(np.float64), "held_out": test_targets.astype(np.float64)}  # float32 means
    # of 0/1 would put bootstrap bounds at +-2e-6 where they are 0
    journal = Journal(output, restart)
    common = {"model": model.source_info.get("sha256"), "frames": config.input_frames,
              "prop_attn": model.tome.prop_attn, "features": features.to_dict(),
              "data": {split: data_digest(f, truth[split]) for split, f in (("search", files),
                                                                           ("held_out", test_files))}}
    activation = ACTIVATIONS.get(model_extra(model).get("task") or "multilabel", "sigmoid")
    device = "cuda" if torch.cuda.is_available() else "cpu"  # scoring: AST-base on a GPU
    scorer = TorchScorer(model, activation, options.batch, device)
    measure = metric_function(task)

    def scores(schedule: tuple[int, ...], split: str) -> np.ndarray:
        key = digest({**common, "schedule": list(schedule), "split": split})
        cached = journal.scores(key)
        if cached is not None:
            return cached
        with torch.inference_mode():
            out = scorer(schedule, windows[split])
        journal.add(key, {"kind": "score", "schedule": list(schedule), "split": split,
                          "metric": measure(out, truth[split])}, out.astype(np.float32))
        return out

    with _threads(options.threads):
        search = Search(config.num_tokens, config.depth, target, budget, lambda s: flop_ratio(config, s),
                        lambda s: 100.0 * measure(scores(s, "search"), truth["search"]), progress)
        results = search.run()
    searched_s = time.perf_counter() - started
    base = results[0]
    timed = to_time(results, search, options.timed)
    draws = resample_indices(len(files), options.seed, draws=1000 if task == "singlelabel" else MAP_DRAWS)
    paired = _paired(measure, truth["search"])
    base_rows = np.hstack([scores(base.schedule, "search"), truth["search"]])
    for c in results if task == "singlelabel" else timed:  # mAP: its bootstrap is slow, the timed ones only
        if c is not base:
            c.interval = bootstrap_drop(base_rows, np.hstack([scores(c.schedule, "search"), truth["search"]]),
                                        paired, draws)
    say(f"timing {len(timed)} schedules on {options.backend} (batch {options.batch}) ...")
    timings = _timed(journal, common, source, timed, options, model, output)
    rate = timings[base.label]["clips_per_s"]
    for c in timed:
        c.clips_per_s = timings[c.label]["clips_per_s"]
        c.speedup = c.clips_per_s / rate
        c.extra["latency_ms_p50"] = timings[c.label]["latency_ms_p50"]
    chosen, closest = choose(timed, target)
    constants = [c for c in timed if c.kind == "constant"]
    best_constant = choose(constants, target)[0] if constants else None
    held_draws = resample_indices(len(test_files), options.seed + 1,
                                  draws=1000 if task == "singlelabel" else MAP_DRAWS)
    for c in {id(c): c for c in (base, chosen, closest, best_constant) if c is not None}.values():
        c.held_out = _held_out(c, base, scores, measure, truth["held_out"], held_draws)
    notes = resolution_notes(target, len(files), len(test_files), task, chosen or closest, search.exhausted)
    return {
        "schema": REPORT_SCHEMA, "version": REPORT_VERSION, "source": source, "data": data, "test": test,
        "task": task, "metric": "accuracy" if task == "singlelabel" else "mAP", "units": "points (metric x 100)",
        "clips": {"search": len(files), "held_out": len(test_files)},
        "holdout": None if test is not None else {"fraction": options.holdout, "seed": options.seed},
        "target": {"max_drop": target.max_drop, "speedup": target.speedup},
        "budget": {"candidates": budget.candidates, "minutes": budget.minutes, "exhausted": search.exhausted},
        "settings": {"backend": options.backend, "provider": options.provider, "batch": options.batch,
                     "threads": options.threads, "precision": options.precision, "input": options.input,
                     "frames": config.input_frames, "rounds": options.rounds, "timed": options.timed},
        "depth": config.depth, "max_flop_ratio": max_flop_ratio(config),
        "candidates": [c.as_dict() | {"timed": c in timed} for c in results],
        "chosen": None if chosen is None else chosen.as_dict(),
        "closest": None if closest is None else closest.as_dict(),
        "best_constant": None if best_constant is None else best_constant.as_dict(),
        "notes": notes, "search_seconds": searched_s, "seconds": time.perf_counter() - started,
    }


def _paired(measure: Callable[[np.ndarray, np.ndarray], float], truth: np.ndarray) -> Callable[[np.ndarray], float]:
    """The metric of rows [scores | targets] stacked side by side, so that one resample picks both."""
    labels = truth.shape[1]
    return lambda rows: measure(rows[:, :-labels], rows[:, -labels:])


def _held_out(c: Candidate, base: Candidate, scores: Callable[[tuple[int, ...], str], np.ndarray],
              measure: Callable[[np.ndarray, np.ndarray], float], truth: np.ndarray,
              draws: np.ndarray) -> dict[str, Any]:
    mine, theirs = scores(c.schedule, "held_out"), scores(base.schedule, "held_out")
    metric = 100.0 * measure(mine, truth)
    base_metric = 100.0 * measure(theirs, truth)
    lo, hi = bootstrap_drop(np.hstack([theirs, truth]), np.hstack([mine, truth]), _paired(measure, truth), draws)
    return {"metric": metric, "drop": base_metric - metric, "interval": [lo, hi], "clips": len(truth)}


def _timed(journal: Journal, common: dict[str, Any], source: str, timed: list[Candidate], options: TuneOptions,
           model: Any, output: Path) -> dict[str, dict[str, float]]:
    """Timings of the front, from the journal when this same front was timed with these settings before."""
    settings = {k: getattr(options, k) for k in ("backend", "provider", "batch", "threads", "precision", "input",
                                                 "rounds", "warmup")}
    key = digest({**common, "timing": settings, "schedules": [list(c.schedule) for c in timed]})
    entry = journal.get(key)
    if entry is not None and set(entry.get("timings", {})) == {c.label for c in timed}:
        return entry["timings"]
    labels = {c.label: c.schedule for c in timed}
    with _threads(options.threads):
        timings = time_schedules(source, labels, options, model, output)
    journal.add(key, {"kind": "timing", "settings": settings, "timings": timings})
    return timings


def _threads(threads: int | None) -> Any:
    from fastast_deploy.scoped import torch_threads

    return torch_threads(threads)


def resolution_notes(target: Target, search_clips: int, held_clips: int, task: str, pick: Candidate | None,
                     exhausted: bool) -> list[str]:
    """What the data can and cannot tell apart: one clip's worth in points, against the budget; the held-out
    interval against the budget; a search cut short by --budget."""
    notes = []
    if task == "singlelabel" and target.max_drop is not None:
        for what, n in (("search", search_clips), ("held-out", held_clips)):
            if target.max_drop < 100.0 / n:
                notes.append(f"--max-drop {target.max_drop:g} is below what the {n} {what} clips can resolve (one "
                             f"clip of {n} is {100.0 / n:.1f} points)")
    if pick is not None and pick.held_out and target.max_drop is not None:
        lo, hi = (round(v, 9) + 0.0 for v in pick.held_out["interval"])
        if np.isfinite(lo) and (hi - lo) / 2 > target.max_drop:
            notes.append(f"the held-out interval of the choice ({lo:+.1f} to {hi:+.1f} points) is wider than the "
                         f"budget of {target.max_drop:g}: more held-out clips would confirm it")
    if exhausted:
        notes.append("the search stopped at --budget; a larger budget may find a faster schedule")
    return notes
