"""LoRA adapters for SB3 control policies, through PEFT.

Start from a policy trained on the built-in reward (an SB3 model in memory, or a checkpoint
read with :func:`load_sb3_checkpoint`), freeze it, and adapt it to one person's preference
with low-rank adapters on its linear layers::

    model = load_sb3_checkpoint("base.zip", env)          # weights only, nothing unpickled
    apply_lora(model, r=8, alpha=16, target="all")        # base frozen, adapters trainable
    model.learn(10_000)                                   # SB3's PPO.learn as usual
    save_adapter(model, "adapters/alice")                 # a few KB: safetensors + JSON
    ...
    fresh = load_sb3_checkpoint("base.zip", env)
    load_adapter(fresh, "adapters/alice")                 # the same actions, exactly

``target="actor"`` adapts the policy MLP and action head; ``"all"`` adds the critic (the
better choice for PPO on a new reward: its value head must learn the new returns);
``train_value_head=True`` instead trains the critic in full and stores it with the adapter.

Why not ``PPO.load`` for a file someone hands us: SB3's zip holds a ``data`` JSON whose
non-JSON entries (policy class, spaces, schedules, often policy_kwargs) are cloudpickled,
and ``PPO.load`` unpickles them (``save_util.json_to_data`` calls ``cloudpickle.loads``),
which runs any code the file's author put there. Its ``.pth`` files are read with
``torch.load(weights_only=True)``, which is safe. :func:`load_sb3_checkpoint` reads only
the plain JSON values and ``policy.pth`` (weights only) into a freshly built model.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import os
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import (
    LoraConfig,
    get_peft_model_state_dict,
    inject_adapter_in_model,
    set_peft_model_state_dict,
)
from peft import __version__ as peft_version
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy

from rlhf_hgt.feedback.errors import UserInputError
from rlhf_hgt.feedback.files import write_bytes_atomic, write_json_atomic

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
FORMAT = "rlhf_hgt.policy_lora/1"
ADAPTER_NAME = "default"
_STATE_ATTR = "_rlhf_lora"


@dataclass
class PolicyLoraConfig:
    """How LoRA adapters are put on an SB3 actor-critic policy."""

    r: int = field(default=8, metadata={"help": "rank of each adapter (>= 1)"})
    alpha: float = field(default=16.0, metadata={
        "help": "LoRA scaling numerator: the update is scaled by alpha / r"})
    dropout: float = field(default=0.0, metadata={
        "help": "dropout on the adapter input; keep 0 for PPO (rollouts run in eval mode, "
                "so dropout makes the first PPO ratio differ from 1)"})
    target: str | tuple[str, ...] = field(default="actor", metadata={
        "help": "'actor' (policy MLP + action head), 'all' (critic too), or a list of "
                "Linear module names of the policy"})
    train_value_head: bool = field(default=False, metadata={
        "help": "train the critic (mlp_extractor.value_net, value_net) in full and store it "
                "with the adapter; not with target='all'"})
    train_log_std: bool = field(default=False, metadata={
        "help": "train the Gaussian policy's log_std (Box actions) and store it with the adapter"})

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or int(self.r) != self.r or self.r < 1:
            raise ValueError(f"LoRA rank r must be a whole number >= 1 (8 is a good start), "
                             f"got {self.r}")
        self.r = int(self.r)
        if not self.alpha > 0:
            raise ValueError(f"LoRA alpha must be > 0 (often 2 * r), got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LoRA dropout must lie in [0, 1), got {self.dropout}")
        if isinstance(self.target, str):
            if self.target not in ("actor", "all"):
                raise ValueError(f"target must be 'actor', 'all' or a list of Linear module "
                                 f"names, got {self.target!r}")
        else:
            self.target = tuple(self.target)
            if not self.target or not all(isinstance(t, str) for t in self.target):
                raise ValueError("target as a list must name at least one Linear module")
        if self.train_value_head and self.target == "all":
            raise ValueError("train_value_head is for target='actor'; target='all' already "
                             "adapts the critic")


# --------------------------------------------------------------------------- applying


def _policy(model: Any) -> ActorCriticPolicy:
    policy = getattr(model, "policy", model)
    if not isinstance(policy, ActorCriticPolicy):
        raise ValueError(f"LoRA here needs an SB3 actor-critic policy (PPO or A2C), got "
                         f"{type(policy).__name__}")
    return policy


def _linear_names(module: torch.nn.Module, prefix: str) -> list[str]:
    return [f"{prefix}.{n}" if n else prefix for n, m in module.named_modules()
            if isinstance(m, torch.nn.Linear)]


def lora_target_modules(model: Any, target: str | Sequence[str] = "actor") -> list[str]:
    """The policy's Linear module names that ``target`` selects (checked)."""
    policy = _policy(model)
    if isinstance(target, str):
        if target not in ("actor", "all"):
            raise ValueError(f"target must be 'actor', 'all' or a list of Linear module names,"
                             f" got {target!r}")
        names = (_linear_names(policy.mlp_extractor.policy_net, "mlp_extractor.policy_net")
                 + _linear_names(policy.action_net, "action_net"))
        if target == "all":
            names += (_linear_names(policy.mlp_extractor.value_net, "mlp_extractor.value_net")
                      + _linear_names(policy.value_net, "value_net"))
        return names
    modules = dict(policy.named_modules())
    linear = sorted(n for n, m in modules.items() if isinstance(m, torch.nn.Linear))
    for name in target:
        if not isinstance(modules.get(name), torch.nn.Linear):
            raise ValueError(f"LoRA target {name!r} is not a Linear layer of this policy; "
                             f"choose from {linear}")
    return list(dict.fromkeys(target))


