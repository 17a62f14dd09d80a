"""MARA as a Gymnasium environment: accept or reject an LLM's candidate tokens, one at a time.

Importing this package registers ``MARA-v0``::

    import gymnasium as gym
    import mara_env

    env = gym.make("MARA-v0")                              # one episode at a time
    envs = gym.make_vec("MARA-v0", num_envs=32)            # batched through the LLM

``gym.make("mara_env:MARA-v0")`` imports the package itself.
"""

from gymnasium.envs.registration import register, registry

from mara_env.candidates import CandidateConfig, CandidateSet, candidate_sets
from mara_env.config import MARAConfig
from mara_env.env import TokenAcceptRejectEnv
from mara_env.llm import EMBEDDED_LLM, LLMReplica, PromptFormat, load_replicas
from mara_env.variants import VARIANTS, variant_settings
from mara_env.vector_env import TokenAcceptRejectVectorEnv

__all__ = [
    "EMBEDDED_LLM",
    "VARIANTS",
    "CandidateConfig",
    "CandidateSet",
    "LLMReplica",
    "MARAConfig",
    "PromptFormat",
    "TokenAcceptRejectEnv",
    "TokenAcceptRejectVectorEnv",
    "candidate_sets",
    "load_replicas",
    "variant_settings",
]

__version__ = "0.1.0"

if "MARA-v0" not in registry:
    # No max_episode_steps: episodes end by EOS or max_new_tokens (terminal, scored), never by a
    # step-count truncation, which would cut a response off without its reward-model score.
    register(
        id="MARA-v0",
        entry_point="mara_env.env:TokenAcceptRejectEnv",
        vector_entry_point="mara_env.vector_env:TokenAcceptRejectVectorEnv",
    )
