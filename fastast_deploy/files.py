"""Output files are written whole or not at all: a temporary file beside the target, then an atomic rename."""

from __future__ import annotations

import contextlib
import csv
import glob
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from fastast_deploy.errors import FastASTError, error_summary

WRITTEN_RECORD = ".fastast-deploy-written.json"  # in an output folder: what each command wrote there


def shown_path(path: str | os.PathLike | bytes) -> str:
    """``path`` as printable text: the bytes of a file name that is not UTF-8 (which Python holds as surrogate
    escapes, and which no UTF-8 stream can print) as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def prepare_output(path: str | os.PathLike) -> Path:
    """Check that ``path`` can become a file, creating missing parent directories; a clear error otherwise."""
    path = Path(path)
    if path.is_dir():
        raise FastASTError(f"output {path} is a directory; give a file path such as {path / 'model.onnx'}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise FastASTError(f"output {path} lies under {parent}, which is a file, not a directory")
            break
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FastASTError(f"cannot create the output directory {path.parent}: {err.strerror}") from None
    if not os.access(path.parent, os.W_OK):
        raise FastASTError(f"output directory {path.parent} is not writable")
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def clean_stale_temps(path: Path) -> None:
    """Remove temps of ``path`` left by writers that were killed (their pid is in the name and gone)."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = stale.name[len(path.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                if stale.is_dir() and not stale.is_symlink():
                    shutil.rmtree(stale)
                else:
                    stale.unlink()


