"""DPO for control policies (rlhf_hgt.control.policy_dpo) and LoRA adapters (control.lora).

Preferences come from the env's own reward (oracle: the higher sum of true_rewards wins)
on clips of a scripted controller mixed with random actions, so a policy that learns
from them must put more probability on the controller-like actions."""

from __future__ import annotations

import base64
import copy
import json
import os
import pickle
import zipfile

import gymnasium as gym
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from stable_baselines3 import A2C, PPO, SAC

from rlhf_hgt.control import lora
from rlhf_hgt.control.policy_dpo import (
    PolicyDPOConfig,
    _batch_loss,
    _log_probs_no_grad,
    _pack,
    _split,
    action_log_prob,
    dpo_loss,
    frozen_reference,
    train_policy_dpo,
)
from rlhf_hgt.feedback.errors import UserInputError
from rlhf_hgt.preference import preference_loss

torch.set_num_threads(1)
def small() -> dict:
    """Fresh each time: SB3 adds keys to the policy_kwargs dict it is given."""
    return {"net_arch": [32, 32]}


# --------------------------------------------------------------------------- data


def _segment(obs, actions, rewards) -> dict[str, np.ndarray]:
    return {"obs": np.asarray(obs, np.float32), "actions": np.asarray(actions),
            "true_rewards": np.asarray(rewards, np.float32)}


def _oracle(left, right) -> tuple:
    d = left["true_rewards"].sum() - right["true_rewards"].sum()
    return left, right, 1.0 if d > 0 else 0.0 if d < 0 else 0.5


def cartpole_prefs(n_pairs: int, seed: int, max_len: int = 40) -> list[tuple]:
    """Episodes (capped) of 'push towards the fall' with a per-episode share of random
    actions; longer episodes earn more reward."""
    rng = np.random.default_rng(seed)
    env = gym.make("CartPole-v1")
    segs = []
    for _ in range(2 * n_pairs):
        eps = rng.uniform(0, 1)
        obs, _ = env.reset(seed=int(rng.integers(1 << 30)))
        o, a, r = [], [], []
        for _ in range(max_len):
            good = int(obs[2] + 0.5 * obs[3] > 0)
            act = good if rng.random() > eps else int(rng.integers(2))
            o.append(obs)
            a.append(act)
            obs, rew, term, _, _ = env.step(act)
            r.append(rew)
            if term:
                break
        segs.append(_segment(o, np.array(a, np.int64), r))
    return [_oracle(segs[2 * i], segs[2 * i + 1]) for i in range(n_pairs)]


def pendulum_prefs(n_pairs: int, seed: int, length: int = 10) -> list[tuple]:
    """Pairs from the same start state: a PD controller with a little or a lot of noise."""
    rng = np.random.default_rng(seed)
    env = gym.make("Pendulum-v1")
    prefs = []
    for _ in range(n_pairs):
        start = int(rng.integers(1 << 30))
        pair = []
        for noise in (rng.uniform(0, 0.3), rng.uniform(0.7, 1.0)):
            obs, _ = env.reset(seed=start)
            o, a, r = [], [], []
            for _ in range(length):
                pd = np.clip(-10 * np.arctan2(obs[1], obs[0]) - obs[2], -2, 2)
                act = float(np.clip((1 - noise) * pd + noise * rng.uniform(-2, 2), -2, 2))
                o.append(obs)
                a.append([act])
                obs, rew, _, _, _ = env.step(np.array([act], np.float32))
                r.append(rew)
            pair.append(_segment(o, np.array(a, np.float32), r))
        if rng.random() < 0.5:
            pair.reverse()
        prefs.append(_oracle(*pair))
    return prefs


@pytest.fixture(scope="module")
def cart_prefs() -> list[tuple]:
    return cartpole_prefs(200, seed=0)


@pytest.fixture(scope="module")
def pend_prefs() -> list[tuple]:
    return pendulum_prefs(160, seed=0)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict, module: torch.nn.Module) -> list[str]:
    after = module.state_dict()
    return [k for k in before if not torch.equal(before[k], after[k])]


