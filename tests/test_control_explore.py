"""Exploration before the first questions (state entropy), the learned reward's scaling for
PPO and the relabelling of SAC's replay buffer: known answers on tiny inputs, and a
sparse-reward toy task where exploring first makes the first comparisons informative."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from rlhf_hgt.control.explore import PROJECT_TO, StateEntropyReward


def _knn_log(z: np.ndarray, ref: np.ndarray, k: int, own: list[int | None]) -> np.ndarray:
    out = []
    for i, row in enumerate(z):
        d = np.abs(ref - row).sum(axis=1) if ref.shape[1] == 1 else \
            np.linalg.norm(ref - row, axis=1)
        if own[i] is not None:
            d[own[i]] = np.inf
        out.append(np.log1p(np.sort(d)[k - 1]))
    return np.asarray(out)


def test_state_entropy_reward_is_the_log_kth_neighbour_distance_in_standard_units():
    space = gym.spaces.Box(-100, 100, shape=(1,), dtype=np.float32)
    ent = StateEntropyReward(space, k=1)
    x = np.array([[0.0], [1.0], [2.0], [10.0]], dtype=np.float32)
    got = ent(x)
    z = (x - x.mean()) / x.std()  # the running statistics after one batch
    want = _knn_log(z, z, 1, own=[0, 1, 2, 3])
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert got.argmax() == 3  # the far state is the novel one
    # the states are remembered: a state seen before is at distance 0 from its twin
    again = ent(np.array([[10.0], [30.0]], dtype=np.float32))
    assert again[0] == pytest.approx(0.0, abs=1e-6) and again[1] > 0.5


def test_state_entropy_reward_takes_k_and_a_full_memory():
    space = gym.spaces.Box(-1, 1, shape=(2,), dtype=np.float32)
    ent = StateEntropyReward(space, k=3, capacity=5)
    rng = np.random.default_rng(0)
    for _ in range(4):
        r = ent(rng.normal(size=(4, 2)).astype(np.float32))
        assert r.shape == (4,) and np.all(np.isfinite(r)) and np.all(r >= 0)
    assert ent.size == 5  # only the last `capacity` states are kept
    single = StateEntropyReward(space, k=5)(np.zeros((1, 2), dtype=np.float32))
    assert single.tolist() == [0.0]  # nothing to compare with yet


def test_state_entropy_reward_for_discrete_and_image_observations():
    disc = StateEntropyReward(gym.spaces.Discrete(4), k=1)
    r = disc(np.array([0, 0, 3]))
    assert r[2] > r[0]  # the lone state is the novel one
    img = gym.spaces.Box(0, 255, shape=(16, 16, 3), dtype=np.uint8)
    ent = StateEntropyReward(img, k=1)
    assert ent.features(np.zeros((2, 16, 16, 3), dtype=np.uint8)).shape == (2, PROJECT_TO)
    frames = np.zeros((3, 16, 16, 3), dtype=np.uint8)
    frames[2] = 255
    assert ent(frames).argmax() == 2
    with pytest.raises(ValueError, match="explore-fraction 0"):
        StateEntropyReward(gym.spaces.Dict({"a": gym.spaces.Discrete(2)}))


def test_relabel_replay_buffer_gives_every_stored_step_the_new_reward():
    from stable_baselines3 import SAC

    from rlhf_hgt.control.agents import relabel_replay_buffer

    model = SAC("MlpPolicy", "Pendulum-v1", learning_starts=1000, buffer_size=500, seed=0,
                device="cpu")
    model.learn(30)
    assert relabel_replay_buffer(model, lambda o, a: o[:, 0] + 2 * a[:, 0]) == 30
    buf = model.replay_buffer
    want = buf.observations[:30, 0, 0] + 2 * buf.actions[:30, 0, 0]
    np.testing.assert_allclose(buf.rewards[:30, 0], want, rtol=1e-6)
    assert not buf.rewards[30:].any()  # the empty slots stay empty


def _ppo_rollout_rewards(scale: float, normalize: bool) -> np.ndarray:
    from stable_baselines3 import PPO

    from rlhf_hgt.control.agents import make_vec_env
    from rlhf_hgt.control.rollouts import BatchedRewardCallback
    from rlhf_hgt.envs import HiddenRewardWrapper, make_env

    venv = make_vec_env(lambda: HiddenRewardWrapper(make_env("CartPole-v1")), 2, seed=0)
    model = PPO("MlpPolicy", venv, n_steps=16, batch_size=32, n_epochs=1, seed=0, device="cpu")
    seen: list[np.ndarray] = []

    class Keep(BatchedRewardCallback):
        def _on_rollout_end(self) -> None:
            super()._on_rollout_end()
            seen.append(self.model.rollout_buffer.rewards.copy())

    model.learn(32, callback=Keep(lambda o, a: scale * (1.0 + o[:, 0]), venv.action_space,
                                  gamma=0.99, normalize=normalize))
    return np.concatenate(seen)


def test_ppo_gets_the_learned_reward_as_is_or_scale_free():
    raw = _ppo_rollout_rewards(1.0, normalize=False)
    # the hidden env pays 0; the learned reward 1 + cart position is added as it is (the
    # same seed gives the same rollouts: the reward does not change the first rollout)
    scaled = _ppo_rollout_rewards(3.0, normalize=False)
    np.testing.assert_allclose(scaled[:16], 3.0 * raw[:16], rtol=1e-5)
    assert np.all(raw[:16] > 0.5)
    # with normalisation the agent sees the same numbers whatever the reward's scale
    a = _ppo_rollout_rewards(1.0, normalize=True)
    b = _ppo_rollout_rewards(100.0, normalize=True)
    np.testing.assert_allclose(a, b, rtol=1e-4)


def test_exploring_first_makes_the_first_comparisons_of_a_sparse_task_informative(tmp_path):
    """A corridor with -1 per step until its far end: clips of a fresh policy all score
    -length (ties); after exploring on the state-entropy reward the policy reaches the end
    and its clips differ. Same labels, seed and steps; only --explore-fraction differs."""
    import custom_envs_for_tests  # noqa: F401 - registers the corridor

    from rlhf_hgt.control.config import AgentConfig, ControlConfig
    from rlhf_hgt.control.loop import run_control

    shares = {}
    for fraction in (0.0, 0.5):
        cfg = ControlConfig(env_id="custom_envs_for_tests:SparseCorridor-v0",
                            out=str(tmp_path / f"f{fraction}"), labels=40, rounds=1,
                            timesteps=8192, seed=0, segment_length=20, eval_episodes=2,
                            explore_fraction=fraction, agent=AgentConfig(n_steps=256))
        metrics = run_control(cfg)
        shares[fraction] = metrics["tie_share"]
        assert metrics["explore_steps"] == (0 if fraction == 0 else 4096)
    assert shares[0.0] >= 0.8, shares  # the fresh policy's clips nearly all tie
    assert shares[0.5] <= shares[0.0] - 0.15, shares  # measured: 0.975 -> 0.725


def test_the_agent_keeps_exploring_while_every_answer_is_a_tie():
    from rlhf_hgt.control.agents import make_vec_env
    from rlhf_hgt.control.config import AgentConfig, ControlConfig
    from rlhf_hgt.control.reward_learner import RewardModelLearner
    from rlhf_hgt.envs import HiddenRewardWrapper, make_env

    venv = make_vec_env(lambda: HiddenRewardWrapper(make_env("CartPole-v1")), 1, seed=0)
    rng = np.random.default_rng(0)

    def learner(fraction: float) -> RewardModelLearner:
        cfg = ControlConfig(env_id="CartPole-v1", out="unused", explore_fraction=fraction,
                            reward={"epochs": 1, "min_updates": 2},
                            agent=AgentConfig(n_envs=1, n_steps=64))
        return RewardModelLearner(cfg, venv)

    segs = [{"obs": rng.normal(size=(5, 4)).astype(np.float32),
             "actions": rng.integers(0, 2, size=5), "true_rewards": np.ones(5, np.float32)}
            for _ in range(8)]
    episodes = [{"obs": np.concatenate([s["obs"] for s in segs]),
                 "actions": np.concatenate([s["actions"] for s in segs])}]
    obs, acts = episodes[0]["obs"][:6], episodes[0]["actions"][:6]
    ties, said = np.full(4, 0.5), np.array([1.0, 0.5, 0.0, 1.0])
    ours = learner(0.1)
    assert ours.agent.ent_coef == 0.0  # the agent's own (AgentConfig's default)
    assert ours.fit(segs[:4], segs[4:], ties, episodes, rng)["exploring"] == 1
    novelty = ours.reward(obs, acts)  # the state-entropy reward, not the ensemble's
    assert not np.allclose(novelty, ours.ensemble.predict(obs, acts))
    assert ours.agent.ent_coef == 0.01  # PPO keeps an entropy bonus while exploring
    assert "exploring" not in ours.fit(segs[:4], segs[4:], said, episodes, rng)
    assert ours.agent.ent_coef == 0.0  # and gives it up when the answers say something
    np.testing.assert_allclose(ours.reward(obs, acts), ours.ensemble.predict(obs, acts))
    off = learner(0.0)  # --explore-fraction 0: the ensemble's reward, ties or not
    assert "exploring" not in off.fit(segs[:4], segs[4:], ties, episodes, rng)
    np.testing.assert_allclose(off.reward(obs, acts), off.ensemble.predict(obs, acts))


def test_the_command_says_it_explores_and_records_it(tmp_path, capsys):
    import json

    from rlhf_hgt.cli import main

    out = tmp_path / "run"
    code = main(["control", "custom_envs_for_tests:SparseCorridor-v0", "--labels", "4",
                 "--rounds", "1", "--timesteps", "2048", "--explore-fraction", "0.5",
                 "--segment-length", "10", "--eval-episodes", "1", "--out", str(out)])
    assert code == 0
    assert "exploring for 1024 steps" in capsys.readouterr().err  # progress: stderr
    assert json.loads((out / "metrics.json").read_text())["explore_steps"] == 1024
    assert main(["control", "CartPole-v1", "--explore-fraction", "1", "--out",
                 str(tmp_path / "bad")]) == 2
    assert "--explore-fraction must lie in [0, 1)" in capsys.readouterr().err


def test_every_round_relabels_sacs_whole_replay_buffer(tmp_path, monkeypatch):
    """After each fit, every stored SAC step carries the new reward model's reward."""
    from rlhf_hgt.control import reward_learner
    from rlhf_hgt.control.config import AgentConfig, ControlConfig
    from rlhf_hgt.control.loop import run_control

    relabelled: list[tuple[int, bool]] = []
    real = reward_learner.relabel_replay_buffer

    def check(model, reward_fn):
        n = real(model, reward_fn)
        buf = model.replay_buffer
        if buf.pos == 0:
            relabelled.append((n, True))
            return n
        obs = buf.observations[:buf.pos].reshape(buf.pos, -1)
        acts = buf.actions[:buf.pos].reshape(buf.pos, -1)
        same = np.allclose(buf.rewards[:buf.pos, 0], reward_fn(obs, acts), atol=1e-5)
        relabelled.append((n, same))
        return n

    monkeypatch.setattr(reward_learner, "relabel_replay_buffer", check)
    cfg = ControlConfig(env_id="Pendulum-v1", out=str(tmp_path / "r"), labels=9, rounds=3,
                        timesteps=600, segment_length=10, eval_episodes=1, seed=0,
                        explore_fraction=0.0, reward={"epochs": 1, "min_updates": 5},
                        agent=AgentConfig(learning_starts=50, batch_size=32))
    run_control(cfg)
    assert [n for n, _ in relabelled] == [0, 200, 400]  # rounds 1-3: all stored steps
    assert all(same for _, same in relabelled)


