"""Which GPU TensorRT would use: name and compute capability from the CUDA driver API through ctypes (no torch,
no CUDA toolkit). Device 0 of what CUDA_VISIBLE_DEVICES leaves visible, as for TensorRT itself. And how GPU
timings are reported: device time with the host transfers apart, as trtexec prints them."""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .base import BackendUnavailableError

# cuda.h: CUdevice_attribute values and CUresult codes.
COMPUTE_CAPABILITY_MAJOR, COMPUTE_CAPABILITY_MINOR = 75, 76
CUDA_ERROR_NO_DEVICE = 100
LIBCUDA = ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so")


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "9.0"

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "compute_capability": self.compute_capability}


def _driver() -> ctypes.CDLL:
    errors = []
    for name in LIBCUDA:
        try:
            return ctypes.CDLL(name)
        except OSError as err:
            errors.append(str(err))
    raise BackendUnavailableError(f"no CUDA GPU: the NVIDIA driver library ({LIBCUDA[0]}) cannot be loaded "
                                  f"({errors[0]}); TensorRT needs an NVIDIA GPU and its driver")


def query_gpu(device: int = 0) -> GpuInfo:
    """Name and compute capability of CUDA device ``device``; BackendUnavailableError when there is none."""
    lib = _driver()
    status = lib.cuInit(0)
    if status == CUDA_ERROR_NO_DEVICE:
        raise BackendUnavailableError("no CUDA GPU: the NVIDIA driver is installed but sees no device "
                                      "(check CUDA_VISIBLE_DEVICES)")
    if status != 0:
        raise BackendUnavailableError(f"no usable CUDA GPU: cuInit failed with CUresult {status}")
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value <= device:
        raise BackendUnavailableError(f"CUDA device {device} requested, {count.value} visible")
    handle = ctypes.c_int(0)
    name = ctypes.create_string_buffer(256)
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    calls = (
        lib.cuDeviceGet(ctypes.byref(handle), device),
        lib.cuDeviceGetName(name, len(name), handle),
        lib.cuDeviceGetAttribute(ctypes.byref(major), COMPUTE_CAPABILITY_MAJOR, handle),
        lib.cuDeviceGetAttribute(ctypes.byref(minor), COMPUTE_CAPABILITY_MINOR, handle),
    )
    failed = [c for c in calls if c != 0]
    if failed:
        raise BackendUnavailableError(f"cannot query CUDA device {device} (CUresult {failed[0]})")
    return GpuInfo(name.value.decode(errors="replace").strip(), f"{major.value}.{minor.value}")


@dataclass(frozen=True)
class DeviceTiming:
    """Per-batch GPU timings in milliseconds, medians (and p90 of compute) over ``iterations`` runs: host-to-device
    copies, GPU compute and device-to-host copies apart, and ``latency`` = their sum, as trtexec reports "H2D
    Latency", "GPU Compute Time", "D2H Latency" and "Latency: the summation of H2D Latency, GPU Compute Time, and D2H
    Latency" (NVIDIA/TensorRT samples/common/sampleReporting.cpp). ``source`` says how compute was measured."""

    h2d_ms: float
    compute_ms: float
    compute_p90_ms: float
    d2h_ms: float
    latency_ms: float
    iterations: int
    source: str

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def summarize_device_times(h2d: Sequence[float], compute: Sequence[float], d2h: Sequence[float],
                           source: str) -> DeviceTiming:
    """Seconds per iteration (three equally long lists) -> DeviceTiming in ms. Empty or non-finite input is a bug
    in the caller: ValueError."""
    arrays = [np.asarray(values, dtype=np.float64) * 1e3 for values in (h2d, compute, d2h)]
    if not arrays[0].size or any(a.shape != arrays[0].shape or not np.isfinite(a).all() for a in arrays):
        raise ValueError(f"timings must be equally long, finite and non-empty, got {[a.size for a in arrays]}")
    h, c, d = (float(np.median(a)) for a in arrays)
    latency = float(np.median(arrays[0] + arrays[1] + arrays[2]))
    return DeviceTiming(h, c, float(np.percentile(arrays[1], 90)), d, latency, int(arrays[0].size), source)