def temp_beside(path: str | os.PathLike) -> Path:
    """A new, empty temp file beside ``path`` (hidden, named after it and this process), with the usual mode."""
    path = prepare_output(path)
    clean_stale_temps(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise FastASTError(f"cannot write to {path.parent}: {err.strerror}") from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes files private (0600); give them the usual mode
    return Path(tmp)


def temp_dir_beside(path: str | os.PathLike) -> Path:
    """A new, empty temp folder beside ``path`` (hidden, named after it and this process, cleaned as `temp_beside`'s
    files are), with the usual mode: for an output folder written whole, then renamed into place."""
    path = Path(path)
    clean_stale_temps(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise FastASTError(f"cannot write to {path.parent}: {err.strerror}") from None
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes folders private (0700); give them the usual mode
    return Path(tmp)


@contextlib.contextmanager
def written_temp(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp beside ``path`` that is removed if the block fails; committing it is the caller's."""
    tmp = temp_beside(path)
    try:
        yield tmp
    except OSError as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise FastASTError(f"cannot write {path}: {err.strerror}") from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed."""
    with written_temp(path) as tmp:
        yield tmp
        os.replace(tmp, path)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def read_json_object(path: str | os.PathLike, error: type[FastASTError] = FastASTError,
                     what: str = "") -> dict[str, Any]:
    """A JSON object from a UTF-8 file; ``error`` (naming the file, and ``what`` it is) when unreadable or not an
    object."""
    name = f"{what} {path}" if what else str(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise error(f"{name} is not valid JSON ({error_summary(err, with_type=True)})") from None
    if not isinstance(data, dict):
        raise error(f"{name} holds a JSON {type(data).__name__}, expected an object")
    return data


def read_csv_rows(path: str | os.PathLike, error: type[FastASTError] = FastASTError) -> list[dict[str, Any]]:
    """The rows of a UTF-8 CSV with a header (a BOM is allowed); ``error`` naming the file when it is not one."""
    try:
        with Path(path).open(newline="", encoding="utf-8-sig") as f:
            return list(csv.DictReader(f))
    except UnicodeDecodeError as err:
        raise error(f"{path} is not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    except (csv.Error, OSError) as err:
        raise error(f"cannot read {path} as CSV ({error_summary(err)})") from None


def _strict(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)  # "nan", "inf", "-inf": JSON has no such numbers
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def json_text(obj: Any, *, sort_keys: bool = False) -> str:
    """Valid JSON (indented) whatever floats ``obj`` holds: NaN and inf become the strings "nan" / "inf"."""
    return json.dumps(_strict(obj), indent=2, sort_keys=sort_keys, allow_nan=False)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    return write_bytes_atomic(path, (json_text(obj, sort_keys=True) + "\n").encode())


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _same(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def check_outputs_apart(outputs: dict[str, str | os.PathLike | None],
                        inputs: dict[str, str | os.PathLike | None], *, replaced_folders: tuple[str, ...] = ()) -> None:
    """Refuse, before any work, an output that is one of the inputs, lies inside an input folder (a checkpoint
    directory, say) or is another output; and, for the outputs named in ``replaced_folders`` (folders written
    anew as a whole), an input inside them. Keys name the options in the message ("-o", "--report", "SOURCE");
    commands that write into a folder list the files they write there."""
    given_in = {name: Path(p) for name, p in inputs.items() if p is not None and str(p) not in ("", "-")}
    given_out = {name: Path(p) for name, p in outputs.items() if p is not None}
    for out_name, out in given_out.items():
        for in_name, src in given_in.items():
            if _same(out, src):
                raise FastASTError(f"{out_name} {out} is also {in_name}; writing it would destroy an input: "
                                   "give another output path")
            if src.is_dir() and out.resolve().is_relative_to(src.resolve()):
                raise FastASTError(f"{out_name} {out} lies inside {in_name} {src}; write outputs elsewhere")
            if out_name in replaced_folders and src.resolve().is_relative_to(out.resolve()):
                raise FastASTError(f"{in_name} {src} lies inside {out}, which {out_name} replaces; move it first "
                                   "or write elsewhere")
    names = list(given_out)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            if _same(given_out[first], given_out[second]):
                raise FastASTError(f"{first} and {second} name the same file {given_out[first]}; give each its own")


@contextlib.contextmanager
def removed_on_failure(folder: str | os.PathLike) -> Iterator[None]:
    """On an error inside the block, remove what the block added under ``folder`` (files, then the folders it
    made), so that a command that fails leaves the folder as it found it."""
    folder = Path(folder)
    before = set(folder.rglob("*")) if folder.is_dir() else set()
    existed = folder.exists()
    try:
        yield
    except BaseException:
        added = sorted((set(folder.rglob("*")) if folder.is_dir() else set()) - before, reverse=True)
        for path in added:  # deepest first: files, then their now-empty folders
            with contextlib.suppress(OSError):
                path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()
        if not existed:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _written(folder: Path) -> dict[str, dict[str, str]]:
    """The folder's record: {command: {file name relative to the folder: sha256 when written}}; {} if none."""
    try:
        data = json.loads((folder / WRITTEN_RECORD).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) and all(isinstance(v, dict) for v in data.values()) else {}


def written_by(folder: str | os.PathLike, command: str) -> dict[str, str]:
    """What ``folder``'s record says ``command`` wrote there ({file name: sha256 when written}); {} if nothing."""
    return _written(Path(folder)).get(command, {})


def check_replaceable(folder: str | os.PathLike, names: Iterable[str], command: str, force: bool = False) -> None:
    """Refuse, before any work, to replace a file in ``folder`` that ``command`` did not write there: one of
    ``names`` (relative to the folder) that exists and is not in the folder's record (`record_written`) with the
    content it has now. ``force`` allows it. One error listing up to three such files and the fix."""
    folder = Path(folder)
    if force or not folder.is_dir():
        return
    mine = written_by(folder, command)
    foreign = [n for n in names if (folder / n).exists() and
               ((folder / n).is_dir() or mine.get(n) != sha256_file(folder / n))]
    if foreign:
        shown = ", ".join(shown_path(n) for n in foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise FastASTError(f"{shown_path(folder)} holds {len(foreign)} file(s) that {command} would replace and did "
                           f"not write ({shown}); pass --force to replace them or choose another -o")


def record_written(folder: str | os.PathLike, names: Iterable[str], command: str) -> None:
    """Record in ``folder`` that ``command`` wrote ``names`` (those that exist) as they are now, so that its next
    run may replace them (`check_replaceable`)."""
    folder = Path(folder)
    record = _written(folder)
    mine = record.setdefault(command, {})
    mine.update({n: sha256_file(folder / n) for n in names if (folder / n).is_file()})
    write_json_atomic(folder / WRITTEN_RECORD, record)
