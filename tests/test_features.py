import dataclasses
import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from fastast_deploy.audio.features import (
    fbank,
    load_batch,
    load_input,
    normalize,
    pad_or_cut,
    read_audio,
    resample,
    waveform_to_input,
)
from fastast_deploy.errors import AudioError, ConfigError
from fastast_deploy.model.config import AUDIOSET, ESC50, PRESETS, SPEECHCOMMANDS, FeatureConfig

SR = 16000


def _tone(freq: float, seconds: float, sr: int = SR, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _signal(name: str) -> np.ndarray:
    t = np.arange(2 * SR) / SR
    if name == "tone":
        return _tone(1000.0, 2.0)
    if name == "noise":
        return (0.5 * np.random.default_rng(0).uniform(-1.0, 1.0, t.size)).astype(np.float32)
    # linear chirp 100 Hz -> 7.9 kHz over 2 s
    return (0.5 * np.sin(2 * np.pi * (100.0 * t + (7900.0 - 100.0) / 4.0 * t**2))).astype(np.float32)


def _kaldi_mel(hz: float) -> float:
    return 1127.0 * math.log(1.0 + hz / 700.0)


def _peak_hz(waveform: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(waveform * np.hanning(waveform.size)))
    return float(np.fft.rfftfreq(waveform.size, 1.0 / sr)[spectrum.argmax()])


def _one_line_audio_error(excinfo: pytest.ExceptionInfo[AudioError]) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


# ---- fbank against an independent reference --------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:At least one mel filter has all zero values")
@pytest.mark.parametrize("name", ["tone", "noise", "chirp"])
def test_fbank_matches_hf_ast_feature_extractor(name: str) -> None:
    transformers = pytest.importorskip("transformers")
    waveform = _signal(name)
    frames = 1 + (waveform.size - 400) // 160  # 198
    extractor = transformers.ASTFeatureExtractor(do_normalize=False, max_length=frames)
    reference = extractor(waveform, sampling_rate=SR, return_tensors="np").input_values[0]

    ours = fbank(torch.from_numpy(waveform), SR)

    assert ours.dtype == torch.float32
    assert ours.shape == reference.shape == (frames, 128)
    assert np.abs(ours.numpy() - reference).max() <= 1e-3


# ---- fbank by hand ---------------------------------------------------------------------------------------------


def test_fbank_frame_count_uses_snip_edges() -> None:
    assert fbank(torch.randn(SR), SR).shape == (98, 128)  # 1 + (16000 - 400) // 160
    assert fbank(torch.randn(400), SR).shape == (1, 128)
    assert fbank(torch.randn(559), SR).shape == (1, 128)
    assert fbank(torch.randn(560), SR, num_mel_bins=64).shape == (2, 64)


def test_fbank_of_silence_is_the_log_floor() -> None:
    features = fbank(torch.zeros(SR), SR)
    floor = math.log(torch.finfo(torch.float32).eps)  # about -15.942
    assert torch.allclose(features, torch.full_like(features, floor), atol=1e-6)


@pytest.mark.parametrize("mel_bin", [20, 60, 100, 126])
def test_fbank_tone_peaks_in_the_kaldi_mel_bin(mel_bin: int) -> None:
    # 128 triangles equally spaced on 1127 * ln(1 + f / 700) from 20 Hz to 8 kHz; put the tone on one centre.
    low, high = _kaldi_mel(20.0), _kaldi_mel(SR / 2)
    centre = low + (mel_bin + 1) * (high - low) / 129
    freq = 700.0 * (math.exp(centre / 1127.0) - 1.0)

    features = fbank(torch.from_numpy(_tone(freq, 1.0)), SR)

    assert set(features.argmax(dim=1).tolist()) == {mel_bin}


def test_fbank_rejects_audio_shorter_than_one_frame() -> None:
    with pytest.raises(AudioError) as excinfo:
        fbank(torch.zeros(399), SR)
    message = _one_line_audio_error(excinfo)
    assert "399 samples" in message and "400" in message


# ---- reading and resampling ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "subtype", "atol"), [("WAV", "PCM_16", 1e-4), ("FLAC", "PCM_16", 1e-4)])
def test_read_audio_lossless_formats(tmp_path, fmt: str, subtype: str, atol: float) -> None:
    tone = _tone(440.0, 0.5)
    path = tmp_path / f"tone.{fmt.lower()}"
    sf.write(path, tone, SR, format=fmt, subtype=subtype)

    waveform, rate = read_audio(path)

    assert rate == SR
    assert waveform.dtype == torch.float32 and waveform.shape == (tone.size,)
    assert np.abs(waveform.numpy() - tone).max() <= atol


def test_read_audio_ogg_vorbis(tmp_path) -> None:
    tone = _tone(440.0, 0.5)
    path = tmp_path / "tone.ogg"
    sf.write(path, tone, SR, format="OGG", subtype="VORBIS")

    waveform, rate = read_audio(str(path))

    assert rate == SR and waveform.shape == (tone.size,) and waveform.dtype == torch.float32
    assert abs(_peak_hz(waveform.numpy(), rate) - 440.0) <= 2.0


def test_read_audio_downmixes_stereo_to_mono(tmp_path) -> None:
    left, right = _tone(440.0, 0.25), _tone(1000.0, 0.25, amplitude=0.25)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), SR, subtype="FLOAT")

    waveform, rate = read_audio(path)

    assert rate == SR and waveform.shape == (left.size,)
    np.testing.assert_allclose(waveform.numpy(), (left + right) / 2, atol=1e-7)


