"""The dependency between the two packages points one way, and the algorithms stand alone.

Each import runs in a fresh interpreter, so that modules other tests imported do not hide a dependency.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

#: Modules that must work on any Gymnasium environment, without ``mara_env`` (and its LLM machinery).
ALGORITHM_MODULES = (
    "agents",
    "agents.sac_discrete",
    "agents.presets",
    "agents.hyperparameters",
    "agents.reference_anchor",
    "agents.registry",
    "agents.loading",
    "agents.safe_unpickler",
    "agents.agent_file",
    "agents.accept",
    "agents.hints",
    "agents.files",
    "agents.errors",
)

#: The application layers under the command line: the ``mara`` command uses them, never the reverse.
APPLICATION_MODULES = (
    "agents.training.runner",
    "agents.distributed.learner",
    "agents.evaluation.pipeline",
    "agents.generation",
    "agents.serving",
)


def _loaded_after_import(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


@pytest.mark.parametrize("module", ALGORITHM_MODULES)
def test_algorithm_modules_do_not_import_mara_env(module: str) -> None:
    loaded = _loaded_after_import(module)
    assert not {name for name in loaded if name == "mara_env" or name.startswith("mara_env.")}, module


def test_mara_env_does_not_import_agents() -> None:
    loaded = _loaded_after_import("mara_env")
    assert not {name for name in loaded if name == "agents" or name.startswith("agents.")}


@pytest.mark.parametrize("module", APPLICATION_MODULES)
def test_application_modules_do_not_import_the_command_line(module: str) -> None:
    loaded = _loaded_after_import(module)
    assert not {name for name in loaded if name == "agents.cli" or name.startswith("agents.cli.")}, module


def test_lazy_evaluation_names_are_the_pipelines_exports() -> None:
    # agents.evaluation lists the pipeline's names by hand, to load it only on first use
    import agents.evaluation as evaluation
    import agents.evaluation.pipeline as pipeline

    assert set(pipeline.__all__) == evaluation._PIPELINE
    assert set(evaluation.__all__) >= evaluation._PIPELINE
