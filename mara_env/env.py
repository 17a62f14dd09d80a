"""``TokenAcceptRejectEnv``: MARA's token-level accept/reject MDP as a Gymnasium environment."""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from mara_env.config import MARAConfig
from mara_env.contract import AgentContract
from mara_env.core import Decisions, MARACore
from mara_env.observation import ObservationLayout
from mara_env.rendering import RENDER_FPS, RENDER_MODES, check_render_mode, text_frame
from mara_env.row_state import RowState


def parse_action(action: Any, name: str = "action") -> int:
    """Accept an int-like 0/1 (Python int, numpy integer, 0-d or one-element integer array)."""
    value = action
    if isinstance(value, np.ndarray):
        if value.size != 1:
            raise ValueError(
                f"{name} must be a single 0 (reject) or 1 (accept); got an array of shape {value.shape}. "
                "For several prompts at once use gym.make_vec('MARA-v0', num_envs=N)."
            )
        value = value.reshape(()).item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value not in (0, 1):
        raise ValueError(f"{name} must be 0 (reject) or 1 (accept) as an integer; got {action!r}.")
    return int(value)


def check_open(closed: bool, call: str) -> None:
    """Refuse ``reset``/``step`` on a closed environment, whose LLM and caches are released."""
    if closed:
        raise RuntimeError(
            f"{call}() called after close(): the environment has released its LLM and caches. Create a new one."
        )


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` of an error, for the error of the next call."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def step_info(step: Decisions, i: int) -> dict[str, float]:
    """The per-decision info entries of decision ``i``: ``ref_logp``, ``kl_reward``, ``shaping_reward``."""
    return {
        "ref_logp": float(step.ref_logp[i]),
        "kl_reward": float(step.kl_reward[i]),
        "shaping_reward": float(step.shaping_reward[i]),
    }


class TokenAcceptRejectEnv(gym.Env[np.ndarray, np.int64]):
    """MARA's MDP: accept or reject the reference LLM's candidate tokens one at a time.

    At each response position the reference LLM's top-k / top-p candidate set is formed and sorted
    by probability. The agent sees one candidate at a time and answers:

    - **Observation** ``Box(shape=(hidden,))``: the LLM's last-layer hidden state (after the final
      norm) at the candidate's position, for prompt + response so far + that candidate. With
      ``observation="hidden+ref"`` (``MARA-v1``'s default) it is followed by the reference's view of
      the decision, ``Box(shape=(hidden + 8,))``: ``log q_k``, ``log p_ref(accept|k)``,
      ``log p_ref(reject|k)``, rank, set size, remaining mass, set entropy and position
      (:mod:`mara_env.observation`; :attr:`observation_layout` names the indices).
    - **Action** ``Discrete(2)``: ``1`` accepts (the token is appended; the next decision is the first
      candidate of the next position), ``0`` rejects (the next decision is the next candidate).
      The last candidate of a set, and a set of one, are taken without a decision.
    - **Episode end** (``terminated=True``): an EOS token or ``max_new_tokens`` response tokens.
      The terminal observation is all zeros; the next episode starts with :meth:`reset`.
    - **Reward** per decision ``a`` on candidate ``k``::

          r_t = kl_coef * log p_ref(a | k)        p_ref(accept | k) = q_k / sum_{j>=k} q_j

      plus, at the last decision, ``alpha_r * R(x, y) - alpha_c * g(C(x, y))`` for prompt ``x`` and response
      ``y`` (``g`` the identity, or the log-odds with ``cost_scale="logit"``: :func:`mara_env.scoring.scale_cost`).
      Here ``q`` is the reference distribution renormalised over the candidate set. With
      ``reward_shaping="potential"`` (``MARA-v1``'s default) every decision also gets
      ``shaping_gamma * Phi(s') - Phi(s)``, ``Phi`` being that score of the committed prefix (0 at
      the end), which leaves the optimal policy unchanged (Ng, Harada and Russell, 1999).

    **Why this is the KL-regularised objective.** The agent's token distribution ``pi_theta`` is a
    chain of binary decisions, so ``KL(pi_theta || q) = E[sum_t log pi_theta(a_t|s_t) - log p_ref(a_t|k_t)]``.
    Hence::

        E[r(x, y)] - kl_coef * KL(pi_theta || q)
            = E[sum_t r_t]  +  kl_coef * E[sum_t H(pi_theta(. | s_t))]

    i.e. this environment's return plus an entropy bonus with coefficient ``kl_coef`` (undiscounted).
    A maximum-entropy agent such as SAC with ``ent_coef = kl_coef`` optimises it exactly; agents
    without an entropy bonus still get the reference-prior term. The rewards of one episode add up
    to ``kl_coef * sum_i log q(y_i | x, y_<i)``, reported as ``info["ref_logprob"]`` at the end.

    **info** (describes the observation returned): ``candidate_rank`` (0-based), ``token_id``,
    ``ref_prob`` (``q_k``), ``ref_accept_prob`` (``p_ref(accept|k)``), ``set_size``, ``position``
    (response tokens so far), ``response`` (text so far, with ``info_response=True``). Steps add
    ``kl_reward``, ``ref_logp`` (``log p_ref(a | k)`` of the action taken) and ``shaping_reward``, and
    with shaping every info has ``potential`` (``Phi`` of the observed state); the last step adds
    ``prompt``, ``response``, ``response_ids``, ``reward_score``, ``cost_score``, ``terminal_reward``,
    ``num_tokens``, ``num_decisions``, ``finish_reason`` (``"eos"``/``"length"``), ``ref_logprob`` and
    ``prompt_truncated``.

    **render modes** (:mod:`mara_env.rendering`): ``"ansi"`` (the prompt and the answer so far as text) and
    ``"rgb_array"`` (that text drawn on a fixed-size image, for video recorders and SB3's ``make_vec_env``).

    **reset options**: ``{"prompt": str}`` or ``{"prompt_index": int}`` to choose the prompt;
    otherwise it is drawn uniformly from the prompt set with the environment's seeded generator.

    All settings are keyword arguments; see :class:`mara_env.config.MARAConfig`.

    Example::

        >>> import gymnasium as gym
        >>> import mara_env  # registers MARA-v0
        >>> env = gym.make("MARA-v0", max_new_tokens=32)          # embedded SmolLM2-135M-Instruct
        >>> obs, info = env.reset(seed=0)
        >>> obs.shape, info["set_size"] >= 2
        ((576,), True)
        >>> obs, reward, terminated, truncated, info = env.step(1)
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": list(RENDER_MODES), "render_fps": RENDER_FPS}

    def __init__(self, llm: Any = None, *, render_mode: str | None = None, **kwargs: Any) -> None:
        self.config = MARAConfig.from_kwargs({"llm": llm, **kwargs})
        self.render_mode = check_render_mode(render_mode)
        self.core = MARACore(1, self.config)
        self.observation_space = spaces.Box(
            -np.inf, np.inf, shape=(self.core.layout.size,), dtype=self.config.np_obs_dtype
        )
        self.action_space = spaces.Discrete(2)
        self._needs_reset = True
        self._closed = False
        self._failed: str | None = None  # an error inside the last step, until reset() starts afresh

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        check_open(self._closed, "reset")
        super().reset(seed=seed)
        # The environment's own generator chooses prompts, so Gymnasium's seeding rules hold.
        self.core.rngs[0] = self.np_random
        self._needs_reset = True  # until the new episode has started
        skipped = self.core.start_rows([0], options)
        self._needs_reset, self._failed = False, None
        info = self.core.candidate_info(0)
        if skipped[0]:
            info["skipped_episodes"] = skipped[0]
        return self.core.observations([0])[0], info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        check_open(self._closed, "step")
        if self._failed is not None:
            raise RuntimeError(
                f"step() after an error inside an earlier step ({self._failed}): the episode cannot go on; call "
                "env.reset() to start a new one."
            )
        if self._needs_reset:
            raise RuntimeError(
                "step() called before reset() or after the episode ended (terminated=True); call env.reset() first."
            )
        a = parse_action(action)  # a wrong action is refused before anything changes: the episode goes on
        try:
            return self._step(a)
        except BaseException as exc:
            self._failed = first_line(exc)
            raise

    def _step(self, a: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        step = self.core.decide([0], np.array([a]))
        reward = float(step.reward[0])
        if step.done[0]:
            terminal, infos = self.core.finish([step.ended[0]])
            reward += float(terminal[0])
            info = infos[0] | step_info(step, 0)
            self._needs_reset = True
            obs = np.zeros(self.observation_space.shape, dtype=self.observation_space.dtype)
            return obs, reward, True, False, info
        info = self.core.candidate_info(0) | step_info(step, 0)
        return self.core.observations([0])[0], reward, False, False, info

    def render(self) -> str | np.ndarray | None:
        """``"ansi"``: the prompt and the answer so far as text; ``"rgb_array"``: that text as an
        ``(H, W, 3)`` image (:mod:`mara_env.rendering`); ``None`` without a render mode."""
        if self.render_mode is None:
            return None
        text = self.core.render_text(0)
        return text if self.render_mode == "ansi" else text_frame(text)

    def close(self) -> None:
        if not self._closed:
            self.core.close()
        self._closed = True
        super().close()

    @property
    def observation_layout(self) -> ObservationLayout:
        """Names and indices of the observation's parts (:mod:`mara_env.observation`)."""
        return self.core.layout

    @property
    def agent_contract(self) -> AgentContract:
        """What an agent may know about this environment (:mod:`mara_env.contract`)."""
        return self.core.contract

    @property
    def scorer_placement(self) -> dict[str, dict[str, str]]:
        """Where each model scorer runs, by role (``{"reward": {"device": "cuda:1", "dtype": "bfloat16"}}``; built-in
        scorers and callables are left out): what a run records of its scorers."""
        return self.core.terminal.placement

    @property
    def row(self) -> RowState:
        """The decoder's state of the current episode (response ids, candidate set, counters)."""
        return self.core.decoder.rows[0]