def _mean_logratio(policy, ref, prefs, chosen: bool) -> float:
    """Mean per-step log pi - log pi_ref over the chosen (or rejected) sides."""
    segs = [(l_ if t > 0.5 else r_) if chosen else (r_ if t > 0.5 else l_)
            for l_, r_, t in prefs if t != 0.5]
    obs = torch.as_tensor(np.concatenate([s["obs"] for s in segs]))
    acts = torch.as_tensor(np.concatenate([s["actions"] for s in segs]))
    if isinstance(policy.action_space, gym.spaces.Box):
        acts = acts.float()
    with torch.no_grad():
        return float((action_log_prob(policy, obs, acts) - action_log_prob(ref, obs, acts))
                     .mean())


# --------------------------------------------------------------------------- DPO


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_dpo_learns_oracle_preferences(env_id, cart_prefs, pend_prefs):
    prefs = cart_prefs if env_id == "CartPole-v1" else pend_prefs
    model = PPO("MlpPolicy", env_id, n_steps=64, batch_size=32, seed=0, device="cpu",
                policy_kwargs=small())
    policy = model.policy
    ref = frozen_reference(model)
    ref_before = _snapshot(ref)
    actor_before = (_snapshot(policy.mlp_extractor.policy_net), _snapshot(policy.action_net))
    critic_before = (_snapshot(policy.mlp_extractor.value_net), _snapshot(policy.value_net))
    cfg = PolicyDPOConfig(alpha=0.5, lr=3e-3, epochs=15, batch_size=32, holdout_fraction=0.25)

    metrics = train_policy_dpo(model, prefs, cfg, rng=0, reference=ref)

    assert 0.15 * len(prefs) < metrics["n_holdout"] < 0.35 * len(prefs)
    assert metrics["holdout_accuracy_before"] == 0.5  # policy == reference: scores all 0
    assert metrics["holdout_accuracy"] > 0.8
    assert metrics["loss_curve"][-1] < metrics["loss_curve"][0] - 0.1
    assert metrics["holdout_loss"] < metrics["holdout_loss_before"]
    assert metrics["logratio_chosen"] > metrics["logratio_rejected"]
    json.dumps(metrics)  # JSON-ready
    # preferred actions gained probability relative to the reference, rejected ones lost
    assert _mean_logratio(policy, ref, prefs, chosen=True) > \
        _mean_logratio(policy, ref, prefs, chosen=False) + 0.05
    # the actor moved, the critic and the reference did not
    assert _changed(actor_before[0], policy.mlp_extractor.policy_net)
    assert _changed(actor_before[1], policy.action_net)
    assert not _changed(critic_before[0], policy.mlp_extractor.value_net)
    assert not _changed(critic_before[1], policy.value_net)
    assert not _changed(ref_before, ref)
    assert not any(p.requires_grad for p in ref.parameters())


def test_default_reference_is_a_frozen_copy_and_value_head_untouched(cart_prefs):
    model = A2C("MlpPolicy", "CartPole-v1", n_steps=8, seed=1, device="cpu", policy_kwargs=small())
    value_before = _snapshot(model.policy.value_net)
    model.policy.set_training_mode(False)
    metrics = train_policy_dpo(model.policy, cart_prefs[:60], PolicyDPOConfig(epochs=2), rng=3)
    assert metrics["n_train"] + metrics["n_holdout"] == 60
    assert not _changed(value_before, model.policy.value_net)
    assert model.policy.training is False  # the mode it had before


def test_stable_split_keeps_pairs_on_their_side(cart_prefs):
    cfg = PolicyDPOConfig(holdout_fraction=0.25)
    rng = np.random.default_rng(0)
    train_a, hold_a = _split(cart_prefs[:120], cfg, rng)
    train_b, hold_b = _split(cart_prefs, cfg, rng)
    assert set(hold_a) <= set(hold_b) and set(train_a) <= set(train_b)
    assert 0 < len(hold_a) < 120
    random_cfg = PolicyDPOConfig(holdout_fraction=0.25, stable_split=False)
    _, hold_r = _split(cart_prefs, random_cfg, rng)
    assert len(hold_r) == 50
    assert len(_split(cart_prefs[:2], random_cfg, rng)[1]) == 1


