"""Input arrays saved to files, as engines are fed them: an ``.npz`` array (``np.load`` without pickles) and a
Polygraphy inputs .json (``polygraphy run --save-inputs``: a list of feed dicts). numpy only; Polygraphy loads
when such a file is read. Errors are of the caller's ``error`` class (a FastASTError), one line each."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fastast_deploy.errors import FastASTError, error_summary
from fastast_deploy.scoped import polygraphy_verbosity


def read_npz_array(path: Path, name: str, error: type[FastASTError] = FastASTError) -> np.ndarray:
    """Array ``name`` of an .npz file, real numbers only."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if name not in data.files:
                raise error(f"{path} has arrays {sorted(data.files)}; expected {name!r}")
            array = np.asarray(data[name])
    except (OSError, ValueError, EOFError) as err:
        raise error(f"{path} is not a readable .npz ({error_summary(err)})") from None
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise error(f"{path}: array {name!r} is of dtype {array.dtype}; expected real numbers")
    return array


def read_polygraphy_feeds(path: Path, name: str, error: type[FastASTError] = FastASTError) -> np.ndarray:
    """Input ``name`` of every feed in a Polygraphy inputs file, concatenated along the batch."""
    try:
        from polygraphy.json import load_json
    except ImportError as err:
        raise error(f"reading a Polygraphy inputs .json needs polygraphy ({err})") from None
    with polygraphy_verbosity("ERROR"):
        try:
            feeds = load_json(str(path))
        except Exception as err:  # noqa: BLE001 - polygraphy raises its own and json's errors
            raise error(f"{path} is not a Polygraphy inputs file ({error_summary(err)})") from None
    if not isinstance(feeds, list) or not feeds or not all(isinstance(f, dict) and name in f for f in feeds):
        raise error(f"{path} holds no list of feeds with an {name!r} array")
    return np.concatenate([np.asarray(f[name]) for f in feeds])
