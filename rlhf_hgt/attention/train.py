"""``rlhf-hgt attention train``: an image classifier trained with (or without) human
attention guidance, and measured for both accuracy and alignment with where people look.

The driver reads top to bottom: load the data → apply the guidance settings (share of
masked images, marks from a store, degraded or random or gaze-like maps) → build the model
→ train, recording test accuracy per epoch → measure accuracy and saliency alignment on
the test images → write metrics.json, weights (safetensors), saliency.png and a manifest.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rlhf_hgt.attention import data as D
from rlhf_hgt.attention.guidance import GUIDED, LOSS_METHODS, METHODS, make_guidance
from rlhf_hgt.attention.models import ARCHS, build_model
from rlhf_hgt.feedback.errors import UserInputError
from rlhf_hgt.governance.oversight import Overseer, announce

DEFAULT_EPOCHS = 20
MIN_STEPS = 1000  # optimiser steps the default number of passes reaches at least


@dataclass
class AttentionConfig:
    """One run of ``rlhf-hgt attention train``."""

    data: str = field(metadata={
        "help": "decoy-mnist, mnist (clean) or an .npz with x_train, y_train, mask_train, "
                "x_test, y_test (and mask_test for the alignment metrics)",
        "metavar": "DATA"})
    out: str = field(metadata={"help": "run directory", "metavar": "RUN_DIR"})
    method: str = field(default="none", metadata={
        "help": "how attention guides training", "choices": METHODS})
    seed: int = field(default=0, metadata={"help": "seed of weights, batches and masks"})
    arch: str = field(default="mlp", metadata={
        "help": "mlp (Ross et al.'s 50-30) or cnn (three convolutions; needed by gradcam)",
        "choices": ARCHS})
    epochs: int | None = field(default=None, metadata={
        "help": "passes over the training images; default: 20, or more for a small data set "
                f"so that training takes at least {MIN_STEPS} optimiser steps (Decoy MNIST: "
                "every method had levelled off by 20 passes = 1,260 steps; on 256 images, 20 "
                "passes = 80 steps left rrr at chance where 240 steps solved the task)",
        "default_text": f"20, at least {MIN_STEPS} steps"})
    batch_size: int = field(default=64, metadata={"help": "images per optimiser step"})
    learning_rate: float = field(default=1e-3, metadata={"help": "Adam step size"})
    mask_fraction: float = field(default=1.0, metadata={
        "help": "share of the training images whose map is used (the cost-benefit curve); "
                "the others train on the task loss alone"})
    guidance_weight: float | None = field(default=None, metadata={
        "help": "weight of the guidance term; default per method (rrr, random-mask 10; "
                "gradcam 100; augment, gate, gaze-kl 1): each penalty is a share in [0, 1] or "
                "a KL, so one weight serves every image size"})
    guidance_warmup: float = field(default=0.15, metadata={
        "help": "share of the training steps over which rrr's weight (and random-mask's) "
                "rises from 0: the model first learns features, "
                "then where to look. Measured on Decoy MNIST (rrr): without it weights 1, 10, "
                "100, 1000 gave 0.88, 0.91, 0.87, 0.12; with 0.15: 0.88, 0.91, 0.90, 0.89"})
    mask_noise: str | None = field(default=None, metadata={
        "help": "degrade the maps on purpose, the break condition: dilate:PIXELS, "
                "shift:PIXELS, drop:SHARE (of mask pixels) or decoy:SHARE (maps pointing at "
                "the decoy patch; decoy-mnist)", "metavar": "KIND:AMOUNT"})
    marks: str | None = field(default=None, metadata={
        "help": "use the marks people gave at the terminal (`rlhf-hgt attention mark STORE "
                "--data DATA`) instead of the data's own masks; images nobody marked train "
                "on the task loss alone", "metavar": "STORE"})
    synthetic_gaze: int = field(default=0, metadata={
        "help": "replace each map by a synthetic gaze density: this many fixations drawn "
                "inside the mask, blurred (0: use the maps as given)"})
    eval_images: int = field(default=1000, metadata={
        "help": "test images used for the saliency metrics (all for accuracy)"})
    device: str = field(default="auto", metadata={
        "help": "auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N"})

    def __post_init__(self) -> None:
        checks = [
            (self.method in METHODS, f"method must be one of {', '.join(METHODS)}, "
                                     f"got {self.method!r}"),
            (self.arch in ARCHS, f"arch must be one of {', '.join(ARCHS)}, got {self.arch!r}"),
            (self.method != "gradcam" or self.arch == "cnn",
             "method gradcam needs arch cnn (an MLP has no feature map): add --arch cnn"),
            (self.epochs is None or self.epochs >= 1,
             f"epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 2, f"batch_size must be at least 2, got {self.batch_size}"),
            (0 < self.learning_rate < 1, f"learning_rate must lie in (0, 1), "
                                         f"got {self.learning_rate}"),
            (0 < self.mask_fraction <= 1, f"mask_fraction must lie in (0, 1], "
                                          f"got {self.mask_fraction}"),
            (self.guidance_weight is None or self.guidance_weight >= 0,
             f"guidance_weight must be >= 0, got {self.guidance_weight}"),
            (0 <= self.guidance_warmup < 1, f"guidance_warmup must lie in [0, 1), "
                                            f"got {self.guidance_warmup}"),
            (self.synthetic_gaze >= 0, f"synthetic_gaze must be >= 0, "
                                       f"got {self.synthetic_gaze}"),
            (self.eval_images >= 1, f"eval_images must be at least 1, got {self.eval_images}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        D.parse_noise(self.mask_noise)  # raises ValueError naming the accepted forms


Progress = Callable[[str, dict[str, Any]], None]


def _quiet(event: str, info: dict[str, Any]) -> None:
    pass


# ----------------------------------------------------------------------------- the run


def prepare_data(cfg: AttentionConfig) -> D.ImageData:
    """The data with the run's guidance settings applied (checked before any training)."""
    data = D.load_data(cfg.data)
    if cfg.marks is not None:
        data = _with_marks(data, cfg.marks)
    if cfg.method in GUIDED and not data.has_mask.any():
        raise UserInputError(f"--method {cfg.method} needs attention maps: {cfg.data} has no "
                             "mask_train (or no image was marked); add masks, give --marks "
                             "STORE, or use --method none")
    with_maps = int(data.has_mask.sum())
    data = D.keep_fraction(data, cfg.mask_fraction, cfg.seed)
    if cfg.method in GUIDED and not data.has_mask.any():
        raise UserInputError(f"--mask-fraction {cfg.mask_fraction} keeps none of the "
                             f"{with_maps} maps; give a larger share")
    data = D.degrade(data, cfg.mask_noise, cfg.seed)
    if cfg.synthetic_gaze:
        gaze = D.synthetic_gaze(data.mask_train, cfg.synthetic_gaze, cfg.seed)
        data = replace(data, mask_train=gaze * data.has_mask[:, None, None])
    if cfg.method == "random-mask":
        data = replace(data, mask_train=D.random_masks(data.mask_train, cfg.seed))
    return data


