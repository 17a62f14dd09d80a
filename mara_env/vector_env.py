"""``TokenAcceptRejectVectorEnv``: many MARA episodes per step, batched through each LLM replica."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from mara_env.config import MARAConfig
from mara_env.contract import AgentContract
from mara_env.core import MARACore, check_reset_options
from mara_env.env import check_open, first_line, step_info
from mara_env.observation import ObservationLayout
from mara_env.rendering import RENDER_FPS, RENDER_MODES, check_render_mode, text_frame


class TokenAcceptRejectVectorEnv(VectorEnv):
    """``num_envs`` episodes of :class:`~mara_env.env.TokenAcceptRejectEnv`, stepped together.

    Each step runs batched LLM forwards per replica for all sub-environments that need new
    hidden states (forced tokens, candidate chunks and the prompts of restarted episodes alike), with
    each sequence's KV cache kept between steps. Sub-environments are split into contiguous blocks,
    one per replica, and the replicas run concurrently. Sub-environment ``i`` behaves exactly like a single environment
    seeded with ``seed + i``.

    Autoreset is ``SAME_STEP``: when a sub-environment's episode ends, the returned observation is
    the first of its next episode, and ``info["final_obs"]`` / ``info["final_info"]`` hold the last
    observation (zeros) and the end-of-episode info. Finished episodes of one step are scored in
    one batch.

    All settings are keyword arguments; see :class:`mara_env.config.MARAConfig`.

    Example::

        >>> import gymnasium as gym
        >>> import mara_env
        >>> envs = gym.make_vec("MARA-v0", num_envs=8, max_new_tokens=64)
        >>> obs, info = envs.reset(seed=0)
        >>> obs.shape
        (8, 576)
        >>> obs, rewards, terminated, truncated, info = envs.step(np.ones(8, dtype=np.int64))
    """

    metadata: ClassVar[dict[str, Any]] = {
        "autoreset_mode": AutoresetMode.SAME_STEP,
        "render_modes": list(RENDER_MODES),
        "render_fps": RENDER_FPS,
    }

    def __init__(self, num_envs: int = 1, llm: Any = None, *, render_mode: str | None = None, **kwargs: Any) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be an integer >= 1, got {num_envs!r}.")
        check_render_mode(render_mode)
        self.config = MARAConfig.from_kwargs({"llm": llm, **kwargs})
        self.num_envs = int(num_envs)
        self.render_mode = render_mode
        self.core = MARACore(self.num_envs, self.config)
        self.single_observation_space = spaces.Box(
            -np.inf, np.inf, shape=(self.core.layout.size,), dtype=self.config.np_obs_dtype
        )
        self.single_action_space = spaces.Discrete(2)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._rows = list(range(self.num_envs))
        self._started = False
        self._failed: str | None = None  # an error inside the last step, until reset() starts afresh

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a new episode in every sub-environment (or in those of ``options["reset_mask"]``).

        :param seed: an int (sub-environment ``i`` gets ``seed + i``), a list of per-environment
            seeds, or ``None``.
        :param options: as for the single environment (``"prompt"`` then applies to all), plus

            - ``"prompts"``: one prompt per sub-environment (``None``: drawn from the prompt set); the
              episodes after these draw their prompts as usual;
            - ``"reset_mask"``: a boolean array of ``num_envs`` (Gymnasium's partial reset): only those
              sub-environments start a new episode, the others go on with theirs. The observations of
              all are returned, the infos of the reset ones.
        """
        check_open(self.closed, "reset")
        options = dict(options or {})
        rows = self._rows if "reset_mask" not in options else self._masked(options.pop("reset_mask"))
        full = len(rows) == self.num_envs  # an all-True mask is a full reset
        prompts = self._row_prompts(options)
        check_reset_options(options)  # wrong options are refused before anything changes
        if full:
            super().reset(seed=int(seed) if isinstance(seed, (int, np.integer)) else None)
        if seed is None:
            seeds: list[int | None] = [None] * self.num_envs
        elif isinstance(seed, (int, np.integer)):
            seeds = [int(seed) + i for i in self._rows]
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"reset: got {len(seeds)} seeds for {self.num_envs} environments.")
        self.core.seed_rows(rows, [seeds[row] for row in rows])
        if full:
            self._started = False  # until every new episode has started
        try:
            skipped = self._start(rows, prompts, options)
        except BaseException as exc:
            if not full:  # half a partial reset: the episodes cannot go on as they were
                self._failed = first_line(exc)
            raise
        if full:
            self._started, self._failed = True, None
        infos: dict[str, Any] = {}
        for row in rows:
            info = self.core.candidate_info(row)
            if skipped[row]:
                info["skipped_episodes"] = skipped[row]
            infos = self._add_info(infos, info, row)
        return self.core.observations(self._rows), infos

    def _masked(self, mask: Any) -> list[int]:
        """The rows of a partial reset's ``reset_mask``."""
        array = np.asarray(mask)
        if array.dtype != np.bool_ or array.shape != (self.num_envs,) or not array.any():
            raise ValueError(
                f"reset options: 'reset_mask' must be a boolean array of shape ({self.num_envs},) with at least one "
                f"True (the sub-environments to reset), got {mask!r:.80}."
            )
        if array.all():
            return self._rows
        if not self._started:
            raise ValueError("reset options: a partial reset ('reset_mask') needs a full reset() first.")
        if self._failed is not None:
            raise RuntimeError(
                f"reset options: a partial reset ('reset_mask') after an error inside an earlier step "
                f"({self._failed}); call envs.reset() without 'reset_mask' to start all episodes afresh."
            )
        return [int(row) for row in np.flatnonzero(array)]

    def _row_prompts(self, options: dict[str, Any]) -> list[str | None] | None:
        """Take ``options["prompts"]`` (one prompt per sub-environment) out of ``options``, checked."""
        if "prompts" not in options:
            return None
        prompts = options.pop("prompts")
        if options:
            raise ValueError(
                f"reset options: 'prompts' (one prompt per sub-environment) cannot be combined with "
                f"{', '.join(map(repr, options))}; give one prompt per row in 'prompts' instead."
            )
        if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) or len(prompts) != self.num_envs:
            raise ValueError(
                f"reset options: 'prompts' must be a list of {self.num_envs} prompts (one per sub-environment, None to "
                f"draw one), got {prompts!r:.80}; for one prompt in every row use 'prompt'."
            )
        return list(prompts)

    def _start(self, rows: list[int], prompts: list[str | None] | None, options: dict[str, Any]) -> dict[int, int]:
        """Start the episodes of ``rows``; ``prompts`` (if given) holds each row's own prompt."""
        if prompts is None:
            return dict(zip(rows, self.core.start_rows(rows, options)))
        drawn = [row for row in rows if prompts[row] is None]
        skipped = dict(zip(drawn, self.core.start_rows(drawn) if drawn else []))
        for row in rows:
            if prompts[row] is not None:  # the core takes one prompt for all the rows it starts: one row at a time
                skipped[row] = self.core.start_rows([row], {"prompt": prompts[row]})[0]
        return skipped

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        check_open(self.closed, "step")
        if self._failed is not None:
            raise RuntimeError(
                f"step() after an error inside an earlier step ({self._failed}): the episodes cannot go on; call "
                "envs.reset() to start new ones."
            )
        if not self._started:
            raise RuntimeError("step() called before reset(); call envs.reset() first.")
        acts = self._parse_actions(actions)  # wrong actions are refused before anything changes
        try:
            return self._step(acts)
        except BaseException as exc:
            self._failed = first_line(exc)
            raise

    def _step(self, acts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        # ended episodes restart within the step's own rounds of forwards (SAME_STEP autoreset)
        step = self.core.decide(self._rows, acts, restart=True)
        done = step.done
        rewards = step.reward.copy()
        finished = [row for row in self._rows if done[row]]
        infos: dict[str, Any] = {}
        if finished:
            terminal, episode_infos = self.core.finish([step.ended[row] for row in finished])
            rewards[finished] += terminal
            zero = np.zeros(self.single_observation_space.shape, dtype=self.single_observation_space.dtype)
            for row, ep_info in zip(finished, episode_infos):
                ep_info |= step_info(step, row)
                infos = self._add_info(infos, {"final_obs": zero.copy(), "final_info": ep_info}, row)
                if step.skipped[row]:
                    infos = self._add_info(infos, {"skipped_episodes": step.skipped[row]}, row)
        for row in self._rows:
            infos = self._add_info(infos, self.core.candidate_info(row) | step_info(step, row), row)
        obs = self.core.observations(self._rows)
        truncated = np.zeros(self.num_envs, dtype=bool)
        return obs, rewards, done.copy(), truncated, infos

    def render(self) -> tuple[str, ...] | tuple[np.ndarray, ...] | None:
        """One render per sub-environment, as the single environment's ``render`` (:mod:`mara_env.rendering`)."""
        if self.render_mode is None:
            return None
        texts = [self.core.render_text(row) for row in self._rows]
        return tuple(texts) if self.render_mode == "ansi" else tuple(text_frame(text) for text in texts)

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

    def close_extras(self, **kwargs: Any) -> None:
        self.core.close()

    def _parse_actions(self, actions: Any) -> np.ndarray:
        arr = np.asarray(actions)
        if arr.shape == (self.num_envs, 1):  # (N, 1) from some agents' predict
            arr = arr[:, 0]
        if arr.shape != (self.num_envs,):
            raise ValueError(
                f"actions must have shape ({self.num_envs},), one 0/1 per sub-environment; got shape {arr.shape}."
            )
        if not np.issubdtype(arr.dtype, np.integer) or not np.isin(arr, (0, 1)).all():
            raise ValueError(f"actions must be integers 0 (reject) or 1 (accept); got {actions!r}.")
        return arr.astype(np.int64)
