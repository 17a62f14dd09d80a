"""The machinery behind both environments: prompts in, decisions through the decoder, rewards out.

:class:`MARACore` owns a :class:`~mara_env.session.DecodingSession` (the LLM replicas, prompt format and
decoding rules), the prompt set, the reward/cost scorers and an
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
from mara_env.contract import AgentContract
from mara_env.hints import did_you_mean
from mara_env.observation import ObservationLayout, observe
from mara_env.prefix_scoring import ShapingPotential
from mara_env.prompts import PromptSet
from mara_env.row_state import Phase, RowState
from mara_env.scoring import TerminalReward
from mara_env.session import DecodingSession

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
    :param ended: the final state of each ended episode, by row (restarted rows hold a new episode).
    :param skipped: restarted rows' episodes that ended without a single decision, by row.
    """

    ref_logp: np.ndarray
    kl_reward: np.ndarray
    shaping_reward: np.ndarray
    done: np.ndarray
    ended: dict[int, RowState]
    skipped: dict[int, int]

    @property
    def reward(self) -> np.ndarray:
        """The decision rewards before any terminal reward: KL term plus shaping term."""
        return self.kl_reward + self.shaping_reward


class MARACore:
    """Prompts, the decoding session, decoder and scorers for ``num_rows`` concurrent episodes.

    :param num_rows: number of concurrent episodes.
    :param config: the environment's settings.
    """

    def __init__(self, num_rows: int, config: MARAConfig) -> None:
        self.config = config
        self.num_rows = num_rows
        self.session = DecodingSession(
            config.llm,
            devices=config.devices,
            dtype=config.dtype,
            trust_remote_code=config.trust_remote_code,
            system_prompt=config.system_prompt,
            candidates=config.candidates,
            chunk_size=config.chunk_size,
            max_prompt_tokens=config.max_prompt_tokens,
            prompt_overflow=config.prompt_overflow,
            cache_prompts=True,  # the prompt set is fixed: each prompt is tokenised once
            capture=config.capture,
        )
        self.replicas = self.session.replicas
        self.hidden_size = self.session.hidden_size
        self.layout = ObservationLayout(config.observation, self.hidden_size)
        #: What agents may know about the environment (both environments publish it as ``agent_contract``)
        self.contract = AgentContract(self.layout, config.kl_coef, config.reward_shaping, config.shaping_gamma)
        self.tokenizer = self.session.tokenizer
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
        self.decoder = self.session.decoder(
            num_rows,
            config.max_new_tokens,
            environment=True,
            lookahead=config.lookahead,
            draft_tokens=config.draft_tokens,
        )
        self.max_prompt_tokens = self.session.prompt_limit(config.max_new_tokens)
        scorer_devices = config.scorer_devices if config.scorer_devices is not None else self.session.device
        self.terminal = TerminalReward(
            config.reward_model,
            config.cost_model,
            alpha_r=config.alpha_r,
            alpha_c=config.alpha_c,
            cost_scale=config.cost_scale,
            device=scorer_devices,
            dtype=config.scorer_dtype,
        )
        self.rngs: list[np.random.Generator] = [seeding.np_random(None)[0] for _ in range(num_rows)]
        # With several rows, each row's next prompt is drawn (from its own generator, so the prompts drawn
        # are the same) when its episode starts, and prefilled ahead while a prefill forward runs anyway.
        self._prefill_ahead = config.lookahead and num_rows > 1
        self._next_prompt: dict[int, str] = {}
        self.shaping = config.reward_shaping == "potential"
        self.shaping_potential = (
            ShapingPotential(self.terminal, num_rows, config.shaping_interval) if self.shaping else None
        )
        #: Phi(s) of each row's current state under potential shaping (0 otherwise).
        self.potential = np.zeros(num_rows)

    # ----------------------------------------------------------------------------------- episodes

    def seed_rows(self, rows: Sequence[int], seeds: Sequence[int | None]) -> None:
        for row, seed in zip(rows, seeds):
            if seed is not None:
                self.rngs[row] = seeding.np_random(seed)[0]
                if self._next_prompt.pop(row, None) is not None:  # drawn from the old generator
                    self.decoder.prepare([row], [None])

    def start_rows(self, rows: Sequence[int], options: dict[str, Any] | None = None) -> list[int]:
        """Start new episodes on ``rows``; return how many decision-free episodes each skipped.

        An episode whose response is forced all the way (every candidate set a single token) gives
        the agent nothing to decide; it is dropped and a new prompt drawn.
        """
        options = options or {}
        check_reset_options(options)
        self._begin(rows, options)
        _, skipped = self._settle(rows, {}, restart=True, options=options)
        if self.shaping:
            self.potential[list(rows)] = self._potentials(rows, when="at the first decision")
        return [skipped[row] for row in rows]

    def decide(self, rows: Sequence[int], actions: np.ndarray, restart: bool = False) -> Decisions:
        """Apply the actions to ``rows``; return what each decision earned and which rows ended.

        :param restart: start a new episode on each row whose episode ends (vector environments'
            autoreset), within the same rounds of forwards as the other rows' next candidates.
        """
        states = {r: self.decoder.rows[r] for r in rows}
        lengths = [len(states[r].response) for r in rows]
        logp = self.decoder.decide(rows, actions)
        ended, skipped = self._settle(rows, states, restart=restart, options={})
        done = np.array([r in ended for r in rows], dtype=bool)
        shaping = np.zeros(len(rows))
        if self.shaping:
            # F = gamma_s * Phi(s') - Phi(s), with Phi(s') = 0 when s' is terminal (the terminal reward
            # pays the full score there) and unchanged when the decision committed no token (a reject).
            # With shaping_interval k, Phi changes only when the scored length (t - t % k) does.
            scored = self.shaping_potential.scored_length
            before = self.potential[list(rows)]
            after = np.where(done, 0.0, before)
            grown = [
                i for i, r in enumerate(rows) if not done[i] and scored(len(states[r].response)) != scored(lengths[i])
            ]
            fresh = list(ended) if restart else []  # restarted rows: Phi of their new episode's first state
            # one scoring call for both, so each scorer runs one batched forward per step
            phi = np.zeros(0)
            if grown or fresh:
                when = "after a committed token or at a new episode's first decision"
                phi = self._potentials([rows[i] for i in grown] + fresh, when=when)
                after[grown] = phi[: len(grown)]
            shaping = self.config.shaping_gamma * after - before
            self.potential[list(rows)] = after
            self.potential[fresh] = phi[len(grown) :]
        return Decisions(logp, self.config.kl_coef * logp, shaping, done, ended, skipped)

    def _begin(self, rows: Sequence[int], options: dict[str, Any]) -> None:
        """Choose and queue a prompt on each of ``rows``; the next round prefills them."""
        texts = [self._choose_prompt(row, options) for row in rows]
        encoded = [self.session.encode(text, self.config.max_new_tokens) for text in texts]
        self.decoder.start(rows, texts, [ids for ids, _ in encoded])
        for row, (_, truncated) in zip(rows, encoded):
            self.decoder.rows[row].prompt_truncated = truncated
        if self._prefill_ahead:
            drawn = [row for row in rows if row not in self._next_prompt]
            for row in drawn:
                self._next_prompt[row] = self._draw_prompt(row)
            ids = [self.session.encode(self._next_prompt[row], self.config.max_new_tokens)[0] for row in drawn]
            self.decoder.prepare(drawn, ids)

    def _settle(
        self, rows: Sequence[int], decided: dict[int, RowState], restart: bool, options: dict[str, Any]
    ) -> tuple[dict[int, RowState], dict[int, int]]:
        """Run rounds until every row of ``rows`` is READY (or DONE without ``restart``).

        An episode of ``decided`` (the states the decisions were taken in) that ends is recorded in the
        first dict; any other that ends had no decision (skipped). With ``restart``, a row whose episode
        ended gets a new prompt before the next round, so its prefill and first candidates share the
        rounds the other rows run anyway.
        """
        ended: dict[int, RowState] = {}
        skipped = dict.fromkeys(rows, 0)
        while True:
            again = []
            for row in rows:
                st = self.decoder.rows[row]
                if st.phase is not Phase.DONE or ended.get(row) is st:
                    continue
                if decided.get(row) is st:
                    ended[row] = st
                else:
                    skipped[row] += 1
                    if skipped[row] >= MAX_DECISION_FREE_EPISODES or "prompt" in options:
                        raise RuntimeError(
                            f"{skipped[row]} episode(s) in a row ended without a single decision: every "
                            "candidate set had one token. Raise top_k/top_p/temperature or use other prompts."
                        )
                if restart or decided.get(row) is not st:
                    again.append(row)
            if again:
                self._begin(again, options)
            if not self.decoder.waiting(rows):
                return ended, skipped
            self.decoder.run_round()

    def _potentials(self, rows: Sequence[int], when: str) -> np.ndarray:
        """``Phi = alpha_r R(x, y_<=t) - alpha_c g(C(x, y_<=t))`` of each row's committed prefix, in one batch."""
        states = [self.decoder.rows[r] for r in rows]
        prompts = [st.prompt for st in states]
        scored = self.shaping_potential.scored_length
        prefixes = [self.decode(st.response[: scored(len(st.response))]) for st in states]
        try:
            return self.shaping_potential(rows, prompts, prefixes)
        except Exception as exc:
            empty = " (some were empty)" if any(not p for p in prefixes) else ""
            raise RuntimeError(
                f"reward_shaping='potential' scores partial answers {when}{empty}, and the scorers "
                f"{self.terminal!r} failed on them: {exc}. Make the reward and cost scorers accept empty and "
                "partial answers, or set reward_shaping='none'."
            ) from exc

    def finish(self, states: Sequence[RowState]) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Score ended episodes (their final states) in one batch; return terminal rewards and episode infos."""
        if not states:
            return np.zeros(0), []
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
        return self.session.decode(ids)

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
        if row in self._next_prompt:
            return self._next_prompt.pop(row)
        return self._draw_prompt(row)

    def _draw_prompt(self, row: int) -> str:
        return self.prompts[int(self.rngs[row].integers(len(self.prompts)))]


def check_reset_options(options: dict[str, Any]) -> None:
    """Refuse reset options that cannot work, before anything changes.

    A misspelt option would silently give a random prompt; refuse it, and a contradictory pair."""
    for key in options:
        if key not in RESET_OPTIONS:
            hint = did_you_mean(key, RESET_OPTIONS)
            raise ValueError(f"reset: unknown reset option {key!r}.{hint} Options: {', '.join(RESET_OPTIONS)}.")
    if "prompt" in options and "prompt_index" in options:
        raise ValueError("reset options: give either 'prompt' or 'prompt_index', not both.")
