"""Hostile agent files: each is refused with one line, and nothing runs and no file is written.

Every loader of an agent (``mara generate/evaluate/serve --agent``, ``MARAGenerator(agent=...)``,
``load_algorithm``, ``--resume``) reads files through :func:`agents.loading.load_agent` /
:func:`~agents.loading.load_algorithm`. The corpus: payloads pickled with every protocol (0-5), dotted and
dunder names under every module of the allow-list (protocol 4 resolves ``a.b.c`` attribute by
attribute), the ``numpy.dtypes.__loader__`` gadget that wrote and ran a Python file through the earlier
unpickler, calls and state changes of allowed classes used the wrong way, nested zips, a ``.pt`` with a
payload, oversized and truncated entries, and tampered agent files. Each payload would create a marker
file; every test checks that the marker and any other new file are absent afterwards.
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import struct
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from agents import loading
from agents.agent_file import AGENT_SETTINGS, AGENT_WEIGHTS, load_agent_file, save_agent_file
from agents.authors_format import UnsafeFileError
from agents.loading import load_agent, load_algorithm
from agents.safe_unpickler import UnsafePickleError, allowed_pairs, safe_loads

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "sac-discrete-v1-tiny.zip"


# ------------------------------------------------------------------------------------------------ builders


def _entries(path: Path = FIXTURE) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _write_zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    return path


def _zip_with_attribute(path: Path, raw: bytes, key: str = "observation_space") -> Path:
    """The fixture agent with one pickled attribute replaced by ``raw``."""
    entries = _entries()
    data = json.loads(entries["data"])
    data[key] = {":type:": "<class 'x'>", ":serialized:": base64.b64encode(raw).decode()}
    entries["data"] = json.dumps(data).encode()
    return _write_zip(path, entries)


def _op_str(text: str) -> bytes:
    """``SHORT_BINUNICODE`` or ``BINUNICODE`` of ``text``."""
    raw = text.encode()
    return (b"\x8c" + bytes([len(raw)]) if len(raw) < 256 else b"X" + struct.pack("<I", len(raw))) + raw


def _stack_global(module: str, name: str) -> bytes:
    return _op_str(module) + _op_str(name) + b"\x93"  # STACK_GLOBAL


def _proto4(body: bytes) -> bytes:
    return b"\x80\x04" + body + b"."


class _Touch:
    """Unpickling this calls ``pathlib.Path.touch`` on a marker: code execution."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.path),))


class _Exec:
    """Unpickling this runs Python source through ``builtins.exec``."""

    def __init__(self, marker: Path) -> None:
        self.code = f"open({str(marker)!r}, 'w').write('pwned')"

    def __reduce__(self):
        return (exec, (self.code,))


class _System:
    """Unpickling this runs a shell command through ``os.system``."""

    def __init__(self, marker: Path) -> None:
        self.command = f"touch {marker}"

    def __reduce__(self):
        import os

        return (os.system, (self.command,))


def dtypes_loader_gadget(folder: Path, marker: Path) -> bytes:
    """The crafted pickle of the finding: importlib's file loader, reached through ``numpy.dtypes.__loader__``.

    Protocol 4 resolves the dotted names attribute by attribute: ``__loader__.set_data`` writes a Python
    file, ``__loader__.__class__`` makes a loader for it and ``__loader__.__class__.load_module`` runs it,
    which creates ``marker``. The earlier unpickler let any name under ``numpy.dtypes`` through.
    """
    evil = folder / "evil_module.py"
    code = f"open({str(marker)!r}, 'w').write('pwned')\n".encode()
    body = (
        _stack_global("numpy.dtypes", "__loader__.set_data")
        + _op_str(str(evil))
        + b"C"  # SHORT_BINBYTES
        + bytes([len(code)])
        + code
        + b"\x86R0"  # TUPLE2, REDUCE, POP: the file is written
        + _stack_global("numpy.dtypes", "__loader__.__class__")
        + _op_str("evil_module")
        + _op_str(str(evil))
        + b"\x86R\x94"  # TUPLE2, REDUCE, MEMOIZE: a loader of that file, memo 0
        + b"0"  # POP
        + _stack_global("numpy.dtypes", "__loader__.__class__.load_module")
        + b"h\x00\x85R"  # BINGET 0, TUPLE1, REDUCE: the file runs
    )
    return _proto4(body)


# ------------------------------------------------------------------------------------------------ checks


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


