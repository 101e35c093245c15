"""HU volumes -> slice rows: the shared step of the whole-CT sources with lesion masks (LIDC, NIfTI pairs)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import List

import numpy as np
import torch

from ChestCTMTLLib.representation import geometry_for_volume, hu_slices_to_model

from .base import class_index, log, type_index

def volume_rows(name, hu, spacing, lesion_mask, rep, spec, lesion_types, nodules_kji, scan_id):
    """Slices of a (K, H, W) HU volume with an optional nodule label mask, as sample rows."""
    t = type_index(spec.get("lesion_type", "nodule-mass"), lesion_types)
    geom, region = geometry_for_volume(hu, spacing, rep)
    pos_cls = class_index(spec.get("nodule_class", "cancer"))
    neg_cls = class_index(spec.get("negative_class", "non-covid"))
    gap_mm = float(spec.get("negative_gap_mm", 10.0))
    lesion_k = np.nonzero(lesion_mask.reshape(lesion_mask.shape[0], -1).any(axis=1))[0] \
        if lesion_mask is not None else np.zeros(0, int)
    stride = int(spec.get("slice_stride", 1))
    rows = []
    ks = region.slices[::stride]
    ks = np.union1d(ks, lesion_k)  # every slice through a lesion is used
    for k0 in range(0, len(ks), 32):
        kk = ks[k0:k0 + 32]
        x = hu_slices_to_model(hu[kk], geom, rep)[:, 0].numpy()
        if lesion_mask is not None:
            m = geom.to_model(torch.from_numpy((lesion_mask[kk] > 0).astype(np.float32)))[:, 0].numpy()
        for n, k in enumerate(kk):
            mask = np.zeros((len(lesion_types), rep.input_size, rep.input_size), np.uint8)
            present = np.zeros(len(lesion_types), bool)
            if lesion_mask is not None:
                mask[t] = np.clip(np.rint(m[n] * 255), 0, 255).astype(np.uint8)
                present[:] = True  # LIDC/lung-cancer scans: no COVID infection
            dist = np.min(np.abs(lesion_k - k)) * spacing[2] if lesion_k.size else np.inf
            if k in lesion_k:
                cls = pos_cls
            elif dist > gap_mm:
                cls = neg_cls
            else:
                cls = -1  # near a lesion's end: ambiguous, no class label
            rows.append({"image": x[n], "cls": cls, "mask": mask, "present": present,
                         "id": "%s:k%03d" % (scan_id, k),
                         "meta": {"scan": scan_id, "k": int(k), "geometry": geom.to_dict(),
                                  "spacing": list(spacing)}})
    volume = {"scan": scan_id, "spacing": list(spacing), "shape": list(hu.shape),
              "geometry": geom.to_dict(), "slices": [int(k) for k in ks],
              "nodules": nodules_kji}
    return rows, volume



def read_oriented(path):
    """Read a volume and reorient it to ITK LPS (axial, rows anterior->posterior)."""
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    if img.GetDimension() != 3:
        raise ValueError("%s is not a 3D image" % path)
    return sitk.DICOMOrient(img, "LPS")



def read_csv(path: Path) -> List[dict]:
    if not path.is_file():
        log.warning("lesion CSV %s missing", path)
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))