def _value_head_names(policy: ActorCriticPolicy) -> list[str]:
    return [f"mlp_extractor.value_net.{n}" for n, _ in
            policy.mlp_extractor.value_net.named_parameters()] + \
           [f"value_net.{n}" for n, _ in policy.value_net.named_parameters()]


def _base_state(policy: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The policy's own weights under their original names (adapters left out)."""
    out = {}
    for name, t in policy.state_dict().items():
        if ".lora_" in name:
            continue
        out[name.replace(".base_layer.", ".")] = t
    return out


def base_fingerprint(model: Any) -> str:
    """sha256 of the base policy's weights (names, dtypes, shapes, bytes), adapters excluded."""
    policy = _policy(model)
    info = getattr(policy, _STATE_ATTR, None)
    if info is not None:
        return info["base_fingerprint"]
    h = hashlib.sha256()
    for name, t in sorted(_base_state(policy).items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _rebuild_optimizer(model: Any, policy: ActorCriticPolicy) -> None:
    """SB3's optimizer over the trainable parameters only (frozen ones never reach Adam)."""
    schedule = getattr(model, "lr_schedule", None)
    lr = schedule(1.0) if callable(schedule) else policy.optimizer.param_groups[0]["lr"]
    params = [p for p in policy.parameters() if p.requires_grad]
    policy.optimizer = policy.optimizer_class(params, lr=lr, **policy.optimizer_kwargs)


def lora_settings(model: Any) -> PolicyLoraConfig | None:
    """The settings a model's adapters were applied with, or None when it has none."""
    info = getattr(_policy(model), _STATE_ATTR, None)
    return None if info is None else PolicyLoraConfig(**info["settings"])


def apply_lora(model: Any, r: int = 8, alpha: float = 16.0, dropout: float = 0.0,
               target: str | Sequence[str] = "actor", *, train_value_head: bool = False,
               train_log_std: bool = False) -> Any:
    """Put PEFT LoRA adapters on the policy's Linear layers, in place; returns ``model``.

    All base weights are frozen (features extractor, critic and log_std too, unless
    ``train_value_head`` / ``train_log_std``); adapters start as the identity (LoRA's B is
    zero), so the policy acts exactly as before. The SB3 optimizer is rebuilt over the
    trainable parameters, so ``model.learn`` trains the adapters only. A model with adapters
    saves through :func:`save_adapter` (or :func:`merge_lora` first for a plain SB3 save)."""
    cfg = PolicyLoraConfig(r=r, alpha=alpha, dropout=dropout,
                           target=target if isinstance(target, str) else tuple(target),
                           train_value_head=train_value_head, train_log_std=train_log_std)
    policy = _policy(model)
    if getattr(policy, _STATE_ATTR, None) is not None or any(
            isinstance(m, BaseTunerLayer) for m in policy.modules()):
        raise ValueError("this policy already has LoRA adapters: merge_lora() them first or "
                         "start from a fresh base")
    if train_log_std and not isinstance(getattr(policy, "log_std", None), torch.nn.Parameter):
        raise ValueError("train_log_std needs a Gaussian policy (Box actions) with a log_std")
    names = lora_target_modules(policy, cfg.target)
    value_layers = {n.rsplit(".", 1)[0] for n in _value_head_names(policy)}
    if cfg.train_value_head and value_layers & set(names):
        raise ValueError(f"train_value_head trains the critic in full; leave its layers "
                         f"{sorted(value_layers & set(names))} out of the LoRA target")
    fingerprint = base_fingerprint(policy)
    # exact names (a regex that fully matches each), so e.g. 'value_net' cannot also catch
    # the Sequential 'mlp_extractor.value_net'
    pattern = "^(" + "|".join(n.replace(".", r"\.") for n in names) + ")$"
    peft_cfg = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                          target_modules=pattern, bias="none")
    inject_adapter_in_model(peft_cfg, policy, adapter_name=ADAPTER_NAME)
    adapter_ids = {id(p) for n, p in policy.named_parameters() if ".lora_" in n}
    for p in policy.parameters():  # PEFT froze all but the adapters; keep it so explicitly
        p.requires_grad_(id(p) in adapter_ids)
    extras = []
    if cfg.train_value_head:
        extras += _value_head_names(policy)
    if cfg.train_log_std:
        extras.append("log_std")
    params = dict(policy.named_parameters())
    for name in extras:
        params[name].requires_grad_(True)
    setattr(policy, _STATE_ATTR, {"settings": asdict(cfg), "target_modules": names,
                                  "base_fingerprint": fingerprint, "extras": extras})
    _rebuild_optimizer(model, policy)
    return model


def adapter_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """The adapter tensors (PEFT's names, e.g. ``action_net.lora_A.weight``) plus any extras
    trained in full (critic, log_std) under the policy's names."""
    policy = _policy(model)
    info = getattr(policy, _STATE_ATTR, None)
    if info is None:
        raise ValueError("this model has no LoRA adapters: call apply_lora() first")
    out = dict(get_peft_model_state_dict(policy, adapter_name=ADAPTER_NAME))
    params = dict(policy.named_parameters())
    for name in info["extras"]:
        out[name] = params[name]
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


# --------------------------------------------------------------------------- save / load


def _space_info(policy: ActorCriticPolicy) -> dict[str, Any]:
    return {"observation_shape": list(policy.observation_space.shape),
            "action_space": str(policy.action_space)}


def save_adapter(model: Any, path: str | os.PathLike) -> Path:
    """Write the adapter to the folder ``path``: ``adapter_model.safetensors`` (adapter
    tensors only, plus extras trained in full) and ``adapter_config.json``."""
    policy = _policy(model)
    tensors = adapter_state_dict(policy)
    info = getattr(policy, _STATE_ATTR)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "format": FORMAT, "peft_type": "LORA", **info["settings"],
        "target_modules": info["target_modules"], "extras": info["extras"],
        "base_fingerprint": info["base_fingerprint"], "policy_class": type(policy).__name__,
        **_space_info(policy), "tensors": sorted(tensors), "peft_version": peft_version,
    }
    if not isinstance(config["target"], str):
        config["target"] = list(config["target"])
    write_bytes_atomic(out / ADAPTER_WEIGHTS, save(tensors, metadata={"format": FORMAT}))
    write_json_atomic(out / ADAPTER_CONFIG, config)
    return out


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / ADAPTER_CONFIG
    if not path.is_file():
        raise UserInputError(f"{path}: no adapter config here; point at a folder written by "
                             f"save_adapter()")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        line = getattr(e, "lineno", 1)
        raise UserInputError(f"{path}, line {line}: not valid JSON ({e}); re-save the "
                             f"adapter") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise UserInputError(f"{path}: field 'format' must be {FORMAT!r}; this file was not "
                             f"written by save_adapter()")
    for key, kind in (("r", int), ("alpha", (int, float)), ("dropout", (int, float)),
                      ("target_modules", list), ("extras", list), ("tensors", list),
                      ("base_fingerprint", str), ("train_value_head", bool),
                      ("train_log_std", bool)):
        if not isinstance(config.get(key), kind):
            raise UserInputError(f"{path}: field {key!r} is missing or has the wrong type; "
                                 f"re-save the adapter")
    return config


