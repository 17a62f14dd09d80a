"""Actor, twin critics and policy classes for discrete Soft Actor-Critic."""

from collections.abc import Sequence
from typing import Any

import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import CategoricalDistribution
from stable_baselines3.common.policies import BaseModel, BasePolicy
from stable_baselines3.common.torch_layers import (
    BaseFeaturesExtractor,
    CombinedExtractor,
    FlattenExtractor,
    NatureCNN,
    create_mlp,
    get_actor_critic_arch,
)
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from torch import nn

from agents.reference_anchor import ReferenceLogits, check_reference_logits, zero_output_


def _check_discrete(action_space: spaces.Space, owner: str) -> int:
    """
    Return the number of actions, or raise a clear error for a non-``Discrete`` space.

    :param action_space: The action space to check
    :param owner: Name of the class asking, used in the error message
    :return: ``action_space.n``
    """
    if not isinstance(action_space, spaces.Discrete):
        raise TypeError(
            f"{owner} needs a gymnasium.spaces.Discrete action space, got {action_space}. "
            "For continuous (Box) actions use stable_baselines3.SAC instead."
        )
    return int(action_space.n)


def _make_head(
    features_dim: int,
    output_dim: int,
    net_arch: list[int],
    activation_fn: type[nn.Module],
    input_layer_norm: bool,
) -> list[nn.Module]:
    """
    Layers of one MLP: an optional ``LayerNorm`` on the input, then ``create_mlp``.

    :param features_dim: Size of the input features
    :param output_dim: Size of the output layer (``-1`` for no output layer)
    :param net_arch: Hidden layer sizes
    :param activation_fn: Activation after each hidden layer
    :param input_layer_norm: Whether to normalise the input with a learnable ``LayerNorm``
    :return: The list of modules, to wrap in ``nn.Sequential``
    """
    # LLM hidden states have a few very large dimensions; normalising the input keeps the first
    # layer's pre-activations in a sane range (the MARA authors' actor and critic both do this).
    head: list[nn.Module] = [nn.LayerNorm(features_dim)] if input_layer_norm else []
    return head + create_mlp(features_dim, output_dim, net_arch, activation_fn)


def _check_prior(prior: Sequence[float], n_actions: int) -> list[float]:
    """Validate an initial action distribution: ``n_actions`` positive numbers summing to 1."""
    values = [float(p) for p in prior]
    if len(values) != n_actions or min(values) <= 0 or abs(sum(values) - 1) > 1e-6:
        raise ValueError(
            f"action_prior must be {n_actions} positive probabilities summing to 1 (one per action), got {list(prior)}."
        )
    return values