def _with_marks(data: D.ImageData, store: str) -> D.ImageData:
    from rlhf_hgt.feedback.marks import load_marks, marks_to_masks

    marks = load_marks(store, data.dataset_id)
    masks, has = marks_to_masks(marks, data.x_train.shape[2:], len(data.x_train))
    if not has.any():
        raise UserInputError(f"--marks {store}: no marks for these images ({data.dataset_id});"
                             f" give some with `rlhf-hgt attention mark {store} --data ...`")
    return replace(data, mask_train=masks.astype(np.float32), has_mask=has)


def check_out(out: str) -> None:
    """RUN_DIR is a folder that holds nothing or an attention run (which is replaced)."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UserInputError(f"--out {out}: exists and is not a folder")
    manifest = path / "manifest.json"
    if manifest.is_file():
        import json

        try:
            command = json.loads(manifest.read_text()).get("config", {}).get("command")
        except (ValueError, AttributeError):
            command = None
        if command != "attention train":
            raise UserInputError(f"--out {out}: holds another kind of run ({command or 'unknown'}"
                                 "); give a new folder")


def run_attention(cfg: AttentionConfig, progress: Progress = _quiet) -> dict[str, Any]:
    """Train and measure as ``cfg`` says; returns the metrics written to metrics.json."""
    started = time.time()
    check_out(cfg.out)
    data = prepare_data(cfg)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)  # `rlhf-hgt oversee RUN_DIR` writes there
    overseer = Overseer(Path(cfg.out), announce(progress))  # a person's pause / stop
    device = _device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.arch, data.image_shape, data.classes,
                        gated=cfg.method == "gate").to(device)
    guidance = make_guidance(cfg.method, cfg.guidance_weight)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    x_tr, y_tr, m_tr, has_tr = (torch.as_tensor(a).to(device) for a in
                                (data.x_train, data.y_train, data.mask_train, data.has_mask))
    x_te, y_te = torch.as_tensor(data.x_test).to(device), torch.as_tensor(data.y_test).to(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    epochs = cfg.epochs or auto_epochs(len(x_tr), cfg.batch_size)
    ramp = _warmup(cfg, len(x_tr), guidance, epochs)
    curve = []
    step = 0
    for epoch in range(epochs):
        model.train()
        losses = []
        for i, idx in enumerate(torch.randperm(len(x_tr), generator=gen).split(cfg.batch_size)):
            # a person's pause holds here, a stop ends training: asked at each pass's start
            # and then about every half second
            if not overseer.single_run_gate(force=i == 0):
                break
            idx = idx.to(device)
            ramp(step)
            step += 1
            loss, _ = guidance.loss(model, x_tr[idx], y_tr[idx], m_tr[idx], has_tr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        if not losses and curve:
            break  # stopped before this pass began
        acc = accuracy(model, x_te, y_te)
        curve.append({"epoch": epoch + 1, "test_accuracy": acc,
                      "train_loss": float(np.mean(losses)) if losses else None})
        progress("epoch", {**curve[-1], "epochs": epochs})
        if overseer.pending is not None:
            break  # the model trained so far is saved as the run's model
    metrics = {
        "method": cfg.method, "arch": cfg.arch, "data": data.name, "seed": cfg.seed,
        "mask_fraction": cfg.mask_fraction, "epochs": epochs, "epochs_trained": len(curve),
        "guidance_weight": getattr(guidance, "weight", None) if cfg.method != "none" else None,
        "guidance_warmup": cfg.guidance_warmup,
        "mask_noise": cfg.mask_noise,
        "masked_train_images": int(data.has_mask.sum()),
        "test_accuracy": curve[-1]["test_accuracy"],
        "train_accuracy": accuracy(model, x_tr, y_tr),
        **alignment(model, data, cfg.eval_images, device),
        "accuracy_per_epoch": [c["test_accuracy"] for c in curve], "curve": curve,
    }
    metrics |= overseer.outcome()  # status "stopped by NAME: REASON", the acts obeyed
    overseer.close()
    metrics["warnings"] = warnings_for(cfg, data, metrics)
    for message in metrics["warnings"]:
        progress("warning", {"message": message})
    metrics["wall_s"] = time.time() - started
    save_run(cfg, model, data, metrics)
    return metrics


#: outside_swap_flip_rate above which a run warns. Measured (BENCHMARKS.md, attention): clean
#: models and guidance that took 0.00-0.06 (gradcam 0.05-0.17, augment on the stripe task
#: 0.16); decoy baselines 0.33-0.40; guidance that failed 0.41-0.73 (shifted or decoy maps,
#: rrr on the stripe task)
FLIP_WARNING = 0.2


def warnings_for(cfg: AttentionConfig, data: D.ImageData, metrics: dict[str, Any]) -> list[str]:
    """What a person should hear about a run: a guided model that predicts one class (the
    guidance fought the labels: the maps may miss the evidence, or the weight is too
    strong for maps this small), and a model whose predictions change when the pixels
    outside the test maps are swapped between images (it relies on what people did not
    mark)."""
    majority = float(np.bincount(data.y_train).max() / len(data.y_train))
    out = []
    if cfg.method in GUIDED and metrics["train_accuracy"] <= majority + 0.02:
        area = float(data.mask_train[data.has_mask].mean())
        out.append(f"the {cfg.method}-guided model learned nothing (train accuracy "
                   f"{metrics['train_accuracy']:.2f}, the majority class alone gets "
                   f"{majority:.2f}); the maps cover {area:.0%} of each image on average: "
                   "check that they mark the evidence, try a smaller --guidance-weight, or "
                   "--method gate or augment")
    unseen = sorted(set(np.unique(data.y_test).tolist()) - set(np.unique(data.y_train).tolist()))
    if unseen:
        share = float(np.isin(data.y_test, unseen).mean())
        out.append(f"test labels {', '.join(map(str, unseen[:10]))}"
                   f"{' …' if len(unseen) > 10 else ''} never occur in training ({share:.0%} "
                   "of the test images): no model can get them right; check y_train and "
                   "y_test")
    flips = metrics.get("outside_swap_flip_rate")
    if flips is not None and flips > FLIP_WARNING:
        who = "the model" if cfg.method == "none" else f"the {cfg.method}-guided model"
        hints = {"none": "a guided method can teach it to look where people looked",
                 "gate": "its attention branch has not learned the maps: check that they "
                         "mark the evidence, or train longer (--epochs)",
                 "augment": "check that the maps mark the evidence, or raise "
                            "--guidance-weight"}
        hint = hints.get(cfg.method, "input-gradient losses are local and can miss a wide "
                         "confound (BENCHMARKS.md, attention: --method augment or gate held "
                         "where rrr did not); check that the maps mark the evidence")
        out.append(f"{who} relies on pixels outside the test maps: swapping them between "
                   f"test images changes {flips:.0%} of its predictions; {hint}")
    return out


def auto_epochs(n: int, batch_size: int) -> int:
    """The default number of passes: 20, or enough for MIN_STEPS optimiser steps."""
    return max(DEFAULT_EPOCHS, -(-MIN_STEPS // -(-n // batch_size)))


def _warmup(cfg: AttentionConfig, n: int, guidance: Any, epochs: int
            ) -> Callable[[int], None]:
    """Sets rrr's (and random-mask's) weight for a step: rising linearly from 0 over the
    first ``guidance_warmup`` share of the steps (other methods: constant)."""
    full = getattr(guidance, "weight", 0.0)
    steps = cfg.guidance_warmup * epochs * -(-n // cfg.batch_size)
    if cfg.method not in LOSS_METHODS or steps < 1:
        return lambda step: None

    def ramp(step: int) -> None:
        guidance.weight = full * min(1.0, step / steps)

    return ramp


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UserInputError(f"--device {name}: {exc}; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError(f"--device {name}: this torch sees no CUDA GPU; use auto or cpu")
    return device


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> float:
    model.eval()
    right = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
                for i in range(0, len(x), batch))
    return right / len(x)


def alignment(model: nn.Module, data: D.ImageData, n: int, device: torch.device
              ) -> dict[str, Any]:
    """Saliency (input gradients of the predicted class) against the test maps and, for
    decoy data, the decoy patch's share of it."""
    from rlhf_hgt.attention.metrics import (
        alignment_report,
        input_gradients,
        outside_swap_flips,
        share_in_region,
    )

    model.eval()
    x = torch.as_tensor(data.x_test[:n]).to(device)
    sal = input_gradients(model, x).cpu().numpy()
    out: dict[str, Any] = {}
    if data.mask_test is not None:
        out.update(alignment_report(sal, data.mask_test[:n]))
        flips = outside_swap_flips(model, torch.as_tensor(data.x_test).to(device),
                                   data.mask_test)
        out["outside_swap_flip_rate"] = float(np.nanmean(flips))
    else:
        out.update({k: None for k in ("saliency_mass_in_mask", "topk_iou", "pointing_game",
                                      "rank_correlation", "outside_swap_flip_rate")})
    if data.decoy_test is not None:
        out["decoy_saliency_share"] = float(np.nanmean(
            share_in_region(sal, data.decoy_test[:n])))
    return out


