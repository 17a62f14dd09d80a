"""Sharing agents on the Hub, offline: a local folder stands in for the Hugging Face Hub.

``LocalHub`` implements the few ``huggingface_hub`` calls :mod:`agents.hub` makes (create a repository
and a branch, upload a folder as a commit, list files, download a snapshot or one file at a revision)
over a folder, and the tests put it in place of ``huggingface_hub``'s functions: the network is never
touched (``HF_HUB_OFFLINE=1`` is set by conftest, so a call that escaped would fail).
"""

from __future__ import annotations

import fnmatch
import hashlib
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import numpy as np
import pytest
import torch
from conftest import make_actor

import agents.hub
from agents.accept import accept_probabilities
from agents.agent_file import is_agent_file
from agents.cli import main
from agents.hub import PULLED_FILES, hub_agent_path, parse_hub_ref, pull_from_hub
from agents.hub_push import push_to_hub
from agents.loading import load_agent

FIXTURES = Path(__file__).parent / "fixtures"


class LocalHub:
    """A Hub in a folder: ``<root>/<repo>/commits/<sha>/...`` (each commit a full tree) and ``refs/<branch>``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.downloads = root / "_downloads"

    # HfApi methods -----------------------------------------------------------------------------------------
    def create_repo(self, repo_id, private=None, exist_ok=False, **_):
        repo = self.root / repo_id
        if repo.exists() and not exist_ok:
            raise FileExistsError(repo_id)
        (repo / "refs").mkdir(parents=True, exist_ok=True)

    def create_branch(self, repo_id, branch, exist_ok=False, **_):
        ref = self.root / repo_id / "refs" / branch
        if not ref.exists():
            main = self.root / repo_id / "refs" / "main"
            ref.write_text(main.read_text() if main.exists() else "")

    def upload_folder(self, repo_id, folder_path, revision=None, commit_message=None, **_):
        repo = self.root / repo_id
        branch = revision or "main"
        parent = self._sha(repo_id, branch, missing_ok=True)
        tree = repo / "tmp-tree"
        shutil.rmtree(tree, ignore_errors=True)
        if parent:
            shutil.copytree(repo / "commits" / parent, tree)
        shutil.copytree(folder_path, tree, dirs_exist_ok=True)
        digest = hashlib.sha1(commit_message.encode())
        for path in sorted(tree.rglob("*")):
            if path.is_file():
                digest.update(path.relative_to(tree).as_posix().encode() + path.read_bytes())
        sha = digest.hexdigest()
        (repo / "commits").mkdir(exist_ok=True)
        if not (repo / "commits" / sha).exists():
            tree.rename(repo / "commits" / sha)
        shutil.rmtree(tree, ignore_errors=True)
        (repo / "refs" / branch).write_text(sha)
        return SimpleNamespace(oid=sha, commit_url=f"local://{repo_id}/commit/{sha}")

    def list_repo_files(self, repo_id, revision=None, **_):
        tree = self._tree(repo_id, revision)
        return sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file())

    # module functions --------------------------------------------------------------------------------------
    def snapshot_download(self, repo_id, revision=None, local_dir=None, allow_patterns=None, **_):
        tree = self._tree(repo_id, revision)
        sha = tree.name
        out = Path(local_dir) if local_dir else self.downloads / repo_id / sha
        for name in self.list_repo_files(repo_id, revision):
            if allow_patterns is None or any(fnmatch.fnmatch(name, p) for p in allow_patterns):
                (out / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(tree / name, out / name)
        return str(out)

    def hf_hub_download(self, repo_id, filename, revision=None, **_):
        tree = self._tree(repo_id, revision)
        if not (tree / filename).is_file():
            raise _http_error("RemoteEntryNotFoundError", f"{filename} not in {repo_id}")
        out = self.downloads / repo_id / tree.name / filename
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(tree / filename, out)
        return str(out)

    # ------------------------------------------------------------------------------------------------------
    def _sha(self, repo_id, revision, missing_ok=False):
        repo = self.root / repo_id
        if not repo.exists():
            raise _http_error("RepositoryNotFoundError", f"{repo_id} not found")
        ref = repo / "refs" / (revision or "main")
        if ref.exists():
            return ref.read_text()
        if revision and (repo / "commits" / revision).is_dir():
            return revision  # a commit sha pins the tree
        if missing_ok:
            return ""
        raise _http_error("RevisionNotFoundError", f"{revision} not in {repo_id}")

    def _tree(self, repo_id, revision):
        return self.root / repo_id / "commits" / self._sha(repo_id, revision)


def _http_error(name: str, message: str) -> Exception:
    """The error ``huggingface_hub`` raises for a 404 of this kind (it carries the HTTP response)."""
    import httpx
    from huggingface_hub import errors

    response = httpx.Response(404, request=httpx.Request("GET", "https://huggingface.co/local"))
    return getattr(errors, name)(message, response=response)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    local = LocalHub(tmp_path / "hub")
    local.root.mkdir()
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: local)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", local.snapshot_download)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", local.hf_hub_download)
    monkeypatch.setattr(agents.hub, "_offline", lambda: False)  # the stand-in answers like the Hub online
    return local


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A short ``mara train`` run on the tiny model, evaluated by ``mara evaluate`` (so the card has a table)."""
    from conftest import save_tiny_files

    folder = tmp_path_factory.mktemp("hub-run")
    llm, prompts = save_tiny_files(folder)
    run = folder / "run"
    flags = [
        *("--llm", str(llm), "--prompts", str(prompts), "--test-fraction", "0.25"),
        *("--reward-model", "length", "--cost-model", "none", "--max-new-tokens", "8", "--top-k", "8"),
        *("--devices", "cpu", "--num-envs", "4", "--no-progress", "--total-decisions", "64"),
        *("--learning-starts", "16", "--batch-size", "16", "--checkpoint-every", "64", "--log-every", "32"),
    ]
    assert main(["train", "--out", str(run), *flags]) == 0
    assert main(["evaluate", "--run", str(run), "--best-of", "0", "--no-progress", "--batch-size", "4"]) == 0
    return run


