"""Comparisons of an engine's outputs with reference outputs, in numpy alone (no torch): errors, cosine,
label agreement, the one parity check (`parity_checks`, against a `contract.Tolerance`), merge-decision agreement,
accuracy and mean average precision; and the seeded dummy inputs every check feeds (`dummy_inputs`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fastast_deploy.contract import WAVEFORM_NAME, Tolerance


def fbank_like(num: int, frames: int, mel: int, seed: int = 0) -> np.ndarray:
    """Seeded (num, frames, mel) float32 arrays with the scale of normalised fbank (mean 0, std 0.5), smoothed
    along time and frequency so that neighbouring patches look alike, as in real spectrograms."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((num, frames + 2, mel + 2)).astype(np.float32)
    x = (x[:, :-2] + x[:, 1:-1] + x[:, 2:]) / 3  # smooth along time
    x = (x[:, :, :-2] + x[:, :, 1:-1] + x[:, :, 2:]) / 3  # and frequency
    return (0.5 * x / x.std()).astype(np.float32)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows of (N, D) arrays, in float64."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(-1) / (np.linalg.norm(a64, axis=-1) * np.linalg.norm(b64, axis=-1) + 1e-30)


def topk_agreement(reference: np.ndarray, candidate: np.ndarray, k: int) -> float:
    """Mean overlap of the k highest-scoring labels, as a fraction of k (1.0: the same k labels for every clip)."""
    k = min(k, reference.shape[-1])
    ref = np.argsort(-reference, axis=-1, kind="stable")[:, :k]
    got = np.argsort(-candidate, axis=-1, kind="stable")[:, :k]
    return float(np.mean([len(set(r) & set(g)) / k for r, g in zip(ref, got, strict=True)]))


def _stat(values: np.ndarray, how: str) -> float:
    if values.size == 0:
        return float("nan")
    if how == "p99":
        return float(np.percentile(values, 99))
    return float(np.max(values) if how == "max" else np.mean(values))


def compare_logits(
    reference: np.ndarray, candidate: np.ndarray, atol: float = 0.0, rtol: float = 0.0, peak_rtol: float = 0.0
) -> dict[str, Any]:
    """Error statistics of candidate against reference (N, labels); NaN-aware (NaNs are counted, not averaged).
    ``worst_excess`` and ``within_tolerance`` measure against ``atol + rtol * |ref| + peak_rtol * max|ref|``."""
    ref, got = reference.astype(np.float64), candidate.astype(np.float64)
    finite = np.isfinite(ref) & np.isfinite(got)
    rows = finite.all(axis=-1)
    peak = float(np.abs(ref[finite]).max()) if finite.any() else 0.0
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite entries are masked out below
        diff = np.abs(ref - got)[finite]
        rel = (np.abs(ref - got) / (np.abs(ref) + 1e-12))[finite]
        excess = (np.abs(ref - got) - (atol + rtol * np.abs(ref) + peak_rtol * peak))[finite]
    cos = cosine_rows(ref[rows], got[rows]) if rows.any() else np.array([np.nan])
    return {
        "clips": int(ref.shape[0]),
        "non_finite_clips": int((~rows).sum()),
        "max_abs_diff": _stat(diff, "max"),
        "mean_abs_diff": _stat(diff, "mean"),
        "p99_abs_diff": _stat(diff, "p99"),
        "max_rel_diff": _stat(rel, "max"),
        "mean_rel_diff": _stat(rel, "mean"),
        "p99_rel_diff": _stat(rel, "p99"),
        "within_tolerance": float((excess <= 0).mean()) if excess.size else 0.0,
        "worst_excess": _stat(excess, "max"),  # how far the worst element is beyond atol + rtol * |ref|
        "cosine_min": float(cos.min()),
        "cosine_mean": float(cos.mean()),
        "top1_agreement": float((ref.argmax(-1) == got.argmax(-1))[rows].mean()) if rows.any() else 0.0,
        "top5_agreement": topk_agreement(ref[rows], got[rows], 5) if rows.any() else 0.0,
    }


def check_row(name: str, value: float, threshold: str, passed: bool, by: float | None = None) -> dict[str, Any]:
    """One pass condition as a report row: ``by`` is how far a failed condition missed (None when it passed)."""
    value = float(value)
    return {"name": name, "value": value if np.isfinite(value) else str(value), "threshold": threshold,
            "passed": bool(passed), "by": None if passed or by is None or not np.isfinite(by) else float(by)}


