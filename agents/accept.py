"""What an agent decides: the probability that it accepts the candidate, from any kind of agent.

One reading of ``pi(accept | s)`` for every agent the package trains or loads:

- :func:`accept_probabilities` asks an SB3 model of any registered algorithm (DiscreteSAC, PPO, A2C,
  DQN, QR-DQN) for ``P(accept)`` on observation rows; training logs and the generator both use it;
- :func:`kl_increment` is each decision's term of the single-sample KL estimate of the policy
  from the reference, the same for the training logs and generated answers; :class:`EpisodeKL` sums it
  over each sub-environment's episode with the behaviour policy's probabilities
  (:func:`behaviour_accept_probabilities`: uniform during an off-policy warm-up, :func:`uniform_warmup`), for
  single-process training and the distributed collectors alike; the collectors take their actions with
  :func:`behaviour_actions`, the same warm-up and exploration;
- :func:`as_accept_function` turns anything that can serve as a MARA agent (a model, its saved zip,
  an actor in the authors' layout, a :class:`~agents.sac_discrete.policies.DiscreteActor`, a callable)
  into a function from observations to accept probabilities, with the observation layout it reads.

Of ``mara_env`` this module uses only :class:`~mara_env.observation.ObservationLayout` (no LLM machinery),
so :func:`accept_probabilities` works on any ``Discrete(2)`` environment. Example::

    >>> import numpy as np
    >>> fn, layout = as_accept_function(lambda obs: np.full(len(obs), 0.25), hidden_size=4)
    >>> fn(np.zeros((3, 4), dtype=np.float32)).tolist(), layout.mode
    ([0.25, 0.25, 0.25], 'hidden')
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

from agents.sac_discrete.policies import DiscreteActor, DiscreteSACPolicy
from mara_env.observation import ObservationLayout

__all__ = [
    "AcceptFunction",
    "EpisodeKL",
    "accept_probabilities",
    "as_accept_function",
    "behaviour_accept_probabilities",
    "behaviour_actions",
    "kl_increment",
    "uniform_warmup",
]

#: A function from observations ``(n, size)`` to accept probabilities (or 0/1 decisions) ``(n,)``.
AcceptFunction = Callable[[np.ndarray], np.ndarray]


def kl_increment(p_accept: np.ndarray, actions: np.ndarray, ref_logp: np.ndarray) -> np.ndarray:
    """Each decision's term of the single-sample KL estimate ``sum_t log pi(a_t | s_t) - log p_ref(a_t | k_t)``.

    :param p_accept: ``pi(accept | s_t)`` of the policy that chose the actions (1 or 0 for a deterministic
        decision, whose log-probability is then 0).
    :param actions: the decisions, 1 accept, 0 reject.
    :param ref_logp: ``log p_ref(a_t | k_t)``, the reference's log-probability of each decision.
    :return: ``log pi(a_t | s_t) - log p_ref(a_t | k_t)``; ``log 0`` is floored at the smallest float so
        that an impossible action taken (an exploration step) stays finite.

    >>> kl_increment(np.array([0.5, 1.0]), np.array([1, 1]), np.log([0.5, 0.25])).round(4).tolist()
    [0.0, 1.3863]
    """
    p_action = np.where(np.asarray(actions) == 1, p_accept, 1.0 - np.asarray(p_accept, dtype=np.float64))
    return np.log(np.maximum(p_action, np.finfo(np.float64).tiny)) - np.asarray(ref_logp, dtype=np.float64)


def _actor_probs(actor: DiscreteActor, obs: th.Tensor) -> th.Tensor:
    """``pi(accept | s)``: column 1 of the actor's softmax (action 1 is accept)."""
    return actor.action_probs(obs)[0][:, 1]


