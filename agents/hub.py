"""Sharing agents on the Hugging Face Hub: push a training run, pull it back, load ``hf:`` agent paths.

What goes up is what a user needs to use and judge the agent, never a pickle: the agent file
(:mod:`agents.agent_file`: ``agent.json`` + ``agent.safetensors``), the run's resolved ``config.yaml``
(its LLM, decoding settings and reward models, which decoding must repeat), ``summary.json``, the
evaluation report (``eval/report.json``, ``report.md`` and its figures) when ``mara evaluate`` wrote one,
and a model card (``README.md``) made from them (:mod:`agents.hub_push` pushes). What comes down is
restricted to the same file names (:data:`PULLED_FILES`), so a repository that also holds pickles
never brings them here.

An agent on the Hub is named ``hf:ID[@REVISION][:FILE]`` wherever an agent path is taken (``mara generate
--agent``, ``MARAGenerator(agent=...)``, :func:`agents.loading.load_agent`):

- ``hf:me/mara-smollm2`` -- the agent file of the repository's main branch (the folder comes with its
  ``config.yaml``, which ``mara generate`` / ``serve`` then decode with);
- ``hf:me/mara-smollm2@v1`` -- a branch or tag; ``@<commit sha>`` pins the exact files;
- ``hf:authors/mara-llama:actor.pt`` -- one file: an actor in the MARA authors' layout (a ``.pt`` state
  dict, read with ``weights_only=True``), or an agent file's ``agent.json``.

A repository without an agent file but with exactly one actor file (``.pt``, ``.pth``, ``.bin``) resolves
to that file, so the authors' released actors load by their repository id alone.

Everything goes through ``huggingface_hub`` (``HfApi.upload_folder``, ``snapshot_download``,
``hf_hub_download``), so its cache, token (``huggingface-cli login``, ``$HF_TOKEN``), endpoint
(``$HF_ENDPOINT``) and offline mode (``$HF_HUB_OFFLINE=1``: the cache only) apply.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.agent_file import AGENT_SETTINGS, AGENT_WEIGHTS, is_agent_file
from agents.authors_format import AUTHORS_SUFFIXES

__all__ = [
    "HF_PREFIX",
    "PULLED_FILES",
    "HubRef",
    "hub_agent_path",
    "is_hub_ref",
    "parse_hub_ref",
    "pull_from_hub",
]

#: The prefix naming an agent on the Hub.
HF_PREFIX = "hf:"

#: The files a pull brings down (glob patterns of ``huggingface_hub``): the agent file, the run's settings,
#: its summary and evaluation, the model card. No pickle (``model.zip``, ``*.pkl``) is ever downloaded.
PULLED_FILES: tuple[str, ...] = (
    AGENT_SETTINGS,
    AGENT_WEIGHTS,
    "config.yaml",
    "summary.json",
    "README.md",
    "eval/report.json",
    "eval/report.md",
    "eval/*.png",
)

_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")


@dataclass(frozen=True)
class HubRef:
    """An agent on the Hub: ``hf:repo_id[@revision][:filename]``.

    :param repo_id: ``owner/name`` (or ``name``).
    :param revision: a branch, tag or commit sha; ``None``: the default branch.
    :param filename: one file of the repository; ``None``: its agent file (or its one actor file).
    """

    repo_id: str
    revision: str | None = None
    filename: str | None = None

    def __str__(self) -> str:
        revision = f"@{self.revision}" if self.revision else ""
        filename = f":{self.filename}" if self.filename else ""
        return f"{HF_PREFIX}{self.repo_id}{revision}{filename}"


def is_hub_ref(value: Any) -> bool:
    """Whether ``value`` is text naming an agent on the Hub (``hf:...``)."""
    return isinstance(value, str) and value.startswith(HF_PREFIX)


def parse_hub_ref(text: str) -> HubRef:
    """Read ``hf:ID[@REVISION][:FILE]`` (the ``hf:`` may be left off).

    Example::

        >>> parse_hub_ref("hf:me/mara-agent@v2:agent.json")
        HubRef(repo_id='me/mara-agent', revision='v2', filename='agent.json')
        >>> str(parse_hub_ref("me/mara-agent"))
        'hf:me/mara-agent'

    :raises ValueError: not a repository id, with the form it should have.
    """
    full = text[len(HF_PREFIX) :] if text.startswith(HF_PREFIX) else text
    body, colon, filename = full.partition(":")
    repo_id, at, revision = body.partition("@")
    if not _REPO_ID.match(repo_id) or (at and not revision) or (colon and not filename):
        raise ValueError(
            f"{text!r} does not name an agent on the Hugging Face Hub: write hf:OWNER/NAME, optionally with "
            "@REVISION (a branch, tag or commit) and :FILE (one file of the repository), e.g. "
            "hf:me/mara-agent@main:agent.json."
        )
    return HubRef(repo_id, revision or None, filename or None)


# ------------------------------------------------------------------------------------------------ pulling


def pull_from_hub(
    repo_id: str, *, revision: str | None = None, local_dir: str | Path | None = None, token: str | None = None
) -> Path:
    """Download a pushed agent (the files of :data:`PULLED_FILES`) and return its folder.

    The folder is an agent folder for :func:`agents.loading.load_agent`, and with its ``config.yaml`` a
    run folder for ``mara generate --run`` / ``mara evaluate --run``.

    :param repo_id: ``owner/name`` (or ``hf:owner/name[@revision]``).
    :param revision: a branch, tag or commit sha (overrides one in ``repo_id``).
    :param local_dir: put the files there (default: ``huggingface_hub``'s cache, one folder per commit).
    :param token: a Hub token, for private repositories.
    :raises FileNotFoundError: no such repository or revision, or it holds no agent file.
    """
    import huggingface_hub

    ref = parse_hub_ref(repo_id)
    revision = revision or ref.revision
    try:
        path = huggingface_hub.snapshot_download(
            repo_id=ref.repo_id,
            revision=revision,
            local_dir=None if local_dir is None else str(local_dir),
            token=token,
            allow_patterns=list(PULLED_FILES),
        )
    except Exception as error:
        raise hub_error(error, f"download {ref.repo_id}", revision) from error
    folder = Path(path)
    if not is_agent_file(folder):
        where = f"hf:{ref.repo_id}" + (f"@{revision}" if revision else "")
        raise FileNotFoundError(
            f"{where} holds no MARA agent file ({AGENT_SETTINGS} + {AGENT_WEIGHTS}): push one with `mara push`, or "
            f"name one file of the repository, e.g. {where}:actor.pt for an actor in the authors' layout."
        )
    return folder


def hub_agent_path(text: str, *, token: str | None = None) -> Path:
    """The local path of the agent ``hf:ID[@REVISION][:FILE]`` names, downloaded if needed (see the module).

    :return: an agent folder (with the run's ``config.yaml`` when it was pushed with one) or one file.
    :raises FileNotFoundError: no such repository, revision or file, or no agent in the repository.
    :raises ValueError: a malformed reference.
    """
    import huggingface_hub

    ref = parse_hub_ref(text)
    filename = ref.filename
    if filename in (AGENT_SETTINGS, AGENT_WEIGHTS):
        return pull_from_hub(ref.repo_id, revision=ref.revision, token=token)
    if filename is None:
        files = _repo_files(ref, token)
        if AGENT_SETTINGS in files:
            return pull_from_hub(ref.repo_id, revision=ref.revision, token=token)
        actors = [f for f in files if f.lower().endswith(AUTHORS_SUFFIXES)]
        if len(actors) != 1:
            found = f"its actor files are {actors}" if actors else f"its files are {sorted(files)[:10]}"
            raise FileNotFoundError(
                f"{ref} holds no MARA agent file ({AGENT_SETTINGS}) and {found}: name the agent's file, e.g. "
                f"{HF_PREFIX}{ref.repo_id}{'@' + ref.revision if ref.revision else ''}:FILE."
            )
        filename = actors[0]
    if not filename.lower().endswith(AUTHORS_SUFFIXES):
        raise ValueError(
            f"{ref}: {filename!r} is not an agent file: name {AGENT_SETTINGS} (a MARA agent file) or an actor in the "
            f"authors' layout ({', '.join(AUTHORS_SUFFIXES)}). Zipped SB3 saves hold pickles and are not loaded "
            "from the Hub."
        )
    try:
        return Path(huggingface_hub.hf_hub_download(ref.repo_id, filename, revision=ref.revision, token=token))
    except Exception as error:
        raise hub_error(error, f"download {filename} from {ref.repo_id}", ref.revision) from error


def _repo_files(ref: HubRef, token: str | None) -> list[str]:
    """The repository's files at ``ref.revision``: listed by the Hub, or offline, those of the cached snapshot
    that an agent reference could use (the agent file and actor files)."""
    import huggingface_hub

    try:
        if not _offline():
            return list(huggingface_hub.HfApi(token=token).list_repo_files(ref.repo_id, revision=ref.revision))
        patterns = [*PULLED_FILES, *(f"*{suffix}" for suffix in AUTHORS_SUFFIXES)]
        folder = Path(huggingface_hub.snapshot_download(ref.repo_id, revision=ref.revision, allow_patterns=patterns))
    except Exception as error:
        raise hub_error(error, f"list the files of {ref.repo_id}", ref.revision) from error
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _offline() -> bool:
    """Whether ``huggingface_hub`` is in offline mode (``$HF_HUB_OFFLINE``, read when it was imported)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_error(error: Exception, what: str, revision: str | None) -> Exception:
    """One clear error for the Hub's failures (a missing repository, revision or file; no network; no token)."""
    from huggingface_hub import errors

    at = f" at revision {revision!r}" if revision else ""
    if isinstance(error, errors.RepositoryNotFoundError):
        return FileNotFoundError(
            f"could not {what}: the repository does not exist on the Hub, or it is private and no token with access "
            "was given (huggingface-cli login, $HF_TOKEN or --token)."
        )
    if isinstance(error, errors.RevisionNotFoundError):
        return FileNotFoundError(f"could not {what}: no revision {revision!r} (a branch, tag or commit) there.")
    offline = getattr(errors, "OfflineModeIsEnabled", ())
    if isinstance(error, (errors.LocalEntryNotFoundError, offline)):  # before EntryNotFoundError, its base
        return FileNotFoundError(
            f"could not {what}{at}: the Hub cannot be reached (or $HF_HUB_OFFLINE is set) and the files are not in "
            "the local cache. Connect once to download them, or use a local agent path."
        )
    if isinstance(error, errors.EntryNotFoundError):
        return FileNotFoundError(f"could not {what}{at}: no such file in the repository.")
    if isinstance(error, (FileNotFoundError, ValueError, PermissionError)):
        return error
    return RuntimeError(f"could not {what}{at}: {type(error).__name__}: {error}")
