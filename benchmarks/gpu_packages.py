"""The packages ``benchmarks/gpu_suite.py`` needs on a bare GPU machine, and a check that they are there.

A machine with only torch and transformers needs :data:`EXTRA_PACKAGES` beside them, all pure Python:
``python benchmarks/gpu_suite.py --list-packages`` prints them pinned (:func:`package_lines`); the suite's
report lists what it loaded (:func:`loaded_distributions`), which its test checks against that list.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys

#: Packages beyond torch and transformers, as (distribution, module, version tested here). All pure Python.
EXTRA_PACKAGES = (
    ("gymnasium", "gymnasium", "1.4.0"),
    ("stable-baselines3", "stable_baselines3", "2.9.2"),
    ("cloudpickle", "cloudpickle", "3.1.3"),
    ("farama-notifications", "farama_notifications", "0.0.6"),
)
#: What the bare machine must already have (torch, transformers and what transformers itself pulls in).
BASE_PACKAGES = (
    ("torch", "torch"),
    ("transformers", "transformers"),
    ("numpy", "numpy"),
    ("tqdm", "tqdm"),
    ("safetensors", "safetensors"),
    ("tokenizers", "tokenizers"),
)


def package_lines() -> list[str]:
    """``NAME==VERSION`` of every package the suite needs beyond torch and transformers (this machine's
    version where installed, else the one tested)."""
    lines = []
    for dist, _, tested in EXTRA_PACKAGES:
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            version = tested
        lines.append(f"{dist}=={version}")
    return lines


def check_packages() -> None:
    """Exit with one message naming every missing package and how to get it."""
    missing = []
    for dist, module, *_ in (*BASE_PACKAGES, *EXTRA_PACKAGES):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(dist)
    if missing:
        raise SystemExit(
            f"gpu_suite: missing packages: {', '.join(missing)}. `python benchmarks/gpu_suite.py --list-packages` "
            "lists the ones beyond torch and transformers; the module docstring has the offline install recipe."
        )
    major = int(importlib.metadata.version("transformers").split(".")[0])
    if major < 5:
        raise SystemExit(
            f"gpu_suite: transformers {importlib.metadata.version('transformers')} is too old; mara-rl needs >= 5.0."
        )


def loaded_distributions() -> list[str]:
    """The installed distributions whose modules this process has imported (what a bare machine must have).

    Our own packages are left out: they travel with the repository (an editable install's metadata in
    the repository root would otherwise name ``mara-rl``).
    """
    names = importlib.metadata.packages_distributions()
    top = {module.split(".")[0] for module in list(sys.modules)} - {"mara_env", "agents"}
    return sorted({dist for module in top for dist in names.get(module, [])})
