"""Sharing agents on the Hugging Face Hub: push a training run, pull it back, load ``hf:`` agent paths.

What goes up is what a user needs to use and judge the agent, never a pickle: the agent file
(:mod:`agents.agent_file`: ``agent.json`` + ``agent.safetensors``), the run's resolved ``config.yaml``
(its LLM, decoding settings and reward models, which decoding must repeat), ``summary.json``, the
evaluation report (``eval/report.json``, ``report.md`` and its figures) when ``mara evaluate`` wrote one,
and a model card (``README.md``, :func:`model_card`) made from them. What comes down is restricted to the
same file names (:data:`PULLED_FILES`), so a repository that also holds pickles never brings them here.

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

import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agents.agent_file import AGENT_SETTINGS, AGENT_WEIGHTS, is_agent_file, read_agent_settings, save_agent_file
from agents.loading import AUTHORS_SUFFIXES

__all__ = [
    "HF_PREFIX",
    "PULLED_FILES",
    "HubRef",
    "hub_agent_path",
    "is_hub_ref",
    "model_card",
    "parse_hub_ref",
    "pull_from_hub",
    "push_to_hub",
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


# ------------------------------------------------------------------------------------------------ pushing


def push_to_hub(
    run: str | Path,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
) -> Any:
    """Upload a training run's agent, settings, evaluation and a model card to the Hub repository ``repo_id``.

    The repository is created if it does not exist, and the branch ``revision`` likewise. A run that has
    only ``model.zip`` (trained before agent files existed) is converted: its model is loaded safely and
    written as an agent file; the zip itself is never uploaded.

    :param run: the run folder ``mara train`` wrote (or an agent folder alone).
    :param repo_id: ``owner/name``.
    :param revision: the branch to commit to (default: the repository's default branch).
    :param private: make a new repository private (an existing one keeps its visibility).
    :param token: a Hub token (default: the one ``huggingface_hub`` finds: login, ``$HF_TOKEN``).
    :param commit_message: default ``"Upload MARA agent (<algo>, <decisions> decisions)"``.
    :return: ``huggingface_hub``'s ``CommitInfo`` (``.oid`` the commit, ``.commit_url``).
    :raises FileNotFoundError: the run holds no agent.
    :raises ValueError: a bad repository id.
    """
    import huggingface_hub

    parse_hub_ref(repo_id)  # the id's form, before anything is written
    run = Path(run)
    with tempfile.TemporaryDirectory(prefix="mara-push-") as staging_dir:
        staging = Path(staging_dir)
        settings = _stage(run, staging, repo_id)
        message = commit_message or (
            f"Upload MARA agent ({settings.get('algo')}, {settings.get('num_timesteps')} decisions)"
        )
        api = huggingface_hub.HfApi(token=token)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            if revision is not None:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            return api.upload_folder(
                repo_id=repo_id, folder_path=str(staging), revision=revision, commit_message=message
            )
        except Exception as error:
            raise _hub_error(error, f"push to {repo_id}", revision) from error


def _stage(run: Path, staging: Path, repo_id: str) -> dict[str, Any]:
    """Copy (or convert) what goes up into ``staging``; returns the agent's ``agent.json`` record."""
    if is_agent_file(run):
        for name in (AGENT_SETTINGS, AGENT_WEIGHTS):
            shutil.copy2(run / name, staging / name)
    elif (run / "model.zip").is_file():
        from agents.loading import load_algorithm

        save_agent_file(load_algorithm(run / "model.zip", device="cpu"), staging)
    elif not run.exists():
        raise FileNotFoundError(f"mara push: {run} does not exist; pass the run folder `mara train --out` wrote.")
    else:
        raise FileNotFoundError(
            f"mara push: {run} holds no agent ({AGENT_SETTINGS} + {AGENT_WEIGHTS}, or model.zip): train it first with "
            f"`mara train --out {run}`."
        )
    for name in ("config.yaml", "summary.json", "eval/report.json", "eval/report.md"):
        if (run / name).is_file():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(run / name, staging / name)
    for figure in sorted((run / "eval").glob("*.png")):
        shutil.copy2(figure, staging / "eval" / figure.name)
    settings = read_agent_settings(staging)
    (staging / "README.md").write_text(model_card(staging, repo_id), encoding="utf-8")
    return settings


# ------------------------------------------------------------------------------------------------ the card


def model_card(folder: str | Path, repo_id: str | None = None) -> str:
    """A model card (``README.md`` with the Hub's YAML metadata) for the agent in ``folder``.

    It names the algorithm, the LLM and the decoding settings the agent was trained under, the reward and
    cost models, the prompts, the training budget, and the evaluation table when ``eval/report.json`` is
    there; and how to use the agent.

    :param folder: a folder holding the agent file and, optionally, ``config.yaml``, ``summary.json`` and ``eval/``.
    :param repo_id: the repository's id, for the usage lines (default: a placeholder).
    """
    folder = Path(folder)
    agent = read_agent_settings(folder)
    config = _read_yaml(folder / "config.yaml")
    env, train, agent_section = config.get("env", {}), config.get("train", {}), config.get("agent", {})
    report = _read_json(folder / "eval" / "report.json")
    llm = env.get("llm")
    llm_name = "embedded:SmolLM2-135M-Instruct (HuggingFaceTB/SmolLM2-135M-Instruct)" if llm is None else str(llm)
    base_model = "HuggingFaceTB/SmolLM2-135M-Instruct" if llm is None else llm
    name = repo_id or "OWNER/NAME"

    meta: dict[str, Any] = {
        "library_name": "mara-rl",
        "tags": ["reinforcement-learning", "mara", "token-level-alignment", "stable-baselines3", agent["algo"]],
        "pipeline_tag": "text-generation",
    }
    if isinstance(base_model, str) and re.match(r"^[\w.-]+/[\w.-]+$", base_model):
        meta["base_model"] = base_model
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", ""]
    lines += [
        f"# MARA agent: {agent['algo']} on {llm_name}",
        "",
        "A token-level accept/reject agent trained with mara-rl (MARA, "
        '"Token-level Accept or Reject", IJCAI 2025). It does not change the LLM\'s weights: at every position '
        "the LLM proposes its top-k / top-p candidates and the agent accepts or rejects them one at a time, "
        "looking at the LLM's hidden state. It must decode with the settings below (the candidate sets it was "
        "trained on).",
        "",
        "## Use",
        "",
        "```bash",
        "pip install mara-rl",
        f'mara generate --agent hf:{name} "How do I pick a lock?"   # decodes with this repository\'s config.yaml',
        f"mara pull {name} --out my-agent                            # or download it once",
        "```",
        "",
        "```python",
        "from agents import MARAGenerator",
        "",
        f'gen = MARAGenerator(llm={llm!r}, agent="hf:{name}", top_k={env.get("top_k")}, top_p={env.get("top_p")})',
        'print(gen.generate(["How do I pick a lock?"], max_new_tokens=64)[0].text)',
        "```",
        "",
        "The agent is stored as `agent.safetensors` (weights) and `agent.json` (settings): loading it runs no "
        "code from the files.",
        "",
        "## Training",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    rows = {
        "algorithm": agent["algo"],
        "decisions trained": agent.get("num_timesteps"),
        "environment": env.get("env_id"),
        "LLM": llm_name,
        "candidates (top_k, top_p, temperature)": _join(env, "top_k", "top_p", "temperature"),
        "max_new_tokens": env.get("max_new_tokens"),
        "reward model R (alpha_r)": _pair(env, "reward_model", "alpha_r"),
        "cost model C (alpha_c)": _pair(env, "cost_model", "alpha_c"),
        "kl_coef": env.get("kl_coef"),
        "reward shaping": _pair(env, "reward_shaping", "shaping_gamma"),
        "prompts (split, test fraction, seed)": _prompts(env),
        "sub-environments, seed": _join(train, "num_envs", "seed"),
        "hyperparameters": ", ".join(f"{k}={v}" for k, v in agent_section.items() if k != "algo") or None,
        "observation size": agent.get("observation_size"),
        "library versions": ", ".join(f"{k} {v}" for k, v in (agent.get("versions") or {}).items()) or None,
    }
    lines += [f"| {key} | {_cell(value)} |" for key, value in rows.items() if value is not None]
    lines += ["", "The full settings are in `config.yaml` (`mara train --config config.yaml` repeats the run).", ""]
    lines += _evaluation(report)
    return "\n".join(lines) + "\n"


def _evaluation(report: dict[str, Any]) -> list[str]:
    if not report:
        return ["## Evaluation", "", "No evaluation was uploaded with this agent (`mara evaluate` writes one).", ""]
    samples = report.get("samples_per_prompt", 1)
    # meta["prompts"] is the prompt source for `mara evaluate` (a count when write_report was called without
    # one), so the number of prompts comes from the rows: one per prompt and sample.
    source = report.get("meta", {}).get("prompts")
    of_source = f" of `{source}`" if isinstance(source, str) else ""
    n_prompts = len({row.get("index") for row in report.get("rows", [])})
    lines = [
        "## Evaluation",
        "",
        f"`mara evaluate` on {n_prompts} held-out prompts{of_source} ({samples} answer(s) per prompt and system), "
        "each system "
        f"against the base LLM ({report.get('baseline')}): a system wins a prompt only if its reward is higher "
        "*and* its cost lower (the paper's appendix A.2); 95% prompt-bootstrap intervals.",
        "",
        "| system | win | tie | lose | preference rate [95% CI] | reward diff | cost diff | KL (nats) |",
        "|---|---:|---:|---:|---|---|---|---:|",
    ]
    systems = report.get("systems", {})
    for name, c in report.get("comparisons", {}).items():
        kl = systems.get(name, {}).get("kl_mean")
        lines.append(
            f"| {name} | {c['wins']} | {c['ties']} | {c['losses']} | {c['rate']:+.1%} "
            f"[{c['ci_low']:+.1%}, {c['ci_high']:+.1%}] | {_diff(c.get('reward_diff'))} | "
            f"{_diff(c.get('cost_diff'))} | {'-' if kl is None else f'{kl:.2f}'} |"
        )
    lines += ["", "The full report: `eval/report.md` (answers in `eval/report.json`).", ""]
    return lines


def _diff(d: dict[str, Any] | None) -> str:
    return "-" if not d else f"{d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"


def _join(section: dict[str, Any], *keys: str) -> str | None:
    values = [section.get(k) for k in keys]
    return None if all(v is None for v in values) else ", ".join(str(v) for v in values)


def _pair(section: dict[str, Any], key: str, weight: str) -> str | None:
    return None if key not in section else f"{section[key]} ({section.get(weight)})"


def _prompts(env: dict[str, Any]) -> str | None:
    if "prompts" not in env:
        return None
    column = f", column {env['prompt_column']}" if env.get("prompt_column") else ""
    return f"{env['prompts']}{column} ({env.get('prompt_split')}, {env.get('test_fraction')}, {env.get('split_seed')})"


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


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
        raise _hub_error(error, f"download {ref.repo_id}", revision) from error
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
        raise _hub_error(error, f"download {filename} from {ref.repo_id}", ref.revision) from error


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
        raise _hub_error(error, f"list the files of {ref.repo_id}", ref.revision) from error
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _offline() -> bool:
    """Whether ``huggingface_hub`` is in offline mode (``$HF_HUB_OFFLINE``, read when it was imported)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _hub_error(error: Exception, what: str, revision: str | None) -> Exception:
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