def _observations(size: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(64, size)).astype(np.float32)
    # MARA-v1's last features include log p_ref(reject|k), log p_ref(accept|k): give them valid values
    p = rng.uniform(0.05, 0.95, size=64)
    layout_accept, layout_reject = size - 7, size - 6
    obs[:, layout_accept], obs[:, layout_reject] = np.log(p), np.log1p(-p)
    return obs


def _no_unpickling(monkeypatch) -> None:
    """Every way to unpickle raises: loading must not need it."""
    import cloudpickle

    def refuse(*args, **kwargs):
        raise AssertionError("the pulled agent was unpickled")

    for module, name in ((pickle, "loads"), (pickle, "load"), (pickle, "Unpickler"), (cloudpickle, "loads")):
        monkeypatch.setattr(module, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)


def test_push_then_pull_gives_the_same_agent_without_unpickling(hub, trained_run, tmp_path, monkeypatch, capsys):
    assert main(["push", "--run", str(trained_run), "--repo-id", "me/mara-tiny"]) == 0
    assert "pushed" in capsys.readouterr().out
    files = hub.list_repo_files("me/mara-tiny")
    assert {"agent.json", "agent.safetensors", "config.yaml", "README.md", "eval/report.json"} <= set(files)
    assert not [f for f in files if f.endswith((".zip", ".pkl", ".pt", ".pth"))], "no pickle goes up"

    assert main(["pull", "me/mara-tiny", "--out", str(tmp_path / "pulled")]) == 0
    pulled = Path(capsys.readouterr().out.splitlines()[0])
    assert pulled == tmp_path / "pulled" and is_agent_file(pulled)
    assert all(any(fnmatch.fnmatch(f, p) for p in PULLED_FILES) for f in hub.list_repo_files("me/mara-tiny"))

    original = load_agent(trained_run / "model.zip", device="cpu")
    obs = _observations(original.observation_space.shape[0])
    expected = accept_probabilities(original, obs)
    with monkeypatch.context() as patched:
        _no_unpickling(patched)
        agent = load_agent(pulled, device="cpu")
        by_reference = load_agent("hf:me/mara-tiny", device="cpu")
    assert np.array_equal(accept_probabilities(agent, obs), expected)
    assert np.array_equal(accept_probabilities(by_reference, obs), expected)

    card = (pulled / "README.md").read_text()
    assert "library_name: mara-rl" in card and "sac-discrete" in card
    assert "| top_k" not in card and "8, 0.95, 1.0" in card, "the decoding settings it was trained under"
    assert "preference rate" in card and "| mara |" in card, "the evaluation table"
    assert "on 2 held-out prompts" in card and "hf:me/mara-tiny" in card


