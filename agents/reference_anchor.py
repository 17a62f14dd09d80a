"""Policies anchored to the reference LLM: ``logits = log p_ref(. | k) + f(s)`` with ``f = 0`` at the start.

The KL-regularised optimum of MARA's MDP is known in closed form (design notes, section 6)::

    pi*(a | s)  ∝  p_ref(a | k) * exp(Q_soft(s, a) / lambda)

so a policy whose logits are the reference's log-probabilities plus a learned offset,
``log pi(. | s) = log_softmax(log p_ref(. | k) + f(s))``, can represent that optimum with
``f = Q_soft / lambda`` and, with ``f`` initialised to exactly zero, *is* the reference at the
start: an untrained agent decodes as top-k/top-p sampling of the LLM (KL 0) and only moves where
its value estimates say. The reference's log-probabilities are read from the observation:
``MARA-v1``'s observation carries them (``observation="hidden+ref"``, indices from
``env.observation_layout.reference_logits``); this module imports nothing of ``mara_env``.

- :class:`ReferenceLogits`: the module reading ``log p_ref(a | k)`` per action from the observation;
- :func:`zero_output_`: makes the last layer of ``f`` output exactly 0;
- :class:`AnchoredActorCriticPolicy`: SB3's ``ActorCriticPolicy`` for PPO and A2C with anchored action
  logits. :class:`agents.DiscreteSAC` takes the same ``reference_logits`` policy argument.

Example::

    >>> envs = gym.make_vec("MARA-v1", num_envs=16, max_new_tokens=48)  # doctest: +SKIP
    >>> venv = VecMonitor(SB3VecEnv(envs))  # doctest: +SKIP
    >>> PPO(AnchoredActorCriticPolicy, venv,  # doctest: +SKIP
    ...     policy_kwargs=dict(reference_logits=envs.observation_layout.reference_logits)).learn(10_000)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import CategoricalDistribution, Distribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import PyTorchObs
from torch import nn


def check_reference_logits(
    reference_logits: Sequence[int], observation_space: spaces.Space, action_space: spaces.Space, owner: str
) -> tuple[int, ...]:
    """Validate observation indices of ``log p_ref(a | k)``, one per action; return them as a tuple.

    :raises ValueError: not a flat vector observation, a ``Discrete`` action space, or one valid index per action.
    """
    if not (isinstance(observation_space, spaces.Box) and len(observation_space.shape) == 1):
        raise ValueError(
            f"{owner}: reference_logits reads log p_ref(a|k) from a flat vector observation; this observation "
            f"space is {observation_space}."
        )
    if not isinstance(action_space, spaces.Discrete):
        raise ValueError(f"{owner}: reference_logits needs a Discrete action space, got {action_space}.")
    size = int(observation_space.shape[0])
    indices = tuple(int(i) for i in reference_logits)
    n = int(action_space.n)
    if len(indices) != n or not all(0 <= i < size for i in indices):
        raise ValueError(
            f"{owner}: reference_logits must give, for each of the {n} actions, the index of its log p_ref(a|k) "
            f"in the observation (0 <= index < {size}); got {list(reference_logits)}. With MARA use "
            "env.observation_layout.reference_logits of an environment created with observation='hidden+ref' "
            "(MARA-v1)."
        )
    return indices


class ReferenceLogits(nn.Module):
    """``obs[:, indices]``: the reference's log-probability of each action, read from the observation.

    :param indices: observation index of ``log p_ref(a | k)`` for each action ``a`` (MARA: reject, accept).
    """

    #: Largest ``|log sum_a p_ref(a | k)|`` accepted as log-probabilities (float16 observations round to ~1e-3).
    TOLERANCE = 0.05

    def __init__(self, indices: Sequence[int]) -> None:
        super().__init__()
        self.indices = tuple(int(i) for i in indices)
        # A buffer, so it moves with the module to the policy's device.
        self.register_buffer("_index", th.tensor(self.indices, dtype=th.long), persistent=False)
        self._checked = False

    def forward(self, obs: th.Tensor) -> th.Tensor:
        """:return: ``log p_ref(. | k)``, shape ``(batch, n_actions)``, float32."""
        logp = obs.float().flatten(1).index_select(1, self._index)
        if not self._checked:
            self.check(logp)
        return logp

    def check(self, logp: th.Tensor) -> None:
        """Raise if the columns read are not log-probabilities of the actions (checked on the first batch only:
        it costs a host sync).

        :raises ValueError: the probabilities do not sum to 1, e.g. an observation without reference features.
        """
        # All-zero rows are terminal observations (SB3 stores zeros there), which are never acted on
        total = th.logsumexp(logp[(logp != 0).any(dim=1)], dim=1)
        if total.numel() and not bool((total.abs() <= self.TOLERANCE).all()):
            worst = float(total[total.abs().argmax()])
            raise ValueError(
                f"reference_logits: observation columns {list(self.indices)} are not the log-probabilities of the "
                f"actions (their probabilities sum to {np.exp(worst):.3g}, not 1). The environment's observation has "
                "no reference features there: create it with observation='hidden+ref' (MARA-v1) and pass "
                "env.observation_layout.reference_logits; under VecNormalize, pass norm_obs=False (it rescales "
                "those columns)."
            )
        self._checked = True


def check_raw_observations(vec_normalize: Any, owner: str) -> None:
    """Refuse observation normalisation under an anchored policy: it reads ``log p_ref(a | k)`` from raw columns.

    ``VecNormalize(norm_obs=True)`` shifts and scales every observation column, the reference's
    log-probabilities included, so the anchored logits would no longer be ``log p_ref(. | k) + f(s)``.

    :param vec_normalize: the ``VecNormalize`` wrapping the environment (``unwrap_vec_normalize(env)``), or ``None``.
    :param owner: who asks, for the message.
    :raises ValueError: observations are normalised; the message gives the alternatives.
    """
    if vec_normalize is not None and getattr(vec_normalize, "norm_obs", False):
        raise ValueError(
            f"{owner}: the policy is anchored to the reference (reference_logits) and reads log p_ref(a|k) from the "
            "raw observation, but VecNormalize(norm_obs=True) rescales every observation column. Use "
            "VecNormalize(venv, norm_obs=False) (rewards only), scale the hidden state inside the network instead "
            "(policy_kwargs input_layer_norm=True, sac-discrete's default), or drop the anchor "
            "(policy_kwargs reference_logits=None)."
        )


def zero_output_(layer: nn.Linear) -> nn.Linear:
    """Set a linear layer's weight and bias to zero, so it outputs exactly 0 until it is trained.

    The gradient of the weight is the input activations times the output gradient, which is not zero,
    so the layer learns at once; only its starting output is pinned.
    """
    with th.no_grad():
        layer.weight.zero_()
        layer.bias.zero_()
    return layer


class AnchoredActorCriticPolicy(ActorCriticPolicy):
    """SB3's actor-critic policy (PPO, A2C) with action logits ``log p_ref(. | k) + f(s)``, ``f = 0`` at the start.

    Everything else (features extractor, ``net_arch``, value head, optimiser) is SB3's
    :class:`~stable_baselines3.common.policies.ActorCriticPolicy`; the action head ``f`` starts at
    zero instead of SB3's small orthogonal initialisation.

    :param reference_logits: observation index of ``log p_ref(a | k)`` for each action, e.g.
        ``env.observation_layout.reference_logits`` of ``MARA-v1``.
    :param args: the positional arguments of ``ActorCriticPolicy``.
    :param kwargs: its keyword arguments.
    """

    def __init__(self, *args: Any, reference_logits: Sequence[int], **kwargs: Any) -> None:
        # Set before super().__init__, which calls _build.
        self._reference_indices = tuple(int(i) for i in reference_logits)
        super().__init__(*args, **kwargs)
        if not isinstance(self.action_dist, CategoricalDistribution):
            raise ValueError(f"AnchoredActorCriticPolicy needs a Discrete action space, got {self.action_space}.")
        check_reference_logits(reference_logits, self.observation_space, self.action_space, type(self).__name__)

    def _build(self, lr_schedule: Any) -> None:
        self.reference = ReferenceLogits(self._reference_indices)
        super()._build(lr_schedule)  # builds action_net and the optimiser (the reference has no parameters)
        zero_output_(self.action_net)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {**super()._get_constructor_parameters(), "reference_logits": self._reference_indices}

    def _latents(self, obs: PyTorchObs) -> tuple[th.Tensor, th.Tensor]:
        features = self.extract_features(obs)
        if self.share_features_extractor:
            return self.mlp_extractor(features)
        pi_features, vf_features = features
        return self.mlp_extractor.forward_actor(pi_features), self.mlp_extractor.forward_critic(vf_features)

    def _anchored(self, obs: PyTorchObs, latent_pi: th.Tensor) -> Distribution:
        # logits = log p_ref(a | k) + f(s)
        logits = self.reference(obs) + self.action_net(latent_pi)
        return self.action_dist.proba_distribution(action_logits=logits)

    def forward(self, obs: th.Tensor, deterministic: bool = False) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        latent_pi, latent_vf = self._latents(obs)
        distribution = self._anchored(obs, latent_pi)
        actions = distribution.get_actions(deterministic=deterministic)
        log_prob = distribution.log_prob(actions)
        return actions.reshape((-1, *self.action_space.shape)), self.value_net(latent_vf), log_prob

    def evaluate_actions(self, obs: PyTorchObs, actions: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        latent_pi, latent_vf = self._latents(obs)
        distribution = self._anchored(obs, latent_pi)
        return self.value_net(latent_vf), distribution.log_prob(actions), distribution.entropy()

    def get_distribution(self, obs: PyTorchObs) -> Distribution:
        features = super(ActorCriticPolicy, self).extract_features(obs, self.pi_features_extractor)
        return self._anchored(obs, self.mlp_extractor.forward_actor(features))