def test_the_learned_rewards_scale_is_measured_every_fit_or_only_at_the_first():
    from rlhf_hgt.control.agents import make_vec_env
    from rlhf_hgt.control.config import AgentConfig, ControlConfig
    from rlhf_hgt.control.reward_learner import RewardModelLearner
    from rlhf_hgt.envs import HiddenRewardWrapper, make_env

    venv = make_vec_env(lambda: HiddenRewardWrapper(make_env("CartPole-v1")), 1, seed=0)
    rng = np.random.default_rng(1)
    segs = [{"obs": rng.normal(size=(5, 4)).astype(np.float32),
             "actions": rng.integers(0, 2, size=5), "true_rewards": np.ones(5, np.float32)}
            for _ in range(8)]
    episodes = [{"obs": np.concatenate([s["obs"] for s in segs]),
                 "actions": np.concatenate([s["actions"] for s in segs])}]
    obs, acts = episodes[0]["obs"], episodes[0]["actions"]
    scales = {}
    for each_fit in (True, False):
        cfg = ControlConfig(env_id="CartPole-v1", out="unused", explore_fraction=0.0,
                            reward={"epochs": 1, "min_updates": 20,
                                    "rescale_each_fit": each_fit},
                            agent=AgentConfig(n_envs=1, n_steps=64))
        ours = RewardModelLearner(cfg, venv)
        ours.fit(segs[:4], segs[4:], np.array([1.0, 0.0, 1.0, 0.0]), episodes, rng)
        first = float(ours.ensemble.norm_scale)
        assert np.std(ours.reward(obs, acts)) == pytest.approx(1.0, rel=1e-3)
        ours.fit(segs[:4], segs[4:], np.array([0.0, 1.0, 0.0, 1.0]), episodes, rng)
        scales[each_fit] = (first, float(ours.ensemble.norm_scale))
        if each_fit:  # re-measured: unit spread again on the same steps
            assert np.std(ours.reward(obs, acts)) == pytest.approx(1.0, rel=1e-3)
    assert scales[True][1] != pytest.approx(scales[True][0], rel=1e-3)
    assert scales[False][1] == scales[False][0]  # the first fit's scale is kept
