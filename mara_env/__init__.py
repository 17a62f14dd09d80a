"""MARA as a Gymnasium environment: accept or reject an LLM's candidate tokens, one at a time.

Importing this package registers two versions of the task::

    import gymnasium as gym
    import mara_env

    env = gym.make("MARA-v1")                              # one episode at a time
    envs = gym.make_vec("MARA-v1", num_envs=32)            # batched through the LLM

- ``MARA-v0``: the paper's MDP. The observation is the candidate's hidden state; rewards are the
  per-decision KL term and the terminal score. The authors' released actors run on it.
- ``MARA-v1``: the same decisions, optimum and terminal score, with the reference's features of each
  decision appended to the observation (``observation="hidden+ref"``) and potential-based shaping by
  the prefix's score (``reward_shaping="potential"``, ``shaping_gamma=0.99``): :data:`MARA_V1`.

Every setting can still be given to either id; the id only sets these defaults.
``gym.make("mara_env:MARA-v1")`` imports the package itself.

**Public API.** What a user of the environment needs, in :data:`__all__`: the two environments and
their settings (:class:`MARAConfig`, :data:`VERSIONS`, :data:`VARIANTS`), what an agent may know about
one (:class:`AgentContract`, :class:`ObservationLayout`), the LLM replicas several environments can share
(:func:`load_replicas`), the scorers (:class:`TerminalReward`) and the prompt sets (:class:`PromptSet`,
:func:`held_out_prompts`). The machinery under them (the decoding session, the decoder, candidate sets,
chunk rules, prompt formats) is importable from its own module (:mod:`mara_env.session`,
:mod:`mara_env.decoder`, ...) for code that builds on it, such as ``agents``' generator.

The names load on first use, so that ``import mara_env`` (and :mod:`mara_env.contract`, which agents
read) does not load transformers and the LLM machinery until an environment is made.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from gymnasium.envs.registration import register, registry

__all__ = [
    "EMBEDDED_LLM",
    "MARA_V1",
    "REFERENCE_FEATURES",
    "VARIANTS",
    "VERSIONS",
    "AgentContract",
    "LLMReplica",
    "MARAConfig",
    "ObservationLayout",
    "PromptSet",
    "TerminalReward",
    "TerminalScores",
    "TokenAcceptRejectEnv",
    "TokenAcceptRejectVectorEnv",
    "held_out_prompts",
    "load_replicas",
    "variant_settings",
]

#: Where each export lives, loaded on first use.
_EXPORTS = {
    "EMBEDDED_LLM": "mara_env.llm",
    "REFERENCE_FEATURES": "mara_env.observation",
    "VARIANTS": "mara_env.variants",
    "AgentContract": "mara_env.contract",
    "LLMReplica": "mara_env.llm",
    "MARAConfig": "mara_env.config",
    "ObservationLayout": "mara_env.observation",
    "PromptSet": "mara_env.prompts",
    "TerminalReward": "mara_env.scoring",
    "TerminalScores": "mara_env.scoring",
    "TokenAcceptRejectEnv": "mara_env.env",
    "TokenAcceptRejectVectorEnv": "mara_env.vector_env",
    "held_out_prompts": "mara_env.prompts",
    "load_replicas": "mara_env.llm",
    "variant_settings": "mara_env.variants",
}

try:
    #: The installed distribution's version (``pyproject.toml`` is the one place it is written).
    __version__ = version("mara-rl")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

#: The settings that ``MARA-v1`` changes from ``MARA-v0`` (whose defaults are :class:`MARAConfig`'s).
MARA_V1: dict[str, object] = {"observation": "hidden+ref", "reward_shaping": "potential", "shaping_gamma": 0.99}

#: Registered ids and the defaults each one sets.
VERSIONS: dict[str, dict[str, object]] = {"MARA-v0": {}, "MARA-v1": MARA_V1}

for _id, _defaults in VERSIONS.items():
    if _id not in registry:
        # No max_episode_steps: episodes end by EOS or max_new_tokens (terminal, scored), never by a
        # step-count truncation, which would cut a response off without its reward-model score.
        register(
            id=_id,
            entry_point="mara_env.env:TokenAcceptRejectEnv",
            vector_entry_point="mara_env.vector_env:TokenAcceptRejectVectorEnv",
            kwargs=dict(_defaults),
        )


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(
        f"module 'mara_env' has no attribute {name!r}; internals are imported from their module "
        "(e.g. mara_env.session.DecodingSession, mara_env.config.DecoderConfig)."
    )


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