class DiscreteActor(BasePolicy):
    """
    Actor of discrete SAC: logits of a categorical distribution over the ``n`` actions.

    :param observation_space: Space of the observations it reads
    :param action_space: ``Discrete`` space of the actions it chooses
    :param net_arch: Sizes of the hidden layers
    :param features_extractor: Module turning observations into a feature vector
        (``FlattenExtractor`` for vectors, a CNN for images)
    :param features_dim: Size of that feature vector
    :param activation_fn: Activation after each hidden layer
    :param input_layer_norm: Put a learnable ``LayerNorm`` on the features before the first layer
    :param normalize_images: Divide image observations by 255
    :param action_prior: Initial action probabilities, whatever the observation (``None``: random init)
    :param reference_logits: Observation indices of ``log p_ref(a | k)``, one per action: the logits become
        ``log p_ref(. | k) + f(s)`` with ``f`` starting at exactly 0, so the untrained actor is the
        reference policy (:mod:`agents.reference_anchor`). ``None``: plain logits ``f(s)``
    """

    action_space: spaces.Discrete

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Discrete,
        net_arch: list[int],
        features_extractor: nn.Module,
        features_dim: int,
        activation_fn: type[nn.Module] = nn.ReLU,
        input_layer_norm: bool = False,
        normalize_images: bool = True,
        action_prior: Sequence[float] | None = None,
        reference_logits: Sequence[int] | None = None,
    ):
        n_actions = _check_discrete(action_space, type(self).__name__)
        super().__init__(
            observation_space,
            action_space,
            features_extractor=features_extractor,
            normalize_images=normalize_images,
        )
        if reference_logits is not None:
            if action_prior is not None:
                raise ValueError(
                    "action_prior and reference_logits both set the actor's starting distribution; pass one of them."
                )
            reference_logits = check_reference_logits(
                reference_logits, observation_space, action_space, "DiscreteActor"
            )
        self.reference_logits = reference_logits

        # Kept for _get_constructor_parameters (re-creating the actor when loading)
        self.net_arch = net_arch
        self.features_dim = features_dim
        self.activation_fn = activation_fn
        self.input_layer_norm = input_layer_norm

        self.latent_pi = nn.Sequential(*_make_head(features_dim, -1, net_arch, activation_fn, input_layer_norm))
        last_layer_dim = net_arch[-1] if len(net_arch) > 0 else features_dim
        self.action_dist = CategoricalDistribution(n_actions)
        self.action_logits = self.action_dist.proba_distribution_net(last_layer_dim)
        self.action_prior = None if action_prior is None else _check_prior(action_prior, n_actions)
        if self.action_prior is not None:
            # Start at the prior whatever the observation: tiny output weights, bias = log prior.
            with th.no_grad():
                self.action_logits.weight.mul_(0.01)
                self.action_logits.bias.copy_(th.log(th.tensor(self.action_prior)))
        self.reference = None if reference_logits is None else ReferenceLogits(reference_logits)
        if self.reference is not None:
            zero_output_(self.action_logits)  # f(s) = 0: the actor starts as the reference policy

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()

        data.update(
            dict(
                net_arch=self.net_arch,
                features_dim=self.features_dim,
                activation_fn=self.activation_fn,
                input_layer_norm=self.input_layer_norm,
                features_extractor=self.features_extractor,
                action_prior=self.action_prior,
                reference_logits=self.reference_logits,
            )
        )
        return data

    def logits(self, obs: PyTorchObs) -> th.Tensor:
        """
        Unnormalised log-probabilities of every action: ``f(s)``, or ``log p_ref(. | k) + f(s)`` when anchored.

        :param obs: Observation batch
        :return: Logits, shape ``(batch, n_actions)``
        """
        features = self.extract_features(obs, self.features_extractor)
        logits = self.action_logits(self.latent_pi(features))
        if self.reference is not None:
            logits = logits + self.reference(obs)
        return logits

    def action_probs(self, obs: PyTorchObs) -> tuple[th.Tensor, th.Tensor]:
        """
        The full action distribution, used for the exact expectations of discrete SAC.

        :param obs: Observation batch
        :return: ``pi(.|s)`` and ``log pi(.|s)``, each of shape ``(batch, n_actions)``
        """
        # log_softmax is exact where softmax underflows to 0; taking log(probs) would give -inf there
        log_probs = th.log_softmax(self.logits(obs), dim=1)
        return log_probs.exp(), log_probs

    def forward(self, obs: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        return self.action_dist.actions_from_params(self.logits(obs), deterministic=deterministic)

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        return self(observation, deterministic)


class DiscreteCritic(BaseModel):
    """
    Critics of discrete SAC: each one maps a state to a Q-value per action, ``Q_j(s, .)``.

    The TD target and the actor loss take the minimum over the critics (clipped double Q-learning).

    :param observation_space: Space of the observations it reads
    :param action_space: ``Discrete`` space; one output per action
    :param net_arch: Sizes of the hidden layers of each critic
    :param features_extractor: Module turning observations into a feature vector, computed once
        for all critics
    :param features_dim: Size of that feature vector
    :param activation_fn: Activation after each hidden layer
    :param input_layer_norm: Put a learnable ``LayerNorm`` at the input of each critic
    :param normalize_images: Divide image observations by 255
    :param n_critics: How many independent critics (two for clipped double Q-learning)
    :param share_features_extractor: The features extractor is the actor's: then only the actor
        loss trains it
    :param reference_logits: Observation indices of ``log p_ref(a | k)``, one per action, for ``reference_scale``
    :param reference_scale: If set (with ``reference_logits``), each critic is
        ``Q_j(s, a) = reference_scale * log p_ref(a | k) + g_j(s, a)``: the immediate KL reward
        ``kl_coef * log p_ref(a | k)`` of MARA is known exactly, so with ``reference_scale = kl_coef``
        the networks ``g_j`` only learn the rest, ``gamma * E[V(s')]``
    """

    features_extractor: BaseFeaturesExtractor

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Discrete,
        net_arch: list[int],
        features_extractor: BaseFeaturesExtractor,
        features_dim: int,
        activation_fn: type[nn.Module] = nn.ReLU,
        input_layer_norm: bool = False,
        normalize_images: bool = True,
        n_critics: int = 2,
        share_features_extractor: bool = False,
        reference_logits: Sequence[int] | None = None,
        reference_scale: float | None = None,
    ):
        n_actions = _check_discrete(action_space, type(self).__name__)
        if n_critics < 1:
            raise ValueError(f"n_critics must be at least 1, got {n_critics}.")
        if reference_scale is not None and reference_logits is None:
            raise ValueError(
                "critic_reference_scale needs reference_logits (the observation indices of log p_ref(a|k)); "
                "create the environment with observation='hidden+ref' (MARA-v1) and pass its layout's indices."
            )
        super().__init__(
            observation_space,
            action_space,
            features_extractor=features_extractor,
            normalize_images=normalize_images,
        )

        self.share_features_extractor = share_features_extractor
        self.n_critics = n_critics
        self.q_networks: list[nn.Module] = []
        for idx in range(n_critics):
            q_net = nn.Sequential(*_make_head(features_dim, n_actions, net_arch, activation_fn, input_layer_norm))
            self.add_module(f"qf{idx}", q_net)
            self.q_networks.append(q_net)
        self.reference_scale = None if reference_scale is None else float(reference_scale)
        self.reference = None
        if self.reference_scale is not None:
            indices = check_reference_logits(reference_logits, observation_space, action_space, "DiscreteCritic")
            self.reference = ReferenceLogits(indices)

    def forward(self, obs: PyTorchObs) -> tuple[th.Tensor, ...]:
        """
        :param obs: Observation batch
        :return: One tensor ``Q_j(s, .)`` of shape ``(batch, n_actions)`` per critic
        """
        # A shared features extractor is trained by the actor loss only
        with th.set_grad_enabled(not self.share_features_extractor):
            features = self.extract_features(obs, self.features_extractor)
        if self.reference is None:
            return tuple(q_net(features) for q_net in self.q_networks)
        # Q_j(s, a) = scale * log p_ref(a | k) + g_j(s, a): the known immediate term, plus a learned rest
        known = self.reference_scale * self.reference(obs)
        return tuple(known + q_net(features) for q_net in self.q_networks)


