"""Learning from a reward-guided decoder: ARGS's answers as demonstrations in MARA's own action space.

ARGS (:mod:`agents.reward_guided`) reaches a high reward by scoring ``k`` candidate prefixes per answer
token with the reward and cost models; MARA's agent must do without any scorer at inference. This
module amortises ARGS into the agent's training (``mara train --teacher args``):

1. **Demonstrations.** ARGS answers ``teacher_prompts`` training prompts (drawn with the run's seed)
   with the environment's LLM, prompt format, reward and cost models: ``answer = a_1 .. a_T``.
2. **Replay through the environment.** Each answer is replayed in a vector environment of the run's
   own settings, one prompt per row: at a decision on candidate ``c`` at position ``t`` the teacher
   accepts iff ``c = a_{t+1}``, so it rejects every candidate above ARGS's token and accepts that one.
   The transitions carry the environment's own rewards (KL term, shaping, terminal score), so they are
   valid experience for an off-policy learner: they go into the replay buffer. Where the environment
   leaves ARGS's answer (ARGS's token was outside the top-k / top-p set, or a forced token differs),
   and on rows whose demonstration has ended, the teacher acts as the reference does (accepts with
   ``p_ref(accept | k)``), the behaviour of SAC's own warm-up: still valid experience, not demonstrations.
3. **Credit in the budget.** The replayed decisions count as training decisions (``num_timesteps``),
   and the learner takes the gradient steps its schedule gives them (``gradient_steps`` per
   ``train_freq * num_envs`` decisions) on them before its own first step, so a run with a teacher
   has the same decisions and updates as one without.
4. **Behaviour cloning (optional, ``teacher_bc > 0``).** :class:`BehaviourCloning` adds
   ``w(t) * E_(s, a) in D [-log pi(a | s)]`` over the demonstrated decisions ``D`` to the actor's loss,
   with ``w(t) = teacher_bc * max(0, 1 - t / teacher_bc_decisions)`` fading to 0, after which SAC's own
   objective (reward minus ``kl_coef * KL``) is all that moves the policy.

The teacher's cost is reported in the run's ``summary.json`` (``teacher``): scorer calls (ARGS's, ``k``
per answer token), LLM tokens, decisions replayed, how many followed ARGS, wall and CPU seconds.
Nothing of it is needed at inference: the trained agent decodes with 0 scorer calls.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from torch.nn import functional as F
from tqdm.auto import tqdm

__all__ = [
    "TEACHERS",
    "BehaviourCloning",
    "Demonstrations",
    "TeacherReport",
    "args_answers",
    "load_demonstrations",
    "pretrain_steps",
    "replay_answers",
    "run_teacher",
    "save_demonstrations",
]

#: Teachers ``mara train --teacher`` knows.
TEACHERS = ("args",)


@dataclass
class TeacherReport:
    """What the teacher did and cost (``summary.json``'s ``teacher``).

    :param teacher: ``"args"``.
    :param weight: ARGS's reward weight ``w``.
    :param k: ARGS's candidates per position.
    :param prompts: training prompts ARGS answered.
    :param scorer_calls: (prompt, partial answer) pairs ARGS scored: the teacher's scorer cost.
    :param args_llm_tokens: LLM tokens ARGS forwarded.
    :param args_reward: mean terminal reward ``alpha_r R - alpha_c C`` of ARGS's answers.
    :param decisions: decisions replayed through the environment (all rows, all steps).
    :param demonstrated: of those, decisions taken on ARGS's answer (the demonstrations).
    :param episodes_followed: replayed episodes that stayed on ARGS's answer to its end.
    :param episodes_left: replayed episodes that left it (ARGS's token outside the environment's candidate set).
    :param replay_reward: mean terminal reward of the replayed episodes that stayed on ARGS's answer.
    :param pretrain_steps: gradient steps taken on the replayed transitions before training.
    :param wall_seconds: wall time of the teacher phase (ARGS, replay, pre-training).
    :param cpu_seconds: CPU time of the process over the teacher phase.
    """

    teacher: str
    weight: float
    k: int
    prompts: int = 0
    scorer_calls: int = 0
    args_llm_tokens: int = 0
    args_reward: float = math.nan
    decisions: int = 0
    demonstrated: int = 0
    episodes_followed: int = 0
    episodes_left: int = 0
    replay_reward: float = math.nan
    pretrain_steps: int = 0
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


@dataclass
class Demonstrations:
    """The demonstrated decisions: the observation each was taken on and the teacher's action (0 or 1)."""

    observations: np.ndarray
    actions: np.ndarray

    def __len__(self) -> int:
        return int(self.actions.shape[0])


def save_demonstrations(path: str | Path, demos: Demonstrations) -> None:
    """Write ``demos`` as ``.npz`` (the run keeps them so that ``--resume`` can go on cloning)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        np.savez(file, observations=demos.observations, actions=demos.actions)


def load_demonstrations(path: str | Path) -> Demonstrations:
    """Read :func:`save_demonstrations`'s file (plain arrays: no pickle)."""
    with np.load(path, allow_pickle=False) as data:
        return Demonstrations(data["observations"], data["actions"])


# ------------------------------------------------------------------------------------------ ARGS


def args_answers(
    prompts: Sequence[str],
    env_kwargs: Mapping[str, Any],
    *,
    weight: float,
    k: int,
    replicas: Any = None,
    batch_size: int = 16,
    progress: bool = False,
) -> tuple[list[Any], Any]:
    """ARGS's answers to ``prompts`` under the environment's LLM, prompt format, reward and cost models.

    :param env_kwargs: the environment's settings (:class:`mara_env.MARAConfig` fields).
    :param replicas: loaded LLM replicas to use (default: load ``env_kwargs["llm"]``).
    :return: the answers (:class:`~agents.generation.Generation`) and ARGS's :class:`GenerationStats`.
    """
    from agents.generation import MARAGenerator
    from agents.reward_guided import ARGSGenerator
    from mara_env import TerminalReward

    generator = MARAGenerator(
        env_kwargs.get("llm") if replicas is None else replicas,
        None,
        devices=None if replicas is not None else env_kwargs.get("devices"),
        dtype=env_kwargs.get("dtype", "auto"),
        trust_remote_code=env_kwargs.get("trust_remote_code", False),
        system_prompt=env_kwargs.get("system_prompt"),
        top_k=env_kwargs.get("top_k", 50),
        top_p=env_kwargs.get("top_p", 0.95),
        temperature=env_kwargs.get("temperature", 1.0),
        max_prompt_tokens=env_kwargs.get("max_prompt_tokens"),
        prompt_overflow=env_kwargs.get("prompt_overflow", "truncate"),
        batch_size=batch_size,
    )
    scorer_devices = env_kwargs.get("scorer_devices")
    terminal = TerminalReward(
        env_kwargs.get("reward_model", "sentiment"),
        env_kwargs.get("cost_model", "toxicity"),
        alpha_r=env_kwargs.get("alpha_r", 1.0),
        alpha_c=env_kwargs.get("alpha_c", 1.0),
        cost_scale=env_kwargs.get("cost_scale", "linear"),
        device=scorer_devices if scorer_devices is not None else generator.session.replicas[0].device,
        dtype=env_kwargs.get("scorer_dtype", "auto"),
    )
    args = ARGSGenerator(generator, terminal, weight=weight, k=k)
    answers = args.generate(list(prompts), env_kwargs.get("max_new_tokens", 512), progress=progress)
    stats = args.last_stats
    stats.extra["reward"] = float(np.mean(terminal(list(prompts), [a.text for a in answers]).reward))
    return answers, stats


# ------------------------------------------------------------------------------------------ replay


#: Per-row info entries the replay reads.
_INFO_KEYS = ("position", "token_id", "response", "ref_accept_prob")


def _per_row(info: Mapping[str, Any], rows: Sequence[int], into: dict[str, list[Any]]) -> None:
    """Copy ``rows``' entries of a vector env's info dict into ``into`` (key -> one value per row)."""
    for key in _INFO_KEYS:
        for row in rows:
            into[key][row] = info[key][row]


def replay_answers(
    envs: Any,
    prompts: Sequence[str],
    answers: Sequence[Sequence[int]],
    *,
    tokenizer: Any,
    seed: int | None,
    add: Any,
    progress: bool = False,
) -> tuple[Demonstrations, dict[str, Any]]:
    """Replay ``answers`` to ``prompts`` through ``envs``, each row taking the next answer as soon as it is free.

    A row is free when its episode ends or leaves the answer (ARGS's token was not in the environment's
    candidate set, or a forced token differs); it then starts the next prompt with a partial reset
    (``options={"reset_mask": ..., "prompts": ...}``). Rows with no answer left act as the reference does
    until the last answer ends.

    :param envs: a MARA vector environment with ``info_response=True`` (its infos carry the text so far,
        which tells whether the row is still on the answer after forced tokens).
    :param answers: each prompt's demonstrated answer (token ids, an ending EOS included).
    :param tokenizer: the LLM's tokenizer (decodes the answer's prefixes as the environment decodes its text).
    :param seed: seeds the resets (``seed + answer index``) and the reference's draws.
    :param add: called after every step with ``(obs, next_obs, actions, rewards, dones)``, arrays over the rows
        (``next_obs`` of a row whose episode ended is its final observation), e.g. a replay buffer's ``add``.
    :return: the demonstrated decisions, and counts (``decisions``, ``demonstrated``, ``episodes_followed``,
        ``episodes_left``, ``replay_reward``: mean terminal reward of the episodes that followed the answer).
    """
    n = envs.num_envs
    rng = np.random.default_rng(seed)
    queue = list(range(len(prompts)))
    tokens: list[list[int] | None] = [None] * n  # the answer each row replays; None: the reference acts
    texts: list[list[str]] = [[] for _ in range(n)]  # the answer's decoded prefixes, by length
    state: dict[str, list[Any]] = {key: [None] * n for key in _INFO_KEYS}
    demo_obs: list[np.ndarray] = []
    demo_actions: list[np.ndarray] = []
    counts = {"decisions": 0, "demonstrated": 0, "episodes_followed": 0, "episodes_left": 0}
    followed_rewards: list[float] = []
    bar = tqdm(total=len(prompts), desc="teacher replay", unit="answer", disable=not progress)

    def start(rows: list[int], obs: np.ndarray | None) -> np.ndarray:
        """Give ``rows`` the next answers (a full reset the first time); the observations after it."""
        per_row: list[str | None] = [None] * n
        for row in rows:
            tokens[row] = None
            if queue:
                i = queue.pop(0)
                answer = tokens[row] = list(answers[i])
                texts[row] = [tokenizer.decode(answer[:t], skip_special_tokens=True) for t in range(len(answer))]
                per_row[row] = prompts[i]
        options: dict[str, Any] = {"prompts": per_row}
        if obs is not None:
            options["reset_mask"] = np.isin(np.arange(n), rows)
        base = int(rng.integers(2**31 - n))  # reproducible from seed, distinct per reset
        new_obs, info = envs.reset(seed=[base + row for row in range(n)], options=options)
        _per_row(info, rows, state)
        return new_obs

    def still_on(row: int) -> bool:
        """Whether the row's text so far is its answer's prefix of that length."""
        pos = int(state["position"][row])
        return tokens[row] is not None and pos < len(tokens[row]) and state["response"][row] == texts[row][pos]

    obs = start(list(range(n)), None)
    while any(t is not None for t in tokens):
        # Rows that left their answer take the next one; their transitions so far stay valid experience
        left = [row for row in range(n) if tokens[row] is not None and not still_on(row)]
        if left:
            counts["episodes_left"] += len(left)
            bar.update(len(left))
            obs = start(left, obs)
            continue  # the new answers are checked like the others
        on_answer = np.array([tokens[row] is not None for row in range(n)])
        candidate = np.asarray(state["token_id"])
        target = np.array([tokens[r][int(state["position"][r])] if on_answer[r] else -1 for r in range(n)])
        reference = rng.random(n) < np.asarray(state["ref_accept_prob"], dtype=np.float64)
        # on the answer: reject the candidates above ARGS's token, accept it; elsewhere: the reference's own draw
        actions = np.where(on_answer, candidate == target, reference).astype(np.int64)
        next_obs, rewards, terminated, truncated, info = envs.step(actions)
        dones = terminated | truncated
        final = next_obs.copy()
        for row in np.flatnonzero(dones):
            final[row] = info["final_obs"][row]
        add(obs, final, actions, rewards, dones)
        counts["decisions"] += n
        demonstrated = np.flatnonzero(on_answer)
        counts["demonstrated"] += demonstrated.size
        demo_obs.append(obs[demonstrated].copy())
        demo_actions.append(actions[demonstrated])
        _per_row(info, range(n), state)
        ended = [int(row) for row in np.flatnonzero(dones) if tokens[row] is not None]
        for row in ended:
            # forced tokens after the last decision may still leave the answer: compare the whole answer
            if list(info["final_info"]["response_ids"][row]) == tokens[row]:
                counts["episodes_followed"] += 1
                followed_rewards.append(float(info["final_info"]["terminal_reward"][row]))
            else:
                counts["episodes_left"] += 1
        bar.update(len(ended))
        obs = start(ended, next_obs) if ended else next_obs
    bar.close()
    dim = envs.single_observation_space.shape[0]
    demos = Demonstrations(
        np.concatenate(demo_obs) if demo_obs else np.zeros((0, dim), dtype=np.float32),
        np.concatenate(demo_actions) if demo_actions else np.zeros(0, dtype=np.int64),
    )
    counts["replay_reward"] = float(np.mean(followed_rewards)) if followed_rewards else math.nan
    return demos, counts


def pretrain_steps(model: Any, decisions: int) -> int:
    """The gradient steps ``model``'s schedule gives ``decisions`` collected decisions.

    ``gradient_steps`` per rollout of ``train_freq`` vector steps of ``n_envs`` decisions (SB3 off-policy).
    """
    per_rollout = model.train_freq.frequency * model.n_envs
    steps = model.gradient_steps if model.gradient_steps >= 0 else per_rollout
    return int(decisions * steps // per_rollout)


class BehaviourCloning:
    """The fading behaviour-cloning term of the actor loss (``DiscreteSAC.auxiliary_actor_loss``).

    ``w(t) * mean over a batch (s, a) of D of -log pi(a | s)``, ``w(t) = coef * max(0, 1 - t / decisions)``
    at ``t = model.num_timesteps``; ``None`` (no term) once ``w`` reaches 0.

    :param demos: the demonstrated decisions.
    :param coef: ``w(0)``.
    :param decisions: training decisions over which ``w`` fades to 0.
    :param batch_size: demonstrations per gradient step.
    :param seed: seed of the batch draws.
    """

    def __init__(
        self, demos: Demonstrations, coef: float, decisions: int, batch_size: int = 256, seed: int | None = None
    ) -> None:
        if len(demos) == 0:
            raise ValueError("BehaviourCloning needs at least one demonstrated decision; the teacher replayed none.")
        self.observations = th.as_tensor(demos.observations)
        self.actions = th.as_tensor(demos.actions, dtype=th.long)
        self.coef = float(coef)
        self.decisions = int(decisions)
        self.batch_size = int(batch_size)
        self.generator = th.Generator().manual_seed(0 if seed is None else int(seed))

    def weight(self, num_timesteps: int) -> float:
        """``w(t)``."""
        return self.coef * max(0.0, 1.0 - num_timesteps / self.decisions)

    def __call__(self, model: Any) -> th.Tensor | None:
        weight = self.weight(model.num_timesteps)
        if weight <= 0.0:
            return None
        index = th.randint(len(self.actions), (self.batch_size,), generator=self.generator)
        device = model.device
        _, log_probs = model.actor.action_probs(self.observations[index].to(device))
        # -log pi(a | s) of the teacher's action a
        return weight * F.nll_loss(log_probs, self.actions[index].to(device))


def run_teacher(
    model: Any,
    env_id: str,
    env_kwargs: Mapping[str, Any],
    *,
    prompts: int,
    weight: float,
    k: int,
    seed: int | None,
    progress: bool = False,
) -> tuple[TeacherReport, Demonstrations]:
    """ARGS's demonstrations into ``model``'s replay buffer, counted as ``model.num_timesteps``.

    Draws ``prompts`` prompts of the environment's prompt set with ``seed``, has ARGS answer them, replays
    the answers through a vector environment of ``model.n_envs`` rows with ``env_kwargs`` (the run's own),
    adds every transition to ``model.replay_buffer`` and sets ``model.num_timesteps`` to the decisions
    replayed. The gradient steps on them are :func:`pretrain_steps` (taken by the caller once the model has
    a logger). Returns the report (without those steps) and the demonstrated decisions.
    """
    import gymnasium as gym

    import mara_env  # noqa: F401  (registers the ids)
    from mara_env import held_out_prompts, load_replicas

    start_wall, start_cpu = time.perf_counter(), time.process_time()
    report = TeacherReport("args", float(weight), int(k))
    pool = held_out_prompts(
        env_kwargs.get("prompts", "default"),
        part=env_kwargs.get("prompt_split", "train"),
        test_fraction=env_kwargs.get("test_fraction", 0.2),
        split_seed=env_kwargs.get("split_seed", 0),
        prompt_column=env_kwargs.get("prompt_column"),
        dataset_split=env_kwargs.get("dataset_split", "train"),
    )
    rng = np.random.default_rng(seed)
    chosen = [pool[i] for i in rng.choice(len(pool), size=min(prompts, len(pool)), replace=False)]
    report.prompts = len(chosen)

    replicas = load_replicas(
        env_kwargs.get("llm"),
        devices=env_kwargs.get("devices"),
        dtype=env_kwargs.get("dtype", "auto"),
        trust_remote_code=env_kwargs.get("trust_remote_code", False),
    )
    answers, stats = args_answers(chosen, env_kwargs, weight=weight, k=k, replicas=replicas, progress=progress)
    report.scorer_calls = int(stats.extra["scorer_calls"])
    report.args_llm_tokens = int(stats.llm_tokens)
    report.args_reward = float(stats.extra["reward"])
    report.seconds["args"] = time.perf_counter() - start_wall

    replay_start = time.perf_counter()
    kwargs = {**env_kwargs, "llm": replicas, "devices": None, "info_response": True}
    envs = gym.make_vec(env_id, num_envs=model.n_envs, **kwargs)
    buffer = model.replay_buffer

    def add(obs: np.ndarray, next_obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, dones: np.ndarray) -> None:
        buffer.add(obs, next_obs, actions.reshape(-1, 1), rewards, dones, [{} for _ in range(len(dones))])

    try:
        demos, counts = replay_answers(
            envs,
            chosen,
            [a.token_ids for a in answers],
            tokenizer=replicas[0].tokenizer,
            seed=None if seed is None else seed + 1,
            add=add,
            progress=progress,
        )
    finally:
        envs.close()
    for key, value in counts.items():
        setattr(report, key, value)
    model.num_timesteps = report.decisions
    report.seconds["replay"] = time.perf_counter() - replay_start
    report.wall_seconds = time.perf_counter() - start_wall
    report.cpu_seconds = time.process_time() - start_cpu
    return report, demos
