"""A Triton Inference Server on this machine serving a model repository: the ``tritonserver`` binary that the
nvidia-pytriton wheel ships, with its Python backend and this interpreter's backend stub, on free loopback ports,
stopped by its process id. For trying a repository that `fastast-deploy triton --backend python` wrote, and for
the tests and benchmarks that talk to a real server.

Written here rather than taken from pytriton: pytriton's own launcher serves Python callables that it binds
itself, not a model repository on disk.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastast_deploy.errors import FastASTError

INSTALL_HINT = 'pip install "fastast-deploy[test]" (the nvidia-pytriton wheel, Linux x86_64)'
LOG_TAIL = 4000  # characters of the server's log quoted when it fails to start


class LocalTritonUnavailable(FastASTError):
    """This machine has no tritonserver that can run here (the wheel, its binary or this Python's stub missing)."""


@dataclass(frozen=True)
class LocalTriton:
    """A running server: its HTTP and gRPC addresses (``127.0.0.1:PORT``) and its log file."""

    process: subprocess.Popen
    http: str
    grpc: str
    log: Path

    def statistics(self, model: str) -> dict[str, Any]:
        """The server's inference statistics of ``model`` (its HTTP statistics extension)."""
        with urllib.request.urlopen(f"http://{self.http}/v2/models/{model}/stats", timeout=10) as r:
            return json.loads(r.read())


def pytriton_root() -> Path:
    """The tritonserver tree inside the nvidia-pytriton wheel; LocalTritonUnavailable when it is not there."""
    try:
        import pytriton
    except ImportError:
        raise LocalTritonUnavailable(f"no tritonserver here: {INSTALL_HINT}") from None
    root = Path(pytriton.__file__).parent / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise LocalTritonUnavailable(f"the nvidia-pytriton wheel has no tritonserver binary under {root}")
    return root


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(process: subprocess.Popen, http: str, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise FastASTError(f"tritonserver exited with {process.returncode}:\n{log.read_text()[-LOG_TAIL:]}")
        try:
            with urllib.request.urlopen(f"http://{http}/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise FastASTError(f"tritonserver not ready after {timeout_s:g} s:\n{log.read_text()[-LOG_TAIL:]}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@contextmanager
def local_triton(repo: str | os.PathLike[str], work: str | os.PathLike[str],
                 timeout_s: float = 300) -> Iterator[LocalTriton]:
    """Serve ``repo`` until the block ends (an error or Ctrl-C included); ``work`` (an empty folder) holds the
    backends, the log and the server's working directory. LocalTritonUnavailable before anything starts when
    this machine cannot run it; FastASTError with the log's tail when it does not become ready."""
    root = pytriton_root()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise LocalTritonUnavailable(f"the nvidia-pytriton wheel has no Python backend stub for Python {version}")
    work = Path(work)
    backends = work / "backends"
    shutil.copytree(root / "backends", backends)
    shutil.copy(stub, backends / "python" / stub.name)
    libs = root.parent.parent / "nvidia_pytriton.libs"
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(libs), env.get("LD_LIBRARY_PATH")) if p)
    # The stub's embedded interpreter derives its environment from the first python3 on PATH.
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    ports = [free_port() for _ in range(3)]
    log = work / "tritonserver.log"
    command = [str(root / "bin" / "tritonserver"), "--model-repository", str(repo),
               "--backend-directory", str(backends), "--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1",
               "--metrics-address", "127.0.0.1", f"--http-port={ports[0]}", f"--grpc-port={ports[1]}",
               f"--metrics-port={ports[2]}", "--exit-timeout-secs=10"]
    with log.open("wb") as out:
        # cwd outside any source tree: the stub puts its working directory first on sys.path, where a checkout's
        # fastast_deploy/ (without exporters/ and engines/ inside) would shadow the installed package. Its own
        # session: a Ctrl-C reaches the caller, which stops the server.
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   cwd=work)
    try:
        http = f"127.0.0.1:{ports[0]}"
        _wait_ready(process, http, log, timeout_s)
        yield LocalTriton(process, http, f"127.0.0.1:{ports[1]}", log)
    finally:
        _stop(process)