def accept_probabilities(model: BaseAlgorithm, obs: np.ndarray, *, behaviour: bool = False) -> np.ndarray:
    """The probability that ``model`` accepts (action 1) on each observation row.

    - DiscreteSAC: ``pi(accept | s)``, the actor's softmax.
    - PPO, A2C (any actor-critic policy): the categorical distribution's ``probs[:, 1]``.
    - DQN, QR-DQN: the greedy action as 0 or 1; with ``behaviour=True`` the epsilon-greedy
      mixture ``eps / 2 + (1 - eps) * greedy`` with ``eps = model.exploration_rate``, the
      probability with which training picked its actions.

    :param model: a model of a registered algorithm with a ``Discrete(2)`` action space.
    :param obs: observations, shape ``(n, *obs_shape)`` or a single ``obs_shape`` row.
    :param behaviour: return the exploration policy's probability where it differs from the policy's.
    :return: shape ``(n,)``, float64, in ``[0, 1]``.
    """
    action_space = model.action_space
    if not (isinstance(action_space, spaces.Discrete) and action_space.n == 2):
        raise ValueError(f"accept_probabilities needs a Discrete(2) action space (reject/accept), got {action_space}.")
    obs = np.asarray(obs)
    obs_shape = model.observation_space.shape
    if obs.shape == obs_shape:
        obs = obs[None]
    if obs.shape[1:] != obs_shape:
        raise ValueError(
            f"observations must have shape (n, {', '.join(map(str, obs_shape))}) for this model; got {obs.shape}."
        )
    policy = model.policy
    was_training = policy.training
    policy.set_training_mode(False)  # dropout / batch norm in inference behaviour
    try:
        with th.no_grad():
            obs_tensor, _ = policy.obs_to_tensor(obs)
            if isinstance(policy, DiscreteSACPolicy):
                probs = _actor_probs(policy.actor, obs_tensor)
            elif hasattr(policy, "get_distribution"):
                probs = policy.get_distribution(obs_tensor).distribution.probs[:, 1]
            elif hasattr(model, "exploration_rate"):
                # The greedy action through the policy's public predict (the Q-network's argmax)
                greedy, _ = policy.predict(obs, deterministic=True)
                probs = th.as_tensor(np.asarray(greedy).reshape(-1)).float()
                if behaviour:
                    eps = float(model.exploration_rate)
                    probs = eps / 2 + (1 - eps) * probs
            else:
                raise TypeError(f"accept_probabilities does not know how to read {type(model).__name__}'s policy.")
    finally:
        policy.set_training_mode(was_training)
    return probs.detach().cpu().numpy().astype(np.float64)


def uniform_warmup(model: BaseAlgorithm, timesteps: int) -> bool:
    """Whether ``model`` picks the actions of a step taken at ``timesteps`` uniformly at random.

    SB3's off-policy warm-up: before ``learning_starts``, unless gSDE samples the warm-up
    (``use_sde_at_warmup``) or the algorithm warms up on its policy (DiscreteSAC's ``uniform_warmup`` False).

    :param timesteps: ``num_timesteps`` before the step (the decisions taken so far).
    """
    if not isinstance(model, OffPolicyAlgorithm) or not getattr(model, "uniform_warmup", True):
        return False
    return timesteps < model.learning_starts and not (model.use_sde and model.use_sde_at_warmup)


def behaviour_actions(model: BaseAlgorithm, obs: np.ndarray, timesteps: int) -> np.ndarray:
    """The actions ``model`` takes in training on the observation rows ``obs`` at ``timesteps``.

    What SB3's off-policy ``collect_rollouts`` samples, through public methods: uniformly random actions
    during a uniform warm-up (:func:`uniform_warmup`), else ``model.predict(obs, deterministic=False)``
    (DQN's epsilon-greedy included). The distributed collectors act with it.

    :param obs: observations, shape ``(n, *obs_shape)``.
    :param timesteps: ``num_timesteps`` before the step.
    :return: ``n`` actions.
    """
    if uniform_warmup(model, timesteps):
        return np.array([model.action_space.sample() for _ in range(len(obs))])
    actions, _ = model.predict(obs, deterministic=False)
    return np.asarray(actions)


def behaviour_accept_probabilities(model: BaseAlgorithm, obs: np.ndarray, timesteps: int) -> np.ndarray:
    """The probability with which ``model`` accepts on each row in training at ``timesteps``: 0.5 during a
    uniform warm-up (:func:`uniform_warmup`), else :func:`accept_probabilities` with ``behaviour=True``."""
    if uniform_warmup(model, timesteps):
        return np.full(len(obs), 0.5)
    return accept_probabilities(model, obs, behaviour=True)


class EpisodeKL:
    """The single-sample KL estimate of each sub-environment's episode so far, from the behaviour policy.

    ``KL(pi || reference) = sum_t log pi_b(a_t | s_t) - log p_ref(a_t | k_t)``, ``pi_b`` the policy that chose
    the actions (:func:`behaviour_accept_probabilities`), ``log p_ref`` the step info's ``ref_logp``.

    :param num_envs: sub-environments.
    """

    def __init__(self, num_envs: int) -> None:
        self.totals = np.zeros(num_envs)

    def step(
        self, model: BaseAlgorithm, obs: np.ndarray, actions: np.ndarray, infos: list[dict[str, Any]], timesteps: int
    ) -> None:
        """Add one vector step: ``actions`` taken on ``obs`` at ``timesteps`` (before the step), and its ``infos``."""
        p_accept = behaviour_accept_probabilities(model, obs, timesteps)
        ref_logp = np.array([info.get("ref_logp", np.nan) for info in infos], dtype=np.float64)
        self.totals += kl_increment(p_accept, np.asarray(actions).reshape(-1), ref_logp)

    def finish(self, index: int) -> float:
        """The estimate of sub-environment ``index``'s finished episode; its next episode starts at 0."""
        value = float(self.totals[index])
        self.totals[index] = 0.0
        return value


