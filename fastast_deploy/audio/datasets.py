"""Labelled audio datasets for training: AST data JSON, a folder per class, or an ESC-50-style CSV, plus label CSVs.

Every reader returns a `Dataset`: examples (clip id as the data lists it, resolved wav path, label indices) and the
label set. Clip ids are what a teacher-logits file names its rows by: the ``wav`` string of an AST data JSON, the
``filename`` column of an ESC-50 CSV, and ``class/file.wav`` in a folder-per-class layout.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from fastast_deploy.audio.features import first_fbank, normalize
from fastast_deploy.audio.labels import LabelSet, label_folder
from fastast_deploy.errors import DatasetError, error_summary
from fastast_deploy.files import read_csv_rows, read_json_object
from fastast_deploy.model.config import FeatureConfig

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")  # the audio files every command takes from a folder (train, verify)
ESC50_COLUMNS = ("filename", "target", "category")
_SHOWN = 3  # examples quoted in an error


@dataclass(frozen=True)
class Example:
    clip: str  # as the data file lists it
    path: Path
    labels: tuple[int, ...]


@dataclass(frozen=True)
class Dataset:
    source: Path
    examples: tuple[Example, ...]
    labels: LabelSet

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def clips(self) -> tuple[str, ...]:
        return tuple(e.clip for e in self.examples)

    def targets(self) -> torch.Tensor:
        """Multi-hot targets (N, labels), float32."""
        out = torch.zeros(len(self.examples), len(self.labels))
        for i, example in enumerate(self.examples):
            out[i, list(example.labels)] = 1.0
        return out

    def missing(self) -> list[Example]:
        return [e for e in self.examples if not e.path.is_file()]

    def without(self, dropped: Iterable[Example]) -> Dataset:
        gone = {e.clip for e in dropped}
        return replace(self, examples=tuple(e for e in self.examples if e.clip not in gone))


def load_dataset(path: str | os.PathLike[str], labels: LabelSet | None = None, *,
                 folds: Callable[[int], bool] | None = None) -> Dataset:
    """A dataset by its form: ``.json`` AST data file, ``.csv`` ESC-50-style file, or a folder per class.

    ``labels`` is required for a data JSON; the other forms derive one when it is None. ``folds`` selects the rows
    of an ESC-50 CSV by their ``fold`` column.
    """
    path = Path(path)
    if path.is_dir():
        return read_folder_dataset(path, labels)
    if not path.is_file():
        raise DatasetError(f"dataset {path} does not exist; expected an AST data .json, an ESC-50-style .csv "
                           f"or a directory with one sub-directory of audio files per class")
    if path.suffix.lower() == ".csv":
        return read_esc50_csv(path, labels, folds=folds)
    if labels is None:
        raise DatasetError(f"{path} is an AST data file; give its label CSV with --labels "
                           f"(columns index,mid,display_name)")
    return read_data_json(path, labels)


def read_data_json(path: str | os.PathLike[str], labels: LabelSet) -> Dataset:
    """``{"data": [{"wav": path, "labels": "mid1,mid2"}]}``; relative wav paths are taken from the file's folder."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"cannot read {path} as JSON ({error_summary(err)})") from None
    rows = data.get("data") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "wav" in r and "labels" in r for r in rows):
        raise DatasetError(f'{path} is not an AST data file; expected {{"data": [{{"wav": ..., "labels": ...}}, ...]}}')
    entries = [(str(r["wav"]), _resolve(path.parent, str(r["wav"])), str(r["labels"]).split(",")) for r in rows]
    return _build(path, entries, labels)


