"""Learning from ARGS (agents.teacher) on the tiny model: per-row prompts and partial resets of the vector env,
ARGS's answers replayed exactly through the environment into the replay buffer, the fading behaviour-cloning
term, and ``mara train --teacher args`` end to end."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import TINY_PROMPTS, WORDS, save_tiny_files
from stable_baselines3.common.logger import configure

import mara_env  # noqa: F401  (registers the ids)
from agents.cli import main
from agents.loading import load_algorithm
from agents.registry import make_algorithm
from agents.teacher import (
    BehaviourCloning,
    Demonstrations,
    args_answers,
    load_demonstrations,
    pretrain_steps,
    replay_answers,
    run_teacher,
)
from agents.training.environment import make_env
from agents.training.run_config import RunConfig

#: A distinct value per word: ARGS then often prefers a token other than the LLM's most likely one.
WORD_VALUE = dict(zip(WORDS, np.random.default_rng(0).permutation(len(WORDS)) / len(WORDS)))


def last_word_value(prompts: list[str], responses: list[str]) -> list[float]:
    return [WORD_VALUE.get(r.split()[-1], 0.0) if r.split() else 0.0 for r in responses]


@pytest.fixture
def v1_kwargs(tiny_llm):
    return dict(
        llm=tiny_llm,
        prompts=TINY_PROMPTS,
        prompt_split="all",
        reward_model=last_word_value,
        cost_model=None,
        max_new_tokens=10,
        top_k=8,
        top_p=0.95,
        devices=["cpu"],
        observation="hidden+ref",
        reward_shaping="potential",
    )


def _finish(envs, obs, info, rows):
    """Accept every candidate until each of ``rows`` ends once; their final infos by row."""
    ended = {}
    while len(ended) < len(rows):
        _obs, _, done, _, info = envs.step(np.ones(envs.num_envs, dtype=np.int64))
        for row in np.flatnonzero(done):
            if row in rows and row not in ended:
                ended[row] = {key: info["final_info"][key][row] for key in ("prompt", "response_ids")}
    return ended


def test_vector_env_takes_one_prompt_per_row_and_partial_resets(v1_kwargs):
    envs = gym.make_vec("MARA-v1", num_envs=3, **v1_kwargs)
    prompts = [TINY_PROMPTS[5], None, TINY_PROMPTS[2]]
    obs, info = envs.reset(seed=0, options={"prompts": prompts})
    ended = _finish(envs, obs, info, {0, 2})
    assert ended[0]["prompt"] == TINY_PROMPTS[5] and ended[2]["prompt"] == TINY_PROMPTS[2]

    # A partial reset restarts only the masked rows; the others go on where they were
    obs, info = envs.reset(seed=1)
    before = obs.copy()
    position_1 = info["position"][1]
    obs, info = envs.reset(seed=[7, 8, 9], options={"reset_mask": np.array([True, False, False]), "prompts": prompts})
    assert np.array_equal(obs[1:], before[1:])
    assert info["_position"].tolist() == [True, False, False]  # infos of the reset row only
    ended = _finish(envs, obs, info, {0, 1})
    assert ended[0]["prompt"] == TINY_PROMPTS[5]
    assert position_1 == 0 or ended[1]["prompt"] in TINY_PROMPTS

    with pytest.raises(ValueError, match=r"'prompts' must be a list of 3 prompts"):
        envs.reset(options={"prompts": ["a", "b"]})
    with pytest.raises(ValueError, match=r"cannot be combined with 'prompt'"):
        envs.reset(options={"prompts": prompts, "prompt": "x"})
    with pytest.raises(ValueError, match=r"'reset_mask' must be a boolean array of shape \(3,\)"):
        envs.reset(options={"reset_mask": np.array([1, 0, 0])})
    # a misspelt option in a partial reset is refused before anything changes: the episodes go on
    obs, _ = envs.reset(seed=2)
    with pytest.raises(ValueError, match=r"unknown reset option 'promt'"):
        envs.reset(options={"reset_mask": np.array([False, True, False]), "promt": "x"})
    envs.step(np.zeros(3, dtype=np.int64))
    fresh = gym.make_vec("MARA-v1", num_envs=2, **v1_kwargs)
    with pytest.raises(ValueError, match=r"needs a full reset\(\) first"):
        fresh.reset(options={"reset_mask": np.array([True, False])})


def test_args_answers_are_replayed_exactly_into_the_replay_buffer(v1_kwargs):
    venv = make_env("MARA-v1", 3, **v1_kwargs)
    model = make_algorithm("sac-discrete", venv, seed=0, learning_starts=16, batch_size=16, buffer_size=2000)
    report, demos = run_teacher(model, "MARA-v1", v1_kwargs, prompts=8, weight=5.0, k=4, seed=0)

    # Every answer is followed to its end: the environment's episodes are ARGS's answers, with their rewards
    assert report.prompts == 8 and report.episodes_followed == 8 and report.episodes_left == 0
    assert report.replay_reward == pytest.approx(report.args_reward)
    assert report.scorer_calls > 0 and report.args_llm_tokens > 0
    # Every replayed decision is in the buffer and counted as the run's decisions
    assert model.num_timesteps == report.decisions == model.replay_buffer.size() * model.n_envs
    assert 0 < report.demonstrated == len(demos) <= report.decisions
    # ARGS prefers other tokens than the LLM's first candidate here: the teacher rejects, then accepts
    assert 0 < demos.actions.mean() < 1
    assert pretrain_steps(model, 640) == 640 * model.gradient_steps // (model.train_freq.frequency * 3)


def test_an_answer_the_environment_cannot_follow_is_left_and_the_row_moves_on(v1_kwargs, tiny_llm):
    _, tokenizer = tiny_llm
    envs = gym.make_vec("MARA-v1", num_envs=2, **{**v1_kwargs, "info_response": True})
    answers, _ = args_answers(TINY_PROMPTS[:3], v1_kwargs, weight=5.0, k=4)
    # An answer made of the LLM's least likely words cannot be in its top-k / top-p sets
    unlikely = tokenizer.convert_tokens_to_ids(["weapon", "weapon", "weapon"])
    prompts = [TINY_PROMPTS[0], TINY_PROMPTS[7], TINY_PROMPTS[1], TINY_PROMPTS[2]]
    seen = []

    def add(obs, next_obs, actions, rewards, dones):
        seen.append(len(actions))

    _demos, counts = replay_answers(
        envs,
        prompts,
        [answers[0].token_ids, unlikely, answers[1].token_ids, answers[2].token_ids],
        tokenizer=tokenizer,
        seed=0,
        add=add,
    )
    assert counts["episodes_left"] == 1 and counts["episodes_followed"] == 3
    assert counts["decisions"] == sum(seen) == 2 * len(seen)


def test_behaviour_cloning_fades_out_and_moves_the_actor_to_the_teacher(v1_kwargs, tmp_path):
    venv = make_env("MARA-v1", 2, **v1_kwargs)
    model = make_algorithm("sac-discrete", venv, seed=0, learning_starts=8, batch_size=16, buffer_size=500)
    obs = venv.reset()
    demos = Demonstrations(np.repeat(obs, 16, axis=0), np.zeros(32, dtype=np.int64))  # always reject
    bc = BehaviourCloning(demos, coef=2.0, decisions=100, batch_size=8, seed=0)
    assert bc.weight(0) == 2.0 and bc.weight(50) == 1.0 and bc.weight(100) == 0.0
    model.num_timesteps = 100
    assert bc(model) is None  # faded out: no term

    # Filled buffer, then only the cloning term pulls the anchored actor: pi(reject | s) goes up
    for _ in range(8):
        actions = np.ones((2, 1), dtype=np.int64)
        next_obs, _rewards, dones, infos = venv.step(actions.ravel())
        model.replay_buffer.add(obs, next_obs, actions, np.zeros(2), dones, infos)
        obs = next_obs
    model.set_logger(configure(str(tmp_path), []))
    states = torch.as_tensor(demos.observations)
    before = model.actor.action_probs(states)[0][:, 0].mean().item()
    model.num_timesteps = 0
    model.auxiliary_actor_loss = BehaviourCloning(demos, coef=50.0, decisions=10_000, batch_size=8, seed=0)
    model.train(gradient_steps=20, batch_size=16)
    after = model.actor.action_probs(states)[0][:, 0].mean().item()
    assert after > before + 0.05

    # The term belongs to the run, not the model: a saved model holds none
    model.save(tmp_path / "m.zip")
    assert load_algorithm(tmp_path / "m.zip").auxiliary_actor_loss is None


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    return save_tiny_files(tmp_path_factory.mktemp("tiny"))


def test_mara_train_with_the_args_teacher(tiny_files, tmp_path, capsys):
    llm, prompts = tiny_files
    env = [
        *("--llm", str(llm), "--prompts", str(prompts), "--prompt-split", "all", "--reward-model", "length"),
        *("--cost-model", "none", "--max-new-tokens", "8", "--top-k", "8", "--devices", "cpu", "--num-envs", "4"),
        "--no-progress",
    ]
    sac = ["--learning-starts", "32", "--batch-size", "16", "--buffer-size", "2000"]
    out = tmp_path / "run"
    teacher = ["--teacher", "args", "--teacher-weight", "5", "--teacher-k", "4", "--teacher-prompts", "4"]
    run = ["--total-decisions", "256", "--checkpoint-every", "128"]
    assert main(["train", "--out", str(out), *env, *sac, *run, *teacher, "--teacher-bc", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["decisions"] >= 256
    cost = summary["teacher"]
    assert cost["prompts"] == 4 and cost["scorer_calls"] > 0 and 0 < cost["decisions"] < 256
    assert cost["pretrain_steps"] == pretrain_steps(load_algorithm(out / "model.zip"), cost["decisions"]) > 0
    assert len(load_demonstrations(out / "teacher-demonstrations.npz")) == cost["demonstrated"]
    config = RunConfig.from_file(out / "config.yaml")
    assert (config.train.teacher, config.train.teacher_k, config.train.teacher_bc) == ("args", 4, 1.0)

    # Settings it cannot use are one-line errors that say what to do
    for extra, message in (
        (["--teacher", "argz"], "'argz' is not a teacher. Did you mean 'args'?"),
        (["--teacher", "args", "--teacher-k", "1"], "(--teacher-k) must be an integer >= 2"),
        (["--teacher", "args", "--algo", "ppo"], "learns on-policy without one"),
        (["--teacher", "args", "--algo", "dqn", "--teacher-bc", "1"], "--algo dqn has no actor"),
    ):
        assert main(["train", "--out", str(tmp_path / "x"), *env, *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert main(["train", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "--teacher-weight FLOAT" in help_text and "--teacher TEXT|none" in help_text
    assert "the ARGS teacher's reward weight w (>= 0) (default: 10.0)" in help_text
