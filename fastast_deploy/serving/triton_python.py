"""A Triton model repository served by Triton's Python backend (``backend: "python"``) with this project's torch-free
``fastast_deploy.engines``: ONNX Runtime for an exported .onnx or an ONNX Runtime engine, TensorRT for a plan.
Beside the ``tensorrt_plan`` / ``onnxruntime_onnx`` repositories of `triton`, it serves any engine from a Triton
build that bundles only the Python backend, and takes raw audio for waveform-in models.

Layout: ``REPO/NAME/config.pbtxt``, ``REPO/NAME/1/model.py`` (the `MODEL_PY` text), ``REPO/NAME/1/model.onnx`` or
``model.plan`` with its sidecar, ``REPO/NAME/labels.txt`` and ``REPO/NAME/README.md``.

Facts (triton-inference-server/python_backend README): the backend runs ``model.py``'s ``TritonPythonModel`` in
a stub process (``triton_python_backend_stub``) built for one Python minor version, which imports what that
interpreter finds; ``execute`` receives every request of a dynamic batch at once and returns one response per
request; ``parameters`` of config.pbtxt reach ``initialize`` in ``args["model_config"]`` (JSON).
How the stub finds numpy, onnxruntime and fastast_deploy (measured with nvidia-pytriton 0.7.0's tritonserver
2.51): the stub embeds an isolated interpreter, which ignores ``PYTHONPATH`` and takes its environment from the
first ``python3`` on ``PATH`` (PyTriton starts its server that way too). So: install the packages into the
stub's interpreter (a Triton container: ``pip install fastast-deploy onnxruntime``), or start tritonserver with
a virtual environment's ``bin`` first on ``PATH``, or name a packed environment in the ``EXECUTION_ENV_PATH``
parameter. This writer also records the writing interpreter's site-packages in the parameter
``fastast_deploy.site_packages``; model.py adds those that exist with ``site.addsitedir`` (which also reads the
``.pth`` file of an editable install) before importing fastast_deploy. numpy must be importable before that:
``triton_python_backend_utils`` imports it. ``--site-packages none`` leaves the parameter empty.
"""

from __future__ import annotations

import os
import sysconfig
from collections.abc import Sequence
from typing import Any

from fastast_deploy.contract import OUTPUT_NAME, PACKAGE_VERSION, WAVEFORM_NAME

SITE_PACKAGES_PARAM = "fastast_deploy.site_packages"
ENGINE_PARAM = "fastast_deploy.engine"
PROVIDER_PARAM = "fastast_deploy.provider"
MODEL_FILE = "model.py"
README_FILE = "README.md"


def default_site_packages() -> tuple[str, ...]:
    """The writing interpreter's site-packages (purelib, platlib), where numpy, onnxruntime and this package
    live when the server runs on this machine."""
    paths = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    return tuple(paths)


def python_config_lines(model: Any, name: str, largest: int, site_packages: Sequence[str],
                        provider: str) -> tuple[list[str], list[str], dict[str, str]]:
    """(header lines, input tensor blocks, parameters) for ``backend: "python"``. A waveform-in model takes
    raw audio of any length (``dims: [ -1 ]``): model.py cuts each clip to the model's window or pads it with
    NaN (no audio), as `predict` does for one window."""
    from fastast_deploy.serving.pbtxt import pb_string, pb_tensor

    header = [f"# Triton model configuration written by fastast-deploy {PACKAGE_VERSION} from {model.path.name}",
              "# Served by Triton's Python backend with fastast_deploy.engines; see README.md for how the stub finds",
              "# numpy, onnxruntime (or tensorrt) and fastast_deploy.",
              f"name: {pb_string(name)}", 'backend: "python"', f"max_batch_size: {largest}"]
    batched = largest > 0
    inputs = []
    for tensor, spec in model.inputs.items():
        if tensor == WAVEFORM_NAME:
            spec = {**spec, "shape": [spec["shape"][0], -1]}  # any length: model.py cuts or pads to one window
        inputs.append(pb_tensor(tensor, spec, batched))
    params = {ENGINE_PARAM: model.filename, PROVIDER_PARAM: provider,
              SITE_PACKAGES_PARAM: os.pathsep.join(site_packages)}
    return header, inputs, params