def test_dpo_loss_is_the_shared_core_and_conservative_bias():
    s_l = torch.tensor([0.3, -1.0, 2.0, 0.0])
    s_r = torch.tensor([-0.2, 0.5, 2.5, 1.0])
    t = torch.tensor([1.0, 0.0, 0.5, 1.0])
    plain = dpo_loss(s_l, s_r, t).mean()
    assert torch.allclose(plain, preference_loss(s_l, s_r, t), atol=1e-6)
    noisy = dpo_loss(s_l, s_r, t, noise=0.1).mean()
    assert torch.allclose(noisy, preference_loss(s_l, s_r, t, noise=0.1), atol=1e-6)
    # lambda < 1 scales the rejected score: for a strict left preference
    lam = dpo_loss(s_l[:1], s_r[:1], t[:1], conservative_lambda=0.5)
    assert torch.allclose(lam, preference_loss(s_l[:1], 0.5 * s_r[:1], t[:1]), atol=1e-6)
    assert not torch.allclose(lam, dpo_loss(s_l[:1], s_r[:1], t[:1]))


def test_batch_scores_match_a_per_segment_loop():
    """Flat packing of segments of different lengths, discounting and BC, checked by hand."""
    prefs = cartpole_prefs(8, seed=5, max_len=30)
    model = PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, seed=2, device="cpu",
                policy_kwargs=small())
    ref = frozen_reference(model)
    with torch.no_grad():  # make the policy differ from its reference
        for p in model.policy.action_net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    cfg = PolicyDPOConfig(alpha=0.7, discount=0.9, bc_weight=0.25, conservative_lambda=0.8)
    packed = _pack(prefs, model.policy, cfg.discount)
    assert len({len(s["obs"]) for p in prefs for s in p[:2]}) > 2  # lengths differ
    ref_lp = _log_probs_no_grad(ref, packed)
    got = _batch_loss(model.policy, ref_lp, packed, np.arange(len(prefs)), cfg)

    def score_and_lp(seg):
        obs = torch.as_tensor(seg["obs"])
        act = torch.as_tensor(seg["actions"])
        lp = action_log_prob(model.policy, obs, act)
        w = cfg.discount ** torch.arange(len(obs), dtype=torch.float32)
        return cfg.alpha * (w * (lp - action_log_prob(ref, obs, act))).sum(), lp

    losses, bc_num, bc_den = [], 0.0, 0.0
    for left, right, t in prefs:
        (sl, lpl), (sr, lpr) = score_and_lp(left), score_and_lp(right)
        lam = cfg.conservative_lambda
        losses.append(-t * torch.nn.functional.logsigmoid(sl - lam * sr)
                      - (1 - t) * torch.nn.functional.logsigmoid(sr - lam * sl))
        bc_num = bc_num - t * lpl.sum() - (1 - t) * lpr.sum()
        bc_den += t * len(lpl) + (1 - t) * len(lpr)
    want = torch.stack(losses).mean() + cfg.bc_weight * bc_num / bc_den
    assert torch.allclose(got, want, atol=1e-5)


def test_conservative_and_bc_options_still_learn(pend_prefs):
    model = PPO("MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=32, seed=3, device="cpu",
                policy_kwargs=small())
    cfg = PolicyDPOConfig(alpha=0.5, lr=3e-3, epochs=10, conservative_lambda=0.5,
                          bc_weight=0.1, discount=0.95)
    metrics = train_policy_dpo(model, pend_prefs, cfg, rng=1)
    assert metrics["holdout_accuracy"] > 0.75
    assert metrics["logratio_chosen"] > 0  # chosen actions rose above the reference