def test_resample_44k1_tone_keeps_frequency_and_length() -> None:
    tone = torch.from_numpy(_tone(1000.0, 1.0, sr=44100))

    out = resample(tone, 44100, 16000)

    assert out.dtype == torch.float32
    assert abs(out.numel() - 16000) <= 1
    assert abs(_peak_hz(out.numpy(), 16000) - 1000.0) <= 1.0
    assert abs(out.abs().max().item() - 0.5) < 0.01  # amplitude preserved


def test_resample_same_rate_is_identity() -> None:
    waveform = torch.randn(1234)
    assert resample(waveform, SR, SR) is waveform


# ---- padding, normalisation, end to end ------------------------------------------------------------------------


def test_pad_or_cut() -> None:
    features = torch.arange(15, dtype=torch.float32).reshape(5, 3) + 1
    padded = pad_or_cut(features, 8)
    assert padded.shape == (8, 3)
    assert torch.equal(padded[:5], features) and torch.all(padded[5:] == 0)
    assert torch.equal(pad_or_cut(features, 2), features[:2])
    assert torch.equal(pad_or_cut(features, 5), features)


def test_normalize() -> None:
    x = torch.tensor([AUDIOSET.mean, AUDIOSET.mean + 2 * AUDIOSET.std, 0.0])
    out = normalize(x, AUDIOSET.mean, AUDIOSET.std)
    assert torch.allclose(out, torch.tensor([0.0, 1.0, 4.2677393 / (2 * 4.5689974)]), atol=1e-6)


def test_waveform_to_input_pads_and_normalises() -> None:
    tone = torch.from_numpy(_tone(1000.0, 1.0)) + 0.1  # DC offset is removed first
    out = waveform_to_input(tone, SR, AUDIOSET)

    assert out.shape == (1024, 128) and out.dtype == torch.float32
    expected = (fbank(tone - tone.mean(), SR) - AUDIOSET.mean) / (2 * AUDIOSET.std)
    assert torch.allclose(out[:98], expected, atol=1e-6)
    # padded frames are zeros before normalisation, as in AST
    assert torch.allclose(out[98:], torch.full((926, 128), -AUDIOSET.mean / (2 * AUDIOSET.std)), atol=1e-6)


def test_waveform_to_input_resamples_and_cuts() -> None:
    tone = torch.from_numpy(_tone(1000.0, 2.0, sr=32000))  # 2 s -> 198 frames at 16 kHz, cut to 128
    out = waveform_to_input(tone, 32000, SPEECHCOMMANDS)

    assert out.shape == (128, 128)
    expected = waveform_to_input(resample(tone, 32000, SR), SR, SPEECHCOMMANDS)
    assert torch.allclose(out, expected)


def test_load_input_and_load_batch(tmp_path) -> None:
    paths = []
    for i, freq in enumerate([440.0, 3000.0]):
        paths.append(tmp_path / f"clip{i}.wav")
        sf.write(paths[-1], _tone(freq, 0.6, sr=22050), 22050, subtype="FLOAT")

    batch = load_batch(paths, ESC50)

    assert batch.shape == (2, 512, 128)
    assert torch.equal(batch[1], load_input(paths[1], ESC50))
    assert not torch.equal(batch[0], batch[1])
    assert load_input(paths[0]).shape == (1024, 128)


# ---- config ----------------------------------------------------------------------------------------------------


def test_feature_config_round_trips_through_json() -> None:
    for config in PRESETS.values():
        assert FeatureConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert AUDIOSET.to_dict() == {
        "sample_rate": 16000,
        "num_mel_bins": 128,
        "frames": 1024,
        "mean": -4.2677393,
        "std": 4.5689974,
    }
    assert (ESC50.frames, ESC50.mean, ESC50.std) == (512, -6.6268077, 5.358466)
    assert (SPEECHCOMMANDS.frames, SPEECHCOMMANDS.mean, SPEECHCOMMANDS.std) == (128, -6.845978, 5.5654526)
    assert PRESETS == {"audioset": AUDIOSET, "esc50": ESC50, "speechcommands": SPEECHCOMMANDS}


def test_feature_config_is_frozen_and_validated() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        AUDIOSET.frames = 10  # type: ignore[misc]
    with pytest.raises(ConfigError, match="unknown FeatureConfig keys"):
        FeatureConfig.from_dict({"frames": 10, "hop": 160})
    with pytest.raises(ConfigError, match="std"):
        FeatureConfig(std=0.0)
    with pytest.raises(ConfigError, match="frames"):
        FeatureConfig(frames=0)


# ---- errors ----------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path) -> None:
    path = tmp_path / "missing.wav"
    with pytest.raises(AudioError) as excinfo:
        read_audio(path)
    message = _one_line_audio_error(excinfo)
    assert str(path) in message and "does not exist" in message


def test_text_file_named_wav(tmp_path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\nsecond line\n")
    with pytest.raises(AudioError) as excinfo:
        read_audio(path)
    message = _one_line_audio_error(excinfo)
    assert str(path) in message and "cannot read" in message


def test_empty_wav(tmp_path) -> None:
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros((0, 1), dtype=np.float32), SR)
    with pytest.raises(AudioError) as excinfo:
        load_input(path)
    message = _one_line_audio_error(excinfo)
    assert str(path) in message and "0 samples" in message


def test_audio_shorter_than_one_frame(tmp_path) -> None:
    path = tmp_path / "short.wav"
    sf.write(path, _tone(440.0, 0.01), SR)  # 160 samples < 400
    with pytest.raises(AudioError) as excinfo:
        load_input(path)
    message = _one_line_audio_error(excinfo)
    assert str(path) in message and "160 samples" in message