def refused(load: Callable[[], object], folder: Path, marker: Path, match: str, kind: type = ValueError) -> str:
    """``load()`` raises ``kind`` with a one-line message matching ``match``; no file appears, the marker neither."""
    before = _files(folder)
    with pytest.raises(kind, match=match) as error:
        load()
    message = str(error.value)
    assert "\n" not in message.strip(), message
    assert not marker.exists(), "the payload ran"
    assert _files(folder) == before, f"files appeared: {_files(folder) - before}"
    return message


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "pwned"


# ------------------------------------------------------------------------------------------------ the corpus


@pytest.mark.parametrize("protocol", range(6))
@pytest.mark.parametrize("payload", [_Touch, _Exec, _System])
def test_reduce_payloads_of_every_protocol_are_refused(tmp_path, marker, protocol, payload):
    raw = pickle.dumps(payload(marker), protocol=protocol)
    path = _zip_with_attribute(tmp_path / "evil.zip", raw)
    message = refused(
        lambda: load_algorithm(path), tmp_path, marker, r"refusing to load .*could run code", UnsafeFileError
    )
    assert "'observation_space'" in message
    # the payload is real: the standard unpickler runs it
    pickle.loads(raw)
    assert marker.exists()


def test_the_numpy_dtypes_loader_gadget_is_refused(tmp_path, marker):
    raw = dtypes_loader_gadget(tmp_path, marker)
    # It is real: the standard unpickler writes the module and runs it (in a child process, to keep this one clean)
    script = f"import pickle, base64; pickle.loads(base64.b64decode({base64.b64encode(raw).decode()!r}))"
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    assert marker.exists() and (tmp_path / "evil_module.py").exists()
    marker.unlink()
    (tmp_path / "evil_module.py").unlink()

    path = _zip_with_attribute(tmp_path / "evil.zip", raw)
    message = refused(lambda: load_algorithm(path), tmp_path, marker, r"numpy\.dtypes\.__loader__", UnsafeFileError)
    assert "dotted or dunder" in message
    assert not (tmp_path / "evil_module.py").exists()
    refused(lambda: load_agent(path), tmp_path, marker, "could run code", UnsafeFileError)


@pytest.mark.parametrize("module", sorted({module for module, _ in allowed_pairs()}))
def test_dotted_and_dunder_names_under_every_allowed_module_are_refused(module):
    names = {name for m, name in allowed_pairs() if m == module}
    some = sorted(names)[0]
    for name in (
        "__loader__",
        "__loader__.__class__.set_data",
        "__builtins__",
        "__dict__",
        f"{some}.__init__",
        f"{some}.__class__.__subclasses__",
        f"{some}.mro",
    ):
        with pytest.raises(UnsafePickleError, match="not one of the data types"):
            safe_loads(_proto4(_stack_global(module, name)))
    for name in names:  # the exact pairs resolve; protocol 0's GLOBAL reaches the same check
        safe_loads(_proto4(_stack_global(module, name)))
        with pytest.raises(UnsafePickleError):
            safe_loads(f"c{module}\n{name}.__globals__\n.".encode())


def test_allowed_objects_used_the_wrong_way_are_refused():
    call = b"\x8c\x01x\x85R"  # ("x",) then REDUCE
    cases = {
        # a class that may only be named, called (a policy built from pickle arguments)
        "a call of agents.sac_discrete.policies.DiscreteSACPolicy": _stack_global(
            "agents.sac_discrete.policies", "DiscreteSACPolicy"
        )
        + call,
        # numpy's generator constructor calls the class it is given (and a callable of the pickle's choice,
        # which the wrapper never calls)
        "not one of numpy's bit generators": _stack_global("numpy.random._pickle", "__generator_ctor")
        + _stack_global("stable_baselines3.common.buffers", "ReplayBuffer")
        + b"\x85R",
        "an array of class": _stack_global("numpy._core.multiarray", "_reconstruct")
        + _stack_global("torch.optim.adam", "Adam")
        + b"K\x00\x85C\x01b\x87R",  # (Adam, (0,), b"b")
        "codec call": _stack_global("_codecs", "encode") + _op_str("x") + _op_str("rot13") + b"\x86R",
        "bytearray built from anything but bytes": _stack_global("builtins", "bytearray") + b"J\x00\x00\x00\x40\x85R",
        "setting the state of a builtins.function": _stack_global("numpy.random._pickle", "__generator_ctor")
        + b"}b",  # BUILD on a function object
        "APPENDS on a gymnasium.spaces.discrete.Discrete": _stack_global("gymnasium.spaces.discrete", "Discrete")
        + b"K\x02\x85R(K\x01e",
        "a persistent id": b"K\x01Q",  # BINPERSID
    }
    for match, body in cases.items():
        with pytest.raises(UnsafePickleError, match=match):
            safe_loads(_proto4(body))


