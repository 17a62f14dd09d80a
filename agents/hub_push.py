"""Publishing a training run on the Hugging Face Hub: :func:`push_to_hub` and its :func:`model_card`.

What goes up is what a user needs to use and judge the agent, never a pickle (see :mod:`agents.hub`,
which reads ``hf:`` references and pulls agents back). This module sits above :mod:`agents.loading`:
a run that only has ``model.zip`` is loaded safely and converted to an agent file before it goes up.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from agents.agent_file import AGENT_SETTINGS, AGENT_WEIGHTS, is_agent_file, read_agent_settings, save_agent_file
from agents.hub import hub_error, parse_hub_ref
from agents.loading import load_algorithm

__all__ = ["model_card", "push_to_hub"]


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
            raise hub_error(error, f"push to {repo_id}", revision) from error


def _stage(run: Path, staging: Path, repo_id: str) -> dict[str, Any]:
    """Copy (or convert) what goes up into ``staging``; returns the agent's ``agent.json`` record."""
    if is_agent_file(run):
        for name in (AGENT_SETTINGS, AGENT_WEIGHTS):
            shutil.copy2(run / name, staging / name)
    elif (run / "model.zip").is_file():
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