def read_folder_dataset(root: str | os.PathLike[str], labels: LabelSet | None = None) -> Dataset:
    """``root/<class>/<clip>.wav``; class folders match label display names or mids (a name with "/" as its
    `label_folder`, "clicks 12-18/s" as "clicks 12-18_s"), else sorted folder names."""
    root = Path(root)
    folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not folders:
        raise DatasetError(f"{root} has no class sub-directories; expected {root}/<class>/<clip>.wav")
    if labels is None:
        labels = LabelSet(tuple(d.name for d in folders), tuple(d.name for d in folders))
    named = {label_folder(n): n for n in labels.names if label_folder(n) != n}
    entries = []
    for folder in folders:
        label = folder.name if folder.name in labels.lookup() else named.get(folder.name, folder.name)
        for clip in sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES):
            entries.append((f"{folder.name}/{clip.name}", clip, [label]))
    return _build(root, entries, labels)


def read_esc50_csv(path: str | os.PathLike[str], labels: LabelSet | None = None, *,
                   folds: Callable[[int], bool] | None = None) -> Dataset:
    """ESC-50's ``meta/esc50.csv`` (filename, fold, target, category); audio in ``../audio/`` or beside the CSV."""
    path = Path(path)
    rows = read_csv_rows(path, DatasetError)
    if not rows or not set(ESC50_COLUMNS) <= set(rows[0]):
        raise DatasetError(f"{path} has no rows with columns {', '.join(ESC50_COLUMNS)} (fold optional); "
                           f"expected an ESC-50-style CSV")
    needed = (*ESC50_COLUMNS, "fold") if "fold" in rows[0] else ESC50_COLUMNS
    for line, row in enumerate(rows, start=2):
        if not all(isinstance(row.get(c), str) and row[c].strip() for c in needed):
            raise DatasetError(f"{path} line {line}: expected a value in each of {', '.join(needed)}")
        if "fold" in row and not row["fold"].strip().isdigit():
            raise DatasetError(f"{path} line {line}: fold {row['fold']!r} is not a whole number")
    if folds is not None:
        if "fold" not in rows[0]:
            raise DatasetError(f"{path} has no fold column; --val-fold needs one")
        rows = [r for r in rows if folds(int(r["fold"]))]
    if labels is None:
        try:
            by_target = {int(r["target"]): r["category"] for r in rows}
        except ValueError:
            raise DatasetError(f"{path}: the target column must hold integers") from None
        if sorted(by_target) != list(range(len(by_target))):
            raise DatasetError(f"{path}: targets must be 0..N-1 without gaps, or give a label CSV with --labels")
        names = tuple(by_target[i] for i in range(len(by_target)))
        labels = LabelSet(names, names)
    audio = next((d for d in (path.parent.parent / "audio", path.parent / "audio") if d.is_dir()), path.parent)
    entries = [(r["filename"], _resolve(audio, r["filename"]), [r["category"]]) for r in rows]
    return _build(path, entries, labels)


def check_label_sets(train: Dataset, val: Dataset) -> None:
    if train.labels != val.labels:
        raise DatasetError(f"{train.source} and {val.source} give different label sets ({len(train.labels)} vs "
                           f"{len(val.labels)} labels); give one label CSV with --labels")


def handle_missing(dataset: Dataset, skip: bool, warn: Callable[[str], None]) -> Dataset:
    """Missing audio files: an error listing how many and which, or (``skip``) a warning and the rest."""
    missing = dataset.missing()
    if not missing:
        return dataset
    shown = ", ".join(str(e.path) for e in missing[:_SHOWN]) + (", ..." if len(missing) > _SHOWN else "")
    message = f"{len(missing)} of {len(dataset)} audio files listed in {dataset.source} are missing ({shown})"
    if not skip:
        raise DatasetError(f"{message}; fix the paths or pass --skip-missing to train without them")
    warn(f"warning: {message}; training without them")
    if len(missing) == len(dataset):
        raise DatasetError(f"every audio file listed in {dataset.source} is missing; nothing to train on")
    return dataset.without(missing)


def detect_task(*datasets: Dataset) -> str:
    """``singlelabel`` when every clip has exactly one label, else ``multilabel``."""
    single = all(len(e.labels) == 1 for d in datasets for e in d.examples)
    return "singlelabel" if single else "multilabel"


