"""The machinery behind both environments: prompts in, decisions through the decoder, rewards out.

:class:`MARACore` owns the LLM replicas, the prompt set, the reward/cost scorers and an
:class:`~mara_env.decoder.AcceptRejectDecoder` of ``num_rows`` rows. It knows nothing about
Gymnasium's API; the single and vector environments are thin shells over it (the single
environment is this machinery with one row).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from gymnasium.utils import seeding

from mara_env.config import MARAConfig
from mara_env.decoder import AcceptRejectDecoder, DecoderConfig, Phase
from mara_env.hints import did_you_mean
from mara_env.llm import PromptEncoder, PromptFormat, default_max_prompt_tokens, load_replicas
from mara_env.observation import ObservationLayout, observe
from mara_env.prompts import PromptSet
from mara_env.scoring import TerminalReward

#: Consecutive episodes that end without a single decision before reset gives up.
MAX_DECISION_FREE_EPISODES = 100

#: The keys ``reset(options=...)`` understands.
RESET_OPTIONS = ("prompt", "prompt_index")


class Decisions(NamedTuple):
    """What one batch of decisions earned, per row (the terminal reward comes from :meth:`MARACore.finish`).

    :param ref_logp: ``log p_ref(a | k)`` of each decision.
    :param kl_reward: ``kl_coef * ref_logp``.
    :param shaping_reward: ``shaping_gamma * Phi(s') - Phi(s)`` (0 without shaping; ``Phi = 0`` at the end).
    :param done: which rows' episodes ended.
    """

    ref_logp: np.ndarray
    kl_reward: np.ndarray
    shaping_reward: np.ndarray
    done: np.ndarray

    @property
    def reward(self) -> np.ndarray:
        """The decision rewards before any terminal reward: KL term plus shaping term."""
        return self.kl_reward + self.shaping_reward


class MARACore:
    """Prompts, LLM replicas, decoder and scorers for ``num_rows`` concurrent episodes.

    :param num_rows: number of concurrent episodes.
    :param config: the environment's settings.
    """

    def __init__(self, num_rows: int, config: MARAConfig) -> None:
        self.config = config
        self.num_rows = num_rows
        self.replicas = load_replicas(
            config.llm, devices=config.devices, dtype=config.dtype, trust_remote_code=config.trust_remote_code
        )
        first = self.replicas[0]
        self.hidden_size = first.hidden_size
        self.layout = ObservationLayout(config.observation, first.hidden_size)
        self.tokenizer = first.tokenizer
        self.prompt_format = PromptFormat(first.tokenizer, config.system_prompt)
        self.prompts = PromptSet.from_source(
            config.prompts,
            part=config.prompt_split,
            test_fraction=config.test_fraction,
            seed=config.split_seed,
            column=config.prompt_column,
            split=config.dataset_split,
        )
        if len(self.prompts) == 0:
            raise ValueError(
                f"prompts: the {config.prompt_split!r} part of {config.prompts!r} is empty; "
                "give more prompts, lower test_fraction, or use prompt_split='all'."
            )
        chunk = config.resolved_chunking(first.device, config.top_k)
        self.decoder = AcceptRejectDecoder(
            self.replicas,
            num_rows,
            DecoderConfig(
                candidates=config.candidates,
                max_new_tokens=config.max_new_tokens,
                chunk_size=chunk.size,
                chunk_coverage=chunk.coverage,
                packed=chunk.packed,
                lookahead=config.lookahead,
            ),
        )
        self.max_prompt_tokens = config.max_prompt_tokens
        if self.max_prompt_tokens is None:
            self.max_prompt_tokens = default_max_prompt_tokens(first.model, config.max_new_tokens, chunk.size)
        scorer_device = config.scorer_device if config.scorer_device is not None else first.device
        self.terminal = TerminalReward(
            config.reward_model,
            config.cost_model,
            alpha_r=config.alpha_r,
            alpha_c=config.alpha_c,
            device=scorer_device,
        )
        self.rngs: list[np.random.Generator] = [seeding.np_random(None)[0] for _ in range(num_rows)]
        self.shaping = config.reward_shaping == "potential"
        #: Phi(s) of each row's current state under potential shaping (0 otherwise).
        self.potential = np.zeros(num_rows)
        # the prompt set is fixed: each prompt is tokenised once
        self.prompt_encoder = PromptEncoder(self.prompt_format, config.prompt_overflow, cache=True)

    # ----------------------------------------------------------------------------------- episodes

    def seed_rows(self, rows: Sequence[int], seeds: Sequence[int | None]) -> None:
        for row, seed in zip(rows, seeds):
            if seed is not None:
                self.rngs[row] = seeding.np_random(seed)[0]

    def start_rows(self, rows: Sequence[int], options: dict[str, Any] | None = None) -> list[int]:
        """Start new episodes on ``rows``; return how many decision-free episodes each skipped.

        An episode whose response is forced all the way (every candidate set a single token) gives
        the agent nothing to decide; it is dropped and a new prompt drawn.
        """
        options = options or {}
        _check_options(options)
        skipped = dict.fromkeys(rows, 0)
        todo = list(rows)
        while todo:
            texts = [self._choose_prompt(row, options) for row in todo]
            encoded = [self.prompt_encoder.encode(text, self.max_prompt_tokens) for text in texts]
            self.decoder.start(todo, texts, [ids for ids, _ in encoded])
            for row, (_, truncated) in zip(todo, encoded):
                self.decoder.rows[row].prompt_truncated = truncated
            again = [row for row in todo if self.decoder.rows[row].phase is Phase.DONE]
            for row in again:
                skipped[row] += 1
                if skipped[row] >= MAX_DECISION_FREE_EPISODES or "prompt" in options:
                    raise RuntimeError(
                        f"{skipped[row]} episode(s) in a row ended without a single decision: every candidate "
                        "set had one token. Raise top_k/top_p/temperature or use other prompts."
                    )
            todo = again
        if self.shaping:
            self.potential[list(rows)] = self._potentials(rows, when="at the first decision")
        return [skipped[row] for row in rows]

    def decide(self, rows: Sequence[int], actions: np.ndarray) -> Decisions:
        """Apply the actions to ``rows``; return what each decision earned and which rows ended."""
        lengths = [len(self.decoder.rows[r].response) for r in rows]
        logp = self.decoder.decide(rows, actions)
        done = np.array([self.decoder.rows[r].phase is Phase.DONE for r in rows], dtype=bool)
        shaping = np.zeros(len(rows))
        if self.shaping:
            # F = gamma_s * Phi(s') - Phi(s), with Phi(s') = 0 when s' is terminal (the terminal reward
            # pays the full score there) and unchanged when the decision committed no token (a reject).
            before = self.potential[list(rows)]
            after = np.where(done, 0.0, before)
            grown = [i for i, r in enumerate(rows) if not done[i] and len(self.decoder.rows[r].response) != lengths[i]]
            if grown:
                after[grown] = self._potentials([rows[i] for i in grown], when="after a committed token")
            shaping = self.config.shaping_gamma * after - before
            self.potential[list(rows)] = after
        return Decisions(logp, self.config.kl_coef * logp, shaping, done)

    def _potentials(self, rows: Sequence[int], when: str) -> np.ndarray:
        """``Phi = alpha_r R(x, y_<=t) - alpha_c C(x, y_<=t)`` of each row's committed prefix, in one batch."""
        states = [self.decoder.rows[r] for r in rows]
        prompts = [st.prompt for st in states]
        prefixes = [self.decode(st.response) for st in states]
        try:
            return np.asarray(self.terminal(prompts, prefixes).reward, dtype=np.float64)
        except Exception as exc:
            empty = " (some were empty)" if any(not p for p in prefixes) else ""
            raise RuntimeError(
                f"reward_shaping='potential' scores partial answers {when}{empty}, and the scorers "
                f"{self.terminal!r} failed on them: {exc}. Make the reward and cost scorers accept empty and "
                "partial answers, or set reward_shaping='none'."
            ) from exc

    def finish(self, rows: Sequence[int]) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Score the ended episodes of ``rows`` in one batch; return terminal rewards and episode infos."""
        if not rows:
            return np.zeros(0), []
        states = [self.decoder.rows[r] for r in rows]
        prompts = [st.prompt for st in states]
        responses = [self.decode(st.response) for st in states]
        scores = self.terminal(prompts, responses)
        infos = []
        for i, st in enumerate(states):
            infos.append(
                {
                    "prompt": st.prompt,
                    "response": responses[i],
                    "response_ids": list(st.response),
                    "reward_score": float(scores.reward_score[i]),
                    "cost_score": float(scores.cost_score[i]),
                    "terminal_reward": float(scores.reward[i]),
                    "num_tokens": len(st.response),
                    "num_decisions": st.num_decisions,
                    "finish_reason": st.finish_reason,
                    "ref_logprob": st.ref_logprob,
                    "prompt_truncated": st.prompt_truncated,
                }
            )
        return scores.reward, infos

    # ----------------------------------------------------------------------------------- views

    def observations(self, rows: Sequence[int]) -> np.ndarray:
        return observe(self.decoder, rows, self.layout, self.config.np_obs_dtype)

    def candidate_info(self, row: int) -> dict[str, Any]:
        """What the current observation shows: the candidate under decision and its context."""
        st = self.decoder.rows[row]
        k = st.index
        info: dict[str, Any] = {
            "candidate_rank": k,
            "token_id": st.candidate,
            "ref_prob": float(st.cands.probs[k]),
            "ref_accept_prob": float(np.exp(st.cands.log_accept[k])),
            "set_size": len(st.cands),
            "position": len(st.response),
        }
        if self.shaping:
            info["potential"] = float(self.potential[row])
        if self.config.info_response:
            info["response"] = self.decode(st.response)
        return info

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def render_text(self, row: int) -> str:
        st = self.decoder.rows[row]
        return f"USER: {st.prompt}\nASSISTANT: {self.decode(st.response)}"

    def close(self) -> None:
        self.decoder.close()

    # ----------------------------------------------------------------------------------- prompts

    def _choose_prompt(self, row: int, options: dict[str, Any]) -> str:
        if "prompt" in options:
            prompt = options["prompt"]
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(f"reset options: 'prompt' must be a non-empty string, got {prompt!r}.")
            return prompt
        if "prompt_index" in options:
            index = options["prompt_index"]
            if not isinstance(index, (int, np.integer)) or not 0 <= index < len(self.prompts):
                raise ValueError(f"reset options: 'prompt_index' must be in [0, {len(self.prompts)}), got {index!r}.")
            return self.prompts[int(index)]
        return self.prompts[int(self.rngs[row].integers(len(self.prompts)))]


def _check_options(options: dict[str, Any]) -> None:
    """A misspelt option would silently give a random prompt; refuse it, and a contradictory pair."""
    for key in options:
        if key not in RESET_OPTIONS:
            hint = did_you_mean(key, RESET_OPTIONS)
            raise ValueError(f"reset: unknown reset option {key!r}.{hint} Options: {', '.join(RESET_OPTIONS)}.")
    if "prompt" in options and "prompt_index" in options:
        raise ValueError("reset options: give either 'prompt' or 'prompt_index', not both.")
