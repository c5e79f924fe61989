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

import math
import os
from collections.abc import Iterator

import numpy as np
import soundfile as sf
import soxr
import torch

from fastast_deploy.audio.features import FeatureConfig, _frame_sizes, fbank, normalize, pad_or_cut
from fastast_deploy.errors import AudioError, error_summary

BLOCK_SECONDS = 10.0  # audio read and resampled per step


def _resampled_blocks(path: str | os.PathLike, rate: int) -> Iterator[np.ndarray]:
    """Mono float32 blocks of the file at ``rate`` (soxr HQ, as ``features.resample``); AudioError on bad data."""
    try:
        with sf.SoundFile(str(path)) as f:
            source_rate = f.samplerate
            stream = None if source_rate == rate else soxr.ResampleStream(source_rate, rate, 1, dtype="float32",
                                                                          quality="HQ")
            block = max(1, int(BLOCK_SECONDS * source_rate))
            while True:
                data = f.read(block, dtype="float32", always_2d=True)  # (samples, channels)
                last = len(data) < block
                if not np.isfinite(data).all():
                    raise AudioError(f"audio file {path} has NaN or inf samples; expected finite audio")
                mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
                out = mono if stream is None else stream.resample_chunk(mono, last=last)
                if len(out):
                    yield np.ascontiguousarray(out, dtype=np.float32)
                if last:
                    return
    except (sf.SoundFileError, RuntimeError, ValueError) as err:
        raise AudioError(f"cannot read audio file {path} ({error_summary(err)}); expected an audio file "
                         "libsndfile can decode (WAV, FLAC, OGG)") from None


def window_count(total_frames: int, frames: int, hop: int) -> int:
    """How many windows of ``frames`` every ``hop`` cover ``total_frames`` (the last zero-padded)."""
    return 1 if total_frames <= frames else 1 + math.ceil((total_frames - frames) / hop)


def stream_windows(path: str | os.PathLike, config: FeatureConfig, hop: int) -> Iterator[np.ndarray]:
    """Normalised model inputs (frames, mel bins) float32, window by window, for one audio file; memory is
    bounded by a window and a read block, not by the file."""
    rate = config.sample_rate
    win, shift, _ = _frame_sizes(rate)
    total, length = 0.0, 0
    for block in _resampled_blocks(path, rate):
        total += float(block.sum(dtype=np.float64))
        length += len(block)
    if length < win:
        raise AudioError(f"audio file {path} has {length} samples at {rate} Hz, shorter than one frame ({win})")
    mean = total / length
    frames_total = 1 + (length - win) // shift
    span = (config.frames - 1) * shift + win  # samples one window's frames cover
    buffer = np.zeros(0, np.float32)
    offset = 0  # file position (resampled samples) of buffer[0]
    index, count = 0, window_count(frames_total, config.frames, hop)
    for block in _resampled_blocks(path, rate):
        buffer = np.concatenate([buffer, block])
        while index < count:
            start = index * hop * shift  # first sample of window `index`
            end = min(start + span, length)
            if offset + len(buffer) < end:
                break  # wait for more samples
            chunk = torch.from_numpy(buffer[start - offset : end - offset] - np.float32(mean))  # as waveform_fbank
            features = pad_or_cut(fbank(chunk, rate, config.num_mel_bins), config.frames)
            yield normalize(features, config.mean, config.std).numpy().astype(np.float32, copy=False)
            index += 1
        keep = index * hop * shift - offset  # samples before the next window's start are done with
        if keep > 0:
            buffer, offset = buffer[keep:], offset + keep