def load_adapter(model: Any, path: str | os.PathLike, check_base: bool = True) -> Any:
    """Restore an adapter saved by :func:`save_adapter` onto a fresh base model, in place.

    With ``check_base`` the base weights must be the ones the adapter was trained on
    (same fingerprint); a different base would silently act differently."""
    folder = Path(path)
    config = _read_config(folder)
    policy = _policy(model)
    if getattr(policy, _STATE_ATTR, None) is not None:
        raise ValueError("this model already has LoRA adapters: load onto a fresh base")
    where = folder / ADAPTER_CONFIG
    for key, have in _space_info(policy).items():
        if config.get(key) != have:
            raise UserInputError(f"{where}: field {key!r} is {config.get(key)!r} but this "
                                 f"model has {have!r}; load the adapter onto the base it was "
                                 f"trained for")
    if check_base and config["base_fingerprint"] != base_fingerprint(policy):
        raise UserInputError(f"{where}: field 'base_fingerprint' does not match this model's "
                             f"weights: the adapter was trained on another base. Load that "
                             f"base checkpoint, or pass check_base=False to force it")
    target = config.get("target")
    if target not in ("actor", "all"):
        target = config["target_modules"]
    try:
        if lora_target_modules(policy, target) != config["target_modules"]:
            raise ValueError(f"field 'target_modules' is {config['target_modules']}, but "
                             f"target {target!r} selects other layers in this model")
        apply_lora(model, r=config["r"], alpha=config["alpha"], dropout=config["dropout"],
                   target=target,
                   train_value_head=config["train_value_head"],
                   train_log_std=config["train_log_std"])
    except ValueError as e:
        raise UserInputError(f"{where}: {e}") from None
    weights = folder / ADAPTER_WEIGHTS
    try:
        tensors = load_file(str(weights), device=str(policy.device))
    except (OSError, RuntimeError, ValueError) as e:
        _unload(model)
        raise UserInputError(f"{weights}: cannot read the adapter weights ({e})") from None
    expected = set(adapter_state_dict(policy))
    if set(tensors) != expected:
        _unload(model)
        raise UserInputError(f"{weights}: tensors {sorted(set(tensors) ^ expected)} differ "
                             f"from what the config describes; re-save the adapter")
    extras = {k: tensors.pop(k) for k in config["extras"]}
    try:
        result = set_peft_model_state_dict(policy, tensors, adapter_name=ADAPTER_NAME)
        missing = [k for k in result.missing_keys if ".lora_" in k]
        if result.unexpected_keys or missing:
            raise RuntimeError(f"missing {missing}, unexpected {result.unexpected_keys}")
        params = dict(policy.named_parameters())
        with torch.no_grad():
            for name, t in extras.items():
                if params[name].shape != t.shape:
                    raise RuntimeError(f"{name} has shape {tuple(t.shape)}, the model "
                                       f"{tuple(params[name].shape)}")
                params[name].copy_(t)
    except RuntimeError as e:
        _unload(model)
        raise UserInputError(f"{weights}: the tensors do not fit this model ({e})") from None
    return model


