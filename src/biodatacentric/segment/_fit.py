"""The training loop and network set-up of :class:`~biodatacentric.segment.TransUNetSegmenter`.

Moved out of the estimator unchanged (the same seed gives the same weights): the loop over
the shared trainer (:func:`biodatacentric._train.train`) with best-epoch tracking on
validation patches, and the checked copy of a user's ``network``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._io import torch_load_safe, torch_save_atomic
from .._train import TrainSettings, array_fingerprint, train
from .._utils import check_random_state_int
from ..data.augment import augment_batch
from ..metrics import dice_per_sample
from .losses import segmentation_loss

__all__ = ["run_training", "initialize_network", "mean_foreground_dice", "aux_loss_weight"]


def run_training(seg: Any, X: np.ndarray, Y: np.ndarray, settings: TrainSettings, epoch_order: Any,
                 validation: tuple[np.ndarray, np.ndarray] | None, desc: str,
                 data_extra: dict | None = None) -> tuple[dict, int | None]:
    module = seg.module_
    data_fp = None
    if settings.checkpoint_dir:
        # a checkpoint resumes only a run on the same data: every byte of the training and
        # validation images and masks (in memory already; the paper's sets are small), and
        # how an epoch mixes new and replayed patches
        val_x, val_y = validation if validation is not None else (None, None)
        data_fp = array_fingerprint(X, Y, val_x, val_y, extra=data_extra)
    dev = torch.device(settings.device)
    module.to(dev)
    Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y.astype(np.int64))
    augment, loss_kind, dice_kind = bool(seg.augment), seg.loss, seg.dice
    aux_weight = aux_loss_weight(seg, module)

    def step(m: nn.Module, idx: np.ndarray, gen: torch.Generator) -> torch.Tensor:
        sel = torch.as_tensor(np.asarray(idx, dtype=np.int64))
        x, y = Xt[sel][:, None], Yt[sel]
        if augment:
            x, y = augment_batch(x, y, gen)
        y = y.to(dev)
        if aux_weight:
            logits, coarse = m.forward_aux(x.to(dev))
            coarse = F.interpolate(coarse.float(), size=tuple(y.shape[-2:]), mode="bilinear", align_corners=False)
            return (segmentation_loss(logits, y, loss_kind, dice_kind)
                    + aux_weight * segmentation_loss(coarse, y, loss_kind, dice_kind))
        return segmentation_loss(m(x.to(dev)), y, loss_kind, dice_kind)

    history: dict = {"loss": [], "lr": [], "epoch_time": []}
    best_path = Path(settings.checkpoint_dir) / "best.pt" if settings.checkpoint_dir else None
    best: dict = {"state": None}
    if validation is not None:
        history["val_dice"] = []
        Xv, Yv = validation

        def on_epoch_end(epoch: int, hist: dict) -> None:
            d = seg._dice_of(Xv, Yv)
            prev = hist["val_dice"]
            if not prev or d > max(prev):
                best["state"] = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
                if best_path is not None:
                    torch_save_atomic({"module": best["state"], "epoch": epoch}, best_path)
            prev.append(d)
            module.train()
    else:
        on_epoch_end = None  # type: ignore[assignment]
    history = train(module, step, len(X), settings, epoch_order=epoch_order, on_epoch_end=on_epoch_end,
                    history=history, desc=desc, layer_of=module.layer_id if seg.layer_decay else None,
                    interrupt_after=getattr(seg, "_interrupt_after", None), data_fingerprint=data_fp)
    best_epoch = None
    if validation is not None and history.get("val_dice"):
        best_epoch = int(np.argmax(history["val_dice"]))
        state = best["state"]
        if state is None and best_path is not None and best_path.is_file():  # resumed run
            state = torch_load_safe(best_path)["module"]
        if state is not None:
            module.load_state_dict(state)
    module.eval()
    return history, best_epoch


def aux_loss_weight(seg: Any, module: nn.Module) -> float:
    """The deep-supervision weight to train with: ``seg.deep_supervision`` for a TransUNet with
    an aux head, 0 for a user's ``network`` (the option does not apply to it)."""
    w = float(getattr(seg, "deep_supervision", 0.0) or 0.0)
    if w <= 0 or seg.network is not None:
        return 0.0
    if getattr(getattr(module, "decoder", None), "aux", None) is None:
        raise ValueError(f"deep_supervision={w:g} but the fitted network has no aux head (it was fitted with "
                         "deep_supervision=0); set deep_supervision=0 to fine-tune it")
    return w


def initialize_network(seg: Any, patch_shape: tuple[int, int]) -> Any:
    """``initialize`` for a user's ``network``: a checked copy of it."""
    if seg.encoder is not None:
        raise ValueError("encoder= loads MAE weights into the TransUNet; with network= pass encoder=None "
                         "(load pretrained weights into your network before passing it)")
    if seg.layer_decay is not None and not hasattr(seg.network, "layer_id"):
        raise ValueError("layer_decay needs a network with a layer_id(name) method; pass layer_decay=None")
    seed = check_random_state_int(seg.random_state)
    seg._seed = seed
    torch.manual_seed(seed)
    module = copy.deepcopy(seg.network).cpu()
    was = module.training
    module.eval()
    with torch.no_grad():
        try:
            out = module(torch.zeros(1, 1, *patch_shape))
        except Exception as exc:
            raise ValueError(f"network={type(seg.network).__name__} failed on a (1, 1, {patch_shape[0]}, "
                             f"{patch_shape[1]}) batch: {exc}; it must take single-channel patches") from exc
    module.train(was)
    want = (1, int(seg.n_classes), *patch_shape)
    if tuple(getattr(out, "shape", ())) != want:
        raise ValueError(f"network={type(seg.network).__name__} maps a (1, 1, {patch_shape[0]}, {patch_shape[1]}) "
                         f"batch to {tuple(getattr(out, 'shape', ()))}; it must return logits of shape {want} "
                         f"(n_classes={seg.n_classes})")
    seg.encoder_transfer_ = {"source": None, "loaded": [], "initialised": sorted(module.state_dict()),
                             "unused": []}
    seg.module_ = module
    seg.patch_shape_ = patch_shape
    return seg


def mean_foreground_dice(pred: np.ndarray, true: np.ndarray, n_classes: int) -> float:
    scores = [dice_per_sample(pred == c, true == c) for c in range(1, n_classes)]
    return float(np.mean(np.mean(scores, axis=0)))