def test_dpo_trains_only_lora_adapters(cart_prefs):
    model = PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, seed=4, device="cpu",
                policy_kwargs=small())
    lora.apply_lora(model, r=4, alpha=8)
    before = _snapshot(model.policy)
    metrics = train_policy_dpo(model, cart_prefs, PolicyDPOConfig(alpha=0.5, lr=1e-2, epochs=8),
                               rng=2)
    changed = _changed(before, model.policy)
    assert changed and all(".lora_" in k for k in changed)
    assert metrics["holdout_accuracy"] > 0.7


def test_dpo_on_sac_trains_the_actor_only(pend_prefs):
    model = SAC("MlpPolicy", "Pendulum-v1", seed=0, device="cpu", policy_kwargs=small(),
                buffer_size=100)
    critic = _snapshot(model.policy.critic)
    actor = _snapshot(model.policy.actor)
    metrics = train_policy_dpo(model, pend_prefs[:60], PolicyDPOConfig(lr=1e-3, epochs=3), rng=0)
    assert _changed(actor, model.policy.actor) and not _changed(critic, model.policy.critic)
    assert np.isfinite(metrics["loss_last"])


@pytest.mark.parametrize("field,value", [
    ("alpha", 0.0), ("lr", -1.0), ("epochs", 0), ("batch_size", 0), ("discount", 0.0),
    ("conservative_lambda", 1.5), ("bc_weight", -0.1), ("label_noise", 1.0),
    ("max_grad_norm", 0.0), ("holdout_fraction", 1.0)])
def test_config_checks(field, value):
    with pytest.raises(ValueError, match=field):
        PolicyDPOConfig(**{field: value})


def test_every_lora_setting_has_help():
    from dataclasses import fields

    assert [f.name for f in fields(lora.PolicyLoraConfig)
            if len(f.metadata.get("help", "")) < 10] == []


def test_bad_preferences_are_user_errors(cart_prefs):
    model = PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, device="cpu",
                policy_kwargs=small())
    left, right, _ = cart_prefs[0]
    bad_obs = dict(left, obs=left["obs"][:, :2])
    cases = [
        ([], "no preferences"),
        ([(left, right, 2.0)], "target"),
        ([(left, right, "left")], "target"),
        ([(bad_obs, right, 1.0)], r"preference 0 \(left\): field 'obs'"),
        ([(left, dict(right, actions=right["actions"][:-1]), 1.0)], "actions"),
        ([(left, dict(right, actions=right["actions"] + 5), 1.0)], "outside"),
        ([(left, {"obs": right["obs"]}, 1.0)], "dict with 'obs' and 'actions'"),
    ]
    for prefs, msg in cases:
        with pytest.raises(UserInputError, match=msg):
            train_policy_dpo(model, prefs, rng=0)
    from stable_baselines3 import DQN

    dqn = DQN("MlpPolicy", "CartPole-v1", device="cpu", buffer_size=100)
    with pytest.raises(ValueError, match="deterministic"):
        train_policy_dpo(dqn, cart_prefs[:4])


# --------------------------------------------------------------------------- LoRA


def _base(env_id: str, algo=PPO, seed: int = 0):
    kwargs = {"n_steps": 64, "batch_size": 32, "n_epochs": 2} if algo is PPO else {"n_steps": 8}
    return algo("MlpPolicy", env_id, seed=seed, device="cpu", policy_kwargs=small(), **kwargs)


def _lora_params(policy) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in policy.named_parameters() if ".lora_" in n}


@pytest.mark.parametrize("env_id,algo,target", [
    ("CartPole-v1", PPO, "actor"), ("Pendulum-v1", PPO, "all"), ("CartPole-v1", A2C, "all")])