def test_revisions_pin_the_files(hub, trained_run, tmp_path):
    first = push_to_hub(trained_run, "me/pinned")
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(FIXTURES / "sac-discrete-v1-tiny.zip", other / "model.zip")  # an old run: converted on push
    second = push_to_hub(other, "me/pinned", commit_message="another agent")
    assert first.oid != second.oid
    size = load_agent(trained_run / "model.zip", device="cpu").observation_space.shape[0]
    obs = _observations(size)
    at_first = load_agent(f"hf:me/pinned@{first.oid}", device="cpu")
    latest = load_agent("hf:me/pinned", device="cpu")
    assert np.array_equal(
        accept_probabilities(at_first, obs), accept_probabilities(load_agent(trained_run, device="cpu"), obs)
    )
    fixture = load_agent(FIXTURES / "sac-discrete-v1-tiny.zip", device="cpu")
    assert np.array_equal(accept_probabilities(latest, obs), accept_probabilities(fixture, obs))
    push_to_hub(trained_run, "me/pinned", revision="v1")  # a branch
    assert pull_from_hub("me/pinned", revision="v1").name != pull_from_hub("me/pinned").name


def test_authors_actor_loads_from_the_hub_path(hub, tmp_path, monkeypatch):
    from agents.authors_format import export_authors_actor

    actor = make_actor(32)
    with torch.no_grad():
        for parameter in actor.parameters():
            parameter.normal_()
    upload = tmp_path / "upload"
    upload.mkdir()
    export_authors_actor(actor, upload / "actor.pt")
    hub.create_repo("authors/mara-actor")
    hub.upload_folder(repo_id="authors/mara-actor", folder_path=upload, commit_message="release")
    obs = np.random.default_rng(1).normal(size=(16, 32)).astype(np.float32)
    with torch.no_grad():
        expected = actor.action_probs(torch.as_tensor(obs))[0][:, 1].numpy()
    # offline, the files come from the cached snapshot (the stand-in's snapshot plays the cache) instead of a listing
    monkeypatch.setattr(agents.hub, "_offline", lambda: True)
    assert hub_agent_path("hf:authors/mara-actor").name == "actor.pt"
    monkeypatch.setattr(agents.hub, "_offline", lambda: False)
    for ref in ("hf:authors/mara-actor", "hf:authors/mara-actor:actor.pt"):
        path = hub_agent_path(ref)
        assert path.suffix == ".pt"
        loaded = load_agent(ref)
        with torch.no_grad():
            got = loaded.action_probs(torch.as_tensor(obs))[0][:, 1].numpy()
        assert np.array_equal(got, expected)


def test_hub_errors_are_one_clear_line(hub, trained_run, capsys):
    with pytest.raises(ValueError, match="hf:OWNER/NAME"):
        parse_hub_ref("hf:not a repo")
    assert main(["generate", "--agent", "hf:me/missing", "hello"]) == 2
    assert "does not exist on the Hub" in capsys.readouterr().err
    push_to_hub(trained_run, "me/exists")
    assert main(["generate", "--agent", "hf:me/exists@v9", "hello"]) == 2
    assert "no revision 'v9'" in capsys.readouterr().err
    assert main(["generate", "--agent", "hf:me/exists:model.zip", "hello"]) == 2
    assert "not loaded from the Hub" in capsys.readouterr().err


def test_generate_with_a_hub_agent_decodes_with_its_settings(hub, trained_run, capsys):
    push_to_hub(trained_run, "me/gen")
    assert main(["generate", "--agent", "hf:me/gen", "--json", "tell me a story"]) == 0
    import json

    record = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert record["num_tokens"] <= 8, "the pushed config.yaml's max_new_tokens"
    assert record["num_decisions"] >= 1