def raw_fbank(path: Path, config: FeatureConfig) -> torch.Tensor:
    """Unnormalised log-mel fbank (config.frames, config.num_mel_bins) of a clip's first window, as AST's loader
    computes it, streamed: memory is bounded by the window, not the file (``features.first_fbank``)."""
    return first_fbank(path, config)  # (T, F)


def fbank_cache(paths: Sequence[Path], config: FeatureConfig,
                progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Unnormalised features of every file, (N, frames, mel bins) float32; normalise with `normalize_cache`."""
    out = torch.empty(len(paths), config.frames, config.num_mel_bins)
    for i, path in enumerate(paths):
        out[i] = raw_fbank(path, config)
        if progress is not None:
            progress(1)
    return out


def fbank_stats(raw: torch.Tensor) -> tuple[float, float]:
    """Mean and std of unnormalised fbank (N, T, F): how AST finds a dataset's normalisation statistics."""
    return float(raw.mean()), float(raw.std())


def normalize_cache(raw: torch.Tensor, config: FeatureConfig) -> torch.Tensor:
    """(N, T, F) unnormalised -> normalised with the config's mean and std, ``(x - mean) / (2 * std)``."""
    return normalize(raw, config.mean, config.std)


def _resolve(base: Path, wav: str) -> Path:
    p = Path(wav).expanduser()
    return p if p.is_absolute() else base / p


def _build(source: Path, entries: list[tuple[str, Path, list[str]]], labels: LabelSet) -> Dataset:
    """Map label tokens to indices; unknown labels are one error with their count and examples."""
    lookup = labels.lookup()
    unknown: dict[str, int] = {}
    examples = []
    for clip, path, tokens in entries:
        tokens = [t.strip() for t in tokens if t.strip()]
        for t in tokens:
            if t not in lookup:
                unknown[t] = unknown.get(t, 0) + 1
        indices = tuple(sorted({lookup[t] for t in tokens if t in lookup}))
        examples.append(Example(clip, path, indices))
    if unknown:
        shown = ", ".join(list(unknown)[:_SHOWN]) + (", ..." if len(unknown) > _SHOWN else "")
        if labels.no_mid_column and source.suffix.lower() == ".json":
            raise DatasetError(f"{len(unknown)} labels used in {source} are not in the label CSV "
                               f"{labels.no_mid_column} ({shown}): it has no mid column, and an AST data file names "
                               "labels by mid; give a label CSV with columns index,mid,display_name (the layout of "
                               "AST's class_labels_indices.csv)")
        raise DatasetError(f"{len(unknown)} labels used in {source} are missing from the label set of "
                           f"{len(labels)} labels ({shown}); add them to the label CSV or fix the data")
    if not examples:
        raise DatasetError(f"{source} lists no clips")
    unlabelled = [e.clip for e in examples if not e.labels]
    if unlabelled:
        raise DatasetError(f"{len(unlabelled)} clips in {source} have no label (e.g. {unlabelled[0]})")
    return Dataset(source, tuple(examples), labels)


def is_ast_data_json(path: Path) -> bool:
    """Whether ``path`` holds an AST data file, ``{"data": [...]}`` (not, e.g., a Polygraphy inputs .json)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and isinstance(data.get("data"), list)


def folder_audio(folder: Path) -> list[Path]:
    """Every audio file (AUDIO_SUFFIXES) under ``folder``, recursively, sorted; DatasetError when there is none."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise DatasetError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) in the folder {folder}")
    return files


def listed_audio(path: Path) -> list[Path]:
    """The audio files an AST data .json or an ESC-50 style .csv lists, resolved as the data lists resolve them
    (labels are not read)."""
    if path.suffix == ".csv":
        return [e.path for e in read_esc50_csv(path).examples]
    data = read_json_object(path, DatasetError, "data list")
    rows = data.get("data")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "wav" in r for r in rows):
        raise DatasetError(f'{path} is not an AST data file; expected {{"data": [{{"wav": ...}}, ...]}}')
    return [_resolve(path.parent, str(r["wav"])) for r in rows]