def test_nested_zips_and_a_pt_with_a_payload_are_refused(tmp_path, marker):
    entries = _entries()
    # a torch archive (itself a zip) holding a payload, as the policy's weights
    payload = io.BytesIO()
    torch.save({"w": _Touch(marker)}, payload)
    evil = _write_zip(tmp_path / "evil_weights.zip", {**entries, "policy.pth": payload.getvalue()})
    refused(lambda: load_algorithm(evil), tmp_path, marker, r"its weights hold a reference to .*could run code")
    # a zip inside the zip in place of the settings
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as archive:
        archive.writestr("data", entries["data"])
    nested = _write_zip(tmp_path / "nested.zip", {**entries, "data": inner.getvalue()})
    refused(lambda: load_algorithm(nested), tmp_path, marker, r"its 'data' entry is not JSON")
    # an actor in the authors' .pt layout carrying a payload
    pt = tmp_path / "actor.pt"
    torch.save({"ln.weight": torch.ones(4), "x": _Touch(marker)}, pt)
    refused(lambda: load_agent(pt), tmp_path, marker, r"refusing to load .*actor\.pt.*could run code", UnsafeFileError)


def test_oversized_and_truncated_entries_are_refused(tmp_path, marker, monkeypatch):
    entries = _entries()
    # a zip bomb: 65 MiB of settings in a few kilobytes
    bomb = _write_zip(tmp_path / "bomb.zip", {**entries, "data": b" " * (65 << 20)})
    assert bomb.stat().st_size < 1 << 20
    refused(lambda: load_algorithm(bomb), tmp_path, marker, r"'data' inflates to 68,157,440 bytes")
    monkeypatch.setattr(loading, "MAX_ENTRY_BYTES", 1000)  # a weights entry past the limit, without writing GBs
    refused(lambda: load_algorithm(FIXTURE), tmp_path, marker, r"'\w+\.pth' inflates to .* more than the 1,000")
    monkeypatch.undo()

    whole = FIXTURE.read_bytes()
    cut = tmp_path / "cut.zip"
    cut.write_bytes(whole[: len(whole) // 2])
    # (its first half holds the torch archive of the weights, itself a zip, so it may read as that zip)
    refused(lambda: load_algorithm(cut), tmp_path, marker, r"is not an agent checkpoint: (not a zip|the zip has no)")
    short = _write_zip(tmp_path / "short_weights.zip", {**entries, "policy.pth": entries["policy.pth"][:200]})
    refused(lambda: load_algorithm(short), tmp_path, marker, r"is damaged: its weights cannot be read")
    data = json.loads(entries["data"])
    serialized = data["observation_space"][":serialized:"]
    data["observation_space"][":serialized:"] = serialized[: len(serialized) // 2]
    half = _write_zip(tmp_path / "half_pickle.zip", {**entries, "data": json.dumps(data).encode()})
    refused(lambda: load_algorithm(half), tmp_path, marker, r"attribute 'observation_space' is corrupt")


def test_tampered_agent_files_are_refused(tmp_path, marker):
    model = load_algorithm(FIXTURE, device="cpu")
    folder = tmp_path / "agent"
    save_agent_file(model, folder)
    settings = json.loads((folder / AGENT_SETTINGS).read_text())

    system = {"$type": "class", "name": "posix:system"}

    def with_settings(change: Callable[[dict], None]) -> Path:
        changed = json.loads(json.dumps(settings))
        change(changed)
        (folder / AGENT_SETTINGS).write_text(json.dumps(changed))
        return folder

    refused(
        lambda: load_agent_file(with_settings(lambda s: s["settings"].update(policy_class=system))),
        tmp_path, marker, r"names the class 'posix:system', which an agent file may not name",
    )  # fmt: skip
    refused(
        lambda: load_agent_file(with_settings(lambda s: s["weights"].update(file="../agent/agent.safetensors"))),
        tmp_path, marker, r"names the weights file",
    )  # fmt: skip
    refused(
        lambda: load_agent_file(with_settings(lambda s: s.update(format_version=99))),
        tmp_path, marker, r"format version 99; this mara-rl reads versions 1 to 1",
    )  # fmt: skip
    with_settings(lambda s: None)
    weights = folder / AGENT_WEIGHTS
    content = weights.read_bytes()
    weights.write_bytes(content[:-8] + b"\x00" * 8)
    refused(lambda: load_agent(folder), tmp_path, marker, r"does not match .*SHA-256 differs")
    weights.write_bytes(content)
    assert type(load_agent(folder)).__name__ == "DiscreteSAC"  # the untouched pair loads
