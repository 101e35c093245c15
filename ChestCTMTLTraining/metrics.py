"""Metrics on known definitions: MONAI for Dice / IoU / HD95, scikit-learn for classification,
scikit-image for PSNR / SSIM; slice box AP@0.5 and per-scan FROC / CPM (no library covers
CenterNet boxes or our 3D merging, so these are written out here and tested on known answers).
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np
import torch


def seg_scores(pred: np.ndarray, gt: np.ndarray, spacing=None) -> Dict[str, float]:
    """Dice, IoU and HD95 (pixels, or mm with ``spacing``) of two 2D binary masks via MONAI.

    Empty ground truth gives NaN Dice/IoU (not counted in means); HD95 is NaN unless both
    masks are non-empty.
    """
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou

    p = torch.from_numpy(np.asarray(pred, bool)[None, None].astype(np.float32))
    g = torch.from_numpy(np.asarray(gt, bool)[None, None].astype(np.float32))
    out = {"dice": float("nan"), "iou": float("nan"), "hd95": float("nan")}
    if g.sum() > 0:
        out["dice"] = float(compute_dice(p, g, include_background=True, ignore_empty=True)[0, 0])
        out["iou"] = float(compute_iou(p, g, include_background=True, ignore_empty=True)[0, 0])
        if p.sum() > 0:
            hd = compute_hausdorff_distance(p, g, include_background=True, percentile=95,
                                            spacing=list(spacing) if spacing is not None else None)
            out["hd95"] = float(hd[0, 0])
    return out


def classification_scores(y_true: Sequence[int], prob: np.ndarray, class_names: Sequence[str]) -> dict:
    from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score,
                                 recall_score, roc_auc_score)

    y = np.asarray(y_true, int)
    prob = np.asarray(prob, float)
    if len(y) == 0:
        return {}
    pred = prob.argmax(axis=1)
    labels = list(range(len(class_names)))
    present = sorted(set(y.tolist()))
    out = {
        "n": int(len(y)),
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)) if len(present) > 1 else float("nan"),
        "f1": {class_names[c]: float(v) for c, v in
               zip(labels, f1_score(y, pred, labels=labels, average=None, zero_division=0))},
        "recall": {class_names[c]: float(v) for c, v in
                   zip(labels, recall_score(y, pred, labels=labels, average=None, zero_division=0))},
        "confusion_matrix": confusion_matrix(y, pred, labels=labels).tolist(),
        "confusion_labels": list(class_names),
    }
    if len(present) > 1:
        try:
            if len(present) == 2:
                out["roc_auc"] = float(roc_auc_score(y == present[1], prob[:, present[1]]))
            else:
                p = prob[:, present] / prob[:, present].sum(axis=1, keepdims=True)
                out["roc_auc"] = float(roc_auc_score(y, p, multi_class="ovr", labels=present))
        except ValueError:
            out["roc_auc"] = float("nan")
    return out


def binary_scores(y_true: Sequence[int], score: Sequence[float], names=("negative", "positive")) -> dict:
    """Two-class view (e.g. cancer vs normal): threshold 0.5 on the positive share."""
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, recall_score, roc_auc_score

    y = np.asarray(y_true, int)
    s = np.asarray(score, float)
    if len(y) == 0:
        return {}
    pred = (s >= 0.5).astype(int)
    out = {"n": int(len(y)), "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
           "recall": {names[0]: float(recall_score(y, pred, pos_label=0, zero_division=0)),
                      names[1]: float(recall_score(y, pred, pos_label=1, zero_division=0))},
           "confusion_matrix": confusion_matrix(y, pred, labels=[0, 1]).tolist(),
           "confusion_labels": list(names)}
    if len(set(y.tolist())) == 2:
        out["roc_auc"] = float(roc_auc_score(y, s))
    return out


def recon_scores(image: np.ndarray, recon: np.ndarray) -> Dict[str, float]:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    a = np.asarray(image, np.float64)
    b = np.clip(np.asarray(recon, np.float64), 0, 1)
    return {"psnr": float(peak_signal_noise_ratio(a, b, data_range=1.0)),
            "ssim": float(structural_similarity(a, b, data_range=1.0))}


def box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    ua = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / ua if ua > 0 else 0.0


def average_precision(preds: List[tuple], gts: Dict[object, List[tuple]], iou_thr: float = 0.5) -> float:
    """VOC all-point AP. ``preds`` = [(image_id, score, box)], ``gts`` = {image_id: [box]}."""
    n_gt = sum(len(v) for v in gts.values())
    if n_gt == 0:
        return float("nan")
    used = {k: np.zeros(len(v), bool) for k, v in gts.items()}
    tp, fp = [], []
    for img, _s, box in sorted(preds, key=lambda p: -p[1]):
        cand = gts.get(img, [])
        best, bi = 0.0, -1
        for i, g in enumerate(cand):
            iou = box_iou(box, g)
            if iou > best:
                best, bi = iou, i
        if best >= iou_thr and not used[img][bi]:
            used[img][bi] = True
            tp.append(1)
            fp.append(0)
        else:
            tp.append(0)
            fp.append(1)
    if not tp:
        return 0.0
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    rec = tp / n_gt
    prec = tp / np.maximum(tp + fp, 1e-9)
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    idx = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


FROC_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def match_findings(findings: List[dict], lesions: List[dict]):
    """Greedy by score: a finding hits an unmatched lesion if its centre is within the lesion's
    radius (``diameter_mm / 2``). ``findings``: {"center_mm", "score"}; ``lesions``: {"center_mm",
    "diameter_mm"}. Returns (is_tp per finding in score order, hit lesion index or -1, scores)."""
    order = sorted(range(len(findings)), key=lambda i: -findings[i]["score"])
    taken = np.zeros(len(lesions), bool)
    tps, hits, scores = [], [], []
    for i in order:
        f = findings[i]
        best, bj = np.inf, -1
        for j, les in enumerate(lesions):
            d = float(np.linalg.norm(np.asarray(f["center_mm"]) - np.asarray(les["center_mm"])))
            if d <= les["diameter_mm"] / 2.0 and d < best and not taken[j]:
                best, bj = d, j
        if bj >= 0:
            taken[bj] = True
        tps.append(bj >= 0)
        hits.append(bj)
        scores.append(f["score"])
    return np.array(tps, bool), np.array(hits, int), np.array(scores, float)


def froc(scans: List[dict], rates: Sequence[float] = FROC_RATES) -> dict:
    """FROC over scans: each {"findings": [...], "lesions": [...]}. Sensitivity at each FP/scan
    rate (the best sensitivity with at most that many FPs per scan) and CPM = their mean."""
    all_scores, all_tp = [], []
    n_les = sum(len(s["lesions"]) for s in scans)
    for s in scans:
        tp, _hits, sc = match_findings(s["findings"], s["lesions"])
        all_scores += sc.tolist()
        all_tp += tp.tolist()
    n_scans = max(1, len(scans))
    if n_les == 0:
        return {"lesions": 0, "scans": len(scans), "sensitivity": {}, "cpm": float("nan")}
    order = np.argsort(-np.asarray(all_scores)) if all_scores else np.zeros(0, int)
    tp = np.cumsum(np.asarray(all_tp, float)[order]) if len(order) else np.zeros(0)
    fp = np.cumsum(1 - np.asarray(all_tp, float)[order]) if len(order) else np.zeros(0)
    sens = {}
    for r in rates:
        ok = fp / n_scans <= r
        sens[str(r)] = float(tp[ok].max() / n_les) if ok.any() else 0.0
    return {"lesions": int(n_les), "scans": len(scans), "sensitivity": sens,
            "cpm": float(np.mean(list(sens.values()))),
            "curve": {"fp_per_scan": (fp / n_scans).tolist(), "sensitivity": (tp / n_les).tolist()}}
