"""What `verify` feeds an engine and compares against: input sets (random, npz, Polygraphy JSON, audio folder)
and reference outputs (a checkpoint run in PyTorch, an npz, a Polygraphy RunResults file)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fastast_deploy.audio.datasets import is_ast_data_json
from fastast_deploy.audio.labels import label_folder
from fastast_deploy.contract import INPUT_NAME, OUTPUT_NAME
from fastast_deploy.engines.feeds import (
    concatenate_parts,
    polygraphy_load_error,
    polygraphy_silent,
    read_npz_array,
    read_polygraphy_feeds,
)
from fastast_deploy.errors import DatasetError, FastASTError, VerifyUsageError, error_summary, unreadable_clips
from fastast_deploy.files import shown_path
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


@dataclass(frozen=True)
class Unreadable:
    """What verify does with input clips that cannot be read, as evaluate does: each goes to ``report(path,
    reason)``; then the run fails (UnreadableClipsError, exit 1) unless ``skip``, when the others are compared and
    the report lists the skipped ones."""

    skip: bool = False
    report: Callable[[str, str], None] | None = None


FAIL_ON_UNREADABLE = Unreadable()  # the default: an unreadable input clip fails the run


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
                labels_csv: str | None = None, unreadable: Unreadable = FAIL_ON_UNREADABLE) -> InputSet:
    """``random`` (seeded fbank-like arrays), an ``.npz`` with ``fbank``, a Polygraphy inputs ``.json``, an AST
    data ``.json`` (``{"data": [{"wav", "labels"}]}``, labels as in ``labels_csv`` or the engine's names), or a
    folder of audio files; audio goes through the engine's feature settings, and clips that cannot be read are
    handled as ``unreadable`` says."""
    if spec == "random":
        names = [f"random-{i}" for i in range(num)]
        return InputSet(fbank_like(num, frames, mel, seed), names, f"random (seed {seed})")
    path = Path(spec)
    if not path.exists():
        raise VerifyUsageError(f"--inputs {spec}: no such file or folder; use random, a folder of audio, an .npz "
                               "with an fbank array or a Polygraphy inputs .json")
    if path.is_dir():
        return _audio_folder(path, export, unreadable)
    if path.suffix == ".npz":
        return _checked(InputSet(read_npz_array(path, INPUT_NAME, VerifyUsageError), [], str(path)), frames, mel)
    if path.suffix == ".json":
        if is_ast_data_json(path):
            return _data_json(path, labels_csv, export, unreadable)
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


def _read_each(files: list[Path], read: Callable[[Path], np.ndarray], unreadable: Unreadable,
               ) -> tuple[list[np.ndarray], list[int], list[dict[str, str]]]:
    """``read`` every file: the arrays and indices of those read, and ``{"file", "error"}`` of those that could not
    be (damaged, no permission), each also sent to ``unreadable.report``; then UnreadableClipsError unless
    ``unreadable.skip`` (and some were read)."""
    arrays, kept, skipped = [], [], []
    for index, file in enumerate(files):
        try:
            arrays.append(read(file))
        except (FastASTError, OSError) as err:
            reason = (str(err) if isinstance(err, FastASTError) else
                      f"cannot read ({error_summary(err, with_type=True)})")
            skipped.append({"file": shown_path(file), "error": reason})
            if unreadable.report is not None:
                unreadable.report(shown_path(file), reason)
            continue
        kept.append(index)
    if skipped and (not unreadable.skip or not arrays):
        raise unreadable_clips([f"{s['file']}: {s['error']}" for s in skipped], len(files), len(arrays))
    return arrays, kept, skipped


def _audio_folder(path: Path, export: dict[str, Any], unreadable: Unreadable) -> InputSet:
    """Every audio file under ``path``; a sub-folder named like a label (see ``label_folder``) gives its clips that
    label."""
    from fastast_deploy.audio.datasets import folder_audio
    from fastast_deploy.audio.features import load_input

    try:
        files = folder_audio(path)
    except DatasetError as err:
        raise VerifyUsageError(f"--inputs {path}: {err}") from None
    config = _feature_config(export)
    folders = [label_folder(name) for name in export.get("labels") or []]
    arrays, kept, skipped = _read_each(files, lambda file: load_input(file, config).numpy(), unreadable)
    read = [files[i] for i in kept]
    parents = [file.parent.name if file.parent != path else None for file in read]
    known = np.array([folders.index(p) if p in folders else -1 for p in parents])
    return InputSet(np.stack(arrays), [shown_path(file.relative_to(path)) for file in read], str(path),
                    known if (known >= 0).all() else None, skipped, [str(file) for file in read])


def _feature_config(export: dict[str, Any]) -> FeatureConfig:
    if export.get("features") is None:
        raise VerifyUsageError("the engine records no feature settings, so audio cannot be turned into its input")
    return FeatureConfig.from_dict(export["features"])


def _data_json(path: Path, labels_csv: str | None, export: dict[str, Any], unreadable: Unreadable) -> InputSet:
    """An AST data file: clips with their labels (multi-hot targets); unreadable files are handled as
    ``unreadable`` says, a missing one is an error."""
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
    config = _feature_config(export)
    dataset = load_dataset(path, label_set)
    missing = dataset.missing()
    if missing:  # as evaluate, train and bench: a listed file that is not there is an error, not a skip
        raise VerifyUsageError(f"--inputs {path}: {len(missing)} of {len(dataset)} listed audio files are missing "
                               f"(e.g. {missing[0].path}); fix the paths or remove them from the data list")
    examples = dataset.examples
    arrays, kept, skipped = _read_each(
        [Path(example.path) for example in examples],
        lambda file: normalize(raw_fbank(file, config), config.mean, config.std).numpy(), unreadable)
    targets = np.zeros((len(kept), len(label_set)), np.float32)
    for row, index in enumerate(kept):
        targets[row, list(examples[index].labels)] = 1.0
    return InputSet(np.stack(arrays), [examples[i].clip for i in kept], str(path), targets, skipped,
                    [str(examples[i].path) for i in kept])


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
                         labels_csv: str | None = None, unreadable: Unreadable = FAIL_ON_UNREADABLE) -> InputSet:
    """Inputs of a waveform-in engine: ``waveform`` (N, samples) and, for the reference, ``fbank`` (N, T, F), the
    project's own features of the same audio. ``random``: `waveform_like` clips; a folder of audio or an AST
    data .json: each file's first window (resampled, NaN past its end), as `predict` feeds it."""

    config = _feature_config(export)
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
    inputs = load_inputs(spec, num, config.frames, config.num_mel_bins, seed, export, labels_csv, unreadable)
    inputs.waveform = np.stack([first_window(file, config, samples) for file in inputs.files])
    return inputs


def first_window(path: str | os.PathLike, config: Any, samples: int) -> np.ndarray:
    """(samples,) float32: an audio file's first waveform window at the model's rate, NaN past its end."""
    from fastast_deploy.audio.features import read_audio
    from fastast_deploy.audio.windows import waveform_windows

    waveform, rate = read_audio(path)
    return waveform_windows(waveform, rate, config, config.frames, samples)[0]
