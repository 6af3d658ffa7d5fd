"""Control stack, reward half: fragments, reward nets and ensembles, query selection."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.envs.classic_control.cartpole import CartPoleEnv
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf_hgt.control.fragments import collect_rollouts, cut_segments, episode_returns
from rlhf_hgt.control.queries import query_schedule, random_pairs, select_pairs
from rlhf_hgt.control.reward_model import (
    RewardEnsemble,
    RewardModelConfig,
    RewardNet,
    image_layout,
)
from rlhf_hgt.feedback.errors import UserInputError

torch.set_num_threads(1)

OBS = spaces.Box(-1.0, 1.0, shape=(6,), dtype=np.float32)
ACT = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
W = np.array([1.0, -2.0, 0.5, 0.0, 1.5, -1.0], dtype=np.float32)  # true reward = W . obs
T = 10


def _segments(n: int, rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    out = []
    for _ in range(n):
        obs = rng.uniform(-1, 1, size=(T, 6)).astype(np.float32)
        out.append({"obs": obs, "actions": rng.uniform(-1, 1, size=(T, 2)).astype(np.float32),
                    "true_rewards": (obs @ W).astype(np.float32)})
    return out


def _oracle(left, right) -> list[str]:
    out = []
    for a, b in zip(left, right, strict=True):
        ra, rb = float(a["true_rewards"].sum()), float(b["true_rewards"].sum())
        out.append("left" if ra > rb else "right" if ra < rb else "tie")
    return out


def _data(n_pairs: int, seed: int):
    rng = np.random.default_rng(seed)
    left, right = _segments(n_pairs, rng), _segments(n_pairs, rng)
    return left, right, _oracle(left, right)


def _small_config(**kw) -> RewardModelConfig:
    base = dict(hidden_sizes=(32, 32), epochs=15, min_updates=60, batch_size=32)
    base.update(kw)
    return RewardModelConfig(**base)


@pytest.fixture(scope="module")
def fitted():
    """An ensemble fit once on 300 oracle-labelled pairs with a linear true reward."""
    left, right, answers = _data(300, seed=0)
    ens = RewardEnsemble(OBS, ACT, k=3, config=RewardModelConfig(), seed=0)
    before = [p.detach().clone() for p in ens.parameters()]
    metrics = ens.fit(left, right, answers, rng=np.random.default_rng(0))
    return ens, metrics, before


# ----------------------------------------------------------------------------- nets


def test_net_picks_mlp_for_vectors_and_cnn_for_images():
    cfg = RewardModelConfig(hidden_sizes=(8,), cnn_channels=(4, 4, 4))
    vec = RewardNet(OBS, spaces.Discrete(3), cfg)
    assert not any(isinstance(m, torch.nn.Conv2d) for m in vec.modules())
    r = vec(torch.zeros(5, 6), torch.tensor([0, 1, 2, 1, 0]))
    assert r.shape == (5,)
    # one-hot actions: the three actions give three different rewards for the same obs
    assert len(set(vec(torch.zeros(3, 6), torch.arange(3)).tolist())) == 3

    for shape, layout in (((16, 16, 3), "hwc"), ((3, 16, 16), "chw"), ((8, 8, 1), "hwc")):
        img = spaces.Box(0, 255, shape=shape, dtype=np.uint8)
        assert image_layout(img) == layout
        net = RewardNet(img, spaces.Box(-1, 1, (2,)), cfg)
        assert sum(isinstance(m, torch.nn.Conv2d) for m in net.modules()) == 3
        x = torch.randint(0, 256, (4, *shape), dtype=torch.uint8)
        assert net(x, torch.zeros(4, 2)).shape == (4,)

    # discrete observations and multi-discrete actions go one-hot into the MLP
    net = RewardNet(spaces.Discrete(5), spaces.MultiDiscrete([2, 3]), cfg)
    assert net(torch.tensor([0, 4]), torch.tensor([[1, 2], [0, 0]])).shape == (2,)
    # a float image-shaped Box is a vector to flatten
    flat = RewardNet(spaces.Box(0, 1, (4, 4, 3)), None, cfg)
    assert flat.layout is None and flat(torch.rand(2, 4, 4, 3)).shape == (2,)


@pytest.mark.parametrize("space", [
    spaces.Dict({"a": spaces.Box(-1, 1, (2,))}),
    spaces.Tuple((spaces.Discrete(2), spaces.Discrete(3))),
    spaces.Text(8),
    spaces.Graph(node_space=spaces.Box(-1, 1, (2,)), edge_space=None),
    spaces.Box(0, 255, (16, 16, 7), dtype=np.uint8),
])
def test_unsupported_spaces_are_refused_with_what_is_supported(space):
    with pytest.raises(ValueError) as err:
        RewardEnsemble(space, spaces.Discrete(2))
    msg = str(err.value)
    assert "observation space" in msg and "supported" in msg and "Box" in msg
    with pytest.raises(ValueError, match="action space .* not supported"):
        RewardNet(OBS, space if not isinstance(space, spaces.Box) else spaces.Text(3))
    if isinstance(space, spaces.Dict):
        assert "FlattenObservation" in msg


def test_config_checks_say_how_to_fix():
    with pytest.raises(ValueError, match="0 <= label_noise < 1"):
        RewardModelConfig(label_noise=1.0)
    with pytest.raises(ValueError, match="ensemble_size must be >= 1"):
        RewardModelConfig(ensemble_size=0)
    with pytest.raises(ValueError, match="3 positive channel counts"):
        RewardModelConfig(cnn_channels=(8, 8))
    with pytest.raises(ValueError, match="device"):
        RewardModelConfig(device="tpu")
    assert RewardModelConfig(hidden_sizes=[16, 16]).hidden_sizes == (16, 16)
    with pytest.raises(UserInputError, match="unknown field"):
        RewardModelConfig.from_dict({"hiden_sizes": [3]})
    assert RewardEnsemble(OBS, ACT, k=5).k == 5


# ----------------------------------------------------------------------------- fitting


def test_ensemble_learns_a_linear_reward_from_oracle_labels(fitted):
    ens, metrics, before = fitted
    assert metrics["holdout_accuracy"] > 0.85
    assert metrics["n_holdout"] > 20 and metrics["n_train"] + metrics["n_holdout"] == 300
    assert metrics["train_loss"] < math.log(2)
    # every member's parameters moved
    assert all(not torch.equal(a, b) for a, b in zip(before, ens.parameters(), strict=True))
    # the learned per-step reward ranks fresh steps like the true one
    obs = np.random.default_rng(9).uniform(-1, 1, size=(500, 6)).astype(np.float32)
    pred = ens.predict(obs, np.zeros((500, 2), dtype=np.float32))
    assert np.corrcoef(pred, obs @ W)[0, 1] > 0.8


def test_skips_are_dropped_and_ties_counted():
    left, right, answers = _data(60, seed=1)
    extra_l, extra_r, extra = _data(20, seed=2)
    # skipped pairs, with misleading content, must change nothing
    mixed_l, mixed_r = left + extra_l, right + extra_r
    mixed = answers + ["skip"] * 20
    answers = list(answers)
    answers[:5] = ["tie"] * 5
    mixed[:5] = ["tie"] * 5
    cfg = _small_config(epochs=3, min_updates=10)
    a = RewardEnsemble(OBS, ACT, k=2, config=cfg, seed=3)
    b = RewardEnsemble(OBS, ACT, k=2, config=cfg, seed=3)
    ma = a.fit(left, right, answers, rng=np.random.default_rng(4))
    mb = b.fit(mixed_l, mixed_r, mixed, rng=np.random.default_rng(4))
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert mb["n_skipped"] == 20 and mb["n_used"] == 60 and mb["n_ties"] == 5
    assert ma["holdout_loss"] == mb["holdout_loss"]
    # numbers work as well as answer strings (nan = skip)
    numbers = [{"left": 1.0, "right": 0.0, "tie": 0.5, "skip": float("nan")}[x] for x in mixed]
    c = RewardEnsemble(OBS, ACT, k=2, config=cfg, seed=3)
    c.fit(mixed_l, mixed_r, np.array(numbers), rng=np.random.default_rng(4))
    for pa, pc in zip(a.parameters(), c.parameters(), strict=True):
        assert torch.equal(pa, pc)
    # only ties: nothing to score accuracy on, and no crash
    m = RewardEnsemble(OBS, ACT, k=1, config=cfg).fit(left, right, ["tie"] * 60)
    assert m["holdout_accuracy"] is None and m["n_ties"] == 60
    with pytest.raises(UserInputError, match="every answer is a skip"):
        a.fit(left, right, ["skip"] * 60)
    with pytest.raises(UserInputError, match="not an answer"):
        a.fit(left[:1], right[:1], ["maybe"])
    with pytest.raises(UserInputError, match="one answer per pair"):
        a.fit(left, right, answers[:3])


def test_holdout_split_is_stable_across_fits():
    left, right, answers = _data(80, seed=5)
    ens = RewardEnsemble(OBS, ACT, k=1, config=_small_config(epochs=2, min_updates=2))
    m1 = ens.fit(left, right, answers, rng=1)
    # more pairs later: the pairs held out before are still held out (and never trained on)
    more_l, more_r, more = _data(40, seed=6)
    m2 = ens.fit(left + more_l, right + more_r, answers + more, rng=2)
    m3 = RewardEnsemble(OBS, ACT, k=1, config=_small_config(epochs=2, min_updates=2)).fit(
        more_l, more_r, more, rng=3)
    assert m2["n_holdout"] == m1["n_holdout"] + m3["n_holdout"]


def test_cnn_reward_trains_on_images():
    img = spaces.Box(0, 255, (8, 8, 3), dtype=np.uint8)
    rng = np.random.default_rng(0)

    def seg():
        obs = rng.integers(0, 256, size=(4, 8, 8, 3), dtype=np.uint8)
        return {"obs": obs, "actions": rng.integers(0, 2, size=4),
                "true_rewards": obs[..., 0].mean(axis=(1, 2)).astype(np.float32)}

    left, right = [seg() for _ in range(16)], [seg() for _ in range(16)]
    ens = RewardEnsemble(img, spaces.Discrete(2), k=2,
                         config=RewardModelConfig(hidden_sizes=(8,), cnn_channels=(4, 4, 4),
                                                  epochs=2, min_updates=4))
    before = [p.detach().clone() for p in ens.parameters()]
    m = ens.fit(left, right, _oracle(left, right), rng=0)
    assert m["updates"] >= 4
    assert all(not torch.equal(a, b) for a, b in zip(before, ens.parameters(), strict=True))
    assert ens.predict(left[0]["obs"], left[0]["actions"]).shape == (4,)


# ----------------------------------------------------------------------------- predict, save


def test_predict_is_normalised_on_the_normalisation_data(fitted):
    ens, _, _ = fitted
    rng = np.random.default_rng(11)
    obs = rng.uniform(-1, 1, size=(2000, 6)).astype(np.float32)
    acts = rng.uniform(-1, 1, size=(2000, 2)).astype(np.float32)
    raw = ens.predict(obs, acts, normalize=False)
    info = ens.fit_normalization(obs, acts)
    try:
        assert info["centered"]  # no segment ran past a terminal state: auto centres
        pred = ens.predict(obs, acts)
        assert pred.dtype == np.float32 and pred.shape == (2000,)
        assert abs(pred.mean()) < 1e-3 and abs(pred.std() - 1) < 1e-3
        np.testing.assert_allclose(pred, (raw - raw.mean()) / raw.std(), rtol=1e-3, atol=1e-3)
        # the same numbers in small batches
        np.testing.assert_allclose(ens.predict(obs, acts, batch_size=7), pred, rtol=1e-5,
                                   atol=1e-6)
        with pytest.raises(UserInputError, match="observation space"):
            ens.predict(np.zeros((3, 5), dtype=np.float32), acts[:3])
        with pytest.raises(UserInputError, match="pass the actions"):
            ens.predict(obs[:3])
    finally:
        ens.norm_shift.fill_(0.0)
        ens.norm_scale.fill_(1.0)


def test_save_load_round_trip_gives_identical_predictions(fitted, tmp_path):
    ens, _, _ = fitted
    rng = np.random.default_rng(12)
    obs = rng.uniform(-1, 1, size=(300, 6)).astype(np.float32)
    acts = rng.uniform(-1, 1, size=(300, 2)).astype(np.float32)
    ens.fit_normalization(obs, acts, center=True)
    try:
        folder = ens.save(tmp_path / "reward_model")
        assert folder.exists() and (folder / "config.json").exists()
        same = RewardEnsemble(OBS, ACT, k=3, seed=99).load(folder)
        built = RewardEnsemble.from_saved(folder)
        want = ens.predict(obs, acts)
        np.testing.assert_array_equal(same.predict(obs, acts), want)
        np.testing.assert_array_equal(built.predict(obs, acts), want)
        assert built.config == ens.config and built.fitted and built.k == 3
        np.testing.assert_array_equal(built.disagreement(*_data(5, 7)[:2]),
                                      ens.disagreement(*_data(5, 7)[:2]))
        # nothing pickled: the folder holds safetensors and JSON only
        assert sorted(p.name for p in folder.iterdir()) == ["config.json",
                                                            "reward_model.safetensors"]
    finally:
        ens.norm_shift.fill_(0.0)
        ens.norm_scale.fill_(1.0)
    with pytest.raises(UserInputError, match="different model"):
        RewardEnsemble(OBS, ACT, k=2).load(folder)
    with pytest.raises(UserInputError, match="not a saved reward model"):
        RewardEnsemble(OBS, ACT).load(tmp_path / "nothing")


# ----------------------------------------------------------------------------- queries


def test_disagreement_selection_beats_random(fitted):
    ens, _, _ = fitted
    rng = np.random.default_rng(13)
    cands = _segments(60, rng)
    chosen = select_pairs(cands, 15, "disagreement", ensemble=ens, oversample=10, rng=rng,
                          return_indices=True)
    rand = select_pairs(cands, 200, "random", rng=rng, return_indices=True)

    def spread(pairs):
        return ens.disagreement([cands[i] for i, _ in pairs], [cands[j] for _, j in pairs])

    assert len(chosen) == 15 and len({frozenset(p) for p in chosen}) == 15
    assert spread(chosen).mean() > 1.5 * spread(rand).mean()
    # segment pairs come back ready for store.add_segment_queries
    pairs = select_pairs(cands, 4, "disagreement", ensemble=ens, rng=rng)
    assert len(pairs) == 4 and all(isinstance(a, dict) and isinstance(b, dict)
                                   for a, b in pairs)


def test_random_pairs_are_distinct_and_errors_are_clear():
    rng = np.random.default_rng(0)
    pairs = random_pairs(6, 15, rng)  # all of them
    assert len({frozenset(map(int, p)) for p in pairs}) == 15
    assert all(i != j for i, j in pairs)
    assert (pairs[:, 0] > pairs[:, 1]).any() and (pairs[:, 0] < pairs[:, 1]).any()
    cands = _segments(6, rng)
    with pytest.raises(ValueError, match="only 15 distinct pairs"):
        select_pairs(cands, 16, rng=rng)
    with pytest.raises(ValueError, match="needs ensemble="):
        select_pairs(cands, 2, "disagreement")
    with pytest.raises(ValueError, match="2 or more members"):
        select_pairs(cands, 2, "disagreement", ensemble=RewardEnsemble(OBS, ACT, k=1))
    with pytest.raises(ValueError, match="method must be one of"):
        select_pairs(cands, 2, "entropy")
    assert select_pairs(cands, 0) == []


@settings(max_examples=200, deadline=None)
@given(total=st.integers(1, 5000), rounds=st.integers(1, 60),
       frac=st.floats(0.01, 1.0))
def test_query_schedule_sums_exactly_and_never_increases(total, rounds, frac):
    sched = query_schedule(total, rounds, frac)
    assert len(sched) == rounds and sum(sched) == total
    assert all(a >= b for a, b in zip(sched, sched[1:], strict=False))
    assert min(sched) >= (1 if total >= rounds else 0)


def test_query_schedule_is_front_loaded_and_checks_input():
    sched = query_schedule(500, 10, 0.25)
    assert sched[0] == 125 and sched[1] < sched[0] and sched[-1] < sched[1] / 3
    assert query_schedule(7, 1) == [7]
    assert query_schedule(8, 2, 0.25) == [4, 4]  # round 0 never gets less than round 1
    assert query_schedule(1045, 35, 0.01)[:2] == [140, 139]  # rounding kept non-increasing
    assert query_schedule(3, 5) == [1, 1, 1, 0, 0]
    for bad in ((0, 3), (10, 0), (10, 2.5), (True, 2)):
        with pytest.raises(ValueError, match="must be an integer >= 1"):
            query_schedule(*bad)
    with pytest.raises(ValueError, match="initial_fraction"):
        query_schedule(10, 2, 0.0)


# ----------------------------------------------------------------------------- fragments


def _locate(seg, episodes):
    """(episode index, start) of the valid part of a segment; exactly one must match."""
    valid = seg["valid"]
    n = int(valid.sum())
    assert valid[:n].all() and not valid[n:].any()  # real steps first, then padding
    hits = []
    for e, ep in enumerate(episodes):
        for s in range(len(ep["obs"]) - n + 1):
            if np.array_equal(ep["obs"][s:s + n], seg["obs"][:n]) and \
                    np.array_equal(ep["actions"][s:s + n], seg["actions"][:n]):
                hits.append((e, s))
    assert len(hits) == 1, hits
    return hits[0]


def _check_no_crossing(segments, episodes, length):
    for seg in segments:
        assert len(seg["obs"]) == len(seg["true_rewards"]) == len(seg["valid"]) == length
        e, s = _locate(seg, episodes)
        ep, n = episodes[e], int(seg["valid"].sum())
        np.testing.assert_array_equal(seg["true_rewards"][:n], ep["true_rewards"][s:s + n])
        if n < length:  # ran past the end: only ever past a terminal state
            assert bool(ep["terminated"]) and s + n == len(ep["obs"])
            assert not seg["true_rewards"][n:].any()
            final = ep.get("final_obs", ep["obs"][-1])
            assert all(np.array_equal(o, final) for o in seg["obs"][n:])


def test_segments_never_cross_episode_boundaries_on_cartpole():
    rng = np.random.default_rng(0)
    env = gym.make("CartPole-v1", max_episode_steps=30)
    episodes = collect_rollouts(env, None, 600, rng)
    env.close()
    lengths = [len(e["obs"]) for e in episodes]
    assert sum(lengths) == 600 and len(set(lengths)) > 3
    assert any(bool(e["terminated"]) for e in episodes)
    assert any(bool(e["truncated"]) for e in episodes)  # hit the 30-step limit
    for ep in episodes:
        assert ep["obs"].dtype == np.float32 and ep["true_rewards"].dtype == np.float32
        assert len(ep["actions"]) == len(ep["obs"])
    segments = cut_segments(episodes, 20, 150, rng)
    assert len(segments) == 150
    _check_no_crossing(segments, episodes, 20)
    assert any(not s["valid"].all() for s in segments) and any(s["valid"].all()
                                                               for s in segments)
    # episodes cut by the time limit are never padded: none of them has 20 steps beyond 30
    no_pad = cut_segments(episodes, 20, 500, rng, pad_terminal=False)
    assert all(s["valid"].all() for s in no_pad)
    # windows are distinct, and no more than exist
    assert len(no_pad) == sum(max(0, n - 19) for n in lengths)
    assert len({s["obs"].tobytes() for s in no_pad}) == len(no_pad)
    assert len(episode_returns(episodes)) == sum(
        bool(e["terminated"]) or bool(e["truncated"]) for e in episodes)


def test_segments_from_a_vec_env_and_from_recorder_style_episodes():
    from stable_baselines3.common.vec_env import DummyVecEnv

    venv = DummyVecEnv([lambda: gym.make("CartPole-v1")] * 2)
    episodes = collect_rollouts(venv, lambda obs: np.zeros(len(obs), dtype=np.int64), 200,
                                rng=1)
    venv.close()
    assert sum(len(e["obs"]) for e in episodes) == 200
    # always pushing left ends episodes fast; the final obs is the terminal one, not a reset
    done = [e for e in episodes if bool(e["terminated"])]
    assert len(done) > 4
    assert all(abs(e["final_obs"][2]) > 0.2 or abs(e["final_obs"][0]) > 2.4 for e in done)
    segments = cut_segments(episodes, 25, 60, rng=2)
    _check_no_crossing(segments, episodes, 25)
    # episodes as the agent's rollout recorder keeps them (no final_obs): pad with last obs
    bare = [{k: e[k] for k in ("obs", "actions", "true_rewards", "terminated")}
            for e in episodes]
    _check_no_crossing(cut_segments(bare, 25, 60, rng=2), bare, 25)
    with pytest.raises(ValueError, match="collect more steps or use shorter segments"):
        cut_segments([{**bare[0], "terminated": np.asarray(False)}], 1000, 5)


def test_an_sb3_model_can_be_the_policy():
    from stable_baselines3 import PPO

    env = gym.make("CartPole-v1")
    model = PPO("MlpPolicy", env, n_steps=64, batch_size=32, device="cpu", seed=0)
    episodes = collect_rollouts(env, model, 50, rng=0, deterministic=True)
    assert sum(len(e["obs"]) for e in episodes) == 50
    assert all(set(np.unique(e["actions"])) <= {0, 1} for e in episodes)
    env.close()


class _DrawnCartPole(CartPoleEnv):
    """CartPole whose rgb_array frames are drawn with numpy (gymnasium's own renderer needs
    pygame, which is not a dependency): a 400x600 picture of the cart and the pole."""

    def render(self):
        img = np.full((400, 600, 3), 255, dtype=np.uint8)
        x, _, theta, _ = self.state
        cx = int(np.clip(300 + x * 100, 25, 575))
        img[290:310, cx - 25:cx + 25] = (40, 40, 40)
        for r in np.linspace(0, 100, 60):
            px, py = int(cx + r * np.sin(theta)), int(290 - r * np.cos(theta))
            if 0 <= py < 400 and 0 <= px < 600:
                img[max(py - 2, 0):py + 3, max(px - 2, 0):px + 3] = (200, 120, 60)
        return img


def test_record_frames_on_cartpole_gives_small_uint8_frames():
    env = gym.wrappers.TimeLimit(_DrawnCartPole(render_mode="rgb_array"), 500)
    episodes = collect_rollouts(env, None, 40, rng=0, record_frames=True, frame_size=(48, 64))
    env.close()
    for ep in episodes:
        assert ep["frames"].dtype == np.uint8
        assert ep["frames"].shape == (len(ep["obs"]), 48, 64, 3)
        assert ep["final_frame"].shape == (48, 64, 3)
    assert episodes[0]["frames"].std() > 0  # a picture, not a blank
    segs = cut_segments(episodes, 10, 5, rng=0)
    assert all(s["frames"].shape == (10, 48, 64, 3) and s["frames"].dtype == np.uint8
               for s in segs)
    # frames follow the steps: the cart drawn moves as the cart's position does
    ep = max(episodes, key=lambda e: len(e["obs"]))
    cart_col = ep["frames"][:, 36:38].astype(int).sum(axis=(1, 3)).argmin(axis=1)
    assert np.ptp(ep["obs"][:, 0]) > 0.05  # the cart moved (random actions, seed 0)
    assert np.corrcoef(cart_col, ep["obs"][:, 0])[0, 1] > 0.5
    with pytest.raises(ValueError, match="render_mode='rgb_array'"):
        collect_rollouts(gym.make("CartPole-v1"), None, 5, record_frames=True)


def test_stored_and_shown_frames_are_converted_alike():
    """One conversion to rgb uint8: a frame is stored (fragments) as it is drawn (render)."""
    from rlhf_hgt.control.fragments import _frame
    from rlhf_hgt.feedback.render import rgb_uint8, to_rgb_frames

    grey = np.array([[0.0, 0.5], [1.0, np.nan]])  # floats in [0, 1], NaN drawn black
    rgba = np.zeros((2, 2, 4), dtype=np.float32)
    rgba[..., 0], rgba[..., 3] = 2.0, 7.0  # floats above 1 are pixel values; alpha dropped
    ints = np.array([[[300, -5, 128]]], dtype=np.int32)  # ints are pixel values, clipped
    mask = np.array([[[True], [False]]])  # booleans count as [0, 1]
    want = [np.repeat(np.array([[0, 127], [255, 0]], dtype=np.uint8)[..., None], 3, axis=-1),
            np.tile(np.array([2, 0, 0], dtype=np.uint8), (2, 2, 1)),
            np.array([[[255, 0, 128]]], dtype=np.uint8),
            np.array([[[255] * 3, [0] * 3]], dtype=np.uint8)]
    for img, expected in zip([grey, rgba, ints, mask], want, strict=True):
        stored, shown = _frame(img, None), to_rgb_frames(img[None])
        assert stored.dtype == np.uint8 and np.array_equal(stored, expected)
        assert shown is not None and np.array_equal(shown[0], expected)
    with pytest.raises(ValueError, match="1, 3 or 4 channels"):
        rgb_uint8(np.zeros((2, 2, 2)))


def test_a_reward_learned_on_cartpole_prefers_staying_alive():
    """End to end on CartPole: segments padded past termination teach that falling is bad."""
    rng = np.random.default_rng(0)
    env = gym.make("CartPole-v1")
    episodes = collect_rollouts(env, None, 800, rng)
    segments = cut_segments(episodes, 15, 200, rng)
    pairs = select_pairs(segments, 200, rng=rng)
    left, right = [a for a, _ in pairs], [b for _, b in pairs]
    ens = RewardEnsemble(env.observation_space, env.action_space, k=2,
                         config=_small_config(), seed=0)
    metrics = ens.fit(left, right, _oracle(left, right), rng=rng)
    assert ens.saw_termination and metrics["holdout_accuracy"] > 0.85
    obs = np.concatenate([e["obs"] for e in episodes])
    acts = np.concatenate([e["actions"] for e in episodes])
    info = ens.fit_normalization(obs, acts)
    assert not info["centered"]  # anchored at 'episode over' = 0: no shift
    # living earns more than the absorbing state's 0 on most steps the policy sees
    assert (ens.predict(obs, acts) > 0).mean() > 0.9
    env.close()


def test_pessimism_lowers_the_reward_most_where_no_label_reached(fitted):
    ens, _, _ = fitted
    rng = np.random.default_rng(5)
    seen = rng.uniform(-1, 1, size=(400, 6)).astype(np.float32)  # where the pairs came from
    far = seen * 8.0  # far outside the labelled range
    acts = rng.uniform(-1, 1, size=(400, 2)).astype(np.float32)
    mean = {k: ens.predict(x, acts, normalize=False) for k, x in (("seen", seen), ("far", far))}
    ens.config.pessimism = 1.0
    try:
        low = {k: ens.predict(x, acts, normalize=False) for k, x in (("seen", seen), ("far", far))}
    finally:
        ens.config.pessimism = 0.0
    gap = {k: mean[k] - low[k] for k in mean}
    assert (gap["seen"] >= -1e-6).all() and (gap["far"] >= -1e-6).all()
    assert gap["far"].mean() > 3 * gap["seen"].mean() > 0, (gap["far"].mean(),
                                                           gap["seen"].mean())
    with pytest.raises(ValueError, match="pessimism"):
        RewardModelConfig(pessimism=-1.0)
