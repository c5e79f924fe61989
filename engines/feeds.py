"""Input arrays saved to files, as engines are fed them: an ``.npz`` array (``np.load`` without pickles) and a
Polygraphy inputs .json (``polygraphy run --save-inputs``: a list of feed dicts). numpy only; Polygraphy loads
when such a file is read. Errors are of the caller's ``error`` class (a FastASTError), one line each."""

from __future__ import annotations

import contextlib
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from fastast_deploy.errors import FastASTError, error_summary


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


def write_npz(file: BinaryIO, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` to an open binary file, but a failed write (a full disk) raises once and leaves no half-closed
    zip behind: np.savez never closes its ZipFile on an error, whose finaliser then fails on the closed file."""
    with zipfile.ZipFile(file, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


@contextlib.contextmanager
def polygraphy_silent() -> Iterator[None]:
    """Polygraphy's logger off inside: its loaders print their failures (as CRITICAL, with the file's contents)
    before raising; the caller reports them in one line."""
    from polygraphy.logger import G_LOGGER

    with G_LOGGER.verbosity(G_LOGGER.CRITICAL + 1):
        yield


def polygraphy_load_error(path: Path, kind: str, err: BaseException) -> str:
    """One line for a Polygraphy file that would not load: numpy's advice to allow pickles is not passed on
    (such a file is never loaded unsafely)."""
    reason = error_summary(err)
    if "pickle" in reason.lower():
        reason = "it holds an entry that is not a plain saved array; pickled data is never loaded"
    return f"{path} is not a Polygraphy {kind} file ({reason}); save it again with Polygraphy or fastast-deploy"


def read_polygraphy_feeds(path: Path, name: str, error: type[FastASTError] = FastASTError) -> np.ndarray:
    """Input ``name`` of every feed in a Polygraphy inputs file, concatenated along the batch."""
    try:
        from polygraphy.json import load_json
    except ImportError as err:
        raise error(f"reading a Polygraphy inputs .json needs polygraphy ({err})") from None
    with polygraphy_silent():
        try:
            feeds = load_json(str(path))
        except Exception as err:  # noqa: BLE001 - polygraphy raises its own and json's errors
            raise error(polygraphy_load_error(path, "inputs", err)) from None
    if not isinstance(feeds, list) or not feeds or not all(isinstance(f, dict) and name in f for f in feeds):
        raise error(f"{path} holds no list of feeds with an {name!r} array")
    return concatenate_parts([f[name] for f in feeds], f"{path}: the {name!r} arrays of its feeds", error)


def concatenate_parts(parts: list[object], what: str, error: type[FastASTError] = FastASTError) -> np.ndarray:
    """Arrays saved in parts (feeds, iterations) joined along the batch: real numbers, one shape past the batch."""
    arrays = [np.asarray(p) for p in parts]
    if any(a.ndim < 2 for a in arrays) or len({a.shape[1:] for a in arrays}) > 1:
        raise error(f"{what} do not share one (batch, ...) shape (found {[a.shape for a in arrays][:4]}); "
                    "save them again")
    if not all(np.issubdtype(a.dtype, np.number) and not np.issubdtype(a.dtype, np.complexfloating)
               for a in arrays):
        raise error(f"{what} are not all real numbers (dtypes {sorted({str(a.dtype) for a in arrays})})")
    return np.concatenate(arrays)