class DiscreteSACPolicy(BasePolicy):
    """
    Networks of discrete SAC: the actor, the critics and their targets, with their optimisers.

    Actor and critics are separate networks. With ``net_arch=[1024, 256]`` and
    ``input_layer_norm=True`` each one is the MARA paper's agent network.

    :param observation_space: Space of the observations
    :param action_space: ``Discrete`` space of the actions
    :param lr_schedule: Learning rate as a function of the remaining progress; ``lr_schedule(1)``
        is the optimisers' initial rate
    :param net_arch: Hidden layer sizes, shared by actor and critics (``[256, 256]`` by default),
        or ``dict(pi=[...], qf=[...])`` to size them separately
    :param activation_fn: Activation after each hidden layer
    :param input_layer_norm: Put a learnable ``LayerNorm`` at the input of the actor and of each critic
    :param features_extractor_class: Class of the module turning observations into feature vectors
    :param features_extractor_kwargs: Its keyword arguments
    :param normalize_images: Divide image observations by 255
    :param optimizer_class: Optimiser of actor and critics (Adam by default)
    :param optimizer_kwargs: Its keyword arguments other than the learning rate. For Adam and AdamW,
        ``fused=True`` is added unless ``fused`` or ``foreach`` is given.
    :param n_critics: How many critics (two for clipped double Q-learning)
    :param share_features_extractor: Let the critics use the actor's features extractor
        (less computation; only the actor loss trains it)
    :param action_prior: Initial action probabilities of the actor (e.g. ``[0.25, 0.75]``), whatever the
        observation: its output layer starts with near-zero weights and the prior's log as bias.
        ``None``: the usual random initialisation (roughly uniform)
    :param reference_logits: Observation indices of ``log p_ref(a | k)``, one per action (MARA-v1:
        ``env.observation_layout.reference_logits``). The actor's logits become ``log p_ref(. | k) + f(s)``
        with ``f = 0`` at the start: the untrained actor is the reference policy (KL 0), and
        :class:`~agents.DiscreteSAC`'s warm-up follows it instead of uniform actions
    :param critic_reference_scale: With ``reference_logits``, model each critic as
        ``critic_reference_scale * log p_ref(a | k) + g_j(s, a)`` (see :class:`DiscreteCritic`); MARA's
        exact immediate term is ``kl_coef``. ``None``: plain critics
    """

    actor: DiscreteActor
    critic: DiscreteCritic
    critic_target: DiscreteCritic

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Discrete,
        lr_schedule: Schedule,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.ReLU,
        input_layer_norm: bool = False,
        features_extractor_class: type[BaseFeaturesExtractor] = FlattenExtractor,
        features_extractor_kwargs: dict[str, Any] | None = None,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        n_critics: int = 2,
        share_features_extractor: bool = False,
        action_prior: Sequence[float] | None = None,
        reference_logits: Sequence[int] | None = None,
        critic_reference_scale: float | None = None,
        **unexpected: Any,
    ):
        if unexpected:
            # Another algorithm building this policy: PPO.load / A2C.load of a DiscreteSAC file pass use_sde
            raise TypeError(
                f"{type(self).__name__} is the policy of agents.DiscreteSAC and takes no "
                f"{', '.join(sorted(unexpected))}: this is a DiscreteSAC agent being loaded or built by another "
                "algorithm. Load it with "
                "DiscreteSAC.load(path), or agents.loading.load_algorithm(path), which detects the algorithm."
            )
        _check_discrete(action_space, type(self).__name__)
        super().__init__(
            observation_space,
            action_space,
            features_extractor_class,
            features_extractor_kwargs,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
            normalize_images=normalize_images,
        )

        if net_arch is None:
            net_arch = [256, 256]

        actor_arch, critic_arch = get_actor_critic_arch(net_arch)

        self.net_arch = net_arch
        self.activation_fn = activation_fn
        self.input_layer_norm = input_layer_norm
        self.net_args = {
            "observation_space": self.observation_space,
            "action_space": self.action_space,
            "activation_fn": self.activation_fn,
            "input_layer_norm": input_layer_norm,
            "normalize_images": normalize_images,
        }
        self.action_prior = action_prior
        self.reference_logits = None if reference_logits is None else tuple(int(i) for i in reference_logits)
        self.critic_reference_scale = critic_reference_scale
        self.actor_kwargs = {
            **self.net_args,
            "net_arch": actor_arch,
            "action_prior": action_prior,
            "reference_logits": self.reference_logits,
        }
        self.critic_kwargs = {
            **self.net_args,
            "net_arch": critic_arch,
            "n_critics": n_critics,
            "share_features_extractor": share_features_extractor,
            "reference_logits": self.reference_logits,
            "reference_scale": critic_reference_scale,
        }
        self.share_features_extractor = share_features_extractor

        self._build(lr_schedule)

    def _build(self, lr_schedule: Schedule) -> None:
        if self.optimizer_class in (th.optim.Adam, th.optim.AdamW) and not {"fused", "foreach"} & set(
            self.optimizer_kwargs
        ):
            # One fused kernel per update instead of several per tensor: with small networks the
            # per-tensor overhead of the default implementation costs more than the matrix products.
            self.optimizer_kwargs = {**self.optimizer_kwargs, "fused": True}

        self.actor = self.make_actor()
        self.actor.optimizer = self.optimizer_class(
            self.actor.parameters(),
            lr=lr_schedule(1),  # type: ignore[call-arg]
            **self.optimizer_kwargs,
        )

        if self.share_features_extractor:
            self.critic = self.make_critic(features_extractor=self.actor.features_extractor)
            # The shared extractor belongs to the actor's optimizer; two optimizers on one tensor would
            # each apply their own update to it.
            critic_parameters = [
                param for name, param in self.critic.named_parameters() if "features_extractor" not in name
            ]
        else:
            self.critic = self.make_critic(features_extractor=None)
            critic_parameters = list(self.critic.parameters())

        # The target never shares an extractor: it must lag behind the online critic as a whole
        self.critic_target = self.make_critic(features_extractor=None)
        self.critic_target.load_state_dict(self.critic.state_dict())
        # Targets are updated by Polyak averaging only
        self.critic_target.requires_grad_(False)

        self.critic.optimizer = self.optimizer_class(
            critic_parameters,
            lr=lr_schedule(1),  # type: ignore[call-arg]
            **self.optimizer_kwargs,
        )

        # Targets only ever evaluate: keep dropout/batch norm in inference behaviour
        self.critic_target.set_training_mode(False)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()

        data.update(
            dict(
                net_arch=self.net_arch,
                activation_fn=self.net_args["activation_fn"],
                input_layer_norm=self.input_layer_norm,
                n_critics=self.critic_kwargs["n_critics"],
                share_features_extractor=self.share_features_extractor,
                action_prior=self.action_prior,
                reference_logits=self.reference_logits,
                critic_reference_scale=self.critic_reference_scale,
                lr_schedule=self._dummy_schedule,  # the algorithm restores the real schedule
                optimizer_class=self.optimizer_class,
                optimizer_kwargs=self.optimizer_kwargs,
                features_extractor_class=self.features_extractor_class,
                features_extractor_kwargs=self.features_extractor_kwargs,
            )
        )
        return data

    def make_actor(self, features_extractor: BaseFeaturesExtractor | None = None) -> DiscreteActor:
        actor_kwargs = self._update_features_extractor(self.actor_kwargs, features_extractor)
        return DiscreteActor(**actor_kwargs).to(self.device)

    def make_critic(self, features_extractor: BaseFeaturesExtractor | None = None) -> DiscreteCritic:
        critic_kwargs = self._update_features_extractor(self.critic_kwargs, features_extractor)
        return DiscreteCritic(**critic_kwargs).to(self.device)

    def forward(self, obs: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        return self._predict(obs, deterministic=deterministic)

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        # Deterministic: the most probable action; otherwise a sample from pi(.|s)
        return self.actor(observation, deterministic)

    def set_training_mode(self, mode: bool) -> None:
        """
        Switch actor and critics between training and evaluation behaviour (dropout, batch norm).

        The target critics always stay in evaluation mode.

        :param mode: ``True`` for training, ``False`` for evaluation
        """
        self.actor.set_training_mode(mode)
        self.critic.set_training_mode(mode)
        self.training = mode


MlpPolicy = DiscreteSACPolicy


class CnnPolicy(DiscreteSACPolicy):
    """
    :class:`DiscreteSACPolicy` for image observations: a ``NatureCNN`` features extractor by default.

    The parameters are those of :class:`DiscreteSACPolicy`.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Discrete,
        lr_schedule: Schedule,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.ReLU,
        input_layer_norm: bool = False,
        features_extractor_class: type[BaseFeaturesExtractor] = NatureCNN,
        features_extractor_kwargs: dict[str, Any] | None = None,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        n_critics: int = 2,
        share_features_extractor: bool = False,
    ):
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch,
            activation_fn,
            input_layer_norm,
            features_extractor_class,
            features_extractor_kwargs,
            normalize_images,
            optimizer_class,
            optimizer_kwargs,
            n_critics,
            share_features_extractor,
        )


class MultiInputPolicy(DiscreteSACPolicy):
    """
    :class:`DiscreteSACPolicy` for ``Dict`` observations: a ``CombinedExtractor`` by default.

    The parameters are those of :class:`DiscreteSACPolicy`.
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Discrete,
        lr_schedule: Schedule,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.ReLU,
        input_layer_norm: bool = False,
        features_extractor_class: type[BaseFeaturesExtractor] = CombinedExtractor,
        features_extractor_kwargs: dict[str, Any] | None = None,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        n_critics: int = 2,
        share_features_extractor: bool = False,
    ):
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch,
            activation_fn,
            input_layer_norm,
            features_extractor_class,
            features_extractor_kwargs,
            normalize_images,
            optimizer_class,
            optimizer_kwargs,
            n_critics,
            share_features_extractor,
        )
