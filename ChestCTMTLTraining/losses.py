"""Loss = sum_i w_i * L_i with per-sample task masks.

Segmentation losses are MONAI's (generalized Dice = the paper's default, Dice, Dice+CE, focal,
Tversky); each lesion type is scored only on samples that annotate it, weighted per sample (so
pseudo-labels count less). An optional BCE term keeps gradients sane on known lesion-free
slices, where a Dice ratio alone is degenerate. Detection uses CenterNet's penalty-reduced
focal loss on the centre heatmap (no MONAI equivalent) plus L1 on log-size and offset at
centres.
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F

SEG_LOSSES = ("generalized_dice", "dice", "dice_ce", "focal", "tversky")


def make_seg_loss(name: str):
    from monai.losses import DiceCELoss, DiceLoss, FocalLoss, GeneralizedDiceLoss, TverskyLoss

    if name == "generalized_dice":
        return GeneralizedDiceLoss(sigmoid=True, reduction="none")
    if name == "dice":
        return DiceLoss(sigmoid=True, reduction="none")
    if name == "dice_ce":
        return DiceCELoss(sigmoid=True, reduction="mean")
    if name == "focal":
        return FocalLoss(reduction="none", use_softmax=False)
    if name == "tversky":
        return TverskyLoss(sigmoid=True, alpha=0.3, beta=0.7, reduction="none")
    raise ValueError("unknown segmentation loss %r (known: %s)" % (name, SEG_LOSSES))


def _per_sample(loss: torch.Tensor, n: int) -> torch.Tensor:
    return loss.reshape(n, -1).mean(dim=1) if loss.dim() else loss.expand(n)


def centernet_focal(logits: torch.Tensor, target: torch.Tensor, present: torch.Tensor,
                    alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """CenterNet heatmap focal loss; ``present`` (B,T) masks out unannotated types."""
    logits = logits.float()
    log_p = F.logsigmoid(logits)
    log_1p = F.logsigmoid(-logits)
    p = log_p.exp()
    pos = (target >= 1.0).float()
    neg = 1.0 - pos
    m = present.float()[:, :, None, None]
    pos_l = -((1 - p) ** alpha) * log_p * pos * m
    neg_l = -((1 - target) ** beta) * (p ** alpha) * log_1p * neg * m
    n_pos = (pos * m).sum().clamp(min=1.0)
    return (pos_l.sum() + neg_l.sum()) / n_pos


class MultiTaskLoss:
    def __init__(self, cfg: Optional[dict] = None, n_classes: int = 3,
                 class_weights: Optional[Sequence[float]] = None):
        cfg = dict(cfg or {})
        self.seg_name = cfg.get("segmentation", "generalized_dice")
        self.seg_loss = make_seg_loss(self.seg_name)
        self.seg_bce = float(cfg.get("seg_bce_weight", 0.5))
        self.recon = cfg.get("reconstruction", "mse")
        if self.recon not in ("mse", "l1"):
            raise ValueError("reconstruction loss must be mse or l1, got %r" % self.recon)
        self.weights = {"classification": 1.0, "segmentation": 1.0, "reconstruction": 0.5,
                        "detection": 1.0}
        self.weights.update({k: float(v) for k, v in (cfg.get("weights") or {}).items()})
        self.det_size_w = float(cfg.get("det_size_weight", 0.1))
        self.det_off_w = float(cfg.get("det_offset_weight", 1.0))
        self.label_smoothing = float(cfg.get("label_smoothing", 0.05))
        self.class_weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None

    def segmentation(self, logits, masks, present, weight):
        total, count = logits.new_zeros(()), 0
        for t in range(logits.shape[1]):
            sel = present[:, t]
            if not bool(sel.any()):
                continue
            pred, tgt, w = logits[sel, t:t + 1].float(), masks[sel, t:t + 1], weight[sel]
            if self.seg_name == "dice_ce":
                lt = self.seg_loss(pred, tgt) * w.mean()
            else:
                per = _per_sample(self.seg_loss(pred, tgt), pred.shape[0])
                lt = (per * w).sum() / w.sum().clamp(min=1e-6)
            if self.seg_bce > 0:
                bce = F.binary_cross_entropy_with_logits(pred, tgt, reduction="none").mean(dim=(1, 2, 3))
                lt = lt + self.seg_bce * (bce * w).sum() / w.sum().clamp(min=1e-6)
            total = total + lt
            count += 1
        return total / max(count, 1), count > 0

    def __call__(self, out: Dict[str, torch.Tensor], batch: Dict[str, torch.Tensor],
                 tasks: Iterable[str]):
        tasks = set(tasks)
        parts: Dict[str, torch.Tensor] = {}
        if "classification" in tasks and "class_logits" in out:
            has = batch["cls"] >= 0
            if bool(has.any()):
                cw = self.class_weights.to(out["class_logits"].device) if self.class_weights is not None else None
                parts["classification"] = F.cross_entropy(
                    out["class_logits"][has].float(), batch["cls"][has], weight=cw,
                    label_smoothing=self.label_smoothing)
        if "segmentation" in tasks and "seg_logits" in out:
            l, ok = self.segmentation(out["seg_logits"], batch["masks"], batch["present"], batch["weight"])
            if ok:
                parts["segmentation"] = l
        if "reconstruction" in tasks and "recon" in out:
            fn = F.mse_loss if self.recon == "mse" else F.l1_loss
            parts["reconstruction"] = fn(out["recon"].float(), batch["image"])
        if "detection" in tasks and "det_heatmap" in out and bool(batch["present"].any()):
            hm = centernet_focal(out["det_heatmap"], batch["hm"], batch["present"])
            reg = batch["reg"][:, None]
            n = reg.sum().clamp(min=1.0)
            size_l = (F.l1_loss(out["det_size"].float(), batch["size"], reduction="none") * reg).sum() / n
            off_l = (F.l1_loss(out["det_offset"].float(), batch["off"], reduction="none") * reg).sum() / n
            parts["detection"] = hm + self.det_size_w * size_l + self.det_off_w * off_l
        total = sum((self.weights[k] * v for k, v in parts.items()),
                    next(iter(out.values())).new_zeros(()).float())
        return total, parts
