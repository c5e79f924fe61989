"""What `verify` feeds an engine and compares against: input sets (random, npz, Polygraphy JSON, audio folder)
and reference outputs (a checkpoint run in PyTorch, an npz, a Polygraphy RunResults file)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fastast_deploy.audio.datasets import is_ast_data_json
from fastast_deploy.contract import INPUT_NAME, OUTPUT_NAME
from fastast_deploy.engines.feeds import (
    concatenate_parts,
    polygraphy_load_error,
    polygraphy_silent,
    read_npz_array,
    read_polygraphy_feeds,
)
from fastast_deploy.errors import DatasetError, FastASTError, VerifyUsageError, error_summary
from fastast_deploy.metrics import fbank_like
from fastast_deploy.model.config import FeatureConfig


@dataclass
class InputSet:
    """fbank (N, T, F) float32 with clip names; labels (N,) class indices where a folder-per-class layout gave
    them; files that could not be read are skipped and listed."""

    fbank: np.ndarray
    names: list[str]
    source: str
    labels: np.ndarray | None = None
    skipped: list[dict[str, str]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # the audio file of each clip, where inputs came from audio
    waveform: np.ndarray | None = None  # (N, samples) for a waveform-in engine; ``fbank`` is then the project's


@dataclass
class Reference:
    """Reference logits (N, labels) for the inputs, with merge positions where the reference exposes them."""

    kind: str  # "checkpoint" | "npz" | "runresults"
    source: str
    logits: np.ndarray
    labels: list[str] | None = None
    merges: list[np.ndarray] | None = None
    fbank: np.ndarray | None = None  # inputs that came with the reference (npz)


def load_inputs(spec: str, num: int, frames: int, mel: int, seed: int, export: dict[str, Any],
                labels_csv: str | None = None) -> InputSet:
    """``random`` (seeded fbank-like arrays), an ``.npz`` with ``fbank``, a Polygraphy inputs ``.json``, an AST
    data ``.json`` (``{"data": [{"wav", "labels"}]}``, labels as in ``labels_csv`` or the engine's names), or a
    folder of audio files; audio goes through the engine's feature settings."""
    if spec == "random":
        names = [f"random-{i}" for i in range(num)]
        return InputSet(fbank_like(num, frames, mel, seed), names, f"random (seed {seed})")
    path = Path(spec)
    if not path.exists():
        raise VerifyUsageError(f"--inputs {spec}: no such file or folder; use random, a folder of audio, an .npz "
                               "with an fbank array or a Polygraphy inputs .json")
    if path.is_dir():
        return _audio_folder(path, export)
    if path.suffix == ".npz":
        return _checked(InputSet(read_npz_array(path, INPUT_NAME, VerifyUsageError), [], str(path)), frames, mel)
    if path.suffix == ".json":
        if is_ast_data_json(path):
            return _data_json(path, labels_csv, export)
        fbank = read_polygraphy_feeds(path, INPUT_NAME, VerifyUsageError)
        return _checked(InputSet(fbank, [], str(path)), frames, mel)
    raise VerifyUsageError(f"--inputs {spec}: expected random, a folder, an .npz or a Polygraphy .json")


def _checked(inputs: InputSet, frames: int, mel: int) -> InputSet:
    if inputs.fbank.ndim != 3 or inputs.fbank.shape[1:] != (frames, mel):
        raise VerifyUsageError(f"inputs from {inputs.source} have shape {inputs.fbank.shape}; the engine takes "
                               f"(N, {frames}, {mel}): another input length or mel bin count")
    if not inputs.names:
        inputs.names = [f"{Path(inputs.source).stem}-{i}" for i in range(len(inputs.fbank))]
    inputs.fbank = inputs.fbank.astype(np.float32, copy=False)
    return inputs


def label_folder(label: str) -> str:
    """The folder name that stands for a label in a folder-per-class layout ("/" cannot appear in a name)."""
    return label.replace("/", "_").replace("\\", "_")


def _audio_folder(path: Path, export: dict[str, Any]) -> InputSet:
    """Every audio file under ``path``; a sub-folder named like a label (see ``label_folder``) gives its clips that
    label."""
    from fastast_deploy.audio.datasets import folder_audio
    from fastast_deploy.audio.features import load_input

    try:
        files = folder_audio(path)
    except DatasetError as err:
        raise VerifyUsageError(f"--inputs {path}: {err}") from None
    if export.get("features") is None:
        raise VerifyUsageError("the engine records no feature settings, so audio cannot be turned into its input")
    config = FeatureConfig.from_dict(export["features"])
    folders = [label_folder(name) for name in export.get("labels") or []]
    arrays, names, labels, skipped = [], [], [], []
    for file in files:
        try:
            arrays.append(load_input(file, config).numpy())
        except (FastASTError, OSError) as err:  # unreadable (damaged, no permission): skipped, named in the report
            skipped.append({"file": str(file), "error": str(err) if isinstance(err, FastASTError) else
                            f"cannot read {file} ({error_summary(err, with_type=True)})"})
            continue
        names.append(str(file.relative_to(path)))
        parent = file.parent.name if file.parent != path else None
        labels.append(folders.index(parent) if parent in folders else -1)
    if not arrays:
        raise VerifyUsageError(f"--inputs {path}: none of the {len(files)} audio files could be read")
    known = np.array(labels)
    read = [str(path / n) for n in names]
    return InputSet(np.stack(arrays), names, str(path), known if (known >= 0).all() else None, skipped, read)


def _data_json(path: Path, labels_csv: str | None, export: dict[str, Any]) -> InputSet:
    """An AST data file: clips with their labels (multi-hot targets); unreadable files are skipped and listed, a
    missing one is an error."""
    from fastast_deploy.audio.datasets import load_dataset, raw_fbank
    from fastast_deploy.audio.features import normalize
    from fastast_deploy.audio.labels import LabelSet, read_label_csv

    names = export.get("labels")
    if labels_csv is not None:
        label_set = read_label_csv(labels_csv)
    elif names:
        label_set = LabelSet(tuple(names), tuple(names))
    else:
        raise VerifyUsageError(f"{path} is an AST data file; give its label CSV with --labels")
    if names and list(label_set.names) != list(names):
        raise VerifyUsageError(f"{path}: the label CSV names {len(label_set)} labels differently from the engine")
    if export.get("features") is None:
        raise VerifyUsageError("the engine records no feature settings, so audio cannot be turned into its input")
    config = FeatureConfig.from_dict(export["features"])
    dataset = load_dataset(path, label_set)
    missing = dataset.missing()
    if missing:  # as evaluate, train and bench: a listed file that is not there is an error, not a skip
        raise VerifyUsageError(f"--inputs {path}: {len(missing)} of {len(dataset)} listed audio files are missing "
                               f"(e.g. {missing[0].path}); fix the paths or remove them from the data list")
    arrays, clips, targets, skipped, files = [], [], [], [], []
    for example in dataset.examples:
        try:
            arrays.append(normalize(raw_fbank(example.path, config), config.mean, config.std).numpy())
        except (FastASTError, OSError) as err:  # as in _audio_folder
            skipped.append({"file": str(example.path), "error": str(err) if isinstance(err, FastASTError) else
                            f"cannot read {example.path} ({error_summary(err, with_type=True)})"})
            continue
        clips.append(example.clip)
        files.append(str(example.path))
        target = np.zeros(len(label_set), np.float32)
        target[list(example.labels)] = 1.0
        targets.append(target)
    if not arrays:
        raise VerifyUsageError(f"--inputs {path}: none of its {len(dataset)} audio files could be read")
    return InputSet(np.stack(arrays), clips, str(path), np.stack(targets), skipped, files)


def load_reference(spec: str, inputs: InputSet | None, export: dict[str, Any]) -> Reference:
    """A reference named by ``--reference``; for a checkpoint, the inputs are run through PyTorch with the engine's
    ToMe schedule and input length."""
    path = Path(spec)
    if path.suffix == ".npz" and path.is_file():
        fbank = read_npz_array(path, INPUT_NAME, VerifyUsageError).astype(np.float32)
        return Reference("npz", str(path), read_npz_array(path, OUTPUT_NAME, VerifyUsageError), fbank=fbank)
    if path.suffix == ".json" and path.is_file():
        return Reference("runresults", str(path), _runresults_logits(path))
    if inputs is None:
        raise VerifyUsageError("a checkpoint reference needs inputs")
    return _checkpoint_reference(spec, inputs, export)


def _runresults_logits(path: Path) -> np.ndarray:
    """Logits of the first runner in a Polygraphy RunResults file, iterations concatenated."""
    from polygraphy.comparator import RunResults


    try:
        with polygraphy_silent():
            results = RunResults.load(str(path))
        runs = list(results.lst)
        _, iterations = runs[0] if runs else (None, [])
        iterations = list(iterations)
    except Exception as err:  # noqa: BLE001 - polygraphy raises its own, json's and numpy's errors
        raise VerifyUsageError(polygraphy_load_error(path, "RunResults", err)) from None
    if not iterations:
        raise VerifyUsageError(f"{path} holds no runner results")
    if any(not hasattr(it, "keys") or "logits" not in it for it in iterations):
        raise VerifyUsageError(f"{path}: the first runner has no 'logits' output")
    return concatenate_parts([it["logits"] for it in iterations], f"{path}: the 'logits' of its iterations",
                             VerifyUsageError)


def _checkpoint_reference(source: str, inputs: InputSet, export: dict[str, Any]) -> Reference:
    """The checkpoint run through the runner with the engine's ToMe schedule and input length: logits and merge
    positions per block."""
    import torch

    from fastast_deploy.exporters.parity import torch_outputs
    from fastast_deploy.inference.runner import open_runner

    with open_runner(source, like=export) as runner:
        model = runner.model
        if model.config.num_mel_bins != export["model"]["num_mel_bins"]:
            raise VerifyUsageError(f"reference {source} takes {model.config.num_mel_bins} mel bins, the engine "
                                   f"{export['model']['num_mel_bins']}")
        logits, merges = [], []
        with torch.inference_mode():
            for start in range(0, len(inputs.fbank), 16):
                out, positions = torch_outputs(model, inputs.fbank[start : start + 16])
                logits.append(out)
                merges.append(positions)
    per_block = [np.concatenate([m[i] for m in merges]) for i in range(len(merges[0]))] if merges else []
    labels = list(runner.label_names) if runner.label_names else None
    resolved = model.source_info.get("path", os.fspath(source))  # "default" names a file inside the package
    return Reference("checkpoint", str(resolved), np.concatenate(logits), labels, per_block)


def load_waveform_inputs(spec: str, num: int, samples: int, seed: int, export: dict[str, Any],
                         labels_csv: str | None = None) -> InputSet:
    """Inputs of a waveform-in engine: ``waveform`` (N, samples) and, for the reference, ``fbank`` (N, T, F), the
    project's own features of the same audio. ``random``: `waveform_like` clips; a folder of audio or an AST
    data .json: each file's first window (resampled, NaN past its end), as `predict` feeds it."""

    if export.get("features") is None:
        raise VerifyUsageError("the engine records no feature settings, so audio cannot be turned into its input")
    config = FeatureConfig.from_dict(export["features"])
    if spec == "random":
        from fastast_deploy.exporters.fbank_graph import reference_fbank
        from fastast_deploy.metrics import waveform_like

        waves = waveform_like(num, samples, seed, config.sample_rate)
        return InputSet(reference_fbank(waves, config), [f"random-{i}" for i in range(num)],
                        f"random waveforms (seed {seed})", waveform=waves)
    path = Path(spec)
    if not (path.is_dir() or path.suffix == ".json" and path.is_file() and is_ast_data_json(path)):
        raise VerifyUsageError(f"--inputs {spec}: a waveform-in engine takes random, a folder of audio or an AST "
                               "data .json (fbank arrays are no input for it)")
    inputs = load_inputs(spec, num, config.frames, config.num_mel_bins, seed, export, labels_csv)
    inputs.waveform = np.stack([first_window(file, config, samples) for file in inputs.files])
    return inputs


def first_window(path: str | os.PathLike, config: Any, samples: int) -> np.ndarray:
    """(samples,) float32: an audio file's first waveform window at the model's rate, NaN past its end."""
    from fastast_deploy.audio.features import read_audio
    from fastast_deploy.audio.windows import waveform_windows

    waveform, rate = read_audio(path)
    return waveform_windows(waveform, rate, config, config.frames, samples)[0]