def _layout_for(size: int, hidden_size: int, observation: str, what: str) -> ObservationLayout:
    """The observation layout an agent that reads vectors of ``size`` needs on an LLM of ``hidden_size``."""
    try:
        found = ObservationLayout.for_size(size, hidden_size)
    except ValueError:
        raise ValueError(
            f"{what} observes vectors of size {size}, which fits no observation of this LLM (hidden size "
            f"{hidden_size}: {hidden_size} for 'hidden', {ObservationLayout('hidden+ref', hidden_size).size} for "
            "'hidden+ref'). An agent transfers only between LLMs with the same hidden size (the paper's Table 3); "
            "train one on this LLM or pick an LLM of the agent's hidden size."
        ) from None
    if observation not in ("auto", found.mode):
        raise ValueError(
            f"{what} was trained on observation={found.mode!r} (vectors of size {size}), but observation="
            f"{observation!r} was asked for. "
            + (
                "Actors in the authors' layout, and agents trained on MARA-v0, read hidden states only: "
                if found.mode == "hidden"
                else "This agent needs the reference's features (MARA-v1): "
            )
            + f"pass observation={found.mode!r} or 'auto'."
        )
    return found


def as_accept_function(
    agent: Any, hidden_size: int, device: str | th.device = "auto", observation: str = "auto"
) -> tuple[AcceptFunction, ObservationLayout]:
    """Turn any supported agent into a function from observations to accept probabilities.

    :param agent: a trained SB3 model (``DiscreteSAC``, PPO, A2C, DQN, QR-DQN); the path of a saved SB3
        ``.zip`` of one of those; the path of an actor in the authors' layout (``.pt``/``.pth``/``.bin``);
        a :class:`~agents.sac_discrete.policies.DiscreteActor`; or a callable mapping an ``(n, size)``
        float32 array to ``n`` accept probabilities (0/1 decisions are probabilities too).
    :param hidden_size: the LLM's hidden size; an agent for another size is refused.
    :param device: device for models loaded from files.
    :param observation: the observation the agent reads (:mod:`mara_env.observation`): ``"hidden"``,
        ``"hidden+ref"``, or ``"auto"``, which reads it off the agent's input size (a callable: ``"hidden"``).
    :return: the function and the observation layout to feed it.
    """
    if isinstance(agent, (str, os.PathLike)):
        # Only for files: agents.loading imports every registered algorithm (sb3-contrib's QR-DQN among them),
        # which decoding alone must not need (benchmarks/gpu_suite.py runs on torch, transformers and a short list)
        from agents.loading import load_agent

        agent = load_agent(agent, device=device)
    if isinstance(agent, BaseAlgorithm):
        shape = agent.observation_space.shape
        if not isinstance(agent.action_space, spaces.Discrete) or agent.action_space.n != 2 or len(shape) != 1:
            raise ValueError(
                f"{type(agent).__name__} was trained on observations {shape} and actions {agent.action_space}; "
                "a MARA agent observes one vector and has two actions (reject, accept)."
            )
        layout = _layout_for(shape[0], hidden_size, observation, f"The {type(agent).__name__} agent")
        model = agent
        return (lambda obs: accept_probabilities(model, obs)), layout
    if isinstance(agent, DiscreteActor):
        layout = _layout_for(agent.observation_space.shape[0], hidden_size, observation, "The actor")
        actor = agent

        def actor_accept(obs: np.ndarray) -> np.ndarray:
            actor.set_training_mode(False)
            with th.no_grad():
                probs = _actor_probs(actor, th.as_tensor(obs, dtype=th.float32, device=actor.device))
            return probs.double().cpu().numpy()

        return actor_accept, layout
    if callable(agent):
        fn = agent

        def checked(obs: np.ndarray) -> np.ndarray:
            out = np.asarray(fn(obs), dtype=np.float64).reshape(-1)
            if out.shape != (obs.shape[0],) or not np.all((out >= 0) & (out <= 1)):
                raise ValueError(
                    f"the agent callable must return {obs.shape[0]} accept probabilities in [0, 1] for an "
                    f"observation batch of shape {obs.shape}; it returned {np.asarray(fn(obs)).shape} values "
                    f"(min {np.nanmin(out) if out.size else 'n/a'})."
                )
            return out

        return checked, ObservationLayout("hidden" if observation == "auto" else observation, hidden_size)
    raise TypeError(
        f"agent: cannot use a {type(agent).__name__}. Pass a trained SB3 model, the path of its .zip, an actor in "
        "the authors' layout (.pt), or a callable observations -> accept probabilities."
    )
