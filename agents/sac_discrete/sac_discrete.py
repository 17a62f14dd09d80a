"""Soft Actor-Critic for discrete action spaces, with the Stable-Baselines3 API."""

import math
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, ReplayBufferSamples, Schedule
from stable_baselines3.common.utils import get_parameters_by_name, polyak_update
from torch.nn import functional as F

from agents.hyperparameters import check_ranges
from agents.reference_anchor import check_raw_observations
from agents.sac_discrete.policies import (
    CnnPolicy,
    DiscreteActor,
    DiscreteCritic,
    DiscreteSACPolicy,
    MlpPolicy,
    MultiInputPolicy,
)

SelfDiscreteSAC = TypeVar("SelfDiscreteSAC", bound="DiscreteSAC")

#: ``target_entropy="auto"`` aims at this fraction of the maximum entropy ``ln |A|``. Tuned on
#: CartPole-v1 (docs/agents.md): with two actions, 0.35 ln 2 puts about 93% on the preferred action.
DEFAULT_TARGET_ENTROPY_FRACTION = 0.35

#: Values of ``DiscreteSAC(warmup=...)``.
WARMUPS = ("auto", "uniform", "policy")


class NonFiniteLossError(FloatingPointError):
    """A loss or gradient of :class:`DiscreteSAC` was NaN or infinite; no optimiser was stepped with it."""


def resolve_target_entropy(target_entropy: str | float, n_actions: int) -> float:
    """
    Turn a ``target_entropy`` setting into nats and check that a policy can reach it.

    :param target_entropy: ``"auto"`` (``DEFAULT_TARGET_ENTROPY_FRACTION * ln n``),
        ``"auto_<fraction>"`` (that fraction of ``ln n``, e.g. ``"auto_0.6"``) or a number of nats
    :param n_actions: Number of actions ``n``
    :return: The target entropy in nats, in ``[0, ln n)``
    """
    max_entropy = math.log(n_actions)
    if isinstance(target_entropy, str):
        fraction_text = target_entropy.removeprefix("auto").removeprefix("_")
        try:
            fraction = float(fraction_text) if fraction_text else DEFAULT_TARGET_ENTROPY_FRACTION
        except ValueError:
            fraction = math.nan
        if not target_entropy.startswith("auto") or not 0.0 <= fraction < 1.0:
            raise ValueError(
                f"target_entropy={target_entropy!r} is not understood: pass a number of nats, 'auto', "
                "or 'auto_<fraction>' with 0 <= fraction < 1 (the fraction of ln|A|), e.g. 'auto_0.6'."
            )
        return fraction * max_entropy

    value = float(target_entropy)
    if not 0.0 <= value < max_entropy:
        raise ValueError(
            f"target_entropy={value:.4g} nats cannot be reached with {n_actions} actions: a policy's "
            f"entropy lies in [0, ln {n_actions}] = [0, {max_entropy:.4f}], and a target at or above the "
            "maximum makes the entropy coefficient grow without bound. Pass a value in that range, or a "
            "fraction of the maximum such as target_entropy='auto_0.6'."
        )
    return value


def parse_ent_coef(ent_coef: str | float) -> float:
    """
    Read an ``ent_coef`` setting.

    :param ent_coef: ``"auto"`` (learned, starting at 1.0), ``"auto_<init>"`` (learned, starting at
        ``<init>``) or a fixed float
    :return: The initial value of a learned coefficient, or the fixed value
    """
    if not isinstance(ent_coef, str):
        if not float(ent_coef) >= 0.0:
            raise ValueError(f"A fixed ent_coef must be >= 0, got {ent_coef}.")
        return float(ent_coef)
    init_text = ent_coef.removeprefix("auto").removeprefix("_")
    try:
        init_value = float(init_text) if init_text else 1.0
    except ValueError:
        init_value = math.nan
    if not ent_coef.startswith("auto") or not init_value > 0.0:
        raise ValueError(
            f"ent_coef={ent_coef!r} is not understood: pass 'auto' (learned, starting at 1.0), "
            "'auto_<init>' with init > 0 (learned, e.g. 'auto_0.1') or a fixed float."
        )
    return init_value