def parity_checks(reference: np.ndarray, candidate: np.ndarray,
                  tolerance: Tolerance) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The one parity check: candidate logits (N, labels) against reference logits under ``tolerance``. Returns the
    figures (`compare_logits`) and one row per condition (`check_row`). NaN or inf on either side fails
    ("finite outputs"), and every comparison is written so that a NaN figure fails too."""
    t = tolerance
    figures = compare_logits(reference, candidate, t.atol or 0.0, t.rtol or 0.0, t.peak_rtol or 0.0)
    bad = figures["non_finite_clips"]
    checks = [check_row("finite outputs", bad, "== 0", bad == 0)]
    if t.atol is not None:
        terms = ["atol", *(["rtol*|ref|"] if t.rtol is not None else []),
                 *(["peak_rtol*max|ref|"] if t.peak_rtol is not None else [])]
        within = figures["within_tolerance"]
        checks.append(check_row(f"logits within {' + '.join(terms)}", within, "== 1 (all elements)", within == 1.0,
                                by=figures["worst_excess"]))
    for key, name, figure in (("min_cosine", "cosine (worst clip)", "cosine_min"),
                              ("min_mean_cosine", "cosine (mean)", "cosine_mean"),
                              ("min_top1", "top-1 agreement", "top1_agreement")):
        floor = getattr(t, key)
        if floor is not None:
            value = figures[figure]
            checks.append(check_row(name, value, f">= {floor}", value >= floor, by=floor - value))
    return figures, checks


def parity_failure(figures: dict[str, Any], checks: list[dict[str, Any]]) -> str | None:
    """The first failed condition in words (None: all passed), e.g. ``top-1 agreement 0.5 < 0.9 (max |logit
    diff| 0.3, 0 of 4 clips non-finite)``."""
    failed = next((c for c in checks if not c["passed"]), None)
    if failed is None:
        return None
    value = failed["value"]
    shown = f"{value:.4g}" if isinstance(value, float) else value
    return (f"{failed['name']} {shown}, needs {failed['threshold']} (max |logit diff| {figures['max_abs_diff']:.3g}, "
            f"{figures['non_finite_clips']} of {figures['clips']} clips with NaN or inf)")


def merge_pairs(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """One clip's merge decisions (src (r,), dst (r,) positions) as its (source, destination) pairs sorted by source
    (r, 2): the merge itself, without the order sources were ranked in. Two sources whose scores agree to the last
    bits may be ranked in either order by two backends; the merge is the same."""
    order = np.argsort(src, kind="stable")
    return np.stack([src[order], dst[order]], axis=-1)


def merge_agreement(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> list[float]:
    """Per merging block, the fraction of clips whose merges (the (src, dst) position arrays, in pairs, compared as
    sets of pairs: `merge_pairs`) are identical."""
    per_block = []
    for i in range(0, len(reference), 2):
        same = [np.array_equal(merge_pairs(rs, rd), merge_pairs(cs, cd)) for rs, rd, cs, cd in
                zip(reference[i], reference[i + 1], candidate[i], candidate[i + 1], strict=True)]
        per_block.append(float(np.mean(same)))
    return per_block


def accuracy(logits: np.ndarray, targets: np.ndarray) -> float:
    """Share of clips whose top-scoring label is right: targets (N,) class indices, or (N, labels) multi-hot
    (right: one of the clip's labels)."""
    top = logits.argmax(axis=-1)
    if targets.ndim == 1:
        return float((top == targets).mean())
    return float(targets[np.arange(len(top)), top].mean())


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """AP of one label: the mean, over its positive clips, of the precision at that clip's rank (ties: a positive
    clip counts every clip scored at least as high, as scikit-learn's average_precision_score does)."""
    positives = positives.astype(bool)
    if not positives.any():
        return float("nan")
    aps = []
    for s in scores[positives]:
        ranked = scores >= s
        aps.append(positives[ranked].sum() / ranked.sum())
    return float(np.mean(aps))


def mean_average_precision(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean AP over the labels that have at least one positive clip (AudioSet's mAP)."""
    aps = [average_precision(logits[:, k], targets[:, k]) for k in range(targets.shape[1]) if targets[:, k].any()]
    return float(np.mean(aps)) if aps else float("nan")


def dummy_inputs(name: str, shape: Sequence[int], num: int, seed: int = 0, rate: int = 16000) -> np.ndarray:
    """Seeded inputs (num, *shape) for a graph input named ``name``: `waveform_like` for ``waveform`` (shape
    (samples,)), `fbank_like` otherwise (shape (T, F)). What every parity check and timing feed uses."""
    if name == WAVEFORM_NAME:
        return waveform_like(num, int(shape[0]), seed, rate)
    return fbank_like(num, int(shape[0]), int(shape[1]), seed)


def waveform_like(num: int, samples: int, seed: int = 0, rate: int = 16000) -> np.ndarray:
    """Waveform-in graph inputs (num, samples) float32: a tone, a linear chirp and white noise at random gains
    per clip; every other clip is shorter than the input (from 30 % to 90 % of it) and padded with NaN (no
    audio past its end), so the pad path of the in-graph features is exercised."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / rate
    out = np.empty((num, samples), np.float32)
    for i in range(num):
        f0, f1, f2 = rng.uniform(100, rate / 2.5, size=3)
        gains = rng.uniform(0.02, 0.3, size=3)
        chirp = np.sin(2 * np.pi * (f1 * t + (f2 - f1) * t**2 / (2 * t[-1])))
        wave = gains[0] * np.sin(2 * np.pi * f0 * t) + gains[1] * chirp + gains[2] * rng.standard_normal(samples)
        out[i] = wave
        if i % 2 == 1:
            out[i, int(samples * rng.uniform(0.3, 0.9)) :] = np.nan
    return out
