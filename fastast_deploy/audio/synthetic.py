"""A built-in sound-event dataset: randomised but distinct classes of synthetic sounds, written as real wav files.

Every class is one sound family (tone, chirp, band-limited noise burst, click train, AM tone, FM tone, harmonic
stack, struck bell) with its own parameters. Classes of the same family take disjoint bands of their key parameter
(frequency or click rate), so no two classes overlap; each clip draws its key parameter inside the class's band,
places the event at a random time with a random length, envelope and gain change, and mixes it into coloured
background noise at a random SNR. The output is in the AST layout: ``train.json`` / ``val.json``
(``{"data": [{"wav": ..., "labels": ...}]}``) and ``labels.csv`` (``index,mid,display_name``).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from fastast_deploy.audio.labels import LabelSet, write_label_csv
from fastast_deploy.errors import ConfigError
from fastast_deploy.files import prepare_output, removed_on_failure, write_bytes_atomic, write_json_atomic

SAMPLE_RATE = 16000
DATASET_FILES = ("train.json", "val.json", "labels.csv", "dataset.json", "audio")  # what make_synthetic writes
MAX_SPREAD = 1.25  # a class's key parameter varies at most by this factor either side of its band's centre
FAMILIES = ("tone", "chirp", "noise", "clicks", "am", "fm", "harmonic", "bell")
# Range of each family's key parameter (Hz; clicks per second for click trains), split among its classes.
KEY_RANGES: dict[str, tuple[float, float]] = {
    "tone": (150.0, 6000.0),
    "chirp": (200.0, 5000.0),
    "noise": (300.0, 6500.0),
    "clicks": (3.0, 60.0),
    "am": (200.0, 5000.0),
    "fm": (250.0, 4500.0),
    "harmonic": (80.0, 800.0),
    "bell": (300.0, 3500.0),
}


@dataclass(frozen=True)
class SyntheticConfig:
    """What `make-dataset synthetic` writes. ``max_events`` > 1 mixes up to that many classes per clip (multi-label)."""

    classes: int = 10
    clips_per_class: int = 50
    seconds: float = 2.0
    seed: int = 0
    val_fraction: float = 0.2
    max_events: int = 1
    absolute_paths: bool = False  # AST's own loader opens wav paths relative to its working directory

    def __post_init__(self) -> None:
        if self.classes < 2:
            raise ConfigError(f"--classes must be >= 2, got {self.classes}")
        if self.clips_per_class < 2:
            raise ConfigError(f"--clips-per-class must be >= 2 (one for training, one for validation), got "
                              f"{self.clips_per_class}")
        if not 0.1 <= self.seconds <= 60:
            raise ConfigError(f"--seconds must be between 0.1 and 60, got {self.seconds}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"--val-fraction must be between 0 and 1 (exclusive), got {self.val_fraction}")
        if not 1 <= self.max_events <= self.classes:
            raise ConfigError(f"--max-events must be between 1 and --classes ({self.classes}), got {self.max_events}")


@dataclass(frozen=True)
class SoundClass:
    """One class: its family, the band of its key parameter, and fixed secondary parameters."""

    index: int
    family: str
    low: float
    high: float
    params: dict[str, float]

    @property
    def mid(self) -> str:
        return f"synth_{self.index:03d}"

    @property
    def name(self) -> str:
        unit = "/s" if self.family == "clicks" else " Hz"
        return f"{self.family} {self.low:.0f}-{self.high:.0f}{unit}"


def make_classes(count: int, seed: int) -> list[SoundClass]:
    """``count`` classes, cycling through the families; the classes of one family split its key range (log scale)."""
    rng = np.random.default_rng([seed, 0])
    per_family = {f: sum(1 for i in range(count) if FAMILIES[i % len(FAMILIES)] == f) for f in FAMILIES}
    classes = []
    for i in range(count):
        family = FAMILIES[i % len(FAMILIES)]
        variant, variants = i // len(FAMILIES), per_family[family]
        lo, hi = (math.log(v) for v in KEY_RANGES[family])
        step = (hi - lo) / variants
        # A band inside the central part of the variant's slot, so neighbouring classes keep a gap; at most
        # +-MAX_SPREAD (log scale) around its centre, so that a family with few classes still gives focused ones.
        centre = lo + step * (variant + 0.5 + rng.uniform(-0.1, 0.1))
        half = min(0.3 * step, math.log(MAX_SPREAD))
        low, high = math.exp(centre - half), math.exp(centre + half)
        params = {
            "mod_rate": float(rng.uniform(3.0, 16.0)),  # AM / FM rate (Hz)
            "mod_depth": float(rng.uniform(0.5, 1.0)),
            "harmonics": float(rng.integers(3, 9)),
            "rolloff": float(rng.uniform(0.4, 0.9)),
            "bandwidth": float(rng.uniform(0.15, 0.4)),  # noise band, relative to its centre
            "decay": float(rng.uniform(3.0, 12.0)),  # bells and clicks: exponential decay rate (1/s)
            "direction": float(rng.choice([-1.0, 1.0])),  # chirps: up or down
            "span": float(rng.uniform(1.5, 3.0)),  # chirps: ratio of end to start frequency
        }
        classes.append(SoundClass(i, family, low, high, params))
    return classes


def _key(cls: SoundClass, rng: np.random.Generator) -> float:
    """The clip's key parameter: log-uniform inside the class's band."""
    return float(math.exp(rng.uniform(math.log(cls.low), math.log(cls.high))))


def _tone(cls: SoundClass, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.sin(2 * np.pi * _key(cls, rng) * t + rng.uniform(0, 2 * np.pi))


def _chirp(cls: SoundClass, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    f0 = _key(cls, rng)
    f1 = f0 * cls.params["span"] ** cls.params["direction"]
    duration = max(t[-1], 1e-3)
    k = math.log(f1 / f0) / duration
    phase = 2 * np.pi * f0 * (np.exp(k * t) - 1) / k  # exponential sweep f0 -> f1
    return np.sin(phase)


def _noise(cls: SoundClass, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    centre = _key(cls, rng)
    half = centre * cls.params["bandwidth"] / 2
    return _band_noise(len(t), centre - half, centre + half, rng)


def _clicks(cls: SoundClass, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    rate = _key(cls, rng)
    out = np.zeros_like(t)
    click = _band_noise(int(0.004 * SAMPLE_RATE), 2000.0, 7000.0, rng)  # 4 ms broadband tick
    click *= np.exp(-np.arange(len(click)) / (0.001 * SAMPLE_RATE))
    start = rng.uniform(0, 1 / rate)
    for onset in np.arange(start, t[-1], 1 / rate):
        i = int(onset * SAMPLE_RATE)
        n = min(len(click), len(out) - i)
        out[i : i + n] += click[:n]
    return out


def _am(cls: SoundClass, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    depth, rate = cls.params["mod_depth"], cls.params["mod_rate"]
    envelope = 1 - depth * (0.5 + 0.5 * np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi)))
    return envelope * _tone(cls, t, rng)


def _fm(cls: SoundClass, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    carrier, rate = _key(cls, rng), cls.params["mod_rate"]
    deviation = 0.1 * carrier * cls.params["mod_depth"]
    phase = 2 * np.pi * carrier * t + deviation / rate * np.sin(2 * np.pi * rate * t)
    return np.sin(phase)


def _harmonic(cls: SoundClass, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    f0, count, rolloff = _key(cls, rng), int(cls.params["harmonics"]), cls.params["rolloff"]
    out = np.zeros_like(t)
    for k in range(1, count + 1):
        if k * f0 < SAMPLE_RATE / 2 - 500:
            out += rolloff ** (k - 1) * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi))
    return out


def _bell(cls: SoundClass, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    f0, decay = _key(cls, rng), cls.params["decay"]
    out = np.zeros_like(t)
    for ratio, gain in ((1.0, 1.0), (2.76, 0.6), (5.40, 0.4), (8.93, 0.25)):  # inharmonic partials of a bar
        if ratio * f0 < SAMPLE_RATE / 2 - 500:
            out += gain * np.sin(2 * np.pi * ratio * f0 * t + rng.uniform(0, 2 * np.pi))
    strikes = max(1, int(t[-1] * 2))
    env = np.zeros_like(t)
    for onset in np.sort(rng.uniform(0, t[-1], strikes)):
        after = t >= onset
        env[after] = np.maximum(env[after], np.exp(-decay * (t[after] - onset)))
    return out * env


GENERATORS: dict[str, Callable[[SoundClass, np.ndarray, np.random.Generator], np.ndarray]] = {
    "tone": _tone, "chirp": _chirp, "noise": _noise, "clicks": _clicks,
    "am": _am, "fm": _fm, "harmonic": _harmonic, "bell": _bell,
}


def _band_noise(n: int, low: float, high: float, rng: np.random.Generator) -> np.ndarray:
    """White noise of ``n`` samples filtered to [low, high] Hz in the frequency domain."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spectrum[(freqs < low) | (freqs > high)] = 0
    return np.fft.irfft(spectrum, n)


