"""Feature marks for control (issue 13, section 1): the shared input-gradient penalty, the
--feature-marks spec, the reward ensemble's penalty, distractor features, and the flags."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlhf_hgt.control.config import (
    DEFAULT_MARK_WEIGHT,
    ControlConfig,
    parse_distractors,
    parse_feature_marks,
)
from rlhf_hgt.feedback.errors import UserInputError
from rlhf_hgt.penalties import feature_gradient_share, outside_share

TINY = ["--n-envs", "2", "--segment-length", "10", "--eval-episodes", "3",
        "--reward-min-updates", "20", "--reward-epochs", "2"]


# ----------------------------------------------------------------------------- the penalty


def test_the_share_of_a_linear_reward_is_its_weight_outside_the_marks():
    w = torch.tensor([1.0, 2.0, 0.5, 3.0], requires_grad=True)
    x = torch.randn(6, 5, 4, requires_grad=True)  # 6 segments of 5 steps, 4 features
    keep = torch.tensor([1, 1, 0, 0], dtype=torch.bool)
    share = feature_gradient_share(x @ w, x, keep)
    want = (0.5**2 + 3.0**2) / (1 + 4 + 0.25 + 9)
    assert share.item() == pytest.approx(want, rel=1e-6)
    # differentiable in the model's parameters (create_graph): it can be trained through
    (g,) = torch.autograd.grad(share, w)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_per_example_marks_graded_marks_and_a_scale():
    w = torch.tensor([1.0, 2.0, 3.0])
    x = torch.randn(2, 3, 3, requires_grad=True)
    keep = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.5]])  # per example, one graded
    share = feature_gradient_share(x @ w, x, keep)
    first, second = (4 + 9) / 14, (0.5 * 9) / 14
    assert share.item() == pytest.approx((first + second) / 2, rel=1e-6)
    # with a per-feature scale (a normaliser's std) the gradient is measured per unit of it
    scale = torch.tensor([3.0, 1.0, 1.0])
    x2 = torch.randn(4, 3, requires_grad=True)
    scaled = feature_gradient_share(x2 @ w, x2, torch.tensor([1.0, 0.0, 0.0]), scale)
    assert scaled.item() == pytest.approx((4 + 9) / (9 + 4 + 9), rel=1e-6)
    with pytest.raises(ValueError, match="require grad"):
        feature_gradient_share(x2.detach() @ w, x2.detach(), torch.ones(3))


def test_outside_share_keeps_its_image_meaning():
    energy = torch.zeros(2, 4, 4)
    energy[0, 0, 0], energy[0, 3, 3] = 3.0, 1.0
    energy[1] = 1.0
    mask = torch.zeros(2, 4, 4)
    mask[:, :2, :2] = 1.0
    share = outside_share(energy, mask)
    assert share.tolist() == pytest.approx([0.25, 12 / 16])
    assert outside_share(torch.zeros(1, 3), torch.zeros(3)).item() == 0.0  # no energy: 0


# ----------------------------------------------------------------------------- the spec


def test_feature_marks_parse_indices_and_ranges():
    assert parse_feature_marks("0,1,4-5") == (0, 1, 4, 5)
    assert parse_feature_marks(" 3 , 1-2,2") == (1, 2, 3)
    assert parse_feature_marks("0-2", 6) == (0, 1, 2)


@pytest.mark.parametrize("spec, n, message", [
    ("0,x", None, "'x' is not a feature index"),
    ("", None, "is not a feature index"),
    ("-1", None, "'-1' is not a feature index"),
    ("1,,2", None, "is not a feature index"),
    ("5-3", None, "runs backwards"),
    ("0,7", 5, "feature 7 is out of range: the observation of T has 5 features"),
    ("3-9", 5, "feature 5 is out of range"),
    ("0-3", 4, "marks every one of the 4"),
    ("0-99999999999", None, "past any observation size"),
])
def test_bad_feature_marks_name_the_flag(spec, n, message):
    with pytest.raises(UserInputError, match="--feature-marks") as err:
        parse_feature_marks(spec, n, " of T")
    assert message in str(err.value)


def test_the_config_checks_marks_weight_and_distractors(tmp_path):
    cfg = ControlConfig("CartPole-v1", str(tmp_path), feature_marks="0-3")
    assert cfg.marks_weight == DEFAULT_MARK_WEIGHT and cfg.task_id == "CartPole-v1"
    assert ControlConfig("X-v0", "o", feature_marks="0", mark_weight=2).marks_weight == 2.0
    assert ControlConfig("X-v0", "o").marks_weight == 0.0
    with pytest.raises(UserInputError, match="--algo dpo has none"):
        ControlConfig("CartPole-v1", "o", algo="dpo", feature_marks="0")
    with pytest.raises(UserInputError, match="give --feature-marks too"):
        ControlConfig("CartPole-v1", "o", mark_weight=3.0)
    with pytest.raises(UserInputError, match="--mark-weight must be >= 0"):
        ControlConfig("CartPole-v1", "o", feature_marks="0", mark_weight=-1.0)
    assert parse_distractors("noise:4,time:2") == (("noise", 4), ("time", 2))
    with pytest.raises(UserInputError, match="--distractors"):
        ControlConfig("CartPole-v1", "o", distractors="noise:0")
    task = ControlConfig("CartPole-v1", "o", distractors="time:2").task_id
    assert task == "CartPole-v1+distractors(time:2)"


def test_marks_need_a_vector_observation():
    from rlhf_hgt.control.reward_learner import feature_keep

    cfg = ControlConfig("X-v0", "o", feature_marks="0,2")
    keep = feature_keep(cfg, gym.spaces.Box(-1, 1, (4,)))
    assert keep.tolist() == [1, 0, 1, 0]
    image = gym.spaces.Box(0, 255, (16, 16, 3), np.uint8)
    with pytest.raises(UserInputError, match="images have no numbered features"):
        feature_keep(cfg, image)
    with pytest.raises(UserInputError, match="observation of X-v0 has 2 features"):
        feature_keep(cfg, gym.spaces.Box(-1, 1, (2,)))


# ----------------------------------------------------------------------------- the ensemble


def _decoy_pairs(n: int, seed: int, decoy_agrees: bool):
    """Segments of 4 features: feature 0 decides (the true reward), feature 3 is a decoy
    that orders each pair as the answer does (decoy_agrees) or the opposite way."""
    rng = np.random.default_rng(seed)
    left, right, targets = [], [], []
    for _ in range(n):
        a, b = rng.normal(size=(2, 6, 4)).astype(np.float32)
        t = float(a[:, 0].sum() > b[:, 0].sum())
        up = (t == 1.0) == decoy_agrees
        a[:, 3], b[:, 3] = (1.0, -1.0) if up else (-1.0, 1.0)
        a[:, 3] += rng.normal(0, 0.1, 6)
        b[:, 3] += rng.normal(0, 0.1, 6)
        left.append({"obs": a, "actions": rng.integers(0, 2, 6)})
        right.append({"obs": b, "actions": rng.integers(0, 2, 6)})
        targets.append(t)
    return left, right, targets


def _ensemble(seed: int = 1, updates: int = 300):
    from rlhf_hgt.control.reward_model import RewardEnsemble, RewardModelConfig

    space = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
    cfg = RewardModelConfig(ensemble_size=2, hidden_sizes=(32,), min_updates=updates, epochs=3)
    return RewardEnsemble(space, gym.spaces.Discrete(2), config=cfg, seed=seed)


def test_marks_move_the_reward_off_a_decoy_feature():
    left, right, targets = _decoy_pairs(120, 0, decoy_agrees=True)
    keep = np.array([1, 1, 1, 0], dtype=np.float32)
    plain, marked = _ensemble(), _ensemble()
    m0 = plain.fit(left, right, targets, rng=np.random.default_rng(0), marks=keep,
                   mark_weight=0.0)
    m1 = marked.fit(left, right, targets, rng=np.random.default_rng(0), marks=keep,
                    mark_weight=DEFAULT_MARK_WEIGHT)
    assert m1["mark_share"] < 0.5 * m0["mark_share"], (m0["mark_share"], m1["mark_share"])
    # where the decoy points the other way, the marked reward still follows feature 0
    tl, tr, tt = _decoy_pairs(80, 1, decoy_agrees=False)
    test = tl + tr
    assert marked.feature_share(test, keep) < plain.feature_share(test, keep)

    def accuracy(ens) -> float:
        s = ens.segment_scores(test).mean(0)
        return float(np.mean((s[:80] > s[80:]) == (np.array(tt) > 0.5)))

    assert accuracy(marked) > accuracy(plain) + 0.3 and accuracy(marked) > 0.65


def test_without_marks_the_fit_is_bitwise_unchanged():
    left, right, targets = _decoy_pairs(40, 2, decoy_agrees=True)

    def weights(**marks) -> dict[str, torch.Tensor]:
        ens = _ensemble()
        metrics = ens.fit(left, right, targets, rng=np.random.default_rng(3), **marks)
        return {"state": ens.state_dict(), "loss": metrics["train_loss"]}

    base = weights()
    for marks in ({"marks": np.array([1, 0, 0, 0]), "mark_weight": 0.0},
                  {"marks": np.ones(4), "mark_weight": 10.0}):  # the penalty runs, and is 0
        other = weights(**marks)
        assert other["loss"] == base["loss"]
        assert all(torch.equal(other["state"][k], v) for k, v in base["state"].items())


def test_the_ensemble_checks_the_marks():
    left, right, targets = _decoy_pairs(4, 3, decoy_agrees=True)
    with pytest.raises(UserInputError, match="mask of 4 values"):
        _ensemble(updates=5).fit(left, right, targets, marks=np.ones(3), mark_weight=1.0)
    per_pair = np.tile([1.0, 0, 0, 0], (4, 1))
    metrics = _ensemble(updates=5).fit(left, right, targets, marks=per_pair, mark_weight=1.0)
    assert 0 <= metrics["mark_share"] <= 1


# ----------------------------------------------------------------------------- distractors


def test_time_and_drift_distractors():
    from rlhf_hgt.envs import DistractorWrapper, make_env
    from rlhf_hgt.envs.wrappers import add_distractors

    env = DistractorWrapper(make_env("Pendulum-v1"), k=2, kind="time", scale=1.0)
    obs, _ = env.reset(seed=0)
    times = [obs[3:]]
    for _ in range(100):
        obs, *_ = env.step(env.action_space.sample())
        times.append(obs[3:])
    times = np.array(times)
    assert env.horizon == 200 and times.shape == (101, 2)
    assert np.corrcoef(np.arange(101), times[:, 0])[0, 1] > 0.7  # time in episode
    assert times[-20:].mean() > times[:20].mean() + 0.3  # 0 -> 0.5 over half the horizon
    obs, _ = env.reset(seed=1)
    assert abs(obs[3:]).max() < 0.5  # restarts with the episode

    drift = DistractorWrapper(make_env("Pendulum-v1"), k=1, kind="drift", drift_steps=50)
    drift.reset(seed=0)
    for _ in range(100):
        obs, *_ = drift.step(drift.action_space.sample())
    obs, _ = drift.reset(seed=0)
    assert obs[3] > 1.5  # 100 steps of 1/50 each: a drift is never reset

    both = add_distractors(make_env("CartPole-v1"), "noise:2,time:1,drift:1")
    assert both.observation_space.shape == (8,)
    assert both.reset(seed=0)[0].shape == (8,)
    assert add_distractors(make_env("CartPole-v1"), None).observation_space.shape == (4,)
    with pytest.raises(ValueError, match="--distractors gaze:2"):
        add_distractors(make_env("CartPole-v1"), "gaze:2")
    # the default kind is unchanged: fresh noise every step
    plain = DistractorWrapper(make_env("CartPole-v1"), k=3, seed=4)
    assert plain.kind == "noise"


# ----------------------------------------------------------------------------- the command


def _control_here(capsys, *args: str) -> tuple[int, str]:
    from rlhf_hgt.cli import main

    capsys.readouterr()
    code = main(["control", *args])
    return code, capsys.readouterr().err


def test_a_tiny_run_with_feature_marks_records_them(tmp_path: Path, capsys):
    from rlhf_hgt.feedback.store import PreferenceStore

    out = tmp_path / "marks"
    code, err = _control_here(capsys, "CartPole-v1", "--distractors", "noise:1,time:1",
                              "--feature-marks", "0-3", "--mark-weight", "5", "--labels", "12",
                              "--timesteps", "512", "--rounds", "1", "--out", str(out), *TINY)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["feature_marks"] == [0, 1, 2, 3] and metrics["mark_weight"] == 5.0
    assert 0 <= metrics["mark_share"] <= 1 and metrics["distractors"] == "noise:1,time:1"
    assert "reward_mark_share" in metrics["history"][-1]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["feature_marks"] == "0-3"
    assert manifest["config"]["mark_weight"] == 5.0
    with PreferenceStore(out / "feedback.db", create=False) as store:
        queries = list(store.queries())
        assert queries and all(q.env_id == "CartPole-v1+distractors(noise:1,time:1)"
                               for q in queries)
        assert queries[0].left["obs"].shape[1] == 6


@pytest.mark.parametrize("args, message", [
    (["--feature-marks", "0,x"], "--feature-marks 0,x: 'x' is not a feature index"),
    (["--feature-marks", "0,9"],
     "--feature-marks 0,9: feature 9 is out of range: the observation of CartPole-v1 has 4"),
    (["--feature-marks", "0", "--algo", "dpo"], "--algo dpo has none"),
    (["--mark-weight", "2"], "give --feature-marks too"),
    (["--distractors", "gaze:2"], "--distractors gaze:2"),
    (["--marker", "0-9"], "--marker 0-9: feature 4 is out of range"),
    (["--marker", "0-1:noise=2"], "noise=P with P in [0, 1]"),
    (["--marker", "0-1", "--teacher", "human"], "give a synthetic --teacher"),
])
def test_bad_marks_exit_2_naming_the_flag(tmp_path, capsys, args, message):
    out = tmp_path / "bad"
    code, err = _control_here(capsys, "CartPole-v1", *args, "--out", str(out))
    assert code == 2, err
    assert message in err and err.startswith("rlhf-hgt: error:")
    assert "Traceback" not in err and not (out / "metrics.json").exists()


# ----------------------------------------------------------------------------- per-pair marks
# and response times, read back from the store


def _segment_store(tmp_path: Path, n: int = 8, features: int = 4):
    from rlhf_hgt.feedback.store import PreferenceStore

    rng = np.random.default_rng(0)
    store = PreferenceStore(tmp_path / "s.db")
    pairs = [tuple({"obs": rng.normal(size=(5, features)).astype(np.float32),
                    "actions": np.zeros(5, np.int64),
                    "true_rewards": rng.normal(size=5)} for _ in range(2)) for _ in range(n)]
    ids = store.add_segment_queries(pairs, env_id="Toy-v0")
    return store, ids


def test_stored_labels_take_marks_given_per_pair_and_times(tmp_path):
    from rlhf_hgt.control.labels import stored_labels

    store, ids = _segment_store(tmp_path)
    answers = ["left", "right", "tie", "left", "skip", "right", "left", "left"]
    saved = store.record_answers(list(zip(ids, answers, strict=True)), "ann",
                                 seconds=[1.0, 2.0, 3.0, 4.0, 9.0, 5.0, 6.0, 7.0])
    store.record_reasons(saved[1], {"features": [2]})
    store.record_reasons(saved[3], {"features": []})  # the person looked and marked none
    plain = stored_labels(store, ControlConfig("Toy-v0", "o"))
    assert len(plain) == 7 and plain.weights is None  # the skip is left out
    assert plain.marks is not None and plain.mark_weight == DEFAULT_MARK_WEIGHT
    np.testing.assert_array_equal(plain.marks[1], [0, 0, 1, 0])  # the pair's own marks
    np.testing.assert_array_equal(plain.marks[0], [1, 1, 1, 1])  # unmarked: no penalty
    np.testing.assert_array_equal(plain.marks[3], [1, 1, 1, 1])
    assert plain.summary == {"marked_pairs": 1}
    # with --feature-marks the task's marks stand where a pair has none of its own
    task = np.array([1, 1, 0, 0], np.float32)
    both = stored_labels(store, ControlConfig("Toy-v0", "o", feature_marks="0-1",
                                              mark_weight=3.0), task)
    np.testing.assert_array_equal(both.marks[0], task)
    np.testing.assert_array_equal(both.marks[1], [0, 0, 1, 0])
    assert both.mark_weight == 3.0
    # time weighting: ranks within the annotator (the skip's 9 s is not among them)
    timed = stored_labels(store, ControlConfig("Toy-v0", "o", time_weighting=True))
    np.testing.assert_allclose(timed.weights, 1 - 0.8 * np.arange(7) / 6)
    np.testing.assert_allclose(timed.targets, [1, 0, 0.5, 1, 0, 1, 1])
    soft = stored_labels(store, ControlConfig("Toy-v0", "o", time_weighting=True,
                                              time_weighting_mode="soft", time_floor=0.0))
    assert soft.weights is not None and (soft.weights == 1).all()
    np.testing.assert_allclose(soft.targets[[0, 1, 6]], [1.0, 0.5 - 0.5 * 5 / 6, 0.5])
    assert soft.summary["time_weighting"]["timed_pairs"] == 7
    store.close()


def test_marks_for_features_the_clips_do_not_have_are_refused(tmp_path):
    from rlhf_hgt.control.labels import stored_labels

    store, ids = _segment_store(tmp_path, n=2)
    (aid,) = store.record_answers([(ids[0], "left")], "ann")
    store.record_reasons(aid, {"features": [7]})
    with pytest.raises(UserInputError, match=r"marks features \[7\], but the observation has 4"):
        stored_labels(store, ControlConfig("Toy-v0", "o"))
    store.close()


def test_time_weighting_config_checks():
    with pytest.raises(UserInputError, match="--algo dpo has none"):
        ControlConfig("CartPole-v1", "o", algo="dpo", time_weighting=True)
    with pytest.raises(UserInputError, match="--time-floor"):
        ControlConfig("CartPole-v1", "o", time_weighting=True, time_floor=2.0)


def test_a_tiny_run_with_time_weighting_and_the_ddm_teacher(tmp_path: Path, capsys):
    out = tmp_path / "timed"
    code, err = _control_here(capsys, "CartPole-v1", "--teacher", "ddm", "--time-weighting",
                              "--labels", "12", "--timesteps", "512", "--rounds", "1",
                              "--out", str(out), *TINY)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    tw = metrics["time_weighting"]
    cards = list(out.rglob("README.md"))  # a model card beside every saved model
    assert cards and all(c.read_text().startswith("---\n") for c in cards)
    assert tw["mode"] == "weight" and tw["timed_pairs"] == tw["pairs"] == metrics["labels"]
    assert tw["confidence_min"] == pytest.approx(0.2) and 0.2 < tw["confidence_mean"] < 1


def test_the_synthetic_marker_marks_the_features_with_noise_of_its_own():
    from rlhf_hgt.feedback.teachers import SyntheticMarker

    exact = SyntheticMarker((0, 2), 6)
    assert [exact.mark() for _ in range(3)] == [[0, 2]] * 3
    noisy = SyntheticMarker((0, 1, 2, 3), 6, noise=0.25, seed=1)
    marks = [noisy.mark() for _ in range(2000)]
    flipped = np.mean([(0 not in m) + (4 in m) for m in marks]) / 2
    assert 0.2 < flipped < 0.3  # each feature flipped with probability 0.25
    assert all(m for m in marks)  # never an empty mark
    again = SyntheticMarker((0, 1, 2, 3), 6, noise=0.25, seed=1)
    assert [again.mark() for _ in range(2000)] == marks  # its own stream, repeatable
    with pytest.raises(ValueError):
        SyntheticMarker((7,), 6)


def test_a_tiny_run_with_the_synthetic_marker_stores_and_uses_its_marks(tmp_path, capsys):
    from rlhf_hgt.feedback.store import PreferenceStore

    out = tmp_path / "marker"
    code, err = _control_here(capsys, "CartPole-v1", "--distractors", "noise:2",
                              "--marker", "0-3:noise=0.1", "--labels", "12",
                              "--timesteps", "512", "--rounds", "1", "--out", str(out), *TINY)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    with PreferenceStore(out / "feedback.db", create=False) as store:
        reasons = store.reasons()
        answered = [a.id for a in store.answers() if a.answer in ("left", "right")]
    assert answered and sorted(reasons) == sorted(answered)  # one mark per left/right answer
    assert all(set(r["features"]) <= set(range(6)) for r in reasons.values())
    assert metrics["marked_pairs"] == len(answered)  # the fit used them
    assert 0 <= metrics["mark_share"] <= 1
