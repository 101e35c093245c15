"""Loss = sum_i w_i * L_i with per-sample task masks.

Segmentation losses are MONAI's (generalized Dice = the paper's default, Dice, Dice+CE, focal,
Tversky); each lesion type is scored only on samples that annotate it, weighted per sample (so
pseudo-labels count less). An optional BCE term keeps gradients sane on known lesion-free
slices, where a Dice ratio alone is degenerate. Detection uses CenterNet's penalty-reduced
focal loss on the centre heatmap (no MONAI equivalent) plus L1 on log-size and offset at
centres.

Infection types (a model with ``type_logits``): the batch's masks carry the type channels after
the lesion channels (:mod:`.sources.covid_semiseg_types`). Samples with type labels add
:meth:`MultiTaskLoss.infection_types` - soft Dice of P(type) = P(infection) x softmax against
each type's mask, plus cross-entropy of the softmax on the typed pixels; every other sample
(binary doctor masks, pseudo labels) supervises only the infection channel through
:meth:`MultiTaskLoss.segmentation` and sends exactly zero gradient to the split.
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F

from ChestCTMTLLib.model import INFECTION
from ChestCTMTLLib.results import LESION_TYPES

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
                 class_weights: Optional[Sequence[float]] = None,
                 lesion_types: Sequence[str] = LESION_TYPES):
        cfg = dict(cfg or {})
        self.infection = list(lesion_types).index(INFECTION) if INFECTION in lesion_types else 0
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
        self.type_weight = float(cfg.get("infection_type_weight", 1.0))
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

    def infection_types(self, seg_logits, type_logits, type_masks, infection_gt, weight, infection: int):
        """Type loss over the samples that carry type labels; ``None`` when the batch has none.

        ``type_masks`` (B, K, H, W) are the type channels, ``infection_gt`` (B, H, W) the
        infection channel's mask. A sample carries type labels when its type channels hold any
        pixel: the labelled data marks every infected pixel with its type (the types partition
        the infection), while binary-only samples have empty type channels - so those samples,
        and the infected pixels of a labelled sample that have no type (e.g. pasted from a binary
        sample), never reach the split. Soft Dice of P(type) against each type is summed over the
        selected samples (a crop may hold one type only); the cross-entropy of the softmax acts
        only on typed pixels, so it moves the split and never the infection probability.
        """
        tgt = type_masks.float()
        sel = tgt.flatten(1).amax(dim=1) > 0
        if not bool(sel.any()):
            return None
        tgt = tgt[sel]
        w = weight[sel].float()[:, None, None, None]
        typed = tgt.sum(dim=1, keepdim=True).clamp(max=1.0)
        valid = (1.0 - infection_gt[sel].float()[:, None] + typed).clamp(0.0, 1.0) * w
        p_inf = torch.sigmoid(seg_logits[sel, infection].float())[:, None]
        log_q = torch.log_softmax(type_logits[sel].float(), dim=1)
        prob = p_inf * log_q.exp()
        inter = (valid * prob * tgt).sum(dim=(0, 2, 3))
        denom = (valid * (prob + tgt)).sum(dim=(0, 2, 3))
        dice = 1.0 - (2.0 * inter + 1.0) / (denom + 1.0)
        ce = -(w * tgt * log_q).sum() / (w * typed).sum().clamp(min=1.0)
        return dice.mean() + ce

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
        # lesion channels first, infection-type channels (if any) after them
        n_les = next((out[k].shape[1] for k in ("seg_logits", "det_heatmap") if k in out), batch["masks"].shape[1])
        if "segmentation" in tasks and "seg_logits" in out:
            l, ok = self.segmentation(out["seg_logits"], batch["masks"][:, :n_les],
                                      batch["present"][:, :n_les], batch["weight"])
            n_types = out["type_logits"].shape[1] if "type_logits" in out else 0
            if n_types and batch["masks"].shape[1] == n_les + n_types and self.type_weight > 0:
                lt = self.infection_types(out["seg_logits"], out["type_logits"], batch["masks"][:, n_les:],
                                          batch["masks"][:, self.infection], batch["weight"], self.infection)
                if lt is not None:
                    l, ok = (l + self.type_weight * lt if ok else self.type_weight * lt), True
            if ok:
                parts["segmentation"] = l
        if "reconstruction" in tasks and "recon" in out:
            fn = F.mse_loss if self.recon == "mse" else F.l1_loss
            parts["reconstruction"] = fn(out["recon"].float(), batch["image"])
        if "detection" in tasks and "det_heatmap" in out and bool(batch["present"][:, :n_les].any()):
            # boxes come from the lesion channels only (type channels are never present there)
            hm = centernet_focal(out["det_heatmap"], batch["hm"][:, :n_les], batch["present"][:, :n_les])
            reg = batch["reg"][:, None]
            n = reg.sum().clamp(min=1.0)
            size_l = (F.l1_loss(out["det_size"].float(), batch["size"], reduction="none") * reg).sum() / n
            off_l = (F.l1_loss(out["det_offset"].float(), batch["off"], reduction="none") * reg).sum() / n
            parts["detection"] = hm + self.det_size_w * size_l + self.det_off_w * off_l
        total = sum((self.weights[k] * v for k, v in parts.items()),
                    next(iter(out.values())).new_zeros(()).float())
        return total, parts
