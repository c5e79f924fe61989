"""A file and its JSON sidecar committed as one: at every instant the pair on disk is the old one or the new one.

Two renames cannot be one atomic step, so the commit is journalled (plain Python, no torch; engines use it):

1. the new sidecar, naming the sha256 of the new file (``file_sha256``), is written whole to ``FILE.json.pending``;
2. the new file replaces ``FILE``;
3. the pending sidecar replaces ``FILE.json``.

A writer holds an exclusive lock on the folder (``flock`` on the directory itself, so no lock file is left)
through steps 1-3, so two writers to one output commit one after the other. A reader that finds ``FILE`` and
``FILE.json`` disagreeing while a pending sidecar names ``FILE``'s sha256 is looking at a commit cut between
steps 2 and 3: ``read_pair_sidecar`` finishes it (or, without write access, reads the pending sidecar). A pending
sidecar naming another file is what a writer killed before step 2 left: the old pair stands, and the next writer
or reader removes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastast_deploy.contract import sidecar_path
from fastast_deploy.errors import FastASTError
from fastast_deploy.files import read_json_object, sha256_file, write_json_atomic, written_temp

SHA_KEY = "file_sha256"  # the sidecar's record of the file it belongs to
# Test hook: called with the step name ("pending", "file", "sidecar") after each commit step.
_after_step: Callable[[str], None] | None = None


def pending_path(path: str | os.PathLike) -> Path:
    return Path(f"{sidecar_path(path)}.pending")


@contextlib.contextmanager
def folder_lock(folder: Path, blocking: bool = True) -> Iterator[bool]:
    """An exclusive lock on ``folder`` (yields False when ``blocking`` is off and another process holds it)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@dataclass
class PairWrite:
    """What a writer fills in: the file's content at ``tmp``, then ``sidecar`` (a JSON object)."""

    tmp: Path
    sidecar: dict[str, Any] | None = field(default=None)


def _step(name: str) -> None:
    if _after_step is not None:
        _after_step(name)


@contextlib.contextmanager
def atomic_pair(path: str | os.PathLike) -> Iterator[PairWrite]:
    """Write ``path`` and its sidecar ``path.json`` as one commit (module docstring). The block writes the file
    to ``pair.tmp`` and sets ``pair.sidecar``; on an error nothing of the new pair is committed."""
    path = Path(path)
    with written_temp(path) as tmp:
        pair = PairWrite(tmp)
        yield pair
        if pair.sidecar is None:
            raise FastASTError(f"internal: no sidecar was given for {path}")
        sidecar = {**pair.sidecar, SHA_KEY: sha256_file(tmp)}
        with folder_lock(path.parent):
            write_json_atomic(pending_path(path), sidecar)
            _step("pending")
            os.replace(tmp, path)
            _step("file")
            os.replace(pending_path(path), sidecar_path(path))
            _step("sidecar")


def read_pair_sidecar(path: str | os.PathLike) -> dict[str, Any] | None:
    """The sidecar of ``path`` as the last complete commit left it (None without one); finishes a commit cut
    between its last two steps. Raises FastASTError when the sidecar is not a JSON object."""
    path = Path(path)
    side, pending = sidecar_path(path), pending_path(path)
    if pending.is_file() and path.is_file():
        staged = _load(pending)
        if staged is not None and staged.get(SHA_KEY) == sha256_file(path):
            with folder_lock(path.parent, blocking=False) as locked:
                if locked and os.access(path.parent, os.W_OK) and pending.is_file():
                    os.replace(pending, side)  # finish the cut commit
            return staged
        with folder_lock(path.parent, blocking=False) as locked:  # a writer killed before step 2: the old pair stands
            if locked and os.access(path.parent, os.W_OK):
                with contextlib.suppress(FileNotFoundError):
                    pending.unlink()
    if not side.is_file():
        return None
    try:
        return read_json_object(side, what="sidecar")
    except FastASTError as err:
        raise FastASTError(f"{err}; delete {side} and write {path.name} again (export or build-engine)") from None


def _load(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


# ---- several files committed as one (a training step: checkpoint, state pair, metrics) ---------------------------

JOURNAL = ".fastast-commit.json"  # the redo log of a commit in progress, in the folder it commits to


def commit_files(folder: Path, staged: dict[str, Path]) -> None:
    """Move each fully written temp in ``staged`` (final name in ``folder`` -> temp in ``folder``) into place as
    one commit: the list is journalled first, so a commit cut at any point is finished by ``recover_commit``
    (every temp was complete before the journal was written). Call it holding the folder's lock."""
    journal = folder / JOURNAL
    _step("staged")
    write_json_atomic(journal, {name: tmp.name for name, tmp in staged.items()})
    _step("journal")
    _redo(folder, {name: tmp.name for name, tmp in staged.items()})
    journal.unlink()
    _step("done")


def _redo(folder: Path, moves: dict[str, str]) -> None:
    for i, (name, tmp) in enumerate(moves.items()):
        if (folder / tmp).exists():
            os.replace(folder / tmp, folder / name)
        if i == 0:
            _step("first")


def recover_commit(folder: Path) -> bool:
    """Finish a commit that ``commit_files`` left cut in ``folder``; True when there was one."""
    journal = folder / JOURNAL
    if not journal.is_file():
        return False
    fix = (f"delete {journal} and resume again (the save it records is dropped; if the run's files then disagree, "
           "start a new run)")
    try:
        moves = read_json_object(journal, what="commit journal")
    except FastASTError as err:
        raise FastASTError(f"{err}; {fix}") from None
    if not all(isinstance(v, str) and _plain(k) and _plain(v) for k, v in moves.items()):
        raise FastASTError(f"commit journal {journal} is damaged (expected {{file name: staged temp name}} in "
                           f"{folder}); {fix}")
    _redo(folder, moves)
    journal.unlink()
    return True


def _plain(name: str) -> bool:
    """A bare file name in the folder (a journal never names a path elsewhere)."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\x00" not in name


@contextlib.contextmanager
def exclusive_folder(folder: Path, what: str) -> Iterator[None]:
    """Hold ``folder``'s lock for the whole block (a training run); a FastASTError at once when another process
    holds it."""
    if folder.exists() and not folder.is_dir():
        raise FastASTError(f"{folder} is a file; give a folder for the {what} to write into")
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FastASTError(f"cannot create {folder}: {err.strerror}") from None
    try:
        with folder_lock(folder, blocking=False) as locked:
            if not locked:
                raise FastASTError(f"{folder} is in use by another {what} (its lock is held); wait for it to finish "
                                   "or give another output folder")
            yield
    except BaseException:
        if created:  # a run that failed before writing anything leaves no empty folder behind
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
