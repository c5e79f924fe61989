"""Writing a Triton model repository: REPO/NAME built in a staging folder and renamed into place whole."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fastast_deploy.contract import sidecar_path
from fastast_deploy.errors import FastASTError
from fastast_deploy.serving.pbtxt import LABELS_FILE
from fastast_deploy.serving.triton import (
    CONFIG_FILE,
    VERSION,
    ServedModel,
    TritonConfig,
    TritonOptions,
    model_config,
)


def default_name(path: Path) -> str:
    """The model file's stem as a directory name ("fastast_r16.plan" -> "fastast_r16")."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem).lstrip(".-")
    return name or "fastast"


@dataclass(frozen=True)
class TritonResult:
    path: Path  # REPO/NAME
    files: tuple[str, ...]  # relative to path
    config: TritonConfig


def write_repository(model: ServedModel, repo: str | os.PathLike, options: TritonOptions | None = None, *,
                     force: bool = False) -> TritonResult:
    """Write REPO/NAME whole or not at all: built in a temporary folder beside REPO, then renamed into place.
    An existing REPO/NAME is refused unless ``force``, and then replaced."""
    options = options or TritonOptions()
    repo = Path(repo)
    name = options.name or default_name(model.path)
    config = model_config(model, name, options)
    target = repo / name
    if repo.exists() and not repo.is_dir():
        raise FastASTError(f"repository {repo} is a file; give a directory (it may hold other models)")
    if (target.exists() or target.is_symlink()) and not force:
        raise FastASTError(f"{target} already exists; pass --force to replace it or choose another --name")
    try:
        repo.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FastASTError(f"cannot create {repo.parent}: {err.strerror}") from None
    # Stage beside REPO; inside it (hidden) when REPO is a mount point, so the final rename stays on one device.
    beside = not repo.exists() or repo.stat().st_dev == repo.parent.stat().st_dev
    try:
        stage = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=repo.parent if beside else repo))
    except OSError as err:
        raise FastASTError(f"cannot write to {repo.parent}: {err.strerror}") from None
    try:
        files = _fill(stage / name, model, config.text)
        if options.backend == "python":
            files += _fill_python(stage / name, model, name, options)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(stage, 0o777 & ~umask)  # mkdtemp makes folders private; REPO may become this folder
        _move_into_place(stage, repo, name)
    except OSError as err:
        raise FastASTError(f"cannot write the repository {target}: {err.strerror}") from None
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return TritonResult(target, files, config)


def _fill(folder: Path, model: ServedModel, config: str) -> tuple[str, ...]:
    version = folder / VERSION
    version.mkdir(parents=True)
    shutil.copyfile(model.path, version / model.filename)
    files = [CONFIG_FILE, *([LABELS_FILE] if model.labels else []), f"{VERSION}/{model.filename}"]
    if model.sidecar is not None:
        shutil.copyfile(model.sidecar, sidecar_path(version / model.filename))
        files.append(f"{VERSION}/{sidecar_path(model.filename).name}")
    (folder / CONFIG_FILE).write_text(config, encoding="utf-8")
    if model.labels:
        (folder / LABELS_FILE).write_text("".join(f"{n}\n" for n in model.labels), encoding="utf-8")
    return tuple(files)


def _fill_python(folder: Path, model: ServedModel, name: str, options: TritonOptions) -> tuple[str, ...]:
    from fastast_deploy.serving.triton_python import MODEL_FILE, README_FILE, default_site_packages, model_py, readme

    site = default_site_packages() if options.site_packages is None else options.site_packages
    (folder / VERSION / MODEL_FILE).write_text(model_py(), encoding="utf-8")
    (folder / README_FILE).write_text(readme(model, name, site), encoding="utf-8")
    return (f"{VERSION}/{MODEL_FILE}", README_FILE)


def _move_into_place(stage: Path, repo: Path, name: str) -> None:
    """stage/name -> repo/name (stage itself becomes repo when repo does not exist); an existing repo/name is
    moved into stage first and restored if the swap fails."""
    target = repo / name
    if not repo.exists():
        os.rename(stage, repo)
        return
    old = stage / ".replaced"
    if target.exists() or target.is_symlink():
        os.rename(target, old)
    try:
        os.rename(stage / name, target)
    except OSError:
        if old.exists() or old.is_symlink():
            with contextlib.suppress(OSError):
                os.rename(old, target)
        raise
