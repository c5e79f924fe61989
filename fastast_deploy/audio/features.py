"""AST input features: audio file -> mono 16 kHz waveform -> Kaldi log-mel fbank -> normalised (T, F) tensor.

Matches AST's `_wav2fbank` (torchaudio `compliance.kaldi.fbank` with a Hann window, no dither, no energy),
implemented in plain torch so torchaudio is not needed.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from fastast_deploy.audio.frames import frame_sizes, frames_span, require_frame
from fastast_deploy.errors import AudioError, ConfigError, error_summary
from fastast_deploy.files import shown_path
from fastast_deploy.model.config import AUDIOSET, FeatureConfig

PREEMPHASIS = 0.97
LOW_FREQ_HZ = 20.0
LOG_FLOOR = torch.finfo(torch.float32).eps
BLOCK_SECONDS = 10.0  # audio read and resampled per step where a file is streamed


def audio_path(path: str | os.PathLike[str]) -> Path:
    """``path`` when it names a file; an AudioError saying what it is otherwise."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise AudioError(f"audio file {shown_path(path)} {what}; expected a readable audio file (WAV, FLAC, OGG)")
    return path


def audio_blocks(path: str | os.PathLike[str], seconds: float | None = None) -> Iterator[tuple[np.ndarray, int]]:
    """The one way audio files are read: decoded with libsndfile (WAV, FLAC, OGG, ...) as float32, checked for
    NaN / inf, downmixed to mono; yields (block (samples,) float32, sample rate in Hz) of ``seconds`` each (None:
    the whole file as one block). AudioError for a missing, unreadable or non-finite file. A file name that is
    not UTF-8 (surrogate-escaped by Python) is opened by its bytes and named in errors with ``\\x`` escapes."""
    path = audio_path(path)
    try:
        with sf.SoundFile(os.fsencode(path)) as f:  # bytes: libsndfile gets the name as the file system has it
            rate = int(f.samplerate)
            size = -1 if seconds is None else max(1, int(seconds * rate))
            while True:
                data = f.read(size, dtype="float32", always_2d=True)  # (samples, channels)
                if not np.isfinite(data).all():  # float WAV / FLAC can carry them; features would be NaN
                    bad = int((~np.isfinite(data)).any(axis=1).sum())
                    raise AudioError(f"audio file {shown_path(path)} has NaN or inf in {bad} of {data.shape[0]} "
                                     "samples read; expected finite audio")
                yield (data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]), rate
                if size < 0 or len(data) < size:
                    return
    except (sf.SoundFileError, RuntimeError, ValueError) as err:
        raise AudioError(
            f"cannot read audio file {shown_path(path)} ({error_summary(err)}); expected an audio file libsndfile can "
            "decode (WAV, FLAC, OGG)"
        ) from None


def read_audio(path: str | os.PathLike[str]) -> tuple[torch.Tensor, int]:
    """A whole audio file (``audio_blocks``): (waveform of shape (samples,), sample rate in Hz)."""
    (data, rate), = audio_blocks(path)
    if data.shape[0] == 0:
        raise AudioError(f"audio file {shown_path(audio_path(path))} has 0 samples; expected non-empty audio")
    return torch.from_numpy(np.ascontiguousarray(data)), rate


def resampled_blocks(path: str | os.PathLike[str], rate: int) -> Iterator[np.ndarray]:
    """Mono float32 blocks of the file (``audio_blocks``, BLOCK_SECONDS each) at ``rate``, resampled as a
    stream (soxr HQ): the samples ``resample`` gives for the whole file, in constant memory."""
    stream = None
    for mono, source_rate in audio_blocks(path, BLOCK_SECONDS):
        if stream is None and source_rate != rate:
            stream = soxr.ResampleStream(source_rate, rate, 1, dtype="float32", quality="HQ")
        last = len(mono) < max(1, int(BLOCK_SECONDS * source_rate))
        out = mono if source_rate == rate else stream.resample_chunk(mono, last=last)
        if len(out):
            yield np.ascontiguousarray(out, dtype=np.float32)


