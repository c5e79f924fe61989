"""Reading the metadata an export stored in its model (the names it follows are in fastast_deploy.contract)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fastast_deploy.contract import METADATA_KEY
from fastast_deploy.errors import FastASTError, error_summary


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata an export stored in the model (``metadata_props``)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FastASTError(f"{path} does not exist or is not a file; expected an exported .onnx model")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:
        raise FastASTError(f"{path} is not a readable ONNX model ({error_summary(err)})") from None
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            return json.loads(prop.value)
    raise FastASTError(f"{path} has no fastast-deploy metadata; export it with `fastast-deploy export`")
