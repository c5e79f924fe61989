"""A model on a Triton Inference Server behind the Engine interface: ``grpc://HOST:PORT/MODEL[/VERSION]`` or
``http://HOST:PORT/MODEL[/VERSION]``, reached with tritonclient (``pip install 'fastast-deploy[triton]'``).

Several URLs joined by commas name the same model on several servers: every batch is cut into requests of at
most ``max_batch_size`` rows, sent round-robin over the servers and in flight together. The tensors and batch
size come from the server's model config; the export metadata (features, labels, ToMe schedule) from the config
parameter ``METADATA_PARAM``, which ``fastast-deploy triton`` writes (`remote_record`).

Facts (triton-inference-server/server docs/protocol/extension_model_repository.md, extension_model_configuration.md;
tritonclient 2.x): the repository index lists every model the server knows with its state (READY when it
serves); the model config comes back as JSON (gRPC: protobuf JSON, int64 dims as strings), ``parameters`` as
``{key: {"string_value": ...}}``; with ``max_batch_size > 0`` the dims leave out the batch. The HTTP client runs on
gevent, so one engine (one client per server) belongs to one thread; open one engine per thread.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import numpy as np

from fastast_deploy.contract import BATCH
from fastast_deploy.errors import error_summary

from .base import BackendUnavailableError, BatchRange, Engine, EngineError, EngineMismatchError, format_shape

SCHEMES = ("grpc", "http")
METADATA_PARAM = "fastast_deploy.metadata"
INSTALL_HINT = "pip install 'fastast-deploy[triton]'"
TIMEOUT_S = 10.0  # connecting and reading the model config; inference has no deadline
RECORD_KEYS = ("backend", "precision", "inputs", "outputs", "batch", "export")
# numpy dtype -> Triton's config data type (the protocol's tensor datatype is the part after "TYPE_")
DATA_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
              "bool": "TYPE_BOOL"}
_NUMPY_TYPES = {v: k for k, v in DATA_TYPES.items()}
_URL = re.compile(r"(?P<scheme>[a-z]+)://(?P<address>[^/\s]+:\d+)/(?P<model>[A-Za-z0-9_][A-Za-z0-9_.-]*)"
                  r"(?:/(?P<version>\d+))?/?")


class EngineURL(str):
    """A remote engine's URL (or comma-joined URLs); ``name`` is the model's name, as a file's name for a path."""

    @property
    def name(self) -> str:
        return parse_url(self.split(",")[0])["model"]


def is_remote(target: object) -> bool:
    """Whether ``target`` names a model on a Triton server (a ``grpc://`` or ``http://`` URL, or several)."""
    return isinstance(target, str) and any(target.startswith(f"{s}://") for s in SCHEMES)


def parse_url(text: str) -> dict[str, str]:
    """``{"scheme", "address" (HOST:PORT), "model", "version" ("" for the server's choice)}``; EngineError when
    ``text`` is not ``SCHEME://HOST:PORT/MODEL[/VERSION]``."""
    match = _URL.fullmatch(text.strip())
    if match is None or match["scheme"] not in SCHEMES:
        raise EngineError(f"{text!r} is not a remote engine URL; expected grpc://HOST:PORT/MODEL or "
                          "http://HOST:PORT/MODEL (optionally /VERSION)")
    return {"scheme": match["scheme"], "address": match["address"], "model": match["model"],
            "version": match["version"] or ""}


def remote_record(*, backend: str, precision: str, inputs: dict[str, Any], outputs: dict[str, Any],
                  batch: BatchRange, export: dict[str, Any], file: str, sha256: str | None) -> dict[str, Any]:
    """What a remote client needs of a served model (JSON, the ``METADATA_PARAM`` config parameter): the served
    backend and precision, tensors (shapes with BATCH), batch range, the export metadata and the model file."""
    return {"backend": backend, "precision": precision, "inputs": inputs, "outputs": outputs,
            "batch": batch.to_dict(), "export": export, "engine": {"file": file, "sha256": sha256}}


def _client_module(scheme: str) -> Any:
    try:
        if scheme == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
    except ImportError as err:
        raise BackendUnavailableError(f"a {scheme}:// engine needs tritonclient[{scheme}] ({err.name} is not "
                                      f"installed): {INSTALL_HINT}") from None
    return module


def _reason(err: BaseException) -> str:
    text = str(err)
    if "refused" in text.lower() or isinstance(err, ConnectionRefusedError):
        return "connection refused"
    return error_summary(err)