def test_lora_learn_trains_adapters_only(env_id, algo, target):
    model = _base(env_id, algo)
    obs = torch.as_tensor(np.stack([model.observation_space.sample() for _ in range(16)]))
    acts = torch.as_tensor(np.stack([model.action_space.sample() for _ in range(16)]))
    with torch.no_grad():
        lp_before = model.policy.get_distribution(obs).log_prob(acts)
    assert lora.apply_lora(model, r=4, alpha=8, target=target) is model
    policy = model.policy
    with torch.no_grad():  # LoRA starts as the identity
        assert torch.equal(policy.get_distribution(obs).log_prob(acts), lp_before)
    base = {n: p.detach().clone() for n, p in policy.named_parameters() if ".lora_" not in n}
    adapters = _lora_params(policy)
    assert base and adapters
    assert not any(p.requires_grad for n, p in policy.named_parameters() if n in base)
    assert all(p.requires_grad for n, p in policy.named_parameters() if n in adapters)
    opt_params = {id(p) for g in policy.optimizer.param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in policy.parameters() if p.requires_grad}
    value_adapted = any(n.startswith("value_net.lora_") for n in adapters)
    assert value_adapted == (target == "all")

    model.learn(256)

    params = dict(policy.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in base.items())
    assert any(not torch.equal(params[n], v) for n, v in adapters.items())


def test_save_and_load_adapter_reproduces_the_policy(tmp_path):
    base = _base("Pendulum-v1")
    base.save(tmp_path / "base.zip")
    model = lora.load_sb3_checkpoint(tmp_path / "base.zip", "Pendulum-v1")
    lora.apply_lora(model, r=4, alpha=8, target="all")
    model.learn(128)
    out = lora.save_adapter(model, tmp_path / "alice")

    tensors = load_file(str(out / lora.ADAPTER_WEIGHTS))
    assert tensors and all(".lora_A." in k or ".lora_B." in k for k in tensors)
    assert sum(t.numel() for t in tensors.values()) < 0.5 * sum(
        p.numel() for p in base.policy.parameters())
    config = json.loads((out / lora.ADAPTER_CONFIG).read_text())
    assert config["r"] == 4 and config["target"] == "all" and config["tensors"] == sorted(tensors)
    assert sorted(os.listdir(out)) == [lora.ADAPTER_CONFIG, lora.ADAPTER_WEIGHTS]

    fresh = lora.load_sb3_checkpoint(tmp_path / "base.zip", "Pendulum-v1")
    lora.load_adapter(fresh, out)
    obs = torch.randn(64, 3)
    acts = torch.rand(64, 1) * 4 - 2
    with torch.no_grad():
        for m in (model, fresh):
            m.policy.set_training_mode(False)
        assert torch.equal(model.policy.get_distribution(obs).log_prob(acts),
                           fresh.policy.get_distribution(obs).log_prob(acts))
        assert torch.equal(model.policy.predict_values(obs), fresh.policy.predict_values(obs))
    np_obs = obs.numpy()
    assert np.array_equal(model.predict(np_obs, deterministic=True)[0],
                          fresh.predict(np_obs, deterministic=True)[0])
    assert lora.lora_settings(fresh) == lora.lora_settings(model)
    # the loaded adapter keeps training with the base frozen
    fresh.learn(64)
    assert torch.equal(fresh.policy.action_net.base_layer.weight,
                       base.policy.action_net.weight)


def test_adapter_with_value_head_and_log_std_extras(tmp_path):
    base = _base("Pendulum-v1", seed=3)
    model = copy.deepcopy(base)
    lora.apply_lora(model, r=2, alpha=4, target="actor", train_value_head=True,
                    train_log_std=True)
    model.learn(128)
    assert not torch.equal(model.policy.value_net.weight, base.policy.value_net.weight)
    assert not torch.equal(model.policy.log_std, base.policy.log_std)
    lora.save_adapter(model, tmp_path / "a")
    keys = set(load_file(str(tmp_path / "a" / lora.ADAPTER_WEIGHTS)))
    extras = {k for k in keys if ".lora_" not in k}
    assert extras == {"log_std", "value_net.weight", "value_net.bias",
                      "mlp_extractor.value_net.0.weight", "mlp_extractor.value_net.0.bias",
                      "mlp_extractor.value_net.2.weight", "mlp_extractor.value_net.2.bias"}
    fresh = copy.deepcopy(base)
    lora.load_adapter(fresh, tmp_path / "a")
    obs = torch.randn(32, 3)
    with torch.no_grad():
        assert torch.equal(model.policy.predict_values(obs), fresh.policy.predict_values(obs))
        assert torch.equal(model.policy.log_std, fresh.policy.log_std)


