"""LIDC-IDRI nodule VOIs: 991 HU crops with binary masks and the readers' ratings (``nodules.csv``).

Each crop (``image/<patient>_R_<nodule>.nii.gz``, 3-12 slices, a tight box with some lung
around the nodule) gives one patch per slice the mask touches (``slices: masked``) or only its
largest cross-section (``slices: center``): HU through the representation's lung window,
padded to a square by repeating the border, resized to ``patch_size`` pixels. The patches are
``kind="patch"`` like the MSD tumours: segmentation (and, through the mosaic, detection)
targets at a known scale (``meta["mm_per_pixel"]``), ready for copy-paste into whole slices.

Class: the readers' max-voted diagnosis, ``Malign`` -> ``cancer``; benign nodules get no class
(a benign nodule is not a normal slice). The mosaic drops classes of patches anyway.

Split by patient (``holdout`` rules apply to patient ids, naturally sorted), so all nodules
of one patient are on one side. LIDC-IDRI-0001/0002/0003 are left out by default
(``exclude_patients``): they are whole-scan calibration / held-out cases elsewhere.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ChestCTMTLLib.representation import Representation, hu_to_unit
from ChestCTMTLLib.results import LESION_TYPES

from .base import SampleSet, class_index, empty_set, log, split_items, type_index

EXCLUDED = ("LIDC-IDRI-0001", "LIDC-IDRI-0002", "LIDC-IDRI-0003")
RATINGS = ("Malignancy_value", "Texture_value", "Calcification_value", "Spiculation_value",
           "Subtlety_value", "Margin_value", "Lobulation_value", "Sphericity_value")


def read_nodules(path: Path) -> list:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    need = {"patient_id", "nodule_id", "diameter_mm", "Diagnosis"}
    if not rows or not need <= set(rows[0]):
        raise ValueError("%s needs columns %s" % (path, sorted(need)))
    return rows


def square_patch(hu: np.ndarray, mask: np.ndarray, size: int, window) -> tuple:
    """(H, W) HU + mask -> (size, size) unit image and 0..255 mask; border-repeat to square."""
    h, w = hu.shape
    s = max(h, w)
    pad = ((0, 0), ((s - h) // 2, s - h - (s - h) // 2), ((s - w) // 2, s - w - (s - w) // 2))
    both = np.stack([hu_to_unit(hu.astype(np.float32), window), mask.astype(np.float32)])
    both = np.pad(both, pad, mode="edge")
    t = F.interpolate(torch.from_numpy(both)[None], size=(size, size), mode="bilinear",
                      align_corners=False)[0].numpy()
    return np.clip(t[0], 0, 1), np.clip(np.rint(t[1] * 255), 0, 255).astype(np.uint8)


def load_lidc_nodule_vois(spec: dict, split: str, rep: Representation, root: Path,
                          lesion_types: Sequence[str] = LESION_TYPES) -> SampleSet:
    import SimpleITK as sitk

    folder = root / spec.get("path", "lidc_nodule_vois")
    table = folder / "nodules.csv"
    if not table.is_file():
        raise FileNotFoundError("LIDC nodule VOIs need %s" % table)
    name = spec.get("name", "lidc-vois")
    t = type_index(spec.get("lesion_type", "nodule-mass"), lesion_types)
    size = int(spec.get("patch_size", 64))
    mode = spec.get("slices", "masked")
    if mode not in ("masked", "center"):
        raise ValueError("lidc_nodule_vois slices must be masked or center, not %r" % mode)
    excluded = set(spec.get("exclude_patients", EXCLUDED))
    min_d = float(spec.get("min_diameter_mm", 0.0))
    cls_of = {"Malign": class_index(spec.get("malign_class", "cancer")),
              "Benign": class_index(spec.get("benign_class"))}
    nodules = [r for r in read_nodules(table) if r["patient_id"] not in excluded
               and float(r["diameter_mm"]) >= min_d]
    patients = split_items(sorted({r["patient_id"] for r in nodules}), spec.get("holdout"), split)
    keep = set(patients)
    images, masks, classes, ids, meta, skipped = [], [], [], [], [], []
    for r in nodules:
        if r["patient_id"] not in keep:
            continue
        stem = "%s_R_%s" % (r["patient_id"], r["nodule_id"])
        ip, mp = folder / "image" / (stem + ".nii.gz"), folder / "nodule_mask" / (stem + ".nii.gz")
        try:
            if not ip.is_file() or not mp.is_file():
                raise FileNotFoundError("no crop %s (image or mask missing)" % stem)
            img = sitk.ReadImage(str(ip))
            hu = sitk.GetArrayFromImage(img)
            m = sitk.GetArrayFromImage(sitk.ReadImage(str(mp))) > 0
            if m.shape != hu.shape:
                raise ValueError("mask %s is %s but image is %s" % (mp.name, m.shape, hu.shape))
        except (OSError, RuntimeError, ValueError) as e:
            log.info("LIDC VOIs: skipping %s: %s", stem, e)
            skipped.append("%s: %s" % (stem, e))
            continue
        area = m.reshape(m.shape[0], -1).sum(axis=1)
        ks = [int(np.argmax(area))] if mode == "center" else [int(k) for k in np.nonzero(area)[0]]
        sp = img.GetSpacing()
        side_mm = max(hu.shape[1] * sp[1], hu.shape[2] * sp[0])
        ratings = {k[:-6].lower(): int(r[k]) for k in RATINGS if r.get(k, "") not in ("", None)}
        for k in ks:
            x, y = square_patch(hu[k], m[k], size, rep.hu_window)
            images.append(x)
            mk = np.zeros((len(lesion_types), size, size), np.uint8)
            mk[t] = y
            masks.append(mk)
            classes.append(cls_of.get(r["Diagnosis"], -1))
            ids.append("%s#%s:k%02d" % (name, stem, k))
            meta.append({"patient": r["patient_id"], "nodule": stem, "k": k,
                         "diameter_mm": float(r["diameter_mm"]), "diagnosis": r["Diagnosis"],
                         "mm_per_pixel": side_mm / size, "spacing": list(sp), "ratings": ratings})
    if not images:
        out = empty_set(name, split, rep, len(lesion_types))
        out.skipped = skipped
        return out
    n = len(images)
    return SampleSet(name, split, np.stack(images).astype(np.float16), np.array(classes, np.int64),
                     np.stack(masks), np.ones((n, len(lesion_types)), bool),  # LIDC: no COVID infection
                     np.full(n, float(spec.get("weight_seg", 1.0)), np.float32), ids, kind="patch",
                     meta=meta, skipped=skipped)
