"""Hugging Face Hub ids as SOURCE: ``ORG/NAME`` or ``ORG/NAME@REVISION`` (a branch, tag or commit) becomes the
snapshot folder of that revision in the huggingface_hub cache (HF_HUB_CACHE, or HF_HOME/hub), downloaded there
when missing and the Hub is reachable. Only what a model needs is fetched: config.json and preprocessor_config.json,
then model.safetensors, else pytorch_model.bin (read later with ``weights_only=True``, as every torch file is).
A local path of the same name always wins. Tokens, endpoint and cache are huggingface_hub's own settings; offline
mode is HF_HUB_OFFLINE=1 (the CLI's ``--offline`` sets it)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from fastast_deploy.checkpoints.foreign import HF_CONFIG_FILES, HF_WEIGHT_FILES, read_hf_config
from fastast_deploy.errors import CheckpointError, error_summary

# ORG/NAME as the Hub spells repo ids (letters, digits, '-', '_', '.'), then an optional @REVISION.
_HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]*[A-Za-z0-9_])(?:@(?P<revision>[^@\s]+))?")
# Names that can only be files: a missing one is a missing file, not a Hub repository.
_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".onnx", ".plan", ".engine", ".json", ".npz")
_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's reading of a boolean environment variable


def parse_hub_id(source: str | os.PathLike[str]) -> tuple[str, str | None] | None:
    """``(repo_id, revision or None)`` when ``source`` is a string of the form of a Hub model id, else None (a
    path; a Path object always is one)."""
    if not isinstance(source, str):
        return None
    match = _HUB_ID.fullmatch(source)
    if match is None or match["repo"].lower().endswith(_FILE_SUFFIXES) or ".." in match["repo"]:
        return None
    return match["repo"], match["revision"]


def hub_offline() -> bool:
    """Whether huggingface_hub runs offline: HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set now or when it loaded."""
    from huggingface_hub import constants

    now = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return now.upper() in _TRUE or bool(constants.HF_HUB_OFFLINE)


def resolve_source(source: str | os.PathLike[str]) -> Path:
    """The local path SOURCE names: itself when it exists (or is no Hub id), else the cached snapshot of the Hub
    model ``ORG/NAME[@REVISION]``, fetched first where needed; a one-line CheckpointError says whether the repo is
    missing or private, gated, lacks the revision, is not cached while offline, or is no AST model."""
    path = Path(source)
    hub_id = None if path.exists() else parse_hub_id(source)
    if hub_id is None:
        return path
    repo, revision = hub_id
    commit, files, unreached = _look_up(repo, revision)
    local = commit is None  # offline, or the Hub did not answer: the cache alone
    # by the name asked for, so that the cache records what it names (refs/main) for later offline use
    configs = _snapshot(repo, revision, list(HF_CONFIG_FILES), revision, local, unreached, quiet=True)
    read_hf_config(configs / HF_CONFIG_FILES[0], f"Hub model {_named(repo, revision)}: config.json")
    if local:
        folder, listed = configs, [name for name in HF_WEIGHT_FILES if (configs / name).is_file()]
    else:  # safetensors where the repo has them, else the .bin; never both
        listed = [name for name in HF_WEIGHT_FILES if name in files][:1]
        pinned = configs.name  # the commit the configs came from (snapshots/<commit>)
        folder = _snapshot(repo, pinned, [*HF_CONFIG_FILES, *listed], revision, False, None) if listed else configs
    if not listed:
        held = "its cached snapshot holds" if local else "it has"
        raise CheckpointError(f"Hub model {_named(repo, revision)}: {held} config.json but neither "
                              f"{' nor '.join(HF_WEIGHT_FILES)} (sharded weights are not read)")
    return folder


def _named(repo: str, revision: str | None) -> str:
    return repo if revision is None else f"{repo}@{revision}"


def _look_up(repo: str, revision: str | None) -> tuple[str | None, set[str], Exception | None]:
    """The commit ``revision`` names on the Hub and the repo's files there, asked once so that a Hub out of reach
    sends every later step to the cache (not through huggingface_hub's retries); ``(None, {}, error)`` when offline
    (error None) or when the Hub did not answer (the cache may still hold it). A missing revision, or an id the
    Hub calls invalid, is a CheckpointError at once."""
    if hub_offline():
        return None, set(), None
    from huggingface_hub import HfApi, constants
    from huggingface_hub.utils import HFValidationError, RevisionNotFoundError

    try:  # within the library's own time limit for metadata requests (HF_HUB_ETAG_TIMEOUT)
        info = HfApi().repo_info(repo, revision=revision, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except (RevisionNotFoundError, HFValidationError) as err:
        raise CheckpointError(_hub_error(err, repo, revision)) from None
    except Exception as err:  # noqa: BLE001 - no connection, missing, private, gated, Hub down: try the cache
        return None, set(), err
    return info.sha, {s.rfilename for s in info.siblings or ()}, None


def _snapshot(repo: str, revision: str | None, files: list[str], asked: str | None, local: bool,
              unreached: Exception | None, quiet: bool = False) -> Path:
    """The snapshot folder of ``repo`` at ``revision`` holding ``files`` (those the repo has) in huggingface_hub's
    cache, fetched there unless ``local`` (the cache alone answers); its errors as one-line CheckpointErrors naming
    the revision ``asked`` for, and why the cache alone answered (``unreached``: the Hub's error; None: offline).
    ``quiet``: no progress bar (small files)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import LocalEntryNotFoundError

    bar = {"tqdm_class": _silent_bar()} if quiet else {}
    try:
        folder = Path(snapshot_download(repo, revision=revision, allow_patterns=files, local_files_only=local, **bar))
    except LocalEntryNotFoundError as err:
        if local and type(err).__name__ != "IncompleteSnapshotError":  # nothing cached for it
            raise CheckpointError(_not_cached(repo, asked, unreached)) from None
        raise CheckpointError(_hub_error(err, repo, asked)) from None
    except Exception as err:  # noqa: BLE001 - huggingface_hub raises its own, httpx's and OS errors
        raise CheckpointError(_hub_error(err, repo, asked)) from None
    if not (folder / HF_CONFIG_FILES[0]).is_file():
        raise CheckpointError(f"Hub model {_named(repo, asked)} has no config.json: it is no transformers model "
                              "(fastast-deploy reads AST models)")
    return folder


def _silent_bar() -> type:
    """A tqdm class that shows nothing (for fetching the small config files)."""
    from tqdm.auto import tqdm

    class Silent(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "disable": True})

    return Silent


def _not_cached(repo: str, revision: str | None, unreached: Exception | None) -> str:
    """Why a model missing from the cache could not be fetched: offline (``unreached`` None), the Hub's own
    answer (missing, private, gated), or no answer at all."""
    from huggingface_hub import constants
    from huggingface_hub.utils import GatedRepoError, RepositoryNotFoundError

    name = _named(repo, revision)
    where = f"the Hugging Face cache ({constants.HF_HUB_CACHE})"
    if unreached is None:
        return (f"{name} is no local path, and Hub model {name} is not cached while offline (HF_HUB_OFFLINE=1 or "
                f"--offline): nothing for it in {where}; fetch it once online, or point HF_HUB_CACHE or HF_HOME at "
                "the cache that holds it")
    if isinstance(unreached, RepositoryNotFoundError | GatedRepoError) or _status(unreached) == 401:
        return _hub_error(unreached, repo, revision)
    return (f"{name} is no local path, and Hub model {name} is not in {where} and the Hub could not be reached "
            f"({error_summary(unreached, with_type=True)})")


def _hub_error(err: Exception, repo: str, revision: str | None) -> str:
    """What a failed Hub request means, in one line, named as the user asked for it."""
    from huggingface_hub.utils import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    name = _named(repo, revision)
    login = "log in with `hf auth login` or set HF_TOKEN"
    if isinstance(err, GatedRepoError):
        return f"Hub model {repo} is gated: accept its conditions at https://huggingface.co/{repo}, then {login}"
    if isinstance(err, RepositoryNotFoundError) or _status(err) == 401:
        return (f"{name} is no local path, and the Hub has no model repository {repo} (it does not exist, or it is "
                f"private: {login})")
    if isinstance(err, RevisionNotFoundError):
        return f"Hub model {repo} has no revision {revision!r} (a branch, tag or commit hash)"
    if type(err).__name__ == "IncompleteSnapshotError":  # huggingface_hub >= 2: files of the snapshot missing
        return f"the cached snapshot of Hub model {name} is incomplete: {error_summary(err)}"
    if isinstance(err, EntryNotFoundError):
        return f"Hub model {name}: a file it lists is missing ({error_summary(err)})"
    if isinstance(err, HFValidationError):
        return f"{name} is no local path and no valid Hub repository id ({error_summary(err)})"
    if isinstance(err, HfHubHTTPError):
        return f"Hub model {name}: the Hub answered with an error ({error_summary(err, with_type=True)})"
    return f"Hub model {name} could not be fetched ({error_summary(err, with_type=True)})"


def _status(err: Any) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)