class _Server:
    """One server's client, the model's config there and its repository entry."""

    def __init__(self, url: str) -> None:
        parts = parse_url(url)
        self.url, self.scheme, self.model, self.version = url, parts["scheme"], parts["model"], parts["version"]
        self.module = _client_module(self.scheme)
        try:
            if self.scheme == "grpc":
                self.client = self.module.InferenceServerClient(parts["address"])
                index = self.client.get_model_repository_index(as_json=True, client_timeout=TIMEOUT_S)
                models = index.get("models", [])
            else:
                self.client = self.module.InferenceServerClient(parts["address"], concurrency=4,
                                                                connection_timeout=TIMEOUT_S)
                models = self.client.get_model_repository_index()
        except Exception as err:  # tritonclient raises its own exception, gevent OSErrors, grpc errors
            raise EngineError(f"cannot reach a Triton server at {url}: {_reason(err)}; is tritonserver running "
                              "there (HTTP and gRPC listen on different ports)?") from None
        self._check_listed(models)
        try:
            if self.scheme == "grpc":
                config = self.client.get_model_config(self.model, self.version, as_json=True,
                                                      client_timeout=TIMEOUT_S)["config"]
            else:
                config = self.client.get_model_config(self.model, self.version)
        except Exception as err:
            raise EngineError(f"{url}: the server gave no model config: {_reason(err)}") from None
        self.config: dict[str, Any] = config

    def _check_listed(self, models: list[dict[str, Any]]) -> None:
        mine = [m for m in models if m.get("name") == self.model]
        ready = sorted({str(m.get("name")) for m in models if m.get("state") == "READY"})
        if not mine:
            raise EngineError(f"{self.url}: the server serves no model {self.model!r}; it serves "
                              f"{ready or 'no model'}")
        if not any(m.get("state") == "READY" and self.version in ("", str(m.get("version"))) for m in mine):
            found = ", ".join(f"version {m.get('version') or '?'} {m.get('state') or 'unknown'}"
                              + (f" ({m['reason']})" if m.get("reason") else "") for m in mine)
            raise EngineError(f"{self.url}: model {self.model!r} is not ready"
                              f"{' in version ' + self.version if self.version else ''} ({found})")

    def record(self) -> dict[str, Any]:
        """The export record the repository writer put in the model config."""
        value = (self.config.get("parameters") or {}).get(METADATA_PARAM) or {}
        text = value.get("string_value") if isinstance(value, dict) else None
        fix = "serve a repository written by `fastast-deploy triton` (this version)"
        if not text:
            raise EngineError(f"{self.url}: model {self.model!r} is not a fastast-deploy model (its config has no "
                              f"{METADATA_PARAM} parameter); {fix}")
        try:
            record = json.loads(text)
        except ValueError:
            record = None
        if not isinstance(record, dict) or any(k not in record for k in RECORD_KEYS):
            raise EngineError(f"{self.url}: the {METADATA_PARAM} parameter of model {self.model!r} is not a "
                              f"fastast-deploy record; {fix}")
        return record

    def submit(self, name: str, chunk: np.ndarray, dtype: str, outputs: list[str]) -> Callable[[], dict]:
        """Send one request without waiting; the returned call waits for its ``{output: array}``."""
        tensor = self.module.InferInput(name, list(chunk.shape), DATA_TYPES[dtype].removeprefix("TYPE_"))
        tensor.set_data_from_numpy(chunk)
        wanted = [self.module.InferRequestedOutput(o) for o in outputs]
        if self.scheme == "grpc":
            future: Future = Future()

            def done(result: Any, error: Any) -> None:  # on a gRPC thread
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result({o: result.as_numpy(o) for o in outputs})

            self.client.async_infer(self.model, [tensor], done, model_version=self.version, outputs=wanted)
            return future.result
        request = self.client.async_infer(self.model, [tensor], model_version=self.version, outputs=wanted)

        def wait() -> dict[str, np.ndarray]:
            result = request.get_result()
            return {o: result.as_numpy(o) for o in outputs}

        return wait

    def close(self) -> None:
        self.client.close()


def _dims(tensor: dict[str, Any]) -> list[int]:
    return [int(d) for d in tensor.get("dims", [])]