def readme(model: Any, name: str, site_packages: Sequence[str]) -> str:
    """REPO/NAME/README.md: what is served and how the Python backend's stub finds its imports."""
    tensor, spec = next(iter(model.inputs.items()))
    if tensor == WAVEFORM_NAME:
        samples = spec["shape"][1]
        what = (f"Input `{WAVEFORM_NAME}`: raw mono float32 audio at the model's sample rate, shape (batch, n) for "
                f"any n; each clip is cut to its first {samples} samples (the model's window) or padded with NaN "
                "(no audio): the Kaldi fbank is computed inside the engine. Resample before sending; split longer "
                "clips into windows on the client (`fastast-deploy predict` does both).")
    else:
        what = f"Input `{tensor}`: the normalised Kaldi fbank, shape (batch, {', '.join(map(str, spec['shape'][1:]))})."
    found = "\n".join(f"  - `{p}`" for p in site_packages) or "  - (none recorded)"
    return f"""# {name}: fastast-deploy model for Triton's Python backend

`config.pbtxt` names `backend: "python"`; `1/model.py` opens `1/{model.filename}` with
`fastast_deploy.engines.load_engine` (ONNX Runtime for .onnx, TensorRT for a plan) and answers `{OUTPUT_NAME}`
(batch, labels) float32, with `labels.txt` for Triton's classification extension. Dynamic batching is handled
by Triton; `execute` runs all requests of a batch as one engine call (split at the engine's largest batch).

{what}

## Imports in the Python backend stub

The stub process (`triton_python_backend_stub`, one build per Python minor version: use the one matching the
interpreter that has the packages) must import numpy, onnxruntime (or tensorrt) and fastast_deploy. Any of:

1. Install them into the stub's interpreter (in a Triton container: `pip install fastast-deploy onnxruntime`).
2. Start tritonserver with a virtual environment's `bin` first on `PATH`: `PATH=/path/to/venv/bin:$PATH
   tritonserver --model-repository REPO`. The stub's embedded interpreter is isolated: it ignores `PYTHONPATH`
   and takes its environment from the first `python3` on `PATH` (of the stub's Python minor version).
3. Pack an environment (`conda-pack`) and name it in config.pbtxt: `parameters {{ key: "EXECUTION_ENV_PATH"
   value: {{ string_value: "$$TRITON_MODEL_DIRECTORY/env.tar.gz" }} }}`.
4. The parameter `{SITE_PACKAGES_PARAM}` (paths joined by `{os.pathsep}`): model.py calls `site.addsitedir` on
   each that exists before importing fastast_deploy (this also reads an editable install's `.pth` file; numpy
   must already be importable, `triton_python_backend_utils` imports it). This repository records the writer's
   site-packages:
{found}

If the server's libraries live outside the default search path (the `nvidia-pytriton` wheel's tritonserver:
`nvidia_pytriton.libs`), set `LD_LIBRARY_PATH` for tritonserver.
"""


MODEL_PY = '''"""Triton Python backend model written by fastast-deploy {version}: runs the engine beside this file
with the project's torch-free fastast_deploy.engines. See ../README.md for how the stub finds its imports."""

import json
import os
import site
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

WAVEFORM = "waveform"


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {{k: v["string_value"] for k, v in config.get("parameters", {{}}).items()}}
        for path in params.get("{site}", "").split(os.pathsep):
            if path and os.path.isdir(path):
                site.addsitedir(path)  # reads .pth files too (editable installs)
        from fastast_deploy.engines import load_engine

        folder = Path(args["model_repository"]) / args["model_version"]
        provider = params.get("{provider}") or None
        engine_file = folder / params["{engine}"]
        self.engine = load_engine(engine_file, provider=None if engine_file.suffix == ".plan" else provider)
        ((self.input_name, (shape, _)),) = self.engine.input_specs.items()
        self.samples = int(shape[1]) if self.input_name == WAVEFORM else None
        self.output_names = [o["name"] for o in config["output"]]
        batch = self.engine.batch_range
        self.chunk = batch.max or max(1, int(config.get("max_batch_size", 0)) or 1)

    def _rows(self, request):
        x = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy().astype(np.float32, copy=False)
        if self.samples is not None:  # raw audio (batch, n): cut to the window or pad with NaN (no audio)
            out = np.full((x.shape[0], self.samples), np.nan, dtype=np.float32)
            n = min(self.samples, x.shape[1])
            out[:, :n] = x[:, :n]
            x = out
        return x

    def execute(self, requests):
        rows, sizes, errors = [], [], {{}}
        for i, request in enumerate(requests):
            try:
                x = self._rows(request)
            except Exception as err:  # one bad request fails alone
                errors[i] = str(err)
                x = None
            rows.append(x)
            sizes.append(0 if x is None else len(x))
        good = [x for x in rows if x is not None]
        outputs = {{}}
        if good:
            batch = np.concatenate(good)
            parts = {{}}
            minimum = self.engine.batch_range.min
            for start in range(0, len(batch), self.chunk):
                piece = batch[start : start + self.chunk]
                real = len(piece)
                if real < minimum:  # a static batch: pad with zero rows, drop their outputs
                    pad = np.zeros((minimum - real, *piece.shape[1:]), dtype=piece.dtype)
                    piece = np.concatenate([piece, pad])
                for name, value in self.engine.infer({{self.input_name: piece}}).items():
                    parts.setdefault(name, []).append(value[:real])
            outputs = {{name: np.concatenate(values) for name, values in parts.items()}}
        responses, start = [], 0
        for i, size in enumerate(sizes):
            if i in errors:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(errors[i])))
                continue
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(outputs[name][start : start + size]))
                       for name in self.output_names]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses

    def finalize(self):
        self.engine.close()
'''


def model_py() -> str:
    """The text of REPO/NAME/1/model.py."""
    return MODEL_PY.format(version=PACKAGE_VERSION, site=SITE_PACKAGES_PARAM, provider=PROVIDER_PARAM,
                           engine=ENGINE_PARAM)