@pytest.mark.parametrize("kwargs,msg", [
    ({"r": 0}, "rank r"), ({"r": 2.5}, "rank r"), ({"alpha": 0}, "alpha"),
    ({"dropout": 1.0}, "dropout"), ({"target": "critic"}, "target"),
    ({"target": ["mlp_extractor.value_net"]}, "not a Linear"),
    ({"target": ["no_such_layer"]}, "not a Linear"),
    ({"target": "all", "train_value_head": True}, "train_value_head"),
    ({"target": ["action_net", "value_net"], "train_value_head": True}, "train_value_head"),
])
def test_lora_bad_settings(kwargs, msg):
    model = _base("CartPole-v1")
    with pytest.raises(ValueError, match=msg):
        lora.apply_lora(model, **kwargs)
    assert not any(".lora_" in n for n, _ in model.policy.named_parameters())


def test_lora_refuses_twice_discrete_log_std_and_non_actor_critic():
    model = _base("CartPole-v1")
    with pytest.raises(ValueError, match="log_std"):
        lora.apply_lora(model, train_log_std=True)
    lora.apply_lora(model, r=2, target=["action_net"])
    assert [n for n, _ in model.policy.named_parameters() if ".lora_" in n] == [
        "action_net.lora_A.default.weight", "action_net.lora_B.default.weight"]
    with pytest.raises(ValueError, match="already has LoRA"):
        lora.apply_lora(model)
    sac = SAC("MlpPolicy", "Pendulum-v1", device="cpu", buffer_size=100, policy_kwargs=small())
    with pytest.raises(ValueError, match="actor-critic"):
        lora.apply_lora(sac)


def test_load_adapter_checks_the_base(tmp_path):
    model = _base("CartPole-v1", seed=0)
    lora.apply_lora(model, r=2, alpha=4)
    model.learn(64)
    lora.save_adapter(model, tmp_path / "a")
    other = _base("CartPole-v1", seed=1)
    with pytest.raises(UserInputError, match="base_fingerprint"):
        lora.load_adapter(other, tmp_path / "a")
    assert not any(".lora_" in n for n, _ in other.policy.named_parameters())
    lora.load_adapter(other, tmp_path / "a", check_base=False)
    pend = _base("Pendulum-v1")
    with pytest.raises(UserInputError, match="observation_shape"):
        lora.load_adapter(pend, tmp_path / "a")
    cfg_path = tmp_path / "a" / lora.ADAPTER_CONFIG
    cfg_path.write_text("{not json")
    with pytest.raises(UserInputError, match="line 1"):
        lora.load_adapter(_base("CartPole-v1"), tmp_path / "a")
    with pytest.raises(UserInputError, match="no adapter config"):
        lora.load_adapter(_base("CartPole-v1"), tmp_path / "missing")


def test_merge_lora_gives_a_plain_sb3_model(tmp_path):
    model = _base("CartPole-v1")
    lora.apply_lora(model, r=4, alpha=8, target="all")
    with torch.no_grad():  # a visible adapter update
        for n, p in model.policy.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.1)
    obs = torch.randn(32, 4)
    with torch.no_grad():
        probs = model.policy.get_distribution(obs).distribution.probs
    lora.merge_lora(model)
    assert not any(".lora_" in n for n, _ in model.policy.named_parameters())
    assert not hasattr(model.policy, "peft_config") and lora.lora_settings(model) is None
    assert type(model.policy.action_net) is torch.nn.Linear
    assert all(p.requires_grad for p in model.policy.parameters())
    with torch.no_grad():
        assert torch.allclose(model.policy.get_distribution(obs).distribution.probs, probs,
                              atol=1e-5)
    model.save(tmp_path / "merged.zip")
    again = lora.load_sb3_checkpoint(tmp_path / "merged.zip", "CartPole-v1")
    with torch.no_grad():
        assert torch.allclose(again.policy.get_distribution(obs).distribution.probs, probs,
                              atol=1e-5)
    with pytest.raises(ValueError, match="no LoRA"):
        lora.merge_lora(model)