def save_run(cfg: AttentionConfig, model: nn.Module, data: D.ImageData,
             metrics: dict[str, Any]) -> None:
    from safetensors.torch import save

    from rlhf_hgt.attention.pictures import saliency_grid
    from rlhf_hgt.feedback.files import write_bytes_atomic, write_json_atomic
    from rlhf_hgt.governance.manifest import write_manifest

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_bytes_atomic(out / "model.safetensors",
                       save(state, metadata={"arch": cfg.arch, "method": cfg.method}))
    saliency_grid(model, data, out / "saliency.png", title=f"{data.name}: {cfg.method}")
    write_json_atomic(out / "metrics.json", metrics)
    data_files = {"data": Path(cfg.data)} if Path(cfg.data).is_file() else {}
    if cfg.marks:
        data_files["marks"] = Path(cfg.marks)
    write_manifest(out, {"command": "attention train", **asdict(cfg),
                         "data_source": data.source}, data_files)
    _record_lineage(cfg, data, out)
    from rlhf_hgt.governance.card import write_cards

    write_cards(out)  # the model card beside model.safetensors


def _record_lineage(cfg: AttentionConfig, data: D.ImageData, out: Path) -> None:
    """The model's lineage: the marks it learned from (--marks), else the data file's hash."""
    from rlhf_hgt.governance import lineage
    from rlhf_hgt.governance.manifest import file_sha256

    extra: dict[str, Any] = {"answer_ids": None}
    if cfg.marks:
        extra["mark_ids"] = lineage.used_mark_ids(cfg.marks, data.dataset_id)
    if Path(cfg.data).is_file():
        extra["data"] = {"path": str(Path(cfg.data).resolve()),
                         "sha256": file_sha256(Path(cfg.data))}
    lineage.record_checkpoint(out, cfg.marks, "model", [out / "model.safetensors"],
                              role="model", method=cfg.method, **extra)
