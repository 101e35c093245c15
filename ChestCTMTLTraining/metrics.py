"""Metrics on known definitions: MONAI for Dice / IoU / HD95, scikit-learn for classification,
scikit-image for PSNR / SSIM; slice box AP@0.5, per-scan FROC / CPM and the whole-scan detection
summary both evaluation commands report (no library covers CenterNet boxes or our hit rule, so
these are written out here and tested on known answers).
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


def infection_type_scores(rows: Sequence[dict], types: Sequence[str]) -> dict:
    """Per infection type over slices: mean per-slice Dice/IoU on slices where the type is
    present (as :func:`seg_scores`), and the pooled Dice of all slices' pixels together (a
    slice without the type still counts its false positives there).

    ``rows``: per slice ``{"source", "pred": (K,H,W) bool, "gt": (H,W) labels 1..K}``.
    """
    out = {}
    for k, name in enumerate(types):
        per, inter, total, fp_free = [], 0, 0, []
        for r in rows:
            p, g = np.asarray(r["pred"][k], bool), np.asarray(r["gt"]) == k + 1
            inter += int((p & g).sum())
            total += int(p.sum() + g.sum())
            if g.any():
                per.append(seg_scores(p, g))
            else:
                fp_free.append(float(p.mean()))
        dice = [x["dice"] for x in per]
        out[name] = {"n": len(per), "dice": float(np.mean(dice)) if dice else float("nan"),
                     "iou": float(np.mean([x["iou"] for x in per])) if per else float("nan"),
                     "dice_pooled": 2.0 * inter / total if total else float("nan"),
                     "slices": len(rows), "slices_without_type": {"n": len(fp_free),
                                                                  "mean_fp_fraction": float(np.mean(fp_free)) if fp_free else float("nan")}}
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
#: A finding hits a lesion when its centre lies within max(lesion radius, this) of the lesion's
#: centre: small nodules (3-10 mm) would otherwise need a centre placed within 1.5-5 mm.
HIT_MIN_RADIUS_MM = 5.0


def hit_radius_mm(lesion: dict, min_radius_mm: float = HIT_MIN_RADIUS_MM) -> float:
    return max(float(lesion["diameter_mm"]) / 2.0, float(min_radius_mm))


def match_findings(findings: List[dict], lesions: List[dict], min_radius_mm: float = HIT_MIN_RADIUS_MM):
    """Greedy by score: a finding hits the nearest unmatched lesion whose centre is within
    :func:`hit_radius_mm`. ``findings``: {"center_mm", "score"}; ``lesions``: {"center_mm",
    "diameter_mm"} (any one frame in mm, e.g. RAS). Returns (is_tp per finding in score order,
    hit lesion index or -1, scores)."""
    order = sorted(range(len(findings)), key=lambda i: -findings[i]["score"])
    taken = np.zeros(len(lesions), bool)
    tps, hits, scores = [], [], []
    for i in order:
        f = findings[i]
        best, bj = np.inf, -1
        for j, les in enumerate(lesions):
            d = float(np.linalg.norm(np.asarray(f["center_mm"]) - np.asarray(les["center_mm"])))
            if d <= hit_radius_mm(les, min_radius_mm) and d < best and not taken[j]:
                best, bj = d, j
        if bj >= 0:
            taken[bj] = True
        tps.append(bj >= 0)
        hits.append(bj)
        scores.append(f["score"])
    return np.array(tps, bool), np.array(hits, int), np.array(scores, float)


def froc(scans: List[dict], rates: Sequence[float] = FROC_RATES,
         min_radius_mm: float = HIT_MIN_RADIUS_MM) -> dict:
    """FROC over scans: each {"findings": [...], "lesions": [...]}. Sensitivity at each FP/scan
    rate (the best sensitivity with at most that many FPs per scan) and CPM = their mean."""
    all_scores, all_tp = [], []
    n_les = sum(len(s["lesions"]) for s in scans)
    for s in scans:
        tp, _hits, sc = match_findings(s["findings"], s["lesions"], min_radius_mm)
        all_scores += sc.tolist()
        all_tp += tp.tolist()
    n_scans = max(1, len(scans))
    if n_les == 0:
        return {"lesions": 0, "scans": len(scans), "sensitivity": {}, "cpm": float("nan")}
    order = np.argsort(-np.asarray(all_scores), kind="stable") if all_scores else np.zeros(0, int)
    tp = np.cumsum(np.asarray(all_tp, float)[order]) if len(order) else np.zeros(0)
    fp = np.cumsum(1 - np.asarray(all_tp, float)[order]) if len(order) else np.zeros(0)
    sens = {}
    for r in rates:
        ok = fp / n_scans <= r
        sens[str(r)] = float(tp[ok].max() / n_les) if ok.any() else 0.0
    return {"lesions": int(n_les), "scans": len(scans), "sensitivity": sens,
            "cpm": float(np.mean(list(sens.values()))),
            "curve": {"fp_per_scan": (fp / n_scans).tolist(), "sensitivity": (tp / n_les).tolist()}}


# --------------------------------------------------------------------------- whole scans
NODULE_TYPE = "nodule-mass"


def nodule_findings(findings) -> List[dict]:
    """The nodule/mass findings of an analysis as FROC findings {"id", "center_mm", "score",
    "diameter_mm"}, best first. Items are ``results.Finding`` objects (centre in RAS) or dicts
    already in that form (an optional "type" other than nodule-mass drops them)."""
    out = []
    for n, f in enumerate(findings):
        if isinstance(f, dict):
            if f.get("type", NODULE_TYPE) != NODULE_TYPE:
                continue
            out.append({"id": str(f.get("id", "F%d" % (n + 1))),
                        "center_mm": [float(v) for v in f["center_mm"]], "score": float(f["score"]),
                        "diameter_mm": float(f.get("diameter_mm", 0.0))})
        elif f.type == NODULE_TYPE:
            out.append({"id": f.id, "center_mm": [float(v) for v in f.center_ras],
                        "score": float(f.score), "diameter_mm": float(f.diameter_mm)})
    out.sort(key=lambda d: -d["score"])
    return out


def scan_detection(findings, lesions: List[dict], score_threshold: float,
                   thresholds: Sequence[float] = (0.3, 0.5), big_mm: float = 10.0,
                   min_radius_mm: float = HIT_MIN_RADIUS_MM) -> dict:
    """One scan's nodule/mass detection against its reference lesions; what both evaluation
    commands compute per whole scan (the result feeds :func:`froc` / :func:`detection_summary`).

    ``findings``: the analysis' findings run with score threshold 0 (every kept candidate;
    :func:`nodule_findings` picks the nodule/masses); ``lesions``: {"center_mm", "diameter_mm"}
    in the findings' frame (RAS mm). ``score_threshold``: the model's operating point. Per
    lesion: found (at any score), its hit's score and rank among all nodule/mass findings
    (1 = the top one), the false positives scoring at least as high, found at the operating
    point. Returns {"findings" (FROC form + "lesion": the index it hits or None), "lesions",
    "n_findings", "operating_point", "false_positives_at_T", "hits_at_T"}.
    """
    cands = nodule_findings(findings)
    tp, hits, scores = match_findings(cands, lesions, min_radius_mm)
    for c, j in zip(cands, hits.tolist()):
        c["lesion"] = j if j >= 0 else None  # the lesion it hits (index), None: a false positive
    op = float(score_threshold)
    at_op = scores >= op
    out = {"n_findings": int(len(cands)), "findings": cands, "lesions": [],
           "operating_point": {"score_threshold": op, "findings": int(at_op.sum()),
                               "true_positives": int((tp & at_op).sum()),
                               "false_positives": int((~tp & at_op).sum())}}
    for j, les in enumerate(lesions):
        hit = np.nonzero(hits == j)[0]
        score = float(scores[hit[0]]) if len(hit) else None
        rank = int(hit[0]) + 1 if len(hit) else None  # cands are in descending score order
        out["lesions"].append({
            "center_mm": [float(v) for v in les["center_mm"]],
            "diameter_mm": float(les["diameter_mm"]),
            "found": bool(len(hit)), "score": score, "rank": rank,
            "finding": cands[hit[0]]["id"] if len(hit) else None,
            # FPs scoring at or above this lesion's hit: what it costs to find it
            "false_positives_at_its_score": (int(((~tp) & (scores >= score)).sum())
                                             if score is not None else None),
            "found_at_operating_point": bool(score is not None and score >= op),
            "ranked_first": rank == 1,
            "big": float(les["diameter_mm"]) >= big_mm})
    for thr in thresholds:
        out["false_positives_at_%.1f" % thr] = int(((~tp) & (scores >= thr)).sum())
        out["hits_at_%.1f" % thr] = int((tp & (scores >= thr)).sum())
    return out


def detection_summary(scans: List[dict], score_threshold: float, big_mm: float = 10.0,
                      min_radius_mm: float = HIT_MIN_RADIUS_MM) -> dict:
    """FROC / CPM over :func:`scan_detection` results, and the operating-point numbers:
    findings and false positives per scan, sensitivity, lesions >= ``big_mm`` found and found
    as the scan's top nodule/mass finding."""
    f = froc(scans, min_radius_mm=min_radius_mm)
    f.pop("curve", None)
    lesions = [les for s in scans for les in s["lesions"]]
    big = [les for les in lesions if les["big"]]
    n = max(1, len(scans))
    ops = [s["operating_point"] for s in scans]
    tag = "ge%gmm" % big_mm
    f["operating_point"] = {
        "score_threshold": float(score_threshold),
        "findings_per_scan": sum(o["findings"] for o in ops) / n,
        "fp_per_scan": sum(o["false_positives"] for o in ops) / n,
        "sensitivity": (sum(les["found_at_operating_point"] for les in lesions) / len(lesions)
                        if lesions else float("nan")),
        "lesions_" + tag: len(big),
        tag + "_found": sum(les["found_at_operating_point"] for les in big),
        tag + "_ranked_first": sum(les["found_at_operating_point"] and les["ranked_first"]
                                   for les in big)}
    f["hit_rule"] = "centre within max(lesion radius, %g mm) of the lesion centre" % min_radius_mm
    return f


def confusion(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> dict:
    """Confusion matrix (rows true, columns predicted) and accuracy of class-name verdicts."""
    idx = {c: i for i, c in enumerate(labels)}
    cm = np.zeros((len(labels), len(labels)), int)
    for t, p in zip(y_true, y_pred):
        if t in idx and p in idx:
            cm[idx[t], idx[p]] += 1
    n = int(cm.sum())
    return {"n": n, "accuracy": float(np.trace(cm) / n) if n else float("nan"),
            "confusion_matrix": cm.tolist(), "confusion_labels": list(labels)}