# --------------------------------------------------------------------------- safe loading


class _Payload:
    """What a hostile checkpoint could hide in SB3's cloudpickled JSON fields."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return os.mkdir, (self.target,)


def test_safe_loader_never_unpickles(tmp_path):
    _base("CartPole-v1").save(tmp_path / "ok.zip")
    marker = tmp_path / "payload_ran"
    with zipfile.ZipFile(tmp_path / "ok.zip") as src:
        entries = {n: src.read(n) for n in src.namelist()}
    data = json.loads(entries["data"])
    blob = base64.b64encode(pickle.dumps(_Payload(str(marker)))).decode()
    data["extra_field"] = {":type:": "<class 'object'>", ":serialized:": blob}
    entries["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(tmp_path / "hostile.zip", "w") as dst:
        for name, raw in entries.items():
            dst.writestr(name, raw)

    model = lora.load_sb3_checkpoint(tmp_path / "hostile.zip", "CartPole-v1")
    assert not marker.exists()
    assert isinstance(model, PPO) and model.n_steps == 64
    # the risk is real: SB3's own loader runs the payload
    PPO.load(tmp_path / "hostile.zip", device="cpu")
    assert marker.exists()


def test_safe_loader_infers_architecture_and_checks_fit(tmp_path):
    src = A2C("MlpPolicy", "CartPole-v1", n_steps=8, gamma=0.95, device="cpu", seed=0,
              policy_kwargs={"net_arch": {"pi": [16], "vf": [8]},
                             "activation_fn": torch.nn.ReLU})
    src.save(tmp_path / "a2c.zip")
    model = lora.load_sb3_checkpoint(tmp_path / "a2c.zip", "CartPole-v1", algo="a2c")
    assert model.gamma == 0.95 and model.n_steps == 8
    assert model.policy.activation_fn is torch.nn.ReLU
    obs = torch.randn(16, 4)
    with torch.no_grad():
        assert torch.equal(model.policy.get_distribution(obs).distribution.probs,
                           src.policy.get_distribution(obs).distribution.probs)
    with pytest.raises(UserInputError, match="observations of shape"):
        lora.load_sb3_checkpoint(tmp_path / "a2c.zip", "Pendulum-v1", algo="a2c")
    with pytest.raises(UserInputError, match="do not fit"):
        lora.load_sb3_checkpoint(tmp_path / "a2c.zip", "CartPole-v1", algo="a2c",
                                 policy_kwargs={"net_arch": [64]})
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(UserInputError, match="junk.zip"):
        lora.load_sb3_checkpoint(tmp_path / "junk.zip", "CartPole-v1")


def test_steps_padded_after_an_episode_end_are_not_scored() -> None:
    """Clips that run past a termination are padded (valid=False); no action was taken
    there, so DPO must not push the policy's probabilities on them."""
    model = PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, seed=5, device="cpu",
                policy_kwargs=small())
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(6, 4)).astype(np.float32)
    padded = {"obs": obs, "actions": np.array([1, 0, 1, 0, 0, 0]),
              "true_rewards": np.array([1, 1, 1, 0, 0, 0], np.float32),
              "valid": np.array([True, True, True, False, False, False])}
    full = {"obs": obs, "actions": np.array([1, 0, 1, 1, 1, 1]),
            "true_rewards": np.ones(6, np.float32)}
    packed = _pack([(full, padded, 1.0)], model.policy, discount=1.0)
    assert packed.lengths.tolist() == [6, 3]
    np.testing.assert_array_equal(packed.obs[6:].numpy(), obs[:3])