def resample(waveform: torch.Tensor, orig_sr: int, target_sr: int = 16000) -> torch.Tensor:
    """Resample a (samples,) waveform from `orig_sr` to `target_sr` with soxr (HQ); identity if the rates match."""
    if orig_sr <= 0 or target_sr <= 0:
        raise AudioError(f"sample rates must be positive, got {orig_sr} Hz -> {target_sr} Hz")
    if orig_sr == target_sr:
        return waveform
    if waveform.dim() != 1:
        raise AudioError(f"expected a mono waveform of shape (samples,), got shape {tuple(waveform.shape)}")
    samples = np.ascontiguousarray(waveform.detach().cpu().numpy())
    out = soxr.resample(samples, orig_sr, target_sr, quality="HQ")
    return torch.from_numpy(np.ascontiguousarray(out))


def _kaldi_mel(hz: torch.Tensor | float) -> torch.Tensor | float:
    if isinstance(hz, torch.Tensor):
        return 1127.0 * torch.log1p(hz / 700.0)
    return 1127.0 * math.log1p(hz / 700.0)


@functools.lru_cache(maxsize=16)
def _fbank_weights(sample_rate: int, n_fft: int, num_mel_bins: int, win: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 (win,) symmetric Hann window and (n_fft // 2 + 1, num_mel_bins) mel filterbank, Kaldi style.

    Shared between calls: never modify the returned tensors in place.
    """
    n = torch.arange(win, dtype=torch.float64)
    window = 0.5 - 0.5 * torch.cos(2 * math.pi * n / (win - 1))  # Kaldi "hanning"

    mel_low = _kaldi_mel(LOW_FREQ_HZ)
    mel_high = _kaldi_mel(sample_rate / 2)
    delta = (mel_high - mel_low) / (num_mel_bins + 1)
    m = torch.arange(num_mel_bins, dtype=torch.float64).unsqueeze(1)  # (bins, 1)
    left, center, right = mel_low + m * delta, mel_low + (m + 1) * delta, mel_low + (m + 2) * delta

    # Kaldi spans the n_fft // 2 bins below Nyquist; the Nyquist bin gets weight 0.
    bin_mel = _kaldi_mel(torch.arange(n_fft // 2, dtype=torch.float64) * (sample_rate / n_fft)).unsqueeze(0)
    up = (bin_mel - left) / (center - left)
    down = (right - bin_mel) / (right - center)
    filters = torch.clamp(torch.minimum(up, down), min=0.0)  # (bins, n_fft // 2)
    filters = torch.nn.functional.pad(filters, (0, 1))  # (bins, n_fft // 2 + 1)
    return window, filters.T.contiguous()


def fbank(waveform: torch.Tensor, sample_rate: int, num_mel_bins: int = 128) -> torch.Tensor:
    """Unnormalised Kaldi log-mel filterbank of a (samples,) waveform, shape (frames, num_mel_bins), float32.

    25 ms symmetric Hann frames every 10 ms with snip_edges (frames = 1 + (samples - win) // shift), per-frame DC
    removal, pre-emphasis 0.97, power spectrum, triangular filters on the Kaldi mel scale from 20 Hz to Nyquist,
    log with a float32-epsilon floor; no dither, no energy term. Computed in float64 internally.
    """
    if waveform.dim() != 1:
        raise AudioError(f"expected a mono waveform of shape (samples,), got shape {tuple(waveform.shape)}")
    if sample_rate <= 0:
        raise AudioError(f"sample rate must be positive, got {sample_rate} Hz")
    if num_mel_bins <= 0:
        raise ConfigError(f"num_mel_bins must be a positive integer, got {num_mel_bins}")
    require_frame(waveform.numel(), sample_rate)
    win, shift, n_fft = frame_sizes(sample_rate)
    window, filters = _fbank_weights(sample_rate, n_fft, num_mel_bins, win)

    frames = waveform.detach().to(torch.float64).unfold(0, win, shift)  # (T, win)
    frames = frames - frames.mean(dim=1, keepdim=True)
    previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)  # x[-1] := x[0], as Kaldi does
    frames = (frames - PREEMPHASIS * previous) * window
    spectrum = torch.fft.rfft(frames, n=n_fft).abs().pow(2)  # (T, n_fft // 2 + 1)
    mel = spectrum @ filters  # (T, num_mel_bins)
    return mel.clamp(min=LOG_FLOOR).log().to(torch.float32)


def pad_or_cut(features: torch.Tensor, frames: int) -> torch.Tensor:
    """Zero-pad at the end or cut a (T, F) tensor to (frames, F)."""
    missing = frames - features.shape[0]
    if missing > 0:
        return torch.nn.functional.pad(features, (0, 0, 0, missing))
    return features[:frames]


def normalize(features: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """AST normalisation `(x - mean) / (2 * std)`, any shape."""
    return (features - mean) / (2 * std)


def waveform_fbank(waveform: torch.Tensor, sample_rate: int, config: FeatureConfig = AUDIOSET) -> torch.Tensor:
    """Unnormalised fbank (T_total, config.num_mel_bins) of a whole (samples,) waveform, as AST's loader makes it:
    resampled to config.sample_rate, mean removed, Kaldi fbank; not yet padded or cut."""
    waveform = resample(waveform, sample_rate, config.sample_rate)
    return fbank(waveform - waveform.mean(), config.sample_rate, config.num_mel_bins)


def waveform_to_input(waveform: torch.Tensor, sample_rate: int, config: FeatureConfig = AUDIOSET) -> torch.Tensor:
    """Model input of shape (config.frames, config.num_mel_bins) from a (samples,) waveform at `sample_rate`."""
    features = waveform_fbank(waveform, sample_rate, config)  # (T, F)
    return normalize(pad_or_cut(features, config.frames), config.mean, config.std)


def file_fbank(path: str | os.PathLike[str], config: FeatureConfig = AUDIOSET) -> torch.Tensor:
    """Unnormalised fbank (T_total, config.num_mel_bins) of a whole audio file (``waveform_fbank`` of it): the
    one way from a file to features, which model inputs, training caches and windowed prediction all take."""
    waveform, rate = read_audio(path)
    try:
        return waveform_fbank(waveform, rate, config)
    except AudioError as err:
        raise AudioError(f"{shown_path(path)}: {err}") from None


def first_fbank(path: str | os.PathLike[str], config: FeatureConfig = AUDIOSET) -> torch.Tensor:
    """Unnormalised fbank (config.frames, config.num_mel_bins) of the start of an audio file: ``file_fbank``
    padded or cut to the model's window, reading only the samples the window covers (and at most two read
    blocks more), so memory does not grow with the file (a 40 KB wav at 1 Hz is 5.5 hours at 16 kHz).

    A clip that ends within what was read is featurised whole, exactly as ``file_fbank``. For a longer one the
    clip mean (which AST removes) is not known without reading everything; it is not removed, since the fbank's
    per-frame DC removal cancels a constant offset (the result equals ``file_fbank``'s up to float rounding).
    """
    rate = config.sample_rate
    span = frames_span(config.frames, rate)  # samples the window's frames cover
    blocks = resampled_blocks(path, rate)
    head, read = [], 0
    try:
        for block in blocks:
            head.append(block)
            read += len(block)
            if read > span:
                break
        ended = read <= span or next(blocks, None) is None
    finally:
        blocks.close()  # closes the file
    if read == 0:
        raise AudioError(f"audio file {shown_path(audio_path(path))} has 0 samples; expected non-empty audio")
    waveform = torch.from_numpy(np.concatenate(head))
    try:
        if ended:  # the whole clip: as waveform_fbank
            features = fbank(waveform - waveform.mean(), rate, config.num_mel_bins)
        else:
            features = fbank(waveform[:span], rate, config.num_mel_bins)
    except AudioError as err:
        raise AudioError(f"{shown_path(path)}: {err}") from None
    return pad_or_cut(features, config.frames)  # (T, F)


def load_input(path: str | os.PathLike[str], config: FeatureConfig = AUDIOSET) -> torch.Tensor:
    """Model input of shape (config.frames, config.num_mel_bins) from an audio file: its first window
    (``first_fbank``, read in constant memory), normalised."""
    return normalize(first_fbank(path, config), config.mean, config.std)


def load_batch(paths: Iterable[str | os.PathLike[str]], config: FeatureConfig = AUDIOSET) -> torch.Tensor:
    """Model inputs of shape (B, config.frames, config.num_mel_bins) from B audio files."""
    inputs = [load_input(path, config) for path in paths]
    if not inputs:
        raise AudioError("no audio files given; expected at least one path")
    return torch.stack(inputs)  # (B, T, F)