# --------------------------------------------------------------------------- merge / unload


def _replace_tuner_layers(policy: ActorCriticPolicy, merge: bool) -> None:
    tuners = [(n, m) for n, m in policy.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, module in tuners:
        if merge:
            module.merge(adapter_names=[ADAPTER_NAME])
        parent_name, _, child = name.rpartition(".")
        parent = policy.get_submodule(parent_name) if parent_name else policy
        setattr(parent, child, module.get_base_layer())
    if hasattr(policy, "peft_config"):
        del policy.peft_config
    if hasattr(policy, _STATE_ATTR):
        delattr(policy, _STATE_ATTR)


def _unload(model: Any) -> None:
    policy = _policy(model)
    _replace_tuner_layers(policy, merge=False)
    for p in policy.parameters():
        p.requires_grad_(True)
    _rebuild_optimizer(model, policy)


def merge_lora(model: Any) -> Any:
    """Fold the adapters into the base weights and return to plain Linear layers, in place.

    Every parameter is trainable again and the SB3 optimizer covers them all, so the model
    saves and loads as an ordinary SB3 checkpoint."""
    policy = _policy(model)
    if getattr(policy, _STATE_ATTR, None) is None:
        raise ValueError("this model has no LoRA adapters to merge")
    with torch.no_grad():
        _replace_tuner_layers(policy, merge=True)
    for p in policy.parameters():
        p.requires_grad_(True)
    _rebuild_optimizer(model, policy)
    return model


# --------------------------------------------------------------------------- safe loading

_ALGOS: dict[str, type[BaseAlgorithm]] = {"ppo": PPO, "a2c": A2C}
_ACTIVATIONS = ("Tanh", "ReLU", "LeakyReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish",
                "Sigmoid", "Softplus", "Hardtanh")
_PLAIN_HYPERPARAMS = ("gamma", "gae_lambda", "ent_coef", "vf_coef", "max_grad_norm",
                      "n_steps", "batch_size", "n_epochs", "normalize_advantage",
                      "use_rms_prop", "rms_prop_eps", "use_sde", "sde_sample_freq")


def _plain(value: Any) -> bool:
    """A value the JSON holds as itself (not a cloudpickled ':serialized:' blob)."""
    if isinstance(value, dict):
        return ":serialized:" not in value and all(_plain(v) for v in value.values())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


def _activation(text: Any) -> type[torch.nn.Module] | None:
    """torch.nn class from SB3's readable "<class 'torch.nn.modules.activation.ReLU'>"."""
    if not isinstance(text, str) or "torch.nn." not in text:
        return None
    name = text.rstrip("'>").rsplit(".", 1)[-1]
    return getattr(torch.nn, name) if name in _ACTIVATIONS else None


def _infer_net_arch(state: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    def sizes(prefix: str) -> list[int]:
        layers = sorted((int(k[len(prefix):].split(".")[0]), v.shape[0]) for k, v in
                        state.items() if k.startswith(prefix) and k.endswith(".weight"))
        return [n for _, n in layers]

    return {"pi": sizes("mlp_extractor.policy_net."), "vf": sizes("mlp_extractor.value_net.")}


def _read_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if "policy.pth" not in names:
                raise UserInputError(f"{path}: no policy.pth inside; this is not an SB3 "
                                     f"checkpoint (saved with model.save())")
            raw = archive.read("policy.pth")
            data_text = archive.read("data").decode() if "data" in names else "{}"
    except (zipfile.BadZipFile, OSError) as e:
        raise UserInputError(f"{path}: cannot open as an SB3 checkpoint zip ({e})") from None
    try:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as e:  # any failure means: not plain weights
        raise UserInputError(f"{path}: policy.pth is not a plain weights file ({e})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise UserInputError(f"{path}: policy.pth must hold a state dict of tensors")
    try:
        data = json.loads(data_text)  # plain JSON parsing; ':serialized:' blobs stay unread
    except json.JSONDecodeError as e:
        raise UserInputError(f"{path}: the 'data' entry, line {e.lineno}, is not valid JSON"
                             ) from None
    return (data if isinstance(data, dict) else {}), state


def load_sb3_checkpoint(path: str | os.PathLike, env: Any, algo: str = "ppo",
                        policy_kwargs: dict[str, Any] | None = None, device: str = "cpu",
                        **algo_kwargs: Any) -> BaseAlgorithm:
    """Build a fresh PPO/A2C ``MlpPolicy`` model on ``env`` and load a checkpoint's weights.

    Nothing in the file is unpickled: only ``policy.pth`` (``torch.load(weights_only=True)``)
    and the plain JSON values of ``data`` are read. The architecture comes from
    ``policy_kwargs`` if given, else from the readable parts of the file (net_arch, a
    standard torch activation) and the weight shapes. Plain hyperparameters stored in the
    file (gamma, n_steps, ...) are defaults that ``algo_kwargs`` override. The optimizer's
    state and the training counters are not restored. Raises UserInputError naming the file
    and the fix when the file or its fit to ``env`` is wrong."""
    path = Path(path)
    if algo not in _ALGOS:
        raise ValueError(f"algo must be one of {', '.join(_ALGOS)}, got {algo!r}")
    cls = _ALGOS[algo]
    data, state = _read_checkpoint(path)

    stored_kwargs = data.get("policy_kwargs") or {}
    pk: dict[str, Any] = {}
    if policy_kwargs is None:
        if isinstance(stored_kwargs, dict):
            unread = []
            for key, value in stored_kwargs.items():
                if key.startswith(":") or (algo == "a2c" and key in (
                        "optimizer_class", "optimizer_kwargs")):
                    continue  # A2C sets its RMSprop from use_rms_prop / rms_prop_eps
                if key == "activation_fn":
                    act = _activation(value)
                    if act is None:
                        unread.append(key)
                    else:
                        pk[key] = act
                elif key in ("net_arch", "ortho_init", "log_std_init",
                             "share_features_extractor", "full_std", "squash_output"
                             ) and _plain(value):
                    pk[key] = value
                else:
                    unread.append(key)
            if unread:
                warnings.warn(f"{path}: policy_kwargs {unread} are pickled or unusual and "
                              f"were not read; pass policy_kwargs= if the model needs them",
                              stacklevel=2)
        pk.setdefault("net_arch", _infer_net_arch(state))
    else:
        pk = dict(policy_kwargs)

    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {k: data[k] for k in _PLAIN_HYPERPARAMS
              if k in data and k in accepted and _plain(data[k])}
    kwargs.update(algo_kwargs)
    kwargs.setdefault("verbose", 0)
    try:
        model = cls("MlpPolicy", env, policy_kwargs=pk, device=device, **kwargs)
    except (ValueError, TypeError, AssertionError) as e:
        raise UserInputError(f"{path}: cannot build {algo.upper()} for this env with the "
                             f"checkpoint's settings ({e})") from None
    _check_spaces(path, data, model)
    try:
        model.policy.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserInputError(f"{path}: the weights do not fit a {algo.upper()} MlpPolicy "
                             f"with policy_kwargs={pk} on this env ({e}); pass the "
                             f"policy_kwargs the checkpoint was trained with") from None
    return model


def _check_spaces(path: Path, data: dict[str, Any], model: BaseAlgorithm) -> None:
    obs, act = data.get("observation_space"), data.get("action_space")
    if isinstance(obs, dict) and isinstance(obs.get("_shape"), list):
        if tuple(obs["_shape"]) != tuple(model.observation_space.shape):
            raise UserInputError(f"{path}: trained on observations of shape "
                                 f"{tuple(obs['_shape'])}, but this env gives "
                                 f"{model.observation_space.shape}; use the env it was "
                                 f"trained on")
    if isinstance(act, dict):
        have = model.action_space
        n = act.get("n")
        if n is not None and str(getattr(have, "n", None)) != str(n):
            raise UserInputError(f"{path}: trained for {n} discrete actions, but this env "
                                 f"has {have}")
        if n is None and isinstance(act.get("_shape"), list) and \
                tuple(act["_shape"]) != tuple(have.shape):
            raise UserInputError(f"{path}: trained for actions of shape "
                                 f"{tuple(act['_shape'])}, but this env has {have}")
