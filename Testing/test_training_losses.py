"""Losses, detection targets and metrics on inputs whose answers are known."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ChestCTMTLLib.model import decode_detections
from ChestCTMTLTraining.batching import boxes_from_mask, detection_targets, make_item, collate
from ChestCTMTLTraining.losses import SEG_LOSSES, MultiTaskLoss, centernet_focal
from ChestCTMTLTraining.metrics import (average_precision, binary_scores, classification_scores, froc,
                                        recon_scores, seg_scores)


def _rect_mask(s=64, r0=20, r1=36, c0=10, c1=30):
    m = np.zeros((2, s, s), np.float32)
    m[1, r0:r1, c0:c1] = 1
    return m


def test_detection_targets_decode_back_to_the_box():
    """Targets built from a mask, turned into 'perfect' head outputs, decode to the same box."""
    masks = _rect_mask()
    hm, size, off, reg = detection_targets(masks, np.array([True, True]), stride=4)
    assert reg.sum() == 1 and hm[1].max() == 1.0 and hm[0].max() == 0.0
    logits = torch.from_numpy(np.where(hm >= 1.0, 10.0, -10.0))[None].float()
    dets = decode_detections(logits, torch.from_numpy(size)[None], torch.from_numpy(off)[None], 4,
                             ["covid-infection", "nodule-mass"], 0.5)[0]
    assert len(dets) == 1
    d = dets[0]
    assert d.type == "nodule-mass"
    assert (d.x0, d.y0, d.x1, d.y1) == pytest.approx((10, 20, 30, 36), abs=1e-4)


def test_boxes_from_mask_ignores_specks():
    m = np.zeros((32, 32), np.float32)
    m[5, 5] = 1
    m[10:20, 12:16] = 1
    assert boxes_from_mask(m, min_area=6) == [(12.0, 10.0, 16.0, 20.0)]


def test_centernet_focal_is_small_for_perfect_and_large_for_wrong():
    masks = _rect_mask()
    hm, *_ = detection_targets(masks, np.array([True, True]))
    hm = torch.from_numpy(hm)[None]
    present = torch.tensor([[True, True]])
    good = torch.where(hm >= 1, torch.tensor(8.0), torch.tensor(-8.0))
    bad = -good
    lg = centernet_focal(good, hm, present)
    lb = centernet_focal(bad, hm, present)
    assert lg < 0.01 < 1.0 < lb
    # an unannotated type contributes nothing
    assert centernet_focal(bad, hm, torch.tensor([[False, False]])) == 0


@pytest.mark.parametrize("name", SEG_LOSSES)
def test_segmentation_losses_rank_good_above_bad(name):
    loss = MultiTaskLoss({"segmentation": name, "seg_bce_weight": 0.0})
    m = torch.from_numpy(_rect_mask())[None].repeat(2, 1, 1, 1)
    good = (m * 2 - 1) * 8
    out_g, out_b = {"seg_logits": good}, {"seg_logits": -good}
    batch = {"masks": m, "present": torch.tensor([[True, True], [True, True]]), "weight": torch.ones(2)}
    lg, ok = loss.segmentation(out_g["seg_logits"], batch["masks"], batch["present"], batch["weight"])
    lb, _ = loss.segmentation(out_b["seg_logits"], batch["masks"], batch["present"], batch["weight"])
    assert ok and float(lg) < float(lb)


def test_samples_without_labels_add_no_loss():
    loss = MultiTaskLoss()
    m = torch.from_numpy(_rect_mask())
    it = make_item(torch.rand(1, 64, 64), m, -1, np.array([False, False]), 1.0)
    batch = collate([it, it])
    out = {"class_logits": torch.zeros(2, 3, requires_grad=True),
           "seg_logits": torch.zeros(2, 2, 64, 64, requires_grad=True),
           "recon": torch.zeros(2, 1, 64, 64, requires_grad=True),
           "det_heatmap": torch.zeros(2, 2, 16, 16), "det_size": torch.zeros(2, 2, 16, 16),
           "det_offset": torch.zeros(2, 2, 16, 16)}
    total, parts = loss(out, batch, ["classification", "segmentation", "reconstruction", "detection"])
    assert set(parts) == {"reconstruction"}  # no class, no mask, no boxes -> only reconstruction
    assert float(total.detach()) == pytest.approx(0.5 * float(parts["reconstruction"].detach()))


def test_pseudo_label_weight_lowers_its_share():
    loss = MultiTaskLoss({"segmentation": "dice", "seg_bce_weight": 0.0})
    m = torch.from_numpy(_rect_mask())[None].repeat(2, 1, 1, 1)
    logits = torch.stack([(m[0] * 2 - 1) * 8, -(m[1] * 2 - 1) * 8])  # sample 0 right, sample 1 wrong
    present = torch.tensor([[False, True], [False, True]])
    even, _ = loss.segmentation(logits, m, present, torch.tensor([1.0, 1.0]))
    down, _ = loss.segmentation(logits, m, present, torch.tensor([1.0, 0.5]))
    assert float(down) < float(even)


def test_unknown_losses_are_refused():
    with pytest.raises(ValueError):
        MultiTaskLoss({"segmentation": "lovasz"})
    with pytest.raises(ValueError):
        MultiTaskLoss({"reconstruction": "ssim"})


def test_seg_scores_known_answers():
    a = np.zeros((20, 20), bool)
    a[5:15, 5:15] = True
    assert seg_scores(a, a) == {"dice": 1.0, "iou": 1.0, "hd95": 0.0}
    b = np.zeros_like(a)
    b[5:15, 10:20] = True  # half overlap: Dice 0.5, IoU 1/3
    r = seg_scores(b, a)
    assert r["dice"] == pytest.approx(0.5) and r["iou"] == pytest.approx(1 / 3)
    assert r["hd95"] == pytest.approx(5.0, abs=0.6)
    assert math.isnan(seg_scores(a, np.zeros_like(a))["dice"])


def test_classification_scores_known_answers():
    y = [0, 0, 1, 2, 2, 2]
    prob = np.eye(3)[[0, 1, 1, 2, 2, 0]] * 0.9 + 0.1 / 3
    s = classification_scores(y, prob, ["a", "b", "c"])
    assert s["accuracy"] == pytest.approx(4 / 6)
    assert s["balanced_accuracy"] == pytest.approx((0.5 + 1 + 2 / 3) / 3)
    assert s["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    b = binary_scores([0, 0, 1, 1], [0.1, 0.6, 0.7, 0.9])
    assert b["balanced_accuracy"] == pytest.approx(0.75) and b["roc_auc"] == pytest.approx(1.0)


def test_recon_scores_known_psnr():
    a = np.full((32, 32), 0.5)
    r = recon_scores(a, a + 0.1)
    assert r["psnr"] == pytest.approx(20.0, abs=1e-6)
    assert recon_scores(a, a + 0.01)["psnr"] > r["psnr"]


def test_average_precision_known_answers():
    gts = {"a": [(0, 0, 10, 10)]}
    assert average_precision([("a", 0.9, (0, 0, 10, 10))], gts) == pytest.approx(1.0)
    # a higher-scored false positive halves the precision at full recall
    ap = average_precision([("a", 0.9, (50, 50, 60, 60)), ("a", 0.8, (1, 1, 10, 10))], gts)
    assert ap == pytest.approx(0.5)
    assert average_precision([], gts) == 0.0


def test_froc_known_answers():
    lesion = {"center_mm": np.array([0.0, 0.0, 0.0]), "diameter_mm": 20.0}
    scans = [{"findings": [{"center_mm": np.array([50.0, 0, 0]), "score": 0.9},
                           {"center_mm": np.array([3.0, 4.0, 0]), "score": 0.5}],
              "lesions": [lesion]},
             {"findings": [], "lesions": []}]
    f = froc(scans)
    # one FP in two scans = 0.5 FP/scan before the hit
    assert f["sensitivity"]["0.25"] == 0.0 and f["sensitivity"]["0.5"] == 1.0
    assert f["sensitivity"]["8.0"] == 1.0
    # a finding outside the radius is not a hit
    far = [{"findings": [{"center_mm": np.array([10.5, 0, 0]), "score": 0.9}], "lesions": [lesion]}]
    assert froc(far)["sensitivity"]["8.0"] == 0.0
