"""Markers gpu / tensorrt skip themselves, with a reason, where the hardware or package is missing."""

from __future__ import annotations

import importlib.util

import pytest

HF_LABELS = ("dog", "rain", "sea waves", "crackling fire", "crickets", "chirping birds", "water drops")


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = None if _has_cuda() else pytest.mark.skip(reason="needs a CUDA GPU; none is visible to torch")
    skip_trt = (
        None
        if importlib.util.find_spec("tensorrt") is not None
        else pytest.mark.skip(reason='needs TensorRT: pip install "fastast-deploy[tensorrt]"')
    )
    for item in items:
        if skip_gpu and "gpu" in item.keywords:
            item.add_marker(skip_gpu)
        if skip_trt and "tensorrt" in item.keywords:
            item.add_marker(skip_trt)


def _hf_model(**overrides: object) -> torch.nn.Module:  # noqa: F821 (torch is imported inside)
    """A tiny random HF AST; every parameter random (HF itself zero-initialises pos embeddings and dist token).

    Tests that call it skip where transformers is not installed; the others still run.
    """
    import torch

    transformers = pytest.importorskip("transformers")
    kwargs = {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "max_length": 64,
        "num_mel_bins": 32,
        "frequency_stride": 10,
        "time_stride": 16,
        "id2label": dict(enumerate(HF_LABELS)),
        "label2id": {n: i for i, n in enumerate(HF_LABELS)},
        "attn_implementation": "eager",
        **overrides,
    }
    torch.manual_seed(0)
    model = transformers.ASTForAudioClassification(transformers.ASTConfig(**kwargs)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            centre = 1.0 if "layernorm" in name and name.endswith("weight") else 0.0
            p.copy_(centre + 0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="session")
def make_hf_model():
    """Factory of tiny random Hugging Face AST models (skips where transformers is missing)."""
    return _hf_model


def _assert_same_merges(got: list, want: list) -> None:
    """Merge outputs (src, dst per merging block, each (batch, r)) make the same merges: per clip the same set of
    (source, destination) pairs. The order of sources whose scores agree to the last bits is not part of the merge
    (two kernels may rank such a near-tie either way); the pairs are."""
    assert len(got) == len(want) and len(want) % 2 == 0
    for i in range(0, len(want), 2):
        for gs, gd, ws, wd in zip(got[i], got[i + 1], want[i], want[i + 1], strict=True):
            pairs = sorted(zip(gs.tolist(), gd.tolist(), strict=True))
            assert pairs == sorted(zip(ws.tolist(), wd.tolist(), strict=True)), f"merge outputs {i}, {i + 1}"


def _snapshot(root) -> dict[str, str]:
    """sha256 of every file under ``root`` (hidden temps too), by path relative to it."""
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def snapshot():
    """``snapshot(root) -> {relative path: sha256}`` of every file under a folder: equal before and after a
    command that failed means no input changed and no file (or temp) was left."""
    return _snapshot


@pytest.fixture
def assert_same_merges():
    """`_assert_same_merges`: merge outputs (src, dst, ...) that make the same merges per clip."""
    return _assert_same_merges


@pytest.fixture
def spoil_onnx_runtime(monkeypatch: pytest.MonkeyPatch):
    """``spoil(value, row, col)``: every ONNX Runtime session run from then on returns its first output with
    ``[row, col]`` replaced by ``value`` (NaN or inf), as a broken kernel would."""
    import onnxruntime as ort

    real_run = ort.InferenceSession.run

    def spoil(value: float, row: int, col: int) -> None:
        def spoiled_run(self: ort.InferenceSession, *args: object, **kwargs: object) -> list:
            outputs = real_run(self, *args, **kwargs)
            outputs[0][row, col] = value
            return outputs

        monkeypatch.setattr(ort.InferenceSession, "run", spoiled_run)

    return spoil


_MEASURED_CLI = """
import resource, sys
from fastast_deploy.cli.main import main
sys.argv = ["fastast-deploy", *sys.argv[2:]]
try:
    main()
finally:
    with open(__import__("os").environ["FASTAST_TEST_RSS"], "w") as f:
        f.write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
"""


class CliOutcome:
    """A command run in its own process: exit code, non-empty output lines (stdout + stderr), peak RSS in MiB."""

    def __init__(self, code: int, output: str, peak_mib: float) -> None:
        self.code, self.output, self.peak_mib = code, output, peak_mib
        self.lines = [line for line in output.splitlines() if line.strip()]

    def assert_clean_failure(self, code: int, fragment: str = "") -> None:
        """Exit ``code``, 1 to 3 lines, no traceback, ``fragment`` in the output."""
        assert self.code == code, (self.code, self.output)
        assert 1 <= len(self.lines) <= 3 and "Traceback" not in self.output, self.output
        assert fragment in self.output, self.output


@pytest.fixture
def run_measured(tmp_path_factory: pytest.TempPathFactory):
    """``run(args, cwd=None, stdin=None, timeout=600, env=None) -> CliOutcome``: ``fastast-deploy ARGS`` in a
    subprocess, its peak resident memory measured (ru_maxrss of that process)."""
    import os
    import subprocess
    import sys

    def run(args: list, cwd=None, stdin: bytes | None = None, timeout: float = 600, env: dict | None = None):
        rss = tmp_path_factory.mktemp("rss") / "peak"
        # Outside the source tree by default: from its root, `import fastast_deploy` finds the folder (which has
        # no engines/ or exporters/), not the installed package.
        cwd = rss.parent if cwd is None else cwd
        full_env = {**os.environ, **(env or {}), "FASTAST_TEST_RSS": str(rss)}
        done = subprocess.run([sys.executable, "-c", _MEASURED_CLI, "x", *map(str, args)], cwd=cwd, input=stdin,
                              capture_output=True, timeout=timeout, env=full_env)
        peak = int(rss.read_text()) / 1024 if rss.exists() else float("nan")  # ru_maxrss is in KiB on Linux
        return CliOutcome(done.returncode, done.stdout.decode(errors="replace") + done.stderr.decode(
            errors="replace"), peak)

    return run


@pytest.fixture(autouse=True)
def _sigint_as_found(request: pytest.FixtureRequest):
    """Each test leaves SIGINT as it found it (handler and the main thread's mask): tests that send Ctrl-C to this
    process or to a child it starts need it delivered. A test that changes it is named in a warning, and the state
    is put back for the tests after it."""
    import signal
    import warnings

    handler = signal.getsignal(signal.SIGINT)
    blocked = signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    yield
    now_handler = signal.getsignal(signal.SIGINT)
    now_blocked = signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    if now_handler is not handler or now_blocked != blocked:
        warnings.warn(f"{request.node.nodeid} left SIGINT {'blocked' if now_blocked else 'unblocked'} with handler "
                      f"{now_handler!r} (found {'blocked' if blocked else 'unblocked'}, {handler!r}); restored",
                      stacklevel=1)
        if handler is not None:
            signal.signal(signal.SIGINT, handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK if not blocked else signal.SIG_BLOCK, {signal.SIGINT})