class DiscreteSAC(OffPolicyAlgorithm):
    """
    Soft Actor-Critic (SAC) for discrete action spaces.

    Discrete SAC (Christodoulou, 2019, https://arxiv.org/abs/1910.07207): the actor outputs the whole
    distribution ``pi(.|s)`` and each critic all Q-values ``Q(s, .)``, so the expectations over actions
    in the soft state value, the actor loss and the entropy are sums over actions, not samples.
    Twin critics with clipped double Q-learning, Polyak-averaged target critics and an automatically
    tuned entropy coefficient, as in SB3's :class:`~stable_baselines3.SAC`.

    The three losses of a gradient step are computed on the same batch and network state, as in the
    paper's reference code, and applied together. A NaN or infinite loss (or clipped gradient norm)
    raises :class:`NonFiniteLossError` before any optimiser step.

    :param policy: Policy class or alias: ``"MlpPolicy"``, ``"CnnPolicy"`` or ``"MultiInputPolicy"``
    :param env: Environment (or its registered id) with a ``Discrete`` action space
    :param learning_rate: Adam learning rate of actor, critics and entropy coefficient; a constant or a
        schedule of the remaining progress (1 at the start, 0 at the end)
    :param buffer_size: Replay buffer capacity in transitions
    :param learning_starts: Transitions collected before the first update (with the actions ``warmup`` says)
    :param batch_size: Transitions per gradient step
    :param tau: Polyak coefficient of the target critics (1 copies the critics)
    :param gamma: Discount factor
    :param train_freq: Collect this many steps between updates, or a ``(frequency, "step" | "episode")`` tuple
    :param gradient_steps: Gradient steps after each collection; ``-1`` for one per collected transition
    :param replay_buffer_class: Replay buffer class; ``None`` picks SB3's buffer for the settings
    :param replay_buffer_kwargs: Extra keyword arguments of the replay buffer
    :param optimize_memory_usage: Store each observation once (the next observation is the following slot),
        halving the observation memory. SB3's buffer then cannot tell time-limit truncations from
        terminations, so it also needs ``replay_buffer_kwargs=dict(handle_timeout_termination=False)``.
    :param n_steps: Use ``n_steps``-step returns in the critic target (SB3's ``NStepReplayBuffer``);
        applies when ``replay_buffer_class`` is ``None`` and observations are not a ``Dict``
    :param ent_coef: Entropy coefficient alpha: ``"auto"`` (learned, starting at 1.0),
        ``"auto_<init>"`` (learned, starting at ``<init>``, e.g. ``"auto_0.1"``) or a float (fixed)
    :param target_update_interval: Update the target critics every this many gradient steps
    :param target_entropy: Entropy the learned alpha steers the policy to: nats in ``[0, ln |A|)``,
        ``"auto"`` (``0.35 * ln |A|``) or ``"auto_<fraction>"`` (that fraction of ``ln |A|``).
        With two actions keep it low (``docs/agents.md``): near ``ln 2`` it pins the policy to 50/50.
    :param max_grad_norm: If set, clip the gradient norm of the actor and of the critics (separately)
    :param warmup: How actions are chosen before ``learning_starts``: ``"uniform"`` (SB3's uniformly random
        actions), ``"policy"`` (samples of the current, untrained policy) or ``"auto"`` (``"policy"`` when
        the actor is anchored to a reference through ``policy_kwargs["reference_logits"]``, whose
        untrained policy is the reference's own behaviour; ``"uniform"`` otherwise)
    :param critic_warmup_steps: Gradient steps of the critics alone, run as one burst at the first update
        (on the warm-up data): the critics first evaluate the policy that collected it (for an anchored
        actor, the reference) before the actor follows them. 0: none
    :param stats_window_size: Episodes averaged in the rollout statistics of the logs
    :param tensorboard_log: Folder for TensorBoard logs (``None``: no TensorBoard)
    :param policy_kwargs: Keyword arguments of the policy (``net_arch``, ``input_layer_norm``,
        ``activation_fn``, ``n_critics``, ``optimizer_kwargs``, ...)
    :param verbose: 0 silent, 1 training logs and info messages, 2 debug messages
    :param seed: Seed of Python, NumPy, PyTorch and the environment
    :param device: Torch device (``"cpu"``, ``"cuda"``, ...); ``"auto"`` takes a GPU when there is one
    :param _init_setup_model: Whether to build networks and buffer at construction
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": MlpPolicy,
        "CnnPolicy": CnnPolicy,
        "MultiInputPolicy": MultiInputPolicy,
    }
    policy: DiscreteSACPolicy
    actor: DiscreteActor
    critic: DiscreteCritic
    critic_target: DiscreteCritic

    def __init__(
        self,
        policy: str | type[DiscreteSACPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 3e-4,
        buffer_size: int = 1_000_000,  # 1e6
        learning_starts: int = 1000,
        batch_size: int = 256,
        tau: float = 0.005,
        gamma: float = 0.99,
        train_freq: int | tuple[int, str] = 1,
        gradient_steps: int = 1,
        replay_buffer_class: type[ReplayBuffer] | None = None,
        replay_buffer_kwargs: dict[str, Any] | None = None,
        optimize_memory_usage: bool = False,
        n_steps: int = 1,
        ent_coef: str | float = "auto",
        target_update_interval: int = 1,
        target_entropy: str | float = "auto",
        max_grad_norm: float | None = None,
        warmup: str = "auto",
        critic_warmup_steps: int = 0,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
    ):
        # Before SB3 allocates anything: out-of-range values would only fail later, and misleadingly
        check_ranges(
            "DiscreteSAC",
            dict(
                learning_rate=learning_rate,
                buffer_size=buffer_size,
                learning_starts=learning_starts,
                batch_size=batch_size,
                tau=tau,
                gamma=gamma,
                train_freq=train_freq,
                gradient_steps=gradient_steps,
                n_steps=n_steps,
                target_update_interval=target_update_interval,
                max_grad_norm=max_grad_norm,
                critic_warmup_steps=critic_warmup_steps,
                stats_window_size=stats_window_size,
            ),
        )
        super().__init__(
            policy,
            env,
            learning_rate,
            buffer_size,
            learning_starts,
            batch_size,
            tau,
            gamma,
            train_freq,
            gradient_steps,
            action_noise=None,
            replay_buffer_class=replay_buffer_class,
            replay_buffer_kwargs=replay_buffer_kwargs,
            optimize_memory_usage=optimize_memory_usage,
            n_steps=n_steps,
            policy_kwargs=policy_kwargs,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            verbose=verbose,
            device=device,
            seed=seed,
            sde_support=False,
            support_multi_env=True,
        )
        # Checked here rather than through `supported_action_spaces` to give an error that names the fix
        action_space = getattr(self, "action_space", None)
        if action_space is not None and not isinstance(action_space, spaces.Discrete):
            raise TypeError(
                f"DiscreteSAC needs a gymnasium.spaces.Discrete action space, got {action_space}. "
                "For continuous (Box) actions use stable_baselines3.SAC; for MultiDiscrete actions, "
                "flatten them into one Discrete space with a wrapper."
            )

        self.target_entropy = target_entropy
        self.log_ent_coef: th.Tensor | None = None
        # Entropy coefficient alpha (the "temperature"); learned when ent_coef starts with "auto"
        self.ent_coef = ent_coef
        self.target_update_interval = target_update_interval
        self.max_grad_norm = max_grad_norm
        if warmup not in WARMUPS:
            raise ValueError(f"warmup must be one of {', '.join(map(repr, WARMUPS))}, got {warmup!r}.")
        self.warmup = warmup
        self.critic_warmup_steps = critic_warmup_steps
        self.ent_coef_optimizer: th.optim.Adam | None = None
        #: An extra term of the actor loss, called at every gradient step with the algorithm (e.g.
        #: :class:`agents.teacher.BehaviourCloning`); ``None`` or a returned ``None``: no term. Not saved.
        self.auxiliary_actor_loss: Callable[[DiscreteSAC], th.Tensor | None] | None = None

        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        # Validate the settings before SB3 allocates a replay buffer that may take gigabytes
        if isinstance(self.policy_class, type) and not issubclass(self.policy_class, DiscreteSACPolicy):
            # e.g. DiscreteSAC.load of a PPO file: say so, rather than fail on a missing attribute later
            raise TypeError(
                f"DiscreteSAC needs a DiscreteSACPolicy, got {self.policy_class.__name__}: if this is a saved agent of "
                "another algorithm, load it with that algorithm's load(), or agents.loading.load_algorithm(path), "
                "which detects the algorithm."
            )
        self._check_buffer_settings()
        self._check_train_freq()
        if (self.policy_kwargs or {}).get("reference_logits") is not None:
            check_raw_observations(self._vec_normalize_env, "DiscreteSAC")
        n_actions = int(self.action_space.n)  # type: ignore[attr-defined]
        if n_actions < 2:
            raise ValueError(f"The action space {self.action_space} has fewer than two actions: nothing to learn.")
        self.target_entropy = resolve_target_entropy(self.target_entropy, n_actions)  # type: ignore[arg-type]
        initial_ent_coef = parse_ent_coef(self.ent_coef)

        super()._setup_model()
        self._create_aliases()
        # Running mean and running var (batch norm in a custom features extractor)
        self.batch_norm_stats = get_parameters_by_name(self.critic, ["running_"])
        self.batch_norm_stats_target = get_parameters_by_name(self.critic_target, ["running_"])

        if isinstance(self.ent_coef, str):
            # log(alpha) is optimised so that alpha stays positive without a constraint
            self.log_ent_coef = th.log(th.full((1,), initial_ent_coef, device=self.device)).requires_grad_(True)
            self.ent_coef_optimizer = th.optim.Adam([self.log_ent_coef], lr=self.lr_schedule(1))
        else:
            self.ent_coef_tensor = th.tensor(initial_ent_coef, device=self.device)

    @property
    def uniform_warmup(self) -> bool:
        """Whether actions before ``learning_starts`` are uniformly random (see ``warmup``)."""
        if self.warmup == "auto":
            return getattr(self.policy.actor, "reference", None) is None
        return self.warmup == "uniform"

    def _sample_action(
        self, learning_starts: int, action_noise: ActionNoise | None = None, n_envs: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.uniform_warmup or self.num_timesteps >= learning_starts:
            return super()._sample_action(learning_starts, action_noise, n_envs)
        # Warm-up on the current policy: SB3's own path after learning_starts, taken from the first step
        return super()._sample_action(0, action_noise, n_envs)

    def _check_train_freq(self) -> None:
        """SB3 counts episodic training frequencies only with one environment; say so before ``learn``."""
        # Before SB3 converts it, train_freq is an int (steps) or a (frequency, unit) tuple.
        unit = self.train_freq[1] if isinstance(self.train_freq, tuple) else "step"
        n_envs = getattr(self, "n_envs", 1) or 1
        if str(getattr(unit, "value", unit)) == "episode" and n_envs > 1:
            raise ValueError(
                f"train_freq={self.train_freq!r} counts episodes, which SB3 supports with one environment only; "
                f"this VecEnv has {n_envs}. Use a step-based frequency, e.g. train_freq=L and "
                f"gradient_steps=10 * {n_envs} where L is the mean number of steps per episode "
                "(mara_preset(..., train_freq=..., gradient_steps=...))."
            )

    def _check_buffer_settings(self) -> None:
        """Reject replay buffer settings that SB3's buffers would refuse with a less helpful message."""
        if not self.optimize_memory_usage:
            return
        if self.n_steps > 1 and self.replay_buffer_class is None:
            raise ValueError(
                "optimize_memory_usage=True cannot be combined with n_steps > 1: SB3's NStepReplayBuffer "
                "needs separate next observations. Use one of the two."
            )
        if self.replay_buffer_kwargs.get("handle_timeout_termination", True):
            raise ValueError(
                "optimize_memory_usage=True stores each observation once, so SB3's replay buffer cannot "
                "keep time-limit truncations apart from terminations. Pass "
                "replay_buffer_kwargs=dict(handle_timeout_termination=False) to accept that truncated "
                "episodes are treated as terminated, or set optimize_memory_usage=False."
            )

    def _create_aliases(self) -> None:
        self.actor = self.policy.actor
        self.critic = self.policy.critic
        self.critic_target = self.policy.critic_target

    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        # Training behaviour of dropout / batch norm, if a custom network has them
        self.policy.set_training_mode(True)
        optimizers: list[th.optim.Optimizer] = [self.actor.optimizer, self.critic.optimizer]
        if self.ent_coef_optimizer is not None:
            optimizers.append(self.ent_coef_optimizer)
        self._update_learning_rate(optimizers)

        # The tensors each optimizer steps (the critic's excludes a features extractor shared with the actor)
        actor_params = [p for group in self.actor.optimizer.param_groups for p in group["params"]]
        critic_params = [p for group in self.critic.optimizer.param_groups for p in group["params"]]
        assert isinstance(self.target_entropy, float)

        # Kept as tensors and read once at the end: no host sync per step just for logging
        step_stats: list[th.Tensor] = []
        auxiliary_stats: list[th.Tensor] = []

        # The critic-only burst still owed (all of it at the first update)
        critic_only_steps = max(0, self.critic_warmup_steps - self._n_updates)
        gradient_steps += critic_only_steps

        for gradient_step in range(gradient_steps):
            replay_data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr]
            # For n-step replay the discount is gamma**k, k <= n_steps (smaller where the episode ended early)
            discounts = replay_data.discounts if replay_data.discounts is not None else self.gamma

            # Current policy over all actions: pi(.|s) and log pi(.|s), shape (batch, n_actions)
            probs, log_probs = self.actor.action_probs(replay_data.observations)
            # Exact entropy of each state's policy: H(pi(.|s)) = -sum_a pi(a|s) log pi(a|s)
            entropy = -(probs * log_probs).sum(dim=1)

            if self.log_ent_coef is not None:
                # Detached: alpha is a constant inside the critic and actor losses
                ent_coef = th.exp(self.log_ent_coef.detach())
                # Entropy coefficient loss: J(alpha) = E_s[log(alpha) * (H(pi(.|s)) - H_target)].
                # Gradient descent lowers alpha while the policy is more random than the target,
                # and raises it when the policy is more certain than the target.
                ent_coef_loss = (self.log_ent_coef * (entropy.detach() - self.target_entropy)).mean()
            else:
                ent_coef = self.ent_coef_tensor
                ent_coef_loss = entropy.new_zeros(())  # fixed alpha: nothing to learn

            with th.no_grad():
                next_probs, next_log_probs = self.actor.action_probs(replay_data.next_observations)
                # Clipped double Q: per action, the minimum over the target critics, min_j Q'_j(s', .)
                next_q_values = th.stack(self.critic_target(replay_data.next_observations)).amin(dim=0)
                # Soft state value with the exact expectation over next actions:
                # V(s') = sum_a' pi(a'|s') * (min_j Q'_j(s', a') - alpha * log pi(a'|s'))
                next_v = (next_probs * (next_q_values - ent_coef * next_log_probs)).sum(dim=1, keepdim=True)
                # Soft TD target: y = r + gamma * (1 - done) * V(s')
                target_q_values = replay_data.rewards + (1 - replay_data.dones) * discounts * next_v

            # Q_j(s, .) for each critic j; the stored action picks Q_j(s, a)
            current_q_values = self.critic(replay_data.observations)
            actions = replay_data.actions.long()
            # Critic loss: L(phi) = 1/2 * sum_j E[(Q_j(s, a) - y)^2]
            critic_loss = 0.5 * sum(F.mse_loss(q.gather(1, actions), target_q_values) for q in current_q_values)
            assert isinstance(critic_loss, th.Tensor)  # sum() of tensors, for type checkers

            # Actor loss with the exact expectation over actions:
            # L(theta) = E_s[sum_a pi(a|s) * (alpha * log pi(a|s) - min_j Q_j(s, a))]
            # Q is detached: the actor loss must not move the critics.
            min_q_values = th.stack(current_q_values).amin(dim=0).detach()
            actor_loss = (probs * (ent_coef * log_probs - min_q_values)).sum(dim=1).mean()
            auxiliary = None if self.auxiliary_actor_loss is None else self.auxiliary_actor_loss(self)
            if auxiliary is not None:
                actor_loss = actor_loss + auxiliary
                auxiliary_stats.append(auxiliary.detach().reshape(1))

            losses = th.stack([critic_loss, actor_loss, ent_coef_loss])
            # The losses share no parameters (each one sees the others' inputs detached),
            # so a single backward pass computes every gradient.
            for optimizer in optimizers:
                optimizer.zero_grad()
            losses.sum().backward()
            checked = [losses]
            if self.max_grad_norm is not None:
                checked.append(th.nn.utils.clip_grad_norm_(actor_params, self.max_grad_norm).reshape(1))
                checked.append(th.nn.utils.clip_grad_norm_(critic_params, self.max_grad_norm).reshape(1))
            # One host sync per step, so that no optimiser ever steps on NaN or inf
            if not bool(th.isfinite(th.cat(checked)).all()):
                self._n_updates += gradient_step
                raise self._non_finite_error(
                    self._n_updates + 1,
                    {"critic_loss": critic_loss, "actor_loss": actor_loss, "ent_coef_loss": ent_coef_loss},
                    replay_data,
                    {"ent_coef": ent_coef, "target_q_values": target_q_values, "log_pi": log_probs},
                )
            # During the critic-only burst the actor and alpha keep their weights
            for optimizer in [self.critic.optimizer] if gradient_step < critic_only_steps else optimizers:
                optimizer.step()

            if (self._n_updates + gradient_step) % self.target_update_interval == 0:
                polyak_update(self.critic.parameters(), self.critic_target.parameters(), self.tau)
                # Batch-norm statistics are copied, not averaged (SB3 issue #996)
                polyak_update(self.batch_norm_stats, self.batch_norm_stats_target, 1.0)

            step_stats.append(th.cat([losses.detach(), ent_coef.reshape(1), entropy.detach().mean().reshape(1)]))

        self._n_updates += gradient_steps
        if gradient_steps == 0:
            return
        critic_mean, actor_mean, ent_coef_loss_mean, ent_coef_mean, entropy_mean = (
            th.stack(step_stats).mean(dim=0).tolist()
        )
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/ent_coef", ent_coef_mean)
        self.logger.record("train/actor_loss", actor_mean)
        self.logger.record("train/critic_loss", critic_mean)
        self.logger.record("train/entropy", entropy_mean)
        if self.ent_coef_optimizer is not None:
            self.logger.record("train/ent_coef_loss", ent_coef_loss_mean)
        if auxiliary_stats:
            self.logger.record("train/auxiliary_actor_loss", th.cat(auxiliary_stats).mean().item())

    def _non_finite_error(
        self,
        update: int,
        losses: dict[str, th.Tensor],
        replay_data: ReplayBufferSamples,
        intermediates: dict[str, th.Tensor],
    ) -> NonFiniteLossError:
        """
        Build the error for a non-finite loss or gradient, naming every culprit found.

        :param update: Number of the gradient step that failed (counting from 1 over the model's life)
        :param losses: The losses of that step
        :param replay_data: The sampled batch
        :param intermediates: Other tensors of the step worth checking
        :return: The exception to raise
        """

        def is_bad(tensor: th.Tensor) -> bool:
            return tensor.is_floating_point() and not bool(th.isfinite(tensor).all())

        bad_losses = [f"{name}={value.item()}" for name, value in losses.items() if is_bad(value)]
        batch: dict[str, Any] = {
            "observations": replay_data.observations,
            "next_observations": replay_data.next_observations,
            "rewards": replay_data.rewards,
        }
        suspects = []
        for name, value in {**batch, **intermediates}.items():
            tensors = value.values() if isinstance(value, dict) else [value]
            if any(is_bad(t) for t in tensors):
                suspects.append(name)
        suspects += [f"parameter {name}" for name, param in self.policy.named_parameters() if is_bad(param)]
        if self.log_ent_coef is not None and is_bad(self.log_ent_coef):
            suspects.append("log_ent_coef")

        what = ", ".join(bad_losses) if bad_losses else "a gradient norm (the losses were finite)"
        where = ", ".join(suspects) if suspects else "none of the batch tensors or parameters"
        return NonFiniteLossError(
            f"DiscreteSAC: non-finite value at gradient step {update}: {what}. "
            f"Non-finite tensors found: {where}. No optimiser was stepped with this batch, so the networks "
            "keep their last finite weights. Check the environment's observations and rewards for NaN/inf; "
            "otherwise lower learning_rate or set max_grad_norm."
        )

    def learn(
        self: SelfDiscreteSAC,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 4,
        tb_log_name: str = "DiscreteSAC",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfDiscreteSAC:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )

    def _excluded_save_params(self) -> list[str]:
        # The auxiliary loss holds data of the run that set it (e.g. demonstrations), not of the model
        return [*super()._excluded_save_params(), "actor", "critic", "critic_target", "auxiliary_actor_loss"]

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        state_dicts = ["policy", "actor.optimizer", "critic.optimizer"]
        if self.ent_coef_optimizer is not None:
            saved_pytorch_variables = ["log_ent_coef"]
            state_dicts.append("ent_coef_optimizer")
        else:
            saved_pytorch_variables = ["ent_coef_tensor"]
        return state_dicts, saved_pytorch_variables
