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

**Public API.** Everything in :data:`__all__`, which includes what code outside the package (the
``agents`` generator, evaluation and CLI) builds on: the decoding session that sets up the LLM and hands
out the decoder both environments run (:class:`DecodingSession`, :class:`AcceptRejectDecoder`,
:class:`DecoderConfig`, :class:`Phase`), what an agent may know about an environment
(:class:`AgentContract`), the observation of a decision (:func:`observe`, :class:`ObservationLayout`),
the prompt format and its length rule (:class:`PromptFormat`, :class:`PromptEncoder`,
:func:`default_max_prompt_tokens`), candidate sets, the chunk rules (:func:`resolve_chunking`,
:class:`AdaptiveChunks`), the scorers (:class:`TerminalReward`) and the prompt sets (:class:`PromptSet`,
:func:`held_out_prompts`). Other module attributes are internals.

The names load on first use, so that ``import mara_env`` (and :mod:`mara_env.contract`, which agents
read) does not load transformers and the LLM machinery until an environment is made.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from gymnasium.envs.registration import register, registry

__all__ = [
    "ADAPTIVE_CHUNKS",
    "AUTO_CHUNK_SIZE",
    "EMBEDDED_LLM",
    "MARA_V1",
    "REFERENCE_FEATURES",
    "VARIANTS",
    "VERSIONS",
    "AcceptRejectDecoder",
    "AdaptiveChunks",
    "AgentContract",
    "CandidateConfig",
    "CandidateSet",
    "ChunkPlan",
    "DecoderConfig",
    "DecodingSession",
    "FixedChunks",
    "LLMReplica",
    "MARAConfig",
    "ObservationLayout",
    "Phase",
    "PromptEncoder",
    "PromptFormat",
    "PromptSet",
    "TerminalReward",
    "TerminalScores",
    "TokenAcceptRejectEnv",
    "TokenAcceptRejectVectorEnv",
    "candidate_sets",
    "default_max_prompt_tokens",
    "held_out_prompts",
    "load_replicas",
    "make_chunk_rule",
    "observe",
    "resolve_chunk_size",
    "resolve_chunking",
    "type_problem",
    "variant_settings",
]

#: Where each export lives, loaded on first use.
_EXPORTS = {
    "ADAPTIVE_CHUNKS": "mara_env.config",
    "AUTO_CHUNK_SIZE": "mara_env.config",
    "EMBEDDED_LLM": "mara_env.llm",
    "REFERENCE_FEATURES": "mara_env.observation",
    "VARIANTS": "mara_env.variants",
    "AcceptRejectDecoder": "mara_env.decoder",
    "AdaptiveChunks": "mara_env.chunking",
    "AgentContract": "mara_env.contract",
    "CandidateConfig": "mara_env.candidates",
    "CandidateSet": "mara_env.candidates",
    "ChunkPlan": "mara_env.config",
    "DecoderConfig": "mara_env.decoder",
    "DecodingSession": "mara_env.session",
    "FixedChunks": "mara_env.chunking",
    "LLMReplica": "mara_env.llm",
    "MARAConfig": "mara_env.config",
    "ObservationLayout": "mara_env.observation",
    "Phase": "mara_env.decoder",
    "PromptEncoder": "mara_env.llm",
    "PromptFormat": "mara_env.llm",
    "PromptSet": "mara_env.prompts",
    "TerminalReward": "mara_env.scoring",
    "TerminalScores": "mara_env.scoring",
    "TokenAcceptRejectEnv": "mara_env.env",
    "TokenAcceptRejectVectorEnv": "mara_env.vector_env",
    "candidate_sets": "mara_env.candidates",
    "default_max_prompt_tokens": "mara_env.llm",
    "held_out_prompts": "mara_env.prompts",
    "load_replicas": "mara_env.llm",
    "make_chunk_rule": "mara_env.chunking",
    "observe": "mara_env.observation",
    "resolve_chunk_size": "mara_env.config",
    "resolve_chunking": "mara_env.config",
    "type_problem": "mara_env.config",
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
        "(e.g. mara_env.session.DecodingSession, mara_env.decoder.DecoderConfig)."
    )


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
