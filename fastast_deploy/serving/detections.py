"""Detections of a recording and the tables they are written as.

A window's hits are its ``top_k`` labels scoring at least ``min_score``; a hit is a detection from the window's
start to its end (the recording's end for the last window). With ``merge``, hits of one label in consecutive
windows are one event, from the first window's start to the last one's end, scored by its best window.

Tables, one per recording (``table_text``), the formats BirdNET-Analyzer users open:
- ``csv``: ``file,start,end,label,score`` (seconds), one row per detection;
- ``jsonl``: one JSON object per detection with the same keys;
- ``raven``: a Raven Pro selection table: tab-separated, ``Selection View Channel Begin Time (s) End Time (s)
  Low Freq (Hz) High Freq (Hz)`` then ``Label Confidence Begin File``; View ``Spectrogram 1``, Channel 1,
  selections numbered from 1, the band 0 to the model's Nyquist frequency;
- ``audacity``: an Audacity label track, ``start<TAB>end<TAB>label`` per line, seconds.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

FORMATS = ("csv", "jsonl", "raven", "audacity")
SUFFIXES = {"csv": ".csv", "jsonl": ".jsonl", "raven": ".selections.txt", "audacity": ".labels.txt"}
CSV_COLUMNS = ("file", "start", "end", "label", "score")
RAVEN_COLUMNS = ("Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
                 "High Freq (Hz)", "Label", "Confidence", "Begin File")
COMBINABLE = ("csv", "jsonl", "raven")  # an Audacity label track belongs to one recording


@dataclass(frozen=True)
class Detection:
    """``label`` from ``start`` to ``end`` seconds into the recording, with its score."""

    start: float
    end: float
    label: str
    score: float


def detections(hits: Iterable[tuple[int, int, float]], labels: Sequence[str], *, hop_s: float, window_s: float,
               duration_s: float, merge: bool = False) -> list[Detection]:
    """Detections from hits (window index, label index, score) of a recording of ``duration_s`` seconds whose
    windows start every ``hop_s``; ordered by start, then best score."""
    spans: dict[int, list[list[float]]] = {}  # label -> [[first window, last window, best score], ...]
    for window, label, score in sorted(hits, key=lambda h: (h[1], h[0])):
        runs = spans.setdefault(label, [])
        if merge and runs and runs[-1][1] == window - 1:
            runs[-1][1], runs[-1][2] = window, max(runs[-1][2], score)
        else:
            runs.append([window, window, score])
    found = [Detection(round(first * hop_s, 3), round(min(last * hop_s + window_s, duration_s), 3), labels[label],
                       score)
             for label, runs in spans.items() for first, last, score in runs]
    return sorted(found, key=lambda d: (d.start, -d.score, d.label))


def table_text(found: Sequence[Detection], fmt: str, file: str, nyquist_hz: float) -> str:
    """One recording's detections as a table in ``fmt`` (FORMATS); ``file`` names the recording in it."""
    out = io.StringIO()
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        writer.writerows([file, f"{d.start:.3f}", f"{d.end:.3f}", d.label, f"{d.score:.4f}"] for d in found)
    elif fmt == "jsonl":
        for d in found:
            out.write(json.dumps({"file": file, "start": d.start, "end": d.end, "label": d.label,
                                  "score": round(d.score, 4)}, ensure_ascii=False) + "\n")
    elif fmt == "raven":
        out.write("\t".join(RAVEN_COLUMNS) + "\n")
        for i, d in enumerate(found, start=1):
            row = (str(i), "Spectrogram 1", "1", f"{d.start:.3f}", f"{d.end:.3f}", "0", f"{nyquist_hz:g}",
                   _field(d.label), f"{d.score:.4f}", _field(file))
            out.write("\t".join(row) + "\n")
    elif fmt == "audacity":
        out.writelines(f"{d.start:.3f}\t{d.end:.3f}\t{_field(d.label)}\n" for d in found)
    else:
        raise ValueError(f"unknown format {fmt!r}")
    return out.getvalue()


def combined_text(tables: Iterable[str], fmt: str) -> str:
    """Per-recording tables (``table_text``, each naming its file) joined as one: a single header, Raven
    selections numbered through."""
    if fmt not in COMBINABLE:
        raise ValueError(f"{fmt} tables are not combined")
    lines: list[str] = []
    for text in tables:
        rows = text.splitlines()
        if fmt == "jsonl":
            lines += rows
            continue
        if not lines:
            lines.append(rows[0])
        for row in rows[1:]:  # Raven: the selections numbered through, the header being line 0
            lines.append(row if fmt == "csv" else f"{len(lines)}\t{row.split(chr(9), 1)[1]}")
    if not lines and fmt != "jsonl":
        lines.append(",".join(CSV_COLUMNS) if fmt == "csv" else "\t".join(RAVEN_COLUMNS))
    return "".join(line + "\n" for line in lines)


def _field(text: str) -> str:
    """A value for a tab-separated line: tabs and line breaks as spaces."""
    return " ".join(text.replace("\t", " ").splitlines())