def _check_tensors(server: _Server, record: dict[str, Any], batched: bool) -> None:
    """The server's tensors are the recorded ones: same names, dtypes, and dims (-1 on the server takes any)."""
    fix = "serve the repository `fastast-deploy triton` wrote for it"
    for kind in ("input", "output"):
        found = {t["name"]: t for t in server.config.get(kind, [])}
        recorded = record[f"{kind}s"]
        missing = [n for n in recorded if n not in found]
        if missing or (kind == "input" and set(found) != set(recorded)):
            raise EngineMismatchError(f"{server.url}: model {server.model!r} has {kind}s {sorted(found)}; its "
                                      f"fastast-deploy metadata records {sorted(recorded)}; {fix}")
        for name, spec in recorded.items():
            dims = [BATCH, *_dims(found[name])] if batched else _dims(found[name])
            shape = list(spec["shape"])
            dtype = _NUMPY_TYPES.get(str(found[name].get("data_type")))
            fits = len(dims) == len(shape) and all(d in (-1, want) for d, want in zip(dims, shape, strict=True))
            if not fits or dtype != spec["dtype"]:
                raise EngineMismatchError(
                    f"{server.url}: model {server.model!r} takes {kind} {name!r} of shape {format_shape(tuple(dims))} "
                    f"{dtype}; its fastast-deploy metadata records {format_shape(tuple(shape))} {spec['dtype']}; {fix}")


class TritonEngine(Engine):
    """A model served by one or more Triton servers (the same model on each)."""

    backend = "triton"

    def __init__(self, url: str, servers: list[_Server]) -> None:
        records = [s.record() for s in servers]
        first = records[0]
        for server, record in zip(servers[1:], records[1:], strict=True):
            if record != first:
                raise EngineMismatchError(f"{server.url} serves another model than {servers[0].url} (their "
                                          "fastast-deploy metadata differ); give URLs of one model")
        sizes = {int(s.config.get("max_batch_size", 0)) for s in servers}
        for server in servers:
            _check_tensors(server, first, int(server.config.get("max_batch_size", 0)) > 0)
        if 0 in sizes and len(sizes) > 1:
            raise EngineMismatchError(f"{url}: the servers disagree on batching (max_batch_size {sorted(sizes)})")
        self._chunk = min(sizes)
        if self._chunk > 0:
            batch = BatchRange(1, self._chunk, self._chunk * len(servers))
        else:  # max_batch_size 0: the dims hold the one batch size the model takes
            static = int(next(iter(first["inputs"].values()))["shape"][0])
            batch = BatchRange(static, static, static)
        metadata = {**first, "backend": self.backend, "batch": batch.to_dict(),
                    "triton": {"urls": [s.url for s in servers], "model": servers[0].model,
                               "version": servers[0].version, "served_backend": first["backend"],
                               "max_batch_size": self._chunk}}
        super().__init__(servers[0].model, metadata)
        self.path = EngineURL(url)  # type: ignore[assignment]  # a URL, with .name as a path has
        self._servers = servers
        self._turn = itertools.cycle(range(len(servers)))
        self._output_names = list(first["outputs"])

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self._servers:
            raise EngineError(f"{self.path} is closed")
        ((name, x),) = feed.items()
        dtype = str(self._inputs[name][1])
        size = self._chunk or len(x)
        sent = []
        for start in range(0, len(x), size):
            server = self._servers[next(self._turn)]
            try:
                sent.append((server, server.submit(name, x[start : start + size], dtype, self._output_names)))
            except Exception as err:
                raise EngineError(f"{server.url}: the request failed: {_reason(err)}") from None
        parts: dict[str, list[np.ndarray]] = {n: [] for n in self._output_names}
        for server, wait in sent:
            try:
                answer = wait()
            except Exception as err:
                raise EngineError(f"{server.url}: inference failed: {_reason(err)}") from None
            for n in self._output_names:
                parts[n].append(np.asarray(answer[n]))
        return {n: np.concatenate(v) for n, v in parts.items()}

    def close(self) -> None:
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()

    def __repr__(self) -> str:
        return f"TritonEngine({str(self.path)!r}, batch {self._batch})"


def open_triton_engine(url: str) -> TritonEngine:
    """Connect to every server of ``url`` (comma-joined URLs: the same model on several servers) and read the
    model's config; one-line EngineErrors for a server that is down, a model it does not serve, a model without
    fastast-deploy metadata, and tensors that differ from the recorded ones."""
    urls = [u.strip() for u in str(url).split(",") if u.strip()]
    for u in urls:
        parse_url(u)
    servers: list[_Server] = []
    try:
        for u in urls:
            servers.append(_Server(u))
        return TritonEngine(",".join(urls), servers)
    except BaseException:
        for server in servers:
            server.close()
        raise
