"""``load_engine``: one entry point for a TensorRT plan, an ONNX Runtime engine, a plain exported model or a model on
a Triton server."""

from __future__ import annotations

import os
from pathlib import Path

from fastast_deploy.contract import sidecar_path

from .base import Engine, EngineError
from .sidecar import check_engine_file, check_sidecar, check_source, read_sidecar
from .triton_remote import is_remote


def load_engine(path: str | os.PathLike, *, provider: str | None = None, threads: int | None = None,
                source: str | os.PathLike | None = None, verbose: bool = False) -> Engine:
    """Open what ``build-engine`` wrote (dispatching on its sidecar's backend), an exported ``.onnx`` in ONNX
    Runtime (``provider``, default cpu; metadata from the model itself), or a model on a Triton server named by a
    ``grpc://HOST:PORT/MODEL`` or ``http://HOST:PORT/MODEL`` URL (comma-joined: several servers; `triton_remote`).

    ``threads``: ONNX Runtime intra-op threads (default: the engine's recorded value). ``source``: the ONNX model
    the engine must have been built from (sha256 checked). ``verbose``: Polygraphy / TensorRT logging.
    """
    if is_remote(path):
        given = [name for name, value in (("--provider", provider), ("--threads", threads), ("a source model", source))
                 if value is not None]
        if given:
            raise EngineError(f"{', '.join(given)} applies to a local engine; {path} runs where its server runs it")
        from .triton_remote import open_triton_engine

        return open_triton_engine(str(path))
    path = Path(path)
    if not path.is_file():
        raise EngineError(f"{path} does not exist or is not a file; expected an engine from `fastast-deploy "
                          "build-engine` or an exported .onnx model")
    data = read_sidecar(path)
    if data is None:  # no engine sidecar: it must be an exported model
        from .onnx_model import read_onnx_model
        from .ort_engine import open_onnx_model

        if path.suffix != ".onnx":
            try:
                read_onnx_model(path)
            except EngineError:
                raise EngineError(f"{path} has no engine sidecar ({sidecar_path(path).name}) and is not an exported "
                                  "ONNX model; build engines with `fastast-deploy build-engine`") from None
        engine = open_onnx_model(path, provider=provider or "cpu", threads=threads or 0)
        if source is not None:
            check_source(engine.metadata, source)
        return engine
    check_sidecar(data, path)
    if source is not None:
        check_source(data, source)
    if data["backend"] == "tensorrt":
        if provider is not None:
            raise EngineError(f"{path.name} is a TensorRT plan; --provider applies to ONNX Runtime only")
        from .trt_engine import open_tensorrt_engine

        return open_tensorrt_engine(path, data, verbose=verbose)
    from .ort_engine import open_onnxruntime_engine

    check_engine_file(path, data)
    return open_onnxruntime_engine(path, data, provider=provider, threads=threads)