def _coloured_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """White, pink or brown-ish noise (power ~ 1 / f^alpha, alpha in [0, 2]) with unit RMS."""
    alpha = rng.uniform(0.0, 2.0)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spectrum *= np.maximum(freqs, 20.0) ** (-alpha / 2)
    noise = np.fft.irfft(spectrum, n)
    return noise / (_rms(noise) + 1e-12)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x**2)))


def _envelope(n: int, rng: np.random.Generator) -> np.ndarray:
    """Attack / release ramps and one gain change of up to +-8 dB at a random point."""
    env = np.ones(n)
    attack, release = (max(1, int(rng.uniform(0.005, 0.05) * SAMPLE_RATE)) for _ in range(2))
    attack, release = min(attack, n // 2), min(release, n // 2)
    env[:attack] *= np.linspace(0, 1, attack)
    env[n - release :] *= np.linspace(1, 0, release)
    change, at, width = rng.uniform(-8, 8), int(rng.uniform(0.2, 0.8) * n), max(1, int(0.02 * SAMPLE_RATE))
    gain = np.ones(n)
    gain[at:] = 10 ** (change / 20)
    gain[at : at + width] = np.linspace(1, 10 ** (change / 20), len(gain[at : at + width]))
    return env * gain


def render_clip(classes: list[SoundClass], samples: int, rng: np.random.Generator) -> np.ndarray:
    """One clip of ``samples`` samples holding one event of each class, over coloured noise; float32, peak <= 0.9."""
    mix = np.zeros(samples)
    for cls in classes:
        length = int(samples * rng.uniform(0.4, 0.9))
        onset = int(rng.uniform(0, samples - length))
        t = np.arange(length) / SAMPLE_RATE
        event = GENERATORS[cls.family](cls, t, rng) * _envelope(length, rng)
        event /= _rms(event) + 1e-12
        mix[onset : onset + length] += event * 10 ** (rng.uniform(-6, 0) / 20)
    snr_db = rng.uniform(3.0, 25.0)
    mix += _coloured_noise(samples, rng) * _rms(mix) * 10 ** (-snr_db / 20)
    peak = np.abs(mix).max() + 1e-12
    return (mix / peak * 10 ** (rng.uniform(-20, -1) / 20)).astype(np.float32)


def make_synthetic(output: str | os.PathLike[str], config: SyntheticConfig = SyntheticConfig(),
                   progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Write the dataset to ``output``; returns a summary (also written as ``output/dataset.json``). A write that
    fails (a full disk) removes what it added, and the JSON files come last: no folder of clips without them."""
    root = Path(output)
    with removed_on_failure(root):
        prepare_output(root / "labels.csv")
        return _write_dataset(root, config, progress)


def _write_dataset(root: Path, config: SyntheticConfig, progress: Callable[[int, int], None] | None) -> dict[str, Any]:
    classes = make_classes(config.classes, config.seed)
    samples = int(round(config.seconds * SAMPLE_RATE))
    val_count = max(1, min(config.clips_per_class - 1, round(config.clips_per_class * config.val_fraction)))
    splits: dict[str, list[dict[str, str]]] = {"train": [], "val": []}
    total, done = config.classes * config.clips_per_class, 0
    for cls in classes:
        for clip in range(config.clips_per_class):
            rng = np.random.default_rng([config.seed, 1, cls.index, clip])
            chosen = [cls]
            if config.max_events > 1:  # the clip's own class plus up to max_events - 1 others
                extra = int(rng.integers(0, config.max_events))
                others = [c for c in classes if c.index != cls.index]
                chosen += [others[i] for i in rng.choice(len(others), size=extra, replace=False)]
            split = "val" if clip < val_count else "train"
            wav = root / "audio" / split / f"{cls.mid}_{clip:04d}.wav"
            buffer = io.BytesIO()
            sf.write(buffer, render_clip(chosen, samples, rng), SAMPLE_RATE, subtype="PCM_16", format="WAV")
            write_bytes_atomic(wav, buffer.getvalue())
            listed = str(wav.resolve()) if config.absolute_paths else wav.relative_to(root).as_posix()
            splits[split].append({"wav": listed, "labels": ",".join(c.mid for c in chosen)})
            done += 1
            if progress is not None:
                progress(done, total)
    for split, rows in splits.items():
        write_json_atomic(root / f"{split}.json", {"data": rows})
    write_label_csv(root / "labels.csv", LabelSet(tuple(c.mid for c in classes), tuple(c.name for c in classes)))
    summary = {
        "config": asdict(config),
        "sample_rate": SAMPLE_RATE,
        "train_clips": len(splits["train"]),
        "val_clips": len(splits["val"]),
        "classes": [{"index": c.index, "mid": c.mid, "display_name": c.name, "family": c.family,
                     "band": [c.low, c.high], "params": c.params} for c in classes],
    }
    write_json_atomic(root / "dataset.json", summary)
    return summary
