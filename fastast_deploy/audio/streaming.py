"""Model-input windows of a long audio file in constant memory.

The whole-file path (``features.file_fbank``) holds the waveform and its fbank at once: a 2-hour file is
115 M samples and 720 k frames, several GB in the float64 the fbank computes in. Kaldi frames are independent
of each other (snip_edges, per-frame DC removal and pre-emphasis), so window i's frames, computed from just the
samples they cover, equal rows i*hop .. i*hop+frames of the whole-file fbank. Two streaming passes keep that
exact: the first finds the clip mean (AST removes the mean of the whole resampled clip) and the length; the
second resamples again, removes the mean and cuts windows. soxr's stream resampler gives the samples its
one-shot ``resample`` gives, so the windows are the ones ``split_windows`` cuts from the whole-file fbank.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch

from fastast_deploy.audio.features import fbank, normalize, pad_or_cut, resampled_blocks
from fastast_deploy.audio.frames import frame_count, frame_sizes, frames_span, require_frame, window_count
from fastast_deploy.files import shown_path
from fastast_deploy.model.config import FeatureConfig


def _scan(path: str | os.PathLike, rate: int) -> tuple[float, int]:
    """First pass: the mean and the length (samples at ``rate``) of the resampled clip."""
    total, length = 0.0, 0
    for block in resampled_blocks(path, rate):
        total += float(block.sum(dtype=np.float64))
        length += len(block)
    return (total / length if length else 0.0), length


def _window_samples(path: str | os.PathLike, rate: int, length: int, starts: Iterator[int],
                    span: int) -> Iterator[np.ndarray]:
    """Second pass: samples [start, min(start + span, length)) of the resampled clip for each window start (in
    ascending order), holding only what the next window needs."""
    buffer, offset = np.zeros(0, np.float32), 0  # offset: clip position of buffer[0]
    start = next(starts, None)
    for block in resampled_blocks(path, rate):
        buffer = np.concatenate([buffer, block])
        while start is not None and offset + len(buffer) >= min(start + span, length):
            yield buffer[start - offset : min(start + span, length) - offset]
            start = next(starts, None)
        drop = (start if start is not None else offset + len(buffer)) - offset
        if drop > 0:
            buffer, offset = buffer[drop:], offset + drop


def _starts(path: str | os.PathLike, config: FeatureConfig, hop: int) -> tuple[float, int, Iterator[int]]:
    rate = config.sample_rate
    shift = frame_sizes(rate)[1]
    mean, length = _scan(path, rate)
    require_frame(length, rate, f"audio file {shown_path(path)}")
    count = window_count(frame_count(length, rate), config.frames, hop)
    return mean, length, iter(range(0, count * hop * shift, hop * shift))


def stream_windows(path: str | os.PathLike, config: FeatureConfig, hop: int) -> Iterator[np.ndarray]:
    """Normalised model inputs (frames, mel bins) float32, window by window, for one audio file; memory is
    bounded by a window and a read block, not by the file."""
    mean, length, starts = _starts(path, config, hop)
    span = frames_span(config.frames, config.sample_rate)  # samples one window's frames cover
    for chunk in _window_samples(path, config.sample_rate, length, starts, span):
        waveform = torch.from_numpy(chunk - np.float32(mean))  # mean removed as waveform_fbank does
        features = pad_or_cut(fbank(waveform, config.sample_rate, config.num_mel_bins), config.frames)
        yield normalize(features, config.mean, config.std).numpy().astype(np.float32, copy=False)


def stream_waveform_windows(path: str | os.PathLike, config: FeatureConfig, hop: int,
                            samples: int) -> Iterator[np.ndarray]:
    """Waveform-in model inputs (samples,) float32, window by window: the resampled clip from each window's
    start, NaN past the clip's end (the frames the graph zero-pads), as ``windows.waveform_windows`` cuts them."""
    _, length, starts = _starts(path, config, hop)
    for chunk in _window_samples(path, config.sample_rate, length, starts, samples):
        out = np.full(samples, np.nan, dtype=np.float32)
        out[: len(chunk)] = chunk
        yield out
