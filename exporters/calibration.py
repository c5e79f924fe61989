"""Calibration clips of an int8 export: model inputs (N, T, F) from an .npz, a Polygraphy inputs .json, or audio
(a folder, an AST data .json, an ESC-50 style .csv) read through the audio layer with the model's feature settings."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from fastast_deploy.contract import INPUT_NAME
from fastast_deploy.engines.feeds import read_npz_array, read_polygraphy_feeds
from fastast_deploy.errors import FastASTError
from fastast_deploy.model.config import FeatureConfig


class CalibrationError(FastASTError):
    """Calibration data that cannot be used (missing, unreadable, of another input shape)."""


def load_calibration(spec: str | os.PathLike, frames: int, mel: int, export: dict[str, Any],
                     limit: int | None = None) -> np.ndarray:
    """Model inputs (N, frames, mel) float32 from ``spec``: an .npz with an ``fbank`` array of model inputs, a
    Polygraphy inputs .json, or audio (a folder of audio or one folder per class, an AST data .json, an ESC-50
    style .csv) turned into inputs with the model's feature settings (``export["features"]``). Only the first
    ``limit`` clips are read, and of each only its first window, streamed (memory bounded by the clips used, not
    by the files); every audio file read must be readable."""
    from fastast_deploy.audio.datasets import folder_audio, is_ast_data_json, listed_audio

    path = Path(spec)
    if not path.exists():
        raise CalibrationError(f"--calib {spec}: no such file or folder; give an .npz with an fbank array, a folder "
                               "of audio, an AST data .json or an ESC-50 style .csv")
    if path.is_file() and path.suffix not in (".npz", ".json", ".csv"):
        raise CalibrationError(f"--calib {spec}: a {path.suffix or 'suffix-less'} file; expected an .npz, a .json, "
                               "a .csv or a folder")
    try:
        if path.is_dir():
            fbank = audio_inputs(folder_audio(path)[:limit], export)
        elif path.suffix == ".csv" or path.suffix == ".json" and is_ast_data_json(path):
            fbank = audio_inputs(listed_audio(path)[:limit], export)
        elif path.suffix == ".npz":
            fbank = read_npz_array(path, INPUT_NAME, CalibrationError)
        else:
            fbank = read_polygraphy_feeds(path, INPUT_NAME, CalibrationError)
    except FastASTError as err:
        raise CalibrationError(f"--calib {spec}: {err}") from None
    if fbank.ndim != 3 or fbank.shape[1:] != (frames, mel):
        raise CalibrationError(f"--calib {spec}: inputs of shape {fbank.shape}; the model takes (N, {frames}, {mel})")
    if len(fbank) == 0:
        raise CalibrationError(f"--calib {spec}: no clips")
    bad = int((~np.isfinite(fbank)).any(axis=(1, 2)).sum())
    if bad:
        raise CalibrationError(f"--calib {spec}: {bad} of {len(fbank)} clips hold NaN or inf")
    return np.ascontiguousarray(fbank[:limit], dtype=np.float32)


def audio_inputs(files: list[Path], export: dict[str, Any]) -> np.ndarray:
    """Model inputs (N, T, F) of audio files: each file's first window (`audio.features.load_input`, streamed)
    with the model's feature settings; CalibrationError naming how many files could not be read and the first
    with its reason."""
    from fastast_deploy.audio.features import load_input

    if export.get("features") is None:
        raise CalibrationError("the model records no feature settings, so audio cannot be turned into its input")
    config = FeatureConfig.from_dict(export["features"])
    arrays, failed = [], []
    for file in files:
        try:
            arrays.append(load_input(file, config).numpy())
        except FastASTError as err:
            failed.append(f"{file}: {err}")
    if failed:
        raise CalibrationError(f"{len(failed)} of {len(files)} audio files could not be read (first: {failed[0]}); "
                               "fix or remove them")
    if not arrays:
        raise CalibrationError("it lists no audio files")
    return np.stack(arrays)
